//! The text of notifications: a title (PagerDuty summary, Slack fallback
//! text and header, email subject) and a body (Slack message, email body,
//! PagerDuty custom details), rendered with minijinja.
//!
//! Every receiver has built-in templates ([`DEFAULT_TITLE`],
//! [`DEFAULT_BODY`]) and may override them with `title_template` and
//! `body_template`. Templates are compiled when the receiver is checked and
//! built, so a template that does not compile, or that names a variable that
//! does not exist, is reported by `canaryd check`. `trim_blocks` and
//! `lstrip_blocks` are on: a line holding only a `{% ... %}` tag leaves no
//! blank line behind.
//!
//! The context ([`TEMPLATE_VARIABLES`]) is the [`Action`] serialised (`rule`,
//! `severity`, `subject`, `action`, `key`, `ts`, `deadline`, `dry_run`,
//! `labels`, `annotations`, `evidence`) with shortcuts: `values`,
//! `thresholds`, `condition`, `since` and `duration` from the evidence;
//! `subject_text` (`model=summarizer`); `checks`, one line per compared
//! variable (`canary_error_rate = 0.105 (threshold > 0.05)`); `summary` and
//! `runbook` from the annotations (empty when absent); and `status`,
//! `firing` or `resolved`.
//!
//! Printing a variable that does not exist fails (a typo shows rather than
//! rendering as nothing); testing it in `{% if %}` is allowed. When a
//! template fails at send time (e.g. `values.x` for an action that lacks
//! `x`), the built-in template is used instead, with the error appended, so
//! that the notification still goes out.

use std::collections::BTreeMap;
use std::fmt;

use canaryd_rules::Subject;
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Value, json};

use crate::action::Action;

/// The built-in title.
pub const DEFAULT_TITLE: &str = "{% if status == \"resolved\" %}[RESOLVED] {{ rule }} for {{ subject_text }}{% else %}[{{ severity | upper }}] {{ rule }}: {{ action }} for {{ subject_text }}{% endif %}{% if dry_run %} (dry run){% endif %}";

/// The built-in body: plain text that reads well in an email and in Slack.
pub const DEFAULT_BODY: &str = "\
{% if status == \"resolved\" %}
Resolved: {{ rule }} ({{ severity }}) no longer holds for {{ subject_text }}.
{% else %}
{{ rule }} ({{ severity }}) fired for {{ subject_text }}.
{% endif %}
{% if summary %}
{{ summary }}
{% endif %}

Action: {{ action }} (deadline {{ deadline }})
Condition: {{ condition }}
{% for line in checks %}
  {{ line }}
{% endfor %}
True since {{ since }} (required for {{ duration }}); fired at {{ ts }}.
{% if runbook %}
Runbook: {{ runbook }}
{% endif %}
{% if dry_run %}
DRY RUN: canaryd changed nothing.
{% endif %}
Key: {{ key }}
";

/// The names a notification template may use.
pub const TEMPLATE_VARIABLES: [&str; 21] = [
    "rule",
    "severity",
    "subject",
    "subject_text",
    "action",
    "key",
    "ts",
    "deadline",
    "dry_run",
    "labels",
    "annotations",
    "evidence",
    "values",
    "thresholds",
    "condition",
    "since",
    "duration",
    "checks",
    "summary",
    "runbook",
    "status",
];

/// Whether a notification announces a firing alert or its resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    /// The rule fired: act.
    Firing,
    /// The alert behind an earlier action resolved.
    Resolved,
}

impl Status {
    /// `firing` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rendered notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// One line: the email subject, the PagerDuty summary, Slack's fallback text.
    pub title: String,
    /// The details, several lines.
    pub body: String,
}

/// A receiver's compiled title and body templates.
pub struct Templates {
    env: Environment<'static>,
    defaults: Environment<'static>,
}

impl fmt::Debug for Templates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Templates").finish_non_exhaustive()
    }
}

const TITLE: &str = "title";
const BODY: &str = "body";

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    // Default delimiters always build; should that ever change, the
    // templates simply keep minijinja's default whitespace handling.
    if let Ok(syntax) = SyntaxConfig::builder()
        .trim_blocks(true)
        .lstrip_blocks(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env
}

/// Compiles `source` and checks that it only uses [`TEMPLATE_VARIABLES`].
fn check_one(field: &str, source: &str) -> Result<(), String> {
    canaryd_rules::template::check_with(&environment(), source, &TEMPLATE_VARIABLES)
        .map_err(|e| format!("{field}: {e}"))
}

/// Problems with a receiver's templates: each one that does not compile or
/// uses an unknown variable, named by its field (`title_template`,
/// `body_template`). Empty when valid.
pub fn check_templates(title: Option<&str>, body: Option<&str>) -> Vec<String> {
    let mut problems = Vec::new();
    for (field, source) in [("title_template", title), ("body_template", body)] {
        if let Some(source) = source
            && let Err(e) = check_one(field, source)
        {
            problems.push(e);
        }
    }
    problems
}

impl Templates {
    /// Compiles the templates: the built-in ones where `title` or `body` is
    /// `None`. Fails with every problem [`check_templates`] finds.
    pub fn new(title: Option<&str>, body: Option<&str>) -> Result<Templates, Vec<String>> {
        let problems = check_templates(title, body);
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut defaults = environment();
        let mut env = environment();
        let mut errors = Vec::new();
        for (name, custom, default) in [(TITLE, title, DEFAULT_TITLE), (BODY, body, DEFAULT_BODY)] {
            if let Err(e) = defaults.add_template(name, default) {
                errors.push(format!("built-in {name} template: {e}"));
            }
            let added = match custom {
                Some(source) => env.add_template_owned(name, source.to_string()),
                None => env.add_template(name, default),
            };
            if let Err(e) = added {
                errors.push(format!("{name}_template: template does not compile: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(Templates { env, defaults })
        } else {
            Err(errors)
        }
    }

    /// The built-in templates only.
    pub fn builtin() -> Templates {
        let mut defaults = environment();
        let mut env = environment();
        // The built-in templates are compiled by the unit tests; were one
        // ever broken, rendering reports it in the message instead.
        for (name, source) in [(TITLE, DEFAULT_TITLE), (BODY, DEFAULT_BODY)] {
            let _ = defaults.add_template(name, source);
            let _ = env.add_template(name, source);
        }
        Templates { env, defaults }
    }

    /// Renders the title and body for `action`. A template that fails at
    /// render time falls back to the built-in one, with the error appended.
    pub fn render(&self, action: &Action, status: Status) -> Message {
        let ctx = minijinja::Value::from(minijinja::value::Serde(context(action, status)));
        let render = |name: &str| -> String {
            let rendered = self.env.get_template(name).and_then(|t| t.render(&ctx));
            match rendered {
                Ok(text) => text,
                Err(e) => {
                    tracing::warn!(template = name, error = %e, key = %action.key, "notification template failed; using the built-in one");
                    let fallback = self
                        .defaults
                        .get_template(name)
                        .and_then(|t| t.render(&ctx))
                        .unwrap_or_else(|e2| {
                            format!("{} [built-in template failed: {e2}]", action.rule)
                        });
                    format!("{fallback} [{name} template error: {e}]")
                }
            }
        };
        let title = render(TITLE);
        let title = title.split_whitespace().collect::<Vec<_>>().join(" ");
        let body = render(BODY).trim_end().to_string() + "\n";
        Message { title, body }
    }
}

/// The template context for `action` (see the module docs).
pub fn context(action: &Action, status: Status) -> Value {
    let mut ctx = serde_json::to_value(action).unwrap_or_else(|_| json!({}));
    if let Value::Object(map) = &mut ctx {
        map.insert("values".into(), json!(action.evidence.values));
        map.insert("thresholds".into(), json!(action.evidence.thresholds));
        map.insert("condition".into(), json!(action.evidence.condition));
        map.insert("since".into(), json!(action.evidence.since));
        map.insert("duration".into(), json!(action.evidence.duration));
        map.insert("subject_text".into(), json!(subject_text(&action.subject)));
        map.insert("checks".into(), json!(checks(action)));
        map.insert(
            "summary".into(),
            json!(
                action
                    .annotations
                    .get("summary")
                    .cloned()
                    .unwrap_or_default()
            ),
        );
        map.insert("runbook".into(), json!(runbook(action).unwrap_or_default()));
        map.insert("status".into(), json!(status.as_str()));
    }
    ctx
}

/// `model=summarizer,region=eu`.
pub fn subject_text(subject: &BTreeMap<String, String>) -> String {
    if subject.is_empty() {
        return "(no subject)".to_string();
    }
    Subject(subject).to_string()
}

/// The runbook link from the annotations (`runbook` or `runbook_url`), if any.
pub fn runbook(action: &Action) -> Option<&str> {
    ["runbook", "runbook_url"]
        .iter()
        .filter_map(|k| action.annotations.get(*k))
        .map(|s| s.trim())
        .find(|s| !s.is_empty())
}

/// One line per compared variable, value against threshold, e.g.
/// `canary_error_rate = 0.105 (threshold > 0.05)`; then the condition's
/// other variables, e.g. `canary_requests = 1200`.
pub fn checks(action: &Action) -> Vec<String> {
    let values = &action.evidence.values;
    let mut lines = Vec::new();
    for t in &action.evidence.thresholds {
        let value = values
            .get(&t.variable)
            .map(|v| number(*v))
            .unwrap_or_else(|| "no data".to_string());
        lines.push(format!(
            "{} = {value} (threshold {} {})",
            t.variable,
            t.op,
            number(t.value)
        ));
    }
    for (name, value) in values {
        if !action
            .evidence
            .thresholds
            .iter()
            .any(|t| &t.variable == name)
        {
            lines.push(format!("{name} = {}", number(*value)));
        }
    }
    lines
}

/// A number as a person writes it: `1` rather than `1.0`, at most 6
/// significant decimals.
pub fn number(v: f64) -> String {
    if !v.is_finite() {
        return v.to_string();
    }
    if v.fract() == 0.0 && v.abs() < 1e15 {
        return format!("{v:.0}");
    }
    let text = format!("{v:.6}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text == "0" || text == "-0" {
        // Smaller than 6 decimals show: keep its shortest exact form.
        return v.to_string();
    }
    text.to_string()
}

/// `text` cut to at most `max` bytes on a character boundary, with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Implements [`Connector`](crate::Connector) for a notification receiver
/// with a `name` field and an `async fn send(&self, &Action, Status)`:
/// firing actions are sent as firing, resolutions as resolved.
macro_rules! notification_connector {
    ($connector:ty) => {
        impl $crate::Connector for $connector {
            fn name(&self) -> &str {
                &self.name
            }

            fn execute<'a>(
                &'a self,
                action: &'a $crate::Action,
            ) -> $crate::connector::BoxFuture<'a, Result<$crate::Outcome, $crate::ConnectorError>>
            {
                Box::pin(self.send(action, $crate::message::Status::Firing))
            }

            fn resolve<'a>(
                &'a self,
                action: &'a $crate::Action,
            ) -> Option<
                $crate::connector::BoxFuture<'a, Result<$crate::Outcome, $crate::ConnectorError>>,
            > {
                Some(Box::pin(
                    self.send(action, $crate::message::Status::Resolved),
                ))
            }
        }
    };
}
pub(crate) use notification_connector;

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

    use super::*;
    use crate::action::Evidence;
    use canaryd_rules::condition::Threshold;
    use canaryd_rules::{ActionName, Severity, Span, Timestamp};

    pub(crate) fn action() -> Action {
        let subject: BTreeMap<String, String> =
            [("model".to_string(), "summarizer".to_string())].into();
        Action {
            key: Action::key_for("Canary Error Rate High", &subject, Timestamp(1_000)),
            ts: Timestamp(301_000),
            rule: "Canary Error Rate High".into(),
            subject,
            action: ActionName::AutoRollback,
            severity: Severity::Critical,
            deadline: Span::seconds(30),
            dry_run: false,
            evidence: Evidence {
                condition: "canary_error_rate > 0.05".into(),
                values: [("canary_error_rate".to_string(), 0.105313)].into(),
                thresholds: vec![Threshold {
                    variable: "canary_error_rate".into(),
                    op: ">",
                    value: 0.05,
                }],
                duration: Span::seconds(300),
                since: Timestamp(1_000),
            },
            labels: [("team".to_string(), "ml-platform".to_string())].into(),
            annotations: [
                ("summary".to_string(), "error rate 10%".to_string()),
                (
                    "runbook".to_string(),
                    "https://runbooks.example.com/canary#error-rate".to_string(),
                ),
            ]
            .into(),
            traffic: None,
        }
    }

    #[test]
    fn the_built_in_templates_compile_and_read_well() {
        assert!(check_templates(Some(DEFAULT_TITLE), Some(DEFAULT_BODY)).is_empty());
        let m = Templates::new(None, None)
            .unwrap()
            .render(&action(), Status::Firing);
        assert_eq!(
            m.title,
            "[CRITICAL] Canary Error Rate High: auto_rollback for model=summarizer"
        );
        assert_eq!(
            m.body,
            "Canary Error Rate High (critical) fired for model=summarizer.
error rate 10%

Action: auto_rollback (deadline 30s)
Condition: canary_error_rate > 0.05
  canary_error_rate = 0.105313 (threshold > 0.05)
True since 1970-01-01T00:00:01.000Z (required for 5m); fired at 1970-01-01T00:05:01.000Z.
Runbook: https://runbooks.example.com/canary#error-rate
Key: Canary Error Rate High|model=summarizer|1000
"
        );
        let mut a = action();
        a.dry_run = true;
        a.annotations.clear();
        let m = Templates::builtin().render(&a, Status::Resolved);
        assert_eq!(
            m.title,
            "[RESOLVED] Canary Error Rate High for model=summarizer (dry run)"
        );
        assert!(m.body.starts_with("Resolved: "), "{}", m.body);
        assert!(m.body.contains("DRY RUN"), "{}", m.body);
        assert!(!m.body.contains("Runbook"), "{}", m.body);
    }

    #[test]
    fn bad_templates_are_reported() {
        let problems = check_templates(Some("{{ rule"), Some("{{ rulez }}"));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("title_template: template does not compile"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("unknown variable `rulez`"),
            "{problems:?}"
        );
        assert!(Templates::new(Some("{% if %}"), None).is_err());
    }

    #[test]
    fn custom_templates_render_and_runtime_failures_fall_back() {
        let t = Templates::new(
            Some("{{ rule }} on {{ subject.model }} = {{ values.canary_error_rate }}"),
            Some("{{ values.missing_var }}"),
        )
        .unwrap();
        let m = t.render(&action(), Status::Firing);
        assert_eq!(m.title, "Canary Error Rate High on summarizer = 0.105313");
        assert!(m.body.contains("fired for model=summarizer"), "{}", m.body);
        assert!(m.body.contains("body template error"), "{}", m.body);
    }

    #[test]
    fn numbers_read_like_numbers() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(0.05), "0.05");
        assert_eq!(number(0.1053131234), "0.105313");
        assert_eq!(number(0.0000001), "0.0000001");
        assert_eq!(truncate("ééé", 4), "…");
        assert_eq!(truncate("abcdef", 5), "ab…");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
