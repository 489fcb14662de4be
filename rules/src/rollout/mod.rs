//! The progressive rollout: a canary carried from its first stage to 100%
//! through a plan's stages, each passed only on evidence. A pure `step`
//! function, driven by event time, like the alert state machine.
//!
//! A stage is passed when all of these hold:
//! - its hold has elapsed, counting only *clean* event time: time in which
//!   no gating rule was pending or firing and the gate was known. A gating
//!   alert (or an unknown gate, such as stale data) stops the clock until
//!   it clears, the soak's included. The caller steps every change of the
//!   gate at its own time, so the time up to a step that finds the gate
//!   closed was clean;
//! - the canary served at least the stage's `min_requests` (at least one)
//!   during it. Otherwise the rollout is *waiting for data*: never a pass,
//!   never a silent halt.
//!
//! On the way:
//! - a critical or high gating alert firing rolls back to 0% at once, and
//!   the version is never promoted again without a manual resume;
//! - a `reduce_traffic` decision steps back one stage and restarts its hold;
//! - a new canary version starts again from the first stage;
//! - at 100% the rollout is *promoted*, then soaks (a rollback is still
//!   possible) and is then complete: no more traffic changes until a new
//!   version.
//!
//! Unknown never promotes: only [`Gate::Clean`] moves the clock.

pub mod controller;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::policy::Severity;
use crate::time::{Span, Timestamp};

/// One stage of a plan: the canary's weight, and how long it must hold.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// The canary's share of traffic, in percent.
    pub weight: u8,
    /// Clean event time the stage must hold before the next one.
    pub hold: Span,
    /// Canary requests the stage must see during its hold (at least 1).
    #[serde(default = "one")]
    pub min_requests: u64,
}

fn one() -> u64 {
    1
}

/// The playbook's traffic progression: 5% for 1 h, 10% for 3 h, 25% for
/// 20 h, 50% for 24 h, then 100%.
pub fn playbook_stages() -> Vec<Stage> {
    let stage = |weight, hours: i64| Stage {
        weight,
        hold: Span::seconds(hours * 3600),
        min_requests: 1,
    };
    vec![stage(5, 1), stage(10, 3), stage(25, 20), stage(50, 24)]
}

/// The playbook's soak at 100%.
pub const PLAYBOOK_SOAK: Span = Span::seconds(24 * 3600);

/// Checks a plan's stages: weights strictly rising, each between 1 and 99
/// (100 is the promotion that follows the last stage), holds not negative.
pub fn check_stages(stages: &[Stage]) -> Vec<String> {
    let mut problems = Vec::new();
    if stages.is_empty() {
        problems.push("a plan needs at least one stage".to_string());
    }
    for (i, s) in stages.iter().enumerate() {
        if s.weight == 0 || s.weight >= 100 {
            problems.push(format!(
                "stage {}: weight {} must be between 1 and 99 (100 is the promotion after the last stage)",
                i + 1,
                s.weight
            ));
        }
        if i > 0 && s.weight <= stages[i - 1].weight {
            problems.push(format!(
                "stage {}: weight {} must be above the previous stage's {}",
                i + 1,
                s.weight,
                stages[i - 1].weight
            ));
        }
        if s.hold < Span::ZERO {
            problems.push(format!("stage {}: hold must not be negative", i + 1));
        }
    }
    problems
}

/// What the gating rules say over one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// No gating rule pending or firing, and every one could be evaluated.
    Clean,
    /// A gating rule could not be evaluated (no fresh data): the clock
    /// stops, as for an alert.
    Unknown,
    /// The worst gating rule pending, with its severity.
    Pending(Severity),
    /// The worst gating rule firing, with its severity.
    Firing(Severity),
}

/// Where a rollout stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum Phase {
    /// In a stage, its hold clock running.
    Progressing,
    /// In a stage whose hold is done, short of canary requests.
    WaitingForData,
    /// A gating alert or an unknown gate stops the hold clock.
    Held {
        /// Why, for people.
        reason: String,
    },
    /// Stopped by a person: no clock, no traffic change.
    Paused {
        /// Who.
        by: String,
    },
    /// At 100%, soaking; a rollback is still possible.
    Soaking,
    /// Done: no more traffic changes until a new version.
    Complete,
    /// At 0%; this version is promoted again only after a manual resume.
    RolledBack {
        /// Why.
        reason: String,
    },
}

impl Phase {
    /// Whether the controller still moves the weights on its own: not
    /// paused, complete or rolled back.
    pub fn moves(&self) -> bool {
        !matches!(
            self,
            Phase::Paused { .. } | Phase::Complete | Phase::RolledBack { .. }
        )
    }
}

/// A rollout's durable state: what is written on the traffic object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// The canary version this rollout carries.
    pub version: String,
    /// Index into the plan's stages; `stages.len()` is 100%.
    pub stage: usize,
    /// Event time the current stage began.
    pub stage_started: Timestamp,
    /// Clean event time held in this stage so far.
    pub held: Span,
    /// Canary requests seen in this stage so far.
    pub requests: u64,
    /// Event time of the last step.
    pub last_step: Timestamp,
    /// Where it stands.
    #[serde(flatten)]
    pub phase: Phase,
    /// The versions this model carried before, oldest first, at most
    /// [`RETIRED_VERSIONS`]: a late event of one, or a traffic object
    /// still naming one, never starts it again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retired: Vec<String>,
}

/// How many earlier versions a rollout remembers.
pub const RETIRED_VERSIONS: usize = 8;

/// What one step saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    /// Event time now (the watermark).
    pub now: Timestamp,
    /// Canary requests since the last step.
    pub canary_requests: u64,
    /// The gating rules.
    pub gate: Gate,
    /// A `reduce_traffic` decision for this model since the last step.
    pub reduce: bool,
}

/// What the controller must do, and record, after a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Set the canary's weight (the stable gets the rest).
    SetWeight {
        /// Percent.
        weight: u8,
        /// What moved it.
        cause: Cause,
        /// Why, for the audit trail and the object's annotations.
        reason: String,
    },
    /// The canary reached 100%.
    Promoted,
    /// The soak ended: the rollout is complete.
    Completed,
    /// Rolled back: open an incident ticket with the evidence.
    RolledBack {
        /// Why.
        reason: String,
        /// The stage it was in, and its weight.
        stage: usize,
        /// The weight before the rollback.
        weight: u8,
    },
    /// The hold clock stopped, or started again (`None`).
    Held(Option<String>),
}

/// What moved a canary's weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A new rollout's first stage.
    Started,
    /// A stage passed: the next one, or 100% after the last.
    Passed,
    /// `reduce_traffic`: back one stage.
    SteppedBack,
    /// A critical or high gating rule fired: 0%.
    RolledBack,
    /// Resumed after a rollback: the first stage again.
    Resumed,
}

/// A person's command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Stop the clock and every traffic change.
    Pause {
        /// Who.
        by: String,
    },
    /// Carry on: from a pause, where it stood; from a rollback, from the
    /// first stage again.
    Resume {
        /// Who.
        by: String,
    },
    /// Pass the current stage now, without its hold.
    Promote {
        /// Who.
        by: String,
    },
    /// Roll back to 0% now.
    Abort {
        /// Who.
        by: String,
    },
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Phase::Progressing => f.write_str("progressing"),
            Phase::WaitingForData => f.write_str("waiting for data"),
            Phase::Held { reason } => write!(f, "held: {reason}"),
            Phase::Paused { by } => write!(f, "paused by {by}"),
            Phase::Soaking => f.write_str("soaking at 100%"),
            Phase::Complete => f.write_str("complete"),
            Phase::RolledBack { reason } => write!(f, "rolled back: {reason}"),
        }
    }
}

/// A plan as the controller uses it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The stages before 100%.
    pub stages: Vec<Stage>,
    /// Soak time at 100% before the rollout is complete.
    pub soak: Span,
}

impl Plan {
    /// The weight of stage `i` (`stages.len()` is 100%).
    pub fn weight(&self, i: usize) -> u8 {
        self.stages.get(i).map_or(100, |s| s.weight)
    }
}

impl Rollout {
    /// A new rollout of `version`, in the first stage from `now`; the
    /// caller sets the first stage's weight.
    pub fn start(plan: &Plan, version: &str, now: Timestamp) -> (Rollout, Decision) {
        let rollout = Rollout {
            version: version.to_string(),
            stage: 0,
            stage_started: now,
            held: Span::ZERO,
            requests: 0,
            last_step: now,
            phase: Phase::Progressing,
            retired: Vec::new(),
        };
        let weight = plan.weight(0);
        let decision = Decision::SetWeight {
            weight,
            cause: Cause::Started,
            reason: if version.is_empty() {
                format!("a canary (no version label): stage 1 at {weight}%")
            } else {
                format!("new canary version {version}: stage 1 at {weight}%")
            },
        };
        (rollout, decision)
    }

    /// [`Rollout::start`] of `version`, which replaces `self`: `self`'s
    /// version is retired.
    pub fn succeed(&self, plan: &Plan, version: &str, now: Timestamp) -> (Rollout, Decision) {
        let (mut next, decision) = Rollout::start(plan, version, now);
        next.retired = self.retired.clone();
        next.retired.retain(|v| v != &self.version && v != version);
        // No label is not a version: unlabelled events count for any.
        if !self.version.is_empty() {
            next.retired.push(self.version.clone());
        }
        if next.retired.len() > RETIRED_VERSIONS {
            next.retired.remove(0);
        }
        (next, decision)
    }

    /// Whether `version` was carried before and replaced.
    pub fn retired(&self, version: &str) -> bool {
        self.retired.iter().any(|v| v == version)
    }

    /// The canary's weight as the plan puts it now.
    pub fn weight(&self, plan: &Plan) -> u8 {
        match self.phase {
            Phase::RolledBack { .. } => 0,
            _ => plan.weight(self.stage),
        }
    }

    /// The clean event time the current stage (or the soak) holds for;
    /// zero once complete or rolled back.
    pub fn hold(&self, plan: &Plan) -> Span {
        match self.phase {
            Phase::Complete | Phase::RolledBack { .. } => Span::ZERO,
            _ => plan.stages.get(self.stage).map_or(plan.soak, |s| s.hold),
        }
    }

    /// How much of [`hold`](Self::hold) is still to go.
    pub fn hold_remaining(&self, plan: &Plan) -> Span {
        Span(
            self.hold(plan)
                .millis()
                .saturating_sub(self.held.millis())
                .max(0),
        )
    }

    /// One step of event time. Returns what to do, in order.
    pub fn step(&mut self, plan: &Plan, seen: Step) -> Vec<Decision> {
        let mut out = Vec::new();
        let elapsed = Span(
            seen.now
                .millis()
                .saturating_sub(self.last_step.millis())
                .max(0),
        );
        self.last_step = self.last_step.max(seen.now);
        if !self.phase.moves() {
            return out;
        }
        // A rollback needs no hold: it happens at once, soaking included.
        if let Gate::Firing(severity) = seen.gate
            && severity >= Severity::High
        {
            let reason = format!("a {severity} gating rule fired");
            self.roll_back(plan, reason, &mut out);
            return out;
        }
        let hold_reason = match seen.gate {
            Gate::Clean => None,
            Gate::Unknown => Some("a gating rule has no fresh data".to_string()),
            Gate::Pending(s) => Some(format!("a {s} gating rule is pending")),
            Gate::Firing(s) => Some(format!("a {s} gating rule is firing")),
        };
        if seen.reduce && self.stage < plan.stages.len() {
            let from = plan.weight(self.stage);
            self.stage = self.stage.saturating_sub(1);
            self.restart_stage(seen.now);
            let weight = plan.weight(self.stage);
            out.push(Decision::SetWeight {
                weight,
                cause: Cause::SteppedBack,
                reason: format!(
                    "reduce_traffic: back to stage {} ({from}% -> {weight}%), its hold restarted",
                    self.stage + 1
                ),
            });
            // The rule that asked is still firing: the restarted hold
            // waits for it, as any stage's does.
            if let Some(reason) = hold_reason {
                self.phase = Phase::Held {
                    reason: reason.clone(),
                };
                out.push(Decision::Held(Some(reason)));
            }
            return out;
        }
        if let Some(reason) = hold_reason {
            if !matches!(self.phase, Phase::Held { .. }) {
                // Clean up to this step: the caller steps every change of
                // the gate at its own time.
                self.held = Span(self.held.millis().saturating_add(elapsed.millis()));
                self.requests = self.requests.saturating_add(seen.canary_requests);
            }
            let phase = Phase::Held {
                reason: reason.clone(),
            };
            if self.phase != phase {
                self.phase = phase;
                out.push(Decision::Held(Some(reason)));
            }
            return out;
        }
        // Held until this step: the clock starts again from here.
        let elapsed = if matches!(self.phase, Phase::Held { .. }) {
            self.phase = if self.stage >= plan.stages.len() {
                Phase::Soaking
            } else {
                Phase::Progressing
            };
            out.push(Decision::Held(None));
            Span::ZERO
        } else {
            elapsed
        };
        // Clean from here on: the clock runs, and requests count.
        self.held = Span(self.held.millis().saturating_add(elapsed.millis()));
        self.requests = self.requests.saturating_add(seen.canary_requests);
        if self.phase == Phase::Soaking {
            if self.held >= plan.soak {
                self.phase = Phase::Complete;
                out.push(Decision::Completed);
            }
            return out;
        }
        let Some(stage) = plan.stages.get(self.stage) else {
            // Past the last stage without soaking (a plan with no stages):
            // there is nothing left to pass.
            return out;
        };
        if self.held < stage.hold {
            return out;
        }
        if self.requests < stage.min_requests.max(1) {
            self.phase = Phase::WaitingForData;
            return out;
        }
        // Passed.
        let from = plan.weight(self.stage);
        let (held, requests) = (self.held, self.requests);
        self.stage += 1;
        self.restart_stage(seen.now);
        let weight = plan.weight(self.stage);
        out.push(Decision::SetWeight {
            weight,
            cause: Cause::Passed,
            reason: format!(
                "stage {} passed ({from}%, held {held} clean, {requests} canary events): now {weight}%",
                self.stage,
            ),
        });
        if self.stage >= plan.stages.len() {
            self.phase = Phase::Soaking;
            out.push(Decision::Promoted);
        }
        out
    }

    /// A person's command.
    pub fn command(&mut self, plan: &Plan, command: Command, now: Timestamp) -> Vec<Decision> {
        match command {
            Command::Pause { by } => {
                if matches!(self.phase, Phase::Complete | Phase::RolledBack { .. }) {
                    return Vec::new();
                }
                self.phase = Phase::Paused { by };
                Vec::new()
            }
            Command::Resume { by } => match self.phase {
                Phase::Paused { .. } => {
                    self.last_step = now;
                    self.phase = if self.stage >= plan.stages.len() {
                        Phase::Soaking
                    } else {
                        Phase::Progressing
                    };
                    Vec::new()
                }
                Phase::RolledBack { .. } => {
                    self.stage = 0;
                    self.restart_stage(now);
                    let weight = plan.weight(0);
                    vec![Decision::SetWeight {
                        weight,
                        cause: Cause::Resumed,
                        reason: format!("resumed by {by} after a rollback: stage 1 at {weight}%"),
                    }]
                }
                _ => Vec::new(),
            },
            Command::Promote { by } => {
                if matches!(self.phase, Phase::Complete | Phase::RolledBack { .. })
                    || self.stage >= plan.stages.len()
                {
                    return Vec::new();
                }
                let from = plan.weight(self.stage);
                self.stage += 1;
                self.restart_stage(now);
                let weight = plan.weight(self.stage);
                let mut out = vec![Decision::SetWeight {
                    weight,
                    cause: Cause::Passed,
                    reason: format!(
                        "promoted by {by}: stage {} skipped its hold ({from}% -> {weight}%)",
                        self.stage
                    ),
                }];
                if self.stage >= plan.stages.len() {
                    self.phase = Phase::Soaking;
                    out.push(Decision::Promoted);
                }
                out
            }
            Command::Abort { by } => {
                if matches!(self.phase, Phase::Complete | Phase::RolledBack { .. }) {
                    return Vec::new();
                }
                let mut out = Vec::new();
                self.roll_back(plan, format!("aborted by {by}"), &mut out);
                out
            }
        }
    }

    fn roll_back(&mut self, plan: &Plan, reason: String, out: &mut Vec<Decision>) {
        let weight = plan.weight(self.stage);
        out.push(Decision::SetWeight {
            weight: 0,
            cause: Cause::RolledBack,
            reason: format!("rollback: {reason}"),
        });
        out.push(Decision::RolledBack {
            reason: reason.clone(),
            stage: self.stage,
            weight,
        });
        self.phase = Phase::RolledBack { reason };
    }

    fn restart_stage(&mut self, now: Timestamp) {
        self.stage_started = now;
        self.held = Span::ZERO;
        self.requests = 0;
        self.last_step = now;
        self.phase = Phase::Progressing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn plan() -> Plan {
        Plan {
            stages: vec![
                Stage {
                    weight: 5,
                    hold: Span(10 * MIN),
                    min_requests: 100,
                },
                Stage {
                    weight: 50,
                    hold: Span(10 * MIN),
                    min_requests: 1,
                },
            ],
            soak: Span(30 * MIN),
        }
    }

    fn at(minutes: i64) -> Timestamp {
        Timestamp(minutes * MIN)
    }

    fn clean(minutes: i64, requests: u64) -> Step {
        Step {
            now: at(minutes),
            canary_requests: requests,
            gate: Gate::Clean,
            reduce: false,
        }
    }

    fn weights(decisions: &[Decision]) -> Vec<u8> {
        decisions
            .iter()
            .filter_map(|d| match d {
                Decision::SetWeight { weight, .. } => Some(*weight),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_playbook_plan_is_5_10_25_50_then_100_and_checks_clean() {
        let stages = playbook_stages();
        let w: Vec<u8> = stages.iter().map(|s| s.weight).collect();
        assert_eq!(w, [5, 10, 25, 50]);
        let hours: Vec<i64> = stages.iter().map(|s| s.hold.millis() / 3_600_000).collect();
        assert_eq!(hours, [1, 3, 20, 24]);
        assert!(check_stages(&stages).is_empty());
        assert_eq!(PLAYBOOK_SOAK, Span::seconds(86_400));
    }

    #[test]
    fn bad_plans_are_named() {
        let s = |weight, hold| Stage {
            weight,
            hold: Span(hold),
            min_requests: 1,
        };
        let problems = check_stages(&[s(10, 0), s(10, 0), s(100, 0), s(0, -1)]).join("\n");
        assert!(
            problems.contains("stage 2: weight 10 must be above"),
            "{problems}"
        );
        assert!(
            problems.contains("stage 3: weight 100 must be between 1 and 99"),
            "{problems}"
        );
        assert!(
            problems.contains("stage 4: hold must not be negative"),
            "{problems}"
        );
        assert!(check_stages(&[]).join("").contains("at least one stage"));
    }

    #[test]
    fn a_healthy_canary_walks_every_stage_then_soaks_and_completes() {
        let p = plan();
        let (mut r, first) = Rollout::start(&p, "v2", at(0));
        assert_eq!(weights(&[first]), [5]);
        assert!(r.step(&p, clean(5, 60)).is_empty());
        assert_eq!(
            (r.hold(&p), r.hold_remaining(&p)),
            (Span(10 * MIN), Span(5 * MIN))
        );
        let out = r.step(&p, clean(10, 60));
        assert_eq!(weights(&out), [50], "{out:?}");
        assert_eq!((r.stage, r.held, r.requests), (1, Span::ZERO, 0));
        let out = r.step(&p, clean(20, 1));
        assert_eq!(weights(&out), [100]);
        assert!(out.contains(&Decision::Promoted));
        assert_eq!(r.phase, Phase::Soaking);
        assert!(r.step(&p, clean(49, 0)).is_empty());
        assert_eq!(r.hold_remaining(&p), Span(MIN), "the soak's");
        assert_eq!(r.step(&p, clean(50, 0)), [Decision::Completed]);
        assert_eq!(r.hold_remaining(&p), Span::ZERO);
        // Complete: nothing moves any more.
        assert!(
            r.step(
                &p,
                Step {
                    gate: Gate::Firing(Severity::Critical),
                    ..clean(60, 0)
                }
            )
            .is_empty()
        );
    }

    #[test]
    fn a_silent_canary_waits_for_data_and_never_passes() {
        let p = plan();
        let (mut r, _) = Rollout::start(&p, "v2", at(0));
        assert!(r.step(&p, clean(10, 99)).is_empty());
        assert_eq!(r.phase, Phase::WaitingForData);
        assert!(
            r.step(&p, clean(600, 0)).is_empty(),
            "hours later, still no pass"
        );
        assert_eq!(r.stage, 0);
        let out = r.step(&p, clean(601, 1));
        assert_eq!(weights(&out), [50], "the 100th request passes it");
    }

    #[test]
    fn a_pending_or_unknown_gate_stops_the_clock_and_clean_time_resumes_it() {
        let p = plan();
        let (mut r, _) = Rollout::start(&p, "v2", at(0));
        r.step(&p, clean(4, 200));
        let held = r.step(
            &p,
            Step {
                gate: Gate::Pending(Severity::Low),
                ..clean(5, 0)
            },
        );
        assert_eq!(
            held,
            [Decision::Held(Some("a low gating rule is pending".into()))]
        );
        // Unknown (stale data) holds too, and never promotes.
        for m in [7, 20, 40] {
            let out = r.step(
                &p,
                Step {
                    gate: Gate::Unknown,
                    ..clean(m, 0)
                },
            );
            assert!(weights(&out).is_empty(), "{out:?}");
        }
        // Up to the step that found it pending (the caller steps each
        // change of the gate at its time), then nothing while held.
        assert_eq!(r.held, Span(5 * MIN), "only clean time counted");
        let out = r.step(&p, clean(41, 0));
        assert_eq!(out, [Decision::Held(None)]);
        assert_eq!(r.stage, 0);
        // 5 + 0 (the step that clears) + 5 = 10 minutes of clean time.
        assert!(weights(&r.step(&p, clean(45, 0))).is_empty());
        assert_eq!(weights(&r.step(&p, clean(46, 0))), [50]);
    }

    #[test]
    fn high_or_critical_firing_rolls_back_at_once_and_only_a_resume_starts_again() {
        for severity in [Severity::High, Severity::Critical] {
            let p = plan();
            let (mut r, _) = Rollout::start(&p, "v2", at(0));
            r.step(&p, clean(10, 200));
            assert_eq!(r.stage, 1);
            let out = r.step(
                &p,
                Step {
                    gate: Gate::Firing(severity),
                    ..clean(11, 5)
                },
            );
            assert_eq!(weights(&out), [0]);
            assert!(
                matches!(
                    &out[1],
                    Decision::RolledBack {
                        stage: 1,
                        weight: 50,
                        ..
                    }
                ),
                "{out:?}"
            );
            assert_eq!(r.weight(&p), 0);
            assert!(
                r.step(&p, clean(500, 10_000)).is_empty(),
                "never promoted again on its own"
            );
            let out = r.command(
                &p,
                Command::Resume {
                    by: "oncall".into(),
                },
                at(501),
            );
            assert_eq!(weights(&out), [5]);
            assert_eq!((r.stage, r.phase.clone()), (0, Phase::Progressing));
        }
        // Medium or low firing holds instead (their own actions act).
        let p = plan();
        let (mut r, _) = Rollout::start(&p, "v2", at(0));
        let out = r.step(
            &p,
            Step {
                gate: Gate::Firing(Severity::Medium),
                ..clean(1, 0)
            },
        );
        assert!(weights(&out).is_empty());
        assert!(matches!(r.phase, Phase::Held { .. }));
    }

    #[test]
    fn reduce_traffic_steps_back_one_stage_and_restarts_its_hold() {
        let p = plan();
        let (mut r, _) = Rollout::start(&p, "v2", at(0));
        r.step(&p, clean(10, 200));
        r.step(&p, clean(15, 1));
        let out = r.step(
            &p,
            Step {
                reduce: true,
                ..clean(16, 0)
            },
        );
        assert_eq!(weights(&out), [5]);
        assert_eq!((r.stage, r.held, r.stage_started), (0, Span::ZERO, at(16)));
        // At the first stage, it stays there, its hold restarted.
        let out = r.step(
            &p,
            Step {
                reduce: true,
                ..clean(20, 0)
            },
        );
        assert_eq!(weights(&out), [5]);
        assert_eq!(r.stage_started, at(20));
    }

    #[test]
    fn a_soaking_rollout_can_still_roll_back_and_a_pause_stops_everything() {
        let p = plan();
        let (mut r, _) = Rollout::start(&p, "v2", at(0));
        r.step(&p, clean(10, 200));
        r.step(&p, clean(20, 1));
        assert_eq!(r.phase, Phase::Soaking);
        r.command(&p, Command::Pause { by: "alice".into() }, at(21));
        assert!(
            r.step(
                &p,
                Step {
                    gate: Gate::Firing(Severity::Critical),
                    ..clean(22, 0)
                }
            )
            .is_empty()
        );
        r.command(&p, Command::Resume { by: "alice".into() }, at(23));
        assert_eq!(r.phase, Phase::Soaking);
        let out = r.step(
            &p,
            Step {
                gate: Gate::Firing(Severity::Critical),
                ..clean(24, 0)
            },
        );
        assert_eq!(weights(&out), [0]);
    }

    #[test]
    fn time_going_backwards_adds_nothing() {
        let p = plan();
        let (mut r, _) = Rollout::start(&p, "v2", at(10));
        r.step(&p, clean(5, 1));
        assert_eq!(r.held, Span::ZERO);
        assert_eq!(r.last_step, at(10));
    }

    #[test]
    fn the_state_round_trips_as_json_for_the_traffic_object() {
        let p = plan();
        let (mut r, _) = Rollout::start(&p, "v2", at(0));
        r.step(
            &p,
            Step {
                gate: Gate::Pending(Severity::Low),
                ..clean(3, 7)
            },
        );
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""phase":"held""#), "{text}");
        let back: Rollout = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
