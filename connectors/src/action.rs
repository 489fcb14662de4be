//! Actions and their outcomes.

use std::collections::BTreeMap;

use canaryd_rules::condition::Threshold;
use canaryd_rules::{ActionName, Severity, Span, Subject, Timestamp};
use serde::{Deserialize, Serialize};

/// One thing to do because a rule fired for a subject.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Rule + subject + when the firing episode started. A re-fired or
    /// re-delivered action with the same key must not act twice.
    pub key: String,
    /// Event time at which the rule fired.
    pub ts: Timestamp,
    /// The rule that fired.
    pub rule: String,
    /// The subject, e.g. `{model: summarizer}`.
    pub subject: BTreeMap<String, String>,
    /// What to do.
    pub action: ActionName,
    /// The rule's severity.
    pub severity: Severity,
    /// How long the action may take before it escalates.
    pub deadline: Span,
    /// Record only; never act.
    pub dry_run: bool,
    /// Why.
    pub evidence: Evidence,
    /// Rule labels plus rendered annotations (summary, runbook link).
    pub labels: BTreeMap<String, String>,
    /// Rendered annotations.
    pub annotations: BTreeMap<String, String>,
    /// For `shift_traffic`, from the rollout controller: the weight to set
    /// and the rollout's state to record with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficChange>,
}

/// A rollout's traffic change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficChange {
    /// The canary's weight, in percent of the canary and stable pair.
    pub weight: u8,
    /// The rollout's state (JSON), recorded on the traffic object in the
    /// same write as the weight. Its `at` (event time, milliseconds) orders
    /// changes: one older than what the object records is not applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// The change's event time, in milliseconds: a later change recorded
    /// on the object supersedes this one.
    #[serde(default)]
    pub at: i64,
    /// A person resumed the rollout: the weights on the object are taken as
    /// they are, even if someone else changed them since canaryd did.
    #[serde(default)]
    pub adopt: bool,
    /// Only `state` is written, never the weights: a change that moves no
    /// traffic (a pause, the hold so far), for a new owner to read back.
    /// Without `adopt`, it is written only while `weight` is in place.
    #[serde(default)]
    pub record: bool,
}

impl Action {
    /// The idempotency key for a rule, subject and firing episode.
    pub fn key_for(
        rule: &str,
        subject: &BTreeMap<String, String>,
        active_since: Timestamp,
    ) -> String {
        format!("{rule}|{}|{}", Subject(subject), active_since.millis())
    }

    /// A short digest of the key (16 hex digits), stable across builds and
    /// processes, for receivers that limit how long a key may be.
    pub fn key_digest(&self) -> String {
        // FNV-1a, 64 bits: stable across builds, unlike std's hasher.
        let hash = self.key.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{hash:016x}")
    }
}

/// The facts behind an action.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    /// The condition as written.
    pub condition: String,
    /// The condition's variables when it fired.
    pub values: BTreeMap<String, f64>,
    /// What each compared variable was held against.
    pub thresholds: Vec<Threshold>,
    /// How long the condition had to hold.
    pub duration: Span,
    /// When the condition started holding.
    pub since: Timestamp,
}

/// What became of an action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Queued for a connector.
    Accepted,
    /// Done (or, in dry run, recorded as what would be done).
    Succeeded,
    /// Failed in a way worth retrying; will be retried.
    Retried,
    /// Failed for good.
    Failed,
    /// Given up on and stored for a human.
    DeadLettered,
    /// Missed its deadline or failed; on-call was told.
    Escalated,
}

impl OutcomeKind {
    /// Every kind, for metrics declared before the first action.
    pub const ALL: [OutcomeKind; 6] = [
        OutcomeKind::Accepted,
        OutcomeKind::Succeeded,
        OutcomeKind::Retried,
        OutcomeKind::Failed,
        OutcomeKind::DeadLettered,
        OutcomeKind::Escalated,
    ];

    /// The snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Accepted => "accepted",
            OutcomeKind::Succeeded => "succeeded",
            OutcomeKind::Retried => "retried",
            OutcomeKind::Failed => "failed",
            OutcomeKind::DeadLettered => "dead_lettered",
            OutcomeKind::Escalated => "escalated",
        }
    }
}

/// An outcome with the details a human needs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Outcome {
    /// The action's idempotency key.
    pub key: String,
    /// Which connector reported it.
    pub connector: String,
    /// What happened.
    pub kind: OutcomeKind,
    /// True when nothing was changed because of dry run.
    pub dry_run: bool,
    /// Human-readable detail.
    pub detail: String,
}

impl Outcome {
    /// `connector` carried `action` out (or, with `dry_run`, recorded what it would do).
    pub fn succeeded(connector: &str, action: &Action, dry_run: bool, detail: String) -> Outcome {
        Outcome {
            key: action.key.clone(),
            connector: connector.to_string(),
            kind: OutcomeKind::Succeeded,
            dry_run,
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OutcomeKind;

    #[test]
    fn outcome_names_are_their_serialized_form() {
        for kind in OutcomeKind::ALL {
            let json = serde_json::to_value(kind).unwrap_or_default();
            assert_eq!(json.as_str(), Some(kind.as_str()));
        }
    }
}
