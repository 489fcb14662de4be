//! The rollout controller: a [`Rollout`] per model that has a plan, fed by
//! the events and the engine's outputs and stepped in event time. Pure, as
//! the engine is: what it decides comes back as [`Change`]s, which the
//! caller records and carries out (replay prints them, live mode sets the
//! weights).
//!
//! - A model's rollout starts when its first canary event is seen; a new
//!   canary version starts a new one from the first stage. A version that
//!   was rolled back stays at 0% until a person resumes it.
//! - The gate is the worst state of the model's gating rules: firing, then
//!   pending, then unknown (its data went stale), else clean.
//! - A gating rule firing with `reduce_traffic` among its actions steps
//!   the rollout back one stage.
//! - With read-back on (live mode, a traffic receiver that records the
//!   rollout's state on its object), a model first seen here, with no
//!   state restored from a changelog, is not started: it waits until the
//!   caller has read the traffic object ([`Controller::take_lookups`],
//!   [`Controller::read_back`]), and then carries on where the object says
//!   it stood. A new owner never restarts a hold or a rolled-back version.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::Serialize;

use super::{Cause, Command, Decision, Gate, Phase, Plan, Rollout, Step};
use crate::engine::AlertView;
use crate::engine::{Labels, Output, SubjectRef};
use crate::event::{Event, Track};
use crate::policy::{ActionName, Severity};
use crate::rule::{Rule, RuleSet};
use crate::state::Phase as AlertPhase;
use crate::time::{Span, Timestamp};

/// Which rules gate a plan's stages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gating {
    /// Every rule for the model (every severity, `low` and above).
    Every,
    /// Only these, by name.
    Named(Vec<String>),
}

impl Gating {
    fn gates(&self, rule: &Rule) -> bool {
        match self {
            Gating::Every => true,
            Gating::Named(names) => names.contains(&rule.name),
        }
    }
}

/// A plan with its name (for people) and its gating rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedPlan {
    /// `default`, or the model it was written for.
    pub name: String,
    /// The stages and the soak.
    pub plan: Plan,
    /// The rules that gate it.
    pub gating: Gating,
    /// Its traffic receiver records the rollout's state on the object it
    /// changes, so a new owner can read it back there.
    pub read_back: bool,
}

impl NamedPlan {
    /// The playbook's plan as the default, gated by every rule.
    pub fn playbook() -> NamedPlan {
        NamedPlan {
            name: "default".into(),
            plan: Plan {
                stages: super::playbook_stages(),
                soak: super::PLAYBOOK_SOAK,
            },
            gating: Gating::Every,
            read_back: false,
        }
    }
}

/// Every plan: the default one and the per-model ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plans {
    /// For every model without its own.
    pub default: Option<NamedPlan>,
    /// By model.
    pub models: HashMap<String, NamedPlan>,
    /// Models whose traffic people move by hand: no plan carries them.
    pub manual: HashSet<String>,
}

impl Plans {
    /// The plan that carries `model`, if any.
    pub fn plan_for(&self, model: &str) -> Option<&NamedPlan> {
        if self.manual.contains(model) {
            return None;
        }
        self.models.get(model).or(self.default.as_ref())
    }

    /// Whether any model has a plan.
    pub fn is_empty(&self) -> bool {
        self.default.is_none() && self.models.is_empty()
    }
}

/// What a rollout change was, as the audit trail and replay name it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// A stage entered: the first of a new rollout, or the next one.
    Stage,
    /// The hold clock stopped (a gating rule, no data) or a person paused it.
    Paused,
    /// The hold clock runs again, or a rolled-back version starts over.
    Resumed,
    /// `reduce_traffic`: back one stage, its hold restarted.
    SteppedBack,
    /// A critical or high gating rule fired: 0%.
    RolledBack,
    /// 100%: the soak begins.
    Promoted,
    /// The soak ended; no more traffic changes until a new version.
    Complete,
    /// Nothing changed: the hold so far, recorded on the traffic object
    /// for a new owner to read back ([`Controller::records_due`]).
    Progress,
}

impl ChangeKind {
    /// Every kind.
    pub const ALL: [ChangeKind; 8] = [
        ChangeKind::Stage,
        ChangeKind::Paused,
        ChangeKind::Resumed,
        ChangeKind::SteppedBack,
        ChangeKind::RolledBack,
        ChangeKind::Promoted,
        ChangeKind::Complete,
        ChangeKind::Progress,
    ];

    /// The name used in JSON and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Stage => "stage",
            ChangeKind::Paused => "paused",
            ChangeKind::Resumed => "resumed",
            ChangeKind::SteppedBack => "stepped_back",
            ChangeKind::RolledBack => "rolled_back",
            ChangeKind::Promoted => "promoted",
            ChangeKind::Complete => "complete",
            ChangeKind::Progress => "progress",
        }
    }
}

/// One change of one model's rollout.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Change {
    /// Event time.
    pub ts: Timestamp,
    /// The model.
    pub model: String,
    /// The canary version.
    pub version: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The canary's weight after it, in percent.
    pub weight: u8,
    /// The stage after it, from 1; one past the plan's last is 100%.
    pub stage: usize,
    /// Whether the canary's weight must be set to `weight` now.
    pub traffic: bool,
    /// Why, with the evidence: which rules, how much data.
    pub reason: String,
    /// The rollout's state after it, as recorded on the traffic object.
    pub state: Rollout,
}

/// What the traffic object says of a model's rollout, as read back by the
/// caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// No rollout recorded: a new one starts.
    Nothing,
    /// canaryd's own record, of this model's plan.
    Recorded {
        /// The plan's name as recorded.
        plan: String,
        /// The state.
        rollout: Rollout,
        /// The weights were changed by someone else since canaryd wrote
        /// them: what was found.
        hand_edit: Option<String>,
    },
    /// Unreadable, foreign or unreachable for good: the rollout pauses
    /// with this, and a person decides (resume starts it again from the
    /// first stage, abort rolls back). Guessing is not allowed.
    Refused(String),
}

/// What a periodic read of a model's traffic object saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watched {
    /// The canary version the object names, if it names one.
    pub version: Option<String>,
    /// The weights on it are not those canaryd last wrote: what was found.
    pub hand_edit: Option<String>,
}

/// A model waiting for its traffic object to be read.
#[derive(Clone, Debug)]
struct Reading {
    version: String,
    first_seen: Timestamp,
    requests: u64,
}

/// The gating alerts of one model that are not inactive, by rule name and
/// subject.
type Active = BTreeMap<(String, Labels), (AlertPhase, Severity)>;

/// One model's rollout and what was seen since its last step. In this
/// order (`repr(C)`): what every canary event reads and counts comes
/// first, next to the rollout's version and phase, in the fewest cache
/// lines.
#[derive(Clone, Debug)]
#[repr(C)]
struct Tracked {
    /// Canary events since the last step.
    requests: u64,
    /// Its data went stale, and no event came since.
    stale: bool,
    /// A `reduce_traffic` gating rule fired since the last step.
    reduce: bool,
    rollout: Rollout,
    active: Active,
    /// Event time of the last change or progress record of its state.
    recorded: Timestamp,
}

impl Tracked {
    fn new(rollout: Rollout, requests: u64) -> Tracked {
        Tracked {
            recorded: rollout.last_step,
            rollout,
            requests,
            reduce: false,
            stale: false,
            active: Active::new(),
        }
    }
}

/// Every model's rollout.
#[derive(Clone, Debug)]
pub struct Controller {
    plans: Arc<Plans>,
    rules: Arc<RuleSet>,
    /// By model. Indexed too: see `hints`.
    models: IndexMap<String, Tracked, hashbrown::DefaultHashBuilder>,
    /// Where a model's events go in the engine, learnt from its first:
    /// later canary events find its rollout by the engine's subject, with
    /// no hashing of the model (the hot path).
    hints: Hints,
    /// The earliest event time at which a rollout's hold (or soak) ends:
    /// then every rollout is stepped. Between, only gating alerts' changes
    /// and commands step one.
    next_due: Option<Timestamp>,
    /// A rollout changed since the last [`Controller::take_changed`].
    changed: bool,
    /// How many models' data is stale.
    stale: usize,
    /// Whether a model first seen waits for its traffic object to be read.
    read_back: bool,
    /// Models waiting for that, by model.
    reading: hashbrown::HashMap<String, Reading>,
    /// Models to read, for the caller.
    lookups: Vec<String>,
}

/// Engine subjects to indexes of [`Controller::models`], for one engine
/// instance and epoch: cleared when either changes, or when models are
/// removed (which moves indexes). Bounded by the engine's subjects.
#[derive(Clone, Debug, Default)]
struct Hints {
    of: Option<(u64, u64)>,
    /// By group, then subject: the model's index, or [`Hints::NONE`].
    by_group: Vec<Vec<u32>>,
}

impl Hints {
    const NONE: u32 = u32::MAX;

    fn get(&mut self, at: SubjectRef) -> Option<usize> {
        self.renew(at);
        self.peek(at)
    }

    /// Forgets hints of another engine or epoch than `at`'s.
    fn renew(&mut self, at: SubjectRef) {
        if self.of != Some((at.engine, at.epoch)) {
            self.clear();
            self.of = Some((at.engine, at.epoch));
        }
    }

    /// [`Hints::get`] without clearing: a hint of another epoch is none.
    fn peek(&self, at: SubjectRef) -> Option<usize> {
        if self.of != Some((at.engine, at.epoch)) {
            return None;
        }
        let index = *self
            .by_group
            .get(at.group as usize)?
            .get(at.subject as usize)?;
        (index != Hints::NONE).then_some(index as usize)
    }

    fn set(&mut self, at: SubjectRef, index: usize) {
        let Ok(index) = u32::try_from(index) else {
            return;
        };
        self.renew(at);
        let (g, s) = (at.group as usize, at.subject as usize);
        if self.by_group.len() <= g {
            self.by_group.resize_with(g + 1, Vec::new);
        }
        let group = &mut self.by_group[g];
        if group.len() <= s {
            group.resize(s + 1, Hints::NONE);
        }
        group[s] = index;
    }

    fn clear(&mut self) {
        self.of = None;
        self.by_group.clear();
    }
}

/// The canary version an event is about, if it is a canary's ("" when it
/// names none).
// Always: called on every event, and its call cost more than its work.
#[inline(always)]
fn canary_version(event: &Event) -> Option<&str> {
    match event {
        Event::Inference(e) if e.track == Track::Canary => Some(e.version.as_str()),
        Event::Metric(m) if m.name.starts_with("canary_") => Some(version_label(&m.labels)),
        _ => None,
    }
}

/// The event's `version` label, or empty. Labels are sorted and
/// `version` comes late among them, so the last key mostly settles it
/// without a search (the hot path's costliest step otherwise).
#[inline(always)]
fn version_label(labels: &BTreeMap<String, String>) -> &str {
    match labels.last_key_value() {
        None => "",
        // Every key sorts before this one, so before "version" too.
        Some((k, _)) if k.as_bytes().first().is_some_and(|b| *b < b'v') => "",
        Some((k, v)) if k == "version" => v,
        Some(_) => labels.get("version").map_or("", String::as_str),
    }
}

/// The model an event is about.
fn model_of(event: &Event) -> Option<&str> {
    match event {
        Event::Inference(e) => Some(e.model.as_str()),
        Event::Metric(m) => m.labels.get("model").map(String::as_str),
        Event::Alert(a) => a.labels.get("model").map(String::as_str),
    }
}

impl Controller {
    /// A controller for `plans`, reading rule severities and actions from
    /// `rules` (the engine's rule set).
    pub fn new(plans: Arc<Plans>, rules: Arc<RuleSet>) -> Controller {
        Controller {
            plans,
            rules,
            models: IndexMap::default(),
            hints: Hints::default(),
            next_due: None,
            changed: false,
            stale: 0,
            read_back: false,
            reading: hashbrown::HashMap::new(),
            lookups: Vec::new(),
        }
    }

    /// Turns read-back on: a model first seen without a restored state
    /// waits for [`Controller::read_back`] instead of starting at the first
    /// stage. Off in replay, where there is no object to read.
    pub fn with_read_back(mut self, on: bool) -> Controller {
        self.read_back = on;
        self
    }

    /// Models whose traffic object the caller must read now, each once.
    pub fn take_lookups(&mut self) -> Vec<String> {
        std::mem::take(&mut self.lookups)
    }

    /// Models waiting for their traffic object to be read.
    pub fn reading(&self) -> usize {
        self.reading.len()
    }

    /// Those models, with the canary version seen.
    pub fn reading_models(&self) -> impl Iterator<Item = (&str, &str)> {
        self.reading
            .iter()
            .map(|(model, r)| (model.as_str(), r.version.as_str()))
    }

    /// What the traffic object of `model` says, read at the caller's
    /// request, at event time `now`. A recorded rollout of the version seen
    /// carries on where it stood: its stage, its hold so far, its pause or
    /// rollback. The time between the record and the first event seen here
    /// is not credited: nobody watched the gate then. Anything else that
    /// was recorded (another version) gives way to a new rollout; nothing
    /// readable pauses it.
    pub fn read_back<'a>(
        &mut self,
        model: &str,
        found: Found,
        alerts: impl Iterator<Item = AlertView<'a>>,
        now: Timestamp,
    ) -> Vec<Change> {
        let out = self.read_back_inner(model, found, now);
        // The model's gating alerts went on while its object was read: the
        // gate starts from them, as after a restore.
        if let Some(tracked) = self.models.get_mut(model) {
            seed_active(&self.plans, &self.rules, model, tracked, alerts);
        }
        out
    }

    fn read_back_inner(&mut self, model: &str, found: Found, now: Timestamp) -> Vec<Change> {
        let mut out = Vec::new();
        let Some(reading) = self.reading.remove(model) else {
            return out;
        };
        let Some(named) = self.plans.plan_for(model) else {
            return out;
        };
        let refuse = |why: String| {
            let mut rollout = Rollout::start(&named.plan, &reading.version, reading.first_seen).0;
            rollout.phase = Phase::Paused {
                by: format!(
                    "canaryd: {why}; resume starts it again from stage 1, abort rolls it back"
                ),
            };
            rollout
        };
        let (tracked, kind, traffic, reason) = match found {
            Found::Nothing => {
                self.start(model, &reading, None, now, &mut out);
                return out;
            }
            Found::Recorded { plan, .. } if plan != named.name => {
                let why = format!(
                    "the traffic object records a rollout of plan `{plan}`, but plan `{}` carries this model",
                    named.name
                );
                let rollout = refuse(why.clone());
                (rollout, ChangeKind::Paused, false, why)
            }
            Found::Recorded { rollout, .. }
                if !reading.version.is_empty()
                    && rollout.version != reading.version
                    && !rollout.retired(&reading.version) =>
            {
                // Another version was carried: this one starts afresh.
                self.start(model, &reading, Some(&rollout), now, &mut out);
                return out;
            }
            Found::Recorded { rollout, .. } if rollout.stage > named.plan.stages.len() => {
                let why = format!(
                    "the traffic object records stage {} of plan `{}`, which has {} stages",
                    rollout.stage + 1,
                    named.name,
                    named.plan.stages.len()
                );
                (refuse(why.clone()), ChangeKind::Paused, false, why)
            }
            Found::Recorded {
                mut rollout,
                hand_edit,
                ..
            } => {
                rollout.last_step = rollout.last_step.max(reading.first_seen);
                if !rollout.retired(&reading.version) {
                    rollout.requests = rollout.requests.saturating_add(reading.requests);
                }
                let running = rollout.phase.moves();
                match hand_edit {
                    Some(edit) if running => {
                        let why = format!("hand edit: {edit}");
                        rollout.phase = Phase::Paused {
                            by: format!("canaryd on a hand edit ({edit})"),
                        };
                        (rollout, ChangeKind::Paused, false, why)
                    }
                    _ => {
                        self.adopt(model, rollout);
                        return out;
                    }
                }
            }
            Found::Refused(why) => (refuse(why.clone()), ChangeKind::Paused, false, why),
        };
        let tracked = Tracked::new(tracked, 0);
        out.push(change_of(
            model,
            &tracked,
            &named.plan,
            kind,
            traffic,
            reason,
            now,
        ));
        self.models.insert(model.to_string(), tracked);
        self.changed = true;
        out
    }

    /// The models with a rollout here: those whose traffic objects are
    /// watched ([`Controller::watched`]).
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// What a periodic read of `model`'s traffic object saw, at event time
    /// `now`. A canary version it names that this model has not carried
    /// starts a new rollout of it (one carried before is ignored: the
    /// object lags, or names a version being replaced). Weights someone
    /// else set pause a running rollout and say so: a person wins, and is
    /// never fought.
    pub fn watched(&mut self, model: &str, seen: &Watched, now: Timestamp) -> Vec<Change> {
        let mut out = Vec::new();
        let (Some(named), Some(index)) =
            (self.plans.plan_for(model), self.models.get_index_of(model))
        else {
            return out;
        };
        let before = &self.models[index].rollout;
        let new_version = seen
            .version
            .as_deref()
            .filter(|v| !v.is_empty() && *v != before.version && !before.retired(v));
        if let Some(version) = new_version {
            let (rollout, decision) = before.succeed(&named.plan, version, now);
            let tracked = Tracked::new(rollout, 0);
            changes(model, &tracked, &named.plan, vec![decision], now, &mut out);
            self.next_due = earliest(self.next_due, due_of(&named.plan, &tracked.rollout));
            self.models[index] = tracked;
            self.changed = true;
            return out;
        }
        if let (Some(edit), true) = (&seen.hand_edit, before.phase.moves()) {
            let by = format!("canaryd on a hand edit ({edit})");
            out = self
                .command(model, Command::Pause { by }, now)
                .unwrap_or_default();
        }
        out
    }

    /// Carries `rollout` on, as read back, with the alerts the engine has
    /// for the model left to come (they step it as they change).
    fn adopt(&mut self, model: &str, rollout: Rollout) {
        let Some(named) = self.plans.plan_for(model) else {
            return;
        };
        let tracked = Tracked::new(rollout, 0);
        self.next_due = earliest(self.next_due, due_of(&named.plan, &tracked.rollout));
        self.models.insert(model.to_string(), tracked);
        self.changed = true;
    }

    /// A new rollout of what `reading` saw, from its first canary event;
    /// it replaces `before`, if there was one.
    fn start(
        &mut self,
        model: &str,
        reading: &Reading,
        before: Option<&Rollout>,
        now: Timestamp,
        out: &mut Vec<Change>,
    ) {
        let Some(named) = self.plans.plan_for(model) else {
            return;
        };
        let (rollout, decision) = match before {
            Some(before) => before.succeed(&named.plan, &reading.version, reading.first_seen),
            None => Rollout::start(&named.plan, &reading.version, reading.first_seen),
        };
        let tracked = Tracked::new(rollout, reading.requests);
        changes(model, &tracked, &named.plan, vec![decision], now, out);
        self.next_due = earliest(self.next_due, due_of(&named.plan, &tracked.rollout));
        self.models.insert(model.to_string(), tracked);
        self.changed = true;
    }

    /// After a reload: new plans and rules. Rollouts carry on where they
    /// stand; a model whose plan is gone keeps its weight and is dropped.
    pub fn reload(&mut self, plans: Arc<Plans>, rules: Arc<RuleSet>) {
        self.models
            .retain(|model, _| plans.plan_for(model).is_some());
        self.hints.clear();
        self.reading
            .retain(|model, _| plans.plan_for(model).is_some());
        self.stale = self.models.values().filter(|t| t.stale).count();
        self.plans = plans;
        self.rules = rules;
        self.recompute_due();
    }

    /// Models under rollout.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// Whether no model is under rollout.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }

    /// Every rollout, by model, with its plan.
    pub fn rollouts(&self) -> Vec<(&str, &Rollout, &NamedPlan)> {
        let mut all: Vec<_> = self
            .models
            .iter()
            .filter_map(|(m, t)| Some((m.as_str(), &t.rollout, self.plans.plan_for(m)?)))
            .collect();
        all.sort_by_key(|(m, _, _)| *m);
        all
    }

    /// The rollout of `model`, with its plan.
    pub fn rollout(&self, model: &str) -> Option<(&Rollout, &NamedPlan)> {
        let tracked = self.models.get(model)?;
        Some((&tracked.rollout, self.plans.plan_for(model)?))
    }

    /// Takes an event the engine has just taken (`applied`: it updated the
    /// model's data; `at`: where it put it, [`Engine::last_subject`]), at
    /// event time `now`: counts a canary's, and starts a rollout for a
    /// model's first canary version, or a new one. Returns a model to step
    /// now: one whose data is fresh again, or one waiting for data. Cheap
    /// on the hot path: a known subject's canary event is found by `at`,
    /// with no hashing and no allocation.
    ///
    /// [`Engine::last_subject`]: crate::Engine::last_subject
    pub fn observe<'e>(
        &mut self,
        event: &'e Event,
        applied: bool,
        at: Option<SubjectRef>,
        now: Timestamp,
        out: &mut Vec<Change>,
    ) -> Option<&'e str> {
        let Some(version) = canary_version(event) else {
            // Only a stale model has anything to learn from a stable's event.
            if self.stale == 0 || !applied {
                return None;
            }
            let model = model_of(event)?;
            let tracked = self.models.get_mut(model)?;
            if !tracked.stale {
                return None;
            }
            tracked.stale = false;
            self.stale -= 1;
            return Some(model);
        };
        let index = match at.and_then(|at| self.hints.get(at)) {
            Some(index) => Some(index),
            None => {
                let index = self.models.get_index_of(model_of(event)?);
                if let (Some(at), Some(index)) = (at, index) {
                    self.hints.set(at, index);
                }
                index
            }
        };
        if let Some((_, tracked)) = index.and_then(|i| self.models.get_index_mut(i)) {
            let fresh_again = applied && tracked.stale;
            if fresh_again {
                tracked.stale = false;
                self.stale -= 1;
            }
            if version.is_empty() || tracked.rollout.version == version {
                tracked.requests += 1;
                let waiting = tracked.rollout.phase == Phase::WaitingForData;
                return if fresh_again || waiting {
                    model_of(event)
                } else {
                    None
                };
            }
            if tracked.rollout.retired(version) {
                // A late event of a version replaced since (its pods are
                // draining): not this rollout's, and never a new one.
                return None;
            }
            // A new version: a new rollout, below.
        }
        let is_known = index.is_some();
        let model = model_of(event)?;
        let named = self.plans.plan_for(model)?;
        if self.read_back && named.read_back && !is_known {
            // What the traffic object says comes first.
            match self.reading.get_mut(model) {
                Some(r) if version.is_empty() || r.version == version => r.requests += 1,
                Some(r) => {
                    *r = Reading {
                        version: version.to_string(),
                        first_seen: now,
                        requests: 1,
                    }
                }
                None => {
                    self.reading.insert(
                        model.to_string(),
                        Reading {
                            version: version.to_string(),
                            first_seen: now,
                            requests: 1,
                        },
                    );
                    self.lookups.push(model.to_string());
                }
            }
            return None;
        }
        let (rollout, decision) = match index.and_then(|i| self.models.get_index(i)) {
            Some((_, before)) => before.rollout.succeed(&named.plan, version, now),
            None => Rollout::start(&named.plan, version, now),
        };
        let tracked = Tracked::new(rollout, 1);
        changes(model, &tracked, &named.plan, vec![decision], now, out);
        self.next_due = earliest(self.next_due, due_of(&named.plan, &tracked.rollout));
        let (index, _) = self.models.insert_full(model.to_string(), tracked);
        if let Some(at) = at {
            self.hints.set(at, index);
        }
        self.changed = true;
        None
    }

    /// Takes an engine output: gating alerts' phases and stale subjects.
    /// Returns the model it concerns.
    pub fn output<'o>(&mut self, output: &'o Output) -> Option<&'o str> {
        match output {
            Output::Transition(t) => {
                let model = t.subject.get("model")?;
                let tracked = self.models.get_mut(model.as_str())?;
                let rule = self.rules.rules().get(t.rule)?;
                let named = self.plans.plan_for(model)?;
                if !named.gating.gates(rule) {
                    return None;
                }
                let key = (rule.name.clone(), t.subject.clone());
                match t.to {
                    AlertPhase::Inactive => {
                        tracked.active.remove(&key);
                    }
                    phase => {
                        if phase == AlertPhase::Firing
                            && rule.actions.contains(&ActionName::ReduceTraffic)
                        {
                            tracked.reduce = true;
                        }
                        tracked.active.insert(key, (phase, rule.severity));
                    }
                }
                Some(model.as_str())
            }
            Output::Stale { subject, .. } => {
                let model = subject.get("model")?;
                let tracked = self.models.get_mut(model.as_str())?;
                if !tracked.stale {
                    tracked.stale = true;
                    self.stale += 1;
                }
                Some(model.as_str())
            }
            // Its alerts ended with it: they no longer hold a gate closed.
            Output::Evicted { subject, .. } => {
                let model = subject.get("model")?;
                let tracked = self.models.get_mut(model.as_str())?;
                // Done with, and recorded on its object: read back if the
                // model comes again, so that the controller stays bounded.
                if self.read_back
                    && self.plans.plan_for(model).is_some_and(|p| p.read_back)
                    && matches!(
                        tracked.rollout.phase,
                        Phase::Complete | Phase::RolledBack { .. }
                    )
                {
                    if tracked.stale {
                        self.stale -= 1;
                    }
                    self.models.swap_remove(model.as_str());
                    self.hints.clear();
                    return None;
                }
                tracked.active.retain(|(_, s), _| s != subject);
                Some(model.as_str())
            }
        }
    }

    /// Steps `model`'s rollout to event time `now`.
    pub fn step(&mut self, model: &str, now: Timestamp, out: &mut Vec<Change>) {
        if let Some(tracked) = self.models.get_mut(model) {
            step_one(&self.plans, model, tracked, now, out);
            if let Some(named) = self.plans.plan_for(model) {
                self.next_due = earliest(self.next_due, due_of(&named.plan, &tracked.rollout));
            }
        }
    }

    /// Everything one event changed: `event` as the engine took it
    /// (`applied`, `at`: see [`Controller::observe`]), then the engine's
    /// `outputs` for it, at event time `now`
    /// (the watermark after it). A gating alert's change is stepped at its
    /// own time; a hold that ends is stepped at the first event after.
    /// Inlined into the consume loop: most events only count, and the
    /// call cost as much as the counting.
    #[inline(always)]
    pub fn after(
        &mut self,
        event: &Event,
        applied: bool,
        at: Option<SubjectRef>,
        outputs: &[Output],
        now: Timestamp,
    ) -> Vec<Change> {
        let due = self.next_due.is_some_and(|due| now >= due);
        if outputs.is_empty() && !due && self.counted(event, applied, at) {
            return Vec::new();
        }
        self.after_all(event, applied, at, outputs, now)
    }

    /// The common case, kept small for the consume loop: an event that
    /// needs nothing but counting (a known model's canary event of its
    /// own version, in a hold that has data) or nothing at all. False
    /// when it needs the whole path, which then counts it itself.
    #[inline(always)]
    fn counted(&mut self, event: &Event, applied: bool, at: Option<SubjectRef>) -> bool {
        let Some(version) = canary_version(event) else {
            return self.stale == 0 || !applied;
        };
        let Some((_, tracked)) = at
            .and_then(|at| self.hints.peek(at))
            .and_then(|index| self.models.get_index_mut(index))
        else {
            return false;
        };
        let same = version.is_empty() || tracked.rollout.version == version;
        if !same || tracked.stale || matches!(tracked.rollout.phase, Phase::WaitingForData) {
            return false;
        }
        tracked.requests += 1;
        true
    }

    /// The whole of [`Controller::after`]. Not inlined, so that the
    /// common case stays a few instructions in the consume loop.
    #[inline(never)]
    fn after_all(
        &mut self,
        event: &Event,
        applied: bool,
        at: Option<SubjectRef>,
        outputs: &[Output],
        now: Timestamp,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        if let Some(model) = self.observe(event, applied, at, now, &mut changes) {
            self.step(model, now, &mut changes);
        }
        if !outputs.is_empty() {
            self.outputs(outputs, now, &mut changes);
        }
        if self.next_due.is_some_and(|due| now >= due) {
            self.step_all(now, &mut changes);
        }
        self.noted(&changes);
        changes
    }

    /// What event time moving on to `now` with no event changed: the
    /// engine's `outputs` (timers), then every rollout stepped.
    pub fn advanced(&mut self, outputs: &[Output], now: Timestamp) -> Vec<Change> {
        let mut changes = Vec::new();
        self.outputs(outputs, now, &mut changes);
        if self.next_due.is_some_and(|due| now >= due) {
            self.step_all(now, &mut changes);
        }
        self.noted(&changes);
        changes
    }

    /// Takes `outputs`, stepping each model they concern at the output's
    /// time; returns those models.
    fn outputs(
        &mut self,
        outputs: &[Output],
        now: Timestamp,
        changes: &mut Vec<Change>,
    ) -> Vec<String> {
        let mut touched = Vec::new();
        for output in outputs {
            if let Some(model) = self.output(output) {
                let at = match output {
                    Output::Transition(t) => t.ts,
                    Output::Stale { ts, .. } | Output::Evicted { ts, .. } => *ts,
                };
                let model = model.to_string();
                self.step(&model, at.min(now), changes);
                touched.push(model);
            }
        }
        touched
    }

    /// `changes` were made (and each is recorded on its traffic object).
    fn noted(&mut self, changes: &[Change]) {
        self.changed |= !changes.is_empty();
        for change in changes {
            if let Some(tracked) = self.models.get_mut(&change.model) {
                tracked.recorded = tracked.recorded.max(change.ts);
            }
        }
    }

    /// The running rollouts whose state was last recorded `every` or more
    /// before event time `now`, stepped to `now`: a [`ChangeKind::Progress`]
    /// change for each, with its hold so far, for the traffic object, so
    /// that a new owner reading it back loses at most `every` of a hold. A
    /// step that decides something gives that change instead (it carries
    /// the state too). Only plans that read back have them.
    pub fn records_due(&mut self, now: Timestamp, every: Span) -> Vec<Change> {
        let mut out = Vec::new();
        if !self.read_back {
            return out;
        }
        let mut due: Vec<String> = self
            .models
            .iter()
            .filter(|(model, tracked)| {
                matches!(
                    tracked.rollout.phase,
                    Phase::Progressing | Phase::Soaking | Phase::WaitingForData
                ) && now.millis().saturating_sub(tracked.recorded.millis()) >= every.millis()
                    && self.plans.plan_for(model).is_some_and(|p| p.read_back)
            })
            .map(|(model, _)| model.clone())
            .collect();
        if due.is_empty() {
            return out;
        }
        due.sort_unstable();
        for model in due {
            let (Some(tracked), Some(named)) =
                (self.models.get_mut(&model), self.plans.plan_for(&model))
            else {
                continue;
            };
            let decided = out.len();
            step_one(&self.plans, &model, tracked, now, &mut out);
            if out.len() == decided {
                out.push(change_of(
                    &model,
                    tracked,
                    &named.plan,
                    ChangeKind::Progress,
                    false,
                    format!(
                        "{} of {} held",
                        tracked.rollout.held,
                        tracked.rollout.hold(&named.plan)
                    ),
                    now,
                ));
            }
        }
        self.noted(&out);
        self.recompute_due();
        out
    }

    /// Whether a rollout changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Every rollout's durable state, by model, for a checkpoint.
    pub fn state(&self) -> Vec<(String, Rollout)> {
        let mut all: Vec<(String, Rollout)> = self
            .models
            .iter()
            .map(|(m, t)| {
                // Canary events not yet stepped count as the stage's.
                let mut rollout = t.rollout.clone();
                rollout.requests = rollout.requests.saturating_add(t.requests);
                (m.clone(), rollout)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Takes back what [`Controller::state`] saved, with the gating alerts
    /// of a restored engine (`alerts`): the rollouts carry on where they
    /// stood, their hold clocks included.
    pub fn restore<'a>(
        &mut self,
        saved: Vec<(String, Rollout)>,
        alerts: impl Iterator<Item = AlertView<'a>>,
    ) {
        for (model, rollout) in saved {
            if self.plans.plan_for(&model).is_none() {
                continue;
            }
            self.models.insert(model, Tracked::new(rollout, 0));
        }
        for alert in alerts {
            let Some(model) = alert.subject.get("model") else {
                continue;
            };
            if let Some(tracked) = self.models.get_mut(model.as_str()) {
                seed_active(
                    &self.plans,
                    &self.rules,
                    model,
                    tracked,
                    std::iter::once(alert),
                );
            }
        }
        self.recompute_due();
    }

    /// A person's `command` for `model`'s rollout, at event time `now`.
    /// `Err` says why nothing changed: no rollout of the model here, or
    /// nothing to do where it stands.
    pub fn command(
        &mut self,
        model: &str,
        command: Command,
        now: Timestamp,
    ) -> Result<Vec<Change>, String> {
        let named = self
            .plans
            .plan_for(model)
            .ok_or_else(|| format!("no plan carries model `{model}`"))?;
        let tracked = self
            .models
            .get_mut(model)
            .ok_or_else(|| format!("no rollout of model `{model}` here"))?;
        let (verb, by) = match &command {
            Command::Pause { by } => ("paused", by.clone()),
            Command::Resume { by } => ("resumed", by.clone()),
            Command::Promote { by } => ("promoted", by.clone()),
            Command::Abort { by } => ("aborted", by.clone()),
        };
        let before = tracked.rollout.phase.clone();
        let decisions = tracked.rollout.command(&named.plan, command, now);
        let mut out = Vec::new();
        changes(model, tracked, &named.plan, decisions, now, &mut out);
        if out.is_empty() && tracked.rollout.phase != before {
            let kind = match tracked.rollout.phase {
                Phase::Paused { .. } => ChangeKind::Paused,
                _ => ChangeKind::Resumed,
            };
            // Resumed: the stage's weight again, over whatever a person set
            // while it was paused.
            let traffic = kind == ChangeKind::Resumed;
            out.push(change_of(
                model,
                tracked,
                &named.plan,
                kind,
                traffic,
                format!("{verb} by {by}"),
                now,
            ));
        }
        if out.is_empty() {
            return Err(format!(
                "nothing to do: the rollout of `{model}` is {}",
                tracked.rollout.phase
            ));
        }
        self.changed = true;
        tracked.recorded = now;
        self.next_due = earliest(self.next_due, due_of(&named.plan, &tracked.rollout));
        Ok(out)
    }

    /// Steps every rollout to event time `now`, in model order.
    pub fn step_all(&mut self, now: Timestamp, out: &mut Vec<Change>) {
        let mut models: Vec<&String> = self.models.keys().collect();
        models.sort_unstable();
        let models: Vec<String> = models.into_iter().cloned().collect();
        for model in &models {
            if let Some(tracked) = self.models.get_mut(model) {
                step_one(&self.plans, model, tracked, now, out);
            }
        }
        self.recompute_due();
    }

    /// The earliest end of any rollout's hold or soak.
    fn recompute_due(&mut self) {
        self.next_due = self
            .models
            .iter()
            .filter_map(|(model, t)| due_of(&self.plans.plan_for(model)?.plan, &t.rollout))
            .min();
    }
}

/// One step of one model's rollout to event time `now`.
fn step_one(
    plans: &Plans,
    model: &str,
    tracked: &mut Tracked,
    now: Timestamp,
    out: &mut Vec<Change>,
) {
    // Stopped rollouts take no step: skip the lookups on their alerts.
    if !tracked.rollout.phase.moves() {
        return;
    }
    let Some(named) = plans.plan_for(model) else {
        return;
    };
    let gate = gate(tracked);
    let seen = Step {
        now,
        canary_requests: std::mem::take(&mut tracked.requests),
        gate,
        reduce: std::mem::take(&mut tracked.reduce),
    };
    let waiting_before = tracked.rollout.phase == Phase::WaitingForData;
    let decisions = tracked.rollout.step(&named.plan, seen);
    let says_why = decisions
        .iter()
        .any(|d| matches!(d, Decision::RolledBack { .. } | Decision::Held(Some(_))));
    let rules = if says_why {
        blamed(tracked, gate)
    } else {
        None
    };
    let blame = |reason: String| match &rules {
        Some(rules) => format!("{reason}: {rules}"),
        None => reason,
    };
    let decisions = decisions
        .into_iter()
        .map(|d| match d {
            Decision::SetWeight {
                weight,
                cause: cause @ Cause::RolledBack,
                reason,
            } => Decision::SetWeight {
                weight,
                cause,
                reason: blame(reason),
            },
            Decision::RolledBack {
                reason,
                stage,
                weight,
            } => {
                let reason = blame(reason);
                tracked.rollout.phase = Phase::RolledBack {
                    reason: reason.clone(),
                };
                Decision::RolledBack {
                    reason,
                    stage,
                    weight,
                }
            }
            Decision::Held(Some(reason)) => Decision::Held(Some(blame(reason))),
            other => other,
        })
        .collect();
    changes(model, tracked, &named.plan, decisions, now, out);
    if !waiting_before && tracked.rollout.phase == Phase::WaitingForData {
        let wanted = named
            .plan
            .stages
            .get(tracked.rollout.stage)
            .map_or(1, |s| s.min_requests.max(1));
        out.push(change_of(
            model,
            tracked,
            &named.plan,
            ChangeKind::Paused,
            false,
            format!(
                "waiting for data: {} of {} canary events in the hold",
                tracked.rollout.requests, wanted
            ),
            now,
        ));
    }
}

/// Takes `model`'s gating alerts among `alerts` into its gate.
fn seed_active<'a>(
    plans: &Plans,
    rules: &RuleSet,
    model: &str,
    tracked: &mut Tracked,
    alerts: impl Iterator<Item = AlertView<'a>>,
) {
    let Some(named) = plans.plan_for(model) else {
        return;
    };
    for alert in alerts {
        if alert.subject.get("model").map(String::as_str) != Some(model)
            || alert.state.phase == AlertPhase::Inactive
        {
            continue;
        }
        if let Some(rule) = rules.get(alert.rule)
            && named.gating.gates(rule)
        {
            tracked.active.insert(
                (rule.name.clone(), alert.subject.clone()),
                (alert.state.phase, rule.severity),
            );
        }
    }
}

/// When `rollout`'s hold (or soak) ends if its clock keeps running, if it
/// is running.
fn due_of(plan: &Plan, rollout: &Rollout) -> Option<Timestamp> {
    let need = match rollout.phase {
        Phase::Progressing => plan.stages.get(rollout.stage)?.hold,
        Phase::Soaking => plan.soak,
        _ => return None,
    };
    let left = need.millis().saturating_sub(rollout.held.millis()).max(0);
    Some(rollout.last_step.plus(Span(left)))
}

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The worst state of a model's gating alerts, and the rules behind it.
fn gate(tracked: &Tracked) -> Gate {
    let worst = |phase: AlertPhase| {
        tracked
            .active
            .values()
            .filter(|(p, _)| *p == phase)
            .map(|(_, s)| *s)
            .max()
    };
    if let Some(severity) = worst(AlertPhase::Firing) {
        return Gate::Firing(severity);
    }
    if let Some(severity) = worst(AlertPhase::Pending) {
        return Gate::Pending(severity);
    }
    if tracked.stale {
        return Gate::Unknown;
    }
    Gate::Clean
}

/// The rules behind a closed `gate`, by name, for the reason people read.
fn blamed(tracked: &Tracked, gate: Gate) -> Option<String> {
    let (phase, severity) = match gate {
        Gate::Firing(s) => (AlertPhase::Firing, s),
        Gate::Pending(s) => (AlertPhase::Pending, s),
        Gate::Clean | Gate::Unknown => return None,
    };
    let mut names: Vec<&str> = tracked
        .active
        .iter()
        .filter(|(_, (p, s))| *p == phase && *s == severity)
        .map(|((name, _), _)| name.as_str())
        .collect();
    names.dedup();
    Some(names.join(", "))
}

/// The changes `decisions` make to a model's rollout.
fn changes(
    model: &str,
    tracked: &Tracked,
    plan: &Plan,
    decisions: Vec<Decision>,
    now: Timestamp,
    out: &mut Vec<Change>,
) {
    let promoted = decisions.contains(&Decision::Promoted);
    for decision in decisions {
        let (kind, traffic, reason) = match decision {
            Decision::SetWeight { cause, reason, .. } => match cause {
                Cause::Started => (ChangeKind::Stage, true, reason),
                // Promotion says it instead, with the reason.
                Cause::Passed if promoted => {
                    out.push(change_of(
                        model,
                        tracked,
                        plan,
                        ChangeKind::Promoted,
                        true,
                        reason,
                        now,
                    ));
                    continue;
                }
                Cause::Passed => (ChangeKind::Stage, true, reason),
                Cause::SteppedBack => (ChangeKind::SteppedBack, true, reason),
                Cause::Resumed => (ChangeKind::Resumed, true, reason),
                // The rollback's own decision says it, with the evidence.
                Cause::RolledBack => continue,
            },
            Decision::Promoted => continue,
            Decision::Completed => (
                ChangeKind::Complete,
                false,
                format!("soaked {} at 100%", plan.soak),
            ),
            Decision::RolledBack { reason, .. } => (ChangeKind::RolledBack, true, reason),
            Decision::Held(Some(reason)) => (ChangeKind::Paused, false, reason),
            Decision::Held(None) => (
                ChangeKind::Resumed,
                false,
                "gating rules clear: the hold clock runs".to_string(),
            ),
        };
        out.push(change_of(model, tracked, plan, kind, traffic, reason, now));
    }
}

fn change_of(
    model: &str,
    tracked: &Tracked,
    plan: &Plan,
    kind: ChangeKind,
    traffic: bool,
    reason: String,
    now: Timestamp,
) -> Change {
    Change {
        ts: now,
        model: model.to_string(),
        version: tracked.rollout.version.clone(),
        kind,
        weight: tracked.rollout.weight(plan),
        stage: tracked.rollout.stage + 1,
        traffic,
        reason,
        state: tracked.rollout.clone(),
    }
}
