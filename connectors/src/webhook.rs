//! A generic webhook: the whole [`Action`] as JSON, with `"status":
//! "firing"` (or `"resolved"` when its alert resolves), and the rendered
//! `title` and `body`. Suits ticket systems (an incident ticket on
//! rollback is a webhook receiver routed for `auto_rollback`), chat bridges
//! and anything home-grown.
//!
//! ```yaml
//! receivers:
//!   incidents:
//!     type: webhook
//!     url: https://tickets.example.com/hooks/canary   # or {env: ...} / {file: ...}
//!     bearer: {env: TICKET_TOKEN}          # optional: Authorization: Bearer ...
//!     # basic: {username: canaryd, password: {env: TICKET_PASSWORD}}   # or Basic auth
//!     headers:                             # optional extra headers
//!       X-Team: ml-platform
//!       X-Api-Key: {env: TICKET_API_KEY}
//!     timeout: 10s                         # default 10s, whole request
//!     connect_timeout: 5s                  # default 5s
//! ```
//!
//! The body is `{"status", "title", "body", "key", "ts", "rule", "subject",
//! "action", "severity", "deadline", "dry_run", "evidence", "labels",
//! "annotations"}`. Any 2xx answer is success.
//!
//! Every request carries `Idempotency-Key: canaryd-<digest>-<status>`, the
//! same for every retry or re-delivery of one action's firing (or
//! resolution), so a receiver that honours it opens one ticket per
//! incident however often canaryd had to try.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::prelude::BASE64_STANDARD;
use canaryd_rules::Span;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::action::{Action, Outcome};
use crate::connector::ConnectorError;
use crate::error::ReceiverError;
use crate::http;
use crate::message::{self, Status, Templates};
use crate::secret::SecretValue;

/// A `type: webhook` receiver.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where to POST.
    pub url: SecretValue,
    /// Sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer: Option<SecretValue>,
    /// Sent as `Authorization: Basic ...`.
    #[serde(default)]
    pub basic: Option<BasicAuth>,
    /// Extra headers, sent with every request.
    #[serde(default)]
    pub headers: BTreeMap<String, SecretValue>,
    /// The limit for one request (default 10s).
    #[serde(default = "http::default_timeout")]
    pub timeout: Span,
    /// The limit for connecting (default 5s).
    #[serde(default = "http::default_connect_timeout")]
    pub connect_timeout: Span,
    /// The `title` field; default [`message::DEFAULT_TITLE`].
    #[serde(default)]
    pub title_template: Option<String>,
    /// The `body` field; default [`message::DEFAULT_BODY`].
    #[serde(default)]
    pub body_template: Option<String>,
}

/// HTTP Basic credentials.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: SecretValue,
}

impl WebhookConfig {
    /// Problems with the settings, each naming its field. Empty when valid.
    pub fn check(&self) -> Vec<String> {
        let mut problems = self.url.check("url");
        if let Some(url) = self.url.inline()
            && !url.trim().is_empty()
        {
            problems.extend(http::check_url("url", url));
        }
        if self.bearer.is_some() && self.basic.is_some() {
            problems.push("bearer and basic are both set; use one".to_string());
        }
        if let Some(token) = &self.bearer {
            problems.extend(token.check("bearer"));
        }
        if let Some(basic) = &self.basic {
            if basic.username.is_empty() {
                problems.push("basic.username is empty".to_string());
            }
            if basic.username.contains(':') {
                problems.push("basic.username may not contain `:`".to_string());
            }
            problems.extend(basic.password.check("basic.password"));
        }
        for (name, value) in &self.headers {
            let field = format!("headers.{name}");
            match HeaderName::from_bytes(name.as_bytes()) {
                Err(_) => problems.push(format!("{field}: not a valid header name")),
                Ok(h) if h == AUTHORIZATION && (self.bearer.is_some() || self.basic.is_some()) => {
                    problems.push(format!("{field}: set by bearer or basic already"))
                }
                Ok(h) if h == CONTENT_TYPE => {
                    problems.push(format!("{field}: canaryd always sends application/json"))
                }
                Ok(_) => {}
            }
            if let Some(inline) = value.inline()
                && HeaderValue::from_str(inline).is_err()
            {
                problems.push(format!("{field}: not a valid header value"));
            }
        }
        problems.extend(http::check_timeouts(self.timeout, self.connect_timeout));
        problems.extend(message::check_templates(
            self.title_template.as_deref(),
            self.body_template.as_deref(),
        ));
        problems
    }
}

/// POSTs actions as JSON to a URL.
pub struct WebhookConnector {
    name: String,
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    templates: Templates,
    timeout: Duration,
}

impl fmt::Debug for WebhookConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConnector")
            .field("name", &self.name)
            .field("host", &self.url.host_str())
            .finish_non_exhaustive()
    }
}

impl WebhookConnector {
    /// Checks `config`, reads its secrets and builds the one client.
    pub fn new(name: impl Into<String>, config: WebhookConfig) -> Result<Self, ReceiverError> {
        let name = name.into();
        let problems = config.check();
        if !problems.is_empty() {
            return Err(ReceiverError::Invalid { name, problems });
        }
        let secret = |field: &str, value: &SecretValue| {
            value.resolve().map_err(|message| ReceiverError::Secret {
                name: name.clone(),
                field: field.to_string(),
                message,
            })
        };
        let url = secret("url", &config.url)?;
        let url = http::parse_url(&url).map_err(|why| ReceiverError::Secret {
            name: name.clone(),
            field: "url".into(),
            message: format!("the URL {why}"),
        })?;
        let mut headers = HeaderMap::new();
        let header_value = |field: &str, text: String| {
            let mut value = HeaderValue::from_str(&text).map_err(|_| ReceiverError::Secret {
                name: name.clone(),
                field: field.to_string(),
                message: "not a valid header value".into(),
            })?;
            value.set_sensitive(true);
            Ok::<_, ReceiverError>(value)
        };
        for (header, value) in &config.headers {
            let field = format!("headers.{header}");
            let parsed =
                HeaderName::from_bytes(header.as_bytes()).map_err(|_| ReceiverError::Invalid {
                    name: name.clone(),
                    problems: vec![format!("{field}: not a valid header name")],
                })?;
            headers.insert(parsed, header_value(&field, secret(&field, value)?)?);
        }
        if let Some(token) = &config.bearer {
            let token = secret("bearer", token)?;
            headers.insert(
                AUTHORIZATION,
                header_value("bearer", format!("Bearer {token}"))?,
            );
        }
        if let Some(basic) = &config.basic {
            let password = secret("basic.password", &basic.password)?;
            let encoded = BASE64_STANDARD.encode(format!("{}:{password}", basic.username));
            headers.insert(
                AUTHORIZATION,
                header_value("basic", format!("Basic {encoded}"))?,
            );
        }
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
        Ok(WebhookConnector {
            name,
            client,
            url,
            headers,
            templates,
            timeout,
        })
    }

    /// The JSON body for `action`.
    pub fn payload(&self, action: &Action, status: Status) -> Value {
        let message = self.templates.render(action, status);
        let mut body = serde_json::to_value(action).unwrap_or_else(|_| json!({}));
        if let Value::Object(map) = &mut body {
            map.insert("status".into(), json!(status.as_str()));
            map.insert("title".into(), json!(message.title));
            map.insert("body".into(), json!(message.body));
        }
        body
    }

    async fn send(&self, action: &Action, status: Status) -> Result<Outcome, ConnectorError> {
        let payload = self.payload(action, status);
        let host = self.url.host_str().unwrap_or_default();
        if action.dry_run {
            return Ok(Outcome::succeeded(
                &self.name,
                action,
                true,
                format!("would send the {status} action to the webhook at {host}"),
            ));
        }
        let what = format!("webhook receiver {}", self.name);
        let request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header(
                "idempotency-key",
                format!("canaryd-{}-{status}", action.key_digest()),
            )
            .json(&payload);
        let answer = http::send(&what, request, self.timeout).await?;
        tracing::info!(receiver = %self.name, %status, code = answer.status.as_u16(), "webhook delivered");
        Ok(Outcome::succeeded(
            &self.name,
            action,
            false,
            format!(
                "sent the {status} action to the webhook at {host}: {}",
                answer.status
            ),
        ))
    }
}

crate::message::notification_connector!(WebhookConnector);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

    use super::*;
    use crate::message::tests::action;

    #[test]
    fn the_payload_is_the_action_with_a_status() {
        let config: WebhookConfig = serde_yaml_ng::from_str(
            "url: http://127.0.0.1:1/hooks/x\nbearer: t0ken\nheaders: {X-Team: ml}",
        )
        .unwrap();
        let hook = WebhookConnector::new("hook", config).unwrap();
        let p = hook.payload(&action(), Status::Resolved);
        assert_eq!(p["status"], "resolved");
        assert_eq!(p["key"], action().key);
        assert_eq!(p["evidence"]["values"]["canary_error_rate"], 0.105313);
        assert_eq!(p["severity"], "critical");
        assert!(p["title"].as_str().unwrap().starts_with("[RESOLVED]"));
        assert!(!format!("{hook:?}").contains("t0ken"));
    }

    #[test]
    fn conflicting_auth_and_bad_headers_are_reported() {
        let config: WebhookConfig = serde_yaml_ng::from_str(
            "url: http://x/\nbearer: a\nbasic: {username: 'u:x', password: p}\nheaders: {'bad header': x, Authorization: y}",
        )
        .unwrap();
        let problems = config.check();
        assert_eq!(problems.len(), 4, "{problems:?}");
    }
}
