//! The one registry of receivers: `receivers:` in the config file, each a
//! [`ReceiverConfig`] by its `type:`, checked by `canaryd check` and built
//! once, at start-up, into a long-lived [`Connector`] whose
//! [`Connector::name`] is the receiver's name.
//!
//! ```yaml
//! receivers:
//!   kube: { type: kube, target: { kind: VirtualService, namespace: ml-serving, name: "model-{{ model }}" } }
//!   pagerduty-oncall: { type: pagerduty, routing_key: {env: PD_KEY} }
//!   slack-oncall: { type: slack, url: {file: /secrets/slack-oncall} }
//!   email-ml: { type: email, host: smtp.example.com, port: 587, tls: starttls, username: canaryd,
//!               password: {env: SMTP_PASSWORD}, from: canaryd@example.com, to: [ml-team@example.com] }
//!   incidents: { type: webhook, url: "https://tickets.example.com/hooks/canary", bearer: {env: TICKET_TOKEN} }
//!   record-only: { type: dry_run }
//! ```
//!
//! See [`crate::kube`], [`crate::pagerduty`], [`crate::slack`],
//! [`crate::webhook`] and [`crate::email`] for each type's settings, and
//! [`crate::message`] for the templates.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Deserializer};

use crate::action::{Action, Outcome};
use crate::connector::{BoxFuture, Connector, ConnectorError, TrafficState};
use crate::dry_run::DryRun;
use crate::email::{EmailConfig, EmailConnector};
use crate::error::ReceiverError;
use crate::kube::{KubeConfig, KubeConnector};
use crate::pagerduty::{PagerDutyConfig, PagerDutyConnector};
use crate::secret::SecretValue;
use crate::slack::{SlackConfig, SlackConnector};
use crate::webhook::{WebhookConfig, WebhookConnector};

/// One receiver, by its `type:`.
#[derive(Clone, Debug, PartialEq)]
pub enum ReceiverConfig {
    /// `type: kube`: traffic changes through the Kubernetes API.
    Kube(KubeConfig),
    /// `type: dry_run`: records what it would do.
    DryRun,
    /// `type: pagerduty`: PagerDuty Events API v2.
    PagerDuty(PagerDutyConfig),
    /// `type: slack`: a Slack incoming webhook, or Slack's Web API.
    Slack(SlackConfig),
    /// `type: webhook`: JSON POSTed to any URL.
    Webhook(WebhookConfig),
    /// `type: email`: SMTP.
    Email(EmailConfig),
}

/// The `type:` names, for messages.
const TYPES: &str = "kube, pagerduty, slack, webhook, email or dry_run";

impl<'de> Deserialize<'de> for ReceiverConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // Read the tag first, then the rest strictly for that type, so that
        // each type keeps its own `deny_unknown_fields`.
        let mut value = serde_json::Value::deserialize(d)?;
        let Some(map) = value.as_object_mut() else {
            return Err(D::Error::custom(
                "a receiver must be a mapping with `type:`",
            ));
        };
        let kind = match map.remove("type") {
            Some(serde_json::Value::String(kind)) => kind,
            _ => {
                return Err(D::Error::custom(format!(
                    "a receiver needs `type:` ({TYPES})"
                )));
            }
        };
        fn settings<T: serde::de::DeserializeOwned, E: Error>(
            value: serde_json::Value,
        ) -> Result<T, E> {
            serde_json::from_value(value).map_err(E::custom)
        }
        match kind.as_str() {
            "kube" => settings(value).map(ReceiverConfig::Kube),
            "dry_run" if map.is_empty() => Ok(ReceiverConfig::DryRun),
            "dry_run" => Err(D::Error::custom("a dry_run receiver takes no settings")),
            "pagerduty" => settings(value).map(ReceiverConfig::PagerDuty),
            "slack" => settings(value).map(ReceiverConfig::Slack),
            "webhook" => settings(value).map(ReceiverConfig::Webhook),
            "email" => settings(value).map(ReceiverConfig::Email),
            other => Err(D::Error::custom(format!(
                "unknown receiver type `{other}`: use {TYPES}"
            ))),
        }
    }
}

impl ReceiverConfig {
    /// Whether it can set a canary's traffic weight (`dry_run` records it).
    pub fn sets_traffic(&self) -> bool {
        matches!(self, ReceiverConfig::Kube(_) | ReceiverConfig::DryRun)
    }

    /// Whether it records a rollout's state on the object it changes, to
    /// be read back there by a new owner: a `kube` receiver, except for an
    /// Argo Rollout (which keeps its own).
    pub fn keeps_rollout_state(&self) -> bool {
        matches!(self, ReceiverConfig::Kube(k) if k.target.kind != crate::kube::TargetKind::Rollout)
    }

    /// The `type:` name.
    pub fn kind(&self) -> &'static str {
        match self {
            ReceiverConfig::Kube(_) => "kube",
            ReceiverConfig::DryRun => "dry_run",
            ReceiverConfig::PagerDuty(_) => "pagerduty",
            ReceiverConfig::Slack(_) => "slack",
            ReceiverConfig::Webhook(_) => "webhook",
            ReceiverConfig::Email(_) => "email",
        }
    }

    /// The Kubernetes settings, for a `type: kube` receiver.
    pub fn kube(&self) -> Option<&KubeConfig> {
        match self {
            ReceiverConfig::Kube(k) => Some(k),
            _ => None,
        }
    }

    /// Problems with the settings, without reading any secret or connecting
    /// anywhere: missing or malformed URLs, hosts and addresses, bad
    /// timeouts, conflicting settings, templates that do not compile or use
    /// unknown variables. Each message names its field (e.g. `url is
    /// empty`); the caller adds the receiver's name. Empty when valid.
    /// Secrets written inline are [`ReceiverConfig::inline_secrets`].
    pub fn check(&self) -> Vec<String> {
        match self {
            ReceiverConfig::Kube(c) => c.check(),
            ReceiverConfig::DryRun => Vec::new(),
            ReceiverConfig::PagerDuty(c) => c.check(),
            ReceiverConfig::Slack(c) => c.check(),
            ReceiverConfig::Webhook(c) => c.check(),
            ReceiverConfig::Email(c) => c.check(),
        }
    }

    /// The secret settings written inline in the config file (e.g.
    /// `routing_key`, `password`), for a caller that wants them in the
    /// environment or a file instead. A webhook's inline `url` is not
    /// listed (it is usually not a secret); a Slack one is.
    pub fn inline_secrets(&self) -> Vec<String> {
        let mut fields = Vec::new();
        let mut note = |field: &str, value: Option<&SecretValue>| {
            if value.is_some_and(SecretValue::is_inline) {
                fields.push(field.to_string());
            }
        };
        match self {
            ReceiverConfig::Kube(_) | ReceiverConfig::DryRun => {}
            ReceiverConfig::PagerDuty(c) => note("routing_key", Some(&c.routing_key)),
            ReceiverConfig::Slack(c) => {
                note("url", c.url.as_ref());
                note("token", c.token.as_ref());
            }
            ReceiverConfig::Webhook(c) => {
                note("bearer", c.bearer.as_ref());
                note("basic.password", c.basic.as_ref().map(|b| &b.password));
            }
            ReceiverConfig::Email(c) => note("password", c.password.as_ref()),
        }
        fields
    }

    /// Resolves relative paths (`{file: PATH}` secrets, a kubeconfig)
    /// against `dir`, the config file's directory.
    pub fn with_base_dir(self, dir: &Path) -> ReceiverConfig {
        let rebase = |v: SecretValue| v.with_base_dir(dir);
        match self {
            ReceiverConfig::Kube(k) => ReceiverConfig::Kube(k.with_base_dir(dir)),
            ReceiverConfig::DryRun => ReceiverConfig::DryRun,
            ReceiverConfig::PagerDuty(mut c) => {
                c.routing_key = rebase(c.routing_key);
                ReceiverConfig::PagerDuty(c)
            }
            ReceiverConfig::Slack(mut c) => {
                c.url = c.url.map(&rebase);
                c.token = c.token.map(&rebase);
                ReceiverConfig::Slack(c)
            }
            ReceiverConfig::Webhook(mut c) => {
                c.url = rebase(c.url);
                c.bearer = c.bearer.map(rebase);
                if let Some(basic) = &mut c.basic {
                    basic.password = rebase(basic.password.clone());
                }
                c.headers = c.headers.into_iter().map(|(k, v)| (k, rebase(v))).collect();
                ReceiverConfig::Webhook(c)
            }
            ReceiverConfig::Email(mut c) => {
                c.password = c.password.map(rebase);
                ReceiverConfig::Email(c)
            }
        }
    }

    /// Checks the settings, reads the secrets and builds the connector with
    /// its one client (HTTP, Kubernetes) or transport (SMTP), named `name`.
    /// Connects nowhere.
    pub async fn build(&self, name: &str) -> Result<Arc<dyn Connector>, ReceiverError> {
        let name = name.to_string();
        Ok(match self.clone() {
            ReceiverConfig::Kube(c) => {
                let inner = KubeConnector::new(c)
                    .await
                    .map_err(|e| ReceiverError::Client {
                        name: name.clone(),
                        message: e.to_string(),
                    })?;
                Arc::new(Named { name, inner })
            }
            ReceiverConfig::DryRun => Arc::new(Named {
                name,
                inner: DryRun::new(),
            }),
            ReceiverConfig::PagerDuty(c) => Arc::new(PagerDutyConnector::new(name, c)?),
            ReceiverConfig::Slack(c) => Arc::new(SlackConnector::new(name, c)?),
            ReceiverConfig::Webhook(c) => Arc::new(WebhookConnector::new(name, c)?),
            ReceiverConfig::Email(c) => Arc::new(EmailConnector::new(name, c)?),
        })
    }
}

/// A connector under the name the config gives it, for the connectors
/// that do not take one themselves.
struct Named<C> {
    name: String,
    inner: C,
}

impl<C: Connector> Connector for Named<C> {
    fn name(&self) -> &str {
        &self.name
    }

    fn execute<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Outcome, ConnectorError>> {
        Box::pin(async move {
            let mut outcome = self.inner.execute(action).await?;
            outcome.connector = self.name.clone();
            Ok(outcome)
        })
    }

    fn read_traffic<'a>(
        &'a self,
        subject: &'a BTreeMap<String, String>,
    ) -> Option<BoxFuture<'a, Result<TrafficState, ConnectorError>>> {
        self.inner.read_traffic(subject)
    }

    fn resolve<'a>(
        &'a self,
        action: &'a Action,
    ) -> Option<BoxFuture<'a, Result<Outcome, ConnectorError>>> {
        self.inner.resolve(action)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

    use std::collections::BTreeMap;

    use super::*;

    const EXAMPLE: &str = r#"
pagerduty-oncall: { type: pagerduty, routing_key: {env: PD_KEY}, url: "https://events.pagerduty.com/v2/enqueue" }
slack-oncall: { type: slack, url: {file: secrets/slack-oncall} }
email-ml: { type: email, host: smtp.example.com, port: 587, tls: starttls, username: canaryd, password: {env: SMTP_PASSWORD}, from: canaryd@example.com, to: [ml-team@example.com] }
incidents: { type: webhook, url: "https://tickets.example.com/hooks/canary", bearer: {env: TICKET_TOKEN} }
"#;

    #[test]
    fn the_documented_example_loads_and_checks() {
        let receivers: BTreeMap<String, ReceiverConfig> = serde_yaml_ng::from_str(EXAMPLE).unwrap();
        assert_eq!(receivers.len(), 4);
        for (name, r) in &receivers {
            assert!(r.check().is_empty(), "{name}: {:?}", r.check());
            assert!(r.inline_secrets().is_empty(), "{name}");
        }
        assert_eq!(receivers["email-ml"].kind(), "email");
        let slack = receivers["slack-oncall"]
            .clone()
            .with_base_dir(Path::new("/etc/canaryd"));
        let ReceiverConfig::Slack(c) = slack else {
            panic!()
        };
        assert_eq!(
            c.url,
            Some(SecretValue::File {
                file: "/etc/canaryd/secrets/slack-oncall".into()
            })
        );
    }

    #[test]
    fn unknown_types_and_fields_are_refused() {
        let e = serde_yaml_ng::from_str::<ReceiverConfig>("{type: teams, url: x}").unwrap_err();
        assert!(e.to_string().contains("teams"), "{e}");
        let e = serde_yaml_ng::from_str::<ReceiverConfig>("{type: slack, url: x, chanel: y}")
            .unwrap_err();
        assert!(e.to_string().contains("chanel"), "{e}");
        let e = serde_yaml_ng::from_str::<ReceiverConfig>("{type: pagerduty}").unwrap_err();
        assert!(e.to_string().contains("routing_key"), "{e}");
        let e = serde_yaml_ng::from_str::<ReceiverConfig>("{url: x}").unwrap_err();
        assert!(e.to_string().contains("needs `type:`"), "{e}");
        let e = serde_yaml_ng::from_str::<ReceiverConfig>("{type: dry_run, url: x}").unwrap_err();
        assert!(e.to_string().contains("takes no settings"), "{e}");
    }

    #[tokio::test]
    async fn dry_run_receivers_build_under_their_own_name() {
        let r: ReceiverConfig = serde_yaml_ng::from_str("{type: dry_run}").unwrap();
        assert_eq!(r, ReceiverConfig::DryRun);
        assert!(r.check().is_empty());
        let c = r.build("record-only").await.unwrap();
        assert_eq!(c.name(), "record-only");
        let outcome = c.execute(&crate::message::tests::action()).await.unwrap();
        assert_eq!(outcome.connector, "record-only");
    }

    #[tokio::test]
    async fn build_names_the_connector_and_reports_missing_secrets() {
        let r: ReceiverConfig =
            serde_yaml_ng::from_str("{type: webhook, url: 'http://127.0.0.1:9/x'}").unwrap();
        let c = r.build("incidents").await.unwrap();
        assert_eq!(c.name(), "incidents");
        let r: ReceiverConfig = serde_yaml_ng::from_str(
            "{type: pagerduty, routing_key: {env: CANARYD_TEST_SURELY_UNSET}}",
        )
        .unwrap();
        let Err(e) = r.build("pd").await else {
            panic!("built without its routing key")
        };
        assert_eq!(
            e.to_string(),
            "receiver pd: routing_key: environment variable CANARYD_TEST_SURELY_UNSET is not set"
        );
        let r: ReceiverConfig =
            serde_yaml_ng::from_str("{type: slack, url: x, title_template: '{{ rule'}").unwrap();
        assert_eq!(r.check().len(), 2, "{:?}", r.check());
        assert!(matches!(
            r.build("s").await,
            Err(ReceiverError::Invalid { .. })
        ));
        let r: ReceiverConfig =
            serde_yaml_ng::from_str("{type: slack, url: 'https://hooks.slack.com/x'}").unwrap();
        assert_eq!(r.inline_secrets(), vec!["url"]);
    }
}
