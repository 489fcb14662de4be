//! The canary judge: canary against stable, metric by metric, as Kayenta
//! judges a canary, over the analytics windows the engine already keeps.
//!
//! Four metrics, each with a test and an effect size:
//! - **latency**: a Mann-Whitney U test on the two latency sketches; effect
//!   is the ratio of the canary's mean to the stable's;
//! - **cost** per request: the same on the cost sketches;
//! - **error rate**: a two-proportion z-test; effect is the difference in
//!   rate (canary − stable);
//! - **fairness**: two-proportion tests of every group's positive-prediction
//!   rate and true-positive rate, canary against the same group on stable,
//!   Bonferroni-corrected across the comparisons; the metric takes the most
//!   significant one that fails, and its difference is the effect.
//!
//! A metric's verdict is `high` (or `low`) when the test finds the canary
//! higher (lower) at [`JudgeConfig::confidence`] *and* the effect passes the
//! metric's tolerance, and `pass` otherwise: a difference must be both real
//! and large enough to matter. Higher latency, cost or error rate fails; a
//! fairness rate that moves either way fails. The score is the share of
//! judged metrics that do not fail, 0 to 100. A metric without enough data
//! on either side (fewer than [`JudgeConfig::min_samples`] samples, or no
//! group with `min_group_samples` on both sides) has no verdict, and its
//! variables are no data.
//!
//! # Memory and time
//!
//! The tests read the windows' sketches and counters: nothing is kept per
//! request. The U statistic is computed by merging the two sketches' bins in
//! one pass, ties within a bin counted as ties (values within 2 % of each
//! other), which makes the test conservative, never blind. A judgement costs
//! one pass over the occupied bins of each track; the engine judges only
//! subjects some rule asks about, once per refresh.
//!
//! # Repeated looks
//!
//! Each test is a fixed-sample test of the current window, repeated at
//! every refresh. Repeating a test inflates the chance that noise passes it
//! once, so the default confidence is strict (0.99) and a rule on the judge
//! should hold `for:` a while; an anytime-valid sequential test is not
//! implemented.

use serde::Serialize;

pub use crate::analytics::JudgeConfig;
use crate::analytics::{BinIter, TrackWindow, bin_value, probit};

/// A metric's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// No difference that is both significant and beyond the tolerance.
    Pass,
    /// The canary is higher.
    High,
    /// The canary is lower.
    Low,
}

/// Every verdict. A condition writes one as a string (`"high"`), compiled
/// to its [`value`](Verdict::value).
pub const VERDICTS: [Verdict; 3] = [Verdict::Pass, Verdict::High, Verdict::Low];

impl Verdict {
    /// The number a condition compares: pass 0, high 1, low -1.
    pub fn value(self) -> f64 {
        match self {
            Verdict::Pass => 0.0,
            Verdict::High => 1.0,
            Verdict::Low => -1.0,
        }
    }

    /// `pass`, `high` or `low`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::High => "high",
            Verdict::Low => "low",
        }
    }
}

/// One metric judged.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricJudgement {
    /// The verdict.
    pub verdict: Verdict,
    /// Whether the verdict counts against the canary.
    pub fails: bool,
    /// Mean ratio (latency, cost) or rate difference (error rate, fairness).
    pub effect: f64,
    /// The test statistic, positive when the canary is higher.
    pub z: f64,
    /// The two-sided p-value of `z` (before any correction).
    pub p_value: f64,
    /// Samples on the canary and stable side.
    pub samples: [u64; 2],
    /// For fairness: the group and rate that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// The judged metrics, by name.
pub const METRICS: [&str; 4] = ["latency", "cost", "error_rate", "fairness"];

/// A subject's judgement.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Judgement {
    /// 0 to 100: the share of judged metrics that do not fail; `None` when
    /// no metric has enough data.
    pub score: Option<f64>,
    /// Latency.
    pub latency: Option<MetricJudgement>,
    /// Cost per request.
    pub cost: Option<MetricJudgement>,
    /// Error rate.
    pub error_rate: Option<MetricJudgement>,
    /// Fairness rates per group.
    pub fairness: Option<MetricJudgement>,
}

impl Judgement {
    /// A metric by its name in [`METRICS`].
    pub fn metric(&self, name: &str) -> Option<&MetricJudgement> {
        match name {
            "latency" => self.latency.as_ref(),
            "cost" => self.cost.as_ref(),
            "error_rate" => self.error_rate.as_ref(),
            "fairness" => self.fairness.as_ref(),
            _ => None,
        }
    }

    /// A judge variable's value by its name in
    /// [`JUDGE_VARIABLES`](crate::vocabulary::JUDGE_VARIABLES); `None` for
    /// another name or a metric without a verdict.
    pub fn get(&self, variable: &str) -> Option<f64> {
        if variable == "canary_score" {
            return self.score;
        }
        let rest = variable.strip_prefix("judge_")?;
        if let Some(metric) = rest.strip_suffix("_verdict") {
            return self.metric(metric).map(|m| m.verdict.value());
        }
        let metric = rest.strip_suffix("_effect")?;
        self.metric(metric).map(|m| m.effect)
    }
}

/// Judges `canary` against `stable`. Call after both windows' `stats`, which
/// move them to the same `now`.
pub fn judge(canary: &TrackWindow, stable: &TrackWindow, config: &JudgeConfig) -> Judgement {
    let min = config.min_samples.max(2);
    let z = config.confidence.z();
    let (c_requests, c_errors) = canary.counts();
    let (s_requests, s_errors) = stable.counts();
    let latency = (c_requests >= min && s_requests >= min)
        .then(|| {
            ranked(
                canary.latency_bins(),
                stable.latency_bins(),
                z,
                config.latency_tolerance,
            )
        })
        .flatten();
    let cost = ranked(
        canary.cost_bins(),
        stable.cost_bins(),
        z,
        config.cost_tolerance,
    )
    .filter(|m| m.samples.iter().all(|&n| n >= min));
    let error_rate = (c_requests >= min && s_requests >= min).then(|| {
        let mut m = proportions(
            [c_errors, s_errors],
            [c_requests, s_requests],
            z,
            config.error_rate_tolerance,
        );
        m.fails = m.verdict == Verdict::High;
        m
    });
    let fairness = fairness(canary, stable, config);
    let judged = [&latency, &cost, &error_rate, &fairness];
    let count = judged.iter().filter(|m| m.is_some()).count();
    let passed = judged
        .iter()
        .flat_map(|m| m.iter())
        .filter(|m| !m.fails)
        .count();
    Judgement {
        score: (count > 0).then(|| 100.0 * passed as f64 / count as f64),
        latency,
        cost,
        error_rate,
        fairness,
    }
}

/// The next run of one bin: a wide sketch may hold a bin in several pairs.
fn run(bins: &mut std::iter::Peekable<BinIter<'_>>) -> Option<(u32, u64)> {
    let (key, count) = bins.next()?;
    let mut n = u64::from(count);
    while let Some(&(k, c)) = bins.peek()
        && k == key
    {
        n += u64::from(c);
        bins.next();
    }
    Some((key, n))
}

/// The Mann-Whitney U test of two sketches, with the mean ratio as effect;
/// higher fails. `None` if either side is empty.
fn ranked(
    canary: BinIter<'_>,
    stable: BinIter<'_>,
    z_critical: f64,
    tolerance: f64,
) -> Option<MetricJudgement> {
    let (mut canary, mut stable) = (canary.peekable(), stable.peekable());
    let (mut a, mut b) = (run(&mut canary), run(&mut stable));
    // u: canary-stable pairs with the canary higher, a tie counting half.
    let (mut u, mut ties) = (0.0f64, 0.0f64);
    let (mut n, mut m) = (0u64, 0u64);
    let (mut sum_a, mut sum_b) = (0.0f64, 0.0f64);
    let tie = |t: u64| {
        let t = t as f64;
        t * t * t - t
    };
    loop {
        match (a, b) {
            (Some((ka, ca)), Some((kb, cb))) if ka == kb => {
                u += ca as f64 * (m as f64 + cb as f64 / 2.0);
                ties += tie(ca + cb);
                (n, m) = (n + ca, m + cb);
                sum_a += ca as f64 * bin_value(ka);
                sum_b += cb as f64 * bin_value(kb);
                (a, b) = (run(&mut canary), run(&mut stable));
            }
            (Some((ka, ca)), next) if next.is_none_or(|(kb, _)| ka < kb) => {
                u += ca as f64 * m as f64;
                ties += tie(ca);
                n += ca;
                sum_a += ca as f64 * bin_value(ka);
                a = run(&mut canary);
            }
            (_, Some((kb, cb))) => {
                ties += tie(cb);
                m += cb;
                sum_b += cb as f64 * bin_value(kb);
                b = run(&mut stable);
            }
            (_, None) => break,
        }
    }
    if n == 0 || m == 0 {
        return None;
    }
    let (nf, mf) = (n as f64, m as f64);
    let total = nf + mf;
    let mean = nf * mf / 2.0;
    let variance = nf * mf / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)));
    let z = if variance > 0.0 {
        // Continuity-corrected towards no difference.
        let d = u - mean;
        (d.signum() * (d.abs() - 0.5).max(0.0)) / variance.sqrt()
    } else {
        0.0 // every value in one bin: no evidence either way
    };
    let (mean_a, mean_b) = (sum_a / nf, sum_b / mf);
    let effect = if mean_b > 0.0 {
        mean_a / mean_b
    } else if mean_a > 0.0 {
        f64::INFINITY
    } else {
        1.0
    };
    let verdict = if z >= z_critical && effect >= 1.0 + tolerance {
        Verdict::High
    } else if z <= -z_critical && effect <= 1.0 - tolerance {
        Verdict::Low
    } else {
        Verdict::Pass
    };
    Some(MetricJudgement {
        verdict,
        fails: verdict == Verdict::High,
        effect,
        z,
        p_value: two_sided_p(z),
        samples: [n, m],
        group: None,
    })
}

/// The two-proportion z-test of `hits[0] / trials[0]` (canary) against
/// `hits[1] / trials[1]`, with the difference as effect. Sets no `fails`:
/// which direction fails is the caller's.
fn proportions(
    hits: [u64; 2],
    trials: [u64; 2],
    z_critical: f64,
    tolerance: f64,
) -> MetricJudgement {
    let [x, y] = hits.map(|h| h as f64);
    let [n, m] = trials.map(|t| t.max(1) as f64);
    let (p, q) = (x / n, y / m);
    let pooled = (x + y) / (n + m);
    let se = (pooled * (1.0 - pooled) * (1.0 / n + 1.0 / m)).sqrt();
    // All hits or none on both sides: the rates agree exactly.
    let z = if se > 0.0 { (p - q) / se } else { 0.0 };
    let effect = p - q;
    let verdict = if z >= z_critical && effect >= tolerance {
        Verdict::High
    } else if z <= -z_critical && effect <= -tolerance {
        Verdict::Low
    } else {
        Verdict::Pass
    };
    MetricJudgement {
        verdict,
        fails: false,
        effect,
        z,
        p_value: two_sided_p(z),
        samples: trials,
        group: None,
    }
}

/// Every group's positive-prediction and true-positive rate, canary against
/// stable; a move either way fails.
fn fairness(
    canary: &TrackWindow,
    stable: &TrackWindow,
    config: &JudgeConfig,
) -> Option<MetricJudgement> {
    let min = canary.min_group_samples().max(1);
    // (label, [hits], [trials]) of each comparison with data on both sides.
    let mut tests: Vec<(String, [u64; 2], [u64; 2])> = Vec::new();
    for (name, c) in canary.group_counts() {
        let Some((_, s)) = stable.group_counts().find(|(n, _)| *n == name) else {
            continue;
        };
        for (rate, hits, trials) in [
            (
                "positive_rate",
                [c.predicted_positive, s.predicted_positive],
                [c.predicted, s.predicted],
            ),
            (
                "true_positive_rate",
                [c.true_positive, s.true_positive],
                [c.label_positive, s.label_positive],
            ),
        ] {
            if trials.iter().all(|&t| u64::from(t) >= min) {
                tests.push((
                    format!("{name}: {rate}"),
                    hits.map(u64::from),
                    trials.map(u64::from),
                ));
            }
        }
    }
    if tests.is_empty() {
        return None;
    }
    // Bonferroni: each comparison at 1 - (1 - confidence) / k.
    let alpha = (1.0 - config.confidence.0) / tests.len() as f64;
    let z_critical = probit(1.0 - alpha / 2.0);
    let mut decided: Option<MetricJudgement> = None;
    for (label, hits, trials) in tests {
        let mut m = proportions(hits, trials, z_critical, config.fairness_tolerance);
        m.fails = m.verdict != Verdict::Pass;
        m.group = Some(label);
        // A failing comparison beats a passing one, then the larger |z|,
        // then the label, so that the order groups arrived in never matters.
        let better = match &decided {
            None => true,
            Some(d) => (m.fails, m.z.abs(), std::cmp::Reverse(&m.group))
                .partial_cmp(&(d.fails, d.z.abs(), std::cmp::Reverse(&d.group)))
                .is_some_and(|o| o.is_gt()),
        };
        if better {
            decided = Some(m);
        }
    }
    decided
}

/// The two-sided p-value of a standard normal `z`.
fn two_sided_p(z: f64) -> f64 {
    erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0)
}

/// The complementary error function, by the Chebyshev fit of Numerical
/// Recipes' `erfcc` (fractional error below 1.2e-7 everywhere).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::analytics::AnalyticsConfig;
    use crate::event::{InferenceEvent, Track};
    use crate::time::Timestamp;

    /// One request: latency ms, error, cost, group, prediction, label.
    type Request = (f64, bool, Option<f64>, Option<&'static str>, bool, bool);

    fn window(requests: &[Request]) -> TrackWindow {
        let mut w = TrackWindow::new(&AnalyticsConfig::default());
        for (i, &(latency_ms, error, cost_usd, group, prediction, label)) in
            requests.iter().enumerate()
        {
            w.record(&InferenceEvent {
                ts: Timestamp(1_000 + (i % 100) as i64),
                model: "m".into(),
                version: "v".into(),
                track: Track::Canary,
                latency_ms,
                error,
                cost_usd,
                group: group.map(str::to_string),
                prediction: group.map(|_| prediction),
                label: group.map(|_| label),
                labels: Default::default(),
            });
        }
        w.stats(Timestamp(2_000), 1);
        w
    }

    fn judged(canary: &[Request], stable: &[Request]) -> Judgement {
        judge(&window(canary), &window(stable), &JudgeConfig::default())
    }

    /// `n` requests with latencies spread over `base..base * 2`, errors one
    /// in `every`, costs around `cost`.
    fn traffic(n: usize, base: f64, every: usize, cost: f64) -> Vec<Request> {
        (0..n)
            .map(|i| {
                let spread = (i * 7919 % n) as f64 / n as f64;
                (
                    base * (1.0 + spread),
                    every > 0 && i % every == 0,
                    Some(cost * (1.0 + spread / 10.0)),
                    Some(["a", "b"][i % 2]),
                    i % 3 == 0,
                    i % 4 < 2,
                )
            })
            .collect()
    }

    #[test]
    fn the_same_traffic_passes_everything() {
        let j = judged(
            &traffic(400, 100.0, 20, 0.002),
            &traffic(600, 100.0, 20, 0.002),
        );
        assert_eq!(j.score, Some(100.0));
        for m in METRICS {
            let m = j.metric(m).unwrap_or_else(|| panic!("{m} judged"));
            assert_eq!(m.verdict, Verdict::Pass, "{m:?}");
            assert!(m.z.abs() < 2.0, "{m:?}");
        }
        assert_eq!(j.get("judge_latency_verdict"), Some(0.0));
        assert!((j.get("judge_latency_effect").unwrap() - 1.0).abs() < 0.02);
    }

    #[test]
    fn slower_costlier_and_failing_canaries_are_high_and_lower_the_score() {
        let stable = traffic(600, 100.0, 50, 0.002);
        let j = judged(&traffic(400, 150.0, 50, 0.002), &stable);
        let latency = j.latency.as_ref().unwrap();
        assert_eq!(latency.verdict, Verdict::High);
        assert!(latency.fails && latency.p_value < 0.01);
        assert!((latency.effect - 1.5).abs() < 0.05, "{latency:?}");
        assert_eq!(j.score, Some(75.0));
        assert_eq!(j.get("judge_latency_verdict"), Some(1.0));

        let j = judged(&traffic(400, 100.0, 50, 0.003), &stable);
        assert_eq!(j.cost.as_ref().unwrap().verdict, Verdict::High);
        assert_eq!(j.latency.as_ref().unwrap().verdict, Verdict::Pass);

        let j = judged(&traffic(400, 100.0, 5, 0.002), &stable);
        let errors = j.error_rate.as_ref().unwrap();
        assert_eq!(errors.verdict, Verdict::High);
        assert!((errors.effect - (0.2 - 0.02)).abs() < 1e-9, "{errors:?}");
        assert_eq!(j.score, Some(75.0));
    }

    #[test]
    fn a_faster_canary_is_low_and_does_not_fail() {
        let j = judged(
            &traffic(400, 60.0, 50, 0.002),
            &traffic(600, 100.0, 50, 0.002),
        );
        let latency = j.latency.as_ref().unwrap();
        assert_eq!(latency.verdict, Verdict::Low);
        assert!(!latency.fails);
        assert_eq!(j.score, Some(100.0));
    }

    #[test]
    fn a_significant_difference_within_the_tolerance_passes() {
        // 10 % slower on 20,000 requests a side: certain, but within 20 %.
        let j = judged(
            &traffic(20_000, 110.0, 0, 0.002),
            &traffic(20_000, 100.0, 0, 0.002),
        );
        let latency = j.latency.as_ref().unwrap();
        assert!(latency.z > 10.0, "{latency:?}");
        assert_eq!(latency.verdict, Verdict::Pass);
    }

    #[test]
    fn a_group_whose_rate_moves_fails_fairness_either_way() {
        let stable = traffic(600, 100.0, 50, 0.002);
        // Group b's positive predictions: a third on stable, all on canary.
        let mut canary = traffic(600, 100.0, 50, 0.002);
        for r in canary.iter_mut().filter(|r| r.3 == Some("b")) {
            r.4 = true;
        }
        let j = judged(&canary, &stable);
        let f = j.fairness.as_ref().unwrap();
        assert_eq!(f.verdict, Verdict::High);
        assert!(f.fails);
        assert_eq!(f.group.as_deref(), Some("b: positive_rate"));
        assert!((f.effect - 2.0 / 3.0).abs() < 0.01, "{f:?}");
        for r in canary.iter_mut().filter(|r| r.3 == Some("b")) {
            r.4 = false;
        }
        let f = judged(&canary, &stable).fairness.unwrap();
        assert_eq!((f.verdict, f.fails), (Verdict::Low, true));
    }

    #[test]
    fn too_few_samples_are_no_verdict() {
        let j = judged(
            &traffic(29, 300.0, 1, 0.01),
            &traffic(600, 100.0, 50, 0.002),
        );
        assert_eq!(j, Judgement::default());
        for (name, _) in crate::vocabulary::JUDGE_VARIABLES {
            assert_eq!(j.get(name), None, "{name}");
        }
        // Costs on one side only: the rest is judged.
        let mut canary = traffic(100, 100.0, 50, 0.002);
        canary.iter_mut().for_each(|r| r.2 = None);
        let j = judged(&canary, &traffic(100, 100.0, 50, 0.002));
        assert!(j.cost.is_none() && j.latency.is_some());
        assert_eq!(j.score, Some(100.0));
    }

    #[test]
    fn u_and_its_variance_match_the_textbook() {
        // Canary 1, 2, 3 ms; stable 4, 5, 6 ms: U = 0 of 9 pairs, mean 4.5,
        // variance 3 * 3 / 12 * 7 = 5.25, continuity-corrected by 0.5.
        let lat = |ms: &[f64]| -> Vec<Request> {
            ms.iter()
                .map(|&l| (l, false, None, None, false, false))
                .collect()
        };
        let (c, s) = (
            window(&lat(&[1.0, 2.0, 3.0])),
            window(&lat(&[4.0, 5.0, 6.0])),
        );
        let m = ranked(c.latency_bins(), s.latency_bins(), 1.96, 0.0).unwrap();
        assert!((m.z - (-4.0 / 5.25f64.sqrt())).abs() < 1e-12, "{m:?}");
        assert_eq!(m.samples, [3, 3]);
        // With ties: canary 1, 1, 2; stable 1, 2, 2. Each canary 1 ties the
        // stable 1 (0.5); the canary 2 beats it and ties two (1 + 1): U = 3.
        // Three 1s and three 2s: T = 2 * (27 - 3) = 48.
        let (c, s) = (
            window(&lat(&[1.0, 1.0, 2.0])),
            window(&lat(&[1.0, 2.0, 2.0])),
        );
        let m = ranked(c.latency_bins(), s.latency_bins(), 1.96, 0.0).unwrap();
        let variance: f64 = 9.0 / 12.0 * (7.0 - 48.0 / 30.0);
        assert!((m.z - (-1.0 / variance.sqrt())).abs() < 1e-12, "{m:?}");
        // All in one bin: no evidence.
        let (c, s) = (window(&lat(&[5.0; 4])), window(&lat(&[5.0; 7])));
        let m = ranked(c.latency_bins(), s.latency_bins(), 1.96, 0.0).unwrap();
        assert_eq!((m.z, m.verdict), (0.0, Verdict::Pass));
    }

    #[test]
    fn p_values_match_the_normal_table() {
        for (z, p) in [
            (0.0, 1.0),
            (1.959_964, 0.05),
            (2.575_829, 0.01),
            (-3.290_527, 0.001),
        ] {
            assert!(
                (two_sided_p(z) - p).abs() < 1e-6 * p.max(1e-3),
                "{z}: {}",
                two_sided_p(z)
            );
        }
    }

    #[test]
    fn settings_out_of_range_are_named() {
        assert_eq!(JudgeConfig::default().problem(), None);
        let bad = JudgeConfig {
            latency_tolerance: -0.1,
            ..JudgeConfig::default()
        };
        assert!(bad.problem().unwrap().contains("latency_tolerance"));
        let bad = JudgeConfig {
            confidence: crate::analytics::Confidence(0.3),
            ..JudgeConfig::default()
        };
        assert!(bad.problem().unwrap().contains("confidence"));
    }

    fn request() -> impl Strategy<Value = Request> {
        (
            0.5f64..2_000.0,
            any::<bool>(),
            proptest::option::of(0.0001f64..0.05),
            proptest::option::of(prop_oneof![Just("a"), Just("b"), Just("c")]),
            any::<bool>(),
            any::<bool>(),
        )
    }

    fn shuffled(v: Vec<Request>) -> impl Strategy<Value = (Vec<Request>, Vec<Request>)> {
        (Just(v.clone()), Just(v).prop_shuffle())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn verdicts_do_not_depend_on_the_order_of_requests(
            (canary, canary_shuffled) in proptest::collection::vec(request(), 0..400).prop_flat_map(shuffled),
            (stable, stable_shuffled) in proptest::collection::vec(request(), 0..400).prop_flat_map(shuffled),
        ) {
            prop_assert_eq!(judged(&canary, &stable), judged(&canary_shuffled, &stable_shuffled));
        }

        #[test]
        fn swapping_the_sides_mirrors_every_test(
            canary in proptest::collection::vec(request(), 30..300),
            stable in proptest::collection::vec(request(), 30..300),
        ) {
            let (a, b) = (judged(&canary, &stable), judged(&stable, &canary));
            for (x, y) in [(&a.latency, &b.latency), (&a.error_rate, &b.error_rate), (&a.cost, &b.cost)] {
                if let (Some(x), Some(y)) = (x, y) {
                    prop_assert!((x.z + y.z).abs() < 1e-9, "{x:?} {y:?}");
                }
            }
        }
    }
}
