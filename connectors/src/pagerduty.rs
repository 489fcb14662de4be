//! PagerDuty, through the Events API v2: a firing action triggers an
//! incident, its resolution resolves it. The action's idempotency key is the
//! `dedup_key`, so a retried or re-delivered trigger never opens a second
//! incident, and the resolve finds the incident the trigger opened.
//!
//! ```yaml
//! receivers:
//!   pagerduty-oncall:
//!     type: pagerduty
//!     routing_key: {env: PD_ROUTING_KEY}   # the integration key of a service
//!     url: https://events.pagerduty.com/v2/enqueue   # the default; EU: events.eu.pagerduty.com
//!     timeout: 10s                         # default 10s, whole request
//!     connect_timeout: 5s                  # default 5s
//!     title_template: "..."                # optional: the incident summary
//!     body_template: "..."                 # optional: custom_details.message
//! ```
//!
//! A trigger is
//! `{"routing_key", "event_action": "trigger", "dedup_key", "payload":
//! {"summary", "source": "canaryd", "severity", "timestamp", "component",
//! "group", "class", "custom_details"}, "links", "client": "canaryd"}`:
//! the summary is the title (at most 1024 characters), the severity maps
//! canaryd's critical, high, medium and low to PagerDuty's critical, error,
//! warning and info, the component is the subject's `model`, the group the
//! rule's `team` (or `group`) label, the class the rule, and the custom
//! details carry the values, thresholds, condition, subject, annotations and
//! the rendered body. A runbook annotation becomes a link. PagerDuty answers
//! 202 Accepted.

use std::fmt;
use std::time::Duration;

use canaryd_rules::{Severity, Span};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::action::{Action, Outcome};
use crate::connector::ConnectorError;
use crate::error::ReceiverError;
use crate::http;
use crate::message::{self, Status, Templates};
use crate::secret::SecretValue;

/// PagerDuty's Events API v2 endpoint.
pub const DEFAULT_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// PagerDuty's limit on `payload.summary`, in characters.
pub const MAX_SUMMARY: usize = 1024;

/// PagerDuty's limit on `dedup_key`, in characters.
pub const MAX_DEDUP_KEY: usize = 255;

/// A `type: pagerduty` receiver.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyConfig {
    /// The integration (routing) key of the PagerDuty service.
    pub routing_key: SecretValue,
    /// The Events API v2 endpoint (default [`DEFAULT_URL`]).
    #[serde(default = "default_url")]
    pub url: String,
    /// The limit for one request (default 10s).
    #[serde(default = "http::default_timeout")]
    pub timeout: Span,
    /// The limit for connecting (default 5s).
    #[serde(default = "http::default_connect_timeout")]
    pub connect_timeout: Span,
    /// The incident summary; default [`message::DEFAULT_TITLE`].
    #[serde(default)]
    pub title_template: Option<String>,
    /// `custom_details.message`; default [`message::DEFAULT_BODY`].
    #[serde(default)]
    pub body_template: Option<String>,
}

fn default_url() -> String {
    DEFAULT_URL.to_string()
}

impl PagerDutyConfig {
    /// Problems with the settings, each naming its field. Empty when valid.
    pub fn check(&self) -> Vec<String> {
        let mut problems = self.routing_key.check("routing_key");
        problems.extend(http::check_url("url", &self.url));
        problems.extend(http::check_timeouts(self.timeout, self.connect_timeout));
        problems.extend(message::check_templates(
            self.title_template.as_deref(),
            self.body_template.as_deref(),
        ));
        problems
    }
}

/// PagerDuty's severity for a canaryd severity.
pub fn severity(s: Severity) -> &'static str {
    match s {
        Severity::Critical => "critical",
        Severity::High => "error",
        Severity::Medium => "warning",
        Severity::Low => "info",
    }
}

/// The `dedup_key` for an action: its idempotency key, or, when that is
/// longer than PagerDuty allows, its start and a hash of the whole.
pub fn dedup_key(action: &Action) -> String {
    let key = action.key.as_str();
    if key.chars().count() <= MAX_DEDUP_KEY {
        return key.to_string();
    }
    let head: String = key.chars().take(MAX_DEDUP_KEY - 17).collect();
    format!("{head}#{}", action.key_digest())
}

/// Sends actions to PagerDuty as Events API v2 events.
pub struct PagerDutyConnector {
    name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    routing_key: String,
    templates: Templates,
    timeout: Duration,
}

impl fmt::Debug for PagerDutyConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PagerDutyConnector")
            .field("name", &self.name)
            .field("url", &self.url.as_str())
            .finish_non_exhaustive()
    }
}

impl PagerDutyConnector {
    /// Checks `config`, reads the routing key and builds the one client.
    pub fn new(name: impl Into<String>, config: PagerDutyConfig) -> Result<Self, ReceiverError> {
        let name = name.into();
        let problems = config.check();
        if !problems.is_empty() {
            return Err(ReceiverError::Invalid { name, problems });
        }
        let routing_key =
            config
                .routing_key
                .resolve()
                .map_err(|message| ReceiverError::Secret {
                    name: name.clone(),
                    field: "routing_key".into(),
                    message,
                })?;
        let url = http::parse_url(&config.url).map_err(|why| ReceiverError::Invalid {
            name: name.clone(),
            problems: vec![format!("url {why}")],
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
        Ok(PagerDutyConnector {
            name,
            client,
            url,
            routing_key,
            templates,
            timeout,
        })
    }

    /// The trigger event for `action`.
    pub fn trigger_event(&self, action: &Action) -> Value {
        let message = self.templates.render(action, Status::Firing);
        let mut payload = json!({
            "summary": message::truncate(&message.title, MAX_SUMMARY),
            "source": "canaryd",
            "severity": severity(action.severity),
            "timestamp": action.ts.to_string(),
            "class": action.rule,
            "custom_details": {
                "action": action.action,
                "subject": action.subject,
                "condition": action.evidence.condition,
                "values": action.evidence.values,
                "thresholds": action.evidence.thresholds,
                "checks": message::checks(action),
                "since": action.evidence.since,
                "deadline": action.deadline,
                "annotations": action.annotations,
                "labels": action.labels,
                "key": action.key,
                "message": message.body,
            },
        });
        let component = action
            .subject
            .get("model")
            .cloned()
            .unwrap_or_else(|| message::subject_text(&action.subject));
        payload["component"] = json!(component);
        if let Some(group) = action
            .labels
            .get("team")
            .or_else(|| action.labels.get("group"))
        {
            payload["group"] = json!(group);
        }
        let mut event = json!({
            "routing_key": self.routing_key,
            "event_action": "trigger",
            "dedup_key": dedup_key(action),
            "payload": payload,
            "client": "canaryd",
        });
        if let Some(runbook) = message::runbook(action) {
            event["links"] = json!([{ "href": runbook, "text": "Runbook" }]);
        }
        event
    }

    /// The resolve event for `action`.
    pub fn resolve_event(&self, action: &Action) -> Value {
        json!({
            "routing_key": self.routing_key,
            "event_action": "resolve",
            "dedup_key": dedup_key(action),
        })
    }

    async fn send(&self, action: &Action, status: Status) -> Result<Outcome, ConnectorError> {
        let (event, verb) = match status {
            Status::Firing => (self.trigger_event(action), "trigger"),
            Status::Resolved => (self.resolve_event(action), "resolve"),
        };
        let key = dedup_key(action);
        if action.dry_run {
            let what = match status {
                Status::Firing => format!(
                    ": {}",
                    event["payload"]["summary"].as_str().unwrap_or_default()
                ),
                Status::Resolved => String::new(),
            };
            return Ok(Outcome::succeeded(
                &self.name,
                action,
                true,
                format!("would send a PagerDuty {verb} event, dedup_key {key}{what}"),
            ));
        }
        let what = format!("PagerDuty receiver {}", self.name);
        let request = self.client.post(self.url.clone()).json(&event);
        let answer = http::send(&what, request, self.timeout).await?;
        let echoed = serde_json::from_str::<Value>(&answer.body)
            .ok()
            .and_then(|v| v["dedup_key"].as_str().map(str::to_string))
            .unwrap_or(key);
        tracing::info!(receiver = %self.name, event = verb, dedup_key = %echoed, "PagerDuty event accepted");
        Ok(Outcome::succeeded(
            &self.name,
            action,
            false,
            format!(
                "PagerDuty accepted the {verb} event ({}), dedup_key {echoed}",
                answer.status
            ),
        ))
    }
}

crate::message::notification_connector!(PagerDutyConnector);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

    use super::*;
    use crate::message::tests::action;

    fn connector() -> PagerDutyConnector {
        let config: PagerDutyConfig =
            serde_yaml_ng::from_str("routing_key: R0UT1NGKEY\nurl: http://127.0.0.1:1/v2/enqueue")
                .unwrap();
        PagerDutyConnector::new("pd", config).unwrap()
    }

    #[test]
    fn a_trigger_carries_what_pagerduty_documents() {
        let event = connector().trigger_event(&action());
        assert_eq!(event["routing_key"], "R0UT1NGKEY");
        assert_eq!(event["event_action"], "trigger");
        assert_eq!(event["dedup_key"], action().key);
        assert_eq!(event["client"], "canaryd");
        let p = &event["payload"];
        assert_eq!(
            p["summary"],
            "[CRITICAL] Canary Error Rate High: auto_rollback for model=summarizer"
        );
        assert_eq!(p["source"], "canaryd");
        assert_eq!(p["severity"], "critical");
        assert_eq!(p["timestamp"], "1970-01-01T00:05:01.000Z");
        assert_eq!(p["component"], "summarizer");
        assert_eq!(p["group"], "ml-platform");
        assert_eq!(p["class"], "Canary Error Rate High");
        assert_eq!(p["custom_details"]["values"]["canary_error_rate"], 0.105313);
        assert_eq!(p["custom_details"]["thresholds"][0]["op"], ">");
        assert_eq!(
            event["links"][0]["href"],
            "https://runbooks.example.com/canary#error-rate"
        );
        assert!(!format!("{:?}", connector()).contains("R0UT1NGKEY"));
    }

    #[test]
    fn severities_map_and_long_keys_are_shortened_stably() {
        assert_eq!(severity(Severity::High), "error");
        assert_eq!(severity(Severity::Medium), "warning");
        assert_eq!(severity(Severity::Low), "info");
        let mut a = action();
        a.key = "k".repeat(400);
        let k = dedup_key(&a);
        assert_eq!(k.chars().count(), MAX_DEDUP_KEY);
        assert_eq!(k, dedup_key(&a));
        a.key.push('x');
        assert_ne!(k, dedup_key(&a));
    }

    #[test]
    fn config_is_checked() {
        let c: PagerDutyConfig = serde_yaml_ng::from_str(
            "routing_key: {env: PD}\nurl: 'ftp://x'\ntimeout: 0s\ntitle_template: '{{'",
        )
        .unwrap();
        let problems = c.check();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(serde_yaml_ng::from_str::<PagerDutyConfig>("routing_key: x\nrouting: y").is_err());
        let c: PagerDutyConfig = serde_yaml_ng::from_str("routing_key: x").unwrap();
        assert_eq!(c.url, DEFAULT_URL);
    }
}
