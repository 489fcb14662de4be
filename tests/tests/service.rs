//! The always-on service: `canaryd run` with `http:`, talked to over HTTP
//! as Alertmanager, Prometheus and an operator would.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use canaryd_tests::kafka::{Record, producer, read_until, send_all};
use canaryd_tests::tansu::{Tansu, free_port};
use canaryd_tests::{Daemon, repo};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "s3cret-token";

/// (status, body) of an HTTP request made with curl.
fn http(method: &str, url: &str, headers: &[&str], body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.args(["--data-binary", b]);
    }
    let out = cmd.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn config(dir: &Path, bootstrap: &str, port: u16) -> std::path::PathBuf {
    let token = dir.join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let path = dir.join("canaryd.yaml");
    std::fs::write(
        &path,
        format!(
            "rules: [{rules}]
dry_run: true
http:
  listen: 127.0.0.1:{port}
  auth: {{bearer: {{file: {token}}}}}
kafka:
  brokers: {bootstrap}
  group_id: canaryd-http
  topics: [events]
  dead_letter_topic: events-dlq
  audit_topic: canaryd-audit
",
            rules = repo("deploy/examples/canary-alerts.yaml").display(),
            token = token.display(),
        ),
    )
    .unwrap();
    path
}

/// An Alertmanager v4 webhook payload, as Alertmanager 0.25 sends it.
fn payload(status: &str, alerts: &[(&str, &str, &str)]) -> String {
    let alerts: Vec<Value> = alerts
        .iter()
        .map(|(name, fingerprint, action)| {
            let mut labels = json!({"alertname": name, "model": "summarizer", "severity": "critical"});
            if !action.is_empty() {
                labels["canary_action"] = json!(action);
            }
            json!({
                "status": status,
                "labels": labels,
                "annotations": {"summary": "from Prometheus"},
                "startsAt": "2026-03-01T12:00:00Z",
                "endsAt": if status == "resolved" { "2026-03-01T12:10:00Z" } else { "0001-01-01T00:00:00Z" },
                "generatorURL": "http://prometheus/graph",
                "fingerprint": fingerprint,
            })
        })
        .collect();
    json!({
        "version": "4",
        "groupKey": "{}:{alertname=\"x\"}",
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "canaryd",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    })
    .to_string()
}

fn of_kind(records: &[Record], kind: &str) -> Vec<Value> {
    records
        .iter()
        .map(Record::json)
        .filter(|j| j["kind"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn alertmanager_alerts_act_once_and_the_api_health_and_metrics_tell_the_truth() {
    let broker = Tansu::start();
    broker
        .create_topics(&[("events", 1), ("events-dlq", 1), ("canaryd-audit", 1)])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), &broker.bootstrap(), port);
    let check = canaryd_tests::canaryd(&["check", cfg.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let base = format!("http://127.0.0.1:{port}");
    let daemon = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        dir.path().join("canaryd.log"),
    );
    assert!(
        wait_until(WAIT, || http(
            "GET",
            &format!("{base}/-/healthy"),
            &[],
            None
        )
        .0 == 200),
        "{}",
        daemon.log_text()
    );
    assert!(
        wait_until(WAIT, || http("GET", &format!("{base}/-/ready"), &[], None)
            .0
            == 200),
        "{}",
        daemon.log_text()
    );

    let hook = format!("{base}/api/v1/alertmanager");
    let auth = format!("Authorization: Bearer {TOKEN}");
    let json = "Content-Type: application/json";
    let body = payload("firing", &[("CanaryOOM", "f1", "auto_rollback")]);
    assert_eq!(
        http("POST", &hook, &[json], Some(&body)).0,
        401,
        "no credentials"
    );
    assert_eq!(
        http(
            "POST",
            &hook,
            &[json, "Authorization: Bearer wrong"],
            Some(&body)
        )
        .0,
        401
    );
    assert_eq!(
        http(
            "POST",
            &hook,
            &[&auth, "Content-Type: text/plain"],
            Some(&body)
        )
        .0,
        415
    );
    let (code, reason) = http("POST", &hook, &[&auth, json], Some("{\"version\": 4"));
    assert_eq!(code, 400, "{reason}");
    // An HA pair sends the same alert twice: one action.
    assert_eq!(http("POST", &hook, &[&auth, json], Some(&body)).0, 200);
    assert_eq!(http("POST", &hook, &[&auth, json], Some(&body)).0, 200);

    let audit = read_until(&broker.bootstrap(), "canaryd-audit", WAIT, |r| {
        of_kind(r, "outcome")
            .iter()
            .any(|o| o["outcome"] == "succeeded" && o["rule"] == "CanaryOOM")
    });
    let done: Vec<Value> = of_kind(&audit, "outcome")
        .into_iter()
        .filter(|o| o["outcome"] == "succeeded" && o["rule"] == "CanaryOOM")
        .collect();
    assert_eq!(done.len(), 1, "{}", daemon.log_text());
    assert_eq!(done[0]["action"], "auto_rollback");
    assert_eq!(done[0]["subject"]["model"], "summarizer");

    // Live data: the incident through Kafka shows in the JSON API.
    let lines: Vec<(String, Vec<u8>)> =
        std::fs::read_to_string(repo("deploy/examples/incident.jsonl"))
            .unwrap()
            .lines()
            .map(|l| ("m".to_string(), l.as_bytes().to_vec()))
            .collect();
    send_all(&producer(&broker.bootstrap()), "events", 0, &lines).await;
    let firing = || {
        let (_, body) = http("GET", &format!("{base}/api/v1/alerts"), &[], None);
        serde_json::from_str::<Value>(&body).ok().is_some_and(|v| {
            v["alerts"].as_array().is_some_and(|a| {
                a.iter()
                    .any(|x| x["rule"] == "Canary Error Rate High" && x["state"] == "firing")
            })
        })
    };
    assert!(wait_until(WAIT, firing), "{}", daemon.log_text());
    let (code, actions) = http("GET", &format!("{base}/api/v1/actions"), &[], None);
    assert_eq!(code, 200);
    assert!(actions.contains("auto_rollback"), "{actions}");
    let (code, rules) = http("GET", &format!("{base}/api/v1/rules"), &[], None);
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&rules)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        4
    );

    let (code, metrics) = http("GET", &format!("{base}/metrics"), &[], None);
    assert_eq!(code, 200);
    for needle in [
        "canaryd_alertmanager_payloads_total{result=\"accepted\"} 1",
        "canaryd_alertmanager_payloads_total{result=\"duplicate\"} 1",
        "canaryd_alertmanager_payloads_total{result=\"unauthorized\"} 2",
        "canaryd_events_consumed_total{topic=\"events\"} 714",
        "canaryd_alerts{rule=\"Canary Error Rate High\",state=\"firing\"} 1",
        "canaryd_build_info",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    // Hot reload is not there yet, and says so instead of pretending.
    let (code, body) = http("POST", &format!("{base}/-/reload"), &[&auth], None);
    assert_eq!(code, 500, "{body}");
}
