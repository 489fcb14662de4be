//! Slack: one message per firing action and one when its alert resolves,
//! through an incoming webhook or through Slack's Web API.
//!
//! ```yaml
//! receivers:
//!   slack-oncall:
//!     type: slack
//!     url: {file: /var/run/secrets/slack/oncall}   # an incoming webhook: the URL is the secret
//!     channel: "#ml-oncall"                        # optional; honoured by legacy webhooks only
//!     timeout: 10s                                 # default 10s, whole request
//!     connect_timeout: 5s                          # default 5s
//!     title_template: "..."                        # optional: header and notification text
//!     body_template: "..."                         # optional: the message
//!   slack-threads:
//!     type: slack
//!     token: {file: /var/run/secrets/slack/bot-token}  # the Web API: a bot token (xoxb-...)
//!     channel: C0123456789                             # required with a token: the channel's ID
//!     api_url: https://slack.com/api                   # default
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
//!
//! # One thread per incident (the Web API)
//!
//! An incoming webhook answers `ok` and nothing more, so a notification
//! sent again (a retry after a lost answer, a new owner after a crash)
//! shows twice, and a resolution cannot find its incident. With a `token`,
//! the firing message carries the action's key in Slack's message
//! metadata (`canaryd_incident`), and Slack itself is the record: before
//! posting, canaryd looks for a message with that key in the channel's
//! history since the incident began, and finds one instead of posting
//! again. The resolution is a reply in the incident's thread, also sent to
//! the channel, with metadata of its own (`canaryd_resolved`), so it too is
//! sent once. The bot needs the scopes `chat:write` and `channels:history`
//! (`groups:history` for a private channel) and must be in the channel.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::Mutex;
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

/// The Web API's address.
pub const DEFAULT_API_URL: &str = "https://slack.com/api";

/// The metadata event type of an incident's first message.
pub const INCIDENT_EVENT: &str = "canaryd_incident";

/// The metadata event type of an incident's resolution.
pub const RESOLVED_EVENT: &str = "canaryd_resolved";

/// How far before the incident's start the history is searched: clocks of
/// event time and of Slack may disagree.
const HISTORY_MARGIN_S: i64 = 3600;

/// History pages read when looking for an incident's message.
const HISTORY_PAGES: usize = 5;

/// Incidents whose thread this connector remembers.
const THREADS_REMEMBERED: usize = 10_000;

/// A `type: slack` receiver.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// An incoming webhook's URL (a secret: anyone with it can post). One
    /// of `url` and `token`.
    #[serde(default)]
    pub url: Option<SecretValue>,
    /// A bot token for the Web API: one thread per incident, never posted
    /// twice. One of `url` and `token`.
    #[serde(default)]
    pub token: Option<SecretValue>,
    /// The Web API's base URL (default [`DEFAULT_API_URL`]).
    #[serde(default)]
    pub api_url: Option<String>,
    /// With `url`: post to this channel instead of the webhook's own
    /// (legacy webhooks). With `token`: the channel's ID (required).
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
        let mut problems = Vec::new();
        match (&self.url, &self.token) {
            (Some(_), Some(_)) => problems
                .push("set url (an incoming webhook) or token (the Web API), not both".to_string()),
            (None, None) => problems
                .push("url (an incoming webhook) or token (the Web API) is required".to_string()),
            (Some(url), None) => {
                problems.extend(url.check("url"));
                if let Some(url) = url.inline()
                    && !url.trim().is_empty()
                {
                    problems.extend(http::check_url("url", url));
                }
                if self.api_url.is_some() {
                    problems.push("api_url goes with token, not with url".to_string());
                }
            }
            (None, Some(token)) => {
                problems.extend(token.check("token"));
                if self.channel.is_none() {
                    problems.push(
                        "channel is required with token: the channel's ID, e.g. C0123456789"
                            .to_string(),
                    );
                }
                if let Some(api) = &self.api_url {
                    problems.extend(http::check_url("api_url", api));
                }
            }
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

/// Where messages go.
enum Via {
    /// An incoming webhook's URL.
    Webhook(reqwest::Url),
    /// The Web API, with a bot token.
    Api {
        token: String,
        /// The base URL, ending in `/`.
        base: reqwest::Url,
        channel: String,
        threads: Mutex<Threads>,
    },
}

/// An incident's thread, as far as this connector knows it.
#[derive(Clone, Debug, PartialEq)]
struct Thread {
    /// The first message's `ts`, which names the thread.
    ts: String,
    /// Its resolution was posted.
    resolved: bool,
}

/// Recently used threads by action key, oldest forgotten first; Slack's
/// history is the record, this only saves looking.
#[derive(Default)]
struct Threads {
    by_key: HashMap<String, Thread>,
    order: VecDeque<String>,
}

impl Threads {
    fn get(&self, key: &str) -> Option<Thread> {
        self.by_key.get(key).cloned()
    }

    fn put(&mut self, key: &str, thread: Thread) {
        if self.by_key.insert(key.to_string(), thread).is_none() {
            self.order.push_back(key.to_string());
            while self.order.len() > THREADS_REMEMBERED {
                if let Some(old) = self.order.pop_front() {
                    self.by_key.remove(&old);
                }
            }
        }
    }
}

/// Posts actions to Slack.
pub struct SlackConnector {
    name: String,
    client: reqwest::Client,
    via: Via,
    channel: Option<String>,
    templates: Templates,
    timeout: Duration,
}

impl fmt::Debug for SlackConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The webhook URL and the token are the secrets.
        f.debug_struct("SlackConnector")
            .field("name", &self.name)
            .field("channel", &self.channel)
            .field(
                "via",
                &match self.via {
                    Via::Webhook(_) => "webhook",
                    Via::Api { .. } => "web api",
                },
            )
            .finish_non_exhaustive()
    }
}

impl SlackConnector {
    /// Checks `config`, reads the webhook URL or token and builds the one
    /// client.
    pub fn new(name: impl Into<String>, config: SlackConfig) -> Result<Self, ReceiverError> {
        let name = name.into();
        let problems = config.check();
        if !problems.is_empty() {
            return Err(ReceiverError::Invalid { name, problems });
        }
        let secret = |field: &str, message: String| ReceiverError::Secret {
            name: name.clone(),
            field: field.into(),
            message,
        };
        let via =
            match (&config.url, &config.token) {
                (Some(url), _) => Via::Webhook(
                    url.resolve()
                        .and_then(|u| {
                            http::parse_url(&u).map_err(|why| format!("the webhook URL {why}"))
                        })
                        .map_err(|m| secret("url", m))?,
                ),
                (None, Some(token)) => {
                    let token = token.resolve().map_err(|m| secret("token", m))?;
                    let api = config.api_url.as_deref().unwrap_or(DEFAULT_API_URL);
                    // A trailing slash, so that `join` appends the method.
                    let base = http::parse_url(&format!("{}/", api.trim_end_matches('/')))
                        .map_err(|why| ReceiverError::Invalid {
                            name: name.clone(),
                            problems: vec![format!("api_url {why}")],
                        })?;
                    Via::Api {
                        token: token.trim().to_string(),
                        base,
                        channel: config.channel.clone().unwrap_or_default(),
                        threads: Mutex::new(Threads::default()),
                    }
                }
                // check() refused a config with neither.
                (None, None) => {
                    return Err(ReceiverError::Invalid {
                        name,
                        problems: vec!["url or token is required".into()],
                    });
                }
            };
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
            via,
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
        let detail = match &self.via {
            Via::Webhook(url) => {
                let what = format!("Slack receiver {}", self.name);
                let request = self.client.post(url.clone()).json(&payload);
                http::send(&what, request, self.timeout).await?;
                format!("posted to Slack: {title}")
            }
            Via::Api {
                token,
                base,
                channel,
                threads,
            } => {
                let api = Api {
                    connector: self,
                    token,
                    base,
                    channel,
                };
                api.send(threads, action, status, payload).await?
            }
        };
        tracing::info!(receiver = %self.name, %status, %detail, "Slack");
        Ok(Outcome::succeeded(&self.name, action, false, detail))
    }
}

/// One use of the Web API.
struct Api<'a> {
    connector: &'a SlackConnector,
    token: &'a str,
    base: &'a reqwest::Url,
    channel: &'a str,
}

impl Api<'_> {
    /// Posts the incident's first message, or its resolution in its
    /// thread, unless Slack already has it; says what it did.
    async fn send(
        &self,
        threads: &Mutex<Threads>,
        action: &Action,
        status: Status,
        mut payload: Value,
    ) -> Result<String, ConnectorError> {
        let key = action.key.as_str();
        let known = threads.lock().unwrap_or_else(|p| p.into_inner()).get(key);
        let thread = match known {
            Some(t) if t.resolved || status == Status::Firing => Some(t),
            // Another replica may have resolved it since.
            Some(t) => Some(self.find(action, status).await?.unwrap_or(t)),
            None => self.find(action, status).await?,
        };
        let remember = |thread: Thread| {
            threads
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(key, thread)
        };
        payload["channel"] = json!(self.channel);
        match (status, thread) {
            (Status::Firing, Some(t)) => {
                let ts = t.ts.clone();
                remember(t);
                Ok(format!("already in Slack (thread {ts}): not posted again"))
            }
            (Status::Firing, None) => {
                payload["metadata"] = metadata(INCIDENT_EVENT, key);
                let ts = self.post(&payload).await?;
                remember(Thread {
                    ts: ts.clone(),
                    resolved: false,
                });
                Ok(format!("posted to Slack (thread {ts})"))
            }
            (Status::Resolved, Some(t)) if t.resolved => {
                let ts = t.ts.clone();
                remember(t);
                Ok(format!(
                    "resolution already in Slack (thread {ts}): not posted again"
                ))
            }
            (Status::Resolved, Some(t)) => {
                payload["thread_ts"] = json!(t.ts);
                payload["reply_broadcast"] = json!(true);
                payload["metadata"] = metadata(RESOLVED_EVENT, key);
                self.post(&payload).await?;
                let ts = t.ts.clone();
                remember(Thread {
                    ts: t.ts,
                    resolved: true,
                });
                Ok(format!("resolution posted in Slack thread {ts}"))
            }
            (Status::Resolved, None) => {
                // The incident's message is not to be found (posted by a
                // webhook, or deleted): the resolution stands alone.
                payload["metadata"] = metadata(RESOLVED_EVENT, key);
                self.post(&payload).await?;
                Ok("resolution posted to Slack (no thread found for the incident)".to_string())
            }
        }
    }

    /// The incident's thread in the channel's history since it began, and
    /// for a resolution whether its thread holds one already.
    async fn find(
        &self,
        action: &Action,
        status: Status,
    ) -> Result<Option<Thread>, ConnectorError> {
        let oldest = (action.evidence.since.millis() / 1000 - HISTORY_MARGIN_S).max(0);
        let mut cursor: Option<String> = None;
        for _ in 0..HISTORY_PAGES {
            let mut query = vec![
                ("channel", self.channel.to_string()),
                ("oldest", oldest.to_string()),
                ("limit", "200".to_string()),
                ("include_all_metadata", "true".to_string()),
            ];
            if let Some(c) = &cursor {
                query.push(("cursor", c.clone()));
            }
            let page = self.get("conversations.history", &query).await?;
            let found = page["messages"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|m| carries(m, INCIDENT_EVENT, &action.key))
                .and_then(|m| m["ts"].as_str().map(str::to_string));
            if let Some(ts) = found {
                let resolved =
                    status == Status::Resolved && self.resolved(&ts, &action.key).await?;
                return Ok(Some(Thread { ts, resolved }));
            }
            cursor = page["response_metadata"]["next_cursor"]
                .as_str()
                .filter(|c| !c.is_empty())
                .map(str::to_string);
            if cursor.is_none() {
                break;
            }
        }
        Ok(None)
    }

    /// Whether the thread `ts` holds this incident's resolution.
    async fn resolved(&self, ts: &str, key: &str) -> Result<bool, ConnectorError> {
        let query = [
            ("channel", self.channel.to_string()),
            ("ts", ts.to_string()),
            ("limit", "200".to_string()),
            ("include_all_metadata", "true".to_string()),
        ];
        let replies = self.get("conversations.replies", &query).await?;
        Ok(replies["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| carries(m, RESOLVED_EVENT, key)))
    }

    /// `chat.postMessage`; the new message's `ts`.
    async fn post(&self, payload: &Value) -> Result<String, ConnectorError> {
        let url = self.url("chat.postMessage")?;
        let request = self
            .connector
            .client
            .post(url)
            .bearer_auth(self.token)
            .json(payload);
        let answer = self.call("chat.postMessage", request).await?;
        answer["ts"].as_str().map(str::to_string).ok_or_else(|| {
            ConnectorError::Permanent("Slack's chat.postMessage answered ok without a ts".into())
        })
    }

    async fn get(&self, method: &str, query: &[(&str, String)]) -> Result<Value, ConnectorError> {
        let request = self
            .connector
            .client
            .get(self.url(method)?)
            .bearer_auth(self.token)
            .query(query);
        self.call(method, request).await
    }

    fn url(&self, method: &str) -> Result<reqwest::Url, ConnectorError> {
        self.base
            .join(method)
            .map_err(|e| ConnectorError::Permanent(format!("Slack API URL for {method}: {e}")))
    }

    /// Sends a Web API request: Slack answers 200 with `ok: false` and an
    /// error name for most failures.
    async fn call(
        &self,
        method: &str,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, ConnectorError> {
        let what = format!("Slack receiver {} ({method})", self.connector.name);
        let answer = http::send(&what, request, self.connector.timeout).await?;
        let body: Value = serde_json::from_str(&answer.body).map_err(|e| {
            ConnectorError::retriable(format!("{what}: the answer is not JSON: {e}"))
        })?;
        if body["ok"] == json!(true) {
            return Ok(body);
        }
        let error = body["error"].as_str().unwrap_or("no error named");
        Err(api_error(&what, error))
    }
}

/// A Web API error by its name: Slack's own trouble is worth a retry,
/// everything else (credentials, scopes, the channel) needs a person.
fn api_error(what: &str, error: &str) -> ConnectorError {
    match error {
        "ratelimited"
        | "internal_error"
        | "fatal_error"
        | "service_unavailable"
        | "request_timeout" => ConnectorError::retriable(format!("{what}: {error}")),
        _ => ConnectorError::Permanent(format!("{what}: {error}")),
    }
}

/// Message metadata naming the incident.
fn metadata(event: &str, key: &str) -> Value {
    json!({ "event_type": event, "event_payload": { "key": key } })
}

/// Whether a message carries `event` metadata for `key`.
fn carries(message: &Value, event: &str, key: &str) -> bool {
    message["metadata"]["event_type"] == event && message["metadata"]["event_payload"]["key"] == key
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
    fn a_token_needs_a_channel_and_excludes_a_url() {
        let config: SlackConfig = serde_yaml_ng::from_str("token: {env: SLACK_TOKEN}").unwrap();
        assert!(
            config.check()[0].contains("channel is required"),
            "{:?}",
            config.check()
        );
        let config: SlackConfig =
            serde_yaml_ng::from_str("token: {env: T}\nurl: {env: U}\nchannel: C1").unwrap();
        assert!(
            config.check()[0].contains("not both"),
            "{:?}",
            config.check()
        );
        let config: SlackConfig = serde_yaml_ng::from_str("channel: C1").unwrap();
        assert!(
            config.check()[0].contains("is required"),
            "{:?}",
            config.check()
        );
        let config: SlackConfig =
            serde_yaml_ng::from_str("url: {env: U}\napi_url: http://127.0.0.1:1").unwrap();
        assert!(
            config.check()[0].contains("api_url"),
            "{:?}",
            config.check()
        );
        let config: SlackConfig = serde_yaml_ng::from_str(
            "token: {env: T}\nchannel: C1\napi_url: http://127.0.0.1:1/api",
        )
        .unwrap();
        assert!(config.check().is_empty(), "{:?}", config.check());
    }

    #[test]
    fn slacks_own_trouble_is_retried_and_the_rest_is_not() {
        assert!(api_error("s", "ratelimited").is_retriable());
        assert!(api_error("s", "internal_error").is_retriable());
        assert!(!api_error("s", "channel_not_found").is_retriable());
        assert!(!api_error("s", "invalid_auth").is_retriable());
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
