//! The engine, table-driven: events in, transitions out, in event time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::collections::BTreeMap;
use std::sync::Arc;

use canaryd_rules::event::{AlertEvent, AlertStatus, MetricEvent};
use canaryd_rules::{
    Engine, EngineConfig, Event, Ingested, LoadOptions, Output, Phase, RuleSet, Span, Timestamp,
    load_rules,
};

const RULES: &str = r#"
alerts:
  - name: "Error Rate"
    condition: "canary_error_rate > 0.05"
    duration: "5m"
    severity: "critical"
    action: "auto_rollback"
  - name: "Critical Errors"
    condition: "critical_errors > 0"
    duration: "0s"
    severity: "critical"
  - name: "Regional Latency"
    condition: "canary_p95_latency > 1.2 * baseline"
    duration: "1m"
    severity: "medium"
    group_by: [model, region]
"#;

fn engine(config: EngineConfig) -> Engine {
    let options = LoadOptions::default();
    let rules = load_rules("t.yaml", RULES.as_bytes(), &options).unwrap();
    Engine::new(
        Arc::new(RuleSet::new(rules).unwrap()),
        &options.vocabulary,
        config,
    )
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn metric(sec: i64, name: &str, value: f64, l: &[(&str, &str)]) -> Event {
    Event::Metric(MetricEvent {
        ts: Timestamp(sec * 1000),
        name: name.into(),
        value,
        labels: labels(l),
    })
}

fn alert(sec: i64, status: AlertStatus, l: &[(&str, &str)]) -> Event {
    Event::Alert(AlertEvent {
        ts: Timestamp(sec * 1000),
        name: "ModelCrashLoop".into(),
        status,
        severity: Some("critical".into()),
        labels: labels(l),
        annotations: BTreeMap::new(),
    })
}

/// Feeds events and returns "ts rule subject from->to" lines.
fn run(engine: &mut Engine, events: &[Event]) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = Vec::new();
    for e in events {
        engine.ingest(e, &mut out);
        for o in out.drain(..) {
            lines.push(match o {
                Output::Transition(t) => {
                    let subject: Vec<String> = t.subject.values().cloned().collect();
                    format!(
                        "{} {} {} {}->{}",
                        t.ts.millis() / 1000,
                        engine.rules().rules()[t.rule].name,
                        subject.join("/"),
                        t.from,
                        t.to
                    )
                }
                Output::Stale { ts, subject } => {
                    format!(
                        "{} stale {}",
                        ts.millis() / 1000,
                        subject.values().cloned().collect::<Vec<_>>().join("/")
                    )
                }
                Output::Evicted {
                    ts,
                    subject,
                    alerts,
                } => {
                    let alerts: Vec<String> = alerts
                        .iter()
                        .map(|a| format!("{}={}", a.rule, a.state))
                        .collect();
                    format!(
                        "{} evicted {} [{}]",
                        ts.millis() / 1000,
                        subject.values().cloned().collect::<Vec<_>>().join("/"),
                        alerts.join(",")
                    )
                }
            });
        }
    }
    lines
}

const S: &[(&str, &str)] = &[("model", "summarizer")];
const T: &[(&str, &str)] = &[("model", "translator")];

#[test]
fn subjects_are_independent_and_fire_at_the_due_time() {
    let mut e = engine(EngineConfig::default());
    let got = run(
        &mut e,
        &[
            metric(0, "canary_error_rate", 0.07, S),
            metric(10, "canary_error_rate", 0.01, T),
            metric(200, "canary_error_rate", 0.08, T),
            // No summarizer event after 0 s: its duration completes at 300 s,
            // noticed when the watermark passes it.
            metric(320, "canary_error_rate", 0.09, T),
            metric(330, "canary_error_rate", 0.01, S),
        ],
    );
    assert_eq!(
        got,
        vec![
            "0 Error Rate summarizer inactive->pending",
            "200 Error Rate translator inactive->pending",
            "300 Error Rate summarizer pending->firing",
            "330 Error Rate summarizer firing->resolved",
        ]
    );
}

#[test]
fn late_events_are_dropped_and_counted() {
    let mut e = engine(EngineConfig {
        allowed_lateness: Span::seconds(30),
        ..EngineConfig::default()
    });
    let mut out = Vec::new();
    assert_eq!(
        e.ingest(&metric(100, "canary_error_rate", 0.01, S), &mut out),
        Ingested::Applied
    );
    assert_eq!(
        e.ingest(&metric(69, "canary_error_rate", 0.9, S), &mut out),
        Ingested::Late
    );
    assert_eq!(e.stats().late, 1);
    assert!(out.is_empty());
}

#[test]
fn an_older_sample_within_lateness_does_not_replace_a_newer_one() {
    let mut e = engine(EngineConfig::default());
    let got = run(
        &mut e,
        &[
            metric(100, "canary_error_rate", 0.01, S),
            metric(90, "canary_error_rate", 0.9, S),
        ],
    );
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(e.stats().out_of_order, 1);
}

#[test]
fn stale_data_is_no_data_and_is_reported() {
    let mut e = engine(EngineConfig {
        stale_after: Span::seconds(60),
        ..EngineConfig::default()
    });
    let got = run(
        &mut e,
        &[
            metric(0, "canary_error_rate", 0.07, S),
            // Only translator talks from here on; summarizer's sample goes stale
            // before its 5 minutes are up, so it must not fire.
            metric(30, "canary_error_rate", 0.01, T),
            metric(100, "canary_error_rate", 0.01, T),
            metric(400, "canary_error_rate", 0.01, T),
        ],
    );
    assert_eq!(
        got,
        vec![
            "0 Error Rate summarizer inactive->pending",
            "100 stale summarizer"
        ]
    );
    let state = e.alert("Error Rate", &labels(S)).unwrap();
    assert_eq!(
        state.phase,
        Phase::Pending,
        "no data neither fires nor resolves"
    );
    assert_eq!(e.is_stale(&labels(S)), Some(true));
}

#[test]
fn alert_events_drive_critical_errors() {
    let mut e = engine(EngineConfig::default());
    let got = run(
        &mut e,
        &[
            alert(10, AlertStatus::Firing, S),
            alert(20, AlertStatus::Firing, S), // a repeat changes nothing
            alert(50, AlertStatus::Resolved, S),
        ],
    );
    assert_eq!(
        got,
        vec![
            "10 Critical Errors summarizer inactive->firing",
            "50 Critical Errors summarizer firing->resolved",
        ]
    );
}

#[test]
fn group_by_makes_finer_subjects_and_needs_its_labels() {
    let mut e = engine(EngineConfig::default());
    let eu = &[("model", "summarizer"), ("region", "eu")];
    let us = &[("model", "summarizer"), ("region", "us")];
    let got = run(
        &mut e,
        &[
            metric(0, "stable_p95_latency", 1000.0, eu),
            metric(0, "stable_p95_latency", 1000.0, us),
            metric(1, "canary_p95_latency", 1300.0, eu),
            metric(1, "canary_p95_latency", 1100.0, us),
            metric(61, "canary_p95_latency", 1250.0, eu),
        ],
    );
    assert_eq!(
        got,
        vec![
            "1 Regional Latency summarizer/eu inactive->pending",
            "61 Regional Latency summarizer/eu pending->firing",
        ]
    );
    let mut out = Vec::new();
    assert_eq!(
        e.ingest(&metric(70, "canary_p95_latency", 9999.0, S), &mut out),
        Ingested::Unmatched
    );
    assert_eq!(
        e.ingest(&metric(70, "gpu_temperature", 80.0, S), &mut out),
        Ingested::Unused
    );
}

#[test]
fn transitions_carry_the_evidence() {
    let mut e = engine(EngineConfig::default());
    let mut out = Vec::new();
    e.ingest(
        &metric(
            0,
            "stable_p95_latency",
            1000.0,
            &[("model", "m"), ("region", "eu")],
        ),
        &mut out,
    );
    e.ingest(
        &metric(
            5,
            "canary_p95_latency",
            1500.0,
            &[("model", "m"), ("region", "eu")],
        ),
        &mut out,
    );
    let Some(Output::Transition(t)) = out.pop() else {
        panic!("{out:?}")
    };
    assert_eq!(t.values["canary_p95_latency"], 1500.0);
    assert_eq!(t.values["stable_p95_latency"], 1000.0);
    assert_eq!(t.active_since, Some(Timestamp(5000)));
}

fn evicting() -> EngineConfig {
    EngineConfig {
        stale_after: Span::seconds(60),
        evict_after: Span::seconds(600),
        ..EngineConfig::default()
    }
}

/// A silent subject is forgotten after evict_after, its firing alert
/// ended quietly (no resolution), while the subjects after it in storage
/// keep their state and their timers.
#[test]
fn a_silent_subject_is_evicted_quietly_and_the_others_keep_their_timers() {
    let mut e = engine(evicting());
    let got = run(
        &mut e,
        &[
            // summarizer fires at 300 s, then falls silent.
            metric(0, "canary_error_rate", 0.07, S),
            metric(300, "canary_error_rate", 0.07, S),
            // translator (stored after it) goes pending at 700 s and keeps
            // reporting; its timer is due at 1000 s.
            metric(700, "canary_error_rate", 0.08, T),
            metric(950, "canary_error_rate", 0.08, T),
            metric(990, "canary_error_rate", 0.08, T),
            metric(1010, "canary_error_rate", 0.08, T),
        ],
    );
    assert_eq!(
        got,
        vec![
            "0 Error Rate summarizer inactive->pending",
            "300 Error Rate summarizer pending->firing",
            "700 Error Rate translator inactive->pending",
            "700 stale summarizer",
            "950 evicted summarizer [Error Rate=firing]",
            "1000 Error Rate translator pending->firing",
        ]
    );
    assert_eq!(e.subject_count(), 1);
    assert_eq!(e.stats().evicted, 1);
    assert_eq!(
        e.alert("Error Rate", &labels(S)),
        None,
        "an evicted subject is unknown"
    );
    // It comes back with no memory of the old episode.
    let back = run(&mut e, &[metric(1020, "canary_error_rate", 0.01, S)]);
    assert!(back.is_empty(), "{back:?}");
    assert_eq!(
        e.alert("Error Rate", &labels(S)).map(|a| a.phase),
        Some(Phase::Inactive)
    );
}

/// Memory stays bounded however many short-lived models come and go.
#[test]
fn ten_thousand_short_lived_models_leave_a_bounded_engine() {
    let mut e = engine(evicting());
    let mut out = Vec::new();
    let mut most = 0;
    for i in 0..10_000i64 {
        // One model every second, each seen once.
        let model = format!("m{i}");
        e.ingest(
            &metric(i, "canary_error_rate", 0.01, &[("model", model.as_str())]),
            &mut out,
        );
        most = most.max(e.subject_count());
    }
    // At most evict_after's worth (600 s, one model a second) plus a scan
    // interval (stale_after / 4) are held at once.
    assert!(most <= 600 + 15 + 1, "{most} subjects held at once");
    assert!(e.stats().evicted >= 10_000 - 616, "{:?}", e.stats());
    let evicted = out
        .iter()
        .filter(|o| matches!(o, Output::Evicted { .. }))
        .count() as u64;
    assert_eq!(evicted, e.stats().evicted);
}

/// A subject with a firing external alert (Alertmanager repeats one only
/// every few hours) is kept however quiet; once resolved, it can go.
#[test]
fn a_subject_with_a_firing_external_alert_is_not_evicted() {
    let mut e = engine(evicting());
    let got = run(
        &mut e,
        &[
            alert(0, AlertStatus::Firing, S),
            // Much later, another subject moves event time on.
            metric(2_000, "canary_error_rate", 0.01, T),
        ],
    );
    assert!(got.iter().all(|l| !l.contains("evicted")), "{got:?}");
    assert_eq!(
        e.alert("Critical Errors", &labels(S)).map(|a| a.phase),
        Some(Phase::Firing)
    );
    let got = run(
        &mut e,
        &[
            alert(2_010, AlertStatus::Resolved, S),
            metric(3_000, "canary_error_rate", 0.01, T),
        ],
    );
    assert!(
        got.iter().any(|l| l.starts_with("3000 evicted summarizer")),
        "{got:?}"
    );
}
