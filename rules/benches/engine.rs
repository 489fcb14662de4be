//! Engine throughput: the playbook's rules over 1,000 subjects, metric
//! events already decoded. Target: at least 1,000,000 events/s on one core.
//! And the rollout controller's overhead: the same events with all 1,000
//! models under the playbook's plan, within 5% of the engine alone.
//!
//! Run: `cargo bench -p canaryd-rules --bench engine`

// A benchmark fixture that does not load is a bug to stop on, not to handle.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canaryd_rules::event::MetricEvent;
use canaryd_rules::rollout::controller::{Controller, NamedPlan, Plans};
use canaryd_rules::{
    Engine, EngineConfig, Event, Ingested, LoadOptions, RuleSet, Timestamp, load_rules,
};
use criterion::{Criterion, Throughput, criterion_group};

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

fn rules() -> Arc<RuleSet> {
    let options = LoadOptions::default();
    let text = include_bytes!("../../deploy/examples/canary-alerts.yaml");
    let rules = load_rules("canary-alerts.yaml", text, &options).expect("example rules load");
    Arc::new(RuleSet::new(rules).expect("unique names"))
}

fn engine() -> Engine {
    Engine::new(
        rules(),
        &LoadOptions::default().vocabulary,
        EngineConfig::default(),
    )
}

/// Every model under the playbook's plan.
fn controller() -> Controller {
    let plans = Plans {
        default: Some(NamedPlan::playbook()),
        ..Plans::default()
    };
    Controller::new(Arc::new(plans), rules())
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
    // The rollout controller on top, as the consume loop drives it: after
    // each event, with the engine's outputs; every model once a second.
    group.bench_function("metric_events_1000_models_under_rollout", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut engine = engine();
                let mut controller = controller();
                let mut out = Vec::new();
                let mut changes = 0usize;
                let start = Instant::now();
                for e in &events {
                    let applied = engine.ingest(e, &mut out) == Ingested::Applied;
                    if let Some(now) = engine.watermark() {
                        changes += controller
                            .after(e, applied, engine.last_subject(), &out, now)
                            .len();
                    }
                    out.clear();
                }
                total += start.elapsed();
                assert_eq!(controller.len(), SUBJECTS, "every model under rollout");
                std::hint::black_box((engine.stats(), changes));
            }
            total
        })
    });
    group.finish();
}

/// One pass of the events through a fresh engine, with a rollout
/// controller on top or not; how long it took.
fn pass(events: &[Event], rollouts: bool) -> Duration {
    let mut engine = engine();
    let mut controller = controller();
    let mut out = Vec::new();
    let mut changes = 0usize;
    let start = Instant::now();
    for e in events {
        let applied = engine.ingest(e, &mut out) == Ingested::Applied;
        if rollouts && let Some(now) = engine.watermark() {
            changes += controller
                .after(e, applied, engine.last_subject(), &out, now)
                .len();
        }
        out.clear();
    }
    let took = start.elapsed();
    std::hint::black_box((engine.stats(), changes));
    took
}

/// The controller's overhead: passes with and without it in pairs, their
/// order alternating (so that a busy moment of the machine, or a warm
/// cache, favours neither); the median of the pairs' ratios.
fn overhead() {
    let events = events();
    let (mut ratios, mut without) = (Vec::new(), Vec::new());
    for i in 0..21 {
        let (a, b) = if i % 2 == 0 {
            let a = pass(&events, false);
            (a, pass(&events, true))
        } else {
            let b = pass(&events, true);
            (pass(&events, false), b)
        };
        ratios.push(b.as_secs_f64() / a.as_secs_f64());
        without.push(a);
    }
    ratios.sort_by(f64::total_cmp);
    without.sort();
    let ratio = ratios[ratios.len() / 2];
    let rate = events.len() as f64 / without[without.len() / 2].as_secs_f64() / 1e6;
    println!(
        "rollout overhead, 1,000 models under the playbook's plan: {:+.1}% time (median of 21 pairs; {:.2} M events/s without; pairs from {:+.1}% to {:+.1}%)",
        (ratio - 1.0) * 100.0,
        rate,
        (ratios[0] - 1.0) * 100.0,
        (ratios[ratios.len() - 1] - 1.0) * 100.0
    );
}

criterion_group!(benches, bench);

/// The controller alone, on the same events: its cost per event. Where
/// the engine put each event is taken from one engine pass first, as the
/// consume loop hands it over.
fn controller_alone() {
    let events = events();
    let mut engine = engine();
    let mut out = Vec::new();
    let at: Vec<_> = events
        .iter()
        .map(|e| {
            engine.ingest(e, &mut out);
            out.clear();
            engine.last_subject()
        })
        .collect();
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let mut controller = controller();
        let start = Instant::now();
        let mut changes = 0;
        for (e, at) in events.iter().zip(&at) {
            changes += controller.after(e, true, *at, &[], e.ts()).len();
        }
        best = best.min(start.elapsed());
        std::hint::black_box(changes);
    }
    println!(
        "rollout controller alone: {:.0} ns per event (best of 5)",
        best.as_nanos() as f64 / events.len() as f64
    );
}

fn main() {
    // One pass, for an instruction counter: tests/bench/controller-overhead.sh
    // runs each under cachegrind, whose counts do not move with the machine.
    if let Ok(mode) = std::env::var("BENCH_PASS") {
        let events = events();
        let events = if mode == "setup" {
            &events[..0]
        } else {
            &events[..]
        };
        std::hint::black_box(pass(events, mode == "with"));
        return;
    }
    benches();
    controller_alone();
    overhead();
    Criterion::default().configure_from_args().final_summary();
}
