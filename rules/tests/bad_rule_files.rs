//! Every kind of bad rule file is rejected with its line, its rule and a
//! message that says what to fix.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use canaryd_rules::{LoadOptions, RuleError, load_rules};

fn errors(text: &[u8]) -> Vec<RuleError> {
    load_rules("bad.yaml", text, &LoadOptions::default()).expect_err("must be rejected")
}

/// (what, file, expected line, expected rule, expected message fragment)
const CASES: &[(&str, &str, usize, Option<&str>, &str)] = &[
    (
        "unknown field, with a suggestion",
        "alerts:\n  - name: a\n    condition: canary_error_rate > 0.05\n    duration: 5m\n    serverity: critical\n",
        5,
        Some("a"),
        "unknown field `serverity` (did you mean `severity`?)",
    ),
    (
        "bad duration",
        "alerts:\n  - name: a\n    condition: canary_error_rate > 0.05\n    duration: 5 minutes\n    severity: critical\n",
        4,
        Some("a"),
        "`duration`: invalid duration \"5 minutes\"",
    ),
    (
        "unknown severity",
        "alerts:\n  - name: a\n    condition: canary_error_rate > 0.05\n    duration: 5m\n    severity: urgent\n",
        5,
        Some("a"),
        "unknown severity `urgent`; use one of critical, high, medium, low",
    ),
    (
        "unknown action, with a suggestion",
        "alerts:\n  - name: a\n    condition: canary_error_rate > 0.05\n    duration: 5m\n    severity: high\n    action: [notify_oncall]\n",
        6,
        Some("a"),
        "unknown action `notify_oncall` (did you mean `notify_on_call`?)",
    ),
    (
        "duplicate names",
        "alerts:\n  - name: a\n    condition: canary_error_rate > 0.05\n    duration: 5m\n    severity: high\n  - name: a\n    condition: canary_error_rate > 0.1\n    duration: 1m\n    severity: critical\n",
        6,
        Some("a"),
        "duplicate rule name; first defined at line 2",
    ),
    (
        "unparsable condition",
        "alerts:\n  - name: a\n    condition: \"canary_error_rate > (0.05\"\n    duration: 5m\n    severity: high\n",
        3,
        Some("a"),
        "condition does not parse",
    ),
    (
        "unknown variable, with a suggestion",
        "alerts:\n  - name: a\n    condition: canary_eror_rate > 0.05\n    duration: 5m\n    severity: high\n",
        3,
        Some("a"),
        "unknown variable `canary_eror_rate`; did you mean `canary_error_rate`?",
    ),
    ("empty file", "# nothing here\n", 0, None, "file is empty"),
    (
        "missing required field",
        "alerts:\n  - name: a\n    duration: 5m\n    severity: high\n",
        2,
        Some("a"),
        "missing required field `condition`",
    ),
    (
        "ambiguous baseline",
        "alerts:\n  - name: a\n    condition: canary_error_rate > baseline || canary_p95_latency > baseline\n    duration: 5m\n    severity: high\n",
        3,
        Some("a"),
        "`baseline` is ambiguous",
    ),
    (
        "YAML syntax error",
        "alerts:\n  - name: a\n    condition: [unclosed\n",
        4,
        None,
        "YAML syntax error",
    ),
    (
        "condition that is not true or false",
        "alerts:\n  - name: a\n    condition: canary_error_rate * 100\n    duration: 5m\n    severity: high\n",
        3,
        Some("a"),
        "must evaluate to true or false",
    ),
    (
        "annotation template with a typo",
        "alerts:\n  - name: a\n    condition: canary_error_rate > 0.05\n    duration: 5m\n    severity: high\n    annotations:\n      summary: \"{{ subjet.model }}\"\n",
        7,
        Some("a"),
        "annotation `summary`: template uses unknown variable `subjet` (did you mean `subject`?)",
    ),
    (
        "alerts is not a list",
        "alerts:\n  name: a\n",
        2,
        None,
        "`alerts:` must be a list of rules, found a mapping",
    ),
    (
        "unknown top-level key",
        "alert:\n  - name: a\n",
        1,
        None,
        "unknown top-level key `alert` (did you mean `alerts`?)",
    ),
    (
        "rule without a name",
        "alerts:\n  - condition: canary_error_rate > 0.05\n    duration: 5m\n    severity: high\n",
        2,
        None,
        "rule has no `name`",
    ),
    (
        "min_samples that is not a positive number",
        "alerts:\n  - name: a\n    condition: canary_error_rate > 0.05\n    duration: 5m\n    severity: high\n    min_samples: -3\n",
        6,
        Some("a"),
        "`min_samples` must be a positive whole number",
    ),
    (
        "dry_run that is not a boolean",
        "alerts:\n  - name: a\n    condition: canary_error_rate > 0.05\n    duration: 5m\n    severity: high\n    dry_run: \"yes\"\n",
        6,
        Some("a"),
        "`dry_run` must be true or false",
    ),
];

#[test]
fn each_kind_of_bad_file_has_its_own_clear_error() {
    for (what, text, line, rule, fragment) in CASES {
        let errs = errors(text.as_bytes());
        let found = errs.iter().find(|e| e.message.contains(fragment));
        let Some(e) = found else {
            panic!("{what}: no error containing {fragment:?} in {errs:#?}");
        };
        assert_eq!(e.line, *line, "{what}: line of {e}");
        assert_eq!(e.rule.as_deref(), *rule, "{what}: rule of {e}");
        assert_eq!(&*e.file, "bad.yaml", "{what}");
        let shown = e.to_string();
        assert!(shown.starts_with("bad.yaml"), "{what}: {shown}");
    }
}

#[test]
fn non_utf8_files_are_rejected_with_the_line() {
    let errs = errors(b"alerts:\n  - name: \xff\xfe\n");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].line, 2);
    assert!(errs[0].message.contains("not valid UTF-8"), "{}", errs[0]);
}

#[test]
fn oversized_files_are_rejected_before_parsing() {
    let options = LoadOptions {
        max_bytes: 1024,
        ..LoadOptions::default()
    };
    let big = format!("alerts:\n{}", "  # padding\n".repeat(200));
    let errs = load_rules("big.yaml", big.as_bytes(), &options).unwrap_err();
    assert!(
        errs[0]
            .message
            .contains("larger than the limit of 1024 bytes"),
        "{}",
        errs[0]
    );
}

#[test]
fn every_error_in_a_file_is_reported_not_just_the_first() {
    let text = "alerts:
  - name: one
    condition: canary_eror_rate > 0.05
    duration: 5m
    severity: critical
  - name: two
    condition: canary_error_rate > 0.05
    duration: 5x
    severity: severe
    colour: red
  - name: three
    condition: canary_error_rate > 0.05
    duration: 5m
    severity: low
";
    let errs = errors(text.as_bytes());
    let summary: Vec<(usize, Option<&str>)> =
        errs.iter().map(|e| (e.line, e.rule.as_deref())).collect();
    assert_eq!(
        summary,
        vec![
            (3, Some("one")),
            (8, Some("two")),
            (9, Some("two")),
            (10, Some("two"))
        ],
        "{errs:#?}"
    );
}

#[test]
fn the_playbook_file_loads_unchanged_with_matrix_deadlines() {
    let text = std::fs::read("../deploy/examples/canary-alerts.yaml").unwrap();
    let rules = load_rules("canary-alerts.yaml", &text, &LoadOptions::default()).unwrap();
    let summary: Vec<(&str, &str, i64, String)> = rules
        .iter()
        .map(|r| {
            (
                r.name.as_str(),
                r.severity.as_str(),
                r.deadline.millis() / 1000,
                r.actions
                    .iter()
                    .map(|a| a.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "Canary Error Rate High",
                "critical",
                30,
                "auto_rollback".to_string()
            ),
            (
                "Canary Latency High",
                "high",
                120,
                "notify_on_call".to_string()
            ),
            (
                "Canary Fairness Violation",
                "high",
                120,
                "notify_ml_team".to_string()
            ),
            (
                "Canary Cost Overrun",
                "medium",
                300,
                "notify_finops".to_string()
            ),
        ]
    );
    assert_eq!(
        rules[3].condition.variables(),
        ["canary_cost_per_request", "stable_cost_per_request"]
    );
}

#[test]
fn a_rule_without_action_takes_the_matrix_default() {
    let text = "alerts:\n  - name: a\n    condition: canary_error_rate > 0.02\n    duration: 5m\n    severity: medium\n";
    let rules = load_rules("m.yaml", text.as_bytes(), &LoadOptions::default()).unwrap();
    assert_eq!(rules[0].actions, [canaryd_rules::ActionName::ReduceTraffic]);
    assert!(rules[0].actions_from_matrix);
    assert_eq!(rules[0].deadline.millis(), 300_000);
}
