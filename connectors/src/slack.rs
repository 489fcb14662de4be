//! Slack, through an incoming webhook: one message per firing action and one
//! when its alert resolves.
//!
//! ```yaml
//! receivers:
//!   slack-oncall:
//!     type: slack
//!     url: {file: /var/run/secrets/slack/oncall}   # the webhook URL is the secret
//!     channel: "#ml-oncall"                        # optional; honoured by legacy webhooks only
//!     timeout: 10s                                 # default 10s, whole request
//!     connect_timeout: 5s                          # default 5s
//!     title_template: "..."                        # optional: header and notification text
//!     body_template: "..."                         # optional: the message
//! ```
//!
//! The message is `{"text": title, "blocks": [header, body, runbook button,
//! context]}`: the header is the title, the body (by default) says what
//! fired with which severity, for which subject, each value against its
//! threshold, since when, the summary and runbook annotations; a runbook
//! annotation (`runbook` or `runbook_url`) also becomes a button. Slack's
//! control characters `&`, `<` and `>` are escaped in everything canaryd
//! sends, so a condition such as `a > 0.05` shows as written (and a
//! template cannot write `<url|text>` links; bare URLs are linked by Slack).
//! Slack answers 200 `ok`.

use std::fmt;
use std::time::Duration;

use canaryd_rules::Span;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::action::{Action, Outcome};
use crate::connector::ConnectorError;
use crate::error::ReceiverError;
use crate::http;
use crate::message::{self, Status, Templates};
use crate::secret::SecretValue;

/// Slack's limit on a header block's text, in characters.
pub const MAX_HEADER: usize = 150;

/// Slack's limit on a section block's text, in characters.
pub const MAX_SECTION: usize = 3000;

/// A `type: slack` receiver.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// The incoming webhook's URL (a secret: anyone with it can post).
    pub url: SecretValue,
    /// Post to this channel instead of the webhook's own (legacy webhooks).
    #[serde(default)]
    pub channel: Option<String>,
    /// The limit for one request (default 10s).
    #[serde(default = "http::default_timeout")]
    pub timeout: Span,
    /// The limit for connecting (default 5s).
    #[serde(default = "http::default_connect_timeout")]
    pub connect_timeout: Span,
    /// The header and notification text; default [`message::DEFAULT_TITLE`].
    #[serde(default)]
    pub title_template: Option<String>,
    /// The message; default [`message::DEFAULT_BODY`].
    #[serde(default)]
    pub body_template: Option<String>,
}

impl SlackConfig {
    /// Problems with the settings, each naming its field. Empty when valid.
    pub fn check(&self) -> Vec<String> {
        let mut problems = self.url.check("url");
        if let Some(url) = self.url.inline()
            && !url.trim().is_empty()
        {
            problems.extend(http::check_url("url", url));
        }
        if let Some(channel) = &self.channel
            && channel.trim().is_empty()
        {
            problems.push("channel is empty".to_string());
        }
        problems.extend(http::check_timeouts(self.timeout, self.connect_timeout));
        problems.extend(message::check_templates(
            self.title_template.as_deref(),
            self.body_template.as_deref(),
        ));
        problems
    }
}

/// Escapes Slack's control characters `&`, `<` and `>`.
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Posts actions to a Slack incoming webhook.
pub struct SlackConnector {
    name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    channel: Option<String>,
    templates: Templates,
    timeout: Duration,
}

impl fmt::Debug for SlackConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL is the secret.
        f.debug_struct("SlackConnector")
            .field("name", &self.name)
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

impl SlackConnector {
    /// Checks `config`, reads the webhook URL and builds the one client.
    pub fn new(name: impl Into<String>, config: SlackConfig) -> Result<Self, ReceiverError> {
        let name = name.into();
        let problems = config.check();
        if !problems.is_empty() {
            return Err(ReceiverError::Invalid { name, problems });
        }
        let url = config
            .url
            .resolve()
            .and_then(|u| http::parse_url(&u).map_err(|why| format!("the webhook URL {why}")))
            .map_err(|message| ReceiverError::Secret {
                name: name.clone(),
                field: "url".into(),
                message,
            })?;
        let templates = Templates::new(
            config.title_template.as_deref(),
            config.body_template.as_deref(),
        )
        .map_err(|problems| ReceiverError::Invalid {
            name: name.clone(),
            problems,
        })?;
        let timeout = http::duration(config.timeout);
        let client =
            http::client(http::duration(config.connect_timeout), timeout).map_err(|message| {
                ReceiverError::Client {
                    name: name.clone(),
                    message,
                }
            })?;
        Ok(SlackConnector {
            name,
            client,
            url,
            channel: config.channel,
            templates,
            timeout,
        })
    }

    /// The message for `action`.
    pub fn payload(&self, action: &Action, status: Status) -> Value {
        let message = self.templates.render(action, status);
        let title = escape(&message.title);
        let mut blocks = vec![
            json!({
                "type": "header",
                "text": {
                    "type": "plain_text",
                    "text": message::truncate(&message.title, MAX_HEADER),
                    "emoji": true,
                },
            }),
            json!({
                "type": "section",
                "text": {
                    "type": "mrkdwn",
                    "text": message::truncate(&escape(message.body.trim_end()), MAX_SECTION),
                },
            }),
        ];
        if let Some(runbook) = message::runbook(action)
            && http::parse_url(runbook).is_ok()
        {
            blocks.push(json!({
                "type": "actions",
                "elements": [{
                    "type": "button",
                    "text": { "type": "plain_text", "text": "Runbook" },
                    "url": runbook,
                }],
            }));
        }
        let mut context = format!(
            "canaryd · {} · key `{}`",
            status.as_str(),
            escape(&action.key)
        );
        if action.dry_run {
            context.push_str(" · *dry run*: nothing was changed");
        }
        blocks.push(json!({
            "type": "context",
            "elements": [{ "type": "mrkdwn", "text": message::truncate(&context, MAX_SECTION) }],
        }));
        let mut payload = json!({ "text": title, "blocks": blocks });
        if let Some(channel) = &self.channel {
            payload["channel"] = json!(channel);
        }
        payload
    }

    async fn send(&self, action: &Action, status: Status) -> Result<Outcome, ConnectorError> {
        let payload = self.payload(action, status);
        let title = self.templates.render(action, status).title;
        if action.dry_run {
            return Ok(Outcome::succeeded(
                &self.name,
                action,
                true,
                format!("would send to Slack: {title}"),
            ));
        }
        let what = format!("Slack receiver {}", self.name);
        let request = self.client.post(self.url.clone()).json(&payload);
        http::send(&what, request, self.timeout).await?;
        tracing::info!(receiver = %self.name, %status, "Slack message posted");
        Ok(Outcome::succeeded(
            &self.name,
            action,
            false,
            format!("posted to Slack: {title}"),
        ))
    }
}

crate::message::notification_connector!(SlackConnector);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

    use super::*;
    use crate::message::tests::action;

    #[test]
    fn the_message_shows_values_against_thresholds_escaped() {
        let config: SlackConfig = serde_yaml_ng::from_str(
            "url: http://127.0.0.1:1/services/T/B/X\nchannel: '#ml-oncall'",
        )
        .unwrap();
        let slack = SlackConnector::new("slack", config).unwrap();
        let p = slack.payload(&action(), Status::Firing);
        assert_eq!(p["channel"], "#ml-oncall");
        assert_eq!(
            p["text"],
            "[CRITICAL] Canary Error Rate High: auto_rollback for model=summarizer"
        );
        let body = p["blocks"][1]["text"]["text"].as_str().unwrap();
        assert!(
            body.contains("canary_error_rate = 0.105313 (threshold &gt; 0.05)"),
            "{body}"
        );
        assert_eq!(
            p["blocks"][2]["elements"][0]["url"],
            "https://runbooks.example.com/canary#error-rate"
        );
        assert!(!format!("{slack:?}").contains("services"));
        assert_eq!(escape("a<b>&"), "a&lt;b&gt;&amp;");
    }

    #[test]
    fn an_inline_url_is_checked() {
        let config: SlackConfig = serde_yaml_ng::from_str("url: hooks.slack.com").unwrap();
        assert!(
            config.check()[0].contains("not a URL"),
            "{:?}",
            config.check()
        );
        let config: SlackConfig = serde_yaml_ng::from_str("url: {env: SLACK_URL}").unwrap();
        assert!(config.check().is_empty());
    }
}
