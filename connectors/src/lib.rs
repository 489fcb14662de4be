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
#![forbid(unsafe_code)]

pub mod action;
pub mod connector;
pub mod dry_run;
pub mod kube;

pub use crate::kube::{KubeConfig, KubeConnector, KubeConnectorError, TargetConfig, TargetKind};
pub use action::{Action, Evidence, Outcome, OutcomeKind};
pub use connector::{Connector, ConnectorError};
pub use dry_run::DryRun;
