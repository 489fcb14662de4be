//! Reload of 10,000 rules: parse and validate the file, compile every
//! condition, and swap into an engine with 100, then 1,000, live subjects,
//! keeping state. Target: under 100 ms.
//!
//! Run: `cargo bench -p canaryd-rules --bench reload`

// A benchmark fixture that does not load is a bug to stop on, not to handle.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use canaryd_rules::event::MetricEvent;
use canaryd_rules::{
    Engine, EngineConfig, Event, LoadOptions, RuleSet, Timestamp, Vocabulary, load_rules,
};

const RULES: usize = 10_000;

fn rules_file(threshold: f64) -> String {
    let metrics = [
        "canary_error_rate",
        "canary_p95_latency",
        "canary_cost_per_request",
        "canary_fairness_metric",
    ];
    let mut text = String::from("alerts:\n");
    for i in 0..RULES {
        let metric = metrics[i % metrics.len()];
        text.push_str(&format!(
            "  - name: \"rule {i}\"\n    condition: \"{metric} > {threshold} * baseline + {i}\"\n    duration: \"5m\"\n    severity: \"high\"\n    action: \"notify_on_call\"\n    annotations:\n      summary: \"{{{{ subject.model }}}} {{{{ values }}}}\"\n"
        ));
    }
    text
}

fn main() {
    for subjects in [100, 1_000] {
        run(subjects);
    }
}

fn run(subjects: usize) {
    let vocabulary = Vocabulary::builtin();
    let options = LoadOptions::default();
    let first = rules_file(1.5);
    let rules = load_rules("rules.yaml", first.as_bytes(), &options).expect("loads");
    let mut engine = Engine::new(
        Arc::new(RuleSet::new(rules).expect("unique")),
        &vocabulary,
        EngineConfig::default(),
    );
    let mut out = Vec::new();
    for s in 0..subjects {
        for name in ["canary_error_rate", "stable_error_rate"] {
            let event = Event::Metric(MetricEvent {
                ts: Timestamp(1_700_000_000_000 + s as i64),
                name: name.into(),
                value: 0.5,
                labels: BTreeMap::from([("model".to_string(), format!("m{s}"))]),
            });
            engine.ingest(&event, &mut out);
        }
    }
    // Half the rules change (new threshold); the others keep their state.
    let second = rules_file(1.5).replace("> 1.5 * baseline + 1", "> 1.6 * baseline + 1");
    let mut timings = Vec::new();
    for round in 0..5 {
        let text = if round % 2 == 0 { &second } else { &first };
        let start = Instant::now();
        // As the daemon does: unchanged conditions are not compiled again.
        let reusing = LoadOptions {
            previous: Some((engine.rules().clone(), vocabulary.clone())),
            ..options.clone()
        };
        let rules = load_rules("rules.yaml", text.as_bytes(), &reusing).expect("loads");
        let set = Arc::new(RuleSet::new(rules).expect("unique"));
        let validated = start.elapsed();
        let (next, report) = engine.reload(set, &vocabulary);
        engine = next;
        let total = start.elapsed();
        timings.push(total.as_secs_f64() * 1000.0);
        println!(
            "reload of {RULES} rules with {subjects} subjects: validated in {:.1} ms, swapped with state in {:.1} ms total ({} kept, {} changed)",
            validated.as_secs_f64() * 1000.0,
            total.as_secs_f64() * 1000.0,
            report.kept.len(),
            report.changed.len()
        );
    }
    timings.sort_by(f64::total_cmp);
    println!(
        "{subjects} subjects: median {:.1} ms",
        timings[timings.len() / 2]
    );
}
