//! Analytics throughput: `TrackWindow::record` for every inference event
//! plus `stats` once per second of event time per track, on one core.
//! Target: well over 1,000,000 events/s.
//!
//! Two shapes, 600,000 events and 10 minutes of event time each (so windows
//! fill, roll and evict): 1,000 quiet tracks at 1 request/s (a `stats` call
//! for nearly every event) and 10 busy tracks at 100 requests/s; and the
//! quiet shape without `stats`, to show what `record` alone costs.
//!
//! Run: `cargo bench -p canaryd-rules --bench analytics`

// A benchmark fixture that does not build is a bug to stop on, not to handle.
#![allow(clippy::expect_used)]

use std::time::{Duration, Instant};

use canaryd_rules::Timestamp;
use canaryd_rules::analytics::{AnalyticsConfig, TrackWindow};
use canaryd_rules::event::{InferenceEvent, Track};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const T0: i64 = 1_700_000_000_000;
const SECONDS: i64 = 600;

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

/// `(track, event)` in event-time order: `per_second` requests per track per
/// second, with lognormal latencies, errors, costs, three groups and labels.
fn events(tracks: usize, per_second: i64) -> Vec<(usize, InferenceEvent)> {
    let mut rng = Rng(1);
    let groups = ["A", "B", "C"];
    let mut out = Vec::with_capacity(tracks * (SECONDS * per_second) as usize);
    for s in 0..SECONDS {
        for k in 0..per_second {
            for track in 0..tracks {
                let offset = (k * 1000 / per_second + track as i64 * 7) % 1000;
                let label = rng.unit() < 0.5;
                out.push((
                    track,
                    InferenceEvent {
                        ts: Timestamp(T0 + s * 1000 + offset),
                        model: String::new(),
                        version: String::new(),
                        track: Track::Canary,
                        latency_ms: (300f64.ln() + rng.normal()).exp(),
                        error: rng.unit() < 0.03,
                        cost_usd: (rng.unit() < 0.8).then(|| 0.001 + 0.004 * rng.unit()),
                        group: Some(groups[(rng.next() % 3) as usize].into()),
                        prediction: Some(if rng.unit() < 0.7 {
                            label
                        } else {
                            rng.unit() < 0.4
                        }),
                        label: (rng.unit() < 0.7).then_some(label),
                        labels: Default::default(),
                    },
                ));
            }
        }
    }
    out
}

fn run(tracks: usize, events: &[(usize, InferenceEvent)], with_stats: bool) -> Duration {
    let config = AnalyticsConfig::default();
    let mut windows = vec![TrackWindow::new(&config); tracks];
    let mut next_stats = vec![i64::MIN; tracks];
    let start = Instant::now();
    for (track, e) in events {
        let w = windows.get_mut(*track).expect("track in range");
        std::hint::black_box(w.record(e));
        let due = next_stats.get_mut(*track).expect("track in range");
        if with_stats && e.ts.0 >= *due {
            std::hint::black_box(w.stats(e.ts, config.min_samples));
            *due = (e.ts.0.div_euclid(1000) + 1) * 1000;
        }
    }
    let elapsed = start.elapsed();
    std::hint::black_box(&windows);
    elapsed
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("analytics");
    group.sample_size(10);
    for (name, tracks, per_second, with_stats) in [
        ("record_and_stats_1000_tracks_1_per_s", 1000, 1, true),
        ("record_only_1000_tracks_1_per_s", 1000, 1, false),
        ("record_and_stats_10_tracks_100_per_s", 10, 100, true),
    ] {
        let events = events(tracks, per_second);
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(tracks, &events, with_stats)).sum())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
