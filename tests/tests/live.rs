//! `canaryd run` against a real Kafka-protocol broker (Tansu).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::path::{Path, PathBuf};
use std::time::Duration;

use canaryd_tests::kafka::{Record, producer, read_until, send, send_all};
use canaryd_tests::tansu::Tansu;
use canaryd_tests::{Daemon, repo};
use serde_json::Value;

/// Upper bound for waiting on the broker or the daemon; never an assertion.
const WAIT: Duration = Duration::from_secs(60);

fn config(dir: &Path, bootstrap: &str, group: &str) -> PathBuf {
    let path = dir.join("canaryd.yaml");
    let rules = repo("deploy/examples/canary-alerts.yaml");
    std::fs::write(
        &path,
        format!(
            "rules: [{}]
dry_run: true
kafka:
  brokers: {bootstrap}
  group_id: {group}
  topics: [events]
  dead_letter_topic: events-dlq
  audit_topic: canaryd-audit
  session_timeout: 6s
",
            rules.display()
        ),
    )
    .unwrap();
    path
}

fn incident_lines() -> Vec<String> {
    std::fs::read_to_string(repo("deploy/examples/incident.jsonl"))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

fn model_of(line: &str) -> String {
    let v: Value = serde_json::from_str(line).unwrap();
    v["labels"]["model"].as_str().unwrap().to_string()
}

fn of_kind(records: &[Record], kind: &str) -> Vec<Value> {
    records
        .iter()
        .map(Record::json)
        .filter(|j| j["kind"] == kind)
        .collect()
}

fn has_outcome(records: &[Record], action: &str, model: &str, outcome: &str) -> bool {
    of_kind(records, "outcome")
        .iter()
        .any(|o| o["action"] == action && o["subject"]["model"] == model && o["outcome"] == outcome)
}

async fn start(partitions: i32) -> Tansu {
    let broker = Tansu::start();
    broker
        .create_topics(&[
            ("events", partitions),
            ("events-dlq", 1),
            ("canaryd-audit", 1),
        ])
        .await;
    broker
}

/// `canaryd run` on `cfg`, logging into `dir`, once it owns partitions.
fn running(cfg: &Path, dir: &Path) -> Daemon {
    let daemon = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        dir.join("canaryd.log"),
    );
    assert!(
        daemon.wait_for_log("partitions assigned", WAIT),
        "{}",
        daemon.log_text()
    );
    daemon
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_spike_on_kafka_rolls_the_canary_back_in_dry_run() {
    let broker = start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &broker.bootstrap(), "canaryd-e2e");
    let daemon = running(&cfg, dir.path());

    // Keyed by model: summarizer on partition 0, translator on 1.
    let p = producer(&broker.bootstrap());
    for line in incident_lines() {
        let model = model_of(&line);
        let partition = if model == "summarizer" { 0 } else { 1 };
        send(&p, "events", partition, &model, line.as_bytes()).await;
    }
    let audit = read_until(&broker.bootstrap(), "canaryd-audit", WAIT, |r| {
        has_outcome(r, "auto_rollback", "summarizer", "succeeded")
    });
    assert!(
        has_outcome(&audit, "auto_rollback", "summarizer", "succeeded"),
        "{}",
        daemon.log_text()
    );
    let firing: Vec<Value> = of_kind(&audit, "transition")
        .into_iter()
        .filter(|t| t["to"] == "firing" && t["rule"] == "Canary Error Rate High")
        .collect();
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0]["subject"]["model"], "summarizer");
    assert_eq!(firing[0]["ts"], "2026-03-01T12:11:00.000Z");
    let rollback = of_kind(&audit, "outcome")
        .into_iter()
        .find(|o| o["action"] == "auto_rollback" && o["outcome"] == "succeeded")
        .unwrap();
    assert_eq!(rollback["dry_run"], true);
    assert_eq!(rollback["deadline_s"], 30.0);
    assert!(
        of_kind(&audit, "transition")
            .iter()
            .all(|t| t["subject"]["model"] != "translator")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_are_dead_lettered_with_their_reason() {
    let broker = start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &broker.bootstrap(), "canaryd-dlq");
    let daemon = running(&cfg, dir.path());

    let p = producer(&broker.bootstrap());
    let bad: [(&[u8], &str); 5] = [
        (b"not json at all", "not_json"),
        (br#"{"type":"metric","ts":"2026-03-01T12:00:00Z","value":1}"#, "missing_field"),
        (br#"{"type":"metric","ts":"2026-03-01T12:00:00Z","name":"canary_error_rate","value":"x"}"#, "wrong_type"),
        (br#"{"type":"metric","ts":"at noon","name":"canary_error_rate","value":1}"#, "bad_time"),
        (br#"{"type":"inference","ts":"2026-03-01T12:00:00Z","model":"m","version":"v","track":"canary","latency_ms":-1,"error":false}"#, "bad_value"),
    ];
    for (payload, _) in &bad {
        send(&p, "events", 0, "m", payload).await;
    }
    let dlq = read_until(&broker.bootstrap(), "events-dlq", WAIT, |r| {
        r.len() >= bad.len()
    });
    assert_eq!(dlq.len(), bad.len(), "{}", daemon.log_text());
    for (record, (payload, reason)) in dlq.iter().zip(&bad) {
        assert_eq!(record.payload, *payload);
        assert_eq!(record.header("canaryd-reason"), Some(*reason));
        assert_eq!(record.header("canaryd-source-topic"), Some("events"));
        assert!(
            record
                .header("canaryd-error")
                .is_some_and(|e| !e.is_empty())
        );
    }
}

/// One event stamped in 2099 (a producer with a wrong clock) ahead of a
/// real incident: it is dead-lettered as `future_time`, and the incident
/// behind it is still seen and rolled back. Were it taken, every later
/// event would be "late" and dropped.
#[tokio::test(flavor = "multi_thread")]
async fn a_lone_future_stamped_event_is_dead_lettered_and_does_not_blind_the_engine() {
    let broker = start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &broker.bootstrap(), "canaryd-future");
    let daemon = running(&cfg, dir.path());
    let p = producer(&broker.bootstrap());
    let future = br#"{"type":"metric","ts":"2099-01-01T00:00:00Z","name":"canary_error_rate","value":0.001,"labels":{"model":"summarizer"}}"#;
    send(&p, "events", 0, "summarizer", future).await;
    let lines: Vec<(String, Vec<u8>)> = incident_lines()
        .into_iter()
        .filter(|l| model_of(l) == "summarizer")
        .map(|l| ("summarizer".to_string(), l.into_bytes()))
        .collect();
    send_all(&p, "events", 0, &lines).await;

    let audit = read_until(&broker.bootstrap(), "canaryd-audit", WAIT, |r| {
        has_outcome(r, "auto_rollback", "summarizer", "succeeded")
    });
    assert!(
        has_outcome(&audit, "auto_rollback", "summarizer", "succeeded"),
        "the incident was not seen: {}",
        daemon.log_text()
    );
    let dlq = read_until(&broker.bootstrap(), "events-dlq", WAIT, |r| !r.is_empty());
    assert_eq!(dlq.len(), 1, "{}", daemon.log_text());
    assert_eq!(dlq[0].payload, future.to_vec());
    assert_eq!(dlq[0].header("canaryd-reason"), Some("future_time"));
    assert!(
        dlq[0]
            .header("canaryd-error")
            .is_some_and(|e| e.contains("kafka.max_future_skew")),
        "{:?}",
        dlq[0].headers
    );
    assert!(!daemon.log_text().contains("late event dropped"));
}

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

/// Ten thousand kinds of garbage: random bytes, truncated events, wrong
/// types, bad times, negative latencies, unknown types, empty payloads.
fn malformed(rng: &mut Lcg, valid: &str) -> Vec<u8> {
    match rng.next() % 8 {
        0 => (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect(),
        1 => valid.as_bytes()[..(rng.next() as usize % valid.len().max(1))].to_vec(),
        2 => valid.replace("\"value\":", "\"value\":\"").into_bytes(),
        3 => valid.replace("2026-03-01T", "2026-03-01 noon ").into_bytes(),
        4 => br#"{"type":"inference","ts":"2026-03-01T12:00:00Z","model":"summarizer","version":"v","track":"canary","latency_ms":-3,"error":false}"#.to_vec(),
        5 => br#"{"type":"histogram","ts":"2026-03-01T12:00:00Z"}"#.to_vec(),
        6 => valid.replace("\"name\"", "\"nom\"").into_bytes(),
        _ => b"[]".to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_thousand_malformed_messages_change_no_decision_and_offsets_advance() {
    let broker = start(1).await;
    let dir = tempfile::tempdir().unwrap();
    let group = "canaryd-noise";
    let cfg = config(dir.path(), &broker.bootstrap(), group);
    let mut daemon = running(&cfg, dir.path());

    let valid = incident_lines();
    let mut rng = Lcg(42);
    let mut messages = Vec::new();
    let mut noise = 0;
    for (i, line) in valid.iter().enumerate() {
        // 10,000 malformed messages spread among the 714 valid ones.
        let burst = 10_000 / valid.len() + usize::from(i < 10_000 % valid.len());
        for _ in 0..burst {
            messages.push(("noise".to_string(), malformed(&mut rng, line)));
            noise += 1;
        }
        messages.push((model_of(line), line.clone().into_bytes()));
    }
    assert_eq!(noise, 10_000);
    send_all(&producer(&broker.bootstrap()), "events", 0, &messages).await;

    let dlq = read_until(&broker.bootstrap(), "events-dlq", WAIT, |r| {
        r.len() >= noise
    });
    assert_eq!(dlq.len(), noise, "{}", daemon.log_text());
    let reasons = [
        "not_json",
        "missing_field",
        "wrong_type",
        "bad_time",
        "bad_value",
    ];
    assert!(dlq.iter().all(|r| {
        r.header("canaryd-reason")
            .is_some_and(|h| reasons.contains(&h))
    }));

    // Decided exactly as the replay of the clean events decides.
    let expected: Vec<(String, String, String, String)> = {
        let out = canaryd_tests::canaryd(&[
            "replay",
            "--rules",
            "deploy/examples/canary-alerts.yaml",
            "--events",
            "deploy/examples/incident.jsonl",
            "--output",
            "json",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["kind"] == "transition")
            .map(|v| key(&v))
            .collect()
    };
    let last_ts = "2026-03-01T12:25:00.000Z";
    let audit = read_until(&broker.bootstrap(), "canaryd-audit", WAIT, |r| {
        of_kind(r, "transition").len() >= expected.len()
    });
    let got: Vec<(String, String, String, String)> = of_kind(&audit, "transition")
        .iter()
        .filter(|v| v["ts"].as_str().unwrap() <= last_ts)
        .map(key)
        .collect();
    assert_eq!(got, expected);

    // Graceful stop commits the offsets of everything processed.
    daemon.signal("TERM");
    assert_eq!(daemon.wait_exit(WAIT), Some(0), "{}", daemon.log_text());
    let committed = canaryd_tests::kafka::committed(&broker.bootstrap(), group, "events", 0);
    assert_eq!(
        committed,
        Some(messages.len() as i64),
        "{}",
        daemon.log_text()
    );
}

fn key(v: &Value) -> (String, String, String, String) {
    (
        v["ts"].as_str().unwrap().to_string(),
        v["rule"].as_str().unwrap().to_string(),
        v["subject"]["model"].as_str().unwrap().to_string(),
        format!(
            "{}->{}",
            v["from"].as_str().unwrap(),
            v["to"].as_str().unwrap()
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_split_the_partitions_and_a_survivor_takes_over() {
    let broker = start(4).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &broker.bootstrap(), "canaryd-group");
    let cfg = cfg.to_str().unwrap();
    let a = Daemon::spawn(
        &["run", "--config", cfg, "--instance", "replica-a"],
        dir.path().join("a.log"),
    );
    assert!(
        a.wait_for_log("partitions assigned", WAIT),
        "{}",
        a.log_text()
    );
    let b = Daemon::spawn(
        &["run", "--config", cfg, "--instance", "replica-b"],
        dir.path().join("b.log"),
    );
    assert!(
        b.wait_for_log("partitions assigned", WAIT),
        "{}",
        b.log_text()
    );
    assert!(
        a.wait_for_log("partitions revoked", WAIT),
        "a keeps everything: {}",
        a.log_text()
    );

    // One model per partition, each with an error spike held for 5 minutes.
    let p = producer(&broker.bootstrap());
    let spike = |model: &str, hour: u32| {
        [0, 5].map(|minute| {
            format!(
                r#"{{"type":"metric","ts":"2026-03-01T{hour:02}:{minute:02}:00Z","name":"canary_error_rate","value":0.2,"labels":{{"model":"{model}"}}}}"#
            )
        })
    };
    for partition in 0..4 {
        let model = format!("first-{partition}");
        for line in spike(&model, 13) {
            send(&p, "events", partition, &model, line.as_bytes()).await;
        }
    }
    let firing = |r: &[Record], prefix: &str| -> Vec<Value> {
        of_kind(r, "transition")
            .into_iter()
            .filter(|t| {
                t["to"] == "firing" && t["subject"]["model"].as_str().unwrap().starts_with(prefix)
            })
            .collect()
    };
    let audit = read_until(&broker.bootstrap(), "canaryd-audit", WAIT, |r| {
        firing(r, "first-").len() >= 4
    });
    let first = firing(&audit, "first-");
    assert_eq!(first.len(), 4, "a: {}\nb: {}", a.log_text(), b.log_text());
    let instances: std::collections::BTreeSet<&str> = first
        .iter()
        .map(|t| t["instance"].as_str().unwrap())
        .collect();
    assert_eq!(
        instances,
        ["replica-a", "replica-b"].into(),
        "both replicas work: {first:?}"
    );

    // Kill one replica outright; the survivor must take all four partitions.
    a.signal("KILL");
    let taken = b.log_text().matches("partitions assigned").count();
    let start = std::time::Instant::now();
    while b.log_text().matches("partitions assigned").count() == taken && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(100));
    }
    for partition in 0..4 {
        let model = format!("second-{partition}");
        for line in spike(&model, 14) {
            send(&p, "events", partition, &model, line.as_bytes()).await;
        }
    }
    let audit = read_until(&broker.bootstrap(), "canaryd-audit", WAIT, |r| {
        firing(r, "second-").len() >= 4
    });
    let second = firing(&audit, "second-");
    assert_eq!(second.len(), 4, "b: {}", b.log_text());
    assert!(
        second.iter().all(|t| t["instance"] == "replica-b"),
        "{second:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_decided_on_kafka_changes_the_virtual_service_through_the_api() {
    use canaryd_tests::kube_fixture::KubeFixture;
    let broker = start(1).await;
    let fixture = KubeFixture::start();
    fixture.put(KubeFixture::virtual_service(
        "ml-serving",
        "model-summarizer",
        90,
        10,
    ));
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("canaryd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "rules: [{rules}]
receivers:
  kube:
    type: kube
    kubeconfig: {kubeconfig}
    target: {{kind: VirtualService, namespace: ml-serving, name: 'model-{{{{ model }}}}'}}
  pager: {{type: dry_run}}
routes:
  auto_rollback: {{receivers: [kube]}}
  notify_on_call: {{receivers: [pager]}}
kafka:
  brokers: {bootstrap}
  group_id: canaryd-kube
  topics: [events]
  dead_letter_topic: events-dlq
  audit_topic: canaryd-audit
",
            rules = repo("deploy/examples/canary-alerts.yaml").display(),
            kubeconfig = fixture.kubeconfig().display(),
            bootstrap = broker.bootstrap(),
        ),
    )
    .unwrap();
    let daemon = running(&cfg, dir.path());
    let p = producer(&broker.bootstrap());
    let lines: Vec<(String, Vec<u8>)> = incident_lines()
        .into_iter()
        .map(|l| (model_of(&l), l.into_bytes()))
        .collect();
    send_all(&p, "events", 0, &lines).await;

    let audit = read_until(&broker.bootstrap(), "canaryd-audit", WAIT, |r| {
        of_kind(r, "outcome")
            .iter()
            .any(|o| o["connector"] == "kube" && o["outcome"] == "succeeded")
    });
    let done: Vec<Value> = of_kind(&audit, "outcome")
        .into_iter()
        .filter(|o| o["connector"] == "kube" && o["outcome"] == "succeeded")
        .collect();
    assert_eq!(done.len(), 1, "{}", daemon.log_text());
    assert_eq!(done[0]["dry_run"], false);
    assert!(
        done[0]["detail"]
            .as_str()
            .unwrap()
            .contains("canary 10 -> 0"),
        "{}",
        done[0]
    );
    let vs = fixture
        .object("VirtualService", "ml-serving", "model-summarizer")
        .unwrap();
    assert_eq!(vs["spec"]["http"][0]["route"][0]["weight"], 100);
    assert_eq!(vs["spec"]["http"][0]["route"][1]["weight"], 0);
    assert!(
        fixture
            .events()
            .iter()
            .any(|e| e["reason"] == "CanaryRollback"),
        "{:?}",
        fixture.events()
    );
    // The latency rule's notify_on_call went to the dry-run pager.
    assert!(
        of_kind(&audit, "outcome")
            .iter()
            .all(|o| o["action"] != "notify_on_call" || o["connector"] == "pager"),
        "{audit:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn notifications_reach_pagerduty_slack_email_and_the_incident_webhook_once_even_after_an_outage()
 {
    use canaryd_tests::receivers::Receivers;
    use canaryd_tests::smtp::Smtpd;
    let broker = start(1).await;
    let http = Receivers::start();
    let smtp = Smtpd::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = |name: &str, value: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, value).unwrap();
        path.display().to_string()
    };
    let cfg = dir.path().join("canaryd.yaml");
    std::fs::write(
        &cfg,
        format!(
            "rules: [{rules}, {extra}]
receivers:
  pagerduty: {{type: pagerduty, url: '{pd}', routing_key: {{file: {pd_key}}}}}
  slack-oncall: {{type: slack, url: {{file: {slack}}}}}
  email-ml: {{type: email, host: 127.0.0.1, port: {smtp_port}, tls: none, from: canaryd@example.com, to: [ml-team@example.com]}}
  incidents: {{type: webhook, url: {{file: {hook}}}}}
routes:
  auto_rollback: {{receivers: [incidents]}}
  notify_on_call: {{receivers: [pagerduty, slack-oncall]}}
  notify_ml_team: {{receivers: [email-ml]}}
pipeline: {{retry_initial: 50ms, retry_max: 200ms}}
kafka:
  brokers: {bootstrap}
  group_id: canaryd-notify
  topics: [events]
  dead_letter_topic: events-dlq
  audit_topic: canaryd-audit
",
            rules = repo("deploy/examples/canary-alerts.yaml").display(),
            extra = repo("deploy/examples/playbook-triggers.yaml").display(),
            pd = http.pagerduty_url(),
            pd_key = secret("pd", "0123456789abcdef0123456789abcdef"),
            slack = secret("slack", &http.slack_url()),
            hook = secret("hook", &http.webhook_url("incidents")),
            smtp_port = smtp.port(),
            bootstrap = broker.bootstrap(),
        ),
    )
    .unwrap();
    let check = canaryd_tests::canaryd(&["check", cfg.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // Every receiver is down when the incident starts.
    http.set_down(true);
    let daemon = running(&cfg, dir.path());
    let p = producer(&broker.bootstrap());
    let mut lines: Vec<(String, Vec<u8>)> = incident_lines()
        .into_iter()
        .map(|l| (model_of(&l), l.into_bytes()))
        .collect();
    // The fairness rule of the playbook, for the ML team's email.
    for minute in [0, 5, 10] {
        let line = format!(
            r#"{{"type":"metric","ts":"2026-03-01T12:{minute:02}:30Z","name":"canary_fairness_metric","value":0.7,"labels":{{"model":"ranker"}}}}"#
        );
        lines.push(("ranker".into(), line.into_bytes()));
    }
    lines.sort_by(|a, b| {
        serde_json::from_slice::<Value>(&a.1).unwrap()["ts"]
            .as_str()
            .unwrap()
            .cmp(
                serde_json::from_slice::<Value>(&b.1).unwrap()["ts"]
                    .as_str()
                    .unwrap(),
            )
    });
    send_all(&p, "events", 0, &lines).await;
    // Retries pile up against the outage, then it ends.
    let start = std::time::Instant::now();
    while http.requests().len() < 3 && start.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(http.requests().len() >= 3, "{}", daemon.log_text());
    http.set_down(false);

    let hook_path = canaryd_tests::receivers::webhook_path("incidents");
    let slack = || -> Vec<_> {
        http.requests()
            .into_iter()
            .filter(|r| r.accepted() && r.path.starts_with("/services/"))
            .collect()
    };
    let start = std::time::Instant::now();
    while (http.accepted("/v2/enqueue").len() < 2
        || slack().len() < 2
        || http.accepted(&hook_path).is_empty())
        && start.elapsed() < WAIT
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let mails = smtp.wait_for_messages(1, WAIT);
    // Give a duplicate, if one were coming, the time to arrive.
    std::thread::sleep(Duration::from_secs(2));

    // One page per alert (the playbook's latency rule and the 1 % health
    // criterion), however many retries the outage caused.
    let pages = http.accepted("/v2/enqueue");
    let mut classes: Vec<String> = pages
        .iter()
        .map(|r| r.json()["payload"]["class"].as_str().unwrap().to_string())
        .collect();
    classes.sort();
    assert_eq!(
        classes,
        [
            "Canary Error Rate Above Health Criterion",
            "Canary Latency High"
        ],
        "{}",
        daemon.log_text()
    );
    assert!(pages.iter().all(|r| r.json()["event_action"] == "trigger"));
    let slack = slack();
    assert_eq!(slack.len(), 2, "{slack:?}");
    assert!(
        slack
            .iter()
            .any(|r| r.json().to_string().contains("Canary Latency High"))
    );
    let hooks = http.accepted(&hook_path);
    assert_eq!(hooks.len(), 1, "one incident ticket for the rollback");
    assert_eq!(hooks[0].json()["action"], "auto_rollback");
    assert_eq!(mails.len(), 1, "{}", smtp.log_text());
    assert!(
        mails[0].subject().contains("Canary Fairness Violation"),
        "{}",
        mails[0].subject()
    );
    // The outage shows in the audit trail as retries, not losses.
    let audit = read_until(&broker.bootstrap(), "canaryd-audit", WAIT, |r| {
        of_kind(r, "outcome")
            .iter()
            .filter(|o| o["outcome"] == "succeeded")
            .count()
            >= 6
    });
    assert!(
        of_kind(&audit, "outcome")
            .iter()
            .any(|o| o["outcome"] == "retried")
    );
    assert!(
        !of_kind(&audit, "outcome")
            .iter()
            .any(|o| o["outcome"] == "dead_lettered"),
        "{audit:?}"
    );
}
