//! Loading rule files: YAML in, validated [`Rule`]s out, with every error
//! in the file reported by line and rule name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::condition::Condition;
use crate::policy::{ActionName, DecisionMatrix, Severity};
use crate::rule::{Origin, Rule, RuleError};
use crate::state::Timing;
use crate::template;
use crate::time::Span;
use crate::vocabulary::{Vocabulary, suggest};
use crate::yaml::{self, Kind, Node};

/// Rule files larger than this are rejected (10,000 rules fit easily).
pub const DEFAULT_MAX_BYTES: usize = 8 * 1024 * 1024;

/// The fields a rule may have.
pub const RULE_FIELDS: [&str; 12] = [
    "name",
    "condition",
    "duration",
    "severity",
    "action",
    "labels",
    "annotations",
    "keep_firing_for",
    "dry_run",
    "group_by",
    "min_samples",
    "baseline",
];

/// What loading needs to know beyond the file itself.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Variables conditions may use.
    pub vocabulary: Vocabulary,
    /// Default actions and deadlines per severity.
    pub matrix: DecisionMatrix,
    /// Files larger than this are rejected.
    pub max_bytes: usize,
    /// The rules running now, with the vocabulary they were compiled
    /// against: a reload reuses the compiled condition of a rule whose
    /// condition did not change, rather than compiling it again.
    pub previous: Option<(Arc<crate::rule::RuleSet>, Vocabulary)>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            vocabulary: Vocabulary::builtin(),
            matrix: DecisionMatrix::default(),
            max_bytes: DEFAULT_MAX_BYTES,
            previous: None,
        }
    }
}

/// Loads one rule file. `file` names it in errors; `bytes` is its content.
/// On failure, returns every error found, not just the first.
pub fn load_rules(
    file: &str,
    bytes: &[u8],
    options: &LoadOptions,
) -> Result<Vec<Rule>, Vec<RuleError>> {
    let file: Arc<str> = Arc::from(file);
    let whole = |message: String, line: usize| {
        vec![RuleError {
            file: file.clone(),
            line,
            rule: None,
            message,
        }]
    };
    if bytes.len() > options.max_bytes {
        return Err(whole(
            format!(
                "file is larger than the limit of {} bytes",
                options.max_bytes
            ),
            0,
        ));
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            return Err(whole(
                format!("file is not valid UTF-8 (byte {})", e.valid_up_to()),
                line,
            ));
        }
    };
    let root = match yaml::parse(text) {
        Ok(Some(root)) if !root.is_null() => root,
        Ok(_) => {
            return Err(whole(
                "file is empty; expected `alerts:` with a list of rules".into(),
                0,
            ));
        }
        Err(e) => return Err(whole(format!("YAML syntax error: {}", e.message), e.line)),
    };

    let mut ctx = Errors {
        file: file.clone(),
        errors: Vec::new(),
        templates: std::collections::HashMap::new(),
    };
    let Kind::Map(entries) = &root.kind else {
        return Err(whole(
            format!(
                "expected a mapping with `alerts:`, found {}",
                root.type_name()
            ),
            root.line,
        ));
    };
    let mut alerts = None;
    for (key, value) in entries {
        match key.as_str() {
            Some("alerts") if alerts.is_none() => alerts = Some(value),
            Some("alerts") => ctx.push(key.line, None, "`alerts` appears twice".into()),
            Some(other) => ctx.push(
                key.line,
                None,
                format!(
                    "unknown top-level key `{other}`{}; a rule file has only `alerts:`",
                    hint(suggest(other, ["alerts"]))
                ),
            ),
            None => ctx.push(key.line, None, "keys must be plain strings".into()),
        }
    }
    let mut rules = Vec::new();
    match alerts.map(|a| &a.kind) {
        None => ctx.push(root.line, None, "missing `alerts:`".into()),
        Some(Kind::Seq(items)) if items.is_empty() => ctx.push(
            root.line,
            None,
            "`alerts:` is an empty list; a rule file needs at least one rule".into(),
        ),
        Some(Kind::Seq(items)) => {
            let mut seen: BTreeMap<String, usize> = BTreeMap::new();
            for item in items {
                if let Some(rule) = parse_rule(item, options, &mut ctx) {
                    if let Some(first) = seen.get(&rule.name) {
                        let msg = format!("duplicate rule name; first defined at line {first}");
                        ctx.push(rule.origin.line, Some(&rule.name), msg);
                    } else {
                        seen.insert(rule.name.clone(), rule.origin.line);
                        rules.push(rule);
                    }
                }
            }
        }
        Some(_) => {
            let node = alerts.unwrap_or(&root);
            ctx.push(
                node.line,
                None,
                format!(
                    "`alerts:` must be a list of rules, found {}",
                    node.type_name()
                ),
            )
        }
    }
    if ctx.errors.is_empty() {
        Ok(rules)
    } else {
        // Stable: errors on one line keep the order they were found in.
        ctx.errors.sort_by_key(|e| e.line);
        Err(ctx.errors)
    }
}

/// Collects errors for one file.
struct Errors {
    file: Arc<str>,
    errors: Vec<RuleError>,
    /// Template checks by source: rules often share annotation texts.
    templates: std::collections::HashMap<String, Result<(), String>>,
}

impl Errors {
    fn push(&mut self, line: usize, rule: Option<&str>, message: String) {
        self.errors.push(RuleError {
            file: self.file.clone(),
            line,
            rule: rule.map(str::to_string),
            message,
        });
    }
}

fn hint(s: Option<&str>) -> String {
    s.map(|s| format!(" (did you mean `{s}`?)"))
        .unwrap_or_default()
}

/// Parses one rule, recording every problem. Returns `None` if any.
fn parse_rule(node: &Node, options: &LoadOptions, ctx: &mut Errors) -> Option<Rule> {
    let before = ctx.errors.len();
    let Kind::Map(entries) = &node.kind else {
        ctx.push(
            node.line,
            None,
            format!("a rule must be a mapping, found {}", node.type_name()),
        );
        return None;
    };
    // The name labels every other error, so read it first.
    let name = entries
        .iter()
        .find(|(k, _)| k.as_str() == Some("name"))
        .and_then(|(_, v)| v.as_str().filter(|s| !v.is_null() && !s.trim().is_empty()))
        .map(str::to_string);
    let rule = name.as_deref();
    if name.is_none() {
        ctx.push(node.line, None, "rule has no `name`".into());
    }

    let mut fields: BTreeMap<&str, &Node> = BTreeMap::new();
    for (key, value) in entries {
        let Some(k) = key.as_str() else {
            ctx.push(key.line, rule, "keys must be plain strings".into());
            continue;
        };
        if !RULE_FIELDS.contains(&k) {
            let msg = format!(
                "unknown field `{k}`{}; rules may have {}",
                hint(suggest(k, RULE_FIELDS)),
                RULE_FIELDS.join(", ")
            );
            ctx.push(key.line, rule, msg);
        } else if fields.insert(k, value).is_some() {
            ctx.push(key.line, rule, format!("field `{k}` appears twice"));
        }
    }

    let text = |field: &str, required: bool, ctx: &mut Errors| -> Option<(String, usize)> {
        match fields.get(field) {
            None if required => {
                ctx.push(node.line, rule, format!("missing required field `{field}`"));
                None
            }
            None => None,
            Some(v) => match (&v.kind, v.is_null()) {
                (Kind::Scalar { text, .. }, false) if !text.trim().is_empty() => {
                    Some((text.clone(), v.line))
                }
                _ => {
                    let msg = format!(
                        "`{field}` must be a non-empty string, found {}",
                        v.type_name()
                    );
                    ctx.push(v.line, rule, msg);
                    None
                }
            },
        }
    };

    let baseline = text("baseline", false, ctx);
    let condition = text("condition", true, ctx).and_then(|(src, line)| {
        let explicit = baseline.as_ref().map(|b| b.0.as_str());
        let unchanged = options
            .previous
            .as_ref()
            .filter(|(_, vocabulary)| *vocabulary == options.vocabulary)
            .and_then(|(rules, _)| rules.get(rule?))
            .filter(|r| r.condition.compiled_from(&src, explicit))
            .map(|r| r.condition.clone());
        match unchanged {
            Some(c) => Some(c),
            None => Condition::compile(&src, &options.vocabulary, explicit)
                .map_err(|e| ctx.push(line, rule, e.to_string()))
                .ok(),
        }
    });
    let span = |field: &str, required: bool, ctx: &mut Errors, t: Option<(String, usize)>| match t {
        None if !required => Some(Span::ZERO),
        None => None,
        Some((s, line)) => Span::parse(&s)
            .map_err(|e| ctx.push(line, rule, format!("`{field}`: {e}")))
            .ok(),
    };
    let dur = text("duration", true, ctx);
    let hold = span("duration", true, ctx, dur);
    let keep = text("keep_firing_for", false, ctx);
    let keep_firing_for = span("keep_firing_for", false, ctx, keep);
    let severity = text("severity", true, ctx).and_then(|(s, line)| {
        s.parse::<Severity>()
            .map_err(|()| {
                let names = Severity::ALL.map(Severity::as_str);
                let msg = format!(
                    "unknown severity `{s}`{}; use one of {}",
                    hint(suggest(&s, names)),
                    names.join(", ")
                );
                ctx.push(line, rule, msg)
            })
            .ok()
    });
    let actions = fields.get("action").map(|v| parse_actions(v, rule, ctx));
    let labels = fields
        .get("labels")
        .map(|v| string_map(v, "labels", rule, ctx))
        .unwrap_or_default();
    let annotations = fields
        .get("annotations")
        .map(|v| string_map(v, "annotations", rule, ctx))
        .unwrap_or_default();
    for (key, source) in &annotations {
        let checked = ctx
            .templates
            .entry(source.clone())
            .or_insert_with(|| template::check(source))
            .clone();
        if let Err(e) = checked {
            let line = fields.get("annotations").map_or(node.line, |n| n.line);
            ctx.push(line, rule, format!("annotation `{key}`: {e}"));
        }
    }
    let dry_run = match fields.get("dry_run") {
        None => false,
        Some(v) => match (v.as_str(), &v.kind) {
            (Some("true"), Kind::Scalar { quoted: false, .. }) => true,
            (Some("false"), Kind::Scalar { quoted: false, .. }) => false,
            _ => {
                ctx.push(v.line, rule, "`dry_run` must be true or false".into());
                false
            }
        },
    };
    let group_by = match fields.get("group_by") {
        None => vec!["model".to_string()],
        Some(v) => parse_group_by(v, rule, ctx),
    };
    let min_samples =
        fields
            .get("min_samples")
            .and_then(|v| match v.as_str().map(str::parse::<u64>) {
                Some(Ok(n)) if n > 0 && matches!(v.kind, Kind::Scalar { quoted: false, .. }) => {
                    Some(n)
                }
                _ => {
                    ctx.push(
                        v.line,
                        rule,
                        "`min_samples` must be a positive whole number".into(),
                    );
                    None
                }
            });

    if ctx.errors.len() > before {
        return None;
    }
    let (name, condition, hold, keep_firing_for, severity) =
        (name?, condition?, hold?, keep_firing_for?, severity?);
    let decision = options.matrix.get(severity);
    let (actions, actions_from_matrix) = match actions {
        Some(Some(a)) => (a, false),
        Some(None) => return None,
        None => (decision.action.clone(), true),
    };
    Some(Rule {
        name,
        condition,
        timing: Timing {
            hold,
            keep_firing_for,
        },
        severity,
        actions,
        actions_from_matrix,
        deadline: decision.deadline,
        labels,
        annotations,
        dry_run,
        group_by,
        min_samples,
        origin: Origin {
            file: ctx.file.clone(),
            line: node.line,
        },
    })
}

fn parse_actions(v: &Node, rule: Option<&str>, ctx: &mut Errors) -> Option<Vec<ActionName>> {
    let items: Vec<&Node> = match &v.kind {
        Kind::Scalar { .. } if !v.is_null() => vec![v],
        Kind::Seq(items) if !items.is_empty() => items.iter().collect(),
        _ => {
            ctx.push(
                v.line,
                rule,
                "`action` must be an action name or a non-empty list of them".into(),
            );
            return None;
        }
    };
    let names = ActionName::ALL.map(ActionName::as_str);
    let mut out = Vec::new();
    let mut ok = true;
    for item in items {
        match item.as_str().map(|s| (s, s.parse::<ActionName>())) {
            Some((_, Ok(a))) if out.contains(&a) => {
                ctx.push(item.line, rule, format!("action `{a}` is listed twice"));
                ok = false;
            }
            Some((_, Ok(a))) => out.push(a),
            Some((s, Err(()))) => {
                let msg = format!(
                    "unknown action `{s}`{}; use one of {}",
                    hint(suggest(s, names)),
                    names.join(", ")
                );
                ctx.push(item.line, rule, msg);
                ok = false;
            }
            None => {
                ctx.push(item.line, rule, "an action must be a name".into());
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

fn string_map(
    v: &Node,
    field: &str,
    rule: Option<&str>,
    ctx: &mut Errors,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Kind::Map(entries) = &v.kind else {
        if !v.is_null() {
            ctx.push(
                v.line,
                rule,
                format!("`{field}` must be a mapping of strings"),
            );
        }
        return out;
    };
    for (key, val) in entries {
        match (key.as_str(), val.as_str()) {
            (Some(k), Some(s)) if valid_label_name(k) => {
                out.insert(k.to_string(), s.to_string());
            }
            (Some(k), Some(_)) => ctx.push(
                key.line,
                rule,
                format!("`{field}` key `{k}` must match [a-zA-Z_][a-zA-Z0-9_]*"),
            ),
            _ => ctx.push(val.line, rule, format!("`{field}` values must be strings")),
        }
    }
    out
}

fn parse_group_by(v: &Node, rule: Option<&str>, ctx: &mut Errors) -> Vec<String> {
    let Kind::Seq(items) = &v.kind else {
        ctx.push(
            v.line,
            rule,
            "`group_by` must be a list of label names".into(),
        );
        return Vec::new();
    };
    if items.is_empty() {
        ctx.push(
            v.line,
            rule,
            "`group_by` must name at least one label".into(),
        );
    }
    let mut out: Vec<String> = Vec::new();
    for item in items {
        match item.as_str() {
            Some(s) if valid_label_name(s) && !out.iter().any(|o| o == s) => {
                out.push(s.to_string())
            }
            Some(s) if valid_label_name(s) => {
                ctx.push(item.line, rule, format!("`group_by` lists `{s}` twice"))
            }
            _ => ctx.push(
                item.line,
                rule,
                "`group_by` entries must be label names".into(),
            ),
        }
    }
    out
}

fn valid_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
