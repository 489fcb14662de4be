//! Sliding-window analytics checked against values computed here, independently, from the raw events.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use canaryd_rules::analytics::{
    AnalyticsConfig, MAX_GROUPS, RELATIVE_ACCURACY, TrackStats, TrackWindow,
};
use canaryd_rules::event::{InferenceEvent, Track};
use canaryd_rules::vocabulary::TRACK_METRICS;
use canaryd_rules::{Span, Timestamp};

/// A multiple of the default sub-bucket (30 s), so window edges are known.
const T0: i64 = 1_700_000_010_000;
const MINUTE: i64 = 60_000;
const WINDOW: i64 = 5 * MINUTE;

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
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
    fn normal(&mut self) -> f64 {
        let u = self.unit().max(1e-300);
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos()
    }
    fn below(&mut self, n: i64) -> i64 {
        (self.next() % n as u64) as i64
    }
}

fn event(ts: i64, latency_ms: f64) -> InferenceEvent {
    InferenceEvent {
        ts: Timestamp(ts),
        model: "summarizer".into(),
        version: "v2".into(),
        track: Track::Canary,
        latency_ms,
        error: false,
        cost_usd: None,
        group: None,
        prediction: None,
        label: None,
        labels: Default::default(),
    }
}

fn fair(ts: i64, group: &str, prediction: bool, label: Option<bool>) -> InferenceEvent {
    InferenceEvent {
        group: Some(group.into()),
        prediction: Some(prediction),
        label,
        ..event(ts, 100.0)
    }
}

fn config(min_group_samples: u64) -> AnalyticsConfig {
    AnalyticsConfig {
        min_group_samples,
        ..AnalyticsConfig::default()
    }
}

/// A realistic mixed stream: lognormal latencies (~20 ms to ~5 s), 3 %
/// errors, costs on most requests, three groups with different selection rates.
fn stream(rng: &mut Rng, n: usize, from: i64, to: i64) -> Vec<InferenceEvent> {
    let groups = [("A", 0.55), ("B", 0.45), ("C", 0.30)];
    (0..n)
        .map(|_| {
            let mut e = event(
                from + rng.below(to - from + 1),
                (300f64.ln() + rng.normal()).exp(),
            );
            e.error = rng.chance(0.03);
            if rng.chance(0.8) {
                e.cost_usd = Some(0.001 + 0.004 * rng.unit());
            }
            if rng.chance(0.9) {
                let (g, rate) = groups[rng.below(3) as usize];
                e.group = Some(g.into());
                if rng.chance(0.95) {
                    let label = rng.chance(0.5);
                    let prediction = if rng.chance(0.7) {
                        label
                    } else {
                        rng.chance(rate)
                    };
                    e.prediction = Some(prediction);
                    e.label = rng.chance(0.7).then_some(label);
                }
            }
            e
        })
        .collect()
}

/// The exact sample a sketch quantile stands for: 0-based rank floor(q (n - 1)).
fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
}

fn assert_within_accuracy(got: Option<f64>, exact: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no value"));
    assert!(
        (got - exact).abs() <= RELATIVE_ACCURACY * exact * (1.0 + 1e-9),
        "{what}: sketch {got} vs exact {exact}"
    );
}

fn assert_close(got: Option<f64>, expected: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no value"));
    assert!(
        (got - expected).abs() <= 1e-9 * expected.abs().max(1e-12),
        "{what}: got {got}, expected {expected}"
    );
}

/// (min, max) of rates over groups with at least `min` in the denominator.
fn spread(rates: &[(u64, u64)], min: u64) -> Option<(f64, f64)> {
    let qualifying: Vec<f64> = rates
        .iter()
        .filter(|(_, d)| *d >= min)
        .map(|(n, d)| *n as f64 / *d as f64)
        .collect();
    if qualifying.len() < 2 {
        return None;
    }
    let lo = qualifying.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = qualifying.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((lo, hi))
}

#[test]
fn every_statistic_matches_a_computation_from_the_raw_events() {
    let mut rng = Rng(7);
    // `now` is the last millisecond of a sub-bucket, so the retained
    // sub-buckets are exactly (now - window, now].
    let now = T0 + WINDOW - 1;
    // Events from two minutes before the window to its end, out of order.
    let events = stream(&mut rng, 3000, T0 - 2 * MINUTE, now);
    let mut w = TrackWindow::new(&config(30));
    for e in &events {
        w.record(e);
    }
    let stats = w.stats(Timestamp(now), 100);

    let inside: Vec<&InferenceEvent> = events
        .iter()
        .filter(|e| e.ts.0 > now - WINDOW && e.ts.0 <= now)
        .collect();
    let n = inside.len() as u64;
    assert!(n > 2000, "fixture too small: {n}");
    assert_eq!(stats.requests, n);
    assert_eq!(stats.window_seconds, 299.999);
    assert_close(Some(stats.request_rate), n as f64 / 299.999, "request_rate");

    let errors = inside.iter().filter(|e| e.error).count() as f64;
    assert_close(stats.error_rate, errors / n as f64, "error_rate");
    assert_close(stats.success_rate, 1.0 - errors / n as f64, "success_rate");

    let mut latencies: Vec<f64> = inside.iter().map(|e| e.latency_ms).collect();
    latencies.sort_by(f64::total_cmp);
    assert_within_accuracy(stats.p50_latency, exact_quantile(&latencies, 0.50), "p50");
    assert_within_accuracy(stats.p95_latency, exact_quantile(&latencies, 0.95), "p95");
    assert_within_accuracy(stats.p99_latency, exact_quantile(&latencies, 0.99), "p99");
    assert_within_accuracy(w.latency_sum(), latencies.iter().sum(), "latency sum");

    let costs: Vec<f64> = inside.iter().filter_map(|e| e.cost_usd).collect();
    let mean_cost = costs.iter().sum::<f64>() / costs.len() as f64;
    assert_close(stats.cost_per_request, mean_cost, "cost_per_request");

    // Per group: (positive predictions, predictions), (true positives, label positives).
    let mut selection = Vec::new();
    let mut opportunity = Vec::new();
    for g in ["A", "B", "C"] {
        let mine = || {
            inside
                .iter()
                .filter(move |e| e.group.as_deref() == Some(g) && e.prediction.is_some())
        };
        let predicted = mine().count() as u64;
        let positive = mine().filter(|e| e.prediction == Some(true)).count() as u64;
        let label_positive = mine().filter(|e| e.label == Some(true)).count() as u64;
        let true_positive = mine()
            .filter(|e| e.label == Some(true) && e.prediction == Some(true))
            .count() as u64;
        selection.push((positive, predicted));
        opportunity.push((true_positive, label_positive));
    }
    let (lo, hi) = spread(&selection, 30).unwrap();
    assert_close(stats.demographic_parity, hi - lo, "demographic_parity");
    assert_close(stats.disparate_impact, lo / hi, "disparate_impact");
    let (lo, hi) = spread(&opportunity, 30).unwrap();
    assert_close(stats.equal_opportunity, hi - lo, "equal_opportunity");
    assert_eq!(stats.overflow_groups, 0);

    // Every per-track metric of the vocabulary is readable by name.
    for name in TRACK_METRICS {
        assert!(stats.get(name).is_some(), "{name}");
    }
    assert_eq!(stats.get("requests"), Some(n as f64));
    assert_eq!(stats.get("fairness_metric"), stats.disparate_impact);
    assert_eq!(stats.get("p95_latency"), stats.p95_latency);
    assert_eq!(stats.get("canary_error_rate"), None);
}

#[test]
fn quantiles_stay_within_the_relative_accuracy_on_hard_distributions() {
    let mut rng = Rng(11);
    let cases: Vec<(&str, Vec<f64>)> = vec![
        (
            "log-uniform 0.01 ms .. 1e6 ms",
            (0..5000)
                .map(|_| 10f64.powf(-2.0 + 8.0 * rng.unit()))
                .collect(),
        ),
        ("constant", vec![812.5; 500]),
        (
            "bimodal",
            (0..4000)
                .map(|i| if i % 10 == 0 { 4000.0 } else { 20.0 } * (1.0 + 0.1 * rng.unit()))
                .collect(),
        ),
        (
            "with zeros",
            (0..1000)
                .map(|i| if i % 3 == 0 { 0.0 } else { 1.0 + i as f64 })
                .collect(),
        ),
        ("tiny window", vec![5.0, 50.0, 500.0]),
    ];
    for (name, values) in cases {
        let mut w = TrackWindow::new(&AnalyticsConfig::default());
        for (i, v) in values.iter().enumerate() {
            assert!(w.record(&event(T0 + (i as i64 % 200_000), *v)));
        }
        let stats = w.stats(Timestamp(T0 + 200_000), 1);
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        for (q, got) in [
            (0.50, stats.p50_latency),
            (0.95, stats.p95_latency),
            (0.99, stats.p99_latency),
        ] {
            assert_within_accuracy(got, exact_quantile(&sorted, q), &format!("{name} q{q}"));
        }
    }
}

#[test]
fn below_min_samples_ratios_and_quantiles_are_insufficient_data() {
    let mut w = TrackWindow::new(&config(1));
    for i in 0..99 {
        let mut e = fair(
            T0 + i * 100,
            if i % 2 == 0 { "A" } else { "B" },
            i % 3 == 0,
            Some(true),
        );
        e.cost_usd = Some(0.002);
        e.error = i % 10 == 0;
        w.record(&e);
    }
    let below = w.stats(Timestamp(T0 + 10_000), 100);
    assert_eq!(below.requests, 99);
    assert!(below.request_rate > 0.0);
    for name in TRACK_METRICS {
        let present = below.get(name).is_some();
        assert_eq!(
            present,
            matches!(
                name,
                "requests"
                    | "request_rate"
                    | "last_seen_age"
                    | "error_rate_lower"
                    | "error_rate_upper"
            ),
            "{name}"
        );
    }

    // The 100th request carries no cost: everything but cost becomes available.
    w.record(&fair(T0 + 9_999, "A", true, Some(true)));
    let at = w.stats(Timestamp(T0 + 10_000), 100);
    assert_eq!(at.requests, 100);
    for name in TRACK_METRICS {
        let present = at.get(name).is_some();
        assert_eq!(present, name != "cost_per_request", "{name}");
    }
    assert_eq!(at.error_rate, Some(0.1));
    // A rule's lower min_samples is honoured per call.
    let lower = w.stats(Timestamp(T0 + 10_000), 99);
    assert_close(lower.cost_per_request, 0.002, "cost_per_request");
}

#[test]
fn groups_below_min_group_samples_are_ignored() {
    let mut w = TrackWindow::new(&config(30));
    // A: 30 predictions, half positive. B: 29, all positive. C: 5, none positive.
    for i in 0..30 {
        w.record(&fair(T0 + i, "A", i % 2 == 0, Some(true)));
    }
    for i in 0..29 {
        w.record(&fair(T0 + 100 + i, "B", true, Some(true)));
    }
    for i in 0..5 {
        w.record(&fair(T0 + 200 + i, "C", false, Some(true)));
    }
    let one_group = w.stats(Timestamp(T0 + 1000), 1);
    assert_eq!(one_group.demographic_parity, None);
    assert_eq!(one_group.disparate_impact, None);
    assert_eq!(one_group.equal_opportunity, None);

    w.record(&fair(T0 + 300, "B", true, Some(true)));
    let two_groups = w.stats(Timestamp(T0 + 1000), 1);
    // C (5 requests, rate 0) is still ignored: otherwise parity would be 1.
    assert_eq!(two_groups.demographic_parity, Some(0.5));
    assert_eq!(two_groups.disparate_impact, Some(0.5));
    assert_eq!(two_groups.equal_opportunity, Some(0.5));
    // The per-group rates behind them: C is below min_group_samples.
    let rates: Vec<(String, f64, u64)> = w
        .positive_rates()
        .into_iter()
        .map(|g| (g.group, g.positive_rate, g.predictions))
        .collect();
    assert_eq!(
        rates,
        [("A".to_string(), 0.5, 30), ("B".to_string(), 1.0, 30)]
    );
    // Once the window has moved past them, no group qualifies.
    w.stats(Timestamp(T0 + 10 * 3_600_000), 1);
    assert!(w.positive_rates().is_empty());
}

#[test]
fn equal_opportunity_needs_labels() {
    let mut w = TrackWindow::new(&config(30));
    for i in 0..60 {
        w.record(&fair(T0 + i, "A", i % 2 == 0, None));
        w.record(&fair(T0 + i, "B", i % 4 == 0, None));
    }
    let unlabelled = w.stats(Timestamp(T0 + 1000), 100);
    assert_eq!(unlabelled.demographic_parity, Some(0.25));
    assert_eq!(unlabelled.equal_opportunity, None);

    // Label-positive requests count towards opportunity; label-negative do not.
    for i in 0..30 {
        w.record(&fair(T0 + 100 + i, "A", true, Some(true)));
        w.record(&fair(T0 + 100 + i, "B", i < 15, Some(true)));
        w.record(&fair(T0 + 100 + i, "B", true, Some(false)));
    }
    let labelled = w.stats(Timestamp(T0 + 1000), 100);
    assert_eq!(labelled.equal_opportunity, Some(0.5));
}

#[test]
fn data_older_than_the_window_leaves_and_a_silent_track_decays_to_zero() {
    let mut w = TrackWindow::new(&AnalyticsConfig::default());
    // One request per second for five minutes.
    let sent: Vec<i64> = (0..300).map(|s| T0 + s * 1000).collect();
    for &t in &sent {
        assert!(w.record(&event(t, 100.0)));
    }
    let mut now = T0 + WINDOW - 1;
    while now < T0 + 2 * WINDOW {
        let stats = w.stats(Timestamp(now), 1);
        let in_window = sent.iter().filter(|&&t| t > now - WINDOW).count() as u64;
        let safe = sent.iter().filter(|&&t| t > now - WINDOW + 30_000).count() as u64;
        // Never anything older than the window; at most one sub-bucket less.
        assert!(
            stats.requests <= in_window && stats.requests >= safe,
            "at +{}s: {} not in [{safe}, {in_window}]",
            (now - T0) / 1000,
            stats.requests
        );
        assert!((270.0..=300.0).contains(&stats.window_seconds));
        assert_eq!(
            stats.request_rate,
            stats.requests as f64 / stats.window_seconds
        );
        now += 7_000;
    }
    let silent = w.stats(Timestamp(T0 + 2 * WINDOW), 1);
    assert_eq!(silent.requests, 0);
    assert_eq!(silent.request_rate, 0.0);
    assert_eq!(silent.error_rate, None);
    assert_eq!(silent.p99_latency, None);
    assert!(w.is_empty());
}

#[test]
fn request_rate_divides_by_the_event_time_covered() {
    let mut w = TrackWindow::new(&AnalyticsConfig::default());
    for s in 0..300 {
        w.record(&event(T0 + s * 1000, 50.0));
    }
    // Just past a sub-bucket edge: the window covers 270 s, holding 270 requests.
    let edge = w.stats(Timestamp(T0 + WINDOW), 1);
    assert_eq!(edge.window_seconds, 270.0);
    assert_eq!((edge.requests, edge.request_rate), (270, 1.0));
}

#[test]
fn events_older_than_the_window_are_rejected() {
    let mut w = TrackWindow::new(&AnalyticsConfig::default());
    let t = T0 + 10 * MINUTE;
    assert!(w.record(&event(t, 10.0)));
    assert!(!w.record(&event(t - WINDOW - 1, 10.0)));
    assert!(!w.record(&event(t - WINDOW, 10.0)));
    assert!(w.record(&event(t - 4 * MINUTE, 10.0)));
    assert_eq!(w.stats(Timestamp(t), 1).requests, 2);
    // `now` moves the window too.
    let later = t + 6 * MINUTE;
    assert_eq!(w.stats(Timestamp(later), 1).requests, 0);
    assert!(!w.record(&event(t, 10.0)));
    assert!(w.is_empty());
}

#[test]
fn groups_beyond_the_cap_are_counted_not_stored_and_slots_free_up() {
    let mut w = TrackWindow::new(&config(1));
    for g in 0..MAX_GROUPS {
        for i in 0..5 {
            w.record(&fair(T0 + i, &format!("group-{g}"), g % 2 == 0, None));
        }
    }
    // Four more groups, later: no slot is free, so they are only counted.
    let later = T0 + 4 * MINUTE;
    for g in MAX_GROUPS..MAX_GROUPS + 4 {
        for i in 0..5 {
            w.record(&fair(later + i, &format!("group-{g}"), true, None));
        }
    }
    let stats = w.stats(Timestamp(later + 1000), 1);
    assert_eq!(stats.requests, 5 * (MAX_GROUPS as u64 + 4));
    assert_eq!(stats.overflow_groups, 20);
    assert_eq!(stats.demographic_parity, Some(1.0));
    assert_eq!(stats.disparate_impact, Some(0.0));

    // Once the first groups' data has left, new groups reuse their slots
    // while the overflowed requests are still in the window.
    let next = T0 + WINDOW + 30_000;
    for g in 0..3 {
        for i in 0..40 {
            w.record(&fair(next + i, &format!("new-{g}"), i < 10 * g, None));
        }
    }
    let stats = w.stats(Timestamp(next + 1000), 1);
    assert_eq!(stats.requests, 20 + 120);
    assert_eq!(stats.overflow_groups, 20);
    assert_eq!(stats.demographic_parity, Some(0.5));
    assert_eq!(stats.disparate_impact, Some(0.0));
}

#[test]
fn full_bins_survive_eviction() {
    // More requests in one latency bin and sub-bucket than a bin word counts.
    let mut w = TrackWindow::new(&AnalyticsConfig::default());
    for _ in 0..1_100_000 {
        w.record(&event(T0, 100.0));
    }
    for i in 0..100 {
        w.record(&event(T0 + MINUTE + i, 1000.0));
    }
    let both = w.stats(Timestamp(T0 + MINUTE + 100), 100);
    assert_eq!(both.requests, 1_100_100);
    assert_within_accuracy(both.p99_latency, 100.0, "p99 of both");
    // T0's sub-bucket leaves; the later one stays.
    let later = w.stats(Timestamp(T0 + WINDOW + 10_000), 100);
    assert_eq!(later.requests, 100);
    assert_within_accuracy(later.p50_latency, 1000.0, "p50 after eviction");
    let gone = w.stats(Timestamp(T0 + 2 * WINDOW), 1);
    assert_eq!((gone.requests, gone.p50_latency), (0, None));
}

#[test]
fn state_round_trips_through_serde() {
    let mut rng = Rng(3);
    let events = stream(&mut rng, 800, T0, T0 + WINDOW);
    let mut w = TrackWindow::new(&AnalyticsConfig::default());
    for e in &events[..400] {
        w.record(e);
    }
    let json = serde_json::to_string(&w).unwrap();
    let mut back: TrackWindow = serde_json::from_str(&json).unwrap();
    for e in &events[400..] {
        assert_eq!(w.record(e), back.record(e));
    }
    let now = Timestamp(T0 + WINDOW + 45_000);
    let original: TrackStats = w.stats(now, 100);
    assert!(original.requests > 0);
    assert_eq!(back.stats(now, 100), original);
}

#[test]
fn config_has_defaults_and_rejects_unknown_keys() {
    let defaults: AnalyticsConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(defaults, AnalyticsConfig::default());
    assert_eq!(defaults.window, Span::parse("5m").unwrap());
    assert_eq!(
        (defaults.min_samples, defaults.min_group_samples),
        (100, 30)
    );
    let custom: AnalyticsConfig =
        serde_json::from_str(r#"{"window":"1m","min_samples":10}"#).unwrap();
    assert_eq!(custom.window, Span(60_000));
    assert_eq!(custom.min_group_samples, 30);
    let err = serde_json::from_str::<AnalyticsConfig>(r#"{"windw":"1m"}"#).unwrap_err();
    assert!(err.to_string().contains("unknown field"), "{err}");
}

#[test]
fn wilson_bounds_decide_on_evidence_30_of_50_failing_is_bad_2_of_30_is_not_known() {
    use canaryd_rules::analytics::wilson;
    let (lower, upper) = wilson(30, 50).unwrap();
    assert!(lower > 0.05, "30/50: lower {lower}");
    assert!(
        (0.45..0.48).contains(&lower) && (0.71..0.74).contains(&upper),
        "{lower} {upper}"
    );
    let (lower, upper) = wilson(2, 30).unwrap();
    assert!(
        lower < 0.05 && upper > 0.05,
        "2/30 is unknown: {lower}..{upper}"
    );
    assert_eq!(wilson(0, 0), None);
    let (lower, upper) = wilson(0, 10).unwrap();
    assert!(lower < 1e-12, "{lower}");
    assert!(upper < 0.31 && upper > 0.25, "{upper}");
    let (lower, upper) = wilson(10, 10).unwrap();
    assert!(upper > 1.0 - 1e-12, "{upper}");
    assert!(lower > 0.69 && lower < 0.75, "{lower}");
}

proptest::proptest! {
    /// The interval holds the observed rate and narrows with more trials
    /// at the same rate: never looser than its count allows.
    #[test]
    fn wilson_bounds_hold_the_rate_and_narrow_with_the_count(
        errors in 0u64..500, extra in 0u64..500, factor in 2u64..20
    ) {
        use canaryd_rules::analytics::wilson;
        let trials = errors + extra + 1;
        let rate = errors as f64 / trials as f64;
        let (lower, upper) = wilson(errors, trials).unwrap();
        proptest::prop_assert!(lower <= rate + 1e-12 && rate <= upper + 1e-12);
        proptest::prop_assert!((0.0..=1.0).contains(&lower) && (0.0..=1.0).contains(&upper));
        let (l2, u2) = wilson(errors * factor, trials * factor).unwrap();
        proptest::prop_assert!(u2 - l2 <= upper - lower + 1e-12);
    }
}
