//! The variables a condition may use, and "did you mean" suggestions.

use std::collections::BTreeMap;

/// The two sides of a canary comparison.
pub const TRACKS: [&str; 2] = ["canary", "stable"];

/// Per-track metrics, exposed as `canary_<name>` and `stable_<name>`.
pub const TRACK_METRICS: [&str; 15] = [
    "requests",
    "request_rate",
    "error_rate",
    "success_rate",
    "p50_latency",
    "p95_latency",
    "p99_latency",
    "cost_per_request",
    "demographic_parity",
    "equal_opportunity",
    "disparate_impact",
    "fairness_metric",
    "last_seen_age",
    "error_rate_lower",
    "error_rate_upper",
];

/// The canary judge's variables (see [`crate::judge`]), with what they
/// hold. Verdicts are compared with `"pass"`, `"high"` or `"low"`.
pub const JUDGE_VARIABLES: [(&str, &str); 9] = [
    (
        "canary_score",
        "the judge's score, 0 to 100: the share of judged metrics that do not fail",
    ),
    (
        "judge_latency_verdict",
        "\"high\" when the canary's latencies are higher than the stable's (Mann-Whitney U) by more than the tolerance",
    ),
    (
        "judge_latency_effect",
        "the canary's mean latency over the stable's",
    ),
    (
        "judge_cost_verdict",
        "\"high\" when the canary's costs per request are higher (Mann-Whitney U) by more than the tolerance",
    ),
    (
        "judge_cost_effect",
        "the canary's mean cost over the stable's",
    ),
    (
        "judge_error_rate_verdict",
        "\"high\" when the canary's error rate is higher (two-proportion test) by more than the tolerance",
    ),
    (
        "judge_error_rate_effect",
        "the canary's error rate minus the stable's",
    ),
    (
        "judge_fairness_verdict",
        "\"high\" or \"low\" when a group's positive-prediction or true-positive rate moved from the stable's by more than the tolerance",
    ),
    (
        "judge_fairness_effect",
        "the deciding group's rate on the canary minus on the stable",
    ),
];

/// Variables derived from alert events. They describe state, not samples,
/// so they never go stale: zero until an alert fires for the subject.
pub const ALERT_VARIABLES: [(&str, &str); 3] = [
    (
        "critical_errors",
        "firing alerts of severity critical for the subject (the playbook's \"critical errors detected\")",
    ),
    (
        "oom_kills",
        "firing alerts named OOMKilled, or with label reason=OOMKilled (the playbook's \"out of memory errors\")",
    ),
    ("firing_alerts", "all firing alerts for the subject"),
];

/// Stands for the stable track's value of the canary metric a condition compares.
pub const BASELINE: &str = "baseline";

/// Whether a variable holds a timed sample or derived state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VarKind {
    /// A value observed at a time; it goes stale.
    Sample,
    /// Derived from alert state; never stale.
    AlertState,
}

/// Every variable the engine knows, with its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocabulary {
    vars: BTreeMap<String, VarKind>,
}

impl Default for Vocabulary {
    fn default() -> Self {
        Self::builtin()
    }
}

impl Vocabulary {
    /// The built-in variables: per-track metrics and alert-derived counts.
    pub fn builtin() -> Self {
        let mut vars = BTreeMap::new();
        for track in TRACKS {
            for metric in TRACK_METRICS {
                vars.insert(format!("{track}_{metric}"), VarKind::Sample);
            }
        }
        for (name, _) in JUDGE_VARIABLES {
            vars.insert(name.to_string(), VarKind::Sample);
        }
        for (name, _) in ALERT_VARIABLES {
            vars.insert(name.to_string(), VarKind::AlertState);
        }
        Vocabulary { vars }
    }

    /// Adds site-specific metric names (from configuration) that metric
    /// events will carry.
    pub fn with_extra<I: IntoIterator<Item = S>, S: Into<String>>(mut self, extra: I) -> Self {
        for name in extra {
            self.vars.entry(name.into()).or_insert(VarKind::Sample);
        }
        self
    }

    /// The kind of a known variable.
    pub fn kind(&self, name: &str) -> Option<VarKind> {
        self.vars.get(name).copied()
    }

    /// All known names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.vars.keys().map(String::as_str)
    }

    /// The closest known name to `unknown`, if one is close enough to be a
    /// plausible typo.
    pub fn suggest(&self, unknown: &str) -> Option<&str> {
        suggest(unknown, self.names())
    }
}

/// The candidate closest to `unknown` by edit distance, if plausibly a typo.
pub fn suggest<'a>(
    unknown: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (unknown.chars().count() / 3).max(2);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(unknown, c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, c)| (*d, *c))
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_typos_but_not_nonsense() {
        let v = Vocabulary::builtin();
        assert_eq!(v.suggest("canary_eror_rate"), Some("canary_error_rate"));
        assert_eq!(v.suggest("canary_p95_latncy"), Some("canary_p95_latency"));
        assert_eq!(
            v.suggest("stable_cost_per_req"),
            Some("stable_cost_per_request")
        );
        assert_eq!(v.suggest("banana"), None);
    }

    #[test]
    fn knows_both_tracks_and_alert_state() {
        let v = Vocabulary::builtin().with_extra(["gpu_memory_bytes"]);
        assert_eq!(v.kind("stable_fairness_metric"), Some(VarKind::Sample));
        assert_eq!(v.kind("critical_errors"), Some(VarKind::AlertState));
        assert_eq!(v.kind("gpu_memory_bytes"), Some(VarKind::Sample));
        assert_eq!(v.kind("baseline"), None);
    }
}
