//! A connector that records exactly what it would have done.

use std::sync::Mutex;

use canaryd_rules::Subject;

use crate::action::{Action, Outcome};
use crate::connector::{BoxFuture, Connector, ConnectorError};

/// Records every action it is given and changes nothing.
#[derive(Debug, Default)]
pub struct DryRun {
    recorded: Mutex<Vec<Action>>,
}

impl DryRun {
    /// A dry-run connector with nothing recorded.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything recorded so far, in order.
    pub fn recorded(&self) -> Vec<Action> {
        // A poisoned lock only means another thread panicked mid-push; the
        // vector itself is still valid.
        match self.recorded.lock() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Connector for DryRun {
    fn name(&self) -> &str {
        "dry_run"
    }

    fn execute<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Outcome, ConnectorError>> {
        Box::pin(async move {
            match self.recorded.lock() {
                Ok(mut v) => v.push(action.clone()),
                Err(poisoned) => poisoned.into_inner().push(action.clone()),
            }
            let detail = format!("would {} for {}", action.action, Subject(&action.subject));
            Ok(Outcome::succeeded(self.name(), action, true, detail))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::{Evidence, OutcomeKind};
    use canaryd_rules::{ActionName, Severity, Span, Timestamp};

    #[tokio::test]
    async fn records_what_it_would_do() {
        let subject = [("model".to_string(), "summarizer".to_string())].into();
        let action = Action {
            key: Action::key_for("r", &subject, Timestamp(5)),
            ts: Timestamp(10),
            rule: "r".into(),
            subject,
            action: ActionName::AutoRollback,
            severity: Severity::Critical,
            deadline: Span::seconds(30),
            dry_run: true,
            evidence: Evidence {
                condition: "canary_error_rate > 0.05".into(),
                values: Default::default(),
                thresholds: vec![],
                duration: Span::seconds(300),
                since: Timestamp(5),
            },
            labels: Default::default(),
            annotations: Default::default(),
            traffic: None,
        };
        let dry = DryRun::new();
        let outcome = dry.execute(&action).await.unwrap();
        assert_eq!(outcome.kind, OutcomeKind::Succeeded);
        assert!(outcome.dry_run);
        assert_eq!(outcome.detail, "would auto_rollback for model=summarizer");
        assert_eq!(action.key, "r|model=summarizer|5");
        assert_eq!(dry.recorded(), vec![action]);
    }
}
