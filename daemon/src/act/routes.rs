//! `routes:` in the config file: which receivers each action goes to, and
//! what `canaryd check` finds wrong with routes and receivers together.

use std::collections::BTreeMap;

use canaryd_connectors::ReceiverConfig;
use canaryd_rules::{ActionName, RuleSet};
use serde::Deserialize;

/// Where one action name goes.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Receiver names.
    pub receivers: Vec<String>,
    /// Record this action everywhere, never carry it out.
    #[serde(default)]
    pub dry_run: bool,
}

/// `routes:` in the config file: action name to receivers.
pub type Routes = BTreeMap<ActionName, Route>;

/// Every problem with routes against the receivers that exist.
pub fn route_problems(routes: &Routes, receivers: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (action, route) in routes {
        if route.receivers.is_empty() {
            out.push(format!("routes.{action}: no receiver"));
        }
        for r in &route.receivers {
            if !receivers.contains(&r.as_str()) {
                out.push(format!(
                    "routes.{action}: unknown receiver `{r}`{}",
                    canaryd_rules::vocabulary::suggest(r, receivers.iter().copied())
                        .map(|s| format!(" (did you mean `{s}`?)"))
                        .unwrap_or_default()
                ));
            }
        }
    }
    out
}

/// Every problem with receivers and routes, for `canaryd check`: routes
/// naming no or unknown receivers, receivers whose own settings are wrong
/// or hold secrets inline, and Kubernetes target templates that use labels
/// a rule's subject lacks.
pub fn problems(
    receivers: &BTreeMap<String, ReceiverConfig>,
    routes: &Routes,
    rules: &RuleSet,
) -> Vec<String> {
    let names: Vec<&str> = receivers.keys().map(String::as_str).collect();
    let mut out = route_problems(routes, &names);
    for (name, receiver) in receivers {
        out.extend(
            receiver
                .check()
                .into_iter()
                .map(|p| format!("receivers.{name}: {p}")),
        );
        out.extend(receiver.inline_secrets().into_iter().map(|field| {
            format!("receivers.{name}.{field} is a secret: give it as {{env: NAME}} or {{file: PATH}}, not inline")
        }));
        let Some(kube) = receiver.kube() else {
            continue;
        };
        for rule in rules.rules() {
            let routed_here = rule.actions.iter().any(|a| {
                a.changes_traffic()
                    && routes
                        .get(a)
                        .is_some_and(|r| r.receivers.iter().any(|n| n == name))
            });
            if routed_here {
                for p in kube.check_templates(&rule.group_by) {
                    out.push(format!(
                        "receivers.{name}: rule {:?} (group_by {:?}): {p}",
                        rule.name, rule.group_by
                    ));
                }
            }
        }
    }
    out
}
