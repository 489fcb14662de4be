//! The server against a fake backend, request by request.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

use axum::http::Request;
use base64::Engine as _;
use canaryd_rules::ActionName;
use canaryd_rules::event::AlertStatus;
use serde_json::Value as Json;
use tower::ServiceExt;

use super::*;
use canaryd_connectors::SecretValue as Value;

/// What Alertmanager 0.25 posts to a `webhook_config` receiver: one firing
/// alert from Prometheus, one resolved, grouped by `model`.
const AM_FIRING_AND_RESOLVED: &str = r#"{
  "receiver": "canaryd",
  "status": "firing",
  "alerts": [
    {
      "status": "firing",
      "labels": {
        "alertname": "OOMKilled",
        "container": "model-server",
        "model": "summarizer",
        "namespace": "ml-serving",
        "pod": "summarizer-canary-7d9f8b6c4-x2x7q",
        "prometheus": "monitoring/k8s",
        "severity": "critical",
        "track": "canary"
      },
      "annotations": {
        "description": "Container model-server in pod summarizer-canary-7d9f8b6c4-x2x7q was OOM killed.",
        "runbook_url": "https://runbooks.example.com/canary#oom",
        "summary": "summarizer canary OOM killed"
      },
      "startsAt": "2026-03-01T12:00:03.512Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://prometheus-k8s-0:9090/graph?g0.expr=kube_pod_container_status_last_terminated_reason%7Breason%3D%22OOMKilled%22%7D+%3D%3D+1&g0.tab=1",
      "fingerprint": "5f3c1a0b9e8d7c6a"
    },
    {
      "status": "resolved",
      "labels": {
        "alertname": "ModelServerDown",
        "model": "summarizer",
        "namespace": "ml-serving",
        "severity": "high"
      },
      "annotations": {
        "summary": "summarizer model server unreachable"
      },
      "startsAt": "2026-03-01T11:50:00Z",
      "endsAt": "2026-03-01T11:58:30.25Z",
      "generatorURL": "http://prometheus-k8s-0:9090/graph?g0.expr=up%7Bjob%3D%22model-server%22%7D+%3D%3D+0&g0.tab=1",
      "fingerprint": "a1b2c3d4e5f60718"
    }
  ],
  "groupLabels": { "model": "summarizer" },
  "commonLabels": { "model": "summarizer", "namespace": "ml-serving" },
  "commonAnnotations": {},
  "externalURL": "http://alertmanager-main-0:9093",
  "version": "4",
  "groupKey": "{}/{namespace=\"ml-serving\"}:{model=\"summarizer\"}",
  "truncatedAlerts": 0
}"#;

/// A firing alert asking for a rollback through the action label.
const AM_ROLLBACK: &str = r#"{
  "receiver": "canaryd-direct",
  "status": "firing",
  "alerts": [
    {
      "status": "firing",
      "labels": {
        "alertname": "CanaryLatencyBudgetBurn",
        "canary_action": "auto_rollback",
        "model": "translator",
        "region": "eu-west-1",
        "severity": "critical"
      },
      "annotations": { "summary": "translator canary burns its latency budget" },
      "startsAt": "2026-03-01T12:10:00Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://prometheus:9090/graph",
      "fingerprint": "0011223344556677"
    }
  ],
  "groupLabels": {},
  "commonLabels": {},
  "commonAnnotations": {},
  "externalURL": "http://alertmanager:9093",
  "version": "4",
  "groupKey": "{}:{}",
  "truncatedAlerts": 0,
  "notification_reason": "new_alerts"
}"#;

#[derive(Default)]
struct Fake {
    events: Mutex<Vec<AlertEvent>>,
    actions: Mutex<Vec<DirectAction>>,
    failing: AtomicBool,
    not_ready: AtomicBool,
    reload_fails: AtomicBool,
    silenced: Mutex<Vec<Vec<Silence>>>,
    payloads: Mutex<Vec<PayloadResult>>,
}

impl Backend for Fake {
    fn ingest(&self, alerts: Vec<AlertEvent>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) {
                return Err("pipeline full".into());
            }
            self.events.lock().unwrap().extend(alerts);
            Ok(())
        })
    }

    fn act(&self, requests: Vec<DirectAction>) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            if self.failing.load(Ordering::SeqCst) {
                return Err("pipeline full".into());
            }
            self.actions.lock().unwrap().extend(requests);
            Ok(())
        })
    }

    fn alerts(&self) -> BoxFuture<'_, Json> {
        Box::pin(async {
            json!({"alerts": [{"rule": "Canary Error Rate High", "subject": {"model": "summarizer"}, "state": "firing", "since": "2026-03-01T12:06:00.000Z", "values": {"canary_error_rate": 0.1}, "silenced": false}], "subjects": ["summarizer"]})
        })
    }

    fn rules(&self) -> Json {
        json!([{"name": "Canary Error Rate High", "condition": "canary_error_rate > 0.05", "duration": "5m", "severity": "critical", "actions": ["auto_rollback"]}])
    }

    fn subject(&self, model: String) -> BoxFuture<'_, Option<Json>> {
        Box::pin(async move {
            (model == "summarizer").then(|| {
                json!({"model": "summarizer", "canary": {"error_rate": 0.1, "p95_latency": null}, "stable": {"error_rate": 0.004}})
            })
        })
    }

    fn actions(&self) -> Json {
        json!([])
    }

    fn reload(&self) -> BoxFuture<'_, Result<Json, Vec<String>>> {
        Box::pin(async move {
            if self.reload_fails.load(Ordering::SeqCst) {
                Err(vec!["rules.yaml:3: unknown field `conditon`".to_string()])
            } else {
                Ok(json!({"rules": 4}))
            }
        })
    }

    fn ready(&self) -> bool {
        !self.not_ready.load(Ordering::SeqCst)
    }

    fn metrics(&self) -> BoxFuture<'_, String> {
        Box::pin(async {
            let metrics = crate::metrics::Metrics::new();
            for result in self.payloads.lock().unwrap().iter() {
                metrics.inc_alertmanager_payload(*result);
            }
            metrics.encode()
        })
    }

    fn silenced(&self, silences: &[Silence]) {
        self.silenced.lock().unwrap().push(silences.to_vec());
    }

    fn record_payload(&self, result: PayloadResult) {
        self.payloads.lock().unwrap().push(result);
    }
}

/// A server with a clock the test moves.
struct Harness {
    router: Router,
    app: Arc<App>,
    fake: Arc<Fake>,
    clock: Arc<AtomicI64>,
}

const T0: &str = "2026-03-01T12:30:00Z";

fn harness(config: HttpConfig) -> Harness {
    let fake = Arc::new(Fake::default());
    let clock = Arc::new(AtomicI64::new(
        Timestamp::parse_rfc3339(T0).unwrap().millis(),
    ));
    let now = {
        let clock = clock.clone();
        Arc::new(move || Timestamp(clock.load(Ordering::SeqCst))) as Clock
    };
    let app = App::new(&config, fake.clone(), now, None).unwrap();
    Harness {
        router: app.clone().router(),
        app,
        fake,
        clock,
    }
}

/// A file holding `content`, unique to the test.
fn secret_file(name: &str, content: &str) -> Value {
    let dir = std::env::temp_dir().join(format!("canaryd-server-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, format!("{content}\n")).unwrap();
    Value::File { file }
}

fn bearer_config(name: &str) -> HttpConfig {
    HttpConfig {
        auth: Some(AuthConfig::Bearer {
            token: secret_file(name, "t0ken"),
        }),
        ..HttpConfig::default()
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Json {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

impl Harness {
    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        Reply {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn get(&self, path: &str) -> Reply {
        self.send(Request::get(path).body(Body::empty()).unwrap())
            .await
    }

    async fn post_json(&self, path: &str, body: &str, authorization: Option<&str>) -> Reply {
        let mut request = Request::post(path).header(header::CONTENT_TYPE, "application/json");
        if let Some(a) = authorization {
            request = request.header(header::AUTHORIZATION, a);
        }
        self.send(request.body(Body::from(body.to_string())).unwrap())
            .await
    }

    async fn webhook(&self, body: &str) -> Reply {
        self.post_json("/api/v1/alertmanager", body, None).await
    }

    fn events(&self) -> Vec<AlertEvent> {
        self.fake.events.lock().unwrap().clone()
    }

    fn direct_actions(&self) -> Vec<DirectAction> {
        self.fake.actions.lock().unwrap().clone()
    }

    fn payloads(&self) -> Vec<PayloadResult> {
        self.fake.payloads.lock().unwrap().clone()
    }

    fn advance(&self, millis: i64) {
        self.clock.fetch_add(millis, Ordering::SeqCst);
    }
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ts(text: &str) -> Timestamp {
    Timestamp::parse_rfc3339(text).unwrap()
}

#[tokio::test]
async fn the_webhook_needs_the_bearer_token() {
    let h = harness(bearer_config("bearer-token"));
    let missing = h.webhook(AM_FIRING_AND_RESOLVED).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        missing.headers[header::WWW_AUTHENTICATE],
        r#"Bearer realm="canaryd""#
    );
    let wrong = h
        .post_json(
            "/api/v1/alertmanager",
            AM_FIRING_AND_RESOLVED,
            Some("Bearer t0ken2"),
        )
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(
        h.events().is_empty(),
        "nothing ingested without credentials"
    );
    let right = h
        .post_json(
            "/api/v1/alertmanager",
            AM_FIRING_AND_RESOLVED,
            Some("Bearer t0ken"),
        )
        .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);
    assert_eq!(h.events().len(), 2);
    assert_eq!(
        h.payloads(),
        [
            PayloadResult::Unauthorized,
            PayloadResult::Unauthorized,
            PayloadResult::Accepted
        ]
    );
}

#[tokio::test]
async fn the_webhook_accepts_basic_auth() {
    let h = harness(HttpConfig {
        auth: Some(AuthConfig::Basic {
            username: "alertmanager".into(),
            password: secret_file("basic-password", "pa:ss"),
        }),
        ..HttpConfig::default()
    });
    let basic = |user_pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(user_pass)
        )
    };
    let missing = h.webhook(AM_FIRING_AND_RESOLVED).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(
        missing.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic ")
    );
    for wrong in ["alertmanager:pa", "someone:pa:ss", "alertmanager:pa:ss2"] {
        let r = h
            .post_json(
                "/api/v1/alertmanager",
                AM_FIRING_AND_RESOLVED,
                Some(&basic(wrong)),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{wrong}");
    }
    let right = h
        .post_json(
            "/api/v1/alertmanager",
            AM_FIRING_AND_RESOLVED,
            Some(&basic("alertmanager:pa:ss")),
        )
        .await;
    assert_eq!(right.status, StatusCode::OK, "{}", right.body);
}

#[tokio::test]
async fn auth_guards_silence_changes_and_reload_but_not_reads() {
    let h = harness(bearer_config("bearer-guards"));
    let silence = r#"{"rule":"R","until":"1h","created_by":"me","comment":"deploy"}"#;
    assert_eq!(
        h.post_json("/api/v1/silences", silence, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    let delete = Request::delete("/api/v1/silences/abc")
        .body(Body::empty())
        .unwrap();
    assert_eq!(h.send(delete).await.status, StatusCode::UNAUTHORIZED);
    let reload = Request::post("/-/reload").body(Body::empty()).unwrap();
    assert_eq!(h.send(reload).await.status, StatusCode::UNAUTHORIZED);
    assert!(h.fake.silenced.lock().unwrap().is_empty());
    for path in [
        "/api/v1/silences",
        "/api/v1/alerts",
        "/api/v1/rules",
        "/metrics",
        "/",
    ] {
        assert_eq!(h.get(path).await.status, StatusCode::OK, "{path}");
    }
    let created = h
        .post_json("/api/v1/silences", silence, Some("Bearer t0ken"))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_declared_or_not() {
    let h = harness(HttpConfig {
        body_limit: 64,
        ..HttpConfig::default()
    });
    let declared = h.webhook(AM_FIRING_AND_RESOLVED).await;
    assert_eq!(declared.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Streamed without a Content-Length: the limit still holds.
    let chunks: Vec<Result<Bytes, std::io::Error>> = AM_FIRING_AND_RESOLVED
        .as_bytes()
        .chunks(16)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    let streamed = Request::post("/api/v1/alertmanager")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(futures::stream::iter(chunks)))
        .unwrap();
    assert_eq!(h.send(streamed).await.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(h.events().is_empty());
    assert_eq!(
        h.payloads(),
        [PayloadResult::TooLarge, PayloadResult::TooLarge]
    );
    let small = h.webhook(r#"{"alerts":[]}"#).await;
    assert_eq!(small.status, StatusCode::OK, "{}", small.body);
}

#[tokio::test]
async fn only_json_is_accepted() {
    let h = harness(HttpConfig::default());
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
    ] {
        let mut request = Request::post("/api/v1/alertmanager");
        if let Some(ct) = content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let r = h
            .send(request.body(Body::from(AM_FIRING_AND_RESOLVED)).unwrap())
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}"
        );
    }
    let with_charset = Request::post("/api/v1/alertmanager")
        .header(header::CONTENT_TYPE, "Application/JSON; charset=utf-8")
        .body(Body::from(AM_FIRING_AND_RESOLVED))
        .unwrap();
    assert_eq!(h.send(with_charset).await.status, StatusCode::OK);
    assert_eq!(h.payloads()[0], PayloadResult::BadContentType);
}

#[tokio::test]
async fn malformed_payloads_are_400_with_the_reason() {
    let h = harness(HttpConfig::default());
    let truncated = h.webhook(r#"{"version":"4","alerts":[{"status":"#).await;
    assert_eq!(truncated.status, StatusCode::BAD_REQUEST);
    assert!(
        truncated.json()["error"]
            .as_str()
            .unwrap()
            .contains("EOF while parsing"),
        "{}",
        truncated.body
    );
    let bad_status = h
        .webhook(r#"{"alerts":[{"status":"exploded","labels":{}}]}"#)
        .await;
    assert_eq!(bad_status.status, StatusCode::BAD_REQUEST);
    let reason = bad_status.json()["error"].as_str().unwrap().to_string();
    assert!(reason.contains("unknown variant `exploded`"), "{reason}");
    let no_alerts = h.webhook(r#"{"version":"4"}"#).await;
    assert_eq!(no_alerts.status, StatusCode::BAD_REQUEST);
    assert!(
        no_alerts.body.contains("missing field `alerts`"),
        "{}",
        no_alerts.body
    );
    assert!(h.events().is_empty());
    assert!(h.payloads().iter().all(|r| *r == PayloadResult::Malformed));
}

#[tokio::test]
async fn a_v4_payload_reaches_ingest_as_alert_events() {
    let h = harness(HttpConfig::default());
    let r = h.webhook(AM_FIRING_AND_RESOLVED).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["alerts"], 2);
    let events = h.events();
    assert_eq!(events.len(), 2);
    let oom = &events[0];
    assert_eq!(oom.name, "OOMKilled");
    assert_eq!(oom.status, AlertStatus::Firing);
    assert_eq!(oom.ts, ts("2026-03-01T12:00:03.512Z"), "firing: startsAt");
    assert_eq!(oom.severity.as_deref(), Some("critical"));
    assert_eq!(oom.labels["model"], "summarizer");
    assert_eq!(oom.labels["track"], "canary");
    assert_eq!(
        oom.annotations["runbook_url"],
        "https://runbooks.example.com/canary#oom"
    );
    assert!(oom.is_oom() && oom.is_critical());
    let down = &events[1];
    assert_eq!(down.name, "ModelServerDown");
    assert_eq!(down.status, AlertStatus::Resolved);
    assert_eq!(down.ts, ts("2026-03-01T11:58:30.250Z"), "resolved: endsAt");
    assert_eq!(down.severity.as_deref(), Some("high"));
    assert!(h.direct_actions().is_empty());
}

#[tokio::test]
async fn missing_times_fall_back_to_now() {
    let h = harness(HttpConfig::default());
    let r = h
        .webhook(r#"{"alerts":[{"status":"firing","labels":{"alertname":"X","model":"m"}},{"status":"resolved","labels":{"alertname":"Y"},"startsAt":"2026-03-01T12:00:00Z","endsAt":"0001-01-01T00:00:00Z"}]}"#)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let events = h.events();
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.ts == ts(T0)), "{events:?}");
    assert_eq!(events[0].severity, None);
}

#[tokio::test]
async fn duplicates_by_fingerprint_and_start_are_ignored() {
    let h = harness(HttpConfig::default());
    assert_eq!(
        h.webhook(AM_FIRING_AND_RESOLVED).await.status,
        StatusCode::OK
    );
    // The HA peer, or repeat_interval, sends the same group again.
    let again = h.webhook(AM_FIRING_AND_RESOLVED).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["duplicates"], 2);
    assert_eq!(h.events().len(), 2, "nothing ingested twice");
    assert_eq!(
        h.payloads(),
        [PayloadResult::Accepted, PayloadResult::Duplicate]
    );
    // The same alert firing again later is a new episode: a new startsAt.
    let refired =
        AM_FIRING_AND_RESOLVED.replace("2026-03-01T12:00:03.512Z", "2026-03-01T12:20:00Z");
    let r = h.webhook(&refired).await;
    assert_eq!(r.json()["alerts"], 1, "{}", r.body);
    assert_eq!(r.json()["duplicates"], 1);
    let events = h.events();
    assert_eq!(events.len(), 3);
    assert_eq!(events[2].ts, ts("2026-03-01T12:20:00Z"));
}

#[tokio::test]
async fn the_resolution_of_a_seen_alert_passes_through() {
    let h = harness(HttpConfig::default());
    assert_eq!(
        h.webhook(AM_FIRING_AND_RESOLVED).await.status,
        StatusCode::OK
    );
    let resolved = AM_FIRING_AND_RESOLVED
        .replacen(r#""status": "firing","#, r#""status": "resolved","#, 2)
        .replace("0001-01-01T00:00:00Z", "2026-03-01T12:04:00Z");
    let r = h.webhook(&resolved).await;
    assert_eq!(r.status, StatusCode::OK);
    let events = h.events();
    assert_eq!(events.len(), 3, "{events:?}");
    let last = &events[2];
    assert_eq!(
        (last.name.as_str(), last.status, last.ts),
        (
            "OOMKilled",
            AlertStatus::Resolved,
            ts("2026-03-01T12:04:00Z")
        )
    );
}

#[tokio::test]
async fn the_action_label_becomes_a_direct_action() {
    let h = harness(HttpConfig::default());
    let r = h.webhook(AM_ROLLBACK).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["actions"], 1);
    assert!(h.events().is_empty(), "not fed to the rules");
    let actions = h.direct_actions();
    assert_eq!(actions.len(), 1);
    let a = &actions[0];
    assert_eq!(a.action, ActionName::AutoRollback);
    assert_eq!(a.subject, labels(&[("model", "translator")]));
    assert_eq!(a.alertname, "CanaryLatencyBudgetBurn");
    assert_eq!(a.status, AlertStatus::Firing);
    assert_eq!(a.fingerprint, "0011223344556677");
    assert_eq!(a.starts_at, ts("2026-03-01T12:10:00Z"));
    assert_eq!(a.labels["region"], "eu-west-1");
    assert_eq!(
        a.annotations["summary"],
        "translator canary burns its latency budget"
    );
    // Sent again: already acted on.
    assert_eq!(h.webhook(AM_ROLLBACK).await.json()["duplicates"], 1);
    assert_eq!(h.direct_actions().len(), 1);
}

#[tokio::test]
async fn the_mapping_chooses_the_label_and_the_subject() {
    let h = harness(HttpConfig {
        alertmanager: AlertmanagerMapping {
            action_label: "canaryd".into(),
            subject_labels: vec!["model".into(), "region".into()],
        },
        ..HttpConfig::default()
    });
    let payload = AM_ROLLBACK
        .replace(
            r#""canary_action": "auto_rollback""#,
            r#""canaryd": "reduce_traffic""#,
        )
        .replace("0011223344556677", "8899aabbccddeeff");
    assert_eq!(h.webhook(&payload).await.status, StatusCode::OK);
    let actions = h.direct_actions();
    assert_eq!(actions[0].action, ActionName::ReduceTraffic);
    assert_eq!(
        actions[0].subject,
        labels(&[("model", "translator"), ("region", "eu-west-1")])
    );
    // The default label is an ordinary label now.
    assert_eq!(h.webhook(AM_ROLLBACK).await.status, StatusCode::OK);
    assert_eq!(h.events().len(), 1);
}

#[tokio::test]
async fn an_unknown_action_or_a_missing_subject_is_400_and_nothing_is_taken() {
    let h = harness(HttpConfig::default());
    // A valid alert first in the payload: it must not be ingested either.
    let both = AM_FIRING_AND_RESOLVED.replacen(
        r#""alerts": ["#,
        r#""alerts": [{"status":"firing","labels":{"alertname":"A","canary_action":"rollback_everything","model":"m"},"fingerprint":"ff"},"#,
        1,
    );
    let r = h.webhook(&both).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let reason = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        reason.contains("rollback_everything") && reason.contains("auto_rollback"),
        "{reason}"
    );
    let no_subject = AM_ROLLBACK.replace(r#""model": "translator","#, "");
    let r = h.webhook(&no_subject).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.body.contains("`model`"), "{}", r.body);
    assert!(h.events().is_empty());
    assert!(h.direct_actions().is_empty());
    // Nothing was remembered: once fixed, the alerts go through.
    assert_eq!(h.webhook(AM_FIRING_AND_RESOLVED).await.json()["alerts"], 2);
}

#[tokio::test]
async fn a_failing_backend_is_503_and_the_retry_is_not_a_duplicate() {
    let h = harness(HttpConfig::default());
    h.fake.failing.store(true, Ordering::SeqCst);
    let r = h.webhook(AM_FIRING_AND_RESOLVED).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("pipeline full"), "{}", r.body);
    let r = h.webhook(AM_ROLLBACK).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    h.fake.failing.store(false, Ordering::SeqCst);
    let retry = h.webhook(AM_FIRING_AND_RESOLVED).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.json()["alerts"], 2, "{}", retry.body);
    assert_eq!(h.webhook(AM_ROLLBACK).await.json()["actions"], 1);
    assert_eq!(h.events().len(), 2);
    assert_eq!(h.direct_actions().len(), 1);
    assert_eq!(
        h.payloads(),
        [
            PayloadResult::Unavailable,
            PayloadResult::Unavailable,
            PayloadResult::Accepted,
            PayloadResult::Accepted
        ]
    );
}

#[tokio::test]
async fn silences_are_created_listed_deleted_and_told() {
    let h = harness(HttpConfig::default());
    let r = h
        .post_json(
            "/api/v1/silences",
            r#"{"rule":"Canary Error Rate High","subject":{"model":"summarizer"},"until":"2h","created_by":"alice","comment":"known incident INC-42"}"#,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let created = r.json();
    let id = created["id"].as_str().unwrap().to_string();
    assert!(!id.is_empty());
    assert_eq!(
        r.headers[header::LOCATION],
        format!("/api/v1/silences/{id}").as_str()
    );
    assert_eq!(created["until"], "2026-03-01T14:30:00.000Z");
    assert_eq!(created["created_at"], "2026-03-01T12:30:00.000Z");
    let second = h
        .post_json(
            "/api/v1/silences",
            r#"{"subject":{"model":"translator"},"until":"2026-03-01T13:00:00Z","created_by":"bob","comment":"load test"}"#,
            None,
        )
        .await;
    assert_eq!(second.status, StatusCode::CREATED, "{}", second.body);

    let listed = h.get("/api/v1/silences").await.json();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0], created);
    assert_eq!(listed[1]["rule"], Json::Null);

    {
        let told = h.fake.silenced.lock().unwrap();
        assert_eq!(told.len(), 2, "told on each change");
        assert_eq!(told[1].len(), 2);
        assert_eq!(told[0][0].id, id);
        assert!(told[0][0].matches(
            "Canary Error Rate High",
            &labels(&[("model", "summarizer")])
        ));
    }

    let delete = |id: &str| {
        Request::delete(format!("/api/v1/silences/{id}"))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(h.send(delete(&id)).await.status, StatusCode::NO_CONTENT);
    assert_eq!(h.send(delete(&id)).await.status, StatusCode::NOT_FOUND);
    let listed = h.get("/api/v1/silences").await.json();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    let told = h.fake.silenced.lock().unwrap();
    assert_eq!(told.len(), 3);
    assert_eq!(told[2].len(), 1);
    assert_eq!(told[2][0].created_by, "bob");
}

#[tokio::test]
async fn expired_silences_are_dropped_and_the_backend_told() {
    let h = harness(HttpConfig::default());
    for until in ["10m", "1h"] {
        let body = format!(r#"{{"rule":"R","until":"{until}","created_by":"me","comment":"c"}}"#);
        assert_eq!(
            h.post_json("/api/v1/silences", &body, None).await.status,
            StatusCode::CREATED
        );
    }
    h.advance(10 * 60 * 1000 - 1);
    h.app.expire_silences();
    assert_eq!(
        h.fake.silenced.lock().unwrap().len(),
        2,
        "nothing expired yet"
    );
    h.advance(1);
    // The periodic sweep (as `serve` runs it every second).
    h.app.expire_silences();
    {
        let told = h.fake.silenced.lock().unwrap();
        assert_eq!(told.len(), 3);
        assert_eq!(told[2].len(), 1);
    }
    h.app.expire_silences();
    assert_eq!(h.fake.silenced.lock().unwrap().len(), 3, "told once");
    // A GET after the next one expires drops it too.
    h.advance(60 * 60 * 1000);
    let listed = h.get("/api/v1/silences").await.json();
    assert_eq!(listed, json!([]));
    let told = h.fake.silenced.lock().unwrap();
    assert_eq!(told.len(), 4);
    assert!(told[3].is_empty());
}

#[tokio::test]
async fn invalid_silences_are_400() {
    let h = harness(HttpConfig::default());
    let cases = [
        (
            r#"{"until":"2h","created_by":"me","comment":"c"}"#,
            "needs a `rule`, a `subject`",
        ),
        (
            r#"{"subject":{},"until":"2h","created_by":"me","comment":"c"}"#,
            "at least one label",
        ),
        (
            r#"{"rule":"R","until":"soon","created_by":"me","comment":"c"}"#,
            "RFC 3339",
        ),
        (
            r#"{"rule":"R","until":"2026-03-01T12:00:00Z","created_by":"me","comment":"c"}"#,
            "not in the future",
        ),
        (
            r#"{"rule":"R","until":"0s","created_by":"me","comment":"c"}"#,
            "not in the future",
        ),
        (r#"{"rule":"R","until":"2h","comment":"c"}"#, "created_by"),
        (
            r#"{"rule":"R","until":"2h","created_by":" ","comment":"c"}"#,
            "created_by",
        ),
        (
            r#"{"rule":"R","until":"2h","created_by":"me","comment":"c","matchers":[]}"#,
            "unknown field `matchers`",
        ),
        (r#"{"rule":"R","#, "invalid silence"),
    ];
    for (body, reason) in cases {
        let r = h.post_json("/api/v1/silences", body, None).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert!(r.body.contains(reason), "{body}: {}", r.body);
    }
    let plain = Request::post("/api/v1/silences")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(
            r#"{"rule":"R","until":"2h","created_by":"me","comment":"c"}"#,
        ))
        .unwrap();
    assert_eq!(
        h.send(plain).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    assert_eq!(h.get("/api/v1/silences").await.json(), json!([]));
    assert!(h.fake.silenced.lock().unwrap().is_empty());
}

#[tokio::test]
async fn readiness_follows_the_backend_and_health_does_not() {
    let h = harness(HttpConfig::default());
    assert_eq!(h.get("/-/ready").await.status, StatusCode::OK);
    h.fake.not_ready.store(true, Ordering::SeqCst);
    assert_eq!(
        h.get("/-/ready").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(h.get("/-/healthy").await.status, StatusCode::OK);
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let h = harness(HttpConfig::default());
    h.webhook(AM_FIRING_AND_RESOLVED).await;
    h.webhook(AM_FIRING_AND_RESOLVED).await;
    let r = h.get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let content_type = r.headers[header::CONTENT_TYPE].to_str().unwrap();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    assert!(
        r.body
            .contains("# TYPE canaryd_alertmanager_payloads_total counter"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains(r#"canaryd_alertmanager_payloads_total{result="duplicate"} 1"#),
        "{}",
        r.body
    );
}

#[tokio::test]
async fn reload_answers_with_the_report_or_the_errors() {
    let h = harness(HttpConfig::default());
    let post = || Request::post("/-/reload").body(Body::empty()).unwrap();
    let ok = h.send(post()).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.json(), json!({"rules": 4}));
    h.fake.reload_fails.store(true, Ordering::SeqCst);
    let failed = h.send(post()).await;
    assert_eq!(failed.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        failed.json()["errors"][0],
        "rules.yaml:3: unknown field `conditon`"
    );
}

#[tokio::test]
async fn the_api_passes_the_backend_through() {
    let h = harness(HttpConfig::default());
    assert_eq!(
        h.get("/api/v1/alerts").await.json()["subjects"],
        json!(["summarizer"])
    );
    assert_eq!(h.get("/api/v1/rules").await.json()[0]["duration"], "5m");
    assert_eq!(h.get("/api/v1/actions").await.json(), json!([]));
    let s = h.get("/api/v1/subjects/summarizer").await;
    assert_eq!(s.status, StatusCode::OK);
    assert_eq!(s.json()["canary"]["error_rate"], 0.1);
    let unknown = h.get("/api/v1/subjects/nope").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.body.contains("nope"));
    assert_eq!(h.get("/api/v1/nothing").await.status, StatusCode::NOT_FOUND);
    let wrong_method = Request::get("/api/v1/alertmanager")
        .body(Body::empty())
        .unwrap();
    assert_eq!(
        h.send(wrong_method).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

#[tokio::test]
async fn the_status_page_is_served_from_the_binary() {
    let h = harness(HttpConfig::default());
    let r = h.get("/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    for id in ["subjects", "alerts", "actions", "silences", "rules"] {
        assert!(
            r.body.contains(&format!(r#"<section id="{id}""#)),
            "section #{id}"
        );
    }
    for api in [
        "/api/v1/alerts",
        "/api/v1/actions",
        "/api/v1/rules",
        "/api/v1/silences",
        "/api/v1/subjects/",
        "/api/v1/history/",
    ] {
        assert!(r.body.contains(api), "fetches {api}");
    }
    assert!(r.body.contains("<th scope=\"col\">"));
    // The SVG namespace is a name, not an address fetched.
    let fetchable = r.body.replace("\"http://www.w3.org/2000/svg\"", "");
    assert!(
        !fetchable.contains("http://") && !fetchable.contains("https://"),
        "no external assets"
    );
    assert!(
        !r.body.contains("innerHTML"),
        "data only through textContent"
    );
}

#[test]
fn the_config_section_has_defaults_and_refuses_unknown_keys() {
    let config: HttpConfig = serde_yaml_ng::from_str("{}").unwrap();
    assert_eq!(config, HttpConfig::default());
    assert_eq!(config.listen.to_string(), "0.0.0.0:9464");
    assert_eq!(config.body_limit, 1024 * 1024);
    assert_eq!(config.alertmanager.action_label, "canary_action");
    assert_eq!(config.alertmanager.subject_labels, ["model"]);
    let full: HttpConfig = serde_yaml_ng::from_str(
        "listen: 127.0.0.1:8080\nbody_limit: 4096\nauth: {bearer: {env: TOKEN}}\nalertmanager: {action_label: act, subject_labels: [model, region]}",
    )
    .unwrap();
    assert_eq!(full.listen.port(), 8080);
    assert_eq!(full.body_limit, 4096);
    assert!(full.problems().is_empty());
    assert!(serde_yaml_ng::from_str::<HttpConfig>("listn: 1.2.3.4:5").is_err());
    assert!(serde_yaml_ng::from_str::<HttpConfig>("alertmanager: {label: x}").is_err());
    let zero: HttpConfig =
        serde_yaml_ng::from_str("body_limit: 0\nalertmanager: {subject_labels: []}").unwrap();
    assert_eq!(zero.problems().len(), 2, "{:?}", zero.problems());
}

#[tokio::test]
async fn serve_answers_on_a_real_socket_and_stops_on_the_token() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = Arc::new(Fake::default());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(serve(
        listener,
        HttpConfig::default(),
        fake.clone(),
        shutdown.clone(),
    ));
    let body = AM_ROLLBACK.to_string();
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(
            stream,
            "POST /api/v1/alertmanager HTTP/1.1\r\nHost: canaryd\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(fake.actions.lock().unwrap().len(), 1);
    shutdown.cancel();
    server.await.unwrap().unwrap();
}

#[tokio::test]
async fn serve_refuses_unreadable_or_inline_secrets() {
    for auth in [
        AuthConfig::Bearer {
            token: Value::File {
                file: "/nonexistent/canaryd/token".into(),
            },
        },
        AuthConfig::Bearer {
            token: Value::Inline("hunter2".into()),
        },
    ] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let config = HttpConfig {
            auth: Some(auth),
            ..HttpConfig::default()
        };
        let err = serve(
            listener,
            config,
            Arc::new(Fake::default()),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("http.auth.bearer"), "{err}");
    }
}
