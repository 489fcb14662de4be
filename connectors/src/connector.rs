//! The trait every action target implements.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::action::{Action, Outcome};

/// A boxed future, so that connectors can live behind `dyn Connector`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a connector could not carry out an action.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// Worth retrying: a timeout, a refused connection, a 5xx, a 409.
    #[error("retriable: {reason}")]
    Retriable {
        /// What went wrong.
        reason: String,
        /// How long the receiver asked to be left alone (`Retry-After`),
        /// if it said.
        retry_after: Option<Duration>,
    },
    /// Not worth retrying: bad credentials, 403, 404, a rejected payload.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl ConnectorError {
    /// A retriable failure with no `Retry-After`.
    pub fn retriable(reason: impl Into<String>) -> ConnectorError {
        ConnectorError::Retriable {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// Whether trying again might help.
    pub fn is_retriable(&self) -> bool {
        matches!(self, ConnectorError::Retriable { .. })
    }

    /// The wait the receiver asked for before the next attempt.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectorError::Retriable { retry_after, .. } => *retry_after,
            ConnectorError::Permanent(_) => None,
        }
    }
}

/// Carries out actions against one target (Kubernetes, PagerDuty, Slack,
/// email, a webhook). Implementations hold one long-lived client and wrap
/// every call in a timeout.
pub trait Connector: Send + Sync {
    /// A short name for logs and metrics, e.g. `kube` or `slack-oncall`.
    fn name(&self) -> &str;

    /// Carries out `action` once. Retries and deadlines are the pipeline's job.
    fn execute<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Outcome, ConnectorError>>;

    /// Reads what the receiver's object holds for `subject`'s rollout, for
    /// a new owner with no other record of it. `None` when the receiver
    /// keeps no such state.
    fn read_traffic<'a>(
        &'a self,
        _subject: &'a BTreeMap<String, String>,
    ) -> Option<BoxFuture<'a, Result<TrafficState, ConnectorError>>> {
        None
    }

    /// Tells the receiver that the alert behind `action` has resolved. `None` when the receiver has no notion of resolution.
    fn resolve<'a>(
        &'a self,
        _action: &'a Action,
    ) -> Option<BoxFuture<'a, Result<Outcome, ConnectorError>>> {
        None
    }
}

/// What a traffic object holds for a rollout, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficState {
    /// The object, for people: `VirtualService ml-serving/model-fraud`.
    pub target: String,
    /// The rollout state canaryd recorded on it (JSON), if any.
    pub rollout: Option<String>,
    /// The canary's weight on it now (the first route's).
    pub canary_weight: Option<i64>,
    /// The canary weight canaryd last wrote there, if it recorded one.
    pub written_weight: Option<i64>,
    /// The canary version a deployment pipeline named on it, if any.
    pub canary_version: Option<String>,
}
