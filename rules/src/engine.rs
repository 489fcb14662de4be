//! The evaluation engine: turns events into alert transitions, in event time.
//!
//! Variables are interned into slots at build time. Each subject keeps one
//! sample per slot and one [`AlertState`] per rule, and an event re-evaluates
//! only the rules that read what it changed. Durations complete on timers
//! driven by the watermark, so a condition that keeps holding fires even
//! when no further event arrives for that subject.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use hashbrown::Equivalent;
use serde::{Deserialize, Serialize};

use crate::analytics::{AnalyticsConfig, TrackWindow};
use crate::event::{AlertEvent, AlertStatus, Event, InferenceEvent, MetricEvent, Track};
use crate::judge::Experiment;
use crate::rule::{Rule, RuleSet};
use crate::state::{AlertState, Observation, Phase, step};
use crate::time::{Span, Timestamp};
use crate::vocabulary::{JUDGE_VARIABLES, TRACK_METRICS, TRACKS, VarKind, Vocabulary};

pub mod checkpoint;

/// The labels that identify a subject, e.g. `{model: summarizer}`.
pub type Labels = Arc<BTreeMap<String, String>>;

/// Engine settings that are not part of the rules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// A sample older than this (in event time) counts as missing.
    pub stale_after: Span,
    /// Events older than the watermark by more than this are dropped as late.
    pub allowed_lateness: Span,
    /// A subject with no events for this long (in event time) is forgotten:
    /// memory stays bounded however many short-lived models come and go.
    /// Its alerts end quietly, with no resolution notice. Longer than
    /// `stale_after`.
    pub evict_after: Span,
    /// Windows over inference events; set from the config's `analytics:`.
    #[serde(skip)]
    pub analytics: AnalyticsConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            stale_after: Span::seconds(600),
            allowed_lateness: Span::seconds(30),
            evict_after: Span::seconds(3600),
            analytics: AnalyticsConfig::default(),
        }
    }
}

/// Something the engine wants the outside world to know.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// An alert changed phase.
    Transition(Transition),
    /// A subject has had no fresh data for `stale_after`.
    Stale {
        /// When it was noticed.
        ts: Timestamp,
        /// Which subject.
        subject: Labels,
    },
    /// A subject had no events for `evict_after` and is forgotten; its
    /// alerts ended without a resolution.
    Evicted {
        /// When it was noticed.
        ts: Timestamp,
        /// Which subject.
        subject: Labels,
        /// Its alerts that were pending or firing.
        alerts: Vec<EndedAlert>,
    },
}

/// An alert that ended with its subject's eviction, without a resolution.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EndedAlert {
    /// The rule's name.
    pub rule: String,
    /// Its phase when it ended.
    pub state: Phase,
}

/// An alert's change of phase, with the evidence behind it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition {
    /// Event time of the change.
    pub ts: Timestamp,
    /// Index of the rule in the engine's [`RuleSet`].
    pub rule: usize,
    /// The subject.
    pub subject: Labels,
    /// Phase before.
    pub from: Phase,
    /// Phase after.
    pub to: Phase,
    /// When this firing episode started; with rule and subject it is the
    /// idempotency key of any action taken.
    pub active_since: Option<Timestamp>,
    /// The condition's variables at the time, by name. Missing ones are absent.
    pub values: BTreeMap<String, f64>,
}

/// What a reload changed, by rule name.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReloadReport {
    /// New rules.
    pub added: Vec<String>,
    /// Rules whose condition, duration or grouping changed: they restart.
    pub changed: Vec<String>,
    /// Rules no longer there.
    pub removed: Vec<String>,
    /// Unchanged rules: their state carried over.
    pub kept: Vec<String>,
    /// Active alerts that ended with the reload (removed or changed rules).
    pub dropped: Vec<(String, Labels, Phase)>,
}

/// What happened to one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingested {
    /// It updated at least one subject.
    Applied,
    /// It was older than the watermark minus the allowed lateness.
    Late,
    /// No rule reads the variable it sets.
    Unused,
    /// It lacked a label every rule groups by.
    Unmatched,
    /// An inference event older than its track's window; not counted.
    OutOfWindow,
}

/// Counters, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineStats {
    /// Events offered.
    pub events: u64,
    /// Dropped as late.
    pub late: u64,
    /// Older than the sample they would replace; kept out.
    pub out_of_order: u64,
    /// Set a variable no rule reads.
    pub unused: u64,
    /// Lacked a grouping label.
    pub unmatched: u64,
    /// Condition evaluations.
    pub evaluations: u64,
    /// Evaluations that failed at run time (treated as no data).
    pub eval_errors: u64,
    /// Inference events older than their window.
    pub out_of_window: u64,
    /// Subjects forgotten after `evict_after` without events.
    #[serde(default)]
    pub evicted: u64,
}

/// One subject's canary and stable statistics, as [`Engine::analytics`]
/// reports them.
#[derive(Clone, Debug, PartialEq)]
pub struct SubjectAnalytics {
    /// The subject.
    pub labels: Labels,
    /// Canary, then stable.
    pub tracks: [crate::analytics::TrackStats; 2],
    /// Each track's positive-prediction rate per fairness group.
    pub groups: [Vec<crate::analytics::GroupRate>; 2],
    /// Each track's sum of latencies in the window, ms, within 1 %.
    pub latency_sums: [Option<f64>; 2],
    /// The canary judge's view.
    pub judgement: crate::judge::Judgement,
    /// No fresh data for `stale_after`.
    pub stale: bool,
}

/// A read-only view of one alert.
#[derive(Clone, Debug, Serialize)]
pub struct AlertView<'a> {
    /// The rule.
    pub rule: &'a str,
    /// The subject.
    pub subject: &'a Labels,
    /// Its state.
    pub state: &'a AlertState,
    /// The condition's variables now, by name; missing ones are absent.
    pub values: BTreeMap<String, f64>,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Sample {
    value: f64,
    ts: Timestamp,
    /// Requests behind a computed value, for `min_samples`; `u64::MAX` for
    /// metric events and alert state, which carry no count.
    support: u64,
    /// Computed from inference events rather than set by a metric event.
    computed: bool,
}

impl Sample {
    fn set(value: f64, ts: Timestamp) -> Sample {
        Sample {
            value,
            ts,
            support: u64::MAX,
            computed: false,
        }
    }
}

/// A variable computed from the windows: a track's metric, or the judge's
/// of both tracks, and whether `min_samples` guards it (counts, rates and
/// the judge, which has its own guard, are never guarded).
#[derive(Clone, Copy, Debug)]
struct Computed {
    /// A track's index, or `None` for the judge.
    track: Option<usize>,
    metric: &'static str,
    guarded: bool,
}

/// A subject's alert states that are not inactive, by local rule index.
/// A rule that is absent is inactive, so a subject costs nothing for the
/// many rules that never matched it, however many rules there are.
#[derive(Default)]
struct AlertStates(Vec<(usize, AlertState)>);

impl AlertStates {
    fn get(&self, rule: usize) -> Option<&AlertState> {
        let i = self.0.binary_search_by_key(&rule, |(r, _)| *r).ok()?;
        Some(&self.0[i].1)
    }

    /// Removes and returns the state, inactive if absent.
    fn take(&mut self, rule: usize) -> AlertState {
        match self.0.binary_search_by_key(&rule, |(r, _)| *r) {
            Ok(i) => self.0.remove(i).1,
            Err(_) => AlertState::default(),
        }
    }

    /// Stores the state unless it is inactive.
    fn put(&mut self, rule: usize, state: AlertState) {
        if state.phase == Phase::Inactive {
            return;
        }
        match self.0.binary_search_by_key(&rule, |(r, _)| *r) {
            Ok(i) => self.0[i].1 = state,
            Err(i) => self.0.insert(i, (rule, state)),
        }
    }

    fn iter(&self) -> impl Iterator<Item = (usize, &AlertState)> {
        self.0.iter().map(|(r, s)| (*r, s))
    }
}

/// Whether `subject` has had no events for `evict_after` by `now`. One
/// with a firing external alert is kept however quiet: the alert stands
/// until it is resolved, and Alertmanager repeats it only every few hours.
fn evictable(subject: &Subject, now: Timestamp, evict_after: Span) -> bool {
    now.since(subject.last_seen) > evict_after && subject.firing.is_empty()
}

/// Requests a rate judged on evidence needs at least: a new canary's
/// first failed request alone is not an incident (1 of 1 already has a
/// 95 % interval of 0.21..1).
const EVIDENCE_MIN: u64 = 10;

/// Interval inputs of one condition judged on evidence, at most: 2^4
/// evaluations.
const MAX_INTERVALS: usize = 4;

/// The Wilson interval at `z` of an error or success rate sample, from its
/// value and the requests behind it; `None` for any other metric.
fn rate_interval(metric: &str, sample: Sample, z: f64) -> Option<(f64, f64)> {
    let n = sample.support;
    let errors = |rate: f64| (rate * n as f64).round().max(0.0) as u64;
    match metric {
        "error_rate" => crate::analytics::wilson_z(errors(sample.value), n, z),
        "success_rate" => crate::analytics::wilson_z(errors(1.0 - sample.value), n, z)
            .map(|(low, high)| (1.0 - high, 1.0 - low)),
        _ => None,
    }
}

/// Whether a firing alert counts towards an alert-derived variable.
type Counts = fn(&AlertFlags) -> bool;

/// The alert-derived variables and how each counts firing alerts.
const ALERT_SLOTS: [(&str, Counts); 3] = [
    ("critical_errors", |f| f.critical),
    ("oom_kills", |f| f.oom),
    ("firing_alerts", |_| true),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct AlertFlags {
    critical: bool,
    oom: bool,
}

struct Subject {
    labels: Labels,
    samples: Vec<Option<Sample>>,
    alerts: AlertStates,
    /// Canary and stable windows, once inference events arrive.
    tracks: Option<Box<[TrackWindow; 2]>>,
    /// The judge's evidence, in groups whose rules read the judge.
    experiment: Option<Box<Experiment>>,
    /// Listed in `Engine::active` for refreshes.
    active: bool,
    /// Firing external alerts by name and labels.
    firing: BTreeMap<(String, BTreeMap<String, String>), AlertFlags>,
    last_seen: Timestamp,
    stale: bool,
    /// Changed since [`Engine::take_changed`] last saw it.
    changed: bool,
}

struct GroupRule {
    rule: usize,
    inputs: Vec<usize>,
}

/// Rules sharing one `group_by`, and their subjects.
struct Group {
    labels: Vec<String>,
    rules: Vec<GroupRule>,
    /// For each slot, the local rules that read it.
    dependents: Vec<Vec<usize>>,
    /// Slots computed from windows that some rule of this group reads.
    computed_slots: Vec<usize>,
    /// Some rule of this group reads the judge.
    judged: bool,
    index: hashbrown::HashMap<Box<[String]>, usize>,
    subjects: Vec<Subject>,
    /// `labels` include `model`: a subject is one model's.
    by_model: bool,
}

/// Borrowed lookup key, hashing exactly like `Box<[String]>`.
struct KeyRef<'a>(&'a [&'a str]);

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state)
    }
}

impl Equivalent<Box<[String]>> for KeyRef<'_> {
    fn equivalent(&self, key: &Box<[String]>) -> bool {
        self.0.len() == key.len() && self.0.iter().zip(key.iter()).all(|(a, b)| *a == b)
    }
}

/// Where the engine put the last event it took: a subject of a group keyed
/// by `model`, for a caller keeping per-model state of its own (the rollout
/// controller) to find it without hashing the model again. Valid while
/// `engine` and `epoch` are unchanged: another engine, a rebuilt one or a
/// renumbering (eviction) gives other values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubjectRef {
    /// Which engine instance.
    pub engine: u64,
    /// Bumped whenever subjects are renumbered.
    pub epoch: u64,
    /// The group, by index.
    pub group: u32,
    /// The subject within it, by index.
    pub subject: u32,
}

/// Gives every engine instance its own [`SubjectRef::engine`].
static ENGINES: AtomicU64 = AtomicU64::new(0);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Timer {
    due: Timestamp,
    group: usize,
    subject: usize,
    rule: usize,
}

/// Evaluates a [`RuleSet`] over a stream of events.
pub struct Engine {
    rules: Arc<RuleSet>,
    config: EngineConfig,
    slots: HashMap<String, usize>,
    slot_kinds: Vec<VarKind>,
    alert_slots: [Option<usize>; 3],
    groups: Vec<Group>,
    watermark: Option<Timestamp>,
    timers: BinaryHeap<Reverse<Timer>>,
    next_stale_scan: Option<Timestamp>,
    stats: EngineStats,
    scratch: Vec<f64>,
    /// Inputs of the condition being evaluated that are known only as an
    /// interval: (index in `scratch`, low, high).
    intervals: Vec<(usize, f64, f64)>,
    /// z of `analytics.confidence`, if rates below `min_samples` are judged
    /// on evidence.
    evidence_z: Option<f64>,
    /// Per slot: computed from inference windows, and how.
    computed: Vec<Option<Computed>>,
    /// Subjects whose windows hold data: (group, subject).
    active: Vec<(usize, usize)>,
    next_refresh: Option<Timestamp>,
    /// This instance's id, and its renumbering count: see [`SubjectRef`].
    id: u64,
    epoch: u64,
    /// Where the last event went, in a group keyed by `model`.
    last_subject: Option<(u32, u32)>,
}

impl Engine {
    /// Builds an engine for `rules`. `vocabulary` must be the one the rules
    /// were loaded with; it says which variables never go stale.
    pub fn new(rules: Arc<RuleSet>, vocabulary: &Vocabulary, config: EngineConfig) -> Engine {
        let mut slots: HashMap<String, usize> = HashMap::new();
        let mut slot_kinds = Vec::new();
        let mut groups: Vec<Group> = Vec::new();
        for (index, rule) in rules.rules().iter().enumerate() {
            let inputs = rule
                .condition
                .variables()
                .iter()
                .map(|v| {
                    *slots.entry(v.clone()).or_insert_with(|| {
                        slot_kinds.push(vocabulary.kind(v).unwrap_or(VarKind::Sample));
                        slot_kinds.len() - 1
                    })
                })
                .collect();
            let g = match groups.iter().position(|g| g.labels == rule.group_by) {
                Some(g) => g,
                None => {
                    groups.push(Group {
                        by_model: rule.group_by.iter().any(|l| l == "model"),
                        labels: rule.group_by.clone(),
                        rules: Vec::new(),
                        dependents: Vec::new(),
                        computed_slots: Vec::new(),
                        judged: false,
                        index: hashbrown::HashMap::new(),
                        subjects: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            groups[g].rules.push(GroupRule {
                rule: index,
                inputs,
            });
        }
        for group in &mut groups {
            group.dependents = vec![Vec::new(); slot_kinds.len()];
            for (local, r) in group.rules.iter().enumerate() {
                // `baseline` may name a slot the condition also reads.
                let mut slots = r.inputs.clone();
                slots.sort_unstable();
                slots.dedup();
                for slot in slots {
                    group.dependents[slot].push(local);
                }
            }
        }
        let mut computed = vec![None; slot_kinds.len()];
        for (name, &slot) in &slots {
            for (track, prefix) in TRACKS.iter().enumerate() {
                if let Some(metric) = name.strip_prefix(prefix).and_then(|m| m.strip_prefix('_'))
                    && let Some(&metric) = TRACK_METRICS.iter().find(|&&m| m == metric)
                {
                    let guarded = !matches!(
                        metric,
                        "requests"
                            | "request_rate"
                            | "last_seen_age"
                            | "error_rate_lower"
                            | "error_rate_upper"
                    );
                    computed[slot] = Some(Computed {
                        track: Some(track),
                        metric,
                        guarded,
                    });
                }
            }
            if let Some(&(metric, _)) = JUDGE_VARIABLES.iter().find(|(v, _)| v == name) {
                computed[slot] = Some(Computed {
                    track: None,
                    metric,
                    guarded: false,
                });
            }
        }
        for group in &mut groups {
            group.computed_slots = (0..computed.len())
                .filter(|&slot| computed[slot].is_some() && !group.dependents[slot].is_empty())
                .collect();
            group.judged = group
                .computed_slots
                .iter()
                .any(|&slot| computed[slot].is_some_and(|c| c.track.is_none()));
        }
        let alert_slots = ALERT_SLOTS.map(|(name, _)| slots.get(name).copied());
        let evidence_z = config.analytics.confidence.map(|c| c.z());
        Engine {
            rules,
            config,
            slots,
            slot_kinds,
            alert_slots,
            groups,
            watermark: None,
            timers: BinaryHeap::new(),
            next_stale_scan: None,
            stats: EngineStats::default(),
            scratch: Vec::new(),
            intervals: Vec::new(),
            evidence_z,
            computed,
            active: Vec::new(),
            next_refresh: None,
            id: ENGINES.fetch_add(1, AtomicOrdering::Relaxed),
            epoch: 0,
            last_subject: None,
        }
    }

    /// The subject the last [`Engine::ingest`] applied to in a group keyed
    /// by `model` (the first such group), if any.
    pub fn last_subject(&self) -> Option<SubjectRef> {
        self.last_subject.map(|(group, subject)| SubjectRef {
            engine: self.id,
            epoch: self.epoch,
            group,
            subject,
        })
    }

    /// The rules being evaluated.
    pub fn rules(&self) -> &Arc<RuleSet> {
        &self.rules
    }

    /// Counters so far.
    pub fn stats(&self) -> EngineStats {
        self.stats
    }

    /// The highest event time seen (or advanced to).
    pub fn watermark(&self) -> Option<Timestamp> {
        self.watermark
    }

    /// Number of subjects across all groups.
    pub fn subject_count(&self) -> usize {
        self.groups.iter().map(|g| g.subjects.len()).sum()
    }

    /// Feeds one event. Transitions go to `out`, in event-time order.
    pub fn ingest(&mut self, event: &Event, out: &mut Vec<Output>) -> Ingested {
        self.stats.events += 1;
        self.last_subject = None;
        let ts = event.ts();
        if let Some(wm) = self.watermark
            && ts < Timestamp(wm.0.saturating_sub(self.config.allowed_lateness.0))
        {
            self.stats.late += 1;
            return Ingested::Late;
        }
        self.run_timers(ts, out);
        let result = match event {
            Event::Metric(m) => self.ingest_metric(m, out),
            Event::Alert(a) => self.ingest_alert(a, out),
            Event::Inference(i) => self.ingest_inference(i),
        };
        self.refresh_if_due(out);
        // After the event, so a subject is not called stale as its data arrives.
        self.scan_stale_if_due(out);
        result
    }

    /// Moves event time forward to `now` without an event: completes due
    /// durations and notices stale subjects. Never moves time backwards.
    /// Call it on a wall-clock tick so that silence is noticed.
    pub fn advance(&mut self, now: Timestamp, out: &mut Vec<Output>) {
        self.run_timers(now, out);
        self.refresh_if_due(out);
        self.scan_stale_if_due(out);
    }

    /// Fires the timers due by `now`, at their due times, then moves the
    /// watermark to `now`.
    fn run_timers(&mut self, now: Timestamp, out: &mut Vec<Output>) {
        if self.watermark.is_some_and(|wm| now <= wm) {
            return;
        }
        while let Some(Reverse(timer)) = self.timers.peek().copied() {
            if timer.due > now {
                break;
            }
            self.timers.pop();
            let rule = &self.rules.rules()[self.groups[timer.group].rules[timer.rule].rule];
            let state = self.groups[timer.group].subjects[timer.subject]
                .alerts
                .get(timer.rule);
            // Timers are never cancelled; a stale one no longer matches.
            if state.and_then(|st| st.due(&rule.timing)) == Some(timer.due) {
                self.evaluate(timer.group, timer.subject, timer.rule, timer.due, out);
            }
        }
        self.watermark = Some(now);
    }

    /// Scans for stale subjects every quarter of `stale_after` of event time.
    fn scan_stale_if_due(&mut self, out: &mut Vec<Output>) {
        let now = self.now();
        let every = Span((self.config.stale_after.0 / 4).max(1000));
        match self.next_stale_scan {
            Some(next) if now < next => return,
            None => {
                self.next_stale_scan = Some(now.plus(every));
                return;
            }
            Some(_) => {}
        }
        self.next_stale_scan = Some(now.plus(every));
        let stale_after = self.config.stale_after;
        let evict_after = self.config.evict_after;
        let mut evict = false;
        for group in &mut self.groups {
            for subject in &mut group.subjects {
                if !subject.stale && now.since(subject.last_seen) > stale_after {
                    subject.stale = true;
                    subject.changed = true;
                    out.push(Output::Stale {
                        ts: now,
                        subject: subject.labels.clone(),
                    });
                }
                evict |= evictable(subject, now, evict_after);
            }
        }
        if evict {
            self.evict(now, out);
        }
    }

    /// Forgets the subjects without events for `evict_after`, and renumbers
    /// the rest: the index, the active list and the timers follow.
    fn evict(&mut self, now: Timestamp, out: &mut Vec<Output>) {
        let evict_after = self.config.evict_after;
        for g in 0..self.groups.len() {
            let group = &mut self.groups[g];
            if !group
                .subjects
                .iter()
                .any(|s| evictable(s, now, evict_after))
            {
                continue;
            }
            // remap[old] = Some(new), or None when evicted.
            let mut remap = Vec::with_capacity(group.subjects.len());
            let mut kept = Vec::with_capacity(group.subjects.len());
            for subject in std::mem::take(&mut group.subjects) {
                if evictable(&subject, now, evict_after) {
                    let alerts = subject
                        .alerts
                        .iter()
                        .map(|(r, state)| {
                            let rule = &self.rules.rules()[group.rules[r].rule];
                            EndedAlert {
                                rule: rule.name.clone(),
                                state: state.phase,
                            }
                        })
                        .collect();
                    out.push(Output::Evicted {
                        ts: now,
                        subject: subject.labels.clone(),
                        alerts,
                    });
                    self.stats.evicted += 1;
                    remap.push(None);
                } else {
                    remap.push(Some(kept.len()));
                    kept.push(subject);
                }
            }
            group.subjects = kept;
            self.epoch += 1;
            // The event being taken may have gone to a subject that moved.
            if let Some((lg, ls)) = self.last_subject
                && lg as usize == g
            {
                self.last_subject = remap
                    .get(ls as usize)
                    .copied()
                    .flatten()
                    .and_then(|s| u32::try_from(s).ok())
                    .map(|s| (lg, s));
            }
            group.index.retain(|_, s| match remap[*s] {
                Some(new) => {
                    *s = new;
                    true
                }
                None => false,
            });
            self.active.retain_mut(|(ag, s)| {
                if *ag != g {
                    return true;
                }
                match remap[*s] {
                    Some(new) => {
                        *s = new;
                        true
                    }
                    None => false,
                }
            });
            let timers = std::mem::take(&mut self.timers).into_vec();
            self.timers = timers
                .into_iter()
                .filter_map(|Reverse(t)| {
                    if t.group != g {
                        return Some(Reverse(t));
                    }
                    remap[t.subject].map(|subject| Reverse(Timer { subject, ..t }))
                })
                .collect();
        }
    }

    /// The labels of the subject `at` names, if it is still valid here.
    pub fn labels_of(&self, at: SubjectRef) -> Option<&Labels> {
        if at.engine != self.id || at.epoch != self.epoch {
            return None;
        }
        let group = self.groups.get(at.group as usize)?;
        Some(&group.subjects.get(at.subject as usize)?.labels)
    }

    /// Notes where the event went, for [`Engine::last_subject`].
    fn note_subject(&mut self, g: usize, s: usize) {
        if self.last_subject.is_none() && self.groups[g].by_model {
            // Both fit: groups come from rules and subjects are bounded by
            // eviction far below 2^32; one that did not is left unnoted.
            if let (Ok(g), Ok(s)) = (u32::try_from(g), u32::try_from(s)) {
                self.last_subject = Some((g, s));
            }
        }
    }

    fn now(&self) -> Timestamp {
        self.watermark.unwrap_or_default()
    }

    fn ingest_metric(&mut self, m: &MetricEvent, out: &mut Vec<Output>) -> Ingested {
        let Some(&slot) = self.slots.get(&m.name) else {
            self.stats.unused += 1;
            return Ingested::Unused;
        };
        let now = self.now();
        let mut applied = false;
        for g in 0..self.groups.len() {
            if self.groups[g].dependents[slot].is_empty() {
                continue;
            }
            let Some(s) = self.subject_for(g, |l| m.labels.get(l).map(String::as_str), m.ts) else {
                continue;
            };
            applied = true;
            self.note_subject(g, s);
            let subject = &mut self.groups[g].subjects[s];
            match subject.samples[slot] {
                Some(old) if !old.computed && old.ts > m.ts => {
                    self.stats.out_of_order += 1;
                    continue;
                }
                _ => subject.samples[slot] = Some(Sample::set(m.value, m.ts)),
            }
            for i in 0..self.groups[g].dependents[slot].len() {
                let r = self.groups[g].dependents[slot][i];
                self.evaluate(g, s, r, now, out);
            }
        }
        if applied {
            Ingested::Applied
        } else {
            self.stats.unmatched += 1;
            Ingested::Unmatched
        }
    }

    fn ingest_alert(&mut self, a: &AlertEvent, out: &mut Vec<Output>) -> Ingested {
        let now = self.now();
        let key = (a.name.clone(), a.labels.clone());
        let flags = AlertFlags {
            critical: a.is_critical(),
            oom: a.is_oom(),
        };
        let mut applied = false;
        for g in 0..self.groups.len() {
            let Some(s) = self.subject_for(g, |l| a.labels.get(l).map(String::as_str), a.ts) else {
                continue;
            };
            applied = true;
            let subject = &mut self.groups[g].subjects[s];
            match a.status {
                AlertStatus::Firing => subject.firing.insert(key.clone(), flags),
                AlertStatus::Resolved => subject.firing.remove(&key),
            };
            let mut changed = Vec::new();
            for (i, (_, counts)) in ALERT_SLOTS.iter().enumerate() {
                let Some(slot) = self.alert_slots[i] else {
                    continue;
                };
                let value = subject.firing.values().filter(|f| counts(f)).count() as f64;
                if subject.samples[slot].map(|s| s.value) != Some(value) {
                    subject.samples[slot] = Some(Sample::set(value, a.ts));
                    changed.push(slot);
                }
            }
            let mut rules: Vec<usize> = changed
                .iter()
                .flat_map(|&slot| self.groups[g].dependents[slot].iter().copied())
                .collect();
            rules.sort_unstable();
            rules.dedup();
            for r in rules {
                self.evaluate(g, s, r, now, out);
            }
        }
        if applied {
            Ingested::Applied
        } else {
            self.stats.unmatched += 1;
            Ingested::Unmatched
        }
    }

    fn ingest_inference(&mut self, e: &InferenceEvent) -> Ingested {
        let mut applied = false;
        let track = match e.track {
            Track::Canary => 0,
            Track::Stable => 1,
        };
        for g in 0..self.groups.len() {
            if self.groups[g].computed_slots.is_empty() {
                continue;
            }
            let label = |l: &str| {
                if l == "model" {
                    Some(e.model.as_str())
                } else {
                    e.labels.get(l).map(String::as_str)
                }
            };
            let Some(s) = self.subject_for(g, label, e.ts) else {
                continue;
            };
            applied = true;
            self.note_subject(g, s);
            let config = &self.config.analytics;
            let judged = self.groups[g].judged;
            let subject = &mut self.groups[g].subjects[s];
            let tracks = subject.tracks.get_or_insert_with(|| {
                Box::new([TrackWindow::new(config), TrackWindow::new(config)])
            });
            let key = crate::analytics::latency_key(e.latency_ms);
            if !tracks[track].record_keyed(e, key) {
                self.stats.out_of_window += 1;
                return Ingested::OutOfWindow;
            }
            if judged {
                subject.experiment.get_or_insert_default().record_keyed(
                    e,
                    key,
                    config.judge.horizon,
                );
            }
            if !subject.active {
                subject.active = true;
                self.active.push((g, s));
            }
        }
        if applied {
            Ingested::Applied
        } else {
            self.stats.unmatched += 1;
            Ingested::Unmatched
        }
    }

    /// Once per `analytics.refresh` of event time, recomputes the window
    /// variables of every subject with data and evaluates the rules that
    /// read what changed. Values are stamped with the refresh time, so a
    /// silent track reads 0 requests while its sibling still has traffic.
    fn refresh_if_due(&mut self, out: &mut Vec<Output>) {
        let now = self.now();
        let every = self.config.analytics.refresh.millis().max(1);
        match self.next_refresh {
            Some(next) if now < next => return,
            _ => self.next_refresh = Some(Timestamp((now.0.div_euclid(every) + 1) * every)),
        }
        let active = std::mem::take(&mut self.active);
        let mut still = Vec::with_capacity(active.len());
        let mut changed: Vec<usize> = Vec::new();
        for (g, s) in active {
            changed.clear();
            let group = &mut self.groups[g];
            let subject = &mut group.subjects[s];
            let Some(tracks) = subject.tracks.as_mut() else {
                continue;
            };
            subject.changed = true;
            // min_samples is applied per rule at evaluation time.
            let stats = [tracks[0].stats(now, 1), tracks[1].stats(now, 1)];
            let judgement = subject
                .experiment
                .as_deref()
                .map(|x| crate::judge::judge(x, &self.config.analytics.judge));
            for &slot in &group.computed_slots {
                let Some(c) = self.computed[slot] else {
                    continue;
                };
                // A fresh metric event for the same name takes precedence.
                if let Some(old) = subject.samples[slot]
                    && !old.computed
                    && now.since(old.ts) <= self.config.stale_after
                {
                    continue;
                }
                let (value, support) = match (c.track, &judgement) {
                    (Some(t), _) => (stats[t].get(c.metric), stats[t].requests),
                    (None, Some(j)) => (j.get(c.metric), stats[0].requests.min(stats[1].requests)),
                    (None, None) => (None, 0),
                };
                let new = value.map(|value| Sample {
                    value,
                    ts: now,
                    support,
                    computed: true,
                });
                let differs = match (subject.samples[slot], new) {
                    (Some(a), Some(b)) => a.value != b.value || a.support != b.support,
                    (None, None) => false,
                    _ => true,
                };
                // Restamp even when unchanged, so a steady value never goes stale.
                subject.samples[slot] = new;
                if differs {
                    changed.push(slot);
                }
            }
            if tracks.iter().all(TrackWindow::is_empty) {
                subject.active = false;
            } else {
                still.push((g, s));
            }
            let mut rules: Vec<usize> = changed
                .iter()
                .flat_map(|&slot| group.dependents[slot].iter().copied())
                .collect();
            rules.sort_unstable();
            rules.dedup();
            for r in rules {
                self.evaluate(g, s, r, now, out);
            }
        }
        still.append(&mut self.active);
        self.active = still;
    }

    /// Finds or creates the subject that the labels `label` returns select
    /// in group `g`.
    fn subject_for<'l>(
        &mut self,
        g: usize,
        label: impl Fn(&str) -> Option<&'l str>,
        ts: Timestamp,
    ) -> Option<usize> {
        let group = &mut self.groups[g];
        let mut values: Vec<&str> = Vec::with_capacity(group.labels.len());
        for l in &group.labels {
            values.push(label(l)?);
        }
        let s = match group.index.get(&KeyRef(&values)) {
            Some(&s) => s,
            None => {
                let key: Box<[String]> = values.iter().map(|v| v.to_string()).collect();
                let mut samples = vec![None; self.slot_kinds.len()];
                // Alert-derived counts start at zero: no alert seen is a fact.
                for slot in self.alert_slots.iter().flatten() {
                    samples[*slot] = Some(Sample::set(0.0, ts));
                }
                let labels: BTreeMap<String, String> = group
                    .labels
                    .iter()
                    .cloned()
                    .zip(key.iter().cloned())
                    .collect();
                group.subjects.push(Subject {
                    labels: Arc::new(labels),
                    samples,
                    alerts: AlertStates::default(),
                    tracks: None,
                    experiment: None,
                    active: false,
                    firing: BTreeMap::new(),
                    last_seen: ts,
                    stale: false,
                    changed: true,
                });
                group.index.insert(key, group.subjects.len() - 1);
                group.subjects.len() - 1
            }
        };
        let subject = &mut group.subjects[s];
        subject.last_seen = subject.last_seen.max(ts);
        subject.stale = false;
        subject.changed = true;
        Some(s)
    }

    /// Evaluates local rule `r` of group `g` for subject `s` at time `at`.
    fn evaluate(&mut self, g: usize, s: usize, r: usize, at: Timestamp, out: &mut Vec<Output>) {
        self.stats.evaluations += 1;
        let group = &mut self.groups[g];
        let gr = &group.rules[r];
        let rule: &Rule = &self.rules.rules()[gr.rule];
        let subject = &mut group.subjects[s];
        let stale_after = self.config.stale_after;

        let min_samples = rule
            .min_samples
            .unwrap_or(self.config.analytics.min_samples);
        self.scratch.clear();
        self.intervals.clear();
        let mut complete = true;
        for &slot in &gr.inputs {
            match subject.samples[slot] {
                // Too few requests behind a ratio or quantile: a rate is
                // known as an interval (if judged on evidence), the rest
                // is no data.
                Some(sample)
                    if sample.computed
                        && sample.support < min_samples
                        && self.computed[slot].is_some_and(|c| c.guarded) =>
                {
                    match (self.evidence_z, self.computed[slot]) {
                        (Some(z), Some(c))
                            if sample.support >= EVIDENCE_MIN
                                && at.since(sample.ts) <= stale_after =>
                        {
                            match rate_interval(c.metric, sample, z) {
                                Some((low, high)) => {
                                    self.intervals.push((self.scratch.len(), low, high));
                                    self.scratch.push(sample.value);
                                }
                                None => complete = false,
                            }
                        }
                        _ => complete = false,
                    }
                }
                Some(sample)
                    if self.slot_kinds[slot] == VarKind::AlertState
                        || at.since(sample.ts) <= stale_after =>
                {
                    self.scratch.push(sample.value)
                }
                _ => complete = false,
            }
        }
        let obs = if !complete || self.intervals.len() > MAX_INTERVALS {
            Observation::NoData
        } else {
            // Every corner of the intervals: a condition built of
            // comparisons of sums and products of the inputs takes its
            // extremes there, so agreement at all corners is agreement
            // across the whole box. One corner without intervals.
            let (mut held, mut failed, mut errors) = (false, false, false);
            for corner in 0..(1u32 << self.intervals.len()) {
                for (j, &(i, low, high)) in self.intervals.iter().enumerate() {
                    self.scratch[i] = if corner >> j & 1 == 1 { high } else { low };
                }
                match rule.condition.evaluate(&self.scratch) {
                    Ok(true) => held = true,
                    Ok(false) => failed = true,
                    Err(_) => errors = true,
                }
            }
            if errors {
                self.stats.eval_errors += 1;
            }
            match (held, failed, errors) {
                (true, false, false) => Observation::True,
                (false, true, false) => Observation::False,
                // Unknown: the evidence does not decide yet.
                _ => Observation::NoData,
            }
        };
        subject.changed = true;
        let mut state = subject.alerts.take(r);
        let due_before = state.due(&rule.timing);
        let change = step(&mut state, obs, at, &rule.timing);
        let due_after = state.due(&rule.timing);
        let active_since = state.active_since;
        subject.alerts.put(r, state);
        if let Some(due) = due_after
            && due_after != due_before
        {
            self.timers.push(Reverse(Timer {
                due,
                group: g,
                subject: s,
                rule: r,
            }));
        }
        if let Some(change) = change {
            let values = rule
                .condition
                .variables()
                .iter()
                .zip(&gr.inputs)
                .filter_map(|(name, &slot)| subject.samples[slot].map(|x| (name.clone(), x.value)))
                .collect();
            out.push(Output::Transition(Transition {
                ts: at,
                rule: gr.rule,
                subject: subject.labels.clone(),
                from: change.from,
                to: change.to,
                active_since,
                values,
            }));
        }
    }

    /// Swaps in a new rule set, keeping what still applies: every subject's
    /// samples and windows, and the alert state and timers of each rule
    /// whose name and logic did not change (so nothing re-fires or re-acts
    /// because of a reload). Changed rules start afresh; removed rules'
    /// active alerts are returned in the report, to be resolved quietly.
    pub fn reload(self, rules: Arc<RuleSet>, vocabulary: &Vocabulary) -> (Engine, ReloadReport) {
        let mut report = ReloadReport::default();
        for rule in rules.rules() {
            match self.rules.get(&rule.name) {
                Some(old) if old.same_logic(rule) => report.kept.push(rule.name.clone()),
                Some(_) => report.changed.push(rule.name.clone()),
                None => report.added.push(rule.name.clone()),
            }
        }
        report.removed = self
            .rules
            .rules()
            .iter()
            .filter(|r| rules.get(&r.name).is_none())
            .map(|r| r.name.clone())
            .collect();

        let mut new = Engine::new(rules, vocabulary, self.config.clone());
        new.watermark = self.watermark;
        new.next_stale_scan = self.next_stale_scan;
        new.next_refresh = self.next_refresh;
        new.stats = self.stats;
        // Old slot -> new slot, by variable name.
        let mut slot_map = vec![None; self.slot_kinds.len()];
        for (name, &old) in &self.slots {
            slot_map[old] = new.slots.get(name).copied();
        }
        let old_rules = self.rules.clone();
        for old_group in self.groups {
            let Some(g) = new
                .groups
                .iter()
                .position(|grp| grp.labels == old_group.labels)
            else {
                for subject in &old_group.subjects {
                    for (o, state) in subject.alerts.iter() {
                        if state.phase.is_active() {
                            let name = old_rules.rules()[old_group.rules[o].rule].name.clone();
                            report
                                .dropped
                                .push((name, subject.labels.clone(), state.phase));
                        }
                    }
                }
                continue;
            };
            // New local rule -> old local rule with the same name and logic.
            let by_name: HashMap<&str, usize> = old_group
                .rules
                .iter()
                .enumerate()
                .map(|(i, ogr)| (old_rules.rules()[ogr.rule].name.as_str(), i))
                .collect();
            let carried: Vec<Option<usize>> = new.groups[g]
                .rules
                .iter()
                .map(|ngr| {
                    let rule = &new.rules.rules()[ngr.rule];
                    by_name
                        .get(rule.name.as_str())
                        .copied()
                        .filter(|&o| old_rules.rules()[old_group.rules[o].rule].same_logic(rule))
                })
                .collect();
            let mut kept = vec![false; old_group.rules.len()];
            for &o in carried.iter().flatten() {
                kept[o] = true;
            }
            for mut old in old_group.subjects {
                let mut samples = vec![None; new.slot_kinds.len()];
                for (o, sample) in old.samples.iter().enumerate() {
                    if let Some(n) = slot_map[o] {
                        samples[n] = *sample;
                    }
                }
                // Alert counts newly read by some rule start from the known alerts.
                for (i, (_, counts)) in ALERT_SLOTS.iter().enumerate() {
                    if let Some(slot) = new.alert_slots[i]
                        && samples[slot].is_none()
                    {
                        let value = old.firing.values().filter(|f| counts(f)).count() as f64;
                        samples[slot] = Some(Sample::set(value, old.last_seen));
                    }
                }
                let mut old_alerts = std::mem::take(&mut old.alerts);
                for (o, state) in old_alerts.iter() {
                    if state.phase.is_active() && !kept[o] {
                        report.dropped.push((
                            old_rules.rules()[old_group.rules[o].rule].name.clone(),
                            old.labels.clone(),
                            state.phase,
                        ));
                    }
                }
                let mut alerts = AlertStates::default();
                for (r, c) in carried.iter().enumerate() {
                    if let Some(o) = *c {
                        alerts.put(r, old_alerts.take(o));
                    }
                }
                let group = &mut new.groups[g];
                let s = group.subjects.len();
                for (r, state) in alerts.iter() {
                    if let Some(due) = state.due(&new.rules.rules()[group.rules[r].rule].timing) {
                        new.timers.push(Reverse(Timer {
                            due,
                            group: g,
                            subject: s,
                            rule: r,
                        }));
                    }
                }
                let key: Box<[String]> = group
                    .labels
                    .iter()
                    .map(|l| old.labels.get(l).cloned().unwrap_or_default())
                    .collect();
                let active = old
                    .tracks
                    .as_ref()
                    .is_some_and(|t| !t.iter().all(TrackWindow::is_empty));
                group.index.insert(key, s);
                // Evidence is kept only where a rule reads it.
                let experiment = old.experiment.take().filter(|_| group.judged);
                group.subjects.push(Subject {
                    samples,
                    alerts,
                    active,
                    experiment,
                    ..old
                });
                if active {
                    new.active.push((g, s));
                }
            }
        }
        (new, report)
    }

    /// Every alert that is not inactive, in a stable order.
    pub fn alerts(&self) -> impl Iterator<Item = AlertView<'_>> {
        self.groups.iter().flat_map(move |group| {
            group.subjects.iter().flat_map(move |subject| {
                subject.alerts.iter().map(move |(r, state)| {
                    let gr = &group.rules[r];
                    let rule = &self.rules.rules()[gr.rule];
                    let values = rule
                        .condition
                        .variables()
                        .iter()
                        .zip(&gr.inputs)
                        .filter_map(|(name, &slot)| {
                            subject.samples[slot].map(|x| (name.clone(), x.value))
                        })
                        .collect();
                    AlertView {
                        rule: &rule.name,
                        subject: &subject.labels,
                        state,
                        values,
                    }
                })
            })
        })
    }

    /// Canary and stable statistics of up to `limit` subjects whose windows
    /// hold data, as of the watermark; for status pages, the JSON API and
    /// the per-model metrics. [`active_subjects`](Self::active_subjects)
    /// says how many there are in all.
    pub fn analytics(&mut self, limit: usize) -> Vec<SubjectAnalytics> {
        let now = self.now();
        let mut out = Vec::new();
        for &(g, s) in self.active.iter().take(limit) {
            let subject = &mut self.groups[g].subjects[s];
            if let Some(tracks) = subject.tracks.as_mut() {
                let stats = [tracks[0].stats(now, 1), tracks[1].stats(now, 1)];
                out.push(SubjectAnalytics {
                    judgement: subject
                        .experiment
                        .as_deref()
                        .map(|x| crate::judge::judge(x, &self.config.analytics.judge))
                        .unwrap_or_default(),
                    labels: subject.labels.clone(),
                    groups: [tracks[0].positive_rates(), tracks[1].positive_rates()],
                    latency_sums: [tracks[0].latency_sum(), tracks[1].latency_sum()],
                    tracks: stats,
                    stale: subject.stale,
                });
            }
        }
        out
    }

    /// Subjects whose windows hold data: what [`analytics`](Self::analytics)
    /// would return without a limit.
    pub fn active_subjects(&self) -> usize {
        self.active.len()
    }

    /// The state of one rule for one subject, if that subject exists.
    pub fn alert(&self, rule: &str, subject: &BTreeMap<String, String>) -> Option<AlertState> {
        self.groups.iter().find_map(|group| {
            let r = group
                .rules
                .iter()
                .position(|gr| self.rules.rules()[gr.rule].name == rule)?;
            let subject = group.subjects.iter().find(|s| *s.labels == *subject)?;
            Some(subject.alerts.get(r).cloned().unwrap_or_default())
        })
    }

    /// Whether a subject has gone stale.
    pub fn is_stale(&self, subject: &BTreeMap<String, String>) -> Option<bool> {
        self.groups
            .iter()
            .flat_map(|g| g.subjects.iter())
            .find(|s| *s.labels == *subject)
            .map(|s| s.stale)
    }
}
