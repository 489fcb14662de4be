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
        "canaryd_alerts{rule=\"Canary Error Rate High\",model=\"summarizer\",state=\"firing\"} 1",
        "canaryd_build_info",
        // The configuration it started with counts as loaded.
        "canaryd_config_last_reload_successful 1",
        // Durable-state families exist from the start (no changelog here).
        "canaryd_partition_state_loads_total{result=\"restored\"} 0",
        "canaryd_outbox_actions 0",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }

    assert!(
        metrics.contains("canaryd_connector_duration_seconds_count{connector=\"dry_run\"}"),
        "{metrics}"
    );
    // librdkafka's statistics (every 5 s) feed the consumer lag.
    let lag = || {
        http("GET", &format!("{base}/metrics"), &[], None)
            .1
            .contains("canaryd_consumer_lag{topic=\"events\",partition=\"0\"} 0")
    };
    assert!(
        wait_until(WAIT, lag),
        "{}",
        http("GET", &format!("{base}/metrics"), &[], None).1
    );

    // The log level changes at runtime: a late event is logged at debug.
    let late = |n: u32| format!("canaryd_events_late_total {n}");
    let old_event = r#"{"type":"metric","ts":"2026-03-01T11:00:00Z","name":"canary_error_rate","value":0.5,"labels":{"model":"x"}}"#;
    let p = producer(&broker.bootstrap());
    send_all(
        &p,
        "events",
        0,
        &[("x".to_string(), old_event.as_bytes().to_vec())],
    )
    .await;
    assert!(wait_until(WAIT, || http(
        "GET",
        &format!("{base}/metrics"),
        &[],
        None
    )
    .1
    .contains(&late(1))));
    assert!(!daemon.log_text().contains("late event dropped"));
    let level = format!("{base}/-/log-level");
    assert_eq!(http("PUT", &level, &[], Some("debug")).0, 401);
    assert_eq!(http("PUT", &level, &[&auth], Some("canaryd=[bad")).0, 400);
    assert_eq!(http("PUT", &level, &[&auth], Some("canaryd=debug")).0, 204);
    send_all(
        &p,
        "events",
        0,
        &[("x".to_string(), old_event.as_bytes().to_vec())],
    )
    .await;
    assert!(wait_until(WAIT, || http(
        "GET",
        &format!("{base}/metrics"),
        &[],
        None
    )
    .1
    .contains(&late(2))));
    assert!(
        wait_until(WAIT, || daemon.log_text().contains("late event dropped")),
        "{}",
        daemon.log_text()
    );
    assert_eq!(http("PUT", &level, &[&auth], Some("canaryd=info")).0, 204);

    // Reload: a broken rule file is refused and the running rules stay.
    let rules_file = dir.path().join("rules.yaml");
    let playbook = std::fs::read_to_string(repo("deploy/examples/canary-alerts.yaml")).unwrap();
    std::fs::write(
        &rules_file,
        playbook.replace("canary_error_rate > 0.05", "canary_eror_rate > 0.05"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        &repo("deploy/examples/canary-alerts.yaml")
            .display()
            .to_string(),
        &rules_file.display().to_string(),
    );
    std::fs::write(&cfg, &text).unwrap();
    assert_eq!(
        http("POST", &format!("{base}/-/reload"), &[], None).0,
        401,
        "reload needs credentials"
    );
    let (code, body) = http("POST", &format!("{base}/-/reload"), &[&auth], None);
    assert_eq!(code, 500, "{body}");
    assert!(body.contains("did you mean `canary_error_rate`"), "{body}");
    let (_, metrics) = http("GET", &format!("{base}/metrics"), &[], None);
    assert!(
        metrics.contains("canaryd_config_last_reload_successful 0"),
        "{metrics}"
    );
    let firing_now = || {
        let (_, body) = http("GET", &format!("{base}/api/v1/alerts"), &[], None);
        let v: Value = serde_json::from_str(&body).unwrap();
        v["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["rule"] == "Canary Error Rate High" && x["state"] == "firing")
    };
    assert!(firing_now(), "the old rules keep running");

    // A good change: the error rule kept (still firing, no second rollback),
    // the latency threshold changed, a rule added.
    let changed = playbook.replace("canary_p95_latency > 5000", "canary_p95_latency > 4000")
        + "\n  - name: \"Canary Silent\"\n    condition: \"canary_request_rate == 0\"\n    duration: \"2m\"\n    severity: \"high\"\n";
    std::fs::write(&rules_file, changed).unwrap();
    let (code, body) = http("POST", &format!("{base}/-/reload"), &[&auth], None);
    assert_eq!(code, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    // The file watch may have applied the change a moment earlier; then
    // this reload finds everything kept.
    let listed = |field: &str, rule: &str| report[field].as_array().unwrap().contains(&json!(rule));
    assert!(
        listed("added", "Canary Silent") || listed("kept", "Canary Silent"),
        "{report}"
    );
    assert!(
        listed("changed", "Canary Latency High") || listed("kept", "Canary Latency High"),
        "{report}"
    );
    assert!(listed("kept", "Canary Error Rate High"), "{report}");
    assert!(firing_now(), "state carried over the reload");
    let (_, rules) = http("GET", &format!("{base}/api/v1/rules"), &[], None);
    assert_eq!(
        serde_json::from_str::<Value>(&rules)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        5
    );
    let (_, metrics) = http("GET", &format!("{base}/metrics"), &[], None);
    assert!(
        metrics.contains("canaryd_config_last_reload_successful 1"),
        "{metrics}"
    );

    // SIGHUP reloads too.
    daemon.signal("HUP");
    assert!(
        daemon.wait_for_log("SIGHUP received", WAIT),
        "{}",
        daemon.log_text()
    );
    // The reload that SIGHUP started is the first one logged after it (one
    // loop runs them in turn); the edit below must come after it, or the
    // SIGHUP reload would take the edit and leave the watch nothing to do.
    let sighup_reloaded = || {
        let log = daemon.log_text();
        log.split_once("SIGHUP received")
            .is_some_and(|(_, after)| after.contains("configuration reloaded"))
    };
    assert!(wait_until(WAIT, sighup_reloaded), "{}", daemon.log_text());

    // Editing a rule file is enough: the directory is watched.
    let grown = std::fs::read_to_string(&rules_file).unwrap()
        + "\n  - name: \"Canary Quiet\"\n    condition: \"canary_request_rate < 1\"\n    duration: \"5m\"\n    severity: \"low\"\n";
    std::fs::write(&rules_file, grown).unwrap();
    let six = || {
        let (_, rules) = http("GET", &format!("{base}/api/v1/rules"), &[], None);
        serde_json::from_str::<Value>(&rules)
            .is_ok_and(|r| r.as_array().is_some_and(|a| a.len() == 6))
    };
    assert!(wait_until(WAIT, six), "{}", daemon.log_text());
    assert!(
        daemon.log_text().contains("configuration files changed"),
        "{}",
        daemon.log_text()
    );

    // No rollback was decided twice through all this.
    std::thread::sleep(Duration::from_secs(1));
    let audit = read_until(
        &broker.bootstrap(),
        "canaryd-audit",
        Duration::from_secs(5),
        |_| false,
    );
    let rollbacks = of_kind(&audit, "outcome")
        .into_iter()
        .filter(|o| o["rule"] == "Canary Error Rate High" && o["outcome"] == "succeeded")
        .count();
    assert_eq!(rollbacks, 1);
}

/// A real Alertmanager (Debian's prometheus-alertmanager 0.25) on 127.0.0.1.
struct Alertmanager {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Alertmanager {
    fn start(canaryd_port: u16, token_file: &Path) -> Alertmanager {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:
  receiver: canaryd
  group_by: [alertname, model]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 2s
receivers:
  - name: canaryd
    webhook_configs:
      - url: http://127.0.0.1:{canaryd_port}/api/v1/alertmanager
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials_file: {}
",
                token_file.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("alertmanager.log")).unwrap();
        let child = Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus-alertmanager is installed by tests/run");
        let am = Alertmanager {
            child,
            port,
            _dir: dir,
        };
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        assert!(
            wait_until(WAIT, || http("GET", &ready, &[], None).0 == 200),
            "alertmanager did not start"
        );
        am
    }

    fn post(&self, alerts: &Value) {
        let url = format!("http://127.0.0.1:{}/api/v2/alerts", self.port);
        let (code, body) = http(
            "POST",
            &url,
            &["Content-Type: application/json"],
            Some(&alerts.to_string()),
        );
        assert_eq!(code, 200, "{body}");
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_alertmanager_drives_actions_repeats_are_ignored_and_resolution_reaches_the_engine()
{
    let broker = Tansu::start();
    broker
        .create_topics(&[("events", 1), ("events-dlq", 1), ("canaryd-audit", 1)])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), &broker.bootstrap(), port);
    // Add the playbook's "critical errors detected" trigger.
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        &format!(
            "rules: [{}]",
            repo("deploy/examples/canary-alerts.yaml").display()
        ),
        &format!(
            "rules: [{}, {}]",
            repo("deploy/examples/canary-alerts.yaml").display(),
            repo("deploy/examples/playbook-triggers.yaml").display()
        ),
    );
    std::fs::write(&cfg, text).unwrap();
    let daemon = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        dir.path().join("canaryd.log"),
    );
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_until(WAIT, || http("GET", &format!("{base}/-/ready"), &[], None)
            .0
            == 200),
        "{}",
        daemon.log_text()
    );
    let am = Alertmanager::start(port, &dir.path().join("token"));

    let now = chrono::Utc::now();
    let alert = |name: &str, extra: Value, ends: Option<chrono::DateTime<chrono::Utc>>| {
        let mut labels = json!({"alertname": name, "model": "summarizer", "severity": "critical"});
        if let (Some(l), Some(e)) = (labels.as_object_mut(), extra.as_object()) {
            l.extend(e.clone());
        }
        let mut a = json!({"labels": labels, "annotations": {"summary": "x"}, "startsAt": now.to_rfc3339()});
        if let Some(end) = ends {
            a["endsAt"] = json!(end.to_rfc3339());
        }
        a
    };
    am.post(&json!([
        alert(
            "ModelRollbackRequested",
            json!({"canary_action": "auto_rollback"}),
            None
        ),
        alert("ModelCrashLooping", json!({}), None),
    ]));
    let acted = |r: &[Record]| {
        of_kind(r, "outcome")
            .iter()
            .any(|o| o["rule"] == "ModelRollbackRequested" && o["outcome"] == "succeeded")
            && of_kind(r, "transition")
                .iter()
                .any(|t| t["rule"] == "Canary Critical Errors" && t["to"] == "firing")
    };
    let audit = read_until(&broker.bootstrap(), "canaryd-audit", WAIT, acted);
    assert!(acted(&audit), "{}", daemon.log_text());
    // Alertmanager repeats every 2 s; canaryd must not act again.
    std::thread::sleep(Duration::from_secs(5));
    let (_, metrics) = http("GET", &format!("{base}/metrics"), &[], None);
    // The repeats arrived and were recognised as duplicates.
    let duplicates: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("canaryd_alertmanager_payloads_total{result=\"duplicate\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no duplicate counter in {metrics}"));
    assert!(duplicates >= 1, "{metrics}");

    // Resolve both in Alertmanager: canaryd's rule resolves too.
    am.post(&json!([
        alert(
            "ModelRollbackRequested",
            json!({"canary_action": "auto_rollback"}),
            Some(chrono::Utc::now())
        ),
        alert("ModelCrashLooping", json!({}), Some(chrono::Utc::now())),
    ]));
    let resolved = |r: &[Record]| {
        of_kind(r, "transition")
            .iter()
            .any(|t| t["rule"] == "Canary Critical Errors" && t["to"] == "resolved")
    };
    let audit = read_until(&broker.bootstrap(), "canaryd-audit", WAIT, resolved);
    assert!(resolved(&audit), "{}", daemon.log_text());
    let direct: Vec<Value> = of_kind(&audit, "outcome")
        .into_iter()
        .filter(|o| o["rule"] == "ModelRollbackRequested" && o["outcome"] == "succeeded")
        .collect();
    assert_eq!(
        direct.len(),
        1,
        "repeats and HA duplicates act once: {direct:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_live_canary_against_stable_alerts_actions_and_rules_in_a_browser() {
    let broker = Tansu::start();
    broker
        .create_topics(&[("events", 1), ("events-dlq", 1), ("canaryd-audit", 1)])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), &broker.bootstrap(), port);
    let daemon = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        dir.path().join("canaryd.log"),
    );
    let base = format!("http://127.0.0.1:{port}");
    assert!(
        wait_until(WAIT, || http("GET", &format!("{base}/-/ready"), &[], None)
            .0
            == 200),
        "{}",
        daemon.log_text()
    );

    // Ten minutes of raw traffic for "ranker": 5 requests/s per track; from
    // minute 1 one canary request in five fails.
    let mut lines = Vec::new();
    for i in 0..3000 {
        let ms = i * 200;
        let ts = chrono::DateTime::from_timestamp_millis(1_772_366_400_000 + ms)
            .unwrap()
            .to_rfc3339();
        for (track, error) in [("canary", ms >= 60_000 && i % 5 == 0), ("stable", false)] {
            let latency = if track == "canary" { 420.0 } else { 300.0 };
            let group = if i % 2 == 0 { "A" } else { "B" };
            let line = json!({"type": "inference", "ts": ts, "model": "ranker", "version": "v2", "track": track,
                "latency_ms": latency, "error": error, "cost_usd": 0.002,
                "group": group, "prediction": i % 3 == 0, "label": i % 4 == 0});
            lines.push(("ranker".to_string(), line.to_string().into_bytes()));
        }
    }
    send_all(&producer(&broker.bootstrap()), "events", 0, &lines).await;
    let firing = || {
        let (_, body) = http("GET", &format!("{base}/api/v1/alerts"), &[], None);
        body.contains("\"firing\"") && body.contains("ranker")
    };
    assert!(wait_until(WAIT, firing), "{}", daemon.log_text());
    let (_, subject) = http("GET", &format!("{base}/api/v1/subjects/ranker"), &[], None);
    let subject: Value = serde_json::from_str(&subject).unwrap();
    let canary_errors = subject["canary"]["error_rate"].as_f64().unwrap();
    assert!((0.1..0.25).contains(&canary_errors), "{subject}");
    assert_eq!(subject["stable"]["error_rate"], 0.0);

    let dom = canaryd_tests::render_in_browser(&format!("{base}/"));
    let section = |id: &str| {
        let start = dom
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("no #{id} in {dom}"));
        let rest = &dom[start..];
        rest[..rest.find("</section>").unwrap_or(rest.len())].to_string()
    };
    let subjects = section("subjects");
    assert!(subjects.contains("ranker"), "{subjects}");
    assert!(
        subjects.contains("p95") || subjects.contains("P95"),
        "{subjects}"
    );
    assert!(
        subjects.to_lowercase().contains("canary") && subjects.to_lowercase().contains("stable"),
        "{subjects}"
    );
    let alerts = section("alerts");
    assert!(
        alerts.contains("Canary Error Rate High") && alerts.contains("firing"),
        "{alerts}"
    );
    let actions = section("actions");
    assert!(actions.contains("auto_rollback"), "{actions}");
    let rules = section("rules");
    assert!(rules.contains("Canary Cost Overrun"), "{rules}");
}

/// `config` with its own consumer group, so tests sharing a broker do not
/// share partitions.
fn config_in_group(dir: &Path, bootstrap: &str, port: u16, group: &str) -> std::path::PathBuf {
    let path = config(dir, bootstrap, port);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("group_id: canaryd-http", &format!("group_id: {group}"));
    std::fs::write(&path, text).unwrap();
    path
}

fn ready(port: u16) -> u16 {
    http(
        "GET",
        &format!("http://127.0.0.1:{port}/-/ready"),
        &[],
        None,
    )
    .0
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_that_owns_no_partition_is_not_ready_until_it_takes_one_over() {
    let broker = Tansu::start();
    broker
        .create_topics(&[("events", 1), ("events-dlq", 1), ("canaryd-audit", 1)])
        .await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (port_a, port_b) = (free_port(), free_port());
    let cfg_a = config_in_group(dir_a.path(), &broker.bootstrap(), port_a, "readiness");
    let cfg_b = config_in_group(dir_b.path(), &broker.bootstrap(), port_b, "readiness");
    let a = Daemon::spawn(
        &[
            "run",
            "--config",
            cfg_a.to_str().unwrap(),
            "--instance",
            "a",
        ],
        dir_a.path().join("canaryd.log"),
    );
    assert!(
        wait_until(WAIT, || ready(port_a) == 200),
        "{}",
        a.log_text()
    );
    let b = Daemon::spawn(
        &[
            "run",
            "--config",
            cfg_b.to_str().unwrap(),
            "--instance",
            "b",
        ],
        dir_b.path().join("canaryd.log"),
    );
    // One partition, two members: once the group has settled, exactly one
    // of them owns it, and only that one is ready.
    let settled = || {
        b.log_text().contains("partitions assigned")
            && [ready(port_a), ready(port_b)]
                .iter()
                .filter(|c| **c == 200)
                .count()
                == 1
    };
    assert!(
        wait_until(WAIT, settled),
        "a: {} b: {}\n--- a ---\n{}\n--- b ---\n{}",
        ready(port_a),
        ready(port_b),
        a.log_text(),
        b.log_text()
    );
    let a_owns = ready(port_a) == 200;
    let (owner, idle, idle_port) = if a_owns {
        (&a, &b, port_b)
    } else {
        (&b, &a, port_a)
    };
    assert_eq!(ready(idle_port), 503);
    assert!(
        idle.log_text().contains("no partition assigned: not ready"),
        "{}",
        idle.log_text()
    );
    // The owner leaves: the idle member takes the partition and is ready.
    owner.signal("TERM");
    assert!(
        wait_until(WAIT, || ready(idle_port) == 200),
        "{}",
        idle.log_text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn only_config_and_rule_files_trigger_a_reload_and_an_unreadable_secret_is_refused() {
    let broker = Tansu::start();
    broker
        .create_topics(&[("events", 1), ("events-dlq", 1), ("canaryd-audit", 1)])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config_in_group(dir.path(), &broker.bootstrap(), port, "watch");
    let base = format!("http://127.0.0.1:{port}");
    // The daemon's own log lives beside its config, as it often does.
    let daemon = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        dir.path().join("canaryd.log"),
    );
    assert!(
        wait_until(WAIT, || ready(port) == 200),
        "{}",
        daemon.log_text()
    );

    // Another file beside the config changes for three seconds, longer
    // than the one-second settling time: no reload.
    let other = dir.path().join("sidecar.log");
    for i in 0..30 {
        std::fs::write(&other, format!("line {i}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !daemon.log_text().contains("configuration files changed"),
        "{}",
        daemon.log_text()
    );

    // The bearer token's file goes away: a reload is refused, naming it,
    // and the running configuration (and its credentials) stay.
    std::fs::remove_file(dir.path().join("token")).unwrap();
    let auth = format!("Authorization: Bearer {TOKEN}");
    let (code, body) = http("POST", &format!("{base}/-/reload"), &[&auth], None);
    assert_eq!(code, 500, "{body}");
    assert!(
        body.contains("http.auth.bearer") && body.contains("cannot read"),
        "{body}"
    );
    let (_, metrics) = http("GET", &format!("{base}/metrics"), &[], None);
    assert!(
        metrics.contains("canaryd_config_last_reload_successful 0"),
        "{metrics}"
    );

    // Rewriting the config file itself is noticed.
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text).unwrap();
    assert!(
        daemon.wait_for_log("configuration files changed", WAIT),
        "{}",
        daemon.log_text()
    );

    // At start-up the same missing secret stops canaryd with exit code 1
    // and says why, rather than running without its HTTP server.
    let port2 = free_port();
    let dir2 = tempfile::tempdir().unwrap();
    let cfg2 = config_in_group(dir2.path(), &broker.bootstrap(), port2, "watch-2");
    std::fs::remove_file(dir2.path().join("token")).unwrap();
    let mut second = Daemon::spawn(
        &["run", "--config", cfg2.to_str().unwrap()],
        dir2.path().join("canaryd.log"),
    );
    assert_eq!(second.wait_exit(WAIT), Some(1), "{}", second.log_text());
    let log = second.log_text();
    assert!(
        log.contains("http.auth.bearer") && log.contains("cannot read"),
        "{log}"
    );
}
