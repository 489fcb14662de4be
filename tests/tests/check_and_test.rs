//! `canaryd check` and `canaryd test`, through the binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use canaryd_tests::{canaryd, repo, stderr, stdout};

#[test]
fn the_examples_are_valid() {
    let out = canaryd(&[
        "check",
        "deploy/examples/canary-alerts.yaml",
        "deploy/examples/playbook-triggers.yaml",
        "deploy/examples/canaryd.yaml",
        "deploy/examples/canary-alerts.test.yaml",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("canary-alerts.yaml: ok, 4 rules"), "{text}");
    assert!(
        text.contains("canaryd.yaml: ok, config with 9 rules from 2 files"),
        "{text}"
    );
}

#[test]
fn check_lists_every_error_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "alerts:\n  - name: a\n    condition: canary_eror_rate > 1\n    duration: 5m\n    severity: critical\n  - name: b\n    condition: canary_error_rate > 1\n    duration: soon\n    severity: critical\n",
    )
    .unwrap();
    let out = canaryd(&[
        "check",
        bad.to_str().unwrap(),
        "deploy/examples/canary-alerts.yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(text.contains("bad.yaml:3: rule \"a\": unknown variable `canary_eror_rate`; did you mean `canary_error_rate`?"), "{text}");
    assert!(
        text.contains("bad.yaml:8: rule \"b\": `duration`: invalid duration \"soon\""),
        "{text}"
    );
    assert!(
        text.contains("canary-alerts.yaml: ok"),
        "the good file is still checked: {text}"
    );
}

#[test]
fn a_config_with_a_missing_rule_file_or_unknown_key_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("canaryd.yaml");
    std::fs::write(&config, "rules: [nope.yaml]\n").unwrap();
    let out = canaryd(&["check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("nope.yaml: cannot read"),
        "{}",
        stdout(&out)
    );

    std::fs::write(&config, "rules: [x.yaml]\ndry_rnu: true\n").unwrap();
    let out = canaryd(&["check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("unknown field `dry_rnu`"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn rule_tests_pass_on_the_examples() {
    let out = canaryd(&["test", "deploy/examples/canary-alerts.test.yaml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("6 passed, 0 failed"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn a_failing_rule_test_prints_a_diff_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let rules = repo("deploy/examples/canary-alerts.yaml");
    let test = dir.path().join("t.yaml");
    std::fs::write(
        &test,
        format!(
            "rule_files: [{}]
tests:
  - name: expects a rollback that cannot happen
    interval: 1m
    input_series:
      - metric: canary_error_rate
        labels: {{model: summarizer}}
        values: \"0.01x10\"
    alert_rule_test:
      - eval_time: 6m
        alertname: Canary Error Rate High
        exp_alerts:
          - exp_labels: {{model: summarizer}}
",
            rules.display()
        ),
    )
    .unwrap();
    let out = canaryd(&["test", test.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("FAIL  expects a rollback that cannot happen"),
        "{text}"
    );
    assert!(
        text.contains("- expected firing {model=\"summarizer\"}"),
        "{text}"
    );
    assert!(text.contains("+ got      (none)"), "{text}");
    assert!(text.contains("0 passed, 1 failed"), "{text}");
}

#[test]
fn check_rejects_bad_routes_and_kube_targets_that_use_unknown_labels() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("canaryd.yaml");
    let rules = repo("deploy/examples/canary-alerts.yaml");
    std::fs::write(
        &config,
        format!(
            "rules: [{}]
receivers:
  kube:
    type: kube
    target: {{kind: VirtualService, namespace: ml-serving, name: 'model-{{{{ model }}}}-{{{{ region }}}}'}}
routes:
  auto_rollback: {{receivers: [kube]}}
  notify_on_call: {{receivers: []}}
  notify_finops: {{receivers: [finops-mail]}}
",
            rules.display()
        ),
    )
    .unwrap();
    let out = canaryd(&["check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains("routes.notify_on_call: no receiver"),
        "{text}"
    );
    assert!(
        text.contains("routes.notify_finops: unknown receiver `finops-mail`"),
        "{text}"
    );
    assert!(
        text.contains("receivers.kube: rule \"Canary Error Rate High\""),
        "{text}"
    );
    assert!(text.contains("region"), "{text}");

    std::fs::write(
        &config,
        format!(
            "rules: [{}]\nreceivers:\n  x: {{type: carrier-pigeon}}\n",
            rules.display()
        ),
    )
    .unwrap();
    let out = canaryd(&["check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("unknown receiver type `carrier-pigeon`"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn check_rejects_receivers_without_an_address_bad_templates_and_inline_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("canaryd.yaml");
    let rules = repo("deploy/examples/canary-alerts.yaml");
    std::fs::write(
        &config,
        format!(
            "rules: [{}]
receivers:
  slack: {{type: slack, url: ''}}
  mail: {{type: email, host: '', from: a@example.com, to: [b@example.com], title_template: '{{{{ rule '}}
  pager: {{type: pagerduty, routing_key: 0123456789abcdef0123456789abcdef}}
routes:
  notify_on_call: {{receivers: [slack, pager]}}
  notify_ml_team: {{receivers: [mail]}}
",
            rules.display()
        ),
    )
    .unwrap();
    let out = canaryd(&["check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("receivers.slack: url"), "{text}");
    assert!(text.contains("receivers.mail: host"), "{text}");
    assert!(text.contains("receivers.mail: title_template"), "{text}");
    assert!(
        text.contains("receivers.pager.routing_key is a secret"),
        "{text}"
    );
}

#[test]
fn check_rejects_bad_rollout_plans_with_line_and_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("canaryd.yaml");
    std::fs::write(
        &config,
        format!(
            "rules: [{rules}]
receivers:
  pager: {{type: pagerduty, routing_key: {{env: PD_KEY}}}}
rollouts:
  receiver: pager
  incident: [tickets]
  default:
    stages:
      - {{ weight: 10, hold: 1h }}
      - {{ weight: 5, hold: 1h }}
      - {{ weight: 120, hold: 0s }}
  models:
    fraud:
      gating_rules: [Canary Error Rate Hgh]
  manual: [fraud]
  record_every: 0s
  watch_every: 100ms
",
            rules = repo("deploy/examples/canary-alerts.yaml").display()
        ),
    )
    .unwrap();
    let out = canaryd(&["check", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let text = stdout(&out);
    for expected in [
        "canaryd.yaml:5: rollouts.receiver: receiver `pager` cannot set traffic weights",
        "canaryd.yaml:6: rollouts.incident: unknown receiver `tickets`",
        "canaryd.yaml:7: rollouts.default: stage 2: weight 5 must be above the previous stage's 10",
        "canaryd.yaml:7: rollouts.default: stage 3: weight 120 must be between 1 and 99",
        "canaryd.yaml:7: rollouts.default: stage 3: a hold of 0s leaves no time to see the canary's data",
        "canaryd.yaml:14: rollouts.models.fraud.gating_rules: no rule is named `Canary Error Rate Hgh`",
        "canaryd.yaml:13: rollouts.models.fraud: the model is also in rollouts.manual",
        "canaryd.yaml:16: rollouts.record_every: 0s is under 1s",
        "canaryd.yaml:17: rollouts.watch_every: 100ms is under 1s",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
}
