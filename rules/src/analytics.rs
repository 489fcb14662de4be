//! Per subject-track sliding-window analytics computed from inference
//! events: request counts and rate, error rate, latency quantiles, cost per
//! request and fairness metrics.
//!
//! Pure: no I/O and no clock reads; `now` is always an argument.
//!
//! # The window
//!
//! A [`TrackWindow`] is a ring of [`SUB_BUCKETS`] sub-buckets, each
//! `window / SUB_BUCKETS` of event time long (30 s for the default 5 m),
//! aligned to the epoch. Individual events are never kept: a sub-bucket holds
//! counters and a latency sketch. The window is the newest sub-bucket (the one
//! holding the newest time seen, an event's or a `now`'s) and the
//! `SUB_BUCKETS - 1` before it, so **data leaves the window one sub-bucket at a
//! time**: nothing older than `window` is ever counted, but data up to one
//! sub-bucket younger than that may already be gone. The window therefore
//! covers between `window - window / SUB_BUCKETS` and `window` of event time;
//! [`TrackStats::window_seconds`] says how much, and `request_rate` divides by
//! it so that steady traffic gives the same rate whatever the alignment.
//!
//! # Latency quantiles
//!
//! Latencies go into a DDSketch-style log histogram with relative accuracy
//! [`RELATIVE_ACCURACY`] (1 %): each bin holds the values in
//! `(γ^(k-1), γ^k]` with `γ = (1 + α) / (1 - α)` and reports `γ^k (1 - α)`, so
//! a reported quantile is within 1 % of the exact sample it stands for (the
//! sample at 0-based rank `floor(q (n - 1))` of the sorted window). Latencies
//! below [`MIN_LATENCY_MS`] count as 0. Bins are stored sparse: only bins that
//! hold data, sorted by bin, 2 bytes each while every count is below 15 and 4
//! bytes after. There is one sketch per sub-bucket and one for the whole
//! window, kept by adding on record and subtracting a sub-bucket's bins when
//! it leaves, so `stats` reads quantiles in one pass over the occupied bins
//! and never sorts or merges. No crate is used: `sketches-ddsketch` 0.4
//! stores dense 8-byte bins and can merge but not subtract, which would cost
//! several times the memory target.
//!
//! # Memory
//!
//! Heap follows the data: about 2.3 KB per track at 300 requests per window
//! (lognormal latencies, three groups), 3.8 KB at 1,000, and growing slowly
//! with the number of occupied bins after that (14.5 KB at 29,000); a silent
//! track holds none. `cargo bench -p canaryd-rules --bench analytics_memory`
//! measures it.
//!
//! # Fairness
//!
//! Per group and sub-bucket: requests with a prediction, positive
//! predictions, label-positive requests (with a prediction) and true
//! positives. At most [`MAX_GROUPS`] groups are tracked per track; a request
//! from a further group is counted in [`TrackStats::overflow_groups`] and
//! otherwise ignored. A group's slot is reused once its data has left the
//! window.

use serde::{Deserialize, Serialize};

use crate::event::InferenceEvent;
use crate::time::{Span, Timestamp};

/// Sub-buckets per window; data leaves the window one sub-bucket at a time.
pub const SUB_BUCKETS: usize = 10;

/// Most fairness groups tracked per track; requests from more groups are
/// counted in [`TrackStats::overflow_groups`] only.
pub const MAX_GROUPS: usize = 16;

/// Relative accuracy of the latency quantiles: a reported quantile is within
/// this fraction of the exact sample it stands for.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Latencies (ms) below this count as 0: one nanosecond.
pub const MIN_LATENCY_MS: f64 = 1e-6;

/// Settings, deserialised from the daemon config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyticsConfig {
    /// The sliding window's length (default `5m`; at least 10 ms).
    pub window: Span,
    /// Below this many requests in the window, ratios, quantiles and fairness
    /// metrics are `None` (insufficient data). Default 100.
    pub min_samples: u64,
    /// A fairness group with fewer requests in the window is ignored; with
    /// fewer than two qualifying groups fairness metrics are `None`. Default 30.
    pub min_group_samples: u64,
    /// How often (in event time) the engine recomputes window variables.
    /// Default `1s`.
    pub refresh: Span,
    /// Below `min_samples`, an error or success rate is judged on evidence
    /// at this confidence rather than left as no data: a condition holds
    /// when it holds across the rate's whole Wilson interval, fails when it
    /// fails across it, and is unknown (the alert keeps its phase)
    /// otherwise. `null` keeps such rates as no data. Default 0.95.
    pub confidence: Option<Confidence>,
    /// The canary judge's settings.
    pub judge: JudgeConfig,
}

impl Default for AnalyticsConfig {
    fn default() -> Self {
        AnalyticsConfig {
            window: Span(5 * 60_000),
            min_samples: 100,
            min_group_samples: 30,
            refresh: Span::seconds(1),
            confidence: Some(Confidence(0.95)),
            judge: JudgeConfig::default(),
        }
    }
}

/// The canary judge's settings ([`crate::judge`]): `analytics.judge` in the daemon config.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JudgeConfig {
    /// The chance, over a version's whole life, that noise alone never
    /// earns a metric a verdict (default 0.99): checked at every refresh,
    /// and still held to this.
    pub confidence: Confidence,
    /// Samples each track needs for a metric to be judged (default 30).
    pub min_samples: u64,
    /// Latency passes within this relative change of the stable's mean
    /// (default 0.2: the playbook's "P95 latency within 20% of baseline").
    pub latency_tolerance: f64,
    /// Cost per request passes within this relative change (default 0.1).
    pub cost_tolerance: f64,
    /// Error rate passes within this absolute difference (default 0.01:
    /// the playbook's 1 %).
    pub error_rate_tolerance: f64,
    /// A group's fairness rate passes within this absolute difference
    /// (default 0.05).
    pub fairness_tolerance: f64,
    /// How long evidence accumulates before the judge starts afresh, at a
    /// stricter level (default `1h`): a regression late in a long rollout
    /// is not drowned by hours of good data.
    pub horizon: Span,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        JudgeConfig {
            confidence: Confidence(0.99),
            min_samples: 30,
            latency_tolerance: 0.2,
            cost_tolerance: 0.1,
            error_rate_tolerance: 0.01,
            fairness_tolerance: 0.05,
            horizon: Span(3_600_000),
        }
    }
}

// Compared bit for bit: config values, never computed.
impl PartialEq for JudgeConfig {
    fn eq(&self, o: &Self) -> bool {
        self.confidence == o.confidence
            && self.min_samples == o.min_samples
            && self.horizon == o.horizon
            && [
                (self.latency_tolerance, o.latency_tolerance),
                (self.cost_tolerance, o.cost_tolerance),
                (self.error_rate_tolerance, o.error_rate_tolerance),
                (self.fairness_tolerance, o.fairness_tolerance),
            ]
            .iter()
            .all(|(a, b)| a.to_bits() == b.to_bits())
    }
}

impl Eq for JudgeConfig {}

impl JudgeConfig {
    /// What is wrong with the settings, if anything.
    pub fn problem(&self) -> Option<String> {
        if !self.confidence.is_valid() {
            return Some(format!(
                "analytics.judge.confidence ({}) must be between 0.5 and 0.9999",
                self.confidence.0
            ));
        }
        if self.min_samples < 2 {
            return Some("analytics.judge.min_samples must be at least 2".into());
        }
        if self.horizon.millis() < 1000 {
            return Some("analytics.judge.horizon must be at least 1s".into());
        }
        for (name, v) in [
            ("latency_tolerance", self.latency_tolerance),
            ("cost_tolerance", self.cost_tolerance),
            ("error_rate_tolerance", self.error_rate_tolerance),
            ("fairness_tolerance", self.fairness_tolerance),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Some(format!(
                    "analytics.judge.{name} ({v}) must be a number of at least 0"
                ));
            }
        }
        None
    }
}

/// One track (canary or stable) of one subject: a sliding window of
/// inference events, kept as sub-bucket counters and sketches.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrackWindow {
    /// Sub-bucket length in ms.
    width: i64,
    min_group_samples: u64,
    /// Newest time seen (event or `now`), ms; `None` until the first.
    newest: Option<i64>,
    /// Newest event time recorded, ms: how long the track has been silent.
    #[serde(default)]
    last_event: Option<i64>,
    /// Ring indexed by `sub-bucket number mod SUB_BUCKETS`.
    buckets: [Bucket; SUB_BUCKETS],
    /// The sum of the buckets' latency bins.
    latency: Bins,
    /// Group names by slot.
    groups: Vec<Box<str>>,
    /// Counts at `slot * SUB_BUCKETS + ring index`: one allocation per track.
    fairness: Vec<GroupCounts>,
    /// Set when no group slot is free; a slot can only free up on eviction.
    #[serde(skip)]
    groups_full: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Bucket {
    requests: u32,
    errors: u32,
    /// Requests that carry `cost_usd`.
    costed: u32,
    /// Fairness requests from groups beyond [`MAX_GROUPS`].
    overflow: u32,
    cost_sum: f64,
    latency: Bins,
}

/// One fairness group's counts over a sub-bucket or a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct GroupCounts {
    /// Requests with a prediction.
    pub(crate) predicted: u32,
    /// Of those, positive predictions.
    pub(crate) predicted_positive: u32,
    /// Requests with a prediction and a positive label.
    pub(crate) label_positive: u32,
    /// Of those, positive predictions.
    pub(crate) true_positive: u32,
}

impl GroupCounts {
    /// Counts one request with a prediction.
    pub(crate) fn count(&mut self, prediction: bool, label: bool) {
        self.predicted = self.predicted.saturating_add(1);
        self.predicted_positive = self
            .predicted_positive
            .saturating_add(u32::from(prediction));
        self.label_positive = self.label_positive.saturating_add(u32::from(label));
        self.true_positive = self
            .true_positive
            .saturating_add(u32::from(label && prediction));
    }

    fn add(&mut self, o: &GroupCounts) {
        self.predicted = self.predicted.saturating_add(o.predicted);
        self.predicted_positive = self.predicted_positive.saturating_add(o.predicted_positive);
        self.label_positive = self.label_positive.saturating_add(o.label_positive);
        self.true_positive = self.true_positive.saturating_add(o.true_positive);
    }
}

impl TrackWindow {
    /// An empty window; allocates nothing until data arrives.
    pub fn new(config: &AnalyticsConfig) -> Self {
        TrackWindow {
            width: (config.window.millis() / SUB_BUCKETS as i64).max(1),
            min_group_samples: config.min_group_samples,
            newest: None,
            last_event: None,
            buckets: Default::default(),
            latency: Bins::default(),
            groups: Vec::new(),
            fairness: Vec::new(),
            groups_full: false,
        }
    }

    /// Adds one request at its event time. Events older than the window
    /// relative to the newest time seen (their sub-bucket has left the ring)
    /// are ignored and return false.
    pub fn record(&mut self, e: &InferenceEvent) -> bool {
        self.record_keyed(e, latency_key(e.latency_ms))
    }

    /// [`record`](Self::record), with the latency's bin already computed.
    pub(crate) fn record_keyed(&mut self, e: &InferenceEvent, key: u32) -> bool {
        let t = e.ts.millis();
        let number = t.div_euclid(self.width);
        if let Some(newest) = self.newest
            && number
                <= newest
                    .div_euclid(self.width)
                    .saturating_sub(SUB_BUCKETS as i64)
        {
            return false;
        }
        self.advance(t);
        self.last_event = Some(self.last_event.map_or(t, |l| l.max(t)));
        let slot = ring_slot(number);
        self.latency.add(key);
        let group = match (&e.group, e.prediction) {
            (Some(g), Some(_)) => Some(self.group_slot(g)),
            _ => None,
        };
        let Some(bucket) = self.buckets.get_mut(slot) else {
            return false; // unreachable: ring_slot < SUB_BUCKETS
        };
        bucket.requests = bucket.requests.saturating_add(1);
        bucket.errors = bucket.errors.saturating_add(u32::from(e.error));
        bucket.latency.add(key);
        if let Some(cost) = e.cost_usd
            && cost.is_finite()
            && cost >= 0.0
        {
            bucket.costed = bucket.costed.saturating_add(1);
            bucket.cost_sum += cost;
        }
        match group {
            None => {}
            Some(None) => bucket.overflow = bucket.overflow.saturating_add(1),
            Some(Some(g)) => {
                let prediction = e.prediction == Some(true);
                let label = e.label == Some(true);
                if let Some(c) = self.fairness.get_mut(g * SUB_BUCKETS + slot) {
                    c.count(prediction, label);
                }
            }
        }
        true
    }

    /// The window's statistics as of `now`; first drops sub-buckets older
    /// than `now - window`. A `now` earlier than the newest event does not
    /// rewind: the window ends at the newest time seen. `min_samples` is
    /// passed per call because rules can override it.
    pub fn stats(&mut self, now: Timestamp, min_samples: u64) -> TrackStats {
        self.advance(now.millis());
        let mut requests = 0u64;
        let mut errors = 0u64;
        let mut costed = 0u64;
        let mut overflow = 0u64;
        let mut cost_sum = 0.0;
        for b in &self.buckets {
            requests += u64::from(b.requests);
            errors += u64::from(b.errors);
            costed += u64::from(b.costed);
            overflow += u64::from(b.overflow);
            cost_sum += b.cost_sum;
        }
        let end = self.newest.unwrap_or(now.millis());
        let first = end
            .div_euclid(self.width)
            .saturating_sub(SUB_BUCKETS as i64 - 1)
            .saturating_mul(self.width);
        let window_seconds = end.saturating_sub(first) as f64 / 1000.0;
        let mut stats = TrackStats {
            requests,
            request_rate: if window_seconds > 0.0 {
                requests as f64 / window_seconds
            } else {
                0.0
            },
            window_seconds,
            overflow_groups: overflow,
            last_seen_age: self
                .last_event
                .map(|t| now.millis().saturating_sub(t).max(0) as f64 / 1000.0),
            ..TrackStats::default()
        };
        // The bounds need no guard: they widen as the requests get few.
        if let Some((lower, upper)) = wilson(errors, requests) {
            stats.error_rate_lower = Some(lower);
            stats.error_rate_upper = Some(upper);
        }
        let min = min_samples.max(1);
        if requests >= min {
            let error_rate = errors as f64 / requests as f64;
            stats.error_rate = Some(error_rate);
            stats.success_rate = Some(1.0 - error_rate);
            let [p50, p95, p99] = self.latency.quantiles(requests, [0.50, 0.95, 0.99]);
            (stats.p50_latency, stats.p95_latency, stats.p99_latency) = (p50, p95, p99);
            self.fairness_into(&mut stats);
        }
        if costed >= min {
            stats.cost_per_request = Some(cost_sum / costed as f64);
        }
        stats
    }

    /// Whether the window currently holds no data.
    pub fn is_empty(&self) -> bool {
        self.buckets.iter().all(|b| b.requests == 0)
    }

    /// Moves the newest time to `t` if later, evicting the sub-buckets that
    /// leave the ring.
    fn advance(&mut self, t: i64) {
        let Some(newest) = self.newest else {
            self.newest = Some(t);
            return;
        };
        if t <= newest {
            return;
        }
        let head = newest.div_euclid(self.width);
        let steps = t
            .div_euclid(self.width)
            .saturating_sub(head)
            .min(SUB_BUCKETS as i64);
        for i in 1..=steps {
            self.evict(ring_slot(head.saturating_add(i)));
        }
        self.newest = Some(t);
    }

    fn evict(&mut self, slot: usize) {
        let Some(bucket) = self.buckets.get_mut(slot) else {
            return;
        };
        if bucket.requests == 0 {
            return;
        }
        // Taking frees the bucket's bins: memory follows the data.
        let old = std::mem::take(bucket);
        self.latency.subtract(&old.latency);
        for g in 0..self.groups.len() {
            if let Some(c) = self.fairness.get_mut(g * SUB_BUCKETS + slot) {
                *c = GroupCounts::default();
            }
        }
        self.groups_full = false;
        if self.is_empty() {
            // A silent track keeps no heap.
            self.latency = Bins::default();
            self.groups = Vec::new();
            self.fairness = Vec::new();
        }
    }

    /// The slot of a fairness group, `None` when all slots hold live data.
    fn group_slot(&mut self, name: &str) -> Option<usize> {
        if let Some(i) = self.groups.iter().position(|g| **g == *name) {
            return Some(i);
        }
        if self.groups.len() < MAX_GROUPS {
            self.groups.push(name.into());
            self.fairness
                .resize(self.groups.len() * SUB_BUCKETS, GroupCounts::default());
            return Some(self.groups.len() - 1);
        }
        if self.groups_full {
            return None;
        }
        let free = self
            .fairness
            .chunks(SUB_BUCKETS)
            .position(|row| row.iter().all(|c| c.predicted == 0));
        match free.and_then(|i| self.groups.get_mut(i).map(|g| (i, g))) {
            Some((i, g)) => {
                *g = name.into();
                Some(i)
            }
            None => {
                self.groups_full = true;
                None
            }
        }
    }

    /// The sum of the latencies in the window, ms, within
    /// [`RELATIVE_ACCURACY`]; `None` without requests. Not part of
    /// [`stats`](Self::stats), which rules evaluate often: a full pass over
    /// the sketch, for the metrics' summary only. Call after `stats`.
    pub fn latency_sum(&self) -> Option<f64> {
        let requests: u64 = self.buckets.iter().map(|b| u64::from(b.requests)).sum();
        (requests > 0).then(|| self.latency.sum())
    }

    /// The positive-prediction rate of each group with at least
    /// `min_group_samples` predictions in the window, by group name: what
    /// demographic parity and disparate impact are computed from. Call
    /// after [`stats`](Self::stats), which moves the window to `now`.
    pub fn positive_rates(&self) -> Vec<GroupRate> {
        let min = self.min_group_samples.max(1);
        self.groups
            .iter()
            .zip(self.fairness.chunks(SUB_BUCKETS))
            .filter_map(|(name, row)| {
                let mut c = GroupCounts::default();
                for b in row {
                    c.add(b);
                }
                (u64::from(c.predicted) >= min).then(|| GroupRate {
                    group: name.to_string(),
                    positive_rate: f64::from(c.predicted_positive) / f64::from(c.predicted),
                    predictions: u64::from(c.predicted),
                })
            })
            .collect()
    }

    fn fairness_into(&self, stats: &mut TrackStats) {
        let min = self.min_group_samples.max(1);
        let mut selection: Option<(f64, f64)> = None; // (min, max) positive-prediction rate
        let mut opportunity: Option<(f64, f64)> = None; // (min, max) true-positive rate
        let mut selection_groups = 0;
        let mut opportunity_groups = 0;
        for row in self.fairness.chunks(SUB_BUCKETS) {
            let mut c = GroupCounts::default();
            for b in row {
                c.add(b);
            }
            if u64::from(c.predicted) >= min {
                selection_groups += 1;
                let rate = f64::from(c.predicted_positive) / f64::from(c.predicted);
                selection = Some(widen(selection, rate));
            }
            if u64::from(c.label_positive) >= min {
                opportunity_groups += 1;
                let rate = f64::from(c.true_positive) / f64::from(c.label_positive);
                opportunity = Some(widen(opportunity, rate));
            }
        }
        if selection_groups >= 2
            && let Some((lo, hi)) = selection
        {
            stats.demographic_parity = Some(hi - lo);
            stats.disparate_impact = (hi > 0.0).then(|| lo / hi);
        }
        if opportunity_groups >= 2
            && let Some((lo, hi)) = opportunity
        {
            stats.equal_opportunity = Some(hi - lo);
        }
    }
}

fn widen(range: Option<(f64, f64)>, x: f64) -> (f64, f64) {
    match range {
        None => (x, x),
        Some((lo, hi)) => (lo.min(x), hi.max(x)),
    }
}

fn ring_slot(number: i64) -> usize {
    // rem_euclid of a positive modulus is in 0..SUB_BUCKETS.
    number.rem_euclid(SUB_BUCKETS as i64) as usize
}

/// One fairness group's positive-prediction rate over a track's window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GroupRate {
    /// The group's name, as the events carry it.
    pub group: String,
    /// Positive predictions / predictions.
    pub positive_rate: f64,
    /// Predictions behind the rate.
    pub predictions: u64,
}

/// A track's statistics over its window.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TrackStats {
    /// Requests in the window; always present.
    pub requests: u64,
    /// Requests per second over [`window_seconds`](Self::window_seconds);
    /// always present, 0 for a silent track.
    pub request_rate: f64,
    /// The event time the window covers: from the start of its oldest
    /// sub-bucket to the newest time seen, between `window - window / 10`
    /// and `window`.
    pub window_seconds: f64,
    /// Errors / requests.
    pub error_rate: Option<f64>,
    /// 1 - error rate.
    pub success_rate: Option<f64>,
    /// Median latency, ms, within [`RELATIVE_ACCURACY`].
    pub p50_latency: Option<f64>,
    /// 95th percentile latency, ms, within [`RELATIVE_ACCURACY`].
    pub p95_latency: Option<f64>,
    /// 99th percentile latency, ms, within [`RELATIVE_ACCURACY`].
    pub p99_latency: Option<f64>,
    /// Mean `cost_usd` over the requests that carry one; `None` if fewer
    /// than `min_samples` do.
    pub cost_per_request: Option<f64>,
    /// Max - min positive-prediction rate across qualifying groups.
    pub demographic_parity: Option<f64>,
    /// Max - min true-positive rate across groups with at least
    /// `min_group_samples` label-positive requests.
    pub equal_opportunity: Option<f64>,
    /// Min / max positive-prediction rate; `None` if the max is 0.
    pub disparate_impact: Option<f64>,
    /// Requests in the window with a group and a prediction whose group was
    /// not tracked because [`MAX_GROUPS`] groups already held data.
    pub overflow_groups: u64,
    /// Seconds of event time since the track's last event; `None` before
    /// its first. Not guarded by `min_samples`: silence is the signal.
    pub last_seen_age: Option<f64>,
    /// Lower end of the 95 % Wilson score interval of the error rate; not
    /// guarded by `min_samples` (it is the guard).
    pub error_rate_lower: Option<f64>,
    /// Upper end of the same interval.
    pub error_rate_upper: Option<f64>,
}

/// z of a two-sided 95 % interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// The 95 % Wilson score interval of `successes` out of `trials`; `None`
/// without trials. Unlike the normal approximation it stays inside 0..1
/// and is honest at small counts: 30 of 50 gives 0.46..0.72, 2 of 30 gives
/// 0.018..0.21.
pub fn wilson(successes: u64, trials: u64) -> Option<(f64, f64)> {
    wilson_z(successes, trials, Z95)
}

/// The Wilson score interval at the two-sided `z` (1.96 for 95 %).
pub fn wilson_z(successes: u64, trials: u64, z: f64) -> Option<(f64, f64)> {
    if trials == 0 {
        return None;
    }
    let n = trials as f64;
    let p = successes.min(trials) as f64 / n;
    let z2 = z * z;
    let denominator = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denominator;
    let half = z / denominator * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    Some(((center - half).max(0.0), (center + half).min(1.0)))
}

/// A two-sided confidence level, between 0.5 and 0.9999 (`0.95`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Confidence(pub f64);

// Compared bit for bit: a config value, never computed.
impl PartialEq for Confidence {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_bits() == other.0.to_bits()
    }
}

impl Eq for Confidence {}

impl Confidence {
    /// Whether the level is one canaryd accepts.
    pub fn is_valid(self) -> bool {
        (0.5..=0.9999).contains(&self.0)
    }

    /// The z of the two-sided interval: 1.96 for 0.95.
    pub fn z(self) -> f64 {
        probit(0.5 + self.0.clamp(0.5, 0.9999) / 2.0)
    }
}

/// The standard normal quantile of `p` in (0, 1), by Acklam's rational
/// approximation (relative error below 1.2e-9).
pub(crate) fn probit(p: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969_683_028_665_376e1,
        2.209_460_984_245_205e2,
        -2.759_285_104_469_687e2,
        1.383_577_518_672_69e2,
        -3.066_479_806_614_716e1,
        2.506_628_277_459_239,
    ];
    const B: [f64; 5] = [
        -5.447_609_879_822_406e1,
        1.615_858_368_580_409e2,
        -1.556_989_798_598_866e2,
        6.680_131_188_771_972e1,
        -1.328_068_155_288_572e1,
    ];
    const C: [f64; 6] = [
        -7.784_894_002_430_293e-3,
        -3.223_964_580_411_365e-1,
        -2.400_758_277_161_838,
        -2.549_732_539_343_734,
        4.374_664_141_464_968,
        2.938_163_982_698_783,
    ];
    const D: [f64; 4] = [
        7.784_695_709_041_462e-3,
        3.224_671_290_700_398e-1,
        2.445_134_137_142_996,
        3.754_408_661_907_416,
    ];
    const LOW: f64 = 0.02425;
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5])
            / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < LOW {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - LOW {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

impl TrackStats {
    /// A per-track metric by its short name as in
    /// [`TRACK_METRICS`](crate::vocabulary::TRACK_METRICS)
    /// (`fairness_metric` is `disparate_impact`). `None` for an unknown
    /// name or insufficient data.
    pub fn get(&self, metric: &str) -> Option<f64> {
        match metric {
            "requests" => Some(self.requests as f64),
            "request_rate" => Some(self.request_rate),
            "error_rate" => self.error_rate,
            "success_rate" => self.success_rate,
            "p50_latency" => self.p50_latency,
            "p95_latency" => self.p95_latency,
            "p99_latency" => self.p99_latency,
            "cost_per_request" => self.cost_per_request,
            "demographic_parity" => self.demographic_parity,
            "equal_opportunity" => self.equal_opportunity,
            "disparate_impact" | "fairness_metric" => self.disparate_impact,
            "last_seen_age" => self.last_seen_age,
            "error_rate_lower" => self.error_rate_lower,
            "error_rate_upper" => self.error_rate_upper,
            _ => None,
        }
    }
}

// Sketch geometry. Bin 0 holds values below MIN_LATENCY_MS; bin k >= 1 holds
// MIN * (γ^(k-2), γ^(k-1)]. 12 key bits reach MIN * γ^4094 ≈ 3e29 ms; larger
// values share the top bin.
const KEY_BITS: u32 = 12;
const KEY_MAX: u32 = (1 << KEY_BITS) - 1;
/// ln γ for γ = 1.01 / 0.99; checked against the formula in a test.
const LN_GAMMA: f64 = 0.020000666706669435;

pub(crate) fn latency_key(ms: f64) -> u32 {
    // Negatives and NaN go to bin 0 too.
    if ms.is_nan() || ms < MIN_LATENCY_MS {
        return 0;
    }
    let raw = ((ms.ln() - MIN_LATENCY_MS.ln()) / LN_GAMMA).ceil();
    // `as` saturates; raw >= 0 up to rounding, and is clamped to the top bin.
    (raw.max(0.0) as u32).min(KEY_MAX - 1) + 1
}

/// A cost's bin: micro-dollars on the latency bins, so that costs down to
/// a millionth of a micro-dollar are told apart within 1 %.
pub(crate) fn cost_key(usd: f64) -> u32 {
    latency_key(usd * 1e6)
}

/// The value a bin stands for (ms for latency, micro-dollars for cost),
/// within [`RELATIVE_ACCURACY`] of every value in it.
pub(crate) fn bin_value(key: u32) -> f64 {
    latency_value(key)
}

fn latency_value(key: u32) -> f64 {
    match key {
        0 => 0.0,
        // γ^k (1 - α) is within α of every value in (γ^(k-1), γ^k].
        k => MIN_LATENCY_MS * (f64::from(k - 1) * LN_GAMMA).exp() * (1.0 - RELATIVE_ACCURACY),
    }
}

/// A bin word: `key << COUNT_BITS | count`, so words sort by key.
trait Word: Copy {
    const COUNT_BITS: u32;
    const COUNT_MAX: u32 = (1 << Self::COUNT_BITS) - 1;
    fn get(self) -> u32;
    /// Only called with `key <= KEY_MAX` and `count <= COUNT_MAX`, which fit.
    fn make(key: u32, count: u32) -> Self;
    fn key(self) -> u32 {
        self.get() >> Self::COUNT_BITS
    }
    fn count(self) -> u32 {
        self.get() & Self::COUNT_MAX
    }
}

impl Word for u16 {
    const COUNT_BITS: u32 = 16 - KEY_BITS;
    fn get(self) -> u32 {
        u32::from(self)
    }
    fn make(key: u32, count: u32) -> Self {
        (key << Self::COUNT_BITS | count) as u16
    }
}

impl Word for u32 {
    const COUNT_BITS: u32 = 32 - KEY_BITS;
    fn get(self) -> u32 {
        self
    }
    fn make(key: u32, count: u32) -> Self {
        key << Self::COUNT_BITS | count
    }
}

/// A sparse log histogram: only occupied bins, as words sorted ascending.
///
/// Narrow words (4-bit counts, 2 bytes) while every bin count is below 15,
/// which holds for a sub-bucket up to a few thousand requests; then wide
/// words (20-bit counts, 4 bytes). A wide bin whose count would pass the
/// maximum gets another word with the same key; only the first word of a key
/// can be below the maximum, so adding and subtracting always touch it first.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Bins {
    Narrow(Vec<u16>),
    Wide(Vec<u32>),
}

impl Default for Bins {
    fn default() -> Self {
        Bins::Narrow(Vec::new())
    }
}

fn first_of<W: Word>(words: &[W], key: u32, from: usize) -> usize {
    let probe = key << W::COUNT_BITS;
    from + words
        .get(from..)
        .unwrap_or(&[])
        .partition_point(|w| w.get() < probe)
}

/// Adds one to `key`'s bin; false (and no change) if the bin is full and
/// `spill` is off.
fn add_word<W: Word>(words: &mut Vec<W>, key: u32, spill: bool) -> bool {
    let pos = first_of(words, key, 0);
    if let Some(w) = words.get_mut(pos)
        && w.key() == key
    {
        if w.count() < W::COUNT_MAX {
            *w = W::make(key, w.count() + 1);
            return true;
        }
        if !spill {
            return false;
        }
    }
    if words.len() == words.capacity() {
        // Grow by a quarter, not double: these vectors are most of the heap.
        words.reserve_exact((words.len() / 4).max(4));
    }
    words.insert(pos, W::make(key, 1));
    true
}

/// Takes `(key, count)`s that were added before out of `words`.
fn subtract_words<W: Word>(words: &mut Vec<W>, other: impl Iterator<Item = (u32, u32)>) {
    let mut from = 0;
    for (key, count) in other {
        let mut left = count;
        let mut i = first_of(words, key, from);
        while left > 0 {
            let Some(w) = words.get_mut(i).filter(|w| w.key() == key) else {
                break; // not added before: nothing to take
            };
            let take = w.count().min(left);
            *w = W::make(key, w.count() - take);
            left -= take;
            if w.count() == 0 {
                i += 1;
            }
        }
        from = i;
    }
    words.retain(|w| w.count() != 0);
    if words.capacity() > 2 * words.len() + 8 {
        words.shrink_to(words.len() + words.len() / 4);
    }
}

fn pair<W: Word>(w: &W) -> (u32, u32) {
    (w.key(), w.count())
}

/// A sketch's occupied bins as `(bin, count)`, ascending.
pub(crate) enum BinIter<'a> {
    Narrow(std::slice::Iter<'a, u16>),
    Wide(std::slice::Iter<'a, u32>),
}

impl Iterator for BinIter<'_> {
    type Item = (u32, u32);

    fn next(&mut self) -> Option<(u32, u32)> {
        match self {
            BinIter::Narrow(i) => i.next().map(pair),
            BinIter::Wide(i) => i.next().map(pair),
        }
    }
}

impl Bins {
    pub(crate) fn iter(&self) -> BinIter<'_> {
        match self {
            Bins::Narrow(v) => BinIter::Narrow(v.iter()),
            Bins::Wide(v) => BinIter::Wide(v.iter()),
        }
    }

    pub(crate) fn add(&mut self, key: u32) {
        match self {
            Bins::Wide(v) => {
                add_word(v, key, true);
            }
            Bins::Narrow(v) => {
                if !add_word(v, key, false) {
                    let mut wide = Vec::with_capacity(v.len() + 1);
                    wide.extend(v.iter().map(|w| u32::make(w.key(), w.count())));
                    add_word(&mut wide, key, true);
                    *self = Bins::Wide(wide);
                }
            }
        }
    }

    /// Removes `other`'s counts, which were added to `self` before.
    fn subtract(&mut self, other: &Bins) {
        match other {
            Bins::Narrow(o) => self.subtract_pairs(o.iter().map(pair)),
            Bins::Wide(o) => self.subtract_pairs(o.iter().map(pair)),
        }
    }

    fn subtract_pairs(&mut self, pairs: impl Iterator<Item = (u32, u32)>) {
        match self {
            Bins::Narrow(v) => subtract_words(v, pairs),
            Bins::Wide(v) => subtract_words(v, pairs),
        }
    }

    /// The values at 0-based ranks `floor(q (n - 1))` for ascending `qs`, in
    /// one pass over the occupied bins.
    fn quantiles<const K: usize>(&self, n: u64, qs: [f64; K]) -> [Option<f64>; K] {
        match self {
            Bins::Narrow(v) => quantiles(v, n, qs),
            Bins::Wide(v) => quantiles(v, n, qs),
        }
    }

    /// The sum of the values, each within [`RELATIVE_ACCURACY`], so the
    /// sum is too.
    fn sum(&self) -> f64 {
        fn sum<W: Word>(words: &[W]) -> f64 {
            words
                .iter()
                .map(|w| f64::from(w.count()) * latency_value(w.key()))
                .sum()
        }
        match self {
            Bins::Narrow(v) => sum(v),
            Bins::Wide(v) => sum(v),
        }
    }
}

fn quantiles<W: Word, const K: usize>(words: &[W], n: u64, qs: [f64; K]) -> [Option<f64>; K] {
    let last = n.saturating_sub(1) as f64;
    let ranks = qs.map(|q| (q * last).floor() as u64);
    // Keys first, values after: `exp` per word would dominate `stats`.
    let mut keys = [None; K];
    let mut next = 0;
    let mut seen = 0u64;
    for w in words {
        seen += u64::from(w.count());
        while let Some(&rank) = ranks.get(next)
            && seen > rank
        {
            if let Some(slot) = keys.get_mut(next) {
                *slot = Some(w.key());
            }
            next += 1;
        }
        if next == K {
            break;
        }
    }
    keys.map(|k| k.map(latency_value))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Bins {
        fn pairs(&self) -> Vec<(u32, u32)> {
            match self {
                Bins::Narrow(v) => v.iter().map(pair).collect(),
                Bins::Wide(v) => v.iter().map(pair).collect(),
            }
        }
    }

    fn count(b: &Bins, key: u32) -> u64 {
        b.pairs()
            .iter()
            .filter(|(k, _)| *k == key)
            .map(|(_, c)| u64::from(*c))
            .sum()
    }

    fn sorted(b: &Bins) -> bool {
        match b {
            Bins::Narrow(v) => v.is_sorted(),
            Bins::Wide(v) => v.is_sorted(),
        }
    }

    #[test]
    fn ln_gamma_matches_the_accuracy() {
        let gamma = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);
        assert!((gamma.ln() - LN_GAMMA).abs() < 1e-15);
    }

    #[test]
    fn every_value_is_within_the_relative_accuracy_of_its_bin() {
        let mut x = MIN_LATENCY_MS;
        while x < 1e12 {
            let v = latency_value(latency_key(x));
            assert!(
                (v - x).abs() <= RELATIVE_ACCURACY * x * (1.0 + 1e-9),
                "{x} -> {v}"
            );
            x *= 1.003;
        }
        assert_eq!(latency_value(latency_key(0.0)), 0.0);
        assert_eq!(latency_key(f64::NAN), 0);
        assert_eq!(latency_key(f64::INFINITY), KEY_MAX);
    }

    #[test]
    fn narrow_bins_widen_and_full_bins_spill_then_subtract_back() {
        let mut total = Bins::default();
        let mut part = Bins::default();
        for key in [9, 3, 7] {
            total.add(key);
        }
        assert!(matches!(total, Bins::Narrow(ref v) if v.len() == 3));
        let n = u64::from(u32::COUNT_MAX) + 10;
        for _ in 0..n {
            total.add(7);
            part.add(7);
        }
        assert!(matches!(part, Bins::Wide(ref v) if v.len() == 2));
        assert_eq!(count(&total, 7), n + 1);
        assert!(sorted(&total));
        total.add(7);
        assert_eq!(count(&total, 7), n + 2);
        total.subtract(&part);
        assert_eq!(total.pairs(), [(3, 1), (7, 2), (9, 1)]);
        total.subtract(&total.clone());
        assert!(total.pairs().is_empty());
    }

    #[test]
    fn narrow_bins_subtract_from_narrow_bins() {
        let mut total = Bins::default();
        let mut part = Bins::default();
        for key in [5, 5, 1, 4000] {
            total.add(key);
        }
        for key in [5, 4000] {
            total.add(key);
            part.add(key);
        }
        total.subtract(&part);
        assert!(matches!(total, Bins::Narrow(_)));
        assert_eq!(total.pairs(), [(1, 1), (5, 2), (4000, 1)]);
    }
}
