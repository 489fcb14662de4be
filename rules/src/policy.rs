//! Severities, action names and the playbook's rollback decision matrix.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::time::Span;

/// How bad a firing rule is. Ordered from least to most severe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Minor issues: keep monitoring, prepare a rollback.
    Low,
    /// Performance degradation: reduce traffic or roll back.
    Medium,
    /// For example an error rate above 5 %: roll back.
    High,
    /// Service down: roll back immediately.
    Critical,
}

impl Severity {
    /// All severities, most severe first.
    pub const ALL: [Severity; 4] = [
        Severity::Critical,
        Severity::High,
        Severity::Medium,
        Severity::Low,
    ];

    /// The lowercase name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Severity {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Severity::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or(())
    }
}

/// What a firing rule asks canaryd to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionName {
    /// Set the canary's traffic weight to 0.
    AutoRollback,
    /// Lower the canary's traffic weight by the configured step.
    ReduceTraffic,
    /// Page the on-call engineer.
    NotifyOnCall,
    /// Tell the ML team (fairness, quality).
    NotifyMlTeam,
    /// Tell FinOps (cost).
    NotifyFinops,
    /// Set the canary's traffic weight to a rollout stage's: the rollout
    /// controller's own action, which rules cannot name.
    ShiftTraffic,
}

impl ActionName {
    /// Every action a rule may name, in the order the README lists them.
    pub const ALL: [ActionName; 5] = [
        ActionName::AutoRollback,
        ActionName::ReduceTraffic,
        ActionName::NotifyOnCall,
        ActionName::NotifyMlTeam,
        ActionName::NotifyFinops,
    ];

    /// The snake_case name used in rule files.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionName::AutoRollback => "auto_rollback",
            ActionName::ReduceTraffic => "reduce_traffic",
            ActionName::NotifyOnCall => "notify_on_call",
            ActionName::NotifyMlTeam => "notify_ml_team",
            ActionName::NotifyFinops => "notify_finops",
            ActionName::ShiftTraffic => "shift_traffic",
        }
    }

    /// Whether the action changes traffic rather than telling people.
    pub fn changes_traffic(self) -> bool {
        matches!(
            self,
            ActionName::AutoRollback | ActionName::ReduceTraffic | ActionName::ShiftTraffic
        )
    }
}

impl fmt::Display for ActionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ActionName {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        ActionName::ALL
            .into_iter()
            .find(|v| v.as_str() == s)
            .ok_or(())
    }
}

/// What the decision matrix says for one severity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// The actions a rule of this severity takes when it names none.
    #[serde(deserialize_with = "one_or_many")]
    pub action: Vec<ActionName>,
    /// How long the action may take before it is escalated.
    pub deadline: Span,
}

/// The playbook's rollback decision matrix: for each severity, the default
/// action and the deadline that travels with every action of that severity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionMatrix {
    /// Service down: immediate rollback, under 30 seconds.
    pub critical: Decision,
    /// Error rate above 5 %: rollback, under 2 minutes.
    pub high: Decision,
    /// Performance degradation: reduce traffic, under 5 minutes.
    pub medium: Decision,
    /// Minor issues: notify and keep monitoring for 30 minutes.
    pub low: Decision,
}

impl DecisionMatrix {
    /// The decision for one severity.
    pub fn get(&self, severity: Severity) -> &Decision {
        match severity {
            Severity::Critical => &self.critical,
            Severity::High => &self.high,
            Severity::Medium => &self.medium,
            Severity::Low => &self.low,
        }
    }
}

impl Default for DecisionMatrix {
    /// The playbook's table, verbatim.
    fn default() -> Self {
        let d = |action, secs| Decision {
            action: vec![action],
            deadline: Span::seconds(secs),
        };
        DecisionMatrix {
            critical: d(ActionName::AutoRollback, 30),
            high: d(ActionName::AutoRollback, 120),
            medium: d(ActionName::ReduceTraffic, 300),
            low: d(ActionName::NotifyOnCall, 1800),
        }
    }
}

/// Accepts `action: x` as well as `action: [x, y]`.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ActionName>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(ActionName),
        Many(Vec<ActionName>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(a) => vec![a],
        OneOrMany::Many(v) => v,
    })
}
