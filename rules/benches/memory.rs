//! Heap bytes per subject held by the engine, measured with a counting
//! allocator: the playbook's rules, every variable set, 100,000 subjects.
//!
//! Run: `cargo bench -p canaryd-rules --bench memory`

// A benchmark fixture that does not load is a bug to stop on, not to handle.
#![allow(clippy::expect_used)]

use std::alloc::System;
use std::collections::BTreeMap;
use std::sync::Arc;

use canaryd_rules::event::MetricEvent;
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

fn main() {
    let subjects: usize = std::env::var("SUBJECTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let options = LoadOptions::default();
    let text = include_bytes!("../../deploy/examples/canary-alerts.yaml");
    let rules = load_rules("canary-alerts.yaml", text, &options).expect("example rules load");
    let mut engine = Engine::new(
        Arc::new(RuleSet::new(rules).expect("unique names")),
        &options.vocabulary,
        EngineConfig::default(),
    );
    let mut out = Vec::new();
    let before = ALLOCATOR.allocated();
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
    out.shrink_to_fit();
    let used = ALLOCATOR.allocated() - before;
    println!(
        "subjects: {}  rules: 4  heap: {:.1} MiB  per subject: {} bytes (all 4 alert states, 5 samples, labels, index)",
        engine.subject_count(),
        used as f64 / (1024.0 * 1024.0),
        used / subjects.max(1)
    );
}
