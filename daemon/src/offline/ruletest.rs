//! `canaryd test`: unit tests for rules, in the spirit of `promtool test rules`.
//!
//! A test file names rule files, then gives inputs at offsets from time
//! zero and the alerts (and actions) expected at given times.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use canaryd_rules::event::{AlertEvent, MetricEvent};
use canaryd_rules::{Engine, EngineConfig, Event, LoadOptions, Output, Phase, Span, Timestamp};
use serde::Deserialize;

use crate::act::decide::actions_for;
use crate::config::{ConfigError, load_rule_files};

/// A rule test file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// Rule files under test, relative to the test file.
    pub rule_files: Vec<PathBuf>,
    /// Staleness and lateness for the engine.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Analytics windows, as in the config file.
    #[serde(default)]
    pub analytics: canaryd_rules::analytics::AnalyticsConfig,
    /// Site-specific variables, as in the config file.
    #[serde(default)]
    pub variables: Vec<String>,
    /// The test cases.
    pub tests: Vec<TestCase>,
}

/// One scenario.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// Shown in the report.
    pub name: String,
    /// Step between values of `input_series`.
    #[serde(default = "one_minute")]
    pub interval: Span,
    /// Metric series in promtool's expanding notation.
    #[serde(default)]
    pub input_series: Vec<Series>,
    /// Individual events at offsets.
    #[serde(default)]
    pub input_events: Vec<TimedEvent>,
    /// Expected alerts at given times.
    #[serde(default)]
    pub alert_rule_test: Vec<AlertCheck>,
    /// Expected actions decided up to given times.
    #[serde(default)]
    pub action_test: Vec<ActionCheck>,
}

fn one_minute() -> Span {
    Span::seconds(60)
}

/// A metric series: `values: "0.01 0.07x10 _ 3+2x4"`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Series {
    /// The variable, e.g. `canary_error_rate`.
    pub metric: String,
    /// Labels, e.g. `{model: summarizer}`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Space-separated values: `a`, `_` (no sample), `axN` (N+1 times `a`),
    /// `a+bxN` / `a-bxN` (N+1 values stepping by b), `_xN` (N gaps).
    pub values: String,
}

/// An event at an offset.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimedEvent {
    /// Offset from time zero.
    pub at: Span,
    /// The event without `ts`.
    pub event: TestEvent,
}

/// An event in a test, without its timestamp.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum TestEvent {
    /// A metric sample.
    Metric {
        /// Variable name.
        name: String,
        /// Its value.
        value: f64,
        /// Labels.
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
    /// An alert.
    Alert {
        /// Alert name.
        name: String,
        /// Firing or resolved.
        status: canaryd_rules::event::AlertStatus,
        /// Severity text.
        #[serde(default)]
        severity: Option<String>,
        /// Labels.
        #[serde(default)]
        labels: BTreeMap<String, String>,
    },
}

/// Alerts of one rule expected at one time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertCheck {
    /// Offset from time zero.
    pub eval_time: Span,
    /// The rule's name.
    pub alertname: String,
    /// Every pending or firing alert of that rule; empty means none.
    #[serde(default)]
    pub exp_alerts: Vec<ExpectedAlert>,
}

/// One expected alert.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedAlert {
    /// The subject's labels.
    pub exp_labels: BTreeMap<String, String>,
    /// `firing` (default) or `pending`.
    #[serde(default = "firing")]
    pub exp_state: Phase,
}

fn firing() -> Phase {
    Phase::Firing
}

/// Actions expected to have been decided by a time.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionCheck {
    /// Offset from time zero.
    pub eval_time: Span,
    /// Every action decided up to then, in any order.
    #[serde(default)]
    pub exp_actions: Vec<ExpectedAction>,
}

/// One expected action.
#[derive(Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord, Clone)]
#[serde(deny_unknown_fields)]
pub struct ExpectedAction {
    /// The rule that decided it.
    pub rule: String,
    /// The action's name.
    pub action: String,
    /// The subject.
    pub subject: BTreeMap<String, String>,
}

/// The result of one test case.
#[derive(Debug)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Readable failures; empty when it passed.
    pub failures: Vec<String>,
}

/// Why a test file could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum TestFileError {
    /// Unreadable.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Not a valid test file.
    #[error("{0}: {1}")]
    Invalid(PathBuf, String),
    /// Its rules do not load.
    #[error("{0}")]
    Rules(#[from] ConfigError),
}

/// Parses a test file and loads its rules (to check it, or to run it).
pub fn load(path: &Path) -> Result<(TestFile, crate::config::Loaded), TestFileError> {
    let text = std::fs::read_to_string(path).map_err(|e| TestFileError::Io(path.into(), e))?;
    let mut file: TestFile = serde_yaml_ng::from_str(&text)
        .map_err(|e| TestFileError::Invalid(path.into(), e.to_string()))?;
    if file.tests.is_empty() {
        return Err(TestFileError::Invalid(
            path.into(),
            "`tests:` is empty".into(),
        ));
    }
    let base = path.parent().unwrap_or(Path::new("."));
    file.rule_files = file.rule_files.iter().map(|p| base.join(p)).collect();
    let config = crate::config::Config {
        rules: file.rule_files.clone(),
        engine: file.engine.clone(),
        analytics: file.analytics.clone(),
        variables: file.variables.clone(),
        ..Default::default()
    };
    let vocabulary =
        canaryd_rules::Vocabulary::builtin().with_extra(file.variables.iter().cloned());
    let options = LoadOptions {
        vocabulary: vocabulary.clone(),
        ..LoadOptions::default()
    };
    let rules = load_rule_files(&file.rule_files, &options)?;
    for case in &file.tests {
        for check in &case.alert_rule_test {
            if rules.get(&check.alertname).is_none() {
                return Err(TestFileError::Invalid(
                    path.into(),
                    format!("test {:?}: no rule named {:?}", case.name, check.alertname),
                ));
            }
        }
        for series in &case.input_series {
            expand(&series.values).map_err(|e| {
                TestFileError::Invalid(
                    path.into(),
                    format!("test {:?}: series {}: {e}", case.name, series.metric),
                )
            })?;
        }
    }
    let loaded = crate::config::Loaded {
        config,
        vocabulary,
        rules: std::sync::Arc::new(rules),
    };
    Ok((file, loaded))
}

/// Runs every case of a loaded test file.
pub fn run(file: &TestFile, loaded: &crate::config::Loaded) -> Vec<CaseResult> {
    file.tests
        .iter()
        .map(|case| run_case(case, loaded))
        .collect()
}

enum Step<'a> {
    Input(Event),
    Alerts(&'a AlertCheck),
    Actions(&'a ActionCheck),
}

fn run_case(case: &TestCase, loaded: &crate::config::Loaded) -> CaseResult {
    // Inputs at a time are applied before checks at that time.
    let mut steps: Vec<(Timestamp, u8, usize, Step<'_>)> = Vec::new();
    let mut seq = 0usize;
    let mut next = || {
        seq += 1;
        seq
    };
    for series in &case.input_series {
        for (i, value) in expand(&series.values)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let Some(value) = value else { continue };
            let ts = Timestamp(case.interval.millis() * i as i64);
            let event = Event::Metric(MetricEvent {
                ts,
                name: series.metric.clone(),
                value,
                labels: series.labels.clone(),
            });
            steps.push((ts, 0, next(), Step::Input(event)));
        }
    }
    for timed in &case.input_events {
        let ts = Timestamp(timed.at.millis());
        let event = match &timed.event {
            TestEvent::Metric {
                name,
                value,
                labels,
            } => Event::Metric(MetricEvent {
                ts,
                name: name.clone(),
                value: *value,
                labels: labels.clone(),
            }),
            TestEvent::Alert {
                name,
                status,
                severity,
                labels,
            } => Event::Alert(AlertEvent {
                ts,
                name: name.clone(),
                status: *status,
                severity: severity.clone(),
                labels: labels.clone(),
                annotations: BTreeMap::new(),
            }),
        };
        steps.push((ts, 0, next(), Step::Input(event)));
    }
    for check in &case.alert_rule_test {
        steps.push((
            Timestamp(check.eval_time.millis()),
            1,
            next(),
            Step::Alerts(check),
        ));
    }
    for check in &case.action_test {
        steps.push((
            Timestamp(check.eval_time.millis()),
            1,
            next(),
            Step::Actions(check),
        ));
    }
    steps.sort_by_key(|(ts, order, seq, _)| (*ts, *order, *seq));

    let mut engine = Engine::new(
        loaded.rules.clone(),
        &loaded.vocabulary,
        loaded.engine_config(),
    );
    let mut outputs = Vec::new();
    let mut decided: Vec<ExpectedAction> = Vec::new();
    let mut failures = Vec::new();
    for (ts, _, _, step) in steps {
        match step {
            Step::Input(ref event) => {
                engine.ingest(event, &mut outputs);
            }
            Step::Alerts(_) | Step::Actions(_) => engine.advance(ts, &mut outputs),
        }
        for output in outputs.drain(..) {
            if let Output::Transition(t) = output {
                decided.extend(actions_for(&t, &loaded.rules, true).into_iter().map(|a| {
                    ExpectedAction {
                        rule: a.rule,
                        action: a.action.to_string(),
                        subject: a.subject,
                    }
                }));
            }
        }
        match step {
            Step::Input(_) => {}
            Step::Alerts(check) => {
                let want: BTreeSet<String> = check
                    .exp_alerts
                    .iter()
                    .map(|e| alert_line(&e.exp_labels, e.exp_state))
                    .collect();
                let got: BTreeSet<String> = engine
                    .alerts()
                    .filter(|a| a.rule == check.alertname && a.state.phase.is_active())
                    .map(|a| alert_line(a.subject, a.state.phase))
                    .collect();
                if want != got {
                    failures.push(diff(
                        &format!("at {}, alerts of {:?}", check.eval_time, check.alertname),
                        &want,
                        &got,
                    ));
                }
            }
            Step::Actions(check) => {
                let line = |a: &ExpectedAction| {
                    format!("{} {} by {:?}", a.action, labels_text(&a.subject), a.rule)
                };
                let want: BTreeSet<String> = check.exp_actions.iter().map(line).collect();
                let got: BTreeSet<String> = decided.iter().map(line).collect();
                if want != got {
                    failures.push(diff(
                        &format!("at {}, actions decided so far", check.eval_time),
                        &want,
                        &got,
                    ));
                }
            }
        }
    }
    CaseResult {
        name: case.name.clone(),
        failures,
    }
}

fn labels_text(labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", inner.join(", "))
}

fn alert_line(labels: &BTreeMap<String, String>, phase: Phase) -> String {
    format!("{} {}", phase, labels_text(labels))
}

/// A unified diff of expected against actual, one item per line.
fn diff(title: &str, want: &BTreeSet<String>, got: &BTreeSet<String>) -> String {
    let join = |s: &BTreeSet<String>| {
        let mut text: String = s.iter().map(|l| format!("{l}\n")).collect();
        if text.is_empty() {
            text.push_str("(none)\n");
        }
        text
    };
    let (want, got) = (join(want), join(got));
    let diff = similar::TextDiff::from_lines(&want, &got);
    let mut out = format!("{title}:\n");
    for change in diff.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "- expected ",
            similar::ChangeTag::Insert => "+ got      ",
            similar::ChangeTag::Equal => "            ",
        };
        out.push_str(&format!("    {sign}{change}"));
    }
    out
}

/// Expands promtool's series notation into one optional value per step.
pub fn expand(values: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for token in values.split_whitespace() {
        let (head, times) = match token.rsplit_once('x') {
            Some((head, n)) => (
                head,
                Some(
                    n.parse::<usize>()
                        .map_err(|_| format!("bad repeat count in {token:?}"))?,
                ),
            ),
            None => (token, None),
        };
        if head == "_" {
            out.extend(std::iter::repeat_n(None, times.unwrap_or(1)));
            continue;
        }
        // Split `a+b` / `a-b`, ignoring a leading sign and exponent signs.
        let op = head
            .char_indices()
            .skip(1)
            .find(|&(i, c)| (c == '+' || c == '-') && !head[..i].ends_with(['e', 'E']));
        let number = |s: &str| {
            s.parse::<f64>()
                .map_err(|_| format!("bad number {s:?} in {token:?}"))
        };
        let (start, step) = match op {
            Some((i, c)) => {
                let step = number(&head[i + 1..])?;
                (number(&head[..i])?, if c == '-' { -step } else { step })
            }
            None => (number(head)?, 0.0),
        };
        if op.is_some() && times.is_none() {
            return Err(format!(
                "{token:?}: a step needs a repeat count, as in 1+2x3"
            ));
        }
        let n = times.unwrap_or(0);
        if n > 1_000_000 {
            return Err(format!("{token:?}: repeat count too large"));
        }
        out.extend((0..=n).map(|k| Some(start + step * k as f64)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn series_notation_expands_like_promtool() {
        assert_eq!(
            expand("1 _ 2x2").unwrap(),
            vec![Some(1.0), None, Some(2.0), Some(2.0), Some(2.0)]
        );
        assert_eq!(
            expand("1+2x2").unwrap(),
            vec![Some(1.0), Some(3.0), Some(5.0)]
        );
        assert_eq!(expand("-1-1x1").unwrap(), vec![Some(-1.0), Some(-2.0)]);
        assert_eq!(expand("1e-3 _x2").unwrap(), vec![Some(0.001), None, None]);
        assert!(expand("abc").is_err());
        assert!(expand("1+2").is_err());
    }
}
