//! Heap bytes per subject held by the engine, measured with a counting
//! allocator, 100,000 subjects, the playbook's rules:
//!
//! - metric events only: every variable the rules read set by a metric event;
//! - inference events: both tracks of every subject fed raw requests, so the
//!   windows (sketches, fairness groups) are included; reported per
//!   subject-track.
//!
//! Run: `cargo bench -p canaryd-rules --bench memory`

// A benchmark fixture that does not load is a bug to stop on, not to handle.
#![allow(clippy::expect_used)]

use std::alloc::System;
use std::collections::BTreeMap;
use std::sync::Arc;

use canaryd_rules::event::{InferenceEvent, MetricEvent, Track};
use canaryd_rules::{Engine, EngineConfig, Event, LoadOptions, RuleSet, Timestamp, load_rules};

#[global_allocator]
static ALLOCATOR: cap::Cap<System> = cap::Cap::new(System, usize::MAX);

const NAMES: [&str; 5] = [
    "canary_error_rate",
    "canary_p95_latency",
    "canary_fairness_metric",
    "canary_cost_per_request",
    "stable_cost_per_request",
];

fn engine() -> Engine {
    let options = LoadOptions::default();
    let text = include_bytes!("../../deploy/examples/canary-alerts.yaml");
    let rules = load_rules("canary-alerts.yaml", text, &options).expect("example rules load");
    Engine::new(
        Arc::new(RuleSet::new(rules).expect("unique names")),
        &options.vocabulary,
        EngineConfig::default(),
    )
}

fn main() {
    let subjects: usize = std::env::var("SUBJECTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    metric_only(subjects);
    inference(subjects);
}

fn metric_only(subjects: usize) {
    let before = ALLOCATOR.allocated();
    let mut engine = engine();
    let mut out = Vec::new();
    let mut ts = 1_700_000_000_000i64;
    // Events are built and dropped one at a time, so only engine state remains.
    for s in 0..subjects {
        for name in NAMES {
            ts += 1;
            let event = Event::Metric(MetricEvent {
                ts: Timestamp(ts),
                name: name.to_string(),
                value: 0.5,
                labels: BTreeMap::from([("model".to_string(), format!("model-{s:06}"))]),
            });
            engine.ingest(&event, &mut out);
            out.clear();
        }
    }
    let used = ALLOCATOR.allocated() - before;
    println!(
        "metric events: subjects {}  heap {:.1} MiB  per subject {} bytes (4 alert states, 5 samples, labels, index)",
        engine.subject_count(),
        used as f64 / (1024.0 * 1024.0),
        used / subjects.max(1)
    );
}

/// Requests per track per subject, spread over five minutes of event time.
const PER_TRACK: usize = 120;

fn inference(subjects: usize) {
    let before = ALLOCATOR.allocated();
    let mut engine = engine();
    let mut out = Vec::new();
    let start = 1_700_000_000_000i64;
    let span_ms = 300_000i64;
    let total = subjects * PER_TRACK * 2;
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..total {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let s = i % subjects;
        let track = if (i / subjects).is_multiple_of(2) {
            Track::Canary
        } else {
            Track::Stable
        };
        // Latencies spread over ~20 ms to ~5 s, as real traffic would.
        let latency = 20.0 * (1.0 + (x % 1000) as f64 / 4.0);
        let event = Event::Inference(InferenceEvent {
            ts: Timestamp(start + (i as i64 * span_ms) / total as i64),
            model: format!("model-{s:06}"),
            version: "v2".into(),
            track,
            latency_ms: latency,
            error: x.is_multiple_of(50),
            cost_usd: Some(0.002),
            group: Some(["A", "B", "C"][(x % 3) as usize].into()),
            prediction: Some(x.is_multiple_of(2)),
            label: Some(x.is_multiple_of(3)),
            labels: BTreeMap::new(),
        });
        engine.ingest(&event, &mut out);
        out.clear();
    }
    let used = ALLOCATOR.allocated() - before;
    println!(
        "inference events: subjects {}  requests per track {PER_TRACK}  heap {:.1} MiB  per subject-track {} bytes (windows, sketches, groups, samples, alerts)",
        engine.subject_count(),
        used as f64 / (1024.0 * 1024.0),
        used / (subjects * 2).max(1)
    );
}
