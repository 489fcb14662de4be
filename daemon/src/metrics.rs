//! The daemon's Prometheus metrics, served at `GET /metrics`.
//!
//! One [`Metrics`] per process, shared by reference (`&self` everywhere;
//! every family is thread-safe). Built on `prometheus-client`; encoded in
//! the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]). Every name starts
//! with `canaryd_`; counters end in `_total`.
//!
//! | Family | Type | Labels |
//! |---|---|---|
//! | `canaryd_events_consumed_total` | counter | `topic` |
//! | `canaryd_events_dead_lettered_total` | counter | `reason` |
//! | `canaryd_events_late_total` | counter | |
//! | `canaryd_rule_evaluations_total` | counter | |
//! | `canaryd_alerts` | gauge (1 per alert) | `rule`, the subject's labels, `state` |
//! | `canaryd_actions_total` | counter | `connector`, `outcome` |
//! | `canaryd_connector_duration_seconds` | histogram | `connector` |
//! | `canaryd_consumer_lag` | gauge | `topic`, `partition` |
//! | `canaryd_partition_event_time_seconds` | gauge (Unix time) | `topic`, `partition` |
//! | `canaryd_event_time_seconds` | gauge (Unix time): the least of the partitions' | |
//! | `canaryd_config_last_reload_successful` | gauge (0/1) | |
//! | `canaryd_config_last_reload_success_timestamp_seconds` | gauge | |
//! | `canaryd_config_reload_duration_seconds` | histogram | |
//! | `canaryd_alertmanager_payloads_total` | counter | `result` |
//! | `canaryd_audit_records_total` | counter | `result` (`delivered`, `undeliverable`) |
//! | `canaryd_audit_backpressure_total` | counter | |
//! | `canaryd_partition_state_loads_total` | counter | `result` (`restored`, `rebuilt`, `fresh`) |
//! | `canaryd_outbox_actions` | gauge | |
//! | `canaryd_rollout_reads_pending` | gauge | |
//! | `canaryd_rollout_stage` | gauge (1 = first; one past the last = 100%) | `model` |
//! | `canaryd_rollout_weight` | gauge (percent) | `model` |
//! | `canaryd_rollout_hold_remaining_seconds` | gauge | `model` |
//! | `canaryd_rollout_transitions_total` | counter | `model`, `kind` |
//! | `canaryd_model_requests_per_second` | gauge | subject, `track` |
//! | `canaryd_model_window_requests` | gauge | subject, `track` |
//! | `canaryd_model_error_ratio`, `canaryd_model_success_ratio` | gauge | subject, `track` |
//! | `canaryd_model_latency_seconds` | summary (0.5, 0.95, 0.99; `_sum`, `_count`) | subject, `track` |
//! | `canaryd_model_cost_per_request_usd` | gauge | subject, `track` |
//! | `canaryd_model_demographic_parity_difference` | gauge | subject, `track` |
//! | `canaryd_model_equal_opportunity_difference` | gauge | subject, `track` |
//! | `canaryd_model_disparate_impact_ratio` | gauge | subject, `track` |
//! | `canaryd_model_positive_prediction_ratio` | gauge | subject, `track`, `group` |
//! | `canaryd_model_judge_score` | gauge (0-100) | subject |
//! | `canaryd_model_judge_verdict` | gauge (pass 0, high 1, low -1) | subject, `metric` |
//! | `canaryd_model_judge_effect` | gauge (mean ratio or rate difference) | subject, `metric` |
//! | `canaryd_model_subjects_omitted` | gauge | |
//! | `canaryd_subjects` | gauge | |
//! | `canaryd_subjects_evicted_total` | counter | |
//! | `canaryd_build_info` | gauge (always 1) | `version` |
//!
//! On the hot path (one call per consumed message), take a [`Counter`]
//! handle once with [`Metrics::consumed_counter`] and increment that: it
//! skips the label lookup and its allocation.
//!
//! The `canaryd_model_*` families, `canaryd_alerts` and the rollout gauges
//! describe what the engines hold now. They are not kept up to date on the
//! consume loop: each scrape takes a snapshot and [`Metrics::export`]
//! replaces them with it, so a subject that went stale, was evicted or
//! moved to another replica leaves no series behind. "subject" above means
//! the subject's labels (`model`, and any other `group_by` label); a label
//! that would clash with the family's own gets a `subject_` prefix.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use canaryd_rules::SubjectAnalytics;
use canaryd_rules::analytics::TrackStats;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelKindLabels {
    model: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    connector: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabels {
    connector: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabels {
    topic: String,
    partition: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

/// Label pairs known only at run time: a subject's labels and the family's.
type DynLabels = Vec<(String, String)>;

type FloatGauge = Gauge<f64, AtomicU64>;

/// Connector calls: 1 ms to about 33 s.
fn connector_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Every metric the daemon exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    consumed: Family<TopicLabels, Counter>,
    dead_lettered: Family<ReasonLabels, Counter>,
    late: Counter,
    evaluations: Counter,
    alerts: Family<DynLabels, Gauge>,
    actions: Family<ActionLabels, Counter>,
    connector_duration: HistogramFamily<ConnectorLabels>,
    consumer_lag: Family<PartitionLabels, Gauge>,
    partition_event_time: Family<PartitionLabels, FloatGauge>,
    event_time: Family<DynLabels, FloatGauge>,
    reload_successful: Gauge,
    reload_success_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    reload_duration: Histogram,
    alertmanager_payloads: Family<ResultLabels, Counter>,
    audit_records: Family<ResultLabels, Counter>,
    audit_backpressure: Counter,
    state_loads: Family<ResultLabels, Counter>,
    outbox_actions: Gauge,
    rollout_reads: Gauge,
    rollout_stage: Family<ModelLabels, Gauge>,
    rollout_weight: Family<ModelLabels, Gauge>,
    rollout_hold_remaining: Family<ModelLabels, Gauge>,
    rollout_transitions: Family<ModelKindLabels, Counter>,
    model: ModelFamilies,
    subjects: Gauge,
    evicted: Counter,
    /// The latency summary as of the last export, in the text format.
    latency: std::sync::Mutex<String>,
}

/// The per-subject gauges of what the engines compute, canary and stable.
struct ModelFamilies {
    request_rate: Family<DynLabels, FloatGauge>,
    window_requests: Family<DynLabels, FloatGauge>,
    error_ratio: Family<DynLabels, FloatGauge>,
    success_ratio: Family<DynLabels, FloatGauge>,
    cost: Family<DynLabels, FloatGauge>,
    demographic_parity: Family<DynLabels, FloatGauge>,
    equal_opportunity: Family<DynLabels, FloatGauge>,
    disparate_impact: Family<DynLabels, FloatGauge>,
    positive_rate: Family<DynLabels, FloatGauge>,
    judge_score: Family<DynLabels, FloatGauge>,
    judge_verdict: Family<DynLabels, FloatGauge>,
    judge_effect: Family<DynLabels, FloatGauge>,
    omitted: Gauge,
}

impl ModelFamilies {
    fn register(registry: &mut Registry) -> ModelFamilies {
        let mut family = |name: &str, help: &str| {
            let f = Family::<DynLabels, FloatGauge>::default();
            registry.register(name, help, f.clone());
            f
        };
        let families = ModelFamilies {
            request_rate: family(
                "model_requests_per_second",
                "Requests per second over the analytics window, by subject and track (canary, stable)",
            ),
            window_requests: family(
                "model_window_requests",
                "Requests in the analytics window: the sample behind the other model_ gauges",
            ),
            error_ratio: family(
                "model_error_ratio",
                "Errors / requests over the analytics window",
            ),
            success_ratio: family(
                "model_success_ratio",
                "1 - error ratio over the analytics window",
            ),
            cost: family(
                "model_cost_per_request_usd",
                "Mean cost_usd of the requests in the analytics window that carry one",
            ),
            demographic_parity: family(
                "model_demographic_parity_difference",
                "Max - min positive-prediction rate across fairness groups",
            ),
            equal_opportunity: family(
                "model_equal_opportunity_difference",
                "Max - min true-positive rate across fairness groups",
            ),
            disparate_impact: family(
                "model_disparate_impact_ratio",
                "Min / max positive-prediction rate across fairness groups",
            ),
            positive_rate: family(
                "model_positive_prediction_ratio",
                "Positive predictions / predictions, per fairness group",
            ),
            judge_score: family(
                "model_judge_score",
                "The canary judge's score, 0-100: the share of judged metrics that do not fail",
            ),
            judge_verdict: family(
                "model_judge_verdict",
                "The canary judge's verdict per metric: pass 0, high 1 (canary higher), low -1",
            ),
            judge_effect: family(
                "model_judge_effect",
                "The canary judge's effect size per metric: canary/stable mean (latency, cost) or canary - stable rate",
            ),
            omitted: Gauge::default(),
        };
        registry.register(
            "model_subjects_omitted",
            "Subjects with data left out of the model_ families at the last scrape, over metrics.max_subjects",
            families.omitted.clone(),
        );
        families
    }

    fn clear(&self) {
        for f in [
            &self.request_rate,
            &self.window_requests,
            &self.error_ratio,
            &self.success_ratio,
            &self.cost,
            &self.demographic_parity,
            &self.equal_opportunity,
            &self.disparate_impact,
            &self.positive_rate,
            &self.judge_score,
            &self.judge_verdict,
            &self.judge_effect,
        ] {
            f.clear();
        }
    }

    /// The judge's gauges; a metric without a verdict has no sample.
    fn judge(&self, subject: &DynLabels, judgement: &canaryd_rules::judge::Judgement) {
        if let Some(score) = judgement.score {
            self.judge_score.get_or_create(subject).set(score);
        }
        for name in canaryd_rules::judge::METRICS {
            let Some(m) = judgement.metric(name) else {
                continue;
            };
            let mut l = subject.clone();
            l.push(("metric".to_string(), name.to_string()));
            self.judge_verdict.get_or_create(&l).set(m.verdict.value());
            if m.effect.is_finite() {
                self.judge_effect.get_or_create(&l).set(m.effect);
            }
        }
    }

    /// One track's gauges; a figure the window cannot give yet has no sample.
    fn set(&self, subject: &DynLabels, track: &str, stats: &TrackStats) {
        let labels = |extra: &[(&str, &str)]| {
            let mut l = subject.clone();
            l.push(("track".to_string(), track.to_string()));
            l.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            l
        };
        let base = labels(&[]);
        let put = |family: &Family<DynLabels, FloatGauge>, value: Option<f64>| {
            if let Some(v) = value.filter(|v| v.is_finite()) {
                family.get_or_create(&base).set(v);
            }
        };
        put(&self.request_rate, Some(stats.request_rate));
        put(&self.window_requests, Some(stats.requests as f64));
        put(&self.error_ratio, stats.error_rate);
        put(&self.success_ratio, stats.success_rate);
        put(&self.cost, stats.cost_per_request);
        put(&self.demographic_parity, stats.demographic_parity);
        put(&self.equal_opportunity, stats.equal_opportunity);
        put(&self.disparate_impact, stats.disparate_impact);
    }
}

/// `canaryd_model_latency_seconds`, a summary: prometheus-client has no
/// summary type (and the linters rightly refuse a `quantile` label on a
/// gauge), so it is written out in the text format by hand.
fn latency_summary(subjects: &[SubjectAnalytics]) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "# HELP canaryd_model_latency_seconds Latency over the analytics window: quantiles and sum within 1 %, count exact.\n\
         # TYPE canaryd_model_latency_seconds summary\n",
    );
    for s in subjects {
        let labels = subject_labels(&s.labels);
        for (track, (stats, sum)) in ["canary", "stable"]
            .into_iter()
            .zip(s.tracks.iter().zip(&s.latency_sums))
        {
            let mut base = String::new();
            for (k, v) in &labels {
                let _ = write!(base, "{k}=\"{}\",", escape_label_value(v));
            }
            let _ = write!(base, "track=\"{track}\"");
            for (quantile, ms) in [
                ("0.5", stats.p50_latency),
                ("0.95", stats.p95_latency),
                ("0.99", stats.p99_latency),
            ] {
                if let Some(ms) = ms.filter(|v| v.is_finite()) {
                    let _ = writeln!(
                        out,
                        "canaryd_model_latency_seconds{{{base},quantile=\"{quantile}\"}} {}",
                        ms / 1000.0
                    );
                }
            }
            if let Some(sum) = sum.filter(|v| v.is_finite()) {
                let _ = writeln!(
                    out,
                    "canaryd_model_latency_seconds_sum{{{base}}} {}",
                    sum / 1000.0
                );
                let _ = writeln!(
                    out,
                    "canaryd_model_latency_seconds_count{{{base}}} {}",
                    stats.requests
                );
            }
        }
    }
    out
}

/// A label value in the text format: backslash, quote and newline escaped.
fn escape_label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Label names the families themselves use: a subject label of the same
/// name is exported as `subject_<name>`.
const RESERVED_LABELS: [&str; 6] = ["rule", "state", "track", "quantile", "group", "metric"];

/// A subject's labels as Prometheus label pairs: names made valid
/// (`[a-zA-Z_][a-zA-Z0-9_]*`, never `__`-prefixed) and kept clear of the
/// families' own.
pub fn subject_labels(subject: &BTreeMap<String, String>) -> DynLabels {
    subject
        .iter()
        .map(|(k, v)| {
            let mut name: String = k
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                name.insert(0, '_');
            }
            if name.starts_with("__") || RESERVED_LABELS.contains(&name.as_str()) {
                name.insert_str(0, "subject_");
            }
            (name, v.clone())
        })
        .collect()
}

/// One active alert, as `canaryd_alerts` exports it.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertSeries {
    /// The rule's name.
    pub rule: String,
    /// The subject's labels.
    pub subject: BTreeMap<String, String>,
    /// `pending` or `firing`.
    pub state: &'static str,
}

/// One rollout, as the rollout gauges export it.
#[derive(Clone, Debug, PartialEq)]
pub struct RolloutSeries {
    /// The model.
    pub model: String,
    /// 1 is the plan's first stage; one past its last is 100 %.
    pub stage: usize,
    /// The canary's weight, percent.
    pub weight: u8,
    /// Clean event time the stage (or the soak) still needs.
    pub hold_remaining: Duration,
}

/// What a scrape exports of the engines: taken from a snapshot.
#[derive(Clone, Debug, Default)]
pub struct Exported<'a> {
    /// Subjects with data, up to the cap.
    pub subjects: &'a [SubjectAnalytics],
    /// Subjects with data left out by the cap.
    pub omitted: usize,
    /// Active alerts.
    pub alerts: &'a [AlertSeries],
    /// Rollouts this replica carries.
    pub rollouts: &'a [RolloutSeries],
    /// Subjects the engines hold.
    pub held: usize,
    /// Each assigned partition's event time, where it has one.
    pub event_times: &'a [PartitionTime],
}

/// A partition's event time (its watermark).
#[derive(Clone, Debug, PartialEq)]
pub struct PartitionTime {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The watermark.
    pub at: canaryd_rules::Timestamp,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every family. `canaryd_build_info{version}` is set to 1,
    /// and every `canaryd_alertmanager_payloads_total{result}` starts at 0
    /// so that `rate()` sees the first one.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("canaryd");
        let consumed = Family::<TopicLabels, Counter>::default();
        registry.register(
            "events_consumed",
            "Messages consumed, by topic",
            consumed.clone(),
        );
        let dead_lettered = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "events_dead_lettered",
            "Messages sent to the dead-letter topic, by reason",
            dead_lettered.clone(),
        );
        let late = Counter::default();
        registry.register(
            "events_late",
            "Events dropped as older than the watermark minus the allowed lateness",
            late.clone(),
        );
        let evaluations = Counter::default();
        registry.register(
            "rule_evaluations",
            "Rule condition evaluations",
            evaluations.clone(),
        );
        let alerts = Family::<DynLabels, Gauge>::default();
        registry.register(
            "alerts",
            "Active alerts, 1 each, by rule, subject and state (pending, firing)",
            alerts.clone(),
        );
        let actions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "actions",
            "Action outcomes, by connector and outcome",
            actions.clone(),
        );
        let connector_duration: HistogramFamily<ConnectorLabels> =
            Family::new_with_constructor(connector_histogram);
        registry.register(
            "connector_duration_seconds",
            "Time a connector took to carry out an action",
            connector_duration.clone(),
        );
        let consumer_lag = Family::<PartitionLabels, Gauge>::default();
        registry.register(
            "consumer_lag",
            "Messages behind the end of each assigned partition",
            consumer_lag.clone(),
        );
        let partition_event_time = Family::<PartitionLabels, FloatGauge>::default();
        registry.register(
            "partition_event_time_seconds",
            "Event time each assigned partition has reached (its watermark), as Unix time",
            partition_event_time.clone(),
        );
        // A family, so that a replica owning nothing exports no sample.
        let event_time = Family::<DynLabels, FloatGauge>::default();
        registry.register(
            "event_time_seconds",
            "Event time this replica has reached: the least of its partitions' (an idle one moves with the wall clock), as Unix time",
            event_time.clone(),
        );
        let reload_successful = Gauge::default();
        registry.register(
            "config_last_reload_successful",
            "Whether the last configuration load succeeded (1) or failed (0)",
            reload_successful.clone(),
        );
        let reload_success_timestamp = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load",
            reload_success_timestamp.clone(),
        );
        let reload_duration = Histogram::new(exponential_buckets(0.001, 4.0, 9));
        registry.register(
            "config_reload_duration_seconds",
            "Time taken to load the configuration and its rules",
            reload_duration.clone(),
        );
        let alertmanager_payloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "alertmanager_payloads",
            "Alertmanager webhook payloads received, by result",
            alertmanager_payloads.clone(),
        );
        let audit_records = Family::<ResultLabels, Counter>::default();
        registry.register(
            "audit_records",
            "Audit records by result: delivered to the audit topic, or undeliverable (logged in full instead)",
            audit_records.clone(),
        );
        for result in ["delivered", "undeliverable"] {
            audit_records.get_or_create_owned(&ResultLabels {
                result: result.to_string(),
            });
        }
        let audit_backpressure = Counter::default();
        registry.register(
            "audit_backpressure",
            "Times a full audit queue made evaluation wait for the writer",
            audit_backpressure.clone(),
        );
        let state_loads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "partition_state_loads",
            "Assigned partitions by how their state was loaded: restored from the changelog, rebuilt from the input (changelog lost), or fresh",
            state_loads.clone(),
        );
        for result in STATE_LOADS {
            state_loads.get_or_create_owned(&ResultLabels {
                result: result.to_string(),
            });
        }
        let outbox_actions = Gauge::default();
        registry.register(
            "outbox_actions",
            "Actions decided and not yet finished by their receiver, kept in the changelog's outbox",
            outbox_actions.clone(),
        );
        let rollout_reads = Gauge::default();
        registry.register(
            "rollout_reads_pending",
            "Models whose rollout waits for its state to be read back from the traffic object (a new owner with no changelog state)",
            rollout_reads.clone(),
        );
        for result in PayloadResult::ALL {
            alertmanager_payloads.get_or_create_owned(&ResultLabels {
                result: result.as_str().to_string(),
            });
        }
        let rollout_stage = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "rollout_stage",
            "The stage a model's rollout is in: 1 is the first, one past the plan's last is 100%",
            rollout_stage.clone(),
        );
        let rollout_weight = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "rollout_weight",
            "The canary's traffic weight as its rollout set it, in percent",
            rollout_weight.clone(),
        );
        let rollout_hold_remaining = Family::<ModelLabels, Gauge>::default();
        registry.register(
            "rollout_hold_remaining_seconds",
            "Clean event time the current stage (or the soak) still needs",
            rollout_hold_remaining.clone(),
        );
        // By model too, as the rollouts' other series: one series per
        // model and kind it went through, created with its first change.
        let rollout_transitions = Family::<ModelKindLabels, Counter>::default();
        registry.register(
            "rollout_transitions",
            "Rollout changes, by model and kind: stage, paused, resumed, stepped_back, rolled_back, promoted, complete",
            rollout_transitions.clone(),
        );
        let build_info = Family::<VersionLabels, Gauge>::default();
        registry.register(
            "build_info",
            "Always 1; the version of the running canaryd",
            build_info.clone(),
        );
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        let model = ModelFamilies::register(&mut registry);
        let subjects = Gauge::default();
        registry.register(
            "subjects",
            "Subjects the engines hold state for (as of the last scrape)",
            subjects.clone(),
        );
        let evicted = Counter::default();
        registry.register(
            "subjects_evicted",
            "Subjects forgotten after engine.evict_after without events; their alerts ended quietly",
            evicted.clone(),
        );
        Metrics {
            registry,
            consumed,
            dead_lettered,
            late,
            evaluations,
            alerts,
            actions,
            connector_duration,
            consumer_lag,
            partition_event_time,
            event_time,
            reload_successful,
            reload_success_timestamp,
            reload_duration,
            alertmanager_payloads,
            audit_records,
            audit_backpressure,
            state_loads,
            outbox_actions,
            rollout_reads,
            rollout_stage,
            rollout_weight,
            rollout_hold_remaining,
            rollout_transitions,
            model,
            subjects,
            evicted,
            latency: std::sync::Mutex::new(latency_summary(&[])),
        }
    }

    /// Everything, in the Prometheus text format 0.0.4 ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            // Writing to a String cannot fail; a label that cannot be encoded would.
            tracing::error!(error = %e, "metrics could not be encoded");
        }
        out.push_str(&self.latency.lock().unwrap_or_else(|p| p.into_inner()));
        out
    }

    /// One message consumed from `topic`.
    pub fn inc_consumed(&self, topic: &str) {
        self.consumed_counter(topic).inc();
    }

    /// The `events_consumed_total` counter of `topic`, to keep and
    /// increment on the hot path without a lookup.
    pub fn consumed_counter(&self, topic: &str) -> Counter {
        self.consumed.get_or_create_owned(&TopicLabels {
            topic: topic.to_string(),
        })
    }

    /// One message dead-lettered for `reason` (`not_json`, `bad_time`, …).
    pub fn inc_dead_lettered(&self, reason: &str) {
        self.dead_lettered
            .get_or_create(&ReasonLabels {
                reason: reason.to_string(),
            })
            .inc();
    }

    /// One event dropped as late.
    pub fn inc_late(&self) {
        self.late.inc();
    }

    /// `n` events dropped as late.
    pub fn add_late(&self, n: u64) {
        self.late.inc_by(n);
    }

    /// `n` rule evaluations done (the engine's `EngineStats::evaluations` delta).
    pub fn add_rule_evaluations(&self, n: u64) {
        self.evaluations.inc_by(n);
    }

    /// Replaces what describes the engines now (the `model_` families,
    /// `canaryd_alerts` and the rollout gauges) with `view`.
    pub fn export(&self, view: &Exported<'_>) {
        *self.latency.lock().unwrap_or_else(|p| p.into_inner()) = latency_summary(view.subjects);
        self.model.clear();
        for s in view.subjects {
            let labels = subject_labels(&s.labels);
            for (track, (stats, groups)) in ["canary", "stable"]
                .into_iter()
                .zip(s.tracks.iter().zip(&s.groups))
            {
                self.model.set(&labels, track, stats);
                for g in groups {
                    let mut l = labels.clone();
                    l.push(("track".to_string(), track.to_string()));
                    l.push(("group".to_string(), g.group.clone()));
                    self.model
                        .positive_rate
                        .get_or_create(&l)
                        .set(g.positive_rate);
                }
            }
            self.model.judge(&labels, &s.judgement);
        }
        self.model
            .omitted
            .set(i64::try_from(view.omitted).unwrap_or(i64::MAX));
        self.subjects
            .set(i64::try_from(view.held).unwrap_or(i64::MAX));
        self.alerts.clear();
        for a in view.alerts {
            let mut l = vec![("rule".to_string(), a.rule.clone())];
            l.extend(subject_labels(&a.subject));
            l.push(("state".to_string(), a.state.to_string()));
            self.alerts.get_or_create(&l).set(1);
        }
        for f in [
            &self.rollout_stage,
            &self.rollout_weight,
            &self.rollout_hold_remaining,
        ] {
            f.clear();
        }
        self.partition_event_time.clear();
        self.event_time.clear();
        for t in view.event_times {
            self.partition_event_time
                .get_or_create(&PartitionLabels {
                    topic: t.topic.clone(),
                    partition: t.partition.to_string(),
                })
                .set(t.at.millis() as f64 / 1000.0);
        }
        if let Some(least) = view.event_times.iter().map(|t| t.at).min() {
            self.event_time
                .get_or_create(&Vec::new())
                .set(least.millis() as f64 / 1000.0);
        }
        for r in view.rollouts {
            let labels = ModelLabels {
                model: r.model.clone(),
            };
            self.rollout_stage
                .get_or_create(&labels)
                .set(i64::try_from(r.stage).unwrap_or(i64::MAX));
            self.rollout_weight
                .get_or_create(&labels)
                .set(i64::from(r.weight));
            self.rollout_hold_remaining
                .get_or_create(&labels)
                .set(i64::try_from(r.hold_remaining.as_secs()).unwrap_or(i64::MAX));
        }
    }

    /// Declares the series of what is known at start, at 0, so that
    /// dashboards and `rate()` see them before the first increment: every
    /// action outcome and call duration of each receiver, and every
    /// dead-letter reason.
    pub fn declare<'a>(&self, receivers: impl IntoIterator<Item = &'a str>) {
        for receiver in receivers {
            for outcome in canaryd_connectors::OutcomeKind::ALL {
                self.actions.get_or_create_owned(&ActionLabels {
                    connector: receiver.to_string(),
                    outcome: outcome.as_str().to_string(),
                });
            }
            self.connector_duration
                .get_or_create_owned(&ConnectorLabels {
                    connector: receiver.to_string(),
                });
        }
        for reason in DEAD_LETTER_REASONS {
            self.dead_lettered.get_or_create_owned(&ReasonLabels {
                reason: reason.to_string(),
            });
        }
    }

    /// One action outcome (`accepted`, `succeeded`, `failed`, …) from `connector`.
    pub fn inc_action(&self, connector: &str, outcome: &str) {
        self.actions
            .get_or_create(&ActionLabels {
                connector: connector.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// One call to `connector` took `elapsed`.
    pub fn observe_connector_duration(&self, connector: &str, elapsed: Duration) {
        self.connector_duration
            .get_or_create(&ConnectorLabels {
                connector: connector.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// `lag` messages wait in `topic`/`partition`.
    pub fn set_consumer_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .get_or_create(&PartitionLabels {
                topic: topic.to_string(),
                partition: partition.to_string(),
            })
            .set(lag);
    }

    /// Forgets a partition's lag, once it is revoked.
    pub fn remove_consumer_lag(&self, topic: &str, partition: i32) {
        self.consumer_lag.remove(&PartitionLabels {
            topic: topic.to_string(),
            partition: partition.to_string(),
        });
    }

    /// A configuration load (at start or on reload) finished at `at`,
    /// successfully or not, after `took`.
    pub fn record_reload(&self, successful: bool, took: Duration, at: SystemTime) {
        self.reload_successful.set(i64::from(successful));
        self.reload_duration.observe(took.as_secs_f64());
        if successful {
            let secs = at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            self.reload_success_timestamp.set(secs);
        }
    }

    /// The configuration the daemon started with loaded at `at`: it counts
    /// as a successful load, as in Prometheus, so a fresh daemon does not
    /// look like one whose reload failed.
    pub fn record_initial_load(&self, at: SystemTime) {
        self.reload_successful.set(1);
        let secs = at
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.reload_success_timestamp.set(secs);
    }

    /// One Alertmanager webhook payload ended with `result`.
    pub fn inc_alertmanager_payload(&self, result: PayloadResult) {
        self.alertmanager_payloads
            .get_or_create(&ResultLabels {
                result: result.as_str().to_string(),
            })
            .inc();
    }

    /// Counts an audit record delivered (or given up on and logged).
    pub fn inc_audit_record(&self, delivered: bool) {
        let result = if delivered {
            "delivered"
        } else {
            "undeliverable"
        };
        self.audit_records
            .get_or_create(&ResultLabels {
                result: result.to_string(),
            })
            .inc();
    }

    /// Counts a publisher that had to wait for a full audit queue.
    pub fn inc_audit_backpressure(&self) {
        self.audit_backpressure.inc();
    }

    /// Counts an assigned partition's state loaded as `how`: one of
    /// `restored`, `rebuilt` or `fresh`.
    pub fn inc_state_load(&self, how: &'static str) {
        debug_assert!(STATE_LOADS.contains(&how));
        self.state_loads
            .get_or_create(&ResultLabels {
                result: how.to_string(),
            })
            .inc();
    }

    /// Sets how many actions the outbox holds unfinished.
    pub fn set_outbox_actions(&self, n: usize) {
        self.outbox_actions
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Sets how many traffic objects are being read back.
    pub fn set_rollout_reads(&self, n: usize) {
        self.rollout_reads.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One subject evicted.
    pub fn inc_evicted(&self) {
        self.evicted.inc();
    }

    /// A change of `model`'s rollout, of `kind` (`stage`, `paused`, …).
    pub fn inc_rollout_transition(&self, model: &str, kind: &str) {
        self.rollout_transitions
            .get_or_create_owned(&ModelKindLabels {
                model: model.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }
}

/// The `reason` label values of `canaryd_events_dead_lettered_total`:
/// every reason a message is dead-lettered for: the decoder's kinds, a
/// message without a payload, and an event stamped too far ahead.
pub const DEAD_LETTER_REASONS: [&str; 7] = [
    "not_json",
    "missing_field",
    "wrong_type",
    "bad_time",
    "bad_value",
    "missing_payload",
    "future_time",
];

/// The `result` label values of `canaryd_partition_state_loads_total`.
const STATE_LOADS: [&str; 3] = ["restored", "rebuilt", "fresh"];

/// How one Alertmanager webhook payload ended: the `result` label of
/// `canaryd_alertmanager_payloads_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PayloadResult {
    /// Taken in (200): at least one alert was new and the backend accepted it.
    Accepted,
    /// Every alert in it had been seen already (200).
    Duplicate,
    /// Missing or wrong credentials (401).
    Unauthorized,
    /// Larger than `body_limit` (413).
    TooLarge,
    /// Not `application/json` (415).
    BadContentType,
    /// Not a valid payload, or an invalid action label (400).
    Malformed,
    /// The backend refused it (503); Alertmanager retries.
    Unavailable,
}

impl PayloadResult {
    /// Every result.
    pub const ALL: [PayloadResult; 7] = [
        PayloadResult::Accepted,
        PayloadResult::Duplicate,
        PayloadResult::Unauthorized,
        PayloadResult::TooLarge,
        PayloadResult::BadContentType,
        PayloadResult::Malformed,
        PayloadResult::Unavailable,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            PayloadResult::Accepted => "accepted",
            PayloadResult::Duplicate => "duplicate",
            PayloadResult::Unauthorized => "unauthorized",
            PayloadResult::TooLarge => "too_large",
            PayloadResult::BadContentType => "bad_content_type",
            PayloadResult::Malformed => "malformed",
            PayloadResult::Unavailable => "unavailable",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `series ` (name and labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    }

    #[test]
    fn every_family_is_encoded_with_its_labels() {
        let m = Metrics::new();
        m.inc_consumed("canary-events");
        m.consumed_counter("canary-events").inc_by(2);
        m.inc_dead_lettered("not_json");
        m.inc_late();
        m.add_late(2);
        m.add_rule_evaluations(7);
        m.export(&Exported {
            alerts: &[AlertSeries {
                rule: "Canary Error Rate High".into(),
                subject: [("model".to_string(), "summarizer".to_string())].into(),
                state: "firing",
            }],
            ..Exported::default()
        });
        m.inc_action("kube", "succeeded");
        m.observe_connector_duration("kube", Duration::from_millis(3));
        m.set_consumer_lag("canary-events", 3, 42);
        m.record_reload(
            true,
            Duration::from_millis(20),
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        );
        m.inc_alertmanager_payload(PayloadResult::Duplicate);
        let text = m.encode();
        let expect = [
            (
                r#"canaryd_events_consumed_total{topic="canary-events"}"#,
                3.0,
            ),
            (
                r#"canaryd_events_dead_lettered_total{reason="not_json"}"#,
                1.0,
            ),
            ("canaryd_events_late_total", 3.0),
            ("canaryd_rule_evaluations_total", 7.0),
            (
                r#"canaryd_alerts{rule="Canary Error Rate High",model="summarizer",state="firing"}"#,
                1.0,
            ),
            (
                r#"canaryd_actions_total{connector="kube",outcome="succeeded"}"#,
                1.0,
            ),
            (
                r#"canaryd_connector_duration_seconds_count{connector="kube"}"#,
                1.0,
            ),
            (
                r#"canaryd_consumer_lag{topic="canary-events",partition="3"}"#,
                42.0,
            ),
            ("canaryd_config_last_reload_successful", 1.0),
            (
                "canaryd_config_last_reload_success_timestamp_seconds",
                1_700_000_000.0,
            ),
            ("canaryd_config_reload_duration_seconds_count", 1.0),
            (
                r#"canaryd_alertmanager_payloads_total{result="duplicate"}"#,
                1.0,
            ),
            (
                r#"canaryd_alertmanager_payloads_total{result="accepted"}"#,
                0.0,
            ),
            (
                &format!(
                    r#"canaryd_build_info{{version="{}"}}"#,
                    env!("CARGO_PKG_VERSION")
                ),
                1.0,
            ),
        ];
        for (series, value) in expect {
            assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
        }
        assert!(text.contains("# TYPE canaryd_connector_duration_seconds histogram"));
        assert!(text.contains("# TYPE canaryd_events_consumed_total counter"));
        assert!(
            !text.contains("# EOF"),
            "Prometheus 0.0.4 text, not OpenMetrics"
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_last_success_time() {
        let m = Metrics::new();
        let at = UNIX_EPOCH + Duration::from_secs(100);
        m.record_reload(true, Duration::ZERO, at);
        m.record_reload(false, Duration::ZERO, at + Duration::from_secs(50));
        let text = m.encode();
        assert_eq!(
            sample(&text, "canaryd_config_last_reload_successful"),
            Some(0.0)
        );
        assert_eq!(
            sample(
                &text,
                "canaryd_config_last_reload_success_timestamp_seconds"
            ),
            Some(100.0)
        );
        assert_eq!(
            sample(&text, "canaryd_config_reload_duration_seconds_count"),
            Some(2.0)
        );
    }

    #[test]
    fn the_initial_load_counts_as_successful_and_durability_families_start_at_zero() {
        let m = Metrics::new();
        let text = m.encode();
        assert_eq!(
            sample(&text, "canaryd_config_last_reload_successful"),
            Some(0.0)
        );
        for how in STATE_LOADS {
            let series = format!(r#"canaryd_partition_state_loads_total{{result="{how}"}}"#);
            assert_eq!(sample(&text, &series), Some(0.0), "{series}");
        }
        assert_eq!(sample(&text, "canaryd_outbox_actions"), Some(0.0));
        assert_eq!(sample(&text, "canaryd_rollout_reads_pending"), Some(0.0));
        m.record_initial_load(UNIX_EPOCH + Duration::from_secs(7));
        m.inc_state_load("rebuilt");
        m.set_outbox_actions(3);
        let text = m.encode();
        assert_eq!(
            sample(&text, "canaryd_config_last_reload_successful"),
            Some(1.0)
        );
        assert_eq!(
            sample(
                &text,
                "canaryd_config_last_reload_success_timestamp_seconds"
            ),
            Some(7.0)
        );
        assert_eq!(
            sample(&text, "canaryd_config_reload_duration_seconds_count"),
            Some(0.0),
            "the initial load is not a reload's duration"
        );
        assert_eq!(
            sample(
                &text,
                r#"canaryd_partition_state_loads_total{result="rebuilt"}"#
            ),
            Some(1.0)
        );
        assert_eq!(sample(&text, "canaryd_outbox_actions"), Some(3.0));
    }

    fn subject(labels: &[(&str, &str)], stats: TrackStats) -> SubjectAnalytics {
        let labels: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let group = |name: &str, rate: f64| canaryd_rules::analytics::GroupRate {
            group: name.into(),
            positive_rate: rate,
            predictions: 100,
        };
        SubjectAnalytics {
            labels: std::sync::Arc::new(labels),
            tracks: [stats.clone(), TrackStats::default()],
            groups: [vec![group("a", 0.4), group("b", 0.5)], Vec::new()],
            latency_sums: [Some(200.0 * 130.0), None],
            judgement: canaryd_rules::judge::Judgement {
                score: Some(75.0),
                latency: Some(canaryd_rules::judge::MetricJudgement {
                    verdict: canaryd_rules::judge::Verdict::High,
                    fails: true,
                    effect: 1.5,
                    evidence: 2.5e4,
                    needed: 400.0,
                    samples: [200, 300],
                    group: None,
                }),
                ..Default::default()
            },
            stale: false,
        }
    }

    #[test]
    fn a_subjects_figures_are_exported_per_track_in_base_units() {
        let m = Metrics::new();
        let stats = TrackStats {
            requests: 200,
            request_rate: 2.5,
            error_rate: Some(0.02),
            success_rate: Some(0.98),
            p50_latency: Some(120.0),
            p95_latency: Some(450.0),
            p99_latency: None,
            cost_per_request: Some(0.003),
            disparate_impact: Some(0.8),
            ..TrackStats::default()
        };
        m.export(&Exported {
            subjects: &[subject(&[("model", "fraud"), ("track", "x")], stats)],
            omitted: 3,
            ..Exported::default()
        });
        let text = m.encode();
        let s =
            |labels: &str| format!(r#"{{model="fraud",subject_track="x",track="canary"{labels}}}"#);
        for (series, value) in [
            (format!("canaryd_model_requests_per_second{}", s("")), 2.5),
            (format!("canaryd_model_window_requests{}", s("")), 200.0),
            (format!("canaryd_model_error_ratio{}", s("")), 0.02),
            (format!("canaryd_model_success_ratio{}", s("")), 0.98),
            (
                format!("canaryd_model_latency_seconds{}", s(r#",quantile="0.5""#)),
                0.12,
            ),
            (
                format!("canaryd_model_latency_seconds{}", s(r#",quantile="0.95""#)),
                0.45,
            ),
            (
                format!("canaryd_model_cost_per_request_usd{}", s("")),
                0.003,
            ),
            (
                format!("canaryd_model_disparate_impact_ratio{}", s("")),
                0.8,
            ),
            (
                format!(
                    "canaryd_model_positive_prediction_ratio{}",
                    s(r#",group="b""#)
                ),
                0.5,
            ),
            ("canaryd_model_subjects_omitted".to_string(), 3.0),
            (
                r#"canaryd_model_judge_score{model="fraud",subject_track="x"}"#.to_string(),
                75.0,
            ),
            (
                r#"canaryd_model_judge_verdict{model="fraud",subject_track="x",metric="latency"}"#
                    .to_string(),
                1.0,
            ),
            (
                r#"canaryd_model_judge_effect{model="fraud",subject_track="x",metric="latency"}"#
                    .to_string(),
                1.5,
            ),
            (format!("canaryd_model_latency_seconds_sum{}", s("")), 26.0),
            (
                format!("canaryd_model_latency_seconds_count{}", s("")),
                200.0,
            ),
        ] {
            assert_eq!(sample(&text, &series), Some(value), "{series} in\n{text}");
        }
        // No figure, no sample: a missing p99 is not exported as 0.
        assert!(!text.contains(r#"quantile="0.99""#), "{text}");
        assert!(text.contains("# TYPE canaryd_model_latency_seconds summary\n"));
        // The stable track had no requests: its rate is there, its ratios are not.
        assert!(text.contains(
            r#"canaryd_model_window_requests{model="fraud",subject_track="x",track="stable"} 0"#
        ));
        assert!(!text.contains(
            r#"canaryd_model_error_ratio{model="fraud",subject_track="x",track="stable"}"#
        ));
    }

    #[test]
    fn each_export_replaces_the_last_so_gone_subjects_leave_no_series() {
        let m = Metrics::new();
        let stats = TrackStats {
            requests: 1,
            ..TrackStats::default()
        };
        m.export(&Exported {
            subjects: &[subject(&[("model", "old")], stats.clone())],
            alerts: &[AlertSeries {
                rule: "gone".into(),
                subject: [("model".to_string(), "old".to_string())].into(),
                state: "pending",
            }],
            rollouts: &[RolloutSeries {
                model: "old".into(),
                stage: 2,
                weight: 10,
                hold_remaining: Duration::from_secs(60),
            }],
            omitted: 0,
            held: 1,
            event_times: &[PartitionTime {
                topic: "events".into(),
                partition: 3,
                at: canaryd_rules::Timestamp(1_772_366_400_500),
            }],
        });
        assert!(m.encode().contains(r#"model="old""#));
        m.export(&Exported {
            subjects: &[subject(&[("model", "new")], stats)],
            ..Exported::default()
        });
        let text = m.encode();
        assert!(!text.contains(r#"model="old""#), "{text}");
        assert!(!text.contains(r#"rule="gone""#), "{text}");
        assert!(text.contains(r#"model="new""#), "{text}");
        // A revoked partition's event time goes with it.
        assert!(
            !text.contains("canaryd_partition_event_time_seconds{"),
            "{text}"
        );
        assert!(!text.contains("\ncanaryd_event_time_seconds "), "{text}");
    }

    #[test]
    fn event_time_is_exported_per_partition_and_as_their_least() {
        let m = Metrics::new();
        let at = |partition: i32, ms: i64| PartitionTime {
            topic: "events".into(),
            partition,
            at: canaryd_rules::Timestamp(ms),
        };
        m.export(&Exported {
            event_times: &[at(0, 1_772_366_460_250), at(1, 1_772_366_400_500)],
            ..Exported::default()
        });
        let text = m.encode();
        for line in [
            r#"canaryd_partition_event_time_seconds{topic="events",partition="0"} 1772366460.25"#,
            r#"canaryd_partition_event_time_seconds{topic="events",partition="1"} 1772366400.5"#,
            "canaryd_event_time_seconds 1772366400.5",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
    }

    #[test]
    fn subject_labels_are_made_valid_prometheus_label_names() {
        let labels: BTreeMap<String, String> = [
            ("model", "m"),
            ("k8s.cluster-name", "a"),
            ("9lives", "b"),
            ("__meta", "c"),
            ("rule", "d"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let names: Vec<String> = subject_labels(&labels)
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert_eq!(
            names,
            [
                "_9lives",
                "subject___meta",
                "k8s_cluster_name",
                "model",
                "subject_rule"
            ]
        );
    }

    #[test]
    fn known_label_values_are_declared_at_zero() {
        let m = Metrics::new();
        m.declare(["kube", "slack"]);
        let text = m.encode();
        for series in [
            r#"canaryd_actions_total{connector="kube",outcome="succeeded"}"#,
            r#"canaryd_actions_total{connector="slack",outcome="dead_lettered"}"#,
            r#"canaryd_connector_duration_seconds_count{connector="kube"}"#,
            r#"canaryd_events_dead_lettered_total{reason="not_json"}"#,
            r#"canaryd_events_dead_lettered_total{reason="future_time"}"#,
        ] {
            assert_eq!(sample(&text, series), Some(0.0), "{series} in\n{text}");
        }
    }

    #[test]
    fn rollout_transitions_are_counted_by_model_and_kind() {
        let m = Metrics::new();
        m.inc_rollout_transition("fraud", "stage");
        m.inc_rollout_transition("fraud", "stage");
        m.inc_rollout_transition("ranker", "rolled_back");
        let text = m.encode();
        for (series, n) in [
            (
                r#"canaryd_rollout_transitions_total{model="fraud",kind="stage"}"#,
                2.0,
            ),
            (
                r#"canaryd_rollout_transitions_total{model="ranker",kind="rolled_back"}"#,
                1.0,
            ),
        ] {
            assert_eq!(sample(&text, series), Some(n), "{series} in\n{text}");
        }
        assert_eq!(
            sample(
                &text,
                r#"canaryd_rollout_transitions_total{model="fraud",kind="rolled_back"}"#
            ),
            None
        );
    }

    #[test]
    fn cleared_and_removed_series_disappear() {
        let m = Metrics::new();
        m.set_consumer_lag("t", 0, 5);
        m.remove_consumer_lag("t", 0);
        let text = m.encode();
        assert!(!text.contains(r#"topic="t""#), "{text}");
    }
}
