//! Email over SMTP (lettre, async on tokio, rustls): one message per firing
//! action and one when its alert resolves.
//!
//! ```yaml
//! receivers:
//!   email-ml:
//!     type: email
//!     host: smtp.example.com
//!     port: 587                      # default: 25 (tls: none), 587 (starttls), 465 (tls)
//!     tls: starttls                  # none | starttls (default) | tls
//!     username: canaryd              # optional, with password
//!     password: {env: SMTP_PASSWORD}
//!     from: "canaryd <canaryd@example.com>"
//!     to: [ml-team@example.com]
//!     timeout: 30s                   # default 30s, the whole send
//!     title_template: "..."          # optional: the subject
//!     body_template: "..."           # optional: the plain-text body
//! ```
//!
//! The transport is built once. The whole send (connect, TLS, EHLO, AUTH,
//! MAIL, RCPT, DATA) is bounded by `timeout`. Authentication refused (535
//! and the other 5xx AUTH replies) is permanent, with a message naming the
//! server; other permanent (5xx) replies are permanent; transient (4xx)
//! replies, refused connections and timeouts are retriable.

use std::fmt;
use std::time::Duration;

use canaryd_rules::Span;
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde::Deserialize;

use crate::action::{Action, Outcome};
use crate::connector::ConnectorError;
use crate::error::ReceiverError;
use crate::http::{chain, duration};
use crate::message::{self, Status, Templates};
use crate::secret::SecretValue;

/// How the connection to the SMTP server is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmailTls {
    /// Plain text (a relay on localhost or inside the cluster).
    #[serde(rename = "none")]
    Plain,
    /// Connect in plain text, then require `STARTTLS` (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, port 465).
    Tls,
}

impl EmailTls {
    /// The usual port for this kind of connection.
    pub fn default_port(self) -> u16 {
        match self {
            EmailTls::Plain => 25,
            EmailTls::Starttls => 587,
            EmailTls::Tls => 465,
        }
    }
}

/// A `type: email` receiver.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    /// The SMTP server.
    pub host: String,
    /// Its port; default by `tls` ([`EmailTls::default_port`]).
    #[serde(default)]
    pub port: Option<u16>,
    /// How the connection is secured (default `starttls`).
    #[serde(default)]
    pub tls: EmailTls,
    /// The user to authenticate as; needs `password`.
    #[serde(default)]
    pub username: Option<String>,
    /// The password; needs `username`.
    #[serde(default)]
    pub password: Option<SecretValue>,
    /// The sender, `canaryd@example.com` or `canaryd <canaryd@example.com>`.
    pub from: String,
    /// The recipients.
    pub to: Vec<String>,
    /// The limit for one whole send (default 30s).
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// The subject; default [`message::DEFAULT_TITLE`].
    #[serde(default)]
    pub title_template: Option<String>,
    /// The plain-text body; default [`message::DEFAULT_BODY`].
    #[serde(default)]
    pub body_template: Option<String>,
}

fn default_timeout() -> Span {
    Span::seconds(30)
}

impl EmailConfig {
    /// Problems with the settings, each naming its field. Empty when valid.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.host.trim().is_empty() {
            problems.push("host is empty".to_string());
        }
        if self.port == Some(0) {
            problems.push("port may not be 0".to_string());
        }
        match (&self.username, &self.password) {
            (Some(_), None) => problems.push("username is set but password is not".to_string()),
            (None, Some(_)) => problems.push("password is set but username is not".to_string()),
            (Some(user), Some(password)) => {
                if user.is_empty() {
                    problems.push("username is empty".to_string());
                }
                problems.extend(password.check("password"));
            }
            (None, None) => {}
        }
        if let Err(e) = self.from.parse::<Mailbox>() {
            problems.push(format!("from `{}` is not an email address: {e}", self.from));
        }
        if self.to.is_empty() {
            problems.push("to lists no recipient".to_string());
        }
        for to in &self.to {
            if let Err(e) = to.parse::<Mailbox>() {
                problems.push(format!("to `{to}` is not an email address: {e}"));
            }
        }
        if self.timeout.millis() <= 0 {
            problems.push("timeout must be longer than 0s".to_string());
        }
        problems.extend(message::check_templates(
            self.title_template.as_deref(),
            self.body_template.as_deref(),
        ));
        problems
    }

    /// The port in use: `port`, or the usual one for `tls`.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.tls.default_port())
    }
}

/// Sends actions as email.
pub struct EmailConnector {
    name: String,
    transport: AsyncSmtpTransport<Tokio1Executor>,
    server: String,
    from: Mailbox,
    to: Vec<Mailbox>,
    templates: Templates,
    timeout: Duration,
}

impl fmt::Debug for EmailConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmailConnector")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("to", &self.to)
            .finish_non_exhaustive()
    }
}

impl EmailConnector {
    /// Checks `config`, reads the password and builds the one transport.
    /// Nothing is sent and no connection is made.
    pub fn new(name: impl Into<String>, config: EmailConfig) -> Result<Self, ReceiverError> {
        let name = name.into();
        let problems = config.check();
        if !problems.is_empty() {
            return Err(ReceiverError::Invalid { name, problems });
        }
        let invalid = |problem: String| ReceiverError::Invalid {
            name: name.clone(),
            problems: vec![problem],
        };
        let from: Mailbox = config
            .from
            .parse()
            .map_err(|e| invalid(format!("from: {e}")))?;
        let to = config
            .to
            .iter()
            .map(|t| {
                t.parse::<Mailbox>()
                    .map_err(|e| invalid(format!("to: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let port = config.port();
        let timeout = duration(config.timeout);
        let host = config.host.trim().to_string();
        let tls = match config.tls {
            EmailTls::Plain => Tls::None,
            EmailTls::Starttls | EmailTls::Tls => {
                let parameters =
                    TlsParameters::new(host.clone()).map_err(|e| ReceiverError::Client {
                        name: name.clone(),
                        message: format!("TLS for {host}: {}", chain(&e)),
                    })?;
                if config.tls == EmailTls::Tls {
                    Tls::Wrapper(parameters)
                } else {
                    Tls::Required(parameters)
                }
            }
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.clone())
            .port(port)
            .tls(tls)
            .timeout(Some(timeout));
        if let (Some(user), Some(password)) = (&config.username, &config.password) {
            let password = password
                .resolve()
                .map_err(|message| ReceiverError::Secret {
                    name: name.clone(),
                    field: "password".into(),
                    message,
                })?;
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let templates = Templates::new(
            config.title_template.as_deref(),
            config.body_template.as_deref(),
        )
        .map_err(|problems| ReceiverError::Invalid {
            name: name.clone(),
            problems,
        })?;
        Ok(EmailConnector {
            name,
            transport: builder.build(),
            server: format!("{host}:{port}"),
            from,
            to,
            templates,
            timeout,
        })
    }

    /// The message for `action`.
    pub fn message(&self, action: &Action, status: Status) -> Result<Message, ConnectorError> {
        let rendered = self.templates.render(action, status);
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(rendered.title)
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .body(rendered.body)
            .map_err(|e| ConnectorError::Permanent(format!("cannot build the email: {e}")))
    }

    fn recipients(&self) -> String {
        self.to
            .iter()
            .map(|m| m.email.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }

    async fn send(&self, action: &Action, status: Status) -> Result<Outcome, ConnectorError> {
        let subject = self.templates.render(action, status).title;
        if action.dry_run {
            return Ok(Outcome::succeeded(
                &self.name,
                action,
                true,
                format!("would email {}: {subject}", self.recipients()),
            ));
        }
        let email = self.message(action, status)?;
        match tokio::time::timeout(self.timeout, self.transport.send(email)).await {
            Err(_) => Err(ConnectorError::retriable(format!(
                "timeout: SMTP server {} did not take the email within {}",
                self.server,
                Span(i64::try_from(self.timeout.as_millis()).unwrap_or(i64::MAX))
            ))),
            Ok(Err(e)) => Err(self.classify(&e)),
            Ok(Ok(response)) => {
                tracing::info!(receiver = %self.name, %status, to = %self.recipients(), "email sent");
                let reply = response.message().collect::<Vec<_>>().join(" ");
                Ok(Outcome::succeeded(
                    &self.name,
                    action,
                    false,
                    format!(
                        "emailed {}: {subject} ({} {reply})",
                        self.recipients(),
                        response.code()
                    ),
                ))
            }
        }
    }

    /// Maps an SMTP failure to permanent or retriable.
    fn classify(&self, e: &lettre::transport::smtp::Error) -> ConnectorError {
        let server = &self.server;
        let text = chain(e);
        if let Some(code) = e.status() {
            let code = u16::from(code);
            if e.is_permanent() {
                // 530 authentication required, 534 mechanism too weak,
                // 535 credentials invalid, 538 encryption required.
                if matches!(code, 530 | 534 | 535 | 538) {
                    return ConnectorError::Permanent(format!(
                        "SMTP authentication refused by {server}: {text}"
                    ));
                }
                return ConnectorError::Permanent(format!(
                    "SMTP server {server} refused the email: {text}"
                ));
            }
            return ConnectorError::retriable(format!(
                "SMTP server {server} answered with a temporary failure: {text}"
            ));
        }
        if e.is_timeout() {
            ConnectorError::retriable(format!("timeout talking to SMTP server {server}: {text}"))
        } else if e.is_client() {
            // E.g. no authentication mechanism both sides support.
            ConnectorError::Permanent(format!("cannot send through SMTP server {server}: {text}"))
        } else {
            ConnectorError::retriable(format!("cannot reach SMTP server {server}: {text}"))
        }
    }
}

crate::message::notification_connector!(EmailConnector);

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

    use super::*;
    use crate::Connector;
    use crate::message::tests::action;

    #[test]
    fn config_is_checked() {
        let c: EmailConfig = serde_yaml_ng::from_str(
            "host: ''\nusername: u\nfrom: not-an-address\nto: []\ntls: tls",
        )
        .unwrap();
        let problems = c.check();
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert_eq!(c.port(), 465);
        let c: EmailConfig = serde_yaml_ng::from_str(
            "host: smtp.example.com\ntls: none\nfrom: canaryd <canaryd@example.com>\nto: [a@example.com]",
        )
        .unwrap();
        assert!(c.check().is_empty(), "{:?}", c.check());
        assert_eq!(c.port(), 25);
        assert!(
            serde_yaml_ng::from_str::<EmailConfig>("host: x\nfrom: a@b\nto: [a@b]\ntls: ssl")
                .is_err()
        );
    }

    #[tokio::test]
    async fn the_message_has_the_title_as_subject() {
        let c: EmailConfig = serde_yaml_ng::from_str(
            "host: 127.0.0.1\ntls: none\nfrom: canaryd@example.com\nto: [ml@example.com, b@example.com]",
        )
        .unwrap();
        let email = EmailConnector::new("mail", c).unwrap();
        let text = String::from_utf8(
            email
                .message(&action(), Status::Firing)
                .unwrap()
                .formatted(),
        )
        .unwrap();
        // Long headers are folded.
        let text = text.replace("\r\n ", " ");
        assert!(
            text.contains(
                "Subject: [CRITICAL] Canary Error Rate High: auto_rollback for model=summarizer"
            ),
            "{text}"
        );
        assert!(text.contains("To: ml@example.com, b@example.com"), "{text}");
        let mut a = action();
        a.dry_run = true;
        let outcome = email.execute(&a).await.unwrap();
        assert!(outcome.dry_run);
        assert!(
            outcome
                .detail
                .starts_with("would email ml@example.com, b@example.com: "),
            "{}",
            outcome.detail
        );
    }
}
