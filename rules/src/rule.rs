//! The compiled rule model and the rule set.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use serde::Serialize;

use crate::condition::Condition;
use crate::policy::{ActionName, Severity};
use crate::state::Timing;
use crate::time::Span;

/// Where a rule was written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Origin {
    /// The file, as given to the loader.
    pub file: Arc<str>,
    /// 1-based line of the rule's first key.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A validated rule, ready to evaluate.
#[derive(Clone, Debug)]
pub struct Rule {
    /// Unique within the rule set.
    pub name: String,
    /// The compiled condition.
    pub condition: Condition,
    /// `duration` and `keep_firing_for`.
    pub timing: Timing,
    /// How bad it is when it fires.
    pub severity: Severity,
    /// What to do when it fires.
    pub actions: Vec<ActionName>,
    /// True when `actions` came from the decision matrix, not the rule.
    pub actions_from_matrix: bool,
    /// How long each action may take before escalation (from the matrix).
    pub deadline: Span,
    /// Extra labels attached to the alert and its actions.
    pub labels: BTreeMap<String, String>,
    /// Annotation templates (minijinja), validated at load.
    pub annotations: BTreeMap<String, String>,
    /// Evaluate and record, but never act.
    pub dry_run: bool,
    /// The labels that make a subject.
    pub group_by: Vec<String>,
    /// Per-rule override of the minimum samples behind a computed variable.
    pub min_samples: Option<u64>,
    /// Where it was written.
    pub origin: Origin,
}

impl Rule {
    /// What [`Rule::same_logic`] compares, as text: stored with saved alert
    /// state, so that a restore carries an alert only to the same logic.
    pub fn logic(&self) -> String {
        format!(
            "{}|{:?}|{:?}|{:?}|{:?}",
            self.condition.source(),
            self.condition.variables(),
            self.timing,
            self.group_by,
            self.min_samples
        )
    }

    /// Whether this rule and `other` evaluate the same way, so that a reload
    /// may keep the alert state of one for the other.
    pub fn same_logic(&self, other: &Rule) -> bool {
        self.name == other.name
            && self.condition.source() == other.condition.source()
            && self.condition.variables() == other.condition.variables()
            && self.timing == other.timing
            && self.group_by == other.group_by
            && self.min_samples == other.min_samples
    }
}

/// An error in a rule file, with its place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleError {
    /// The file.
    pub file: Arc<str>,
    /// 1-based line; 0 when the error concerns the whole file.
    pub line: usize,
    /// The rule it concerns, when known.
    pub rule: Option<String>,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        if let Some(rule) = &self.rule {
            write!(f, ": rule {rule:?}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All the rules canaryd evaluates, from one or more files.
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    rules: Vec<Rule>,
    by_name: HashMap<String, usize>,
}

impl RuleSet {
    /// Builds a set, rejecting names used twice (across files too).
    pub fn new(rules: Vec<Rule>) -> Result<RuleSet, Vec<RuleError>> {
        let mut by_name: HashMap<String, usize> = HashMap::new();
        let mut errors = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            if let Some(&first) = by_name.get(&rule.name) {
                errors.push(RuleError {
                    file: rule.origin.file.clone(),
                    line: rule.origin.line,
                    rule: Some(rule.name.clone()),
                    message: format!(
                        "duplicate rule name; first defined at {}",
                        rules[first].origin
                    ),
                });
            } else {
                by_name.insert(rule.name.clone(), i);
            }
        }
        if errors.is_empty() {
            Ok(RuleSet { rules, by_name })
        } else {
            Err(errors)
        }
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// A rule by name.
    pub fn get(&self, name: &str) -> Option<&Rule> {
        self.by_name.get(name).map(|&i| &self.rules[i])
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}
