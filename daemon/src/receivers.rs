//! `receivers:` in the config file: named targets for actions, each built
//! into one long-lived connector.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use canaryd_connectors::{Connector, DryRun, KubeConfig, KubeConnector, ReceiverConfig};
use canaryd_rules::RuleSet;
use serde::{Deserialize, Deserializer};

use crate::pipeline::Routes;

/// One receiver, by its `type:`.
#[derive(Clone, Debug)]
pub enum ReceiverSpec {
    /// `type: kube`: traffic changes through the Kubernetes API.
    Kube(KubeConfig),
    /// `type: dry_run`: records what it would do.
    DryRun,
    /// `type: pagerduty | slack | webhook | email`: notifications.
    Notify(ReceiverConfig),
}

impl<'de> Deserialize<'de> for ReceiverSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Read the tag first, then the rest strictly for that type, so that
        // each type keeps its own `deny_unknown_fields`.
        let mut value = serde_yaml_ng::Value::deserialize(d)?;
        let Some(map) = value.as_mapping_mut() else {
            return Err(D::Error::custom(
                "a receiver must be a mapping with `type:`",
            ));
        };
        const TYPES: &str = "kube, pagerduty, slack, webhook, email or dry_run";
        let kind = map
            .get("type")
            .and_then(|t| t.as_str().map(str::to_string))
            .ok_or_else(|| D::Error::custom(format!("a receiver needs `type:` ({TYPES})")))?;
        match kind.as_str() {
            "kube" => {
                map.remove("type");
                serde_yaml_ng::from_value(value)
                    .map(ReceiverSpec::Kube)
                    .map_err(D::Error::custom)
            }
            "dry_run" if map.len() == 1 => Ok(ReceiverSpec::DryRun),
            "dry_run" => Err(D::Error::custom("a dry_run receiver takes no settings")),
            "pagerduty" | "slack" | "webhook" | "email" => serde_yaml_ng::from_value(value)
                .map(ReceiverSpec::Notify)
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!(
                "unknown receiver type `{other}`: use {TYPES}"
            ))),
        }
    }
}

impl ReceiverSpec {
    /// Paths inside the receiver become relative to the config file's directory.
    pub fn with_base_dir(self, dir: &Path) -> ReceiverSpec {
        match self {
            ReceiverSpec::Kube(k) => ReceiverSpec::Kube(k.with_base_dir(dir)),
            ReceiverSpec::Notify(n) => ReceiverSpec::Notify(n.with_base_dir(dir)),
            ReceiverSpec::DryRun => ReceiverSpec::DryRun,
        }
    }

    /// Builds the connector, once, at start-up.
    pub async fn build(&self, name: &str) -> Result<Arc<dyn Connector>, String> {
        match self {
            ReceiverSpec::Kube(config) => KubeConnector::new(config.clone())
                .await
                .map(|c| {
                    Arc::new(Named {
                        name: name.to_string(),
                        inner: c,
                    }) as Arc<dyn Connector>
                })
                .map_err(|e| format!("receivers.{name}: {e}")),
            ReceiverSpec::DryRun => Ok(Arc::new(Named {
                name: name.to_string(),
                inner: DryRun::new(),
            })),
            ReceiverSpec::Notify(config) => config
                .clone()
                .build(name.to_string())
                .await
                .map_err(|e| format!("receivers.{name}: {e}")),
        }
    }
}

/// A connector under the name the config gives it.
struct Named<C> {
    name: String,
    inner: C,
}

impl<C: Connector> Connector for Named<C> {
    fn name(&self) -> &str {
        &self.name
    }

    fn execute<'a>(
        &'a self,
        action: &'a canaryd_connectors::Action,
    ) -> canaryd_connectors::connector::BoxFuture<
        'a,
        Result<canaryd_connectors::Outcome, canaryd_connectors::ConnectorError>,
    > {
        Box::pin(async move {
            let mut outcome = self.inner.execute(action).await?;
            outcome.connector = self.name.clone();
            Ok(outcome)
        })
    }

    fn resolve<'a>(
        &'a self,
        action: &'a canaryd_connectors::Action,
    ) -> Option<
        canaryd_connectors::connector::BoxFuture<
            'a,
            Result<canaryd_connectors::Outcome, canaryd_connectors::ConnectorError>,
        >,
    > {
        self.inner.resolve(action)
    }
}

/// Every problem with receivers and routes, for `canaryd check`: routes
/// naming no or unknown receivers, receivers whose own settings are wrong,
/// and Kubernetes target templates that use labels a rule's subject lacks.
pub fn problems(
    receivers: &BTreeMap<String, ReceiverSpec>,
    routes: &Routes,
    rules: &RuleSet,
) -> Vec<String> {
    let names: Vec<&str> = receivers.keys().map(String::as_str).collect();
    let mut out = crate::pipeline::route_problems(routes, &names);
    for (name, spec) in receivers {
        if let ReceiverSpec::Notify(notify) = spec {
            out.extend(
                notify
                    .check()
                    .into_iter()
                    .map(|p| format!("receivers.{name}: {p}")),
            );
            out.extend(notify.inline_secrets().into_iter().map(|field| {
                format!("receivers.{name}.{field} is a secret: give it as {{env: NAME}} or {{file: PATH}}, not inline")
            }));
        }
        if let ReceiverSpec::Kube(kube) = spec {
            out.extend(
                kube.check()
                    .into_iter()
                    .map(|p| format!("receivers.{name}: {p}")),
            );
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
    }
    out
}
