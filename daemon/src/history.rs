//! A bounded history of each model's canary and stable figures, for the
//! status page's charts: a point every `http.history.every` (taken on the
//! consume loop's tick, stamped with the partition's event time), kept for
//! `http.history.keep` of event time, with marks where an alert fired or
//! a rollout changed. At most `http.history.max_models` models; the one
//! updated longest ago makes room.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use canaryd_rules::analytics::TrackStats;
use canaryd_rules::{Span, Timestamp};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Points one model keeps at most, whatever `keep / every` says.
const MAX_POINTS: usize = 720;

/// Marks one model keeps at most.
const MAX_MARKS: usize = 64;

/// `http.history`: how much trend the status page can draw.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Wall-clock time between points.
    pub every: Span,
    /// Event time a model's points and marks are kept for.
    pub keep: Span,
    /// Models with a history, at most.
    pub max_models: usize,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            every: Span::seconds(30),
            keep: Span::seconds(3600),
            max_models: 200,
        }
    }
}

impl HistoryConfig {
    /// What `canaryd check` reports.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.every.millis() < 1000 {
            out.push(format!(
                "history.every ({}) must be at least 1s",
                self.every
            ));
        }
        if self.keep.millis() < self.every.millis() {
            out.push(format!(
                "history.keep ({}) must be at least history.every ({})",
                self.keep, self.every
            ));
        }
        out
    }
}

/// One track's figures at a point.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
struct Figures {
    error_rate: Option<f64>,
    p95_latency: Option<f64>,
    disparate_impact: Option<f64>,
    requests: u64,
}

impl From<&TrackStats> for Figures {
    fn from(s: &TrackStats) -> Figures {
        Figures {
            error_rate: s.error_rate,
            p95_latency: s.p95_latency,
            disparate_impact: s.disparate_impact,
            requests: s.requests,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
struct Point {
    ts: Timestamp,
    canary: Figures,
    stable: Figures,
    /// The canary's weight as its rollout set it, if it has one.
    weight: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
struct Mark {
    ts: Timestamp,
    /// `firing`, or a rollout change (`stage`, `rolled_back`, …).
    kind: String,
    text: String,
}

#[derive(Default)]
struct ModelHistory {
    points: VecDeque<Point>,
    marks: VecDeque<Mark>,
    /// The newest event time seen, for `keep` and for making room.
    newest: Timestamp,
}

impl ModelHistory {
    fn trim(&mut self, keep: Span) {
        let from = Timestamp(self.newest.millis().saturating_sub(keep.millis()));
        while self.points.front().is_some_and(|p| p.ts < from) || self.points.len() > MAX_POINTS {
            self.points.pop_front();
        }
        while self.marks.front().is_some_and(|m| m.ts < from) || self.marks.len() > MAX_MARKS {
            self.marks.pop_front();
        }
    }
}

/// Every model's history.
pub struct History {
    config: HistoryConfig,
    models: HashMap<String, ModelHistory>,
    last_sample: Option<Instant>,
}

impl History {
    /// An empty history kept as `config` says.
    pub fn new(config: HistoryConfig) -> History {
        History {
            config,
            models: HashMap::new(),
            last_sample: None,
        }
    }

    /// Whether a point is due at `now`; if so, the next is due `every`
    /// later.
    pub fn due(&mut self, now: Instant) -> bool {
        let every = Duration::from_millis(u64::try_from(self.config.every.millis()).unwrap_or(0));
        if self
            .last_sample
            .is_some_and(|at| now.duration_since(at) < every)
        {
            return false;
        }
        self.last_sample = Some(now);
        true
    }

    /// Most models a sample needs figures for.
    pub fn max_models(&self) -> usize {
        self.config.max_models
    }

    /// A point of `model` at event time `ts`; one at the same time as the
    /// last replaces it (event time stood still), an older one is ignored.
    pub fn record(
        &mut self,
        model: &str,
        ts: Timestamp,
        tracks: &[TrackStats; 2],
        weight: Option<u8>,
    ) {
        let point = Point {
            ts,
            canary: Figures::from(&tracks[0]),
            stable: Figures::from(&tracks[1]),
            weight,
        };
        let keep = self.config.keep;
        let Some(h) = self.entry(model, ts) else {
            return;
        };
        match h.points.back() {
            Some(last) if last.ts > ts => return,
            Some(last) if last.ts == ts => {
                h.points.pop_back();
            }
            _ => {}
        }
        h.points.push_back(point);
        h.trim(keep);
    }

    /// A mark on `model`'s charts at `ts`.
    pub fn mark(&mut self, model: &str, ts: Timestamp, kind: &str, text: String) {
        let keep = self.config.keep;
        let Some(h) = self.entry(model, ts) else {
            return;
        };
        h.marks.push_back(Mark {
            ts,
            kind: kind.to_string(),
            text,
        });
        h.trim(keep);
    }

    /// `GET /api/v1/history/{model}`: `{"model","every_s","points":[…],"marks":[…]}`.
    pub fn json(&self, model: &str) -> Option<Value> {
        let h = self.models.get(model)?;
        Some(json!({
            "model": model,
            "every_s": self.config.every.millis() / 1000,
            "points": h.points,
            "marks": h.marks,
        }))
    }

    /// `model`'s history, made room for if it is new; `None` with no room
    /// to make (`max_models` is 0).
    fn entry(&mut self, model: &str, ts: Timestamp) -> Option<&mut ModelHistory> {
        if !self.models.contains_key(model) {
            if self.models.len() >= self.config.max_models {
                let oldest = self
                    .models
                    .iter()
                    .min_by_key(|(_, h)| h.newest)
                    .map(|(m, _)| m.clone())?;
                self.models.remove(&oldest);
            }
            self.models
                .insert(model.to_string(), ModelHistory::default());
        }
        let h = self.models.get_mut(model)?;
        h.newest = h.newest.max(ts);
        Some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(error_rate: f64) -> [TrackStats; 2] {
        let track = |e: f64| TrackStats {
            requests: 100,
            error_rate: Some(e),
            p95_latency: Some(250.0),
            ..TrackStats::default()
        };
        [track(error_rate), track(0.001)]
    }

    fn config(max_models: usize) -> HistoryConfig {
        HistoryConfig {
            every: Span::seconds(30),
            keep: Span::seconds(120),
            max_models,
        }
    }

    #[test]
    fn points_older_than_keep_leave_and_a_repeated_time_replaces() {
        let mut h = History::new(config(10));
        for i in 0..10 {
            h.record("m", Timestamp(i * 30_000), &stats(0.01 * i as f64), Some(5));
        }
        h.record("m", Timestamp(270_000), &stats(0.5), Some(10));
        h.mark("m", Timestamp(0), "stage", "old".into());
        h.mark(
            "m",
            Timestamp(260_000),
            "rolled_back",
            "Canary Error Rate High".into(),
        );
        let json = h.json("m").unwrap();
        let points = json["points"].as_array().unwrap();
        let times: Vec<i64> = points
            .iter()
            .map(|p| {
                Timestamp::parse_rfc3339(p["ts"].as_str().unwrap())
                    .unwrap()
                    .millis()
            })
            .collect();
        assert_eq!(times, [150_000, 180_000, 210_000, 240_000, 270_000]);
        assert_eq!(points.last().unwrap()["canary"]["error_rate"], 0.5);
        assert_eq!(points.last().unwrap()["weight"], 10);
        let marks = json["marks"].as_array().unwrap();
        assert_eq!(marks.len(), 1, "{marks:?}");
        assert_eq!(marks[0]["kind"], "rolled_back");
    }

    #[test]
    fn the_model_updated_longest_ago_makes_room() {
        let mut h = History::new(config(2));
        h.record("a", Timestamp(1_000), &stats(0.0), None);
        h.record("b", Timestamp(5_000), &stats(0.0), None);
        h.record("a", Timestamp(9_000), &stats(0.0), None);
        h.record("c", Timestamp(10_000), &stats(0.0), None);
        assert!(h.json("b").is_none());
        assert!(h.json("a").is_some() && h.json("c").is_some());
        assert!(History::new(config(0)).json("a").is_none());
        let mut none = History::new(config(0));
        none.record("a", Timestamp(1), &stats(0.0), None);
        assert!(none.json("a").is_none());
    }

    #[test]
    fn a_point_is_due_every_interval() {
        let mut h = History::new(config(1));
        let t = Instant::now();
        assert!(h.due(t));
        assert!(!h.due(t + Duration::from_secs(29)));
        assert!(h.due(t + Duration::from_secs(30)));
    }
}
