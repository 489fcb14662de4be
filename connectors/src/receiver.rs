//! Notification receivers as the config file names them: a [`ReceiverConfig`]
//! per name, checked by `canaryd check` and built once, at start-up, into a
//! long-lived [`Connector`] whose [`Connector::name`] is the receiver's name.
//!
//! ```yaml
//! receivers:
//!   pagerduty-oncall: { type: pagerduty, routing_key: {env: PD_KEY} }
//!   slack-oncall: { type: slack, url: {file: /secrets/slack-oncall} }
//!   email-ml: { type: email, host: smtp.example.com, port: 587, tls: starttls, username: canaryd,
//!               password: {env: SMTP_PASSWORD}, from: canaryd@example.com, to: [ml-team@example.com] }
//!   incidents: { type: webhook, url: "https://tickets.example.com/hooks/canary", bearer: {env: TICKET_TOKEN} }
//! ```
//!
//! See [`crate::pagerduty`], [`crate::slack`], [`crate::webhook`] and
//! [`crate::email`] for each type's settings, and [`crate::message`] for the
//! templates.

use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::connector::Connector;
use crate::email::{EmailConfig, EmailConnector};
use crate::pagerduty::{PagerDutyConfig, PagerDutyConnector};
use crate::secret::SecretValue;
use crate::slack::{SlackConfig, SlackConnector};
use crate::webhook::{WebhookConfig, WebhookConnector};

/// One notification receiver, by its `type:`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum ReceiverConfig {
    /// `type: pagerduty`: PagerDuty Events API v2.
    #[serde(rename = "pagerduty")]
    PagerDuty(PagerDutyConfig),
    /// `type: slack`: a Slack incoming webhook.
    #[serde(rename = "slack")]
    Slack(SlackConfig),
    /// `type: webhook`: JSON POSTed to any URL.
    #[serde(rename = "webhook")]
    Webhook(WebhookConfig),
    /// `type: email`: SMTP.
    #[serde(rename = "email")]
    Email(EmailConfig),
}

/// Why a receiver could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// Its settings are invalid (what [`ReceiverConfig::check`] reports).
    #[error("receiver {name}: {}", problems.join("; "))]
    Invalid {
        /// The receiver's name.
        name: String,
        /// Every problem, each naming its field.
        problems: Vec<String>,
    },
    /// A secret could not be read.
    #[error("receiver {name}: {field}: {message}")]
    Secret {
        /// The receiver's name.
        name: String,
        /// The setting, e.g. `routing_key`.
        field: String,
        /// Why, e.g. `environment variable PD_KEY is not set`.
        message: String,
    },
    /// The HTTP client or SMTP transport could not be built.
    #[error("receiver {name}: cannot build the client: {message}")]
    Client {
        /// The receiver's name.
        name: String,
        /// Why.
        message: String,
    },
}

impl ReceiverConfig {
    /// The `type:` name: `pagerduty`, `slack`, `webhook` or `email`.
    pub fn kind(&self) -> &'static str {
        match self {
            ReceiverConfig::PagerDuty(_) => "pagerduty",
            ReceiverConfig::Slack(_) => "slack",
            ReceiverConfig::Webhook(_) => "webhook",
            ReceiverConfig::Email(_) => "email",
        }
    }

    /// Problems with the settings, without reading any secret or connecting
    /// anywhere: missing or malformed URLs, hosts and addresses, bad
    /// timeouts, conflicting settings, templates that do not compile or use
    /// unknown variables. Each message names its field (e.g.
    /// `url is empty`); the caller adds the receiver's name. Empty when
    /// valid.
    pub fn check(&self) -> Vec<String> {
        match self {
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
            ReceiverConfig::PagerDuty(c) => note("routing_key", Some(&c.routing_key)),
            ReceiverConfig::Slack(c) => note("url", Some(&c.url)),
            ReceiverConfig::Webhook(c) => {
                note("bearer", c.bearer.as_ref());
                note("basic.password", c.basic.as_ref().map(|b| &b.password));
            }
            ReceiverConfig::Email(c) => note("password", c.password.as_ref()),
        }
        fields
    }

    /// Resolves relative `{file: PATH}` secrets against `dir` (the config
    /// file's directory).
    pub fn with_base_dir(self, dir: &Path) -> ReceiverConfig {
        let rebase = |v: SecretValue| v.with_base_dir(dir);
        match self {
            ReceiverConfig::PagerDuty(mut c) => {
                c.routing_key = rebase(c.routing_key);
                ReceiverConfig::PagerDuty(c)
            }
            ReceiverConfig::Slack(mut c) => {
                c.url = rebase(c.url);
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
    /// its one client (HTTP) or transport (SMTP). Connects nowhere.
    pub async fn build(self, name: String) -> Result<Arc<dyn Connector>, ReceiverError> {
        Ok(match self {
            ReceiverConfig::PagerDuty(c) => Arc::new(PagerDutyConnector::new(name, c)?),
            ReceiverConfig::Slack(c) => Arc::new(SlackConnector::new(name, c)?),
            ReceiverConfig::Webhook(c) => Arc::new(WebhookConnector::new(name, c)?),
            ReceiverConfig::Email(c) => Arc::new(EmailConnector::new(name, c)?),
        })
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
            SecretValue::File {
                file: "/etc/canaryd/secrets/slack-oncall".into()
            }
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
    }

    #[tokio::test]
    async fn build_names_the_connector_and_reports_missing_secrets() {
        let r: ReceiverConfig =
            serde_yaml_ng::from_str("{type: webhook, url: 'http://127.0.0.1:9/x'}").unwrap();
        let c = r.build("incidents".into()).await.unwrap();
        assert_eq!(c.name(), "incidents");
        let r: ReceiverConfig = serde_yaml_ng::from_str(
            "{type: pagerduty, routing_key: {env: CANARYD_TEST_SURELY_UNSET}}",
        )
        .unwrap();
        let Err(e) = r.build("pd".into()).await else {
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
            r.build("s".into()).await,
            Err(ReceiverError::Invalid { .. })
        ));
        let r: ReceiverConfig =
            serde_yaml_ng::from_str("{type: slack, url: 'https://hooks.slack.com/x'}").unwrap();
        assert_eq!(r.inline_secrets(), vec!["url"]);
    }
}
