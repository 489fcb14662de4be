//! The Alertmanager webhook (payload version 4): alerts in, as alert events
//! or as direct action requests, with duplicates removed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use canaryd_rules::event::{AlertEvent, AlertStatus};
use canaryd_rules::{ActionName, Timestamp};
use serde::{Deserialize, Serialize};

use crate::dedup::DedupSet;

/// `http.alertmanager:` in the config file: how an Alertmanager alert asks
/// for an action directly instead of feeding the rules.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertmanagerMapping {
    /// The label naming the action, e.g. `canary_action: auto_rollback`.
    pub action_label: String,
    /// The labels that make the action's subject, e.g. `[model]`.
    pub subject_labels: Vec<String>,
}

impl Default for AlertmanagerMapping {
    fn default() -> Self {
        AlertmanagerMapping {
            action_label: "canary_action".to_string(),
            subject_labels: vec!["model".to_string()],
        }
    }
}

impl AlertmanagerMapping {
    /// Every problem with the mapping.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.action_label.is_empty() {
            out.push("http.alertmanager.action_label: must not be empty".to_string());
        }
        if self.subject_labels.is_empty() {
            out.push("http.alertmanager.subject_labels: must name at least one label".to_string());
        }
        out
    }
}

/// An Alertmanager alert that names an action in its labels: carry it out
/// for the subject its labels name, without a rule.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DirectAction {
    /// The action named by the action label.
    pub action: ActionName,
    /// The subject: the mapping's subject labels, from the alert's labels.
    pub subject: BTreeMap<String, String>,
    /// The alert's `alertname` label (empty when absent).
    pub alertname: String,
    /// Firing, or resolved (the backend may tell incident receivers).
    pub status: AlertStatus,
    /// Alertmanager's fingerprint of the alert's labels.
    pub fingerprint: String,
    /// When the alert started (`startsAt`; the receipt time when absent).
    pub starts_at: Timestamp,
    /// All the alert's labels.
    pub labels: BTreeMap<String, String>,
    /// All the alert's annotations.
    pub annotations: BTreeMap<String, String>,
}

/// The webhook body. Unknown fields are ignored; every field but `alerts`
/// may be absent.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    group_key: Option<String>,
    #[serde(default)]
    truncated_alerts: u64,
    #[serde(default)]
    receiver: Option<String>,
    alerts: Vec<AmAlert>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AmAlert {
    status: AlertStatus,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    starts_at: Option<String>,
    #[serde(default)]
    ends_at: Option<String>,
    #[serde(default)]
    fingerprint: Option<String>,
}

/// What one alert becomes.
pub(super) enum Item {
    /// An alert event for the engine.
    Event(AlertEvent),
    /// A direct action request.
    Action(DirectAction),
}

/// One alert of a payload, with its de-duplication key.
pub(super) struct Incoming {
    /// Fingerprint + `startsAt` + status.
    pub key: Arc<str>,
    pub item: Item,
}

/// A time Alertmanager sent, or `None` when absent, unparsable or Go's zero
/// time (`0001-01-01T00:00:00Z`, the `endsAt` of a firing alert).
fn time(text: Option<&str>) -> Option<Timestamp> {
    let ts = Timestamp::parse_rfc3339(text?.trim()).ok()?;
    (ts.millis() > 0).then_some(ts)
}

/// Parses a payload; `now` stands in for missing times. An invalid action
/// label or a missing subject label fails the whole payload, naming the
/// alert and the value.
pub(super) fn parse(
    bytes: &[u8],
    mapping: &AlertmanagerMapping,
    now: Timestamp,
) -> Result<Vec<Incoming>, String> {
    let payload: Payload =
        serde_json::from_slice(bytes).map_err(|e| format!("invalid Alertmanager payload: {e}"))?;
    if payload.version.as_deref().is_some_and(|v| v != "4") {
        tracing::warn!(version = ?payload.version, "Alertmanager payload version is not 4; reading it as version 4");
    }
    if payload.truncated_alerts > 0 {
        tracing::warn!(
            truncated = payload.truncated_alerts,
            receiver = ?payload.receiver,
            "Alertmanager truncated this payload; raise max_alerts in its webhook_config"
        );
    }
    tracing::debug!(group_key = ?payload.group_key, receiver = ?payload.receiver, alerts = payload.alerts.len(), "Alertmanager payload");
    let mut out = Vec::with_capacity(payload.alerts.len());
    for alert in payload.alerts {
        let name = alert.labels.get("alertname").cloned().unwrap_or_default();
        let fingerprint = match alert.fingerprint.as_deref().map(str::trim) {
            Some(f) if !f.is_empty() => f.to_string(),
            // Not from Alertmanager: identify the alert by its labels.
            _ => alert
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("\u{1}"),
        };
        let starts_raw = alert.starts_at.as_deref().unwrap_or("").trim();
        let key: Arc<str> = Arc::from(format!(
            "{fingerprint}\u{0}{starts_raw}\u{0}{}",
            match alert.status {
                AlertStatus::Firing => "firing",
                AlertStatus::Resolved => "resolved",
            }
        ));
        let starts_at = time(alert.starts_at.as_deref());
        let item = match alert.labels.get(&mapping.action_label) {
            Some(value) => {
                let action: ActionName = value.trim().parse().map_err(|()| {
                    format!(
                        "alert `{name}`: label {}=`{value}` is not an action (expected one of {})",
                        mapping.action_label,
                        ActionName::ALL.map(ActionName::as_str).join(", ")
                    )
                })?;
                let mut subject = BTreeMap::new();
                for label in &mapping.subject_labels {
                    let value = alert.labels.get(label).ok_or_else(|| {
                        format!(
                            "alert `{name}` asks for {action} but lacks the subject label `{label}`"
                        )
                    })?;
                    subject.insert(label.clone(), value.clone());
                }
                Item::Action(DirectAction {
                    action,
                    subject,
                    alertname: name,
                    status: alert.status,
                    fingerprint,
                    starts_at: starts_at.unwrap_or(now),
                    labels: alert.labels,
                    annotations: alert.annotations,
                })
            }
            None => {
                let ts = match alert.status {
                    AlertStatus::Firing => starts_at,
                    AlertStatus::Resolved => time(alert.ends_at.as_deref()),
                };
                Item::Event(AlertEvent {
                    ts: ts.unwrap_or(now),
                    severity: alert.labels.get("severity").cloned(),
                    name,
                    status: alert.status,
                    labels: alert.labels,
                    annotations: alert.annotations,
                })
            }
        };
        out.push(Incoming { key, item });
    }
    Ok(out)
}

/// The alerts seen recently (fingerprint, start and status), oldest
/// forgotten first.
pub(super) type Dedup = DedupSet<Arc<str>>;

/// Reserved keys, released when dropped unless kept: a backend that
/// refuses, or a request dropped half-way, leaves nothing marked as seen.
pub(super) struct Reservation {
    dedup: Arc<Mutex<Dedup>>,
    keys: Vec<Arc<str>>,
}

impl Reservation {
    pub(super) fn new(dedup: Arc<Mutex<Dedup>>, keys: Vec<Arc<str>>) -> Reservation {
        Reservation { dedup, keys }
    }

    /// The alerts were taken in: remember them. Returns their keys.
    pub(super) fn keep(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.keys)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.keys.is_empty() {
            return;
        }
        let mut dedup = self.dedup.lock().unwrap_or_else(|p| p.into_inner());
        for key in &self.keys {
            dedup.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn a_dropped_reservation_releases_and_a_kept_one_does_not() {
        let dedup = Arc::new(Mutex::new(Dedup::new(10)));
        {
            let mut d = dedup.lock().unwrap();
            assert!(d.insert(key("x")));
            assert!(d.insert(key("y")));
        }
        drop(Reservation::new(dedup.clone(), vec![key("x")]));
        Reservation::new(dedup.clone(), vec![key("y")]).keep();
        let mut d = dedup.lock().unwrap();
        assert!(d.insert(key("x")), "released");
        assert!(!d.insert(key("y")), "kept");
    }

    #[test]
    fn times_fall_back_when_absent_or_zero() {
        assert_eq!(time(Some("0001-01-01T00:00:00Z")), None);
        assert_eq!(time(Some("garbage")), None);
        assert_eq!(time(None), None);
        assert_eq!(
            time(Some("2026-03-01T12:00:00.123456789Z")),
            Some(Timestamp::parse_rfc3339("2026-03-01T12:00:00.123Z").unwrap())
        );
    }
}
