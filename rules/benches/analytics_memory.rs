//! Heap bytes per subject-track held by [`TrackWindow`], measured with a
//! counting allocator: 100,000 windows, each fed a realistic stream.
//!
//! Each track gets about `EVENTS_PER_WINDOW` (default 300) requests per 5 m
//! window for 6 minutes of event time, so every sub-bucket is in use and the
//! oldest have already been evicted once: lognormal latencies (median
//! 300 ms, ~20 ms to ~5 s), 3 % errors, costs on 80 %, three fairness groups
//! with predictions and most with labels. Stats are read every 10 s.
//!
//! Run: `cargo bench -p canaryd-rules --bench analytics_memory`
//! (`TRACKS=… EVENTS_PER_WINDOW=…` to vary).

use std::alloc::System;

use canaryd_rules::Timestamp;
use canaryd_rules::analytics::{AnalyticsConfig, TrackWindow};
use canaryd_rules::event::{InferenceEvent, Track};

#[global_allocator]
static ALLOCATOR: cap::Cap<System> = cap::Cap::new(System, usize::MAX);

const T0: i64 = 1_700_000_000_000;

/// SplitMix64: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let tracks = env("TRACKS", 100_000);
    let per_window = env("EVENTS_PER_WINDOW", 300).max(1);
    let config = AnalyticsConfig::default();
    let mean_gap_ms = config.window.millis() as f64 / per_window as f64;
    let end = T0 + 6 * 60_000;
    // One template per group, so the loop allocates nothing.
    let mut templates: Vec<InferenceEvent> = ["A", "B", "C"]
        .iter()
        .map(|g| InferenceEvent {
            ts: Timestamp(T0),
            model: "summarizer".into(),
            version: "v2.1.0".into(),
            track: Track::Canary,
            latency_ms: 0.0,
            error: false,
            cost_usd: None,
            group: Some((*g).into()),
            prediction: None,
            label: None,
            labels: Default::default(),
        })
        .collect();

    let before = ALLOCATOR.allocated();
    let mut windows: Vec<TrackWindow> = Vec::with_capacity(tracks);
    let mut events = 0u64;
    let mut rng = Rng(42);
    for _ in 0..tracks {
        let mut w = TrackWindow::new(&config);
        let mut t = T0 as f64;
        let mut next_stats = T0;
        loop {
            t += -mean_gap_ms * (1.0 - rng.unit()).ln();
            if t >= end as f64 {
                break;
            }
            let e = &mut templates[(rng.next() % 3) as usize];
            e.ts = Timestamp(t as i64);
            e.latency_ms = (300f64.ln() + rng.normal()).exp();
            e.error = rng.unit() < 0.03;
            e.cost_usd = (rng.unit() < 0.8).then(|| 0.001 + 0.004 * rng.unit());
            let label = rng.unit() < 0.5;
            e.prediction = Some(if rng.unit() < 0.7 {
                label
            } else {
                rng.unit() < 0.4
            });
            e.label = (rng.unit() < 0.7).then_some(label);
            w.record(e);
            events += 1;
            if e.ts.0 >= next_stats {
                std::hint::black_box(w.stats(e.ts, 100));
                next_stats = e.ts.0 + 10_000;
            }
        }
        std::hint::black_box(w.stats(Timestamp(end), 100));
        windows.push(w);
    }
    let used = ALLOCATOR.allocated() - before;
    let in_window = windows
        .iter_mut()
        .map(|w| w.stats(Timestamp(end), 100).requests)
        .sum::<u64>();
    println!(
        "tracks: {}  events fed: {}  in window: {:.0} per track  heap: {:.1} MiB  per subject-track: {} bytes ({} inline + {} in sketches and groups)",
        windows.len(),
        events,
        in_window as f64 / tracks.max(1) as f64,
        used as f64 / (1024.0 * 1024.0),
        used / tracks.max(1),
        std::mem::size_of::<TrackWindow>(),
        (used / tracks.max(1)).saturating_sub(std::mem::size_of::<TrackWindow>()),
    );
}
