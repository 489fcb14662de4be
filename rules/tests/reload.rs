//! Reloading rules keeps what still applies: unchanged rules keep their
//! pending and firing state and timers, so nothing re-fires; changed rules
//! restart; removed rules' alerts are reported.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::collections::BTreeMap;
use std::sync::Arc;

use canaryd_rules::event::MetricEvent;
use canaryd_rules::{
    Engine, EngineConfig, Event, LoadOptions, Output, Phase, RuleSet, Timestamp, load_rules,
};

fn rules(text: &str) -> Arc<RuleSet> {
    Arc::new(
        RuleSet::new(load_rules("r.yaml", text.as_bytes(), &LoadOptions::default()).unwrap())
            .unwrap(),
    )
}

fn metric(sec: i64, name: &str, value: f64) -> Event {
    Event::Metric(MetricEvent {
        ts: Timestamp(sec * 1000),
        name: name.into(),
        value,
        labels: BTreeMap::from([("model".to_string(), "m".to_string())]),
    })
}

fn feed(engine: &mut Engine, events: &[Event]) -> Vec<(i64, String, Phase)> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for e in events {
        engine.ingest(e, &mut out);
        for o in out.drain(..) {
            if let Output::Transition(t) = o {
                seen.push((
                    t.ts.millis() / 1000,
                    engine.rules().rules()[t.rule].name.clone(),
                    t.to,
                ));
            }
        }
    }
    seen
}

const BEFORE: &str = r#"
alerts:
  - name: errors
    condition: canary_error_rate > 0.05
    duration: 5m
    severity: critical
  - name: latency
    condition: canary_p95_latency > 5000
    duration: 0s
    severity: high
  - name: cost
    condition: canary_cost_per_request > 0.01
    duration: 0s
    severity: medium
"#;

const AFTER: &str = r#"
alerts:
  - name: errors
    condition: canary_error_rate > 0.05
    duration: 5m
    severity: critical
  - name: latency
    condition: canary_p95_latency > 4000
    duration: 0s
    severity: high
  - name: fairness
    condition: canary_fairness_metric < 0.8
    duration: 0s
    severity: high
"#;

fn subject() -> BTreeMap<String, String> {
    BTreeMap::from([("model".to_string(), "m".to_string())])
}

#[test]
fn unchanged_rules_keep_state_and_timers_changed_restart_removed_are_reported() {
    let vocabulary = canaryd_rules::Vocabulary::builtin();
    let mut engine = Engine::new(rules(BEFORE), &vocabulary, EngineConfig::default());
    let before = feed(
        &mut engine,
        &[
            metric(0, "canary_error_rate", 0.09),
            metric(10, "canary_p95_latency", 6000.0),
            metric(20, "canary_cost_per_request", 0.02),
        ],
    );
    assert_eq!(
        before,
        vec![
            (0, "errors".to_string(), Phase::Pending),
            (10, "latency".to_string(), Phase::Firing),
            (20, "cost".to_string(), Phase::Firing),
        ]
    );

    let (mut engine, report) = engine.reload(rules(AFTER), &vocabulary);
    assert_eq!(report.kept, ["errors"]);
    assert_eq!(report.changed, ["latency"]);
    assert_eq!(report.added, ["fairness"]);
    assert_eq!(report.removed, ["cost"]);
    let dropped: Vec<(&str, Phase)> = report
        .dropped
        .iter()
        .map(|(r, _, p)| (r.as_str(), *p))
        .collect();
    assert_eq!(
        dropped,
        [("latency", Phase::Firing), ("cost", Phase::Firing)]
    );

    // "errors" is still pending from 0 s: its timer fires at 300 s, once.
    assert_eq!(
        engine.alert("errors", &subject()).unwrap().active_since,
        Some(Timestamp(0))
    );
    // The changed "latency" restarts from the sample it already has.
    assert_eq!(
        engine.alert("latency", &subject()).unwrap().phase,
        Phase::Inactive
    );
    let after = feed(
        &mut engine,
        &[
            metric(100, "canary_p95_latency", 6000.0),
            metric(301, "canary_fairness_metric", 0.9),
            metric(302, "canary_error_rate", 0.09),
        ],
    );
    assert_eq!(
        after,
        vec![
            (100, "latency".to_string(), Phase::Firing),
            (300, "errors".to_string(), Phase::Firing),
        ]
    );
}

#[test]
fn a_firing_alert_does_not_fire_again_after_a_reload_of_the_same_rules() {
    let vocabulary = canaryd_rules::Vocabulary::builtin();
    let mut engine = Engine::new(rules(BEFORE), &vocabulary, EngineConfig::default());
    let seen = feed(
        &mut engine,
        &[
            metric(0, "canary_error_rate", 0.09),
            metric(300, "canary_error_rate", 0.09),
        ],
    );
    assert_eq!(
        seen.last().unwrap(),
        &(300, "errors".to_string(), Phase::Firing)
    );
    let (mut engine, report) = engine.reload(rules(BEFORE), &vocabulary);
    assert!(report.dropped.is_empty() && report.changed.is_empty());
    let seen = feed(
        &mut engine,
        &[
            metric(310, "canary_error_rate", 0.1),
            metric(320, "canary_error_rate", 0.1),
        ],
    );
    assert!(seen.is_empty(), "no re-fire after reload: {seen:?}");
    assert_eq!(
        engine.alert("errors", &subject()).unwrap().fired_at,
        Some(Timestamp(300_000))
    );
}

#[test]
fn a_reload_reuses_compiled_conditions_only_against_the_same_vocabulary() {
    let text = "alerts:\n  - name: gpu\n    condition: gpu_memory_bytes > 1e9\n    duration: 0s\n    severity: high\n";
    let with_gpu = LoadOptions {
        vocabulary: canaryd_rules::Vocabulary::builtin().with_extra(["gpu_memory_bytes"]),
        ..LoadOptions::default()
    };
    let running =
        Arc::new(RuleSet::new(load_rules("r.yaml", text.as_bytes(), &with_gpu).unwrap()).unwrap());
    // Same vocabulary: loads (the compiled condition is reused).
    let again = LoadOptions {
        previous: Some((running.clone(), with_gpu.vocabulary.clone())),
        ..with_gpu.clone()
    };
    assert!(load_rules("r.yaml", text.as_bytes(), &again).is_ok());
    // The variable was dropped from the config: the same text must now fail.
    let without = LoadOptions {
        previous: Some((running, with_gpu.vocabulary.clone())),
        ..LoadOptions::default()
    };
    let errors = load_rules("r.yaml", text.as_bytes(), &without).unwrap_err();
    assert!(
        errors[0]
            .message
            .contains("unknown variable `gpu_memory_bytes`"),
        "{errors:?}"
    );
}
