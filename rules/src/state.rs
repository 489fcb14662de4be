//! The alert state machine: inactive → pending → firing → resolved, in
//! event time. A pure function of (state, observation, now), so that every
//! behaviour is a row in a table-driven test.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::time::{Span, Timestamp};

/// Where an alert is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The condition does not hold (or never has).
    #[default]
    Inactive,
    /// The condition holds, but not yet for the rule's duration.
    Pending,
    /// The condition has held for the duration; actions were taken.
    Firing,
    /// Was firing; the condition stopped holding.
    Resolved,
}

impl Phase {
    /// The snake_case name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Inactive => "inactive",
            Phase::Pending => "pending",
            Phase::Firing => "firing",
            Phase::Resolved => "resolved",
        }
    }

    /// Pending or firing.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Pending | Phase::Firing)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one evaluation of a condition found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observation {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// A variable it reads is missing, stale or has too few samples.
    /// Neither true nor false: the alert keeps its phase and its timers
    /// neither start nor complete.
    #[default]
    NoData,
}

/// How long a condition must hold, and how long firing outlives it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// The rule's `duration`.
    pub hold: Span,
    /// The rule's `keep_firing_for`.
    pub keep_firing_for: Span,
}

/// One alert: one rule for one subject. Serialisable, so that state can be
/// carried across reloads and restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertState {
    /// Current phase.
    pub phase: Phase,
    /// When the condition started holding, for pending and firing alerts.
    /// With the rule and subject it identifies one firing episode.
    pub active_since: Option<Timestamp>,
    /// When the alert last became firing.
    pub fired_at: Option<Timestamp>,
    /// When the alert last resolved.
    pub resolved_at: Option<Timestamp>,
    /// The last time the condition held, for `keep_firing_for`.
    pub last_true: Option<Timestamp>,
    /// The most recent observation.
    pub last: Observation,
    /// When the alert was last evaluated.
    pub evaluated_at: Option<Timestamp>,
}

/// A change of phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change {
    /// Phase before.
    pub from: Phase,
    /// Phase after.
    pub to: Phase,
}

impl AlertState {
    /// The earliest time at which, with no new observation, the phase could
    /// change: when a pending alert's duration completes, or when a firing
    /// alert's `keep_firing_for` runs out.
    pub fn due(&self, timing: &Timing) -> Option<Timestamp> {
        match (self.phase, self.last) {
            (Phase::Pending, Observation::True) => self.active_since.map(|t| t.plus(timing.hold)),
            (Phase::Firing, Observation::False) => {
                self.last_true.map(|t| t.plus(timing.keep_firing_for))
            }
            _ => None,
        }
    }
}

/// Advances one alert by one observation at `now`. Returns the change of
/// phase, if any. `now` must not go backwards for one alert; the engine
/// guarantees that by evaluating at its watermark.
pub fn step(
    state: &mut AlertState,
    obs: Observation,
    now: Timestamp,
    timing: &Timing,
) -> Option<Change> {
    let from = state.phase;
    state.last = obs;
    state.evaluated_at = Some(now);
    let to = match (from, obs) {
        (_, Observation::NoData) => from,
        (Phase::Inactive | Phase::Resolved, Observation::True) => {
            state.active_since = Some(now);
            state.last_true = Some(now);
            if timing.hold == Span::ZERO {
                state.fired_at = Some(now);
                Phase::Firing
            } else {
                Phase::Pending
            }
        }
        (Phase::Pending, Observation::True) => {
            state.last_true = Some(now);
            let since = state.active_since.unwrap_or(now);
            if now.since(since) >= timing.hold {
                state.fired_at = Some(now);
                Phase::Firing
            } else {
                Phase::Pending
            }
        }
        (Phase::Firing, Observation::True) => {
            state.last_true = Some(now);
            Phase::Firing
        }
        (Phase::Pending, Observation::False) => {
            state.active_since = None;
            Phase::Inactive
        }
        (Phase::Firing, Observation::False) => {
            let last_true = state.last_true.unwrap_or(now);
            if now.since(last_true) >= timing.keep_firing_for {
                state.resolved_at = Some(now);
                Phase::Resolved
            } else {
                Phase::Firing
            }
        }
        (Phase::Inactive | Phase::Resolved, Observation::False) => from,
    };
    state.phase = to;
    (from != to).then_some(Change { from, to })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Observation::*;
    use Phase::*;

    fn t(s: i64) -> Timestamp {
        Timestamp(s * 1000)
    }

    /// Runs `(at_seconds, observation, expected phase)` rows through one alert.
    fn run(timing: Timing, rows: &[(i64, Observation, Phase)]) {
        let mut state = AlertState::default();
        for (i, &(at, obs, want)) in rows.iter().enumerate() {
            step(&mut state, obs, t(at), &timing);
            assert_eq!(state.phase, want, "row {i}: at {at}s observing {obs:?}");
        }
    }

    const FIVE_MIN: Timing = Timing {
        hold: Span(300_000),
        keep_firing_for: Span::ZERO,
    };

    #[test]
    fn fires_only_after_holding_for_the_duration() {
        run(
            FIVE_MIN,
            &[
                (0, True, Pending),
                (299, True, Pending),
                (300, True, Firing),
                (400, False, Resolved),
            ],
        );
    }

    #[test]
    fn a_false_observation_resets_pending() {
        run(
            FIVE_MIN,
            &[
                (0, True, Pending),
                (200, False, Inactive),
                (250, True, Pending),
                (500, True, Pending),
                (550, True, Firing),
            ],
        );
    }

    #[test]
    fn zero_duration_fires_on_first_match() {
        let timing = Timing {
            hold: Span::ZERO,
            keep_firing_for: Span::ZERO,
        };
        run(
            timing,
            &[
                (0, False, Inactive),
                (1, True, Firing),
                (2, False, Resolved),
                (3, True, Firing),
            ],
        );
    }

    #[test]
    fn no_data_neither_fires_nor_resolves() {
        run(
            FIVE_MIN,
            &[
                (0, NoData, Inactive),
                (10, True, Pending),
                (400, NoData, Pending),
                (401, True, Firing),
                (500, NoData, Firing),
                (900, NoData, Firing),
                (901, False, Resolved),
            ],
        );
    }

    #[test]
    fn keep_firing_for_delays_resolution() {
        let timing = Timing {
            hold: Span::ZERO,
            keep_firing_for: Span(60_000),
        };
        run(
            timing,
            &[
                (0, True, Firing),
                (30, False, Firing),
                (59, False, Firing),
                (60, True, Firing),
                (100, False, Firing),
                (120, False, Resolved),
            ],
        );
    }

    #[test]
    fn a_resolved_alert_starts_a_new_episode() {
        let mut state = AlertState::default();
        step(&mut state, True, t(0), &FIVE_MIN);
        step(&mut state, True, t(300), &FIVE_MIN);
        step(&mut state, False, t(301), &FIVE_MIN);
        assert_eq!(state.phase, Resolved);
        step(&mut state, True, t(302), &FIVE_MIN);
        assert_eq!(state.phase, Pending);
        assert_eq!(
            state.active_since,
            Some(t(302)),
            "new episode, new identity"
        );
    }

    #[test]
    fn due_tells_when_time_alone_changes_the_phase() {
        let mut state = AlertState::default();
        assert_eq!(state.due(&FIVE_MIN), None);
        step(&mut state, True, t(10), &FIVE_MIN);
        assert_eq!(state.due(&FIVE_MIN), Some(t(310)));
        step(&mut state, NoData, t(20), &FIVE_MIN);
        assert_eq!(
            state.due(&FIVE_MIN),
            None,
            "no data must not complete a duration"
        );
        let keep = Timing {
            hold: Span::ZERO,
            keep_firing_for: Span(60_000),
        };
        let mut state = AlertState::default();
        step(&mut state, True, t(0), &keep);
        step(&mut state, False, t(5), &keep);
        assert_eq!(state.due(&keep), Some(t(60)));
    }

    #[test]
    fn transitions_are_reported_once() {
        let mut state = AlertState::default();
        assert_eq!(
            step(&mut state, True, t(0), &FIVE_MIN),
            Some(Change {
                from: Inactive,
                to: Pending
            })
        );
        assert_eq!(step(&mut state, True, t(1), &FIVE_MIN), None);
        assert_eq!(
            step(&mut state, True, t(300), &FIVE_MIN),
            Some(Change {
                from: Pending,
                to: Firing
            })
        );
        assert_eq!(step(&mut state, True, t(301), &FIVE_MIN), None);
    }
}
