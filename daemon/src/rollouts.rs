//! `rollouts:` in the config file: the plans canaryd carries canaries
//! through, and what `canaryd check` finds wrong with them.

use std::collections::BTreeMap;
use std::sync::Arc;

use canaryd_connectors::ReceiverConfig;
use canaryd_rules::rollout::controller::{Gating, NamedPlan, Plans};
use canaryd_rules::rollout::{PLAYBOOK_SOAK, Plan, Stage, check_stages, playbook_stages};
use canaryd_rules::{RuleSet, Span};
use serde::Deserialize;

/// `rollouts:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutsConfig {
    /// The receiver that sets canary weights (a `kube` receiver), for
    /// every plan that names none.
    #[serde(default)]
    pub receiver: Option<String>,
    /// The plan of every model without its own. `default: {}` is the
    /// playbook's.
    #[serde(default)]
    pub default: Option<PlanConfig>,
    /// Plans by model.
    #[serde(default)]
    pub models: BTreeMap<String, PlanConfig>,
    /// Models whose traffic people move by hand: canaryd never does.
    #[serde(default)]
    pub manual: Vec<String>,
    /// Receivers told when a canary reaches 100%.
    #[serde(default)]
    pub promoted: Vec<String>,
    /// Receivers that get an incident ticket, with the stage, the weight
    /// and the evidence, on every rollback.
    #[serde(default)]
    pub incident: Vec<String>,
    /// How often, in event time, a running rollout's hold so far is
    /// recorded on its traffic object (`kube` receivers): a new owner
    /// without a changelog reads it back, and loses at most this much.
    #[serde(default = "default_record_every")]
    pub record_every: Span,
    /// How often, in wall time, the traffic object of each running
    /// rollout is read: a canary version named there
    /// (`canaryd.io/canary-version`) starts a new rollout, and weights a
    /// person set pause it before its next step.
    #[serde(default = "default_watch_every")]
    pub watch_every: Span,
}

fn default_record_every() -> Span {
    Span::seconds(60)
}

fn default_watch_every() -> Span {
    Span::seconds(30)
}

/// One plan.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanConfig {
    /// The stages before 100%; the playbook's by default.
    #[serde(default = "playbook_stages")]
    pub stages: Vec<Stage>,
    /// How long the canary holds at 100% before the rollout is complete;
    /// the playbook's 24 h by default. A rollback is possible until then.
    #[serde(default = "playbook_soak")]
    pub soak: Span,
    /// The receiver that sets this plan's weights.
    #[serde(default)]
    pub receiver: Option<String>,
    /// The rules that gate its stages, by name; every rule by default.
    #[serde(default)]
    pub gating_rules: Option<Vec<String>>,
}

fn playbook_soak() -> Span {
    PLAYBOOK_SOAK
}

impl PlanConfig {
    fn named(&self, name: &str, read_back: bool) -> NamedPlan {
        NamedPlan {
            name: name.to_string(),
            plan: Plan {
                stages: self.stages.clone(),
                soak: self.soak,
            },
            gating: match &self.gating_rules {
                Some(names) => Gating::Named(names.clone()),
                None => Gating::Every,
            },
            read_back,
        }
    }
}

impl RolloutsConfig {
    /// The plans, as the controller takes them. Manual models have none.
    /// A plan reads back when its receiver (among `receivers`) records
    /// the rollout's state on its object.
    pub fn plans(&self, receivers: &BTreeMap<String, ReceiverConfig>) -> Arc<Plans> {
        let named = |name: &str, p: &PlanConfig| {
            let read_back = p
                .receiver
                .as_deref()
                .or(self.receiver.as_deref())
                .and_then(|r| receivers.get(r))
                .is_some_and(ReceiverConfig::keeps_rollout_state);
            p.named(name, read_back)
        };
        Arc::new(Plans {
            default: self.default.as_ref().map(|p| named("default", p)),
            models: self
                .models
                .iter()
                .map(|(model, p)| (model.clone(), named(model, p)))
                .collect(),
            manual: self.manual.iter().cloned().collect(),
        })
    }

    /// Whether `model`'s plan records its state on the traffic object.
    pub fn reads_back(&self, model: &str, receivers: &BTreeMap<String, ReceiverConfig>) -> bool {
        self.receiver_for(model)
            .and_then(|r| receivers.get(r))
            .is_some_and(ReceiverConfig::keeps_rollout_state)
    }

    /// The plans, each with the key it is written under.
    fn each(&self) -> impl Iterator<Item = (String, &PlanConfig)> {
        self.default
            .iter()
            .map(|p| ("rollouts.default".to_string(), p))
            .chain(
                self.models
                    .iter()
                    .map(|(m, p)| (format!("rollouts.models.{m}"), p)),
            )
    }

    /// Every problem: stages that do not rise, weights out of range, holds
    /// too short to see data, unknown receivers and rules, plans for
    /// manual models; and for `canaryd run` (`live`), plans with no
    /// receiver to set their weights.
    pub fn problems(
        &self,
        receivers: &BTreeMap<String, ReceiverConfig>,
        rules: &RuleSet,
        live: bool,
    ) -> Vec<String> {
        let mut out = Vec::new();
        let receiver = |key: &str, name: &str, traffic: bool, out: &mut Vec<String>| match receivers
            .get(name)
        {
            None => out.push(format!("{key}: unknown receiver `{name}`")),
            Some(r) if traffic && !r.sets_traffic() => out.push(format!(
                "{key}: receiver `{name}` cannot set traffic weights; use a kube receiver"
            )),
            // A rollout's subject is its model: the target may name nothing else.
            Some(ReceiverConfig::Kube(kube)) if traffic => out.extend(
                kube.check_templates(&["model".to_string()])
                    .into_iter()
                    .map(|p| format!("{key}: receiver `{name}`: {p}")),
            ),
            Some(_) => {}
        };
        if let Some(name) = &self.receiver {
            receiver("rollouts.receiver", name, true, &mut out);
        }
        for name in &self.promoted {
            receiver("rollouts.promoted", name, false, &mut out);
        }
        if self.watch_every < Span::seconds(1) {
            out.push(format!(
                "rollouts.watch_every: {} is under 1s; each read is a request to the API server per rollout",
                self.watch_every
            ));
        }
        if self.record_every < Span::seconds(1) {
            out.push(format!(
                "rollouts.record_every: {} is under 1s; each progress record is a write to the API server",
                self.record_every
            ));
        }
        for name in &self.incident {
            receiver("rollouts.incident", name, false, &mut out);
        }
        for (key, plan) in self.each() {
            out.extend(
                check_stages(&plan.stages)
                    .into_iter()
                    .map(|p| format!("{key}: {p}")),
            );
            for (i, stage) in plan.stages.iter().enumerate() {
                if stage.hold <= Span::ZERO {
                    out.push(format!(
                        "{key}: stage {}: a hold of {} leaves no time to see the canary's data",
                        i + 1,
                        stage.hold
                    ));
                }
            }
            if plan.soak < Span::ZERO {
                out.push(format!("{key}: soak must not be negative"));
            }
            if let Some(name) = &plan.receiver {
                receiver(&format!("{key}.receiver"), name, true, &mut out);
            }
            for name in plan.gating_rules.iter().flatten() {
                if rules.get(name).is_none() {
                    out.push(format!("{key}.gating_rules: no rule is named `{name}`"));
                }
            }
            if plan.gating_rules.as_ref().is_some_and(Vec::is_empty) {
                out.push(format!(
                    "{key}.gating_rules: empty; leave it out to gate on every rule"
                ));
            }
        }
        if live {
            for (key, plan) in self.each() {
                if plan.receiver.is_none() && self.receiver.is_none() {
                    out.push(format!(
                        "{key}: no receiver sets its weights: set rollouts.receiver or {key}.receiver"
                    ));
                }
            }
        }
        for model in &self.manual {
            if self.models.contains_key(model) {
                out.push(format!(
                    "rollouts.models.{model}: the model is also in rollouts.manual; canaryd never moves its traffic"
                ));
            }
        }
        out
    }

    /// The receiver that sets `model`'s weights, if any.
    pub fn receiver_for(&self, model: &str) -> Option<&str> {
        self.models
            .get(model)
            .or(self.default.as_ref())
            .and_then(|p| p.receiver.as_deref())
            .or(self.receiver.as_deref())
    }
}
