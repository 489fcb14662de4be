//! Engine throughput: the playbook's rules over 1,000 subjects, metric
//! events already decoded. Target: at least 1,000,000 events/s on one core.
//!
//! Run: `cargo bench -p canaryd-rules --bench engine`

// A benchmark fixture that does not load is a bug to stop on, not to handle.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canaryd_rules::event::MetricEvent;
use canaryd_rules::{Engine, EngineConfig, Event, LoadOptions, RuleSet, Timestamp, load_rules};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SUBJECTS: usize = 1000;
const EVENTS: usize = 200_000;

/// The playbook's variables, with a healthy and an unhealthy value each.
const METRICS: [(&str, f64, f64); 5] = [
    ("canary_error_rate", 0.004, 0.09),
    ("canary_p95_latency", 1400.0, 6200.0),
    ("canary_fairness_metric", 0.93, 0.7),
    ("canary_cost_per_request", 0.0021, 0.005),
    ("stable_cost_per_request", 0.0019, 0.0019),
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

/// Round-robin over subjects and metrics, 1 ms apart. One subject in ten
/// is unhealthy, so alerts go pending, fire and resolve along the way.
fn events() -> Vec<Event> {
    (0..EVENTS)
        .map(|i| {
            let subject = i % SUBJECTS;
            let (name, good, bad) = METRICS[(i / SUBJECTS) % METRICS.len()];
            let unhealthy = subject.is_multiple_of(10) && (i / 50_000) % 2 == 0;
            Event::Metric(MetricEvent {
                ts: Timestamp(1_700_000_000_000 + i as i64),
                name: name.to_string(),
                value: if unhealthy { bad } else { good },
                labels: BTreeMap::from([
                    ("model".to_string(), format!("model-{subject:04}")),
                    ("namespace".to_string(), "ml-serving".to_string()),
                ]),
            })
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let events = events();
    let mut group = c.benchmark_group("engine");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(20);
    group.bench_function("metric_events_1000_subjects_playbook_rules", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut engine = engine();
                let mut out = Vec::new();
                let start = Instant::now();
                for e in &events {
                    engine.ingest(e, &mut out);
                    out.clear();
                }
                total += start.elapsed();
                std::hint::black_box(engine.stats());
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
