//! Silences: a rule, a subject, or both, muted until a time. Kept in
//! memory; with `kafka.silences_topic`, shared with the other replicas.

use std::collections::BTreeMap;
use std::sync::Arc;

use canaryd_rules::{Span, Timestamp};
use serde::{Deserialize, Serialize};

/// At most this many silences are active at once.
const MAX_SILENCES: usize = 10_000;

/// A silence: alerts of `rule` (any rule when absent) for subjects whose
/// labels include all of `subject` (any subject when absent) are muted
/// until `until`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    /// Assigned by the server.
    pub id: String,
    /// The rule (or Alertmanager alert name) silenced.
    pub rule: Option<String>,
    /// Labels a subject must have, all of them, to be silenced.
    pub subject: Option<BTreeMap<String, String>>,
    /// When the silence ends.
    pub until: Timestamp,
    /// Who asked.
    pub created_by: String,
    /// Why.
    pub comment: String,
    /// When it was created.
    pub created_at: Timestamp,
}

impl Silence {
    /// Whether this silence mutes `rule` for `subject` (ignoring time).
    pub fn matches(&self, rule: &str, subject: &BTreeMap<String, String>) -> bool {
        self.rule.as_deref().is_none_or(|r| r == rule)
            && self
                .subject
                .as_ref()
                .is_none_or(|want| want.iter().all(|(k, v)| subject.get(k) == Some(v)))
    }

    /// Whether the silence is still in force at `now`.
    pub fn is_active(&self, now: Timestamp) -> bool {
        now < self.until
    }
}

/// What one replica shares with the others through the silences topic: a
/// silence created or deleted, or an Alertmanager alert it took in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SilenceChange {
    /// A new silence.
    Created(Silence),
    /// The silence with this id was deleted.
    Deleted(String),
    /// An Alertmanager alert (its fingerprint, `startsAt` and status) was
    /// accepted: a repeat sent to another replica is a duplicate there too.
    AlertSeen(Arc<str>),
    /// A replica's HTTP address, announced at `seen`; `None` when it
    /// stopped.
    Replica {
        /// `host:port`.
        address: String,
        /// When it last said it was there.
        seen: Option<Timestamp>,
    },
}

/// `POST /api/v1/silences` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct NewSilence {
    #[serde(default)]
    rule: Option<String>,
    #[serde(default)]
    subject: Option<BTreeMap<String, String>>,
    /// RFC 3339, or a duration from now such as `2h`.
    until: String,
    created_by: String,
    comment: String,
}

/// The active silences, oldest first.
#[derive(Default)]
pub(super) struct Silences {
    active: Vec<Silence>,
}

impl Silences {
    /// Validates and adds a silence; `Err` says what is wrong.
    pub(super) fn add(&mut self, new: NewSilence, now: Timestamp) -> Result<Silence, String> {
        let rule = new.rule.filter(|r| !r.trim().is_empty());
        if new.subject.as_ref().is_some_and(BTreeMap::is_empty) {
            return Err("`subject` must name at least one label".into());
        }
        if rule.is_none() && new.subject.is_none() {
            return Err("a silence needs a `rule`, a `subject` or both".into());
        }
        if new.created_by.trim().is_empty() {
            return Err("`created_by` must not be empty".into());
        }
        if new.comment.trim().is_empty() {
            return Err("`comment` must not be empty".into());
        }
        let until = parse_until(&new.until, now)?;
        if until <= now {
            return Err(format!("`until` ({until}) is not in the future"));
        }
        if self.active.len() >= MAX_SILENCES {
            return Err(format!(
                "too many silences ({MAX_SILENCES}); delete some first"
            ));
        }
        let id = loop {
            let id = format!("{:016x}", rand::random::<u64>());
            if !self.active.iter().any(|s| s.id == id) {
                break id;
            }
        };
        let silence = Silence {
            id,
            rule,
            subject: new.subject,
            until,
            created_by: new.created_by,
            comment: new.comment,
            created_at: now,
        };
        self.active.push(silence.clone());
        Ok(silence)
    }

    /// Adds a silence another replica created, unless it is known,
    /// already over at `now` or there is no room; whether it was added.
    pub(super) fn insert(&mut self, silence: Silence, now: Timestamp) -> Result<bool, String> {
        if self.active.iter().any(|s| s.id == silence.id) || !silence.is_active(now) {
            return Ok(false);
        }
        if self.active.len() >= MAX_SILENCES {
            return Err(format!("too many silences ({MAX_SILENCES})"));
        }
        self.active.push(silence);
        Ok(true)
    }

    /// Removes a silence; whether it was there.
    pub(super) fn remove(&mut self, id: &str) -> bool {
        let before = self.active.len();
        self.active.retain(|s| s.id != id);
        self.active.len() != before
    }

    /// Drops the silences that ended by `now`; whether any did.
    pub(super) fn expire(&mut self, now: Timestamp) -> bool {
        let before = self.active.len();
        self.active.retain(|s| s.is_active(now));
        self.active.len() != before
    }

    /// The active silences, in the order they were created.
    pub(super) fn list(&self) -> Vec<Silence> {
        self.active.clone()
    }
}

/// `until`: an RFC 3339 time, or a duration from `now`.
fn parse_until(text: &str, now: Timestamp) -> Result<Timestamp, String> {
    let text = text.trim();
    if let Ok(ts) = Timestamp::parse_rfc3339(text) {
        return Ok(ts);
    }
    match Span::parse(text) {
        Ok(span) => Ok(now.plus(span)),
        Err(_) => Err(format!(
            "`until` must be an RFC 3339 time or a duration such as 2h, not {text:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn silence(rule: Option<&str>, subject: Option<&[(&str, &str)]>) -> Silence {
        Silence {
            id: "x".into(),
            rule: rule.map(str::to_string),
            subject: subject.map(|s| {
                s.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect()
            }),
            until: Timestamp(10),
            created_by: "me".into(),
            comment: "c".into(),
            created_at: Timestamp(0),
        }
    }

    #[test]
    fn matching_by_rule_subject_or_both() {
        let subject: BTreeMap<String, String> = [("model", "summarizer"), ("region", "eu")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(silence(Some("R"), None).matches("R", &subject));
        assert!(!silence(Some("R"), None).matches("S", &subject));
        assert!(silence(None, Some(&[("model", "summarizer")])).matches("S", &subject));
        assert!(!silence(None, Some(&[("model", "translator")])).matches("S", &subject));
        assert!(!silence(None, Some(&[("zone", "a")])).matches("S", &subject));
        assert!(!silence(Some("R"), Some(&[("model", "summarizer")])).matches("S", &subject));
        assert!(silence(None, None).is_active(Timestamp(9)));
        assert!(!silence(None, None).is_active(Timestamp(10)));
    }

    #[test]
    fn until_reads_times_and_durations() {
        let now = Timestamp::parse_rfc3339("2026-03-01T12:00:00Z").unwrap();
        assert_eq!(
            parse_until("2h", now).unwrap(),
            Timestamp::parse_rfc3339("2026-03-01T14:00:00Z").unwrap()
        );
        assert_eq!(
            parse_until("2026-03-02T00:00:00+01:00", now).unwrap(),
            Timestamp::parse_rfc3339("2026-03-01T23:00:00Z").unwrap()
        );
        assert!(
            parse_until("tomorrow", now)
                .unwrap_err()
                .contains("RFC 3339")
        );
    }
}
