//! Engine state as data: what a changelog stores so that another process
//! carries on exactly where this one stopped.
//!
//! A checkpoint is one [`EngineCheckpoint`] (the engine's clocks and
//! counters) and one [`SubjectState`] per subject: samples, alert states
//! with their start times, analytics windows and firing external alerts.
//! Both are keyed by names, never by internal indices, so they restore into
//! an engine whose rules were reloaded meanwhile: as in a reload, an alert
//! carries over only to a rule of the same name and logic. Timers are not
//! stored; they follow from the alert states.
//!
//! [`Engine::take_changed`] hands out only the subjects changed since its
//! last call, so a changelog writes what changed, not everything.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{
    ALERT_SLOTS, AlertFlags, AlertStates, Engine, EngineConfig, EngineStats, Group, Sample,
    Subject, Timer,
};
use crate::analytics::TrackWindow;
use crate::judge::Experiment;
use crate::rule::RuleSet;
use crate::state::AlertState;
use crate::time::Timestamp;
use crate::vocabulary::Vocabulary;

/// The engine-wide part of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineCheckpoint {
    /// The event time evaluation had reached.
    pub watermark: Option<Timestamp>,
    next_stale_scan: Option<Timestamp>,
    next_refresh: Option<Timestamp>,
    /// Counters, so that they go on counting.
    pub stats: EngineStats,
}

/// One subject's whole state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SubjectState {
    /// The `group_by` of the rules that share this subject.
    pub group_by: Vec<String>,
    /// The subject's labels, e.g. `{model: summarizer}`.
    pub labels: BTreeMap<String, String>,
    samples: BTreeMap<String, Sample>,
    alerts: Vec<SavedAlert>,
    tracks: Option<Box<[TrackWindow; 2]>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    experiment: Option<Box<Experiment>>,
    firing: Vec<(String, BTreeMap<String, String>, AlertFlags)>,
    last_seen: Timestamp,
    stale: bool,
}

/// An alert that is not inactive, with the logic of its rule when saved.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SavedAlert {
    rule: String,
    logic: String,
    state: AlertState,
}

impl SubjectState {
    /// The alert states saved for this subject, by rule name.
    pub fn alerts(&self) -> impl Iterator<Item = (&str, &AlertState)> {
        self.alerts.iter().map(|a| (a.rule.as_str(), &a.state))
    }
}

/// Variable names by slot.
fn slot_names(slots: &HashMap<String, usize>, count: usize) -> Vec<&str> {
    let mut names = vec![""; count];
    for (name, &slot) in slots {
        names[slot] = name;
    }
    names
}

/// Each local rule's logic, by local index.
fn logic_of(rules: &RuleSet, group: &Group) -> Vec<String> {
    group
        .rules
        .iter()
        .map(|gr| rules.rules()[gr.rule].logic())
        .collect()
}

fn save(
    rules: &RuleSet,
    group: &Group,
    logic: &[String],
    subject: &Subject,
    slot_names: &[&str],
) -> SubjectState {
    SubjectState {
        group_by: group.labels.clone(),
        labels: (*subject.labels).clone(),
        samples: subject
            .samples
            .iter()
            .enumerate()
            .filter_map(|(slot, s)| Some((slot_names[slot].to_string(), (*s)?)))
            .collect(),
        alerts: subject
            .alerts
            .iter()
            .map(|(r, state)| SavedAlert {
                rule: rules.rules()[group.rules[r].rule].name.clone(),
                logic: logic[r].clone(),
                state: state.clone(),
            })
            .collect(),
        tracks: subject.tracks.clone(),
        experiment: subject.experiment.clone(),
        firing: subject
            .firing
            .iter()
            .map(|((name, labels), flags)| (name.clone(), labels.clone(), *flags))
            .collect(),
        last_seen: subject.last_seen,
        stale: subject.stale,
    }
}

impl Engine {
    /// The engine-wide part of a checkpoint, as of now.
    pub fn checkpoint(&self) -> EngineCheckpoint {
        EngineCheckpoint {
            watermark: self.watermark,
            next_stale_scan: self.next_stale_scan,
            next_refresh: self.next_refresh,
            stats: self.stats,
        }
    }

    /// Every subject's state.
    pub fn subject_states(&self) -> Vec<SubjectState> {
        let names = slot_names(&self.slots, self.slot_kinds.len());
        let mut out = Vec::with_capacity(self.subject_count());
        for group in &self.groups {
            let logic = logic_of(&self.rules, group);
            for subject in &group.subjects {
                out.push(save(&self.rules, group, &logic, subject, &names));
            }
        }
        out
    }

    /// The state of every subject changed since the last call (or since
    /// the engine was built or restored), and forgets that they changed.
    pub fn take_changed(&mut self) -> Vec<SubjectState> {
        let names = slot_names(&self.slots, self.slot_kinds.len());
        let mut out = Vec::new();
        for group in &mut self.groups {
            let logic = logic_of(&self.rules, group);
            for s in 0..group.subjects.len() {
                if !group.subjects[s].changed {
                    continue;
                }
                group.subjects[s].changed = false;
                out.push(save(&self.rules, group, &logic, &group.subjects[s], &names));
            }
        }
        out
    }

    /// An engine for `rules` in the state a checkpoint saved: its clocks
    /// and counters, and `subjects` (one state per subject; a repeated one
    /// is ignored). Subjects whose grouping no rule uses any more are
    /// dropped, and alerts of rules that are gone or whose logic changed
    /// start afresh, as in a reload.
    pub fn restore(
        rules: Arc<RuleSet>,
        vocabulary: &Vocabulary,
        config: EngineConfig,
        checkpoint: EngineCheckpoint,
        subjects: impl IntoIterator<Item = SubjectState>,
    ) -> Engine {
        let mut engine = Engine::new(rules, vocabulary, config);
        engine.watermark = checkpoint.watermark;
        engine.next_stale_scan = checkpoint.next_stale_scan;
        engine.next_refresh = checkpoint.next_refresh;
        engine.stats = checkpoint.stats;
        let logic: Vec<Vec<String>> = engine
            .groups
            .iter()
            .map(|g| logic_of(&engine.rules, g))
            .collect();
        for saved in subjects {
            engine.adopt(saved, &logic);
        }
        engine
    }

    /// Takes in one saved subject, unless it is due for eviction: the
    /// changelog keeps a subject's last record after it was evicted.
    fn adopt(&mut self, saved: SubjectState, logic: &[Vec<String>]) {
        if saved.firing.is_empty()
            && self
                .watermark
                .is_some_and(|wm| wm.since(saved.last_seen) > self.config.evict_after)
        {
            self.stats.evicted += 1;
            return;
        }
        let Some(g) = self
            .groups
            .iter()
            .position(|grp| grp.labels == saved.group_by)
        else {
            return;
        };
        let mut samples = vec![None; self.slot_kinds.len()];
        for (name, sample) in &saved.samples {
            if let Some(&slot) = self.slots.get(name) {
                samples[slot] = Some(*sample);
            }
        }
        // Alert counts newly read by some rule start from the known alerts.
        for (i, (_, counts)) in ALERT_SLOTS.iter().enumerate() {
            if let Some(slot) = self.alert_slots[i]
                && samples[slot].is_none()
            {
                let value = saved.firing.iter().filter(|(_, _, f)| counts(f)).count() as f64;
                samples[slot] = Some(Sample::set(value, saved.last_seen));
            }
        }
        let group = &mut self.groups[g];
        let key: Box<[String]> = group
            .labels
            .iter()
            .map(|l| saved.labels.get(l).cloned().unwrap_or_default())
            .collect();
        if group.index.contains_key(&key) {
            return;
        }
        let s = group.subjects.len();
        let mut alerts = AlertStates::default();
        for a in saved.alerts {
            let found = group.rules.iter().enumerate().position(|(r, gr)| {
                self.rules.rules()[gr.rule].name == a.rule && logic[g][r] == a.logic
            });
            let Some(r) = found else { continue };
            if let Some(due) = a.state.due(&self.rules.rules()[group.rules[r].rule].timing) {
                self.timers.push(Reverse(Timer {
                    due,
                    group: g,
                    subject: s,
                    rule: r,
                }));
            }
            alerts.put(r, a.state);
        }
        let active = saved
            .tracks
            .as_ref()
            .is_some_and(|t| !t.iter().all(TrackWindow::is_empty));
        group.index.insert(key, s);
        group.subjects.push(Subject {
            labels: Arc::new(saved.labels),
            samples,
            alerts,
            tracks: saved.tracks,
            experiment: saved.experiment.filter(|_| group.judged),
            active,
            firing: saved
                .firing
                .into_iter()
                .map(|(name, labels, flags)| ((name, labels), flags))
                .collect(),
            last_seen: saved.last_seen,
            stale: saved.stale,
            changed: false,
        });
        if active {
            self.active.push((g, s));
        }
    }
}
