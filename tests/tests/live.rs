//! `canaryd run` against a real Kafka-protocol broker (Tansu).

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::path::{Path, PathBuf};
use std::time::Duration;

use canaryd_tests::kafka::{Record, producer, read_until, send};
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

#[tokio::test(flavor = "multi_thread")]
async fn an_error_spike_on_kafka_rolls_the_canary_back_in_dry_run() {
    let broker = start(2).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &broker.bootstrap(), "canaryd-e2e");
    let daemon = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        dir.path().join("canaryd.log"),
    );
    assert!(
        daemon.wait_for_log("partitions assigned", WAIT),
        "{}",
        daemon.log_text()
    );

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
    let daemon = Daemon::spawn(
        &["run", "--config", cfg.to_str().unwrap()],
        dir.path().join("canaryd.log"),
    );
    assert!(
        daemon.wait_for_log("partitions assigned", WAIT),
        "{}",
        daemon.log_text()
    );

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
