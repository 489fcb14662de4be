//! canaryd's actions: what a firing rule asks for, and the connectors that
//! carry it out.
//!
//! # Layout
//!
//! - [`action`]: the [`Action`] a firing rule produces, with its
//!   idempotency key, evidence and deadline, and the [`Outcome`] of trying it.
//! - [`connector`]: the [`Connector`] trait every target implements.
//! - [`dry_run`]: a connector that records what it would do and does nothing.
//! - [`kube`]: the Kubernetes traffic connector: `auto_rollback` and
//!   `reduce_traffic` on an Istio VirtualService, an HTTPRoute or an Argo Rollout.
//! - [`registry`]: the receivers the config names ([`ReceiverConfig`]:
//!   `kube`, `pagerduty`, `slack`, `webhook`, `email`, `dry_run`), checked
//!   and built into connectors: the one place config becomes a connector.
//! - [`error`]: [`ReceiverError`], why a receiver could not be built.
//! - [`retry`]: [`RetryPolicy`], the one backoff (exponential, jittered,
//!   capped, honouring `Retry-After`) every retry loop uses.
//! - [`pagerduty`]: PagerDuty Events API v2 (trigger and resolve by dedup key).
//! - [`slack`]: Slack incoming webhooks.
//! - [`webhook`]: the action as JSON to any URL, with bearer or basic auth.
//! - [`email`]: SMTP through lettre (none, STARTTLS or TLS).
//! - [`message`]: the notification title and body templates (minijinja).
//! - [`http`]: the HTTP receivers' shared client, timeouts and error classification.
//! - [`secret`]: [`SecretValue`], a setting given inline, as `{env: NAME}` or `{file: PATH}`.
#![forbid(unsafe_code)]

pub mod action;
pub mod connector;
pub mod dry_run;
pub mod email;
pub mod error;
pub mod http;
pub mod kube;
pub mod message;
pub mod pagerduty;
pub mod registry;
pub mod retry;
pub mod secret;
pub mod slack;
pub mod webhook;

pub use crate::kube::{KubeConfig, KubeConnector, KubeConnectorError, TargetConfig, TargetKind};
pub use action::{Action, Evidence, Outcome, OutcomeKind, TrafficChange};
pub use connector::{Connector, ConnectorError, TrafficState};
pub use dry_run::DryRun;
pub use email::{EmailConfig, EmailConnector, EmailTls};
pub use error::ReceiverError;
pub use pagerduty::{PagerDutyConfig, PagerDutyConnector};
pub use registry::ReceiverConfig;
pub use retry::RetryPolicy;
pub use secret::SecretValue;
pub use slack::{SlackConfig, SlackConnector};
pub use webhook::{BasicAuth, WebhookConfig, WebhookConnector};
