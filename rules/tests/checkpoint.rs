//! A checkpoint restores the exact state: an engine restored from one, fed
//! the rest of the events, decides exactly what the uninterrupted engine
//! decides. This is what a changelog relies on after a crash or a
//! partition move.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::collections::BTreeMap;
use std::sync::Arc;

use canaryd_rules::event::{AlertEvent, AlertStatus, InferenceEvent, MetricEvent, Track};
use canaryd_rules::{
    Engine, EngineCheckpoint, EngineConfig, Event, LoadOptions, Output, RuleSet, Span,
    SubjectState, Timestamp, load_rules,
};
use proptest::prelude::*;

const RULES: &str = r#"
alerts:
  - name: errors
    condition: "canary_error_rate > 0.3"
    duration: 20s
    severity: critical
    min_samples: 5
  - name: slow
    condition: "canary_p95_latency > 1.5 * baseline"
    duration: 10s
    keep_firing_for: 5s
    severity: high
    min_samples: 5
  - name: oom
    condition: "oom_kills > 0"
    duration: 0s
    severity: critical
  - name: judged
    condition: 'judge_latency_verdict == "high"'
    duration: 3s
    severity: medium
"#;

fn rules() -> (Arc<RuleSet>, LoadOptions) {
    let options = LoadOptions::default();
    let rules = load_rules("c.yaml", RULES.as_bytes(), &options).unwrap();
    (Arc::new(RuleSet::new(rules).unwrap()), options)
}

fn config() -> EngineConfig {
    EngineConfig {
        stale_after: Span::seconds(60),
        allowed_lateness: Span::seconds(2),
        ..EngineConfig::default()
    }
}

fn engine() -> Engine {
    let (rules, options) = rules();
    Engine::new(rules, &options.vocabulary, config())
}

fn restore(checkpoint: EngineCheckpoint, subjects: Vec<SubjectState>) -> Engine {
    let (rules, options) = rules();
    // Through CBOR, as the changelog stores them: binary, so every float
    // comes back bit for bit (JSON may not).
    fn roundtrip<T: serde::Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
        let mut bytes = Vec::new();
        ciborium::into_writer(value, &mut bytes).unwrap();
        ciborium::from_reader(bytes.as_slice()).unwrap()
    }
    let checkpoint = roundtrip(&checkpoint);
    let subjects: Vec<SubjectState> = roundtrip(&subjects);
    Engine::restore(rules, &options.vocabulary, config(), checkpoint, subjects)
}

/// (ms since the previous event, may go back a little; model; kind; value)
fn steps() -> impl Strategy<Value = Vec<(i64, u8, u8, f64)>> {
    prop::collection::vec((-500i64..4000, 0u8..3, 0u8..12, 0.0f64..1.0), 1..250)
}

fn to_events(steps: &[(i64, u8, u8, f64)]) -> Vec<Event> {
    let mut ts = 1_000_000i64;
    let mut oom = [false; 3];
    steps
        .iter()
        .map(|&(gap, model, kind, value)| {
            ts = (ts + gap).max(0);
            let name = format!("m{model}");
            let labels = BTreeMap::from([("model".to_string(), name.clone())]);
            match kind {
                0 => Event::Metric(MetricEvent {
                    ts: Timestamp(ts),
                    name: "canary_error_rate".into(),
                    value,
                    labels,
                }),
                1 => {
                    let firing = &mut oom[model as usize];
                    *firing = !*firing;
                    Event::Alert(AlertEvent {
                        ts: Timestamp(ts),
                        name: "OOMKilled".into(),
                        status: if *firing {
                            AlertStatus::Firing
                        } else {
                            AlertStatus::Resolved
                        },
                        severity: Some("critical".into()),
                        labels,
                        annotations: BTreeMap::new(),
                    })
                }
                k => Event::Inference(InferenceEvent {
                    ts: Timestamp(ts),
                    model: name,
                    version: "v1".into(),
                    track: if k % 2 == 0 {
                        Track::Canary
                    } else {
                        Track::Stable
                    },
                    latency_ms: 100.0 + value * if k % 2 == 0 { 400.0 } else { 150.0 },
                    error: value > 0.6,
                    cost_usd: Some(0.001),
                    group: Some(["a", "b"][usize::from(k % 3 == 0)].into()),
                    prediction: Some(value > 0.5),
                    label: Some(value > 0.4),
                    labels: BTreeMap::new(),
                }),
            }
        })
        .collect()
}

/// Every output, as text, with `events` fed in (the first being event
/// number `first` of the stream) and a clock tick after every seventh.
fn run(engine: &mut Engine, events: &[Event], first: usize) -> Vec<String> {
    let mut out = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let i = first + i;
        engine.ingest(e, &mut out);
        if i % 7 == 6 {
            let wm = engine.watermark().unwrap_or_default();
            engine.advance(Timestamp(wm.millis() + 1500), &mut out);
        }
    }
    out.iter().map(describe).collect()
}

fn describe(o: &Output) -> String {
    match o {
        Output::Transition(t) => format!(
            "{} {} {:?} {}->{} since {:?} {:?}",
            t.ts.millis(),
            t.rule,
            t.subject,
            t.from,
            t.to,
            t.active_since,
            t.values
        ),
        Output::Stale { ts, subject } => format!("{} stale {subject:?}", ts.millis()),
        Output::Evicted { ts, subject, .. } => format!("{} evicted {subject:?}", ts.millis()),
    }
}

/// Outputs of one event time in any order: a restored engine may list its
/// subjects in another order, never decide otherwise.
fn by_time(mut lines: Vec<String>) -> Vec<String> {
    lines.sort_by_key(|l| {
        let ts: i64 = l.split(' ').next().unwrap().parse().unwrap();
        (ts, l.clone())
    });
    lines
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn a_restored_engine_decides_what_the_uninterrupted_one_does(steps in steps(), split in 0.0f64..1.0) {
        let events = to_events(&steps);
        let k = ((events.len() as f64) * split) as usize;
        let mut whole = engine();
        let expected = run(&mut whole, &events, 0);

        let mut first = engine();
        let before = run(&mut first, &events[..k], 0);
        let mut restored = restore(first.checkpoint(), first.subject_states());
        let after = run(&mut restored, &events[k..], k);
        prop_assert_eq!(restored.watermark(), whole.watermark());
        prop_assert_eq!(restored.stats(), whole.stats());

        let mut resumed = before;
        resumed.extend(after);
        prop_assert_eq!(by_time(resumed), by_time(expected));
    }

    #[test]
    fn the_changed_subjects_of_each_checkpoint_add_up_to_the_whole_state(steps in steps(), cuts in prop::collection::vec(0.0f64..1.0, 1..5)) {
        // A changelog keeps the latest record per subject: restoring from
        // it must equal restoring from a full snapshot.
        let events = to_events(&steps);
        let mut cuts: Vec<usize> = cuts.iter().map(|c| ((events.len() as f64) * c) as usize).collect();
        cuts.sort_unstable();
        let mut engine = engine();
        let mut changelog: BTreeMap<String, SubjectState> = BTreeMap::new();
        let mut at = 0;
        for &cut in &cuts {
            run(&mut engine, &events[at..cut], at);
            at = cut;
            for s in engine.take_changed() {
                changelog.insert(format!("{:?}{:?}", s.group_by, s.labels), s);
            }
        }
        let full = engine.subject_states();
        prop_assert_eq!(changelog.len(), full.len());
        let rest = &events[at..];
        let mut from_full = restore(engine.checkpoint(), full);
        let mut from_log = restore(engine.checkpoint(), changelog.into_values().collect());
        prop_assert_eq!(by_time(run(&mut from_full, rest, at)), by_time(run(&mut from_log, rest, at)));
        prop_assert!(engine.take_changed().is_empty(), "taken once");
    }
}

/// The changelog keeps an evicted subject's last record: a restore past
/// its eviction time leaves it out, alerts and all.
#[test]
fn a_restore_leaves_out_subjects_due_for_eviction() {
    let mut e = engine();
    let mut out = Vec::new();
    let metric = |ts: i64, model: &str| {
        Event::Metric(MetricEvent {
            ts: Timestamp(ts),
            name: "canary_error_rate".into(),
            value: 0.9,
            labels: BTreeMap::from([("model".to_string(), model.to_string())]),
        })
    };
    e.ingest(&metric(0, "old"), &mut out);
    let old_record = e.take_changed();
    // An hour and more later only "new" reports; "old" is evicted.
    e.ingest(&metric(3_700_000, "new"), &mut out);
    assert_eq!(e.subject_count(), 1);
    let mut subjects = old_record;
    subjects.extend(e.take_changed());
    let r = restore(e.checkpoint(), subjects);
    assert_eq!(r.subject_count(), 1);
    let old = BTreeMap::from([("model".to_string(), "old".to_string())]);
    assert_eq!(r.alert("errors", &old), None);
    assert!(r.stats().evicted >= 1);
}

#[test]
fn a_pending_alert_keeps_its_start_across_a_restore_and_fires_on_time() {
    let mut e = engine();
    let mut out = Vec::new();
    let labels = BTreeMap::from([("model".to_string(), "m".to_string())]);
    let metric = |ts: i64, value: f64| {
        Event::Metric(MetricEvent {
            ts: Timestamp(ts),
            name: "canary_error_rate".into(),
            value,
            labels: labels.clone(),
        })
    };
    e.ingest(&metric(0, 0.9), &mut out);
    e.ingest(&metric(10_000, 0.9), &mut out);
    let mut r = restore(e.checkpoint(), e.subject_states());
    let pending = r.alert("errors", &labels).unwrap();
    assert_eq!(pending.active_since, Some(Timestamp(0)));
    out.clear();
    r.advance(Timestamp(25_000), &mut out);
    let fired: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Transition(t) if t.to.as_str() == "firing" => Some(t.ts),
            _ => None,
        })
        .collect();
    // 20 s after the breach began, not 20 s after the restore.
    assert_eq!(fired, vec![Timestamp(20_000)]);
}

#[test]
fn the_judges_evidence_survives_a_restore() {
    // A canary three times as slow as its stable, a request a side every
    // 100 ms: the judge needs 30 a side and the evidence of them all.
    let events: Vec<Event> = (0..200)
        .flat_map(|i| {
            [(Track::Canary, "v2", 300.0), (Track::Stable, "v1", 100.0)].map(
                |(track, version, ms)| {
                    Event::Inference(InferenceEvent {
                        ts: Timestamp(1_000_000 + i * 100),
                        model: "m".into(),
                        version: version.into(),
                        track,
                        latency_ms: ms * (1.0 + (i * 37 % 10) as f64 / 10.0),
                        error: false,
                        cost_usd: None,
                        group: None,
                        prediction: None,
                        label: None,
                        labels: BTreeMap::new(),
                    })
                },
            )
        })
        .collect();
    // The fourth rule, `judged`, firing; fed without clock ticks.
    let firing = |engine: &mut Engine, events: &[Event]| -> Vec<String> {
        let mut out = Vec::new();
        for e in events {
            engine.ingest(e, &mut out);
        }
        out.iter()
            .map(describe)
            .filter(|l| l.split(' ').nth(1) == Some("3") && l.contains("->firing"))
            .collect()
    };
    let expected = firing(&mut engine(), &events);
    assert_eq!(expected.len(), 1, "{expected:?}");

    // Restored after 25 requests a side: the evidence must come along, or
    // the restored engine waits for 30 more.
    let mut first = engine();
    assert!(firing(&mut first, &events[..50]).is_empty());
    let mut restored = restore(first.checkpoint(), first.subject_states());
    let after = firing(&mut restored, &events[50..]);
    assert_eq!(after, expected);
}

#[test]
fn a_changed_rule_starts_afresh_and_an_unchanged_one_keeps_its_state() {
    let mut e = engine();
    let mut out = Vec::new();
    let labels = BTreeMap::from([("model".to_string(), "m".to_string())]);
    e.ingest(
        &Event::Metric(MetricEvent {
            ts: Timestamp(0),
            name: "canary_error_rate".into(),
            value: 0.9,
            labels: labels.clone(),
        }),
        &mut out,
    );
    let changed = RULES.replace("duration: 20s", "duration: 30s");
    let options = LoadOptions::default();
    let rules = Arc::new(
        RuleSet::new(load_rules("c.yaml", changed.as_bytes(), &options).unwrap()).unwrap(),
    );
    let r = Engine::restore(
        rules,
        &options.vocabulary,
        config(),
        e.checkpoint(),
        e.subject_states(),
    );
    assert_eq!(r.alert("errors", &labels).unwrap().active_since, None);
    let r = restore(e.checkpoint(), e.subject_states());
    assert_eq!(
        r.alert("errors", &labels).unwrap().active_since,
        Some(Timestamp(0))
    );
}
