//! The events canaryd consumes: one JSON object per Kafka message or per
//! line of a `.jsonl` file. `ts` is RFC 3339 and is event time.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize};

use crate::time::Timestamp;

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Event {
    /// A metric sample that sets a variable for a subject.
    Metric(MetricEvent),
    /// An alert from elsewhere (OOM kill, critical error, Alertmanager).
    Alert(AlertEvent),
    /// One inference request served by the canary or the stable model.
    Inference(InferenceEvent),
}

impl Event {
    /// The event's time.
    pub fn ts(&self) -> Timestamp {
        match self {
            Event::Metric(e) => e.ts,
            Event::Alert(e) => e.ts,
            Event::Inference(e) => e.ts,
        }
    }
}

/// `{"type":"metric","ts":…,"name":"canary_error_rate","value":0.06,"labels":{"model":"summarizer"}}`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MetricEvent {
    /// Event time.
    pub ts: Timestamp,
    /// The variable it sets, e.g. `canary_error_rate`.
    pub name: String,
    /// The value; must be finite.
    pub value: f64,
    /// Labels; those in a rule's `group_by` pick the subject.
    pub labels: BTreeMap<String, String>,
}

/// Whether an alert is starting or ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertStatus {
    /// The alert is active.
    Firing,
    /// The alert has ended.
    Resolved,
}

/// `{"type":"alert","ts":…,"name":"OOMKilled","status":"firing","severity":"critical","labels":{…}}`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AlertEvent {
    /// Event time.
    pub ts: Timestamp,
    /// The alert's name, e.g. `OOMKilled`.
    pub name: String,
    /// Firing or resolved.
    pub status: AlertStatus,
    /// Free text; `critical` counts towards `critical_errors`.
    pub severity: Option<String>,
    /// Labels; those in a rule's `group_by` pick the subject.
    pub labels: BTreeMap<String, String>,
    /// Free-form annotations, carried along.
    pub annotations: BTreeMap<String, String>,
}

impl AlertEvent {
    /// Whether this alert reports an out-of-memory kill.
    pub fn is_oom(&self) -> bool {
        self.name.eq_ignore_ascii_case("OOMKilled")
            || self
                .labels
                .get("reason")
                .is_some_and(|r| r.eq_ignore_ascii_case("OOMKilled"))
    }

    /// Whether this alert's severity is critical.
    pub fn is_critical(&self) -> bool {
        self.severity
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("critical"))
    }
}

/// Which side of the canary comparison served a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Track {
    /// The new version under test.
    Canary,
    /// The version in production.
    Stable,
}

/// `{"type":"inference","ts":…,"model":"summarizer","version":"v2.1.0","track":"canary","latency_ms":812.5,"error":false,…}`
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InferenceEvent {
    /// Event time.
    pub ts: Timestamp,
    /// The model; the default subject.
    pub model: String,
    /// The model version that served the request.
    pub version: String,
    /// Canary or stable.
    pub track: Track,
    /// Latency in milliseconds; finite and non-negative.
    pub latency_ms: f64,
    /// Whether the request failed.
    pub error: bool,
    /// Cost in USD, when known.
    pub cost_usd: Option<f64>,
    /// Protected group for fairness metrics.
    pub group: Option<String>,
    /// Binary prediction: 1/true is the positive outcome.
    pub prediction: Option<bool>,
    /// Ground-truth label, when known: 1/true is positive.
    pub label: Option<bool>,
    /// Extra labels (e.g. region) for rules that group by more than the model.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Why a message is not a valid event. Each kind becomes the reason header
/// of a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeErrorKind {
    /// Not JSON at all, or truncated.
    NotJson,
    /// A required field is absent.
    MissingField,
    /// A field has the wrong type or an unknown `type`.
    WrongType,
    /// `ts` is not RFC 3339.
    BadTime,
    /// A value is out of range (negative latency, NaN).
    BadValue,
}

impl DecodeErrorKind {
    /// Every kind.
    pub const ALL: [DecodeErrorKind; 5] = [
        DecodeErrorKind::NotJson,
        DecodeErrorKind::MissingField,
        DecodeErrorKind::WrongType,
        DecodeErrorKind::BadTime,
        DecodeErrorKind::BadValue,
    ];

    /// The snake_case name used in headers and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeErrorKind::NotJson => "not_json",
            DecodeErrorKind::MissingField => "missing_field",
            DecodeErrorKind::WrongType => "wrong_type",
            DecodeErrorKind::BadTime => "bad_time",
            DecodeErrorKind::BadValue => "bad_value",
        }
    }
}

/// A message that could not be decoded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{}: {message}", kind.as_str())]
pub struct DecodeError {
    /// The class of problem.
    pub kind: DecodeErrorKind,
    /// serde's description, with the column.
    pub message: String,
}

/// Decodes one event.
///
/// One pass into a flat record with borrowed strings, then checked by
/// type: internally tagged serde enums buffer every field first, which
/// costs more than the rest of evaluation.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let raw: Raw<'_> = serde_json::from_slice(bytes).map_err(classify)?;
    let missing = |field: &str| DecodeError {
        kind: DecodeErrorKind::MissingField,
        message: format!("missing field `{field}`"),
    };
    let kind = raw.kind.ok_or_else(|| missing("type"))?;
    let ts = raw.ts.ok_or_else(|| missing("ts"))?;
    let ts = Timestamp::parse_rfc3339(&ts).map_err(|e| DecodeError {
        kind: DecodeErrorKind::BadTime,
        message: e.to_string(),
    })?;
    let text = |v: Option<std::borrow::Cow<'_, str>>, field: &str| {
        v.map(|c| c.into_owned()).ok_or_else(|| missing(field))
    };
    match &*kind {
        "metric" => Ok(Event::Metric(MetricEvent {
            ts,
            name: text(raw.name, "name")?,
            value: raw.value.ok_or_else(|| missing("value"))?.0,
            labels: raw.labels.unwrap_or_default(),
        })),
        "alert" => Ok(Event::Alert(AlertEvent {
            ts,
            name: text(raw.name, "name")?,
            status: raw.status.ok_or_else(|| missing("status"))?,
            severity: raw.severity.map(|c| c.into_owned()),
            labels: raw.labels.unwrap_or_default(),
            annotations: raw.annotations.unwrap_or_default(),
        })),
        "inference" => Ok(Event::Inference(InferenceEvent {
            ts,
            model: text(raw.model, "model")?,
            version: text(raw.version, "version")?,
            track: raw.track.ok_or_else(|| missing("track"))?,
            latency_ms: raw.latency_ms.ok_or_else(|| missing("latency_ms"))?.0,
            error: raw.error.ok_or_else(|| missing("error"))?,
            cost_usd: raw.cost_usd.map(|c| c.0),
            group: raw.group.map(|c| c.into_owned()),
            prediction: raw.prediction.map(|b| b.0),
            label: raw.label.map(|b| b.0),
            labels: raw.labels.unwrap_or_default(),
        })),
        other => Err(DecodeError {
            kind: DecodeErrorKind::WrongType,
            message: format!(
                "unknown event type `{}`: expected metric, alert or inference",
                other.chars().take(64).collect::<String>()
            ),
        }),
    }
}

fn classify(e: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;
    let message = e.to_string();
    let kind = match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => DecodeErrorKind::NotJson,
        Category::Data if message.contains(OUT_OF_RANGE) => DecodeErrorKind::BadValue,
        Category::Data => DecodeErrorKind::WrongType,
    };
    DecodeError { kind, message }
}

/// Every field of every event type; `decode` checks which are required.
#[derive(Deserialize)]
struct Raw<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    ts: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    name: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    value: Option<Finite>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    status: Option<AlertStatus>,
    #[serde(borrow, default)]
    severity: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    version: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    track: Option<Track>,
    #[serde(default)]
    latency_ms: Option<NonNegative>,
    #[serde(default)]
    error: Option<bool>,
    #[serde(default)]
    cost_usd: Option<NonNegative>,
    #[serde(borrow, default)]
    group: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    prediction: Option<Binary>,
    #[serde(default)]
    label: Option<Binary>,
}

/// A finite number.
struct Finite(f64);

impl<'de> Deserialize<'de> for Finite {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        finite(d).map(Finite)
    }
}

/// A finite, non-negative number.
struct NonNegative(f64);

impl<'de> Deserialize<'de> for NonNegative {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        non_negative(d).map(NonNegative)
    }
}

/// 0, 1, true or false.
struct Binary(bool);

impl<'de> Deserialize<'de> for Binary {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(BinaryVisitor)
    }
}

/// Reads 0, 1, true or false in one step (an untagged enum would buffer
/// the value and build an error for each variant it rules out).
struct BinaryVisitor;

impl serde::de::Visitor<'_> for BinaryVisitor {
    type Value = Binary;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("0, 1, true or false")
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Binary, E> {
        Ok(Binary(v))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Binary, E> {
        match v {
            0 => Ok(Binary(false)),
            1 => Ok(Binary(true)),
            n => Err(E::custom(format!(
                "value {n} {OUT_OF_RANGE}: must be 0, 1, true or false"
            ))),
        }
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Binary, E> {
        match u64::try_from(v) {
            Ok(u) => self.visit_u64(u),
            Err(_) => Err(E::custom(format!(
                "value {v} {OUT_OF_RANGE}: must be 0, 1, true or false"
            ))),
        }
    }
}

const OUT_OF_RANGE: &str = "out of range";

fn finite<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "value {OUT_OF_RANGE}: must be finite"
        )))
    }
}

fn non_negative<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let v = f64::deserialize(d)?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(serde::de::Error::custom(format!(
            "value {v} {OUT_OF_RANGE}: must be finite and >= 0"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_three_event_types_decode() {
        let m = decode(br#"{"type":"metric","ts":"2026-03-01T12:00:00Z","name":"canary_error_rate","value":0.06,"labels":{"model":"summarizer"}}"#).unwrap();
        assert!(
            matches!(m, Event::Metric(ref e) if e.value == 0.06 && e.labels["model"] == "summarizer")
        );
        let a = decode(br#"{"type":"alert","ts":"2026-03-01T12:00:00Z","name":"OOMKilled","status":"firing","severity":"critical","labels":{"model":"s"},"annotations":{}}"#).unwrap();
        assert!(matches!(a, Event::Alert(ref e) if e.is_oom() && e.is_critical()));
        let i = decode(br#"{"type":"inference","ts":"2026-03-01T12:00:00Z","model":"summarizer","version":"v2.1.0","track":"canary","latency_ms":812.5,"error":false,"cost_usd":0.0021,"group":"A","prediction":1,"label":0,"extra":"ignored"}"#).unwrap();
        let Event::Inference(i) = i else { panic!() };
        assert_eq!(
            (i.track, i.prediction, i.label, i.cost_usd),
            (Track::Canary, Some(true), Some(false), Some(0.0021))
        );
    }

    #[test]
    fn malformed_events_are_classified() {
        let cases: [(&[u8], DecodeErrorKind); 11] = [
            (b"not json", DecodeErrorKind::NotJson),
            (b"{\"type\":\"metric\"", DecodeErrorKind::NotJson),
            (br#"{"type":"metric","ts":"2026-03-01T12:00:00Z","value":1}"#, DecodeErrorKind::MissingField),
            (br#"{"type":"metric","ts":"2026-03-01T12:00:00Z","name":"x","value":"high"}"#, DecodeErrorKind::WrongType),
            (br#"{"type":"metric","ts":"yesterday","name":"x","value":1}"#, DecodeErrorKind::BadTime),
            // An offset out of range is not quietly read as another time.
            (br#"{"type":"metric","ts":"2026-03-01T12:00:00+00:99","name":"x","value":1}"#, DecodeErrorKind::BadTime),
            (br#"{"type":"metric","ts":"2026-03-01T12:00:00+99:00","name":"x","value":1}"#, DecodeErrorKind::BadTime),
            (br#"{"type":"gauge","ts":"2026-03-01T12:00:00Z"}"#, DecodeErrorKind::WrongType),
            (br#"{"type":"inference","ts":"2026-03-01T12:00:00Z","model":"m","version":"v","track":"canary","latency_ms":-1,"error":false}"#, DecodeErrorKind::BadValue),
            (br#"{"type":"inference","ts":"2026-03-01T12:00:00Z","model":"m","version":"v","track":"canary","latency_ms":1,"error":false,"prediction":7}"#, DecodeErrorKind::BadValue),
            (br#"[1,2,3]"#, DecodeErrorKind::WrongType),
        ];
        for (bytes, kind) in cases {
            let err = decode(bytes).expect_err(&String::from_utf8_lossy(bytes));
            assert_eq!(err.kind, kind, "{}: {err}", String::from_utf8_lossy(bytes));
        }
    }
}
