//! The Kubernetes traffic connector against a fake API server that speaks real HTTP.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::collections::BTreeMap;
use std::time::Duration;

use canaryd_connectors::{
    Action, Connector, ConnectorError, Evidence, KubeConfig, KubeConnector, OutcomeKind,
};
use canaryd_rules::{ActionName, Severity, Span, Timestamp};
use canaryd_tests::kube_fixture::{KubeFixture, TOKEN};
use serde_json::Value;

const NS: &str = "ml-serving";
const VS: &str = "model-summarizer";
const VS_PATH: &str = "/virtualservices/model-summarizer";

fn config(fixture: &KubeFixture, kind: &str, extra: &str) -> KubeConfig {
    let yaml = format!(
        "kubeconfig: {}
timeout: 2s
target:
  kind: {kind}
  namespace: \"{NS}\"
  name: \"model-{{{{ model }}}}\"
  canary: canary
  stable: stable
{extra}",
        fixture.kubeconfig().display()
    );
    serde_yaml_ng::from_str(&yaml).unwrap()
}

async fn connector(fixture: &KubeFixture, kind: &str) -> KubeConnector {
    KubeConnector::new(config(fixture, kind, "")).await.unwrap()
}

fn action(name: ActionName, dry_run: bool) -> Action {
    let subject: BTreeMap<String, String> =
        [("model".to_string(), "summarizer".to_string())].into();
    Action {
        key: Action::key_for("Canary Error Rate High", &subject, Timestamp(1_000)),
        ts: Timestamp(301_000),
        rule: "Canary Error Rate High".into(),
        subject,
        action: name,
        severity: Severity::Critical,
        deadline: Span::seconds(30),
        dry_run,
        evidence: Evidence {
            condition: "canary_error_rate > 0.05".into(),
            values: [("canary_error_rate".to_string(), 0.105)].into(),
            thresholds: vec![],
            duration: Span::seconds(300),
            since: Timestamp(1_000),
        },
        labels: Default::default(),
        annotations: Default::default(),
        traffic: None,
    }
}

/// (stable, canary) weights of the stored VirtualService.
fn vs_weights(fixture: &KubeFixture) -> (i64, i64) {
    let vs = fixture.object("VirtualService", NS, VS).unwrap();
    let route = &vs["spec"]["http"][0]["route"];
    let weight_of = |subset: &str| {
        route
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["destination"]["subset"] == subset)
            .unwrap()["weight"]
            .as_i64()
            .unwrap()
    };
    (weight_of("stable"), weight_of("canary"))
}

fn patches(fixture: &KubeFixture) -> usize {
    fixture.requests_matching("PATCH", VS_PATH).len()
}

fn permanent(e: &ConnectorError) -> &str {
    match e {
        ConnectorError::Permanent(m) => m,
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

fn retriable(e: &ConnectorError) -> &str {
    match e {
        ConnectorError::Retriable { reason: m, .. } => m,
        other => panic!("expected a retriable error, got {other:?}"),
    }
}

#[tokio::test]
async fn rollback_of_a_virtual_service_at_90_10_ends_at_100_0_with_an_event() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    let kube = connector(&fixture, "VirtualService").await;

    let outcome = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap();

    assert_eq!(outcome.kind, OutcomeKind::Succeeded);
    assert!(!outcome.dry_run);
    assert_eq!(outcome.connector, "kube");
    assert_eq!(
        outcome.detail,
        "VirtualService ml-serving/model-summarizer: canary 10 -> 0, stable 90 -> 100 (verified)"
    );
    assert_eq!(vs_weights(&fixture), (100, 0));
    // The rest of the object is untouched.
    let vs = fixture.object("VirtualService", NS, VS).unwrap();
    assert_eq!(vs["spec"]["hosts"][0], VS);
    assert_eq!(vs["spec"]["http"][0]["route"][1]["destination"]["host"], VS);

    let patch = fixture.requests_matching("PATCH", VS_PATH);
    assert_eq!(patch.len(), 1, "{:#?}", fixture.requests());
    let patch = &patch[0];
    assert_eq!(
        patch.query_param("fieldManager").as_deref(),
        Some("canaryd")
    );
    let ct = patch.content_type.as_deref().unwrap_or("");
    assert!(
        ct.starts_with("application/merge-patch+json")
            || ct.starts_with("application/apply-patch+yaml"),
        "{ct}"
    );
    assert_eq!(
        patch.authorization.as_deref(),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    // The write is conditional on what was read.
    assert!(
        patch.json()["metadata"]["resourceVersion"].is_string(),
        "{}",
        patch.body
    );
    // Read, write, read back to verify, record the event.
    let methods: Vec<String> = fixture
        .requests()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    assert_eq!(
        methods,
        vec![
            "GET /apis/networking.istio.io/v1/namespaces/ml-serving/virtualservices/model-summarizer",
            "PATCH /apis/networking.istio.io/v1/namespaces/ml-serving/virtualservices/model-summarizer",
            "GET /apis/networking.istio.io/v1/namespaces/ml-serving/virtualservices/model-summarizer",
            "POST /api/v1/namespaces/ml-serving/events",
        ]
    );

    let events = fixture.events();
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = &events[0];
    assert_eq!(event["reason"], "CanaryRollback");
    assert_eq!(event["reportingComponent"], "canaryd");
    assert_eq!(event["involvedObject"]["kind"], "VirtualService");
    assert_eq!(event["involvedObject"]["name"], VS);
    assert_eq!(event["involvedObject"]["namespace"], NS);
    assert_eq!(
        event["involvedObject"]["apiVersion"],
        "networking.istio.io/v1"
    );
    assert_eq!(event["involvedObject"]["uid"], vs["metadata"]["uid"]);
    let message = event["message"].as_str().unwrap();
    assert!(message.contains("Canary Error Rate High"), "{message}");
    assert!(
        message.contains("canary 10 -> 0, stable 90 -> 100"),
        "{message}"
    );
    assert!(message.contains("canary_error_rate=0.105"), "{message}");
}

#[tokio::test]
async fn reduce_traffic_halves_the_canary_weight_on_an_http_route() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::http_route(NS, VS, 50, 50));
    let kube = connector(&fixture, "HTTPRoute").await;

    let outcome = kube
        .execute(&action(ActionName::ReduceTraffic, false))
        .await
        .unwrap();

    assert_eq!(
        outcome.detail,
        "HTTPRoute ml-serving/model-summarizer: canary 50 -> 25, stable 50 -> 75 (verified)"
    );
    let route = fixture.object("HTTPRoute", NS, VS).unwrap();
    let refs = &route["spec"]["rules"][0]["backendRefs"];
    assert_eq!(refs[0]["name"], "stable");
    assert_eq!(refs[0]["weight"], 75);
    assert_eq!(refs[1]["name"], "canary");
    assert_eq!(refs[1]["weight"], 25);
    assert_eq!(refs[1]["port"], 8080);
    assert_eq!(route["spec"]["parentRefs"][0]["name"], "ml-gateway");
    let patch = fixture.requests_matching("PATCH", "/httproutes/model-summarizer");
    assert_eq!(patch.len(), 1);
    assert!(
        patch[0]
            .path
            .starts_with("/apis/gateway.networking.k8s.io/v1/namespaces/ml-serving/")
    );
    let events = fixture.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["reason"], "CanaryTrafficReduced");
    assert_eq!(events[0]["involvedObject"]["kind"], "HTTPRoute");

    // A later episode (another key): 25 -> 12 (rounded down), stable
    // takes the rest.
    let mut later = action(ActionName::ReduceTraffic, false);
    later.key.push_str("|later");
    let outcome = kube.execute(&later).await.unwrap();
    assert!(
        outcome.detail.contains("canary 25 -> 12, stable 75 -> 88"),
        "{}",
        outcome.detail
    );
}

#[tokio::test]
async fn rollback_of_an_argo_rollout_aborts_it_through_the_status_subresource() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::rollout(NS, VS));
    let kube = connector(&fixture, "Rollout").await;

    let outcome = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap();

    assert_eq!(outcome.kind, OutcomeKind::Succeeded);
    assert!(
        outcome
            .detail
            .contains("Rollout ml-serving/model-summarizer"),
        "{}",
        outcome.detail
    );
    assert!(outcome.detail.ends_with("(verified)"), "{}", outcome.detail);
    let rollout = fixture.object("Rollout", NS, VS).unwrap();
    assert_eq!(rollout["status"]["abort"], true);
    assert_eq!(rollout["status"]["phase"], "Progressing");
    assert_eq!(rollout["spec"]["replicas"], 4);
    let patch = fixture.requests_matching("PATCH", "/rollouts/model-summarizer/status");
    assert_eq!(patch.len(), 1, "{:#?}", fixture.requests());
    assert_eq!(patch[0].json()["status"]["abort"], true);
    assert_eq!(fixture.events()[0]["reason"], "CanaryRollback");

    // reduce_traffic on an aborted Rollout has nothing left to do.
    let outcome = kube
        .execute(&action(ActionName::ReduceTraffic, false))
        .await
        .unwrap();
    assert!(
        outcome.detail.contains("already aborted"),
        "{}",
        outcome.detail
    );
    assert_eq!(fixture.requests_matching("PATCH", "/status").len(), 1);
}

#[tokio::test]
async fn reduce_traffic_on_a_rollout_aborts_it_too() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::rollout(NS, VS));
    let kube = connector(&fixture, "Rollout").await;
    kube.execute(&action(ActionName::ReduceTraffic, false))
        .await
        .unwrap();
    assert_eq!(
        fixture.object("Rollout", NS, VS).unwrap()["status"]["abort"],
        true
    );
}

#[tokio::test]
async fn two_conflicts_are_retried_with_a_fresh_read_and_the_third_write_wins() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    fixture.fail_next("PATCH", VS_PATH, 2, 409);
    let kube = connector(&fixture, "VirtualService").await;

    let outcome = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap();

    assert!(outcome.detail.ends_with("(verified)"), "{}", outcome.detail);
    assert_eq!(vs_weights(&fixture), (100, 0));
    let calls: Vec<(String, u16)> = fixture
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(VS_PATH))
        .map(|r| (r.method.clone(), r.status))
        .collect();
    let expected: Vec<(String, u16)> = [
        ("GET", 200),
        ("PATCH", 409),
        ("GET", 200),
        ("PATCH", 409),
        ("GET", 200),
        ("PATCH", 200),
        ("GET", 200),
    ]
    .iter()
    .map(|(m, s)| (m.to_string(), *s))
    .collect();
    assert_eq!(calls, expected);
    assert_eq!(fixture.events().len(), 1);
}

#[tokio::test]
async fn a_real_concurrent_change_conflicts_and_the_retry_uses_the_new_weights() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    // Someone else moves the split to 80/20 right after canaryd's first
    // read: canaryd's write carries the old resourceVersion and must conflict.
    fixture.put_after_next("GET", VS_PATH, KubeFixture::virtual_service(NS, VS, 80, 20));
    let kube = connector(&fixture, "VirtualService").await;

    let outcome = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap();

    assert_eq!(
        outcome.detail,
        "VirtualService ml-serving/model-summarizer: canary 20 -> 0, stable 80 -> 100 (verified)"
    );
    assert_eq!(vs_weights(&fixture), (100, 0));
    let statuses: Vec<u16> = fixture
        .requests_matching("PATCH", VS_PATH)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![409, 200]);
}

#[tokio::test]
async fn conflicts_beyond_the_bound_are_retriable() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    fixture.fail_next("PATCH", VS_PATH, 100, 409);
    let kube = connector(&fixture, "VirtualService").await;

    let err = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap_err();

    assert!(retriable(&err).contains("conflict"), "{err}");
    assert_eq!(patches(&fixture), canaryd_connectors::kube::MAX_ATTEMPTS);
    assert_eq!(vs_weights(&fixture), (90, 10));
    assert!(fixture.events().is_empty());
}

#[tokio::test]
async fn forbidden_is_permanent_with_a_clear_message() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    fixture.fail_next("PATCH", VS_PATH, 1, 403);
    let kube = connector(&fixture, "VirtualService").await;

    let err = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap_err();

    let message = permanent(&err);
    assert!(
        message.contains(
            "forbidden: canaryd's service account may not patch virtualservices in ml-serving"
        ),
        "{message}"
    );
    assert_eq!(vs_weights(&fixture), (90, 10));
    assert!(fixture.events().is_empty());
}

#[tokio::test]
async fn a_missing_object_is_permanent_and_named() {
    let fixture = KubeFixture::start();
    let kube = connector(&fixture, "VirtualService").await;

    let err = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap_err();

    let message = permanent(&err);
    assert!(
        message.contains("not found: VirtualService ml-serving/model-summarizer"),
        "{message}"
    );
    assert!(fixture.requests_matching("PATCH", "").is_empty());
}

#[tokio::test]
async fn an_injected_404_is_permanent() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    fixture.fail_next("GET", VS_PATH, 1, 404);
    let kube = connector(&fixture, "VirtualService").await;
    let err = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap_err();
    assert!(
        permanent(&err).contains("not found: VirtualService ml-serving/model-summarizer"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_error_is_retriable_and_the_next_try_succeeds() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    fixture.fail_next("PATCH", VS_PATH, 1, 500);
    let kube = connector(&fixture, "VirtualService").await;

    let err = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap_err();
    assert!(retriable(&err).contains("500"), "{err}");
    assert_eq!(vs_weights(&fixture), (90, 10));

    // The same long-lived client carries the retry.
    kube.execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap();
    assert_eq!(vs_weights(&fixture), (100, 0));
}

#[tokio::test]
async fn a_slow_server_beyond_the_timeout_is_retriable() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    fixture.delay_next("GET", VS_PATH, 1, Duration::from_secs(30));
    let kube =
        KubeConnector::new(config(&fixture, "VirtualService", "").clone_with_timeout("300ms"))
            .await
            .unwrap();

    let err = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap_err();

    let message = retriable(&err);
    assert!(message.contains("timeout"), "{message}");
    assert_eq!(patches(&fixture), 0);
    assert_eq!(vs_weights(&fixture), (90, 10));
}

#[tokio::test]
async fn a_refused_connection_is_retriable() {
    let fixture = KubeFixture::start();
    let cfg = config(&fixture, "VirtualService", "");
    let kubeconfig = std::fs::read_to_string(fixture.kubeconfig()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kubeconfig");
    // A port nothing listens on.
    let port = canaryd_tests::tansu::free_port();
    std::fs::write(
        &path,
        kubeconfig.replace(&fixture.url(), &format!("http://127.0.0.1:{port}")),
    )
    .unwrap();
    let cfg = KubeConfig {
        kubeconfig: Some(path),
        ..cfg
    };
    let kube = KubeConnector::new(cfg).await.unwrap();
    let err = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap_err();
    assert!(err.is_retriable(), "{err}");
}

#[tokio::test]
async fn a_retried_reduce_traffic_cuts_once_because_its_key_is_on_the_object() {
    use canaryd_connectors::kube::{APPLIED_ANNOTATION, APPLIED_MEMORY, LAST_ACTION_ANNOTATION};
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 80, 20));
    let kube = connector(&fixture, "VirtualService").await;
    let reduce = action(ActionName::ReduceTraffic, false);

    let first = kube.execute(&reduce).await.unwrap();
    assert!(first.detail.contains("canary 20 -> 10"), "{}", first.detail);
    // The key went in the same PATCH as the weights.
    let patch = fixture.requests_matching("PATCH", VS_PATH);
    assert_eq!(patch.len(), 1);
    let body = patch[0].json();
    assert_eq!(
        body["metadata"]["annotations"][APPLIED_ANNOTATION],
        reduce.key_digest()
    );
    assert_eq!(
        body["metadata"]["annotations"][LAST_ACTION_ANNOTATION],
        reduce.key
    );
    assert!(body["spec"]["http"].is_array());

    // The same action again (a retry after a lost answer, or a new owner
    // after a crash): nothing is written.
    let again = kube.execute(&reduce).await.unwrap();
    assert_eq!(again.kind, OutcomeKind::Succeeded);
    assert!(again.detail.contains("already applied"), "{}", again.detail);
    assert_eq!(patches(&fixture), 1);
    assert_eq!(vs_weights(&fixture), (90, 10));

    // Other actions are remembered too, the oldest forgotten past the limit.
    for i in 0..APPLIED_MEMORY {
        let mut other = action(ActionName::ReduceTraffic, false);
        other.key = format!("{}|{i}", reduce.key);
        // Someone raised the canary again; the annotations stay.
        let mut vs = fixture.object("VirtualService", NS, VS).unwrap();
        for entry in vs["spec"]["http"][0]["route"].as_array_mut().unwrap() {
            let canary = entry["destination"]["subset"] == "canary";
            entry["weight"] = if canary { 20 } else { 80 }.into();
        }
        fixture.put(vs);
        let outcome = kube.execute(&other).await.unwrap();
        assert!(
            outcome.detail.contains("canary 20 -> 10"),
            "{}",
            outcome.detail
        );
    }
    let vs = fixture.object("VirtualService", NS, VS).unwrap();
    let applied = vs["metadata"]["annotations"][APPLIED_ANNOTATION]
        .as_str()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect::<Vec<_>>();
    assert_eq!(applied.len(), APPLIED_MEMORY);
    assert!(!applied.contains(&reduce.key_digest()));
}

#[tokio::test]
async fn rollback_twice_writes_once() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    let kube = connector(&fixture, "VirtualService").await;

    let first = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap();
    // Another episode's rollback finds the weights already there.
    let mut another = action(ActionName::AutoRollback, false);
    another.key.push_str("|another");
    let second = kube.execute(&another).await.unwrap();

    assert!(first.detail.ends_with("(verified)"));
    assert_eq!(second.kind, OutcomeKind::Succeeded);
    assert_eq!(
        second.detail,
        "VirtualService ml-serving/model-summarizer: already canary 0, stable 100; nothing to do"
    );
    assert_eq!(patches(&fixture), 1);
    assert_eq!(fixture.events().len(), 1);
    assert_eq!(vs_weights(&fixture), (100, 0));
}

#[tokio::test]
async fn dry_run_reads_and_writes_nothing() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    let before = fixture.object("VirtualService", NS, VS).unwrap();
    let kube = connector(&fixture, "VirtualService").await;

    let outcome = kube
        .execute(&action(ActionName::AutoRollback, true))
        .await
        .unwrap();

    assert_eq!(outcome.kind, OutcomeKind::Succeeded);
    assert!(outcome.dry_run);
    assert_eq!(
        outcome.detail,
        "would set VirtualService ml-serving/model-summarizer: canary 10 -> 0, stable 90 -> 100"
    );
    assert_eq!(fixture.object("VirtualService", NS, VS).unwrap(), before);
    let methods: Vec<String> = fixture
        .requests()
        .iter()
        .map(|r| r.method.clone())
        .collect();
    assert_eq!(methods, vec!["GET"]);
    assert!(fixture.events().is_empty());
}

#[tokio::test]
async fn an_event_that_cannot_be_recorded_does_not_fail_the_rollback() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    fixture.fail_next("POST", "/events", 1, 403);
    let kube = connector(&fixture, "VirtualService").await;

    let outcome = kube
        .execute(&action(ActionName::AutoRollback, false))
        .await
        .unwrap();

    assert!(outcome.detail.ends_with("(verified)"));
    assert_eq!(vs_weights(&fixture), (100, 0));
    assert!(fixture.events().is_empty());
    assert_eq!(fixture.requests_matching("POST", "/events").len(), 1);
}

#[tokio::test]
async fn other_actions_are_refused() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    let kube = connector(&fixture, "VirtualService").await;
    let err = kube
        .execute(&action(ActionName::NotifyOnCall, false))
        .await
        .unwrap_err();
    assert_eq!(permanent(&err), "not a traffic action");
    assert!(fixture.requests().is_empty());
}

#[tokio::test]
async fn a_subject_without_the_templated_label_is_permanent() {
    let fixture = KubeFixture::start();
    let kube = connector(&fixture, "VirtualService").await;
    let mut a = action(ActionName::AutoRollback, false);
    a.subject = [("region".to_string(), "eu".to_string())].into();
    let err = kube.execute(&a).await.unwrap_err();
    assert!(permanent(&err).contains("kube.target.name"), "{err}");
    assert!(fixture.requests().is_empty());
}

#[tokio::test]
async fn template_checking_rejects_a_label_outside_group_by() {
    let fixture = KubeFixture::start();
    let cfg = config(&fixture, "VirtualService", "");
    let cfg = KubeConfig {
        target: canaryd_connectors::TargetConfig {
            name: "model-{{ model }}-{{ region }}".into(),
            ..cfg.target
        },
        ..cfg
    };
    let problems = cfg.check_templates(&["model".to_string()]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("`region`"), "{problems:?}");
    assert!(problems[0].contains("group_by [model]"), "{problems:?}");
    assert!(
        cfg.check_templates(&["model".to_string(), "region".to_string()])
            .is_empty()
    );
    // The connector offers the same check.
    let kube = KubeConnector::new(cfg).await.unwrap();
    assert_eq!(kube.check_templates(&["model".to_string()]), problems);
}

#[test]
fn the_fixture_refuses_a_stale_resource_version_and_a_missing_field_manager() {
    // The fixture's own rules, checked over plain HTTP without kube-rs, so
    // that the connector tests above rest on a fixture that can say no.
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 90, 10));
    let path = format!("/apis/networking.istio.io/v1/namespaces/{NS}/virtualservices/{VS}");
    let send = |query: &str, body: &str| -> u16 {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect(fixture.url().trim_start_matches("http://")).unwrap();
        write!(
            stream,
            "PATCH {path}{query} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/merge-patch+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response.split(' ').nth(1).unwrap().parse().unwrap()
    };
    let body = r#"{"metadata":{"resourceVersion":"999"},"spec":{"hosts":["x"]}}"#;
    assert_eq!(send("?fieldManager=canaryd", body), 409);
    assert_eq!(send("", r#"{"spec":{"hosts":["x"]}}"#), 400);
    assert_eq!(
        send("?fieldManager=canaryd", r#"{"spec":{"hosts":["x"]}}"#),
        200
    );
    let vs: Value = fixture.object("VirtualService", NS, VS).unwrap();
    assert_eq!(vs["spec"]["hosts"], serde_json::json!(["x"]));
    // The merge patch replaced the hosts list and kept http.
    assert_eq!(vs["spec"]["http"][0]["route"][0]["weight"], 90);
}

trait WithTimeout {
    fn clone_with_timeout(&self, timeout: &str) -> KubeConfig;
}

impl WithTimeout for KubeConfig {
    fn clone_with_timeout(&self, timeout: &str) -> KubeConfig {
        KubeConfig {
            timeout: Span::parse(timeout).unwrap(),
            ..self.clone()
        }
    }
}

/// A rollout stage's weight change, as the rollout controller asks for it.
fn shift(weight: u8, stage: usize) -> Action {
    let mut a = action(ActionName::ShiftTraffic, false);
    a.key = format!("rollout|model=summarizer|v2|stage {stage}");
    a.rule = "rollout".into();
    let at = 1_000 * stage as i64;
    a.traffic = Some(canaryd_connectors::TrafficChange {
        weight,
        state: Some(format!(
            r#"{{"at":{at},"stage":{stage},"weight":{weight}}}"#
        )),
        at,
        adopt: false,
        record: false,
    });
    a
}

#[tokio::test]
async fn a_stage_that_finds_a_hand_edit_leaves_it_and_says_so_and_a_resume_adopts_it() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 95, 5));
    let kube = connector(&fixture, "VirtualService").await;
    kube.execute(&shift(10, 2)).await.unwrap();
    let vs = fixture.object("VirtualService", NS, VS).unwrap();
    assert_eq!(
        vs["metadata"]["annotations"]["canaryd.io/canary-weight"],
        "10"
    );
    // A person: 40 to the canary, annotations kept (`kubectl edit`).
    let mut edited = vs.clone();
    edited["spec"]["http"][0]["route"][0]["weight"] = serde_json::json!(60);
    edited["spec"]["http"][0]["route"][1]["weight"] = serde_json::json!(40);
    fixture.put(edited.clone());
    let e = kube.execute(&shift(25, 3)).await.unwrap_err();
    let why = permanent(&e);
    assert!(why.starts_with("hand edit:"), "{why}");
    assert!(
        why.contains("canary weight 40") && why.contains("last set 10"),
        "{why}"
    );
    assert_eq!(vs_weights(&fixture), (60, 40), "the person's weights stand");
    // Resumed by a person: the stage's weight, over what is there.
    let mut resumed = shift(25, 4);
    if let Some(t) = resumed.traffic.as_mut() {
        t.adopt = true;
    }
    kube.execute(&resumed).await.unwrap();
    assert_eq!(vs_weights(&fixture), (75, 25));
    // A rule's rollback is never held back by an edit: safety first.
    edited["spec"]["http"][0]["route"][0]["weight"] = serde_json::json!(50);
    edited["spec"]["http"][0]["route"][1]["weight"] = serde_json::json!(50);
    fixture.put(edited);
    let mut rollback = action(ActionName::AutoRollback, false);
    rollback.key = "rollback after the edit".into();
    kube.execute(&rollback).await.unwrap();
    assert_eq!(vs_weights(&fixture), (100, 0));
}

#[tokio::test]
async fn a_stage_that_lands_after_a_later_one_is_superseded_not_applied() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 95, 5));
    let kube = connector(&fixture, "VirtualService").await;
    // Two workers: the promotion (stage 5) lands before stage 4.
    kube.execute(&shift(100, 5)).await.unwrap();
    let outcome = kube.execute(&shift(50, 4)).await.unwrap();
    assert!(outcome.detail.contains("superseded"), "{}", outcome.detail);
    assert_eq!(vs_weights(&fixture), (0, 100), "the later change stands");
    assert_eq!(patches(&fixture), 1);
}

#[tokio::test]
async fn a_rollout_stage_sets_the_canary_weight_and_records_the_rollout_state_in_the_same_patch() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 95, 5));
    let kube = connector(&fixture, "VirtualService").await;
    let outcome = kube.execute(&shift(25, 3)).await.unwrap();
    assert_eq!(vs_weights(&fixture), (75, 25), "{outcome:?}");
    assert!(
        outcome.detail.contains("canary 5 -> 25"),
        "{}",
        outcome.detail
    );
    let vs = fixture.object("VirtualService", NS, VS).unwrap();
    let annotations = &vs["metadata"]["annotations"];
    assert_eq!(
        annotations["canaryd.io/rollout"],
        r#"{"at":3000,"stage":3,"weight":25}"#
    );
    assert_eq!(patches(&fixture), 1, "weights and state in one write");
    // The same stage again (a restart deciding it twice): nothing written.
    kube.execute(&shift(25, 3)).await.unwrap();
    assert_eq!(patches(&fixture), 1);
    // 100%: the stable gets nothing.
    kube.execute(&shift(100, 5)).await.unwrap();
    assert_eq!(vs_weights(&fixture), (0, 100));
}

#[tokio::test]
async fn a_new_rollout_state_at_the_same_weight_is_recorded_and_the_weights_are_left() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 95, 5));
    let kube = connector(&fixture, "VirtualService").await;
    kube.execute(&shift(10, 2)).await.unwrap();
    // A new version starts at stage 1 while... here: a resume or a new
    // version whose stage weight is the one already set.
    let mut again = shift(10, 3);
    again.key = "rollout|model=summarizer|v7|stage 1".into();
    if let Some(t) = again.traffic.as_mut() {
        t.state = Some(r#"{"at":3000,"version":"v7"}"#.into());
    }
    let outcome = kube.execute(&again).await.unwrap();
    let vs = fixture.object("VirtualService", NS, VS).unwrap();
    assert_eq!(
        vs["metadata"]["annotations"]["canaryd.io/rollout"], r#"{"at":3000,"version":"v7"}"#,
        "{outcome:?}"
    );
    assert_eq!(vs_weights(&fixture), (90, 10));
    assert_eq!(patches(&fixture), 2, "the state alone, in one more write");
    // Recorded already: nothing more to write.
    let mut once_more = again.clone();
    once_more.key = "rollout|model=summarizer|v7|stage 1 again".into();
    kube.execute(&once_more).await.unwrap();
    assert_eq!(patches(&fixture), 2);
}

#[tokio::test]
async fn a_stage_on_an_http_route_keeps_the_pair_total() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::http_route(NS, VS, 190, 10));
    let kube = connector(&fixture, "HTTPRoute").await;
    kube.execute(&shift(50, 4)).await.unwrap();
    let route = fixture.object("HTTPRoute", NS, VS).unwrap();
    let refs = &route["spec"]["rules"][0]["backendRefs"];
    let weights: Vec<i64> = refs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["weight"].as_i64().unwrap())
        .collect();
    assert_eq!(weights.iter().sum::<i64>(), 200);
    assert!(weights.contains(&100), "{weights:?}");
}

#[tokio::test]
async fn a_rollout_stage_promotes_an_argo_rollout_to_its_step_as_kubectl_argo_rollouts_does() {
    let fixture = KubeFixture::start();
    // Paused at step 1, after `setWeight: 10`; Argo asked for the pause.
    let mut rollout = KubeFixture::rollout(NS, VS);
    rollout["status"]["pauseConditions"] =
        serde_json::json!([{"reason": "CanaryPauseStep", "startTime": "2026-03-01T00:00:00Z"}]);
    fixture.put(rollout);
    let kube = connector(&fixture, "Rollout").await;
    let status_patches = || {
        fixture
            .requests_matching("PATCH", "/rollouts/model-summarizer/status")
            .len()
    };
    // Stage 1 is where the Rollout stands: nothing to do.
    let outcome = kube.execute(&shift(10, 1)).await.unwrap();
    assert!(
        outcome.detail.contains("already at 10%"),
        "{}",
        outcome.detail
    );
    assert_eq!(patches(&fixture), 0);

    // Stage 2 passed: on to the `setWeight: 50` step, pause cleared.
    let outcome = kube.execute(&shift(50, 2)).await.unwrap();
    assert!(
        outcome
            .detail
            .contains("promoted from 10% to the 50% step (status.currentStepIndex 1 -> 2)"),
        "{}",
        outcome.detail
    );
    let after = fixture.object("Rollout", NS, VS).unwrap();
    assert_eq!(after["status"]["currentStepIndex"], 2);
    assert!(after["status"].get("pauseConditions").is_none(), "{after}");
    assert_eq!(after["spec"]["replicas"], 4, "the spec untouched");
    assert_eq!(status_patches(), 1);
    assert_eq!(fixture.events()[0]["reason"], "CanaryTrafficShifted");
    // Again (decided again after a restart): already there.
    kube.execute(&shift(50, 2)).await.unwrap();
    assert_eq!(status_patches(), 1);

    // A stage that is none of its steps: refused, with the steps named.
    let e = kube.execute(&shift(25, 3)).await.unwrap_err();
    assert!(
        permanent(&e).contains(
            "the stage's weight 25% is not one of the Rollout's setWeight steps (10, 50)"
        ),
        "{e}"
    );

    // Promotion to 100%, with the Rollout paused by a person too: its
    // steps end, and spec.paused is unset after the status.
    let mut paused = fixture.object("Rollout", NS, VS).unwrap();
    paused["spec"]["paused"] = serde_json::json!(true);
    fixture.put(paused);
    kube.execute(&shift(100, 4)).await.unwrap();
    let after = fixture.object("Rollout", NS, VS).unwrap();
    assert_eq!(after["status"]["currentStepIndex"], 4);
    assert_eq!(after["spec"]["paused"], false);
    let writes: Vec<String> = fixture
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.path.clone())
        .collect();
    assert!(
        writes.len() == 3 && writes[1].ends_with("/status") && !writes[2].ends_with("/status"),
        "{writes:?}"
    );

    // A rollback aborts it, as before.
    kube.execute(&shift(0, 5)).await.unwrap();
    assert_eq!(
        fixture.object("Rollout", NS, VS).unwrap()["status"]["abort"],
        true
    );
}

#[tokio::test]
async fn shift_traffic_without_a_weight_is_refused() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 95, 5));
    let kube = connector(&fixture, "VirtualService").await;
    let e = kube
        .execute(&action(ActionName::ShiftTraffic, false))
        .await
        .unwrap_err();
    assert!(permanent(&e).contains("without a weight"), "{e}");
    assert_eq!(vs_weights(&fixture), (95, 5));
}

#[tokio::test]
async fn a_stage_whose_write_conflicts_is_read_again_and_written_once() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 95, 5));
    let kube = connector(&fixture, "VirtualService").await;
    kube.execute(&shift(10, 2)).await.unwrap();
    // Someone else's write lands between canaryd's read and its write.
    fixture.put_after_next("GET", VS_PATH, {
        let mut vs = fixture.object("VirtualService", NS, VS).unwrap();
        vs["metadata"]["labels"] = serde_json::json!({"team": "ml"});
        vs
    });
    let outcome = kube.execute(&shift(25, 3)).await.unwrap();
    assert!(outcome.detail.ends_with("(verified)"), "{}", outcome.detail);
    assert_eq!(vs_weights(&fixture), (75, 25));
    let writes: Vec<u16> = fixture
        .requests_matching("PATCH", VS_PATH)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        writes,
        [200, 409, 200],
        "the stale write refused, then one write"
    );
    let vs = fixture.object("VirtualService", NS, VS).unwrap();
    assert_eq!(
        vs["metadata"]["labels"]["team"], "ml",
        "the other write kept"
    );
    assert_eq!(
        vs["metadata"]["annotations"]["canaryd.io/canary-weight"],
        "25"
    );
}

/// A record of a rollout's progress at `weight`: same weight, new state.
fn record(weight: u8, stage: usize, held: i64) -> Action {
    let mut a = shift(weight, stage);
    a.key = format!("rollout|model=summarizer|v2|stage {stage}|progress {held}");
    let at = 1_000 * stage as i64 + held;
    a.traffic = Some(canaryd_connectors::TrafficChange {
        weight,
        state: Some(format!(r#"{{"at":{at},"stage":{stage},"held":{held}}}"#)),
        at,
        adopt: false,
        record: true,
    });
    a
}

#[tokio::test]
async fn a_new_owner_reads_back_the_recorded_state_and_the_weights_as_they_are() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 95, 5));
    let kube = connector(&fixture, "VirtualService").await;
    let subject: BTreeMap<String, String> =
        [("model".to_string(), "summarizer".to_string())].into();
    let state = kube.read_traffic(&subject).unwrap().await.unwrap();
    assert_eq!(
        (state.rollout, state.canary_weight, state.written_weight),
        (None, Some(5), None),
        "nothing of canaryd's there yet"
    );
    assert_eq!(state.target, "VirtualService ml-serving/model-summarizer");
    kube.execute(&shift(25, 3)).await.unwrap();
    let state = kube.read_traffic(&subject).unwrap().await.unwrap();
    assert_eq!(
        state.rollout.as_deref(),
        Some(r#"{"at":3000,"stage":3,"weight":25}"#)
    );
    assert_eq!(
        (state.canary_weight, state.written_weight),
        (Some(25), Some(25))
    );
    // Unreachable or missing: an error the caller can tell apart.
    let other: BTreeMap<String, String> = [("model".to_string(), "gone".to_string())].into();
    let e = kube.read_traffic(&other).unwrap().await.unwrap_err();
    assert!(permanent(&e).contains("not found"), "{e}");
    // An Argo Rollout keeps its own state: nothing to read.
    let argo = connector(&fixture, "Rollout").await;
    assert!(argo.read_traffic(&subject).is_none());
}

#[tokio::test]
async fn a_progress_record_writes_only_the_state_once_and_forgets_no_applied_key() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 95, 5));
    let kube = connector(&fixture, "VirtualService").await;
    kube.execute(&shift(25, 3)).await.unwrap();
    let before = fixture.object("VirtualService", NS, VS).unwrap();
    let outcome = kube.execute(&record(25, 3, 600)).await.unwrap();
    assert!(
        outcome.detail.contains("state recorded"),
        "{}",
        outcome.detail
    );
    let after = fixture.object("VirtualService", NS, VS).unwrap();
    assert_eq!(vs_weights(&fixture), (75, 25), "weights untouched");
    assert_eq!(
        after["metadata"]["annotations"]["canaryd.io/rollout"],
        r#"{"at":3600,"stage":3,"held":600}"#
    );
    assert_eq!(
        after["metadata"]["annotations"]["canaryd.io/applied-actions"],
        before["metadata"]["annotations"]["canaryd.io/applied-actions"],
        "a record is not a traffic change to remember"
    );
    assert_eq!(patches(&fixture), 2);
    // The same record again: nothing to write.
    kube.execute(&record(25, 3, 600)).await.unwrap();
    assert_eq!(patches(&fixture), 2);
    // No Kubernetes Event for a record: nothing moved.
    let events = fixture.requests_matching("POST", "/events").len();
    assert_eq!(events, 1, "only the stage's");
    // A hand edit is noticed by a record too, and left alone.
    let mut edited = after.clone();
    edited["spec"]["http"][0]["route"][0]["weight"] = serde_json::json!(70);
    edited["spec"]["http"][0]["route"][1]["weight"] = serde_json::json!(30);
    fixture.put(edited);
    let e = kube.execute(&record(25, 3, 1200)).await.unwrap_err();
    assert!(permanent(&e).starts_with("hand edit:"), "{e}");
    assert_eq!(vs_weights(&fixture), (70, 30));
}

/// The state of a rollout that is paused, at `at`, for stage `stage`.
fn paused_record(weight: u8, stage: usize, at: i64) -> Action {
    let mut a = record(weight, stage, 0);
    a.key = format!("rollout|model=summarizer|v2|stage {stage}|paused {at}");
    a.traffic = Some(canaryd_connectors::TrafficChange {
        weight,
        state: Some(format!(r#"{{"at":{at},"stage":{stage},"phase":"paused"}}"#)),
        at,
        adopt: true,
        record: true,
    });
    a
}

#[tokio::test]
async fn a_record_never_moves_weights_nor_runs_ahead_of_its_weight_change_nor_supersedes_it() {
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(NS, VS, 100, 0));
    let kube = connector(&fixture, "VirtualService").await;
    kube.execute(&shift(5, 1)).await.unwrap();
    // Stage 2's weight (25%) is still on its way: the progress of stage 2
    // is not recorded over weights of stage 1.
    let outcome = kube.execute(&record(25, 2, 500)).await.unwrap();
    assert!(outcome.detail.contains("not yet 25%"), "{}", outcome.detail);
    assert_eq!(vs_weights(&fixture), (95, 5), "no weight moved");
    let vs = fixture.object("VirtualService", NS, VS).unwrap();
    assert_eq!(
        vs["metadata"]["annotations"]["canaryd.io/rollout"],
        r#"{"at":1000,"stage":1,"weight":5}"#
    );
    // A pause, decided after stage 2 and landing before its weight: its
    // state is written (a paused rollout takes the weights as they are),
    // and nothing else.
    kube.execute(&paused_record(25, 2, 2_500)).await.unwrap();
    assert_eq!(vs_weights(&fixture), (95, 5), "no weight moved");
    let vs = fixture.object("VirtualService", NS, VS).unwrap();
    assert_eq!(
        vs["metadata"]["annotations"]["canaryd.io/rollout"],
        r#"{"at":2500,"stage":2,"phase":"paused"}"#
    );
    assert_eq!(
        vs["metadata"]["annotations"]["canaryd.io/canary-weight"],
        "5"
    );
    // Stage 2's weight lands after it: it is not superseded by the record
    // (the weights move), and it does not write its older state over the
    // pause.
    kube.execute(&shift(25, 2)).await.unwrap();
    assert_eq!(vs_weights(&fixture), (75, 25));
    let vs = fixture.object("VirtualService", NS, VS).unwrap();
    assert_eq!(
        vs["metadata"]["annotations"]["canaryd.io/rollout"],
        r#"{"at":2500,"stage":2,"phase":"paused"}"#
    );
    assert_eq!(
        vs["metadata"]["annotations"]["canaryd.io/traffic-at"],
        "2000"
    );
    // An older record landing late writes nothing.
    let outcome = kube.execute(&record(25, 2, 100)).await.unwrap();
    assert!(outcome.detail.contains("superseded"), "{}", outcome.detail);
    // A paused record is written over a hand edit, and leaves it alone.
    let mut edited = fixture.object("VirtualService", NS, VS).unwrap();
    edited["spec"]["http"][0]["route"][0]["weight"] = serde_json::json!(60);
    edited["spec"]["http"][0]["route"][1]["weight"] = serde_json::json!(40);
    fixture.put(edited);
    kube.execute(&paused_record(25, 2, 3_000)).await.unwrap();
    assert_eq!(vs_weights(&fixture), (60, 40));
    let vs = fixture.object("VirtualService", NS, VS).unwrap();
    assert_eq!(
        vs["metadata"]["annotations"]["canaryd.io/rollout"],
        r#"{"at":3000,"stage":2,"phase":"paused"}"#
    );
    // Only the weight changes made Kubernetes Events.
    assert_eq!(fixture.requests_matching("POST", "/events").len(), 2);
}
