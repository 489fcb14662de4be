//! Fault drills: canaryd killed, restarted and moved while an incident is
//! under way, against a real broker (Tansu), the Kubernetes API fixture
//! and a PagerDuty-compatible receiver. Durations are compressed; every
//! check is on event time or on counts, never on how long something took.
//! Each drill prints what it checked.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use canaryd_tests::kafka::{Record, producer, read_until, send};
use canaryd_tests::kube_fixture::KubeFixture;
use canaryd_tests::receivers::{PAGERDUTY_PATH, Receivers};
use canaryd_tests::tansu::Tansu;
use canaryd_tests::{Daemon, partitions_of, plain};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

/// Upper bound for waiting on the broker or the daemon; never an assertion.
const WAIT: Duration = Duration::from_secs(90);

/// The drill rule's `duration`.
const HOLD_S: i64 = 12;

/// Everything a drill runs against.
struct Rig {
    broker: Tansu,
    kube: KubeFixture,
    pager: Receivers,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Rig {
    /// A broker, the API fixture and a pager; the drill rule asks for
    /// `actions` (a YAML list), at severity critical.
    async fn start(group: &str, actions: &str) -> Rig {
        Rig::start_with(group, actions, "critical").await
    }

    async fn start_with(group: &str, actions: &str, severity: &str) -> Rig {
        Rig::start_partitioned(group, actions, severity, 1, "").await
    }

    /// [`Rig::start_with`] on an input topic of `partitions` partitions,
    /// `kafka_extra` added to the `kafka:` section. Models `summarizer`
    /// and `translator` each have a VirtualService.
    async fn start_partitioned(
        group: &str,
        actions: &str,
        severity: &str,
        partitions: i32,
        kafka_extra: &str,
    ) -> Rig {
        let broker = Tansu::start();
        broker
            .create_topics(&[
                ("events", partitions),
                ("events-dlq", 1),
                ("canaryd-audit", 1),
                ("canaryd-changelog", partitions),
                ("canaryd-silences", 1),
            ])
            .await;
        let kube = KubeFixture::start();
        for model in ["model-summarizer", "model-translator"] {
            kube.put(KubeFixture::virtual_service("ml-serving", model, 90, 10));
        }
        let pager = Receivers::start();
        let dir = tempfile::tempdir().unwrap();
        let rules = dir.path().join("rules.yaml");
        std::fs::write(
            &rules,
            format!(
                "alerts:
  - name: Drill Canary Errors
    condition: canary_error_rate > 0.05
    duration: {HOLD_S}s
    severity: {severity}
    action: {actions}
"
            ),
        )
        .unwrap();
        let routing_key = dir.path().join("routing-key");
        std::fs::write(&routing_key, "R0UT1NGKEY").unwrap();
        let config = dir.path().join("canaryd.yaml");
        std::fs::write(
            &config,
            format!(
                "rules: [{rules}]
receivers:
  kube:
    type: kube
    kubeconfig: {kubeconfig}
    target: {{kind: VirtualService, namespace: ml-serving, name: 'model-{{{{ model }}}}'}}
  pager: {{type: pagerduty, routing_key: {{file: {routing_key}}}, url: '{pd}'}}
routes:
  auto_rollback: {{receivers: [kube]}}
  reduce_traffic: {{receivers: [kube]}}
  notify_on_call: {{receivers: [pager]}}
kafka:
  brokers: {bootstrap}
  group_id: {group}
  topics: [events]
  dead_letter_topic: events-dlq
  audit_topic: canaryd-audit
  changelog_topic: canaryd-changelog
  session_timeout: 6s
{kafka_extra}pipeline:
  retry_max: 2s
",
                rules = rules.display(),
                routing_key = routing_key.display(),
                kubeconfig = kube.kubeconfig().display(),
                pd = pager.pagerduty_url(),
                bootstrap = broker.bootstrap(),
            ),
        )
        .unwrap();
        Rig {
            broker,
            kube,
            pager,
            dir,
            config,
        }
    }

    /// Starts a daemon called `name` and, once it owns the partition, a
    /// healthy feed that turns unhealthy 2 s later; the event time the
    /// breach starts at.
    async fn incident(&self, name: &str) -> (Daemon, Feed, DateTime<Utc>) {
        let daemon = self.spawn(name);
        wait_for_assignment(&daemon);
        let feed = Feed::start(&self.broker.bootstrap());
        tokio::time::sleep(Duration::from_secs(2)).await;
        let breach = feed.go_bad().await;
        (daemon, feed, breach)
    }

    fn spawn(&self, name: &str) -> Daemon {
        Daemon::spawn(
            &["run", "--config", self.config.to_str().unwrap()],
            self.dir.path().join(format!("{name}.log")),
        )
    }

    /// A replica with the HTTP API on `port`, sharing silences.
    fn spawn_serving(&self, name: &str, port: u16) -> Daemon {
        self.spawn_with(name, |text| {
            format!(
                "{}http:\n  listen: 127.0.0.1:{port}\n",
                text.replace(
                    "  changelog_topic: canaryd-changelog\n",
                    "  changelog_topic: canaryd-changelog\n  silences_topic: canaryd-silences\n",
                )
            )
        })
    }

    /// A replica called `name` (also its `--instance`) whose config is the
    /// drill's as `edit` changes it.
    fn spawn_with(&self, name: &str, edit: impl Fn(String) -> String) -> Daemon {
        self.spawn_with_args(name, &[], edit)
    }

    /// [`Rig::spawn_with`], with `args` added to `canaryd run`'s.
    fn spawn_with_args(
        &self,
        name: &str,
        args: &[&str],
        edit: impl Fn(String) -> String,
    ) -> Daemon {
        let text = edit(std::fs::read_to_string(&self.config).unwrap());
        let config = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(&config, text).unwrap();
        let mut all = vec![
            "run",
            "--config",
            config.to_str().unwrap(),
            "--instance",
            name,
        ];
        all.extend_from_slice(args);
        Daemon::spawn(&all, self.dir.path().join(format!("{name}.log")))
    }

    /// A replica carrying the `summarizer` canary through `rollouts` (config
    /// text after the drill's), fed healthy events, once its first
    /// stage's weight is set.
    async fn rollout_under_way(&self, rollouts: &str) -> (Daemon, Feed) {
        let daemon = self.spawn_with("daemon", |text| format!("{text}{rollouts}"));
        wait_for_assignment(&daemon);
        let feed = Feed::start(&self.broker.bootstrap());
        self.audit_until(|r| {
            r.iter().map(Record::json).any(|v| {
                v["kind"] == "outcome" && v["connector"] == "kube" && v["outcome"] == "succeeded"
            })
        });
        (daemon, feed)
    }

    fn audit_until(&self, done: impl Fn(&[Record]) -> bool) -> Vec<Value> {
        read_until(&self.broker.bootstrap(), "canaryd-audit", WAIT, done)
            .iter()
            .map(Record::json)
            .collect()
    }

    /// PATCH requests that reached the VirtualService.
    fn patches(&self) -> usize {
        self.patches_of("summarizer")
    }

    /// PATCH requests that reached `model`'s VirtualService.
    fn patches_of(&self, model: &str) -> usize {
        self.kube
            .requests_matching("PATCH", &format!("/virtualservices/model-{model}"))
            .len()
    }

    /// The distinct `dedup_key`s of the pages: PagerDuty opens one
    /// incident per key.
    fn incidents(&self) -> std::collections::BTreeSet<String> {
        self.pages()
            .iter()
            .map(|p| p["dedup_key"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// PagerDuty trigger events accepted.
    fn pages(&self) -> Vec<Value> {
        self.pager
            .accepted(PAGERDUTY_PATH)
            .iter()
            .map(|r| r.json())
            .filter(|e| e["event_action"] == "trigger")
            .collect()
    }

    /// A person gives the canary `percent` of the traffic by hand (as
    /// `kubectl edit` would): canaryd's annotations stay.
    fn hand_edit(&self, percent: i64) {
        let mut vs = self
            .kube
            .object("VirtualService", "ml-serving", "model-summarizer")
            .unwrap();
        vs["spec"]["http"][0]["route"][0]["weight"] = serde_json::json!(100 - percent);
        vs["spec"]["http"][0]["route"][1]["weight"] = serde_json::json!(percent);
        self.kube.put(vs);
    }

    fn canary_weight(&self) -> Value {
        self.canary_weight_of("summarizer")
    }

    fn canary_weight_of(&self, model: &str) -> Value {
        let vs = self
            .kube
            .object("VirtualService", "ml-serving", &format!("model-{model}"))
            .unwrap();
        vs["spec"]["http"][0]["route"][1]["weight"].clone()
    }
}

fn firing(records: &[Record]) -> bool {
    records
        .iter()
        .map(Record::json)
        .any(|r| r["kind"] == "transition" && r["to"] == "firing")
}

fn rolled_back(records: &[Record]) -> bool {
    records
        .iter()
        .map(Record::json)
        .any(|r| r["kind"] == "outcome" && r["connector"] == "kube" && r["outcome"] == "succeeded")
}

/// A stream of the canary's error rate, one event every 100 ms per model
/// stamped with the wall clock: healthy until `bad` is set.
struct Feed {
    bad: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    /// The event time of the first unhealthy event.
    first_bad: Arc<std::sync::Mutex<Option<DateTime<Utc>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Feed {
    /// Model `summarizer`, on partition 0.
    fn start(bootstrap: &str) -> Feed {
        Feed::start_models(bootstrap, &[("summarizer", 0)])
    }

    /// Each of `models` (name, partition) in every tick.
    fn start_models(bootstrap: &str, models: &[(&'static str, i32)]) -> Feed {
        let models = models.to_vec();
        let p = producer(bootstrap);
        let bad = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let first_bad = Arc::new(std::sync::Mutex::new(None));
        let (b, s, f) = (bad.clone(), stop.clone(), first_bad.clone());
        let task = tokio::spawn(async move {
            // Bounded: a drill never runs for more than a few minutes.
            for _ in 0..6_000 {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let now = Utc::now();
                let unhealthy = b.load(Ordering::SeqCst);
                if unhealthy {
                    f.lock().unwrap().get_or_insert(now);
                }
                let value = if unhealthy { 0.2 } else { 0.001 };
                for &(model, partition) in &models {
                    let event = format!(
                        r#"{{"type":"metric","ts":"{}","name":"canary_error_rate","value":{value},"labels":{{"model":"{model}","namespace":"ml-serving"}}}}"#,
                        now.to_rfc3339_opts(SecondsFormat::Millis, true)
                    );
                    send(&p, "events", partition, model, event.as_bytes()).await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Feed {
            bad,
            stop,
            first_bad,
            task,
        }
    }

    /// Starts the incident; returns the event time it starts at.
    async fn go_bad(&self) -> DateTime<Utc> {
        self.bad.store(true, Ordering::SeqCst);
        for _ in 0..100 {
            if let Some(t) = *self.first_bad.lock().unwrap() {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the feed sent no unhealthy event");
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
    }
}

fn ts(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap())
        .unwrap()
        .with_timezone(&Utc)
}

fn wait_for_assignment(daemon: &Daemon) {
    assert!(
        daemon.wait_for_log("partitions assigned", WAIT),
        "{}",
        daemon.log_text()
    );
}

/// Prints one check of a drill and fails the drill if it does not hold;
/// `context` (the daemons' logs) is shown only on failure.
fn check(what: &str, ok: bool, detail: impl std::fmt::Display, context: &str) {
    println!(
        "drill check: {what}: {} ({detail})",
        if ok { "ok" } else { "FAILED" }
    );
    assert!(ok, "{what}: {detail}\n{context}");
}

/// `kill -9` in the pending window, then a restart at once: the alert
/// fires at the deadline set by the breach's start, not a full window
/// after the restart, and acts once.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_in_the_pending_window_fires_at_the_original_deadline_once() {
    let rig = Rig::start("drill-kill-pending", "[auto_rollback, notify_on_call]").await;
    let (first, feed, breach) = rig.incident("first").await;
    // Into the window, with at least one checkpoint of the pending state.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !rolled_back(&read_until(
            &rig.broker.bootstrap(),
            "canaryd-audit",
            Duration::from_secs(1),
            |_| false
        )),
        "fired before the kill: the drill proves nothing"
    );
    first.signal("KILL");
    drop(first);
    let second = rig.spawn("second");
    wait_for_assignment(&second);
    let audit = rig.audit_until(|r| firing(r) && rolled_back(r));
    feed.stop().await;

    let logs = second.log_text();
    check(
        "restored from the changelog",
        logs.contains("partition state restored from the changelog"),
        "log of the second process",
        &logs,
    );
    fired_once_on_time(&rig, &audit, breach, &logs);
}

/// `kill -9` after the rule fired, while the traffic change is in flight:
/// the PATCH has landed but its answer never came. The restarted daemon
/// carries the action out again, finds its key on the object and does not
/// cut a second time; the page keeps its incident.
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_the_action_is_in_flight_does_it_exactly_once() {
    use canaryd_tests::kube_fixture::Fault;
    let rig = Rig::start("drill-kill-firing", "[reduce_traffic, notify_on_call]").await;
    let vs_path = "/virtualservices/model-summarizer";
    // The first write lands, and its answer is held past the kill.
    rig.kube.inject(
        "PATCH",
        vs_path,
        1,
        Fault::ThenDelay(Duration::from_secs(120)),
    );
    let (first, feed, _) = rig.incident("first").await;
    let mut landed = false;
    for _ in 0..900 {
        if rig.patches() > 0 {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(landed, "the rule never acted: {}", first.log_text());
    first.signal("KILL");
    let first_log = first.log_text();
    drop(first);
    let second = rig.spawn("second");
    wait_for_assignment(&second);
    let audit = rig.audit_until(rolled_back);
    feed.stop().await;
    let logs = format!("first:\n{first_log}\nsecond:\n{}", second.log_text());

    check(
        "the canary's weight was cut once (10 -> 5, not 2)",
        rig.canary_weight() == 5,
        rig.canary_weight(),
        &logs,
    );
    check(
        "one PATCH of the VirtualService",
        rig.patches() == 1,
        rig.patches(),
        &logs,
    );
    let done: Vec<&Value> = audit
        .iter()
        .filter(|r| {
            r["kind"] == "outcome" && r["connector"] == "kube" && r["outcome"] == "succeeded"
        })
        .collect();
    check(
        "the restarted daemon found the action applied",
        done.len() == 1
            && done[0]["detail"]
                .as_str()
                .is_some_and(|d| d.contains("already applied")),
        format!("{done:?}"),
        &logs,
    );
    let incidents = rig.incidents();
    check(
        "one PagerDuty incident",
        incidents.len() == 1,
        format!(
            "{} trigger events, dedup keys {incidents:?}",
            rig.pages().len()
        ),
        &logs,
    );
}

/// The changelog is lost while an alert is pending: its records corrupt,
/// or the topic deleted and made again empty. The restarted daemon says it
/// rebuilds from the input, re-evaluates the input before the committed
/// offset without acting, and so still fires at the original deadline,
/// once.
#[tokio::test(flavor = "multi_thread")]
async fn a_corrupt_or_deleted_changelog_is_rebuilt_from_the_input() {
    for lost in ["corrupt", "deleted"] {
        let rig = Rig::start(
            &format!("drill-lost-{lost}"),
            "[auto_rollback, notify_on_call]",
        )
        .await;
        let (first, feed, breach) = rig.incident("first").await;
        // A malformed message inside what the rebuild will read again.
        let garbage = format!("not json ({lost} drill)");
        send(
            &producer(&rig.broker.bootstrap()),
            "events",
            0,
            "summarizer",
            garbage.as_bytes(),
        )
        .await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        first.signal("KILL");
        drop(first);
        let config = match lost {
            "corrupt" => {
                // A record of this partition's state that no version reads.
                let p = producer(&rig.broker.bootstrap());
                send(
                    &p,
                    "canaryd-changelog",
                    0,
                    "s\0events\0\x30\0model=summarizer",
                    b"\xff\xfe not CBOR",
                )
                .await;
                rig.config.clone()
            }
            _ => {
                // The same as a topic deleted and created again: empty.
                rig.broker
                    .create_topics(&[("canaryd-changelog-new", 1)])
                    .await;
                let text = std::fs::read_to_string(&rig.config).unwrap().replace(
                    "changelog_topic: canaryd-changelog",
                    "changelog_topic: canaryd-changelog-new",
                );
                let path = rig.dir.path().join("canaryd-new.yaml");
                std::fs::write(&path, text).unwrap();
                path
            }
        };
        let second = Daemon::spawn(
            &["run", "--config", config.to_str().unwrap()],
            rig.dir.path().join("second.log"),
        );
        wait_for_assignment(&second);
        let audit = rig.audit_until(|r| firing(r) && rolled_back(r));
        feed.stop().await;
        let logs = second.log_text();

        check(
            &format!("{lost}: says it rebuilds from the input"),
            logs.contains("rebuilding this partition's state from the input"),
            "log of the second process",
            &logs,
        );
        let pending: Vec<&Value> = audit
            .iter()
            .filter(|r| r["kind"] == "transition" && r["to"] == "pending")
            .collect();
        check(
            &format!("{lost}: the rebuild did not announce the pending alert again"),
            pending.len() == 1,
            pending.len(),
            &logs,
        );
        fired_once_on_time(&rig, &audit, breach, &logs);
        let letters = read_until(
            &rig.broker.bootstrap(),
            "events-dlq",
            Duration::from_secs(5),
            |_| false,
        );
        let copies = letters
            .iter()
            .filter(|r| r.payload == garbage.as_bytes())
            .count();
        check(
            &format!(
                "{lost}: the malformed message is dead-lettered once, not again by the rebuild"
            ),
            copies == 1,
            copies,
            &logs,
        );
    }
}

/// Checks every drill of an incident ends with: one firing, at the
/// deadline the breach set (event time), one PATCH, one page.
fn fired_once_on_time(rig: &Rig, audit: &[Value], breach: DateTime<Utc>, logs: &str) {
    let fired = audit
        .iter()
        .filter(|r| r["kind"] == "transition" && r["to"] == "firing")
        .count();
    check("one firing transition", fired == 1, fired, logs);
    model_fired_once_on_time(rig, audit, breach, logs, "summarizer");
    let incidents = rig.incidents();
    check(
        "one PagerDuty incident",
        incidents.len() == 1,
        format!("{} trigger events", rig.pages().len()),
        logs,
    );
}

/// [`fired_once_on_time`] for `model` alone: its firing, its
/// VirtualService set to 0 in one PATCH, its one incident.
fn model_fired_once_on_time(
    rig: &Rig,
    audit: &[Value],
    breach: DateTime<Utc>,
    logs: &str,
    model: &str,
) {
    let fired: Vec<&Value> = audit
        .iter()
        .filter(|r| {
            r["kind"] == "transition" && r["to"] == "firing" && r["subject"]["model"] == model
        })
        .collect();
    check(
        &format!("{model}: one firing transition"),
        fired.len() == 1,
        fired.len(),
        logs,
    );
    let deadline = breach + chrono::Duration::seconds(HOLD_S);
    let off = (ts(&fired[0]["ts"]) - deadline).num_milliseconds();
    check(
        &format!("{model}: fired at the original deadline ±1 s (event time)"),
        off.abs() <= 1_000,
        format!("{off} ms from {deadline}, by {}", fired[0]["instance"]),
        logs,
    );
    check(
        &format!("{model}: one PATCH of its VirtualService, to 0"),
        rig.patches_of(model) == 1 && rig.canary_weight_of(model) == 0,
        format!(
            "{} patches, weight {}",
            rig.patches_of(model),
            rig.canary_weight_of(model)
        ),
        logs,
    );
    let subject = format!("model={model}|");
    let incidents = rig
        .incidents()
        .iter()
        .filter(|k| k.contains(&subject))
        .count();
    check(
        &format!("{model}: one PagerDuty incident"),
        incidents == 1,
        incidents,
        logs,
    );
}

fn all_logs(daemons: &[&Daemon]) -> String {
    daemons
        .iter()
        .enumerate()
        .map(|(i, d)| format!("--- daemon {i}\n{}", d.log_text()))
        .collect()
}

/// A second replica joins in the pending window and leaves again, with
/// eager assignment: the partition moves there and back, its state with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_rebalance_mid_window_fires_once_on_time_from_the_owner() {
    let rig = Rig::start_partitioned(
        "drill-rebalance",
        "[auto_rollback, notify_on_call]",
        "critical",
        1,
        "  assignment_strategy: range,roundrobin\n",
    )
    .await;
    let (a, feed, breach) = rig.incident("a").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut b = rig.spawn("b");
    wait_for_assignment(&b);
    check(
        "a gave up the partition for the rebalance",
        a.wait_for_log("partitions revoked", WAIT),
        "log of a",
        &a.log_text(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.signal("TERM");
    check(
        "b stopped cleanly",
        b.wait_exit(WAIT) == Some(0),
        "exit code",
        &b.log_text(),
    );
    let audit = rig.audit_until(|r| firing(r) && rolled_back(r));
    feed.stop().await;
    let logs = all_logs(&[&a, &b]);
    let moved = logs
        .matches("partition state restored from the changelog")
        .count();
    println!("drill: the partition's state was restored {moved} times");
    check(
        "state moved through the changelog",
        moved >= 1,
        moved,
        &logs,
    );
    fired_once_on_time(&rig, &audit, breach, &logs);
}

/// The partitions of the input topic named in `log`'s lines that contain
/// `what` (`partitions revoked`, `partition state restored`...), in order.
fn partitions_in(log: &str, what: &str) -> Vec<i32> {
    plain(log)
        .lines()
        .filter(|l| l.contains(what))
        .flat_map(|l| partitions_of(l, "events"))
        .collect()
}

/// Cooperative-sticky rebalancing, as the shipped configuration sets it:
/// a second replica joins in the pending window of two incidents, one per
/// partition, and leaves again. Only the partition that moves changes
/// hands and is restored from the changelog; the other never leaves the
/// first replica, whose state for it stays in memory. Both alerts fire
/// once, at their deadlines.
#[tokio::test(flavor = "multi_thread")]
async fn a_cooperative_rebalance_moves_only_one_partition_and_fires_both_once_on_time() {
    let rig = Rig::start_partitioned(
        "drill-cooperative",
        "[auto_rollback, notify_on_call]",
        "critical",
        2,
        "  assignment_strategy: cooperative-sticky\n",
    )
    .await;
    let a = rig.spawn("a");
    wait_for_assignment(&a);
    let feed = Feed::start_models(
        &rig.broker.bootstrap(),
        &[("summarizer", 0), ("translator", 1)],
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let breach = feed.go_bad().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut b = rig.spawn("b");
    wait_for_assignment(&b);
    let given_up = partitions_in(&a.log_text(), "partitions revoked");
    let taken = partitions_in(&b.log_text(), "partitions assigned");
    let logs = all_logs(&[&a, &b]);
    check(
        "a gave up exactly one partition, the one b took",
        given_up.len() == 1 && given_up == taken,
        format!("a revoked {given_up:?}, b was assigned {taken:?}"),
        &logs,
    );
    let moved = given_up[0];
    let kept = 1 - moved;
    tokio::time::sleep(Duration::from_secs(2)).await;
    b.signal("TERM");
    check(
        "b stopped cleanly",
        b.wait_exit(WAIT) == Some(0),
        "exit code",
        &b.log_text(),
    );
    let audit = rig.audit_until(|records| {
        let json: Vec<Value> = records.iter().map(Record::json).collect();
        let fired = json
            .iter()
            .filter(|r| r["kind"] == "transition" && r["to"] == "firing")
            .count();
        let done = json
            .iter()
            .filter(|r| {
                r["kind"] == "outcome" && r["connector"] == "kube" && r["outcome"] == "succeeded"
            })
            .count();
        fired >= 2 && done >= 2
    });
    feed.stop().await;
    let logs = all_logs(&[&a, &b]);
    let a_log = a.log_text();
    let a_revoked = partitions_in(&a_log, "partitions revoked");
    check(
        "a never gave up the partition that did not move",
        !a_revoked.contains(&kept),
        format!("a revoked {a_revoked:?}"),
        &logs,
    );
    let restored_on_a = partitions_in(&a_log, "partition state restored from the changelog");
    let restored_on_b = partitions_in(&b.log_text(), "partition state restored from the changelog");
    check(
        "the moved partition's state was restored from the changelog on b, then back on a",
        restored_on_b == vec![moved] && restored_on_a == vec![moved],
        format!("restored on b {restored_on_b:?}, on a {restored_on_a:?}"),
        &logs,
    );
    for model in ["summarizer", "translator"] {
        model_fired_once_on_time(&rig, &audit, breach, &logs, model);
    }
    let incidents = rig.incidents();
    check(
        "one PagerDuty incident per model",
        incidents.len() == 2 && rig.pages().len() == 2,
        format!("{} trigger events, keys {incidents:?}", rig.pages().len()),
        &logs,
    );
}

/// A changelog with fewer partitions than an input topic could never hold
/// some partitions' state, nor let their offsets be committed: start-up
/// stops with the reason instead of running without durability there.
#[tokio::test(flavor = "multi_thread")]
async fn a_changelog_with_fewer_partitions_than_the_input_stops_start_up_with_the_reason() {
    let rig = Rig::start("drill-changelog-size", "[auto_rollback]").await;
    rig.broker.create_topics(&[("wide", 3)]).await;
    let mut daemon = rig.spawn_with("a", |text| {
        text.replace("  topics: [events]\n", "  topics: [events, wide]\n")
    });
    let code = daemon.wait_exit(WAIT);
    let log = plain(&daemon.log_text());
    check(
        "canaryd exits with 1",
        code == Some(1),
        format!("{code:?}"),
        &log,
    );
    check(
        "and names the topics and the partitions it needs",
        log.contains("\"canaryd-changelog\" has 1 partition(s), input topic \"wide\" has 3")
            && log.contains("give the changelog 3 partitions"),
        "log",
        &log,
    );
    check(
        "before consuming anything",
        !log.contains("partitions assigned"),
        "log",
        &log,
    );
}

/// A replica with nothing to own, in a group with a member for each
/// partition: it waits as a spare, saying so, instead of rejoining every
/// `rejoin_after`, which would rebalance the group each time. Then the
/// owner dies (`kill -9`) and the spare carries the incident: one firing,
/// one rollback, on time.
#[tokio::test(flavor = "multi_thread")]
async fn a_spare_replica_waits_without_rebalancing_the_group_and_takes_over_when_needed() {
    let rig = Rig::start("drill-spare", "[auto_rollback, notify_on_call]").await;
    let with_rejoin = |text: String| {
        text.replace(
            "  session_timeout: 6s\n",
            "  session_timeout: 6s\n  rejoin_after: 6s\n",
        )
    };
    let a = rig.spawn_with("a", with_rejoin);
    wait_for_assignment(&a);
    let feed = Feed::start(&rig.broker.bootstrap());
    let b = rig.spawn_with("b", with_rejoin);
    // The group settles with one owner; which one is the assignor's choice.
    let mut roles = None;
    for _ in 0..600 {
        let (a0, b0) = (a.owned("events"), b.owned("events"));
        if a0.contains(&0) && b0.is_empty() && b.log_text().contains("partitions assigned") {
            roles = Some((&a, &b));
        } else if b0.contains(&0) && a0.is_empty() {
            roles = Some((&b, &a));
        }
        if roles.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (owner, spare) = roles.expect("the group never settled with one owner");
    let revoked = |d: &Daemon| plain(&d.log_text()).matches("partitions revoked").count();
    let (owner_revoked, spare_said) = (
        revoked(owner),
        plain(&spare.log_text())
            .matches("this replica is a spare")
            .count(),
    );
    // Two more periods of `rejoin_after` (bounded: each check is logged).
    for _ in 0..400 {
        if plain(&spare.log_text())
            .matches("this replica is a spare")
            .count()
            >= spare_said + 2
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let logs = all_logs(&[&a, &b]);
    let spare_log = plain(&spare.log_text());
    check(
        "the spare saw the owner keep up, twice, and said so",
        spare_log.matches("this replica is a spare").count() >= spare_said + 2,
        spare_log.matches("this replica is a spare").count(),
        &logs,
    );
    check(
        "and never rejoined the group",
        !spare_log.contains("rejoining the group"),
        "",
        &logs,
    );
    check(
        "the owner kept its partition: no rebalance since the group settled",
        owner.owned("events").contains(&0) && revoked(owner) == owner_revoked,
        format!(
            "{:?}, revoked {} times",
            owner.owned("events"),
            revoked(owner)
        ),
        &logs,
    );
    owner.signal("KILL");
    let breach = feed.go_bad().await;
    let audit = rig.audit_until(|r| firing(r) && rolled_back(r));
    feed.stop().await;
    let logs = all_logs(&[&a, &b]);
    check(
        "the spare took the partition over",
        spare.owned("events").contains(&0),
        format!("{:?}", spare.owned("events")),
        &logs,
    );
    fired_once_on_time(&rig, &audit, breach, &logs);
}

/// A rolling update of three replicas during an incident: each old one is
/// replaced by a new one, one at a time, while the alert is pending.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_update_of_three_replicas_pages_once_and_rolls_back() {
    let rig = Rig::start("drill-rolling", "[auto_rollback, notify_on_call]").await;
    let mut old: Vec<Daemon> = ["r1", "r2", "r3"].iter().map(|n| rig.spawn(n)).collect();
    for d in &old {
        wait_for_assignment(d);
    }
    let feed = Feed::start(&rig.broker.bootstrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let breach = feed.go_bad().await;
    // The update starts once a checkpoint is in the changelog (offsets are
    // committed only then): there is state to move. Bounded.
    let bootstrap = rig.broker.bootstrap();
    for _ in 0..300 {
        let committed = canaryd_tests::kafka::committed(&bootstrap, "drill-rolling", "events", 0);
        if committed.is_some_and(|c| c > 0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut new = Vec::new();
    for (i, mut replaced) in old.drain(..).enumerate() {
        let fresh = rig.spawn(&format!("n{i}"));
        wait_for_assignment(&fresh);
        replaced.signal("TERM");
        let code = replaced.wait_exit(WAIT);
        check(
            &format!("old replica {i} stopped cleanly"),
            code == Some(0),
            format!("{code:?}"),
            &replaced.log_text(),
        );
        new.push(replaced);
        new.push(fresh);
    }
    // With sticky assignment the partition moves when its owner is
    // replaced, to one of the new replicas: bounded wait for that.
    let fresh: Vec<&Daemon> = new.iter().skip(1).step_by(2).collect();
    for _ in 0..600 {
        if fresh.iter().any(|d| d.owned("events").contains(&0)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = rig.audit_until(|r| firing(r) && rolled_back(r));
    feed.stop().await;
    let refs: Vec<&Daemon> = new.iter().collect();
    let logs = all_logs(&refs);
    let owner = fresh.iter().position(|d| d.owned("events").contains(&0));
    check(
        "a new replica owns the partition after the update",
        owner.is_some(),
        format!("{owner:?}"),
        &logs,
    );
    let moved = logs
        .matches("partition state restored from the changelog")
        .count();
    check(
        "the partition moved with its state",
        moved >= 1,
        moved,
        &logs,
    );
    fired_once_on_time(&rig, &audit, breach, &logs);
}

/// The broker (sqlite storage) is killed and restarted in the middle of an
/// incident, while an alert is pending: every event is consumed, and the
/// decisions are exactly those of `canaryd replay` on the same events.
#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_stream_loses_no_event_and_changes_no_decision() {
    use canaryd_tests::{canaryd, repo, stdout};
    let mut broker = Tansu::start_sqlite();
    broker
        .create_topics(&[
            ("events", 1),
            ("events-dlq", 1),
            ("canaryd-audit", 1),
            ("canaryd-changelog", 1),
        ])
        .await;
    let dir = tempfile::tempdir().unwrap();
    let rules = repo("deploy/examples/canary-alerts.yaml");
    let events = repo("deploy/examples/incident.jsonl");
    let config = dir.path().join("canaryd.yaml");
    std::fs::write(
        &config,
        format!(
            "rules: [{}]
dry_run: true
kafka:
  brokers: {}
  group_id: drill-broker-restart
  topics: [events]
  dead_letter_topic: events-dlq
  audit_topic: canaryd-audit
  changelog_topic: canaryd-changelog
  session_timeout: 6s
",
            rules.display(),
            broker.bootstrap()
        ),
    )
    .unwrap();
    let lines: Vec<String> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // Split while "Canary Error Rate High" is pending (12:06 to 12:11).
    let split = lines
        .iter()
        .position(|l| l.contains("\"ts\":\"2026-03-01T12:08"))
        .unwrap();
    let daemon = Daemon::spawn(
        &["run", "--config", config.to_str().unwrap()],
        dir.path().join("canaryd.log"),
    );
    wait_for_assignment(&daemon);
    let keyed = |part: &[String]| -> Vec<(String, Vec<u8>)> {
        part.iter()
            .map(|l| ("summarizer".to_string(), l.clone().into_bytes()))
            .collect()
    };
    let p = producer(&broker.bootstrap());
    canaryd_tests::kafka::send_all(&p, "events", 0, &keyed(&lines[..split])).await;
    drop(p);
    // Until the first half is consumed and committed.
    let bootstrap = broker.bootstrap();
    let committed = |at_least: i64| {
        for _ in 0..600 {
            let c =
                canaryd_tests::kafka::committed(&bootstrap, "drill-broker-restart", "events", 0);
            if c.is_some_and(|c| c >= at_least) {
                return c;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    };
    check(
        "the first half was consumed before the restart",
        committed(split as i64).is_some(),
        split,
        &daemon.log_text(),
    );
    broker.restart();
    let p = producer(&broker.bootstrap());
    canaryd_tests::kafka::send_all(&p, "events", 0, &keyed(&lines[split..])).await;
    let total = lines.len() as i64;
    let end = committed(total);
    check(
        "0 events lost: every event consumed and committed",
        end == Some(total),
        format!("committed {end:?} of {total}"),
        &daemon.log_text(),
    );

    let out = canaryd(&[
        "replay",
        "--rules",
        rules.to_str().unwrap(),
        "--events",
        events.to_str().unwrap(),
        "--output",
        "json",
    ]);
    let decision = |v: &Value| {
        format!(
            "{} {} {}->{} at {}",
            v["rule"], v["subject"], v["from"], v["to"], v["ts"]
        )
    };
    let expected: Vec<String> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "transition")
        .map(|v| decision(&v))
        .collect();
    let transitions = |r: &[Record]| -> Vec<String> {
        r.iter()
            .map(Record::json)
            .filter(|v| v["kind"] == "transition")
            .map(|v| decision(&v))
            .collect()
    };
    let audit = read_until(&broker.bootstrap(), "canaryd-audit", WAIT, |r| {
        transitions(r).len() >= expected.len()
    });
    // A little longer, so that a repeated decision would show.
    let audit = {
        let more = read_until(
            &broker.bootstrap(),
            "canaryd-audit",
            Duration::from_secs(3),
            |_| false,
        );
        if more.len() >= audit.len() {
            more
        } else {
            audit
        }
    };
    let got = transitions(&audit);
    check(
        "0 decisions changed: the transitions are replay's",
        got == expected,
        format!("live {got:#?}\nreplay {expected:#?}"),
        &daemon.log_text(),
    );
}

/// The consumer stalls while the incident starts (the process is stopped,
/// as a long GC pause, CPU starvation or a frozen VM would stop it), with an
/// allowed lateness far shorter than the stall. When it resumes, the backlog
/// is evaluated in order and none of it is late: idle time did not move
/// event time on while nothing was consumed. The alert fires at the
/// deadline the breach set.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_consumer_evaluates_its_backlog_and_fires_on_time() {
    let rig = Rig::start("drill-stall", "[auto_rollback, notify_on_call]").await;
    let port = canaryd_tests::tansu::free_port();
    let daemon = rig.spawn_with("stalled", |text| {
        format!(
            "{}engine:\n  allowed_lateness: 1s\nhttp:\n  listen: 127.0.0.1:{port}\n",
            // The stall must not cost the partition: a session outlasts it.
            text.replace(
                "  session_timeout: 6s\n",
                "  session_timeout: 20s\n  idle_after: 1s\n"
            )
        )
    });
    wait_for_assignment(&daemon);
    let feed = Feed::start(&rig.broker.bootstrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    daemon.signal("STOP");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let breach = feed.go_bad().await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    daemon.signal("CONT");
    let audit = rig.audit_until(rolled_back);
    feed.stop().await;
    let logs = daemon.log_text();
    let late = metric(port, "canaryd_events_late_total");
    check(
        "no event of the backlog dropped as late",
        late == Some(0.0),
        format!("{late:?} late"),
        &logs,
    );
    fired_once_on_time(&rig, &audit, breach, &logs);
}

/// The drill's rollout plan, compressed: 5% → 25% → 50%, each held 4 s,
/// then 100%, soaked 4 s.
const PLAN: &str = "rollouts:
  receiver: kube
  default:
    stages:
      - { weight: 5, hold: 4s }
      - { weight: 25, hold: 4s }
      - { weight: 50, hold: 4s }
    soak: 4s
";

/// Rollout changes in the audit trail: (event, weight, event time).
fn rollout_changes(audit: &[Value]) -> Vec<(String, u64, DateTime<Utc>)> {
    audit
        .iter()
        .filter(|r| r["kind"] == "rollout" && r["subject"]["model"] == "summarizer")
        .map(|r| {
            (
                r["event"].as_str().unwrap().to_string(),
                r["weight"].as_u64().unwrap(),
                ts(&r["ts"]),
            )
        })
        .collect()
}

/// A healthy canary is carried through the plan by the live controller,
/// and `kill -9` mid-hold does not restart the hold or repeat a step: the
/// new process restores the rollout from the changelog, promotes at the
/// time the first one would have, once, and completes.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_goes_from_5_to_100_percent_through_a_kill_9_and_is_promoted_once() {
    let rig = Rig::start("drill-rollout", "[auto_rollback]").await;
    let edit = |text: String| format!("{text}{PLAN}");
    let first = rig.spawn_with("first", edit);
    wait_for_assignment(&first);
    let feed = Feed::start(&rig.broker.bootstrap());
    // Into stage 2's hold, checkpointed.
    let audit = rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .any(|v| v["kind"] == "rollout" && v["weight"] == 25)
    });
    let stage_2 = rollout_changes(&audit)
        .into_iter()
        .find(|(_, w, _)| *w == 25)
        .unwrap()
        .2;
    tokio::time::sleep(Duration::from_secs(2)).await;
    first.signal("KILL");
    let first_log = first.log_text();
    drop(first);
    let port = canaryd_tests::tansu::free_port();
    let second = rig.spawn_with("second", |text| {
        format!("{text}{PLAN}http:\n  listen: 127.0.0.1:{port}\n")
    });
    wait_for_assignment(&second);
    let audit = rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .any(|v| v["kind"] == "rollout" && v["event"] == "complete")
    });
    feed.stop().await;
    let logs = format!("--- first\n{first_log}\n--- second\n{}", second.log_text());

    let changes = rollout_changes(&audit);
    // A change decided twice (input replayed after the kill) has one time.
    let mut distinct: Vec<(String, u64, DateTime<Utc>)> = changes.clone();
    distinct.dedup();
    let steps: Vec<(&str, u64)> = distinct.iter().map(|(e, w, _)| (e.as_str(), *w)).collect();
    check(
        "the plan's steps, in order, each once",
        steps
            == [
                ("stage", 5),
                ("stage", 25),
                ("stage", 50),
                ("promoted", 100),
                ("complete", 100),
            ],
        format!("{steps:?}, {} audit records", changes.len()),
        &logs,
    );
    let at = |event: &str, weight: u64| {
        distinct
            .iter()
            .find(|(e, w, _)| e == event && *w == weight)
            .map(|c| c.2)
            .unwrap()
    };
    let held = |from: DateTime<Utc>, to: DateTime<Utc>| (to - from).num_milliseconds();
    check(
        "stage 2 held its 4 s across the kill (event time)",
        (4_000..=5_000).contains(&held(stage_2, at("stage", 50))),
        format!("{} ms", held(stage_2, at("stage", 50))),
        &logs,
    );
    check(
        "promoted at the original time: 4 s after stage 3 (±1 s)",
        (4_000..=5_000).contains(&held(at("stage", 50), at("promoted", 100))),
        format!("{} ms", held(at("stage", 50), at("promoted", 100))),
        &logs,
    );
    // Accepted writes: a write refused with 409 (another worker's write
    // came first) changed nothing.
    let writes: Vec<(i64, u16, String)> = rig
        .kube
        .requests_matching("PATCH", "/virtualservices/model-summarizer")
        .iter()
        .filter_map(|r| {
            let body: Value = serde_json::from_str(&r.body).ok()?;
            let weight = body["spec"]["http"][0]["route"]
                .as_array()?
                .iter()
                .find(|d| d["destination"]["subset"] == "canary")?["weight"]
                .as_i64()?;
            let key = body["metadata"]["annotations"]["canaryd.io/last-action"].to_string();
            Some((weight, r.status, key))
        })
        .collect();
    let weights: Vec<i64> = writes
        .iter()
        .filter(|(_, status, _)| *status == 200)
        .map(|(w, _, _)| *w)
        .collect();
    let requests: Vec<String> = rig
        .kube
        .requests()
        .iter()
        .filter(|r| r.path.contains("model-summarizer"))
        .map(|r| {
            format!(
                "{} {} {}",
                r.method,
                r.status,
                &r.body.chars().take(160).collect::<String>()
            )
        })
        .collect();
    // After the restart, the new owner catches up on the input it missed
    // and may decide two steps at once: the older one, landing second, is
    // superseded rather than written (the weights never go back down).
    let in_order = weights.windows(2).all(|w| w[0] < w[1])
        && weights.iter().all(|w| [5, 25, 50, 100].contains(w))
        && weights.last() == Some(&100)
        && weights.starts_with(&[5, 25]);
    check(
        "each step written at most once, rising, to 100",
        in_order,
        format!("{weights:?}\n{writes:#?}\n{requests:#?}"),
        &logs,
    );
    check(
        "the canary ends at 100%",
        rig.canary_weight() == 100,
        rig.canary_weight(),
        &logs,
    );
    let vs = rig
        .kube
        .object("VirtualService", "ml-serving", "model-summarizer")
        .unwrap();
    let state: Value = serde_json::from_str(
        vs["metadata"]["annotations"]["canaryd.io/rollout"]
            .as_str()
            .unwrap_or("null"),
    )
    .unwrap();
    let model = |name: &str| metric(port, &format!("{name}{{model=\"summarizer\"}}"));
    let scrape = || {
        (
            model("canaryd_rollout_stage"),
            model("canaryd_rollout_weight"),
            model("canaryd_rollout_hold_remaining_seconds"),
            metric(
                port,
                "canaryd_rollout_transitions_total{model=\"summarizer\",kind=\"promoted\"}",
            ),
        )
    };
    // Each scrape takes a fresh snapshot; the completion may still be on
    // its way through the consume loop (bounded wait).
    let mut figures = scrape();
    for _ in 0..50 {
        if figures == (Some(4.0), Some(100.0), Some(0.0), Some(1.0)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        figures = scrape();
    }
    check(
        "the metrics: stage 4 (100%), weight 100, no hold left, promoted once",
        figures == (Some(4.0), Some(100.0), Some(0.0), Some(1.0)),
        format!("{figures:?}"),
        &logs,
    );
    check(
        "the object records the rollout's state",
        state["plan"] == "default" && state["rollout"]["stage"] == 3,
        &state,
        &logs,
    );
}

/// The canary turns bad in stage 2: the critical gating rule fires, the
/// rollout rolls back to 0% at once, the incident ticket carries the stage,
/// the weight and the rule, and the version is not carried forward again.
#[tokio::test(flavor = "multi_thread")]
async fn a_critical_rule_firing_mid_rollout_rolls_back_and_opens_an_incident_ticket() {
    let rig = Rig::start("drill-rollout-back", "[auto_rollback]").await;
    let daemon = rig.spawn_with("daemon", |text| {
        format!("{text}{PLAN}  incident: [pager]\n")
    });
    wait_for_assignment(&daemon);
    let feed = Feed::start(&rig.broker.bootstrap());
    rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .any(|v| v["kind"] == "rollout" && v["weight"] == 25)
    });
    let breach = feed.go_bad().await;
    let audit = rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .any(|v| v["kind"] == "rollout" && v["event"] == "rolled_back")
    });
    // Healthy again for longer than the plan: nothing moves forward.
    feed.bad.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(6)).await;
    let audit_after: Vec<Value> = read_until(
        &rig.broker.bootstrap(),
        "canaryd-audit",
        Duration::from_secs(2),
        |_| false,
    )
    .iter()
    .map(Record::json)
    .collect();
    feed.stop().await;
    let logs = daemon.log_text();
    let steps: Vec<(String, u64)> = rollout_changes(&audit)
        .into_iter()
        .map(|(e, w, _)| (e, w))
        .filter(|(e, _)| e != "paused")
        .collect();
    check(
        "stage 1, stage 2, then rolled back to 0",
        steps
            == [
                ("stage".to_string(), 5),
                ("stage".to_string(), 25),
                ("rolled_back".to_string(), 0),
            ],
        format!("{steps:?}"),
        &logs,
    );
    let back = rollout_changes(&audit).last().unwrap().2;
    let off = (back - (breach + chrono::Duration::seconds(HOLD_S))).num_milliseconds();
    check(
        "rolled back when the rule fired (event time, ±1 s)",
        off.abs() <= 1_000,
        format!("{off} ms"),
        &logs,
    );
    check(
        "the canary is at 0",
        rig.canary_weight() == 0,
        rig.canary_weight(),
        &logs,
    );
    let tickets: Vec<Value> = rig
        .pages()
        .into_iter()
        .filter(|p| p.to_string().contains("rolled_back"))
        .collect();
    check(
        "one incident ticket naming the stage, the weight and the rule",
        tickets.len() == 1
            && ["stage 2", "at 0% (stage 2)", "Drill Canary Errors"]
                .iter()
                .all(|s| tickets[0].to_string().contains(s)),
        format!("{tickets:#?}"),
        &logs,
    );
    let later: Vec<(String, u64)> = rollout_changes(&audit_after)
        .into_iter()
        .map(|(e, w, _)| (e, w))
        .filter(|(e, _)| e == "stage" || e == "promoted")
        .collect();
    check(
        "a rolled-back version is not carried forward again",
        later.len() == 2,
        format!("{later:?}"),
        &logs,
    );
}

/// A person steers a live rollout: through the CLI (`canaryd rollout`) and
/// the API, which refuses a command without the token. A pause holds the
/// stage however long the canary stays healthy; promote skips a hold; abort
/// rolls back to 0%; resume starts the version again. Each change names who
/// asked, in the audit trail and on the object.
#[tokio::test(flavor = "multi_thread")]
async fn a_person_pauses_promotes_aborts_and_resumes_a_live_rollout() {
    let rig = Rig::start("drill-rollout-manual", "[auto_rollback]").await;
    let port = canaryd_tests::tansu::free_port();
    let token = rig.dir.path().join("token");
    std::fs::write(&token, "s3cret-t0ken\n").unwrap();
    let daemon = rig.spawn_with("daemon", |text| {
        format!(
            "{text}rollouts:\n  receiver: kube\n  default:\n    stages: [{{weight: 5, hold: 6s}}, {{weight: 25, hold: 1h}}]\n    soak: 1h\nhttp:\n  listen: 127.0.0.1:{port}\n  auth: {{bearer: {{file: {}}}}}\n",
            token.display()
        )
    });
    wait_for_assignment(&daemon);
    let feed = Feed::start(&rig.broker.bootstrap());
    rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .any(|v| v["kind"] == "rollout" && v["weight"] == 5)
    });
    let url = format!("http://127.0.0.1:{port}");
    let cli = |verb: &str| {
        let out = canaryd_tests::canaryd(&[
            "rollout",
            verb,
            "--model",
            "summarizer",
            "--url",
            &url,
            "--by",
            "alice",
            "--token-file",
            token.to_str().unwrap(),
        ]);
        let text = canaryd_tests::stdout(&out);
        (
            out.status.code(),
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
        )
    };
    let logs = || daemon.log_text();

    let (code, paused) = cli("pause");
    check(
        "pause answers the paused rollout",
        code == Some(0) && paused["state"] == "paused",
        &paused,
        &logs(),
    );
    // Longer than stage 1's hold: it stays. (The hold, 6 s, leaves the
    // pause time to arrive: the rollout's start waits for the tick that
    // reads its traffic object, and the next that brings the answer.)
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (_, status) = cli("status");
    check(
        "paused: still stage 1 at 5% after its hold",
        status["stage"] == 1 && status["weight"] == 5 && status["phase"] == "paused by alice",
        &status,
        &logs(),
    );
    // The status page shows it, in a browser.
    let page = canaryd_tests::render_in_browser(&format!("{url}/"));
    let rollouts = page
        .find("id=\"rollouts\"")
        .map(|at| &page[at..])
        .and_then(|rest| rest.find("</section>").map(|end| rest[..end].to_string()))
        .unwrap_or_default();
    check(
        "the status page shows the rollout: its stages, the current one, why it waits",
        rollouts.contains("summarizer")
            && rollouts.contains("aria-current=\"step\">5%")
            && rollouts.contains("25%")
            && rollouts.contains("paused by alice"),
        &rollouts,
        &logs(),
    );
    let (code, again) = cli("pause");
    check(
        "a second pause is refused (nothing to do)",
        code == Some(1),
        &again,
        &logs(),
    );
    let (refused, _) = http(
        "POST",
        &format!("{url}/api/v1/rollouts/summarizer/promote"),
        Some(r#"{"by":"mallory"}"#),
    );
    check(
        "the API refuses a command without the token",
        refused == 401,
        refused,
        &logs(),
    );
    let (_, resumed) = cli("resume");
    check(
        "resume",
        resumed["state"] == "progressing",
        &resumed,
        &logs(),
    );
    let (_, promoted) = cli("promote");
    check(
        "promote passes stage 1 at once: stage 2 at 25%",
        promoted["stage"] == 2 && promoted["weight"] == 25,
        &promoted,
        &logs(),
    );
    rig.audit_until(|r| {
        r.iter().map(Record::json).any(|v| {
            v["kind"] == "outcome"
                && v["connector"] == "kube"
                && v["outcome"] == "succeeded"
                && v["key"].as_str().is_some_and(|k| k.contains("stage 2"))
        })
    });
    check(
        "the canary is at 25",
        rig.canary_weight() == 25,
        rig.canary_weight(),
        &logs(),
    );
    let (_, aborted) = cli("abort");
    check(
        "abort rolls back to 0",
        aborted["weight"] == 0 && aborted["state"] == "rolled_back",
        &aborted,
        &logs(),
    );
    let (_, resumed) = cli("resume");
    check(
        "resume after the abort starts stage 1 again",
        resumed["stage"] == 1 && resumed["weight"] == 5,
        &resumed,
        &logs(),
    );
    let audit = rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .filter(|v| {
                v["kind"] == "rollout"
                    && v["reason"].as_str().is_some_and(|s| s.contains("by alice"))
            })
            .count()
            >= 5
    });
    feed.stop().await;
    let by_alice: Vec<String> = audit
        .iter()
        .filter(|v| {
            v["kind"] == "rollout" && v["reason"].as_str().is_some_and(|s| s.contains("by alice"))
        })
        .map(|v| format!("{} {}", v["event"], v["weight"]))
        .collect();
    check(
        "every command is in the audit trail with who asked",
        by_alice
            == [
                "\"paused\" 5",
                "\"resumed\" 5",
                "\"stage\" 25",
                "\"rolled_back\" 0",
                "\"resumed\" 5",
            ],
        format!("{by_alice:?}"),
        &logs(),
    );
    let (_, listed) = http("GET", &format!("{url}/api/v1/rollouts"), None);
    let listed: Value = serde_json::from_str(&listed).unwrap_or(Value::Null);
    check(
        "GET /api/v1/rollouts lists it with its stages",
        listed[0]["model"] == "summarizer"
            && listed[0]["stages"] == serde_json::json!([5, 25, 100]),
        &listed,
        &logs(),
    );
}

/// A person sets the canary's weight by hand mid-rollout (as `kubectl
/// edit` would). The next step finds it, leaves it alone and pauses the
/// rollout, saying why; a resume puts the stage's weight back and carries on.
#[tokio::test(flavor = "multi_thread")]
async fn a_hand_edit_of_the_weights_pauses_the_rollout_and_canaryd_never_fights_it() {
    let rig = Rig::start("drill-rollout-hand", "[auto_rollback]").await;
    let port = canaryd_tests::tansu::free_port();
    let (daemon, feed) = rig
        .rollout_under_way(&format!(
            "rollouts:\n  receiver: kube\n  default:\n    stages: [{{weight: 5, hold: 6s}}, {{weight: 25, hold: 1h}}]\n    soak: 1h\nhttp:\n  listen: 127.0.0.1:{port}\n"
        ))
        .await;
    check(
        "stage 1 set the canary to 5",
        rig.canary_weight() == 5,
        rig.canary_weight(),
        &daemon.log_text(),
    );
    rig.hand_edit(30);
    let audit = rig.audit_until(|r| {
        r.iter().map(Record::json).any(|v| {
            v["kind"] == "rollout"
                && v["event"] == "paused"
                && v["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("hand edit"))
        })
    });
    let logs = daemon.log_text();
    check(
        "the person's weight stands",
        rig.canary_weight() == 30,
        rig.canary_weight(),
        &logs,
    );
    let refused = audit.iter().any(|v| {
        v["kind"] == "outcome"
            && v["outcome"] == "failed"
            && v["detail"]
                .as_str()
                .is_some_and(|d| d.contains("hand edit") && d.contains("canary weight 30"))
    });
    check("the step was refused with the reason", refused, "", &logs);
    // Paused: stays at 30 while healthy.
    tokio::time::sleep(Duration::from_secs(2)).await;
    check(
        "nothing fights it",
        rig.canary_weight() == 30,
        rig.canary_weight(),
        &logs,
    );
    let (code, resumed) = http(
        "POST",
        &format!("http://127.0.0.1:{port}/api/v1/rollouts/summarizer/resume"),
        Some(r#"{"by":"alice"}"#),
    );
    check("resume answers", code == 200, &resumed, &logs);
    let mut weight = rig.canary_weight();
    for _ in 0..100 {
        if weight != 30 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        weight = rig.canary_weight();
    }
    feed.stop().await;
    check(
        "after the resume, the stage's weight is back",
        weight == 25,
        weight,
        &daemon.log_text(),
    );
}

/// The traffic object of a running rollout is read every
/// `rollouts.watch_every`: a canary version a deployment pipeline names
/// there starts a new rollout of it, and weights a person set pause the
/// rollout at once, in a stage whose hold (1 h) would not step for long.
#[tokio::test(flavor = "multi_thread")]
async fn a_watched_traffic_object_starts_a_new_version_and_a_hand_edit_pauses_at_once() {
    let rig = Rig::start("drill-rollout-watch", "[auto_rollback]").await;
    let (daemon, feed) = rig
        .rollout_under_way(
            "rollouts:\n  receiver: kube\n  watch_every: 1s\n  default:\n    stages: [{weight: 5, hold: 1h}, {weight: 25, hold: 1h}]\n    soak: 1h\n",
        )
        .await;
    let object = || {
        rig.kube
            .object("VirtualService", "ml-serving", "model-summarizer")
            .unwrap()
    };
    // The pipeline deploys v7 and names it on the object (the events carry
    // no version label).
    let mut vs = object();
    vs["metadata"]["annotations"]["canaryd.io/canary-version"] = serde_json::json!("v7");
    rig.kube.put(vs);
    let audit = rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .any(|v| v["kind"] == "rollout" && v["version"] == "v7")
    });
    let logs = daemon.log_text();
    let started = audit
        .iter()
        .find(|v| v["kind"] == "rollout" && v["version"] == "v7");
    check(
        "a new rollout of v7 started at stage 1, 5%",
        started.is_some_and(|v| v["event"] == "stage" && v["stage"] == 1 && v["weight"] == 5),
        format!("{started:?}"),
        &logs,
    );
    let mut recorded = Value::Null;
    for _ in 0..100 {
        let annotations = &object()["metadata"]["annotations"];
        recorded = annotations["canaryd.io/rollout"]
            .as_str()
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or(Value::Null);
        if recorded["rollout"]["version"] == "v7" {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check(
        "the object records the v7 rollout",
        recorded["rollout"]["version"] == "v7",
        &recorded,
        &logs,
    );
    rig.hand_edit(30);
    let audit = rig.audit_until(|r| {
        r.iter().map(Record::json).any(|v| {
            v["kind"] == "rollout"
                && v["event"] == "paused"
                && v["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("hand edit") && s.contains("canary weight 30"))
        })
    });
    feed.stop().await;
    let logs = daemon.log_text();
    let paused = audit
        .iter()
        .find(|v| v["kind"] == "rollout" && v["event"] == "paused");
    check(
        "the hand edit paused the rollout, with what was found",
        paused.is_some_and(|v| {
            v["reason"]
                .as_str()
                .is_some_and(|s| s.contains("hand edit") && s.contains("canary weight 30"))
        }),
        format!("{paused:?}"),
        &logs,
    );
    let refused_steps = audit
        .iter()
        .filter(|v| v["kind"] == "outcome" && v["outcome"] == "failed")
        .count();
    check(
        "noticed by the read, not by a refused step (no write was tried)",
        refused_steps == 0,
        refused_steps,
        &logs,
    );
    check(
        "the person's weight stands",
        rig.canary_weight() == 30,
        rig.canary_weight(),
        &logs,
    );
}

/// Live, against the API fixture: a medium rule whose action is
/// `reduce_traffic` steps the rollout back one stage and restarts that
/// stage's hold, cutting once; a `low` rule stops the hold clock while it
/// fires ("continue monitoring"), and the stage is passed only after its
/// whole hold of clean time.
#[tokio::test(flavor = "multi_thread")]
async fn reduce_traffic_steps_a_live_rollout_back_once_and_a_low_alert_stops_its_hold_clock() {
    let rig = Rig::start("drill-rollout-gates", "[auto_rollback]").await;
    let gates = rig.dir.path().join("gates.yaml");
    std::fs::write(
        &gates,
        "alerts:
  - name: Drill Slow
    condition: canary_p95_latency > 1000
    duration: 0s
    severity: medium
    action: reduce_traffic
  - name: Drill Cost
    condition: canary_cost_per_request > 0.5
    duration: 0s
    severity: low
",
    )
    .unwrap();
    let daemon = rig.spawn_with("daemon", |text| {
        let text = text.replacen("rules: [", &format!("rules: [{}, ", gates.display()), 1);
        format!(
            "{text}rollouts:\n  receiver: kube\n  default:\n    stages: [{{weight: 5, hold: 3s}}, {{weight: 25, hold: 3s}}, {{weight: 50, hold: 1h}}]\n    soak: 1h\n"
        )
    });
    wait_for_assignment(&daemon);
    let weight = || rig.canary_weight().as_i64();
    let p = producer(&rig.broker.bootstrap());
    // Phases, driven by what the object shows: healthy to 25 %, slow until
    // stepped back, healthy to 25 % again, costly for 5 s, healthy to 50 %.
    let mut phase = 0;
    let mut costly_from: Option<DateTime<Utc>> = None;
    let mut costly_until: Option<DateTime<Utc>> = None;
    let mut seen = Vec::new();
    for _ in 0..600 {
        let now = Utc::now();
        let w = weight();
        if seen.last() != Some(&w) {
            seen.push(w);
        }
        phase = match (phase, w) {
            (0, Some(25)) => 1,
            (1, Some(5)) => 2,
            (2, Some(25)) => 3,
            (3, _) if costly_from.is_some_and(|t| now - t > chrono::Duration::seconds(5)) => 4,
            (4, Some(50)) => 5,
            (p, _) => p,
        };
        if phase == 3 {
            costly_from.get_or_insert(now);
        }
        if phase == 4 {
            costly_until.get_or_insert(now);
        }
        if phase == 5 {
            break;
        }
        let ts = now.to_rfc3339_opts(SecondsFormat::Millis, true);
        let (latency, cost) = match phase {
            1 => (2_000.0, 0.01),
            3 => (100.0, 2.0),
            _ => (100.0, 0.01),
        };
        for (name, value) in [
            ("canary_error_rate", 0.001),
            ("canary_p95_latency", latency),
            ("canary_cost_per_request", cost),
        ] {
            let event = format!(
                r#"{{"type":"metric","ts":"{ts}","name":"{name}","value":{value},"labels":{{"model":"summarizer","namespace":"ml-serving"}}}}"#
            );
            send(&p, "events", 0, "summarizer", event.as_bytes()).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .any(|v| v["kind"] == "rollout" && v["weight"] == 50)
    });
    let logs = daemon.log_text();
    println!("drill: the canary's weights on the object, in order: {seen:?}");
    let changes = rollout_changes(&audit);
    let kinds: Vec<(&str, u64)> = changes.iter().map(|(k, w, _)| (k.as_str(), *w)).collect();
    println!("drill: rollout changes {kinds:?}");
    check(
        "reduce_traffic stepped back from 25 % to stage 1 (5 %)",
        kinds
            .windows(2)
            .any(|w| w == [("stage", 25), ("stepped_back", 5)]),
        format!("{kinds:?}"),
        &logs,
    );
    check(
        "the object went 5, 25, 5, 25, 50 and never elsewhere (one cut, not two)",
        seen.iter().flatten().copied().collect::<Vec<i64>>() == [10, 5, 25, 5, 25, 50]
            || seen.iter().flatten().copied().collect::<Vec<i64>>() == [5, 25, 5, 25, 50],
        format!("{seen:?}"),
        &logs,
    );
    let carried = audit.iter().any(|v| {
        v["kind"] == "outcome"
            && v["action"] == "reduce_traffic"
            && v["connector"] == "kube"
            && v["detail"]
                .as_str()
                .is_some_and(|d| d.contains("carried out by the model's rollout: reduce_traffic"))
    });
    check(
        "the rule's reduce_traffic is recorded as carried out by the step back",
        carried,
        "",
        &logs,
    );
    let at = |kind: &str, w: u64, after: DateTime<Utc>| {
        changes
            .iter()
            .find(|(k, weight, t)| k == kind && *weight == w && *t >= after)
            .map(|(_, _, t)| *t)
    };
    let stepped_back = at("stepped_back", 5, DateTime::<Utc>::MIN_UTC).unwrap();
    let again = at("stage", 25, stepped_back).unwrap();
    check(
        "stage 1's hold restarted in full after the step back",
        (again - stepped_back).num_milliseconds() >= 3_000,
        format!("{} ms", (again - stepped_back).num_milliseconds()),
        &logs,
    );
    let paused = changes
        .iter()
        .find(|(k, _, t)| k == "paused" && *t > again)
        .map(|(_, _, t)| *t);
    let paused_for_cost = audit.iter().any(|v| {
        v["kind"] == "rollout"
            && v["event"] == "paused"
            && v["reason"]
                .as_str()
                .is_some_and(|r| r.contains("Drill Cost"))
    });
    check(
        "the low alert stopped the hold clock, naming its rule",
        paused.is_some() && paused_for_cost,
        format!("{kinds:?}"),
        &logs,
    );
    let fifty = at("stage", 50, again).unwrap();
    // Clean time in stage 2: from entering it to the low alert, then from
    // its end on; together the whole 3 s hold, not less.
    let costly = (costly_until.unwrap() - costly_from.unwrap()).num_milliseconds();
    check(
        "stage 2 was passed only after its whole hold of clean time",
        (fifty - again).num_milliseconds() >= 3_000 + costly - 1_000,
        format!(
            "{} ms in stage 2, {costly} ms of it costly",
            (fifty - again).num_milliseconds()
        ),
        &logs,
    );
}

/// The value of the unlabelled metric `name` on the replica serving `port`.
fn metric(port: u16, name: &str) -> Option<f64> {
    let (_, body) = http("GET", &format!("http://127.0.0.1:{port}/metrics"), None);
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The pager is down during an incident: first answering 503 with
/// `Retry-After: 4`, then not listening at all, then back. The page is
/// delivered once when it returns, and no retry came sooner than asked.
#[tokio::test(flavor = "multi_thread")]
async fn a_receiver_down_then_unreachable_gets_every_notification_once_when_back() {
    let mut rig = Rig::start_with("drill-receiver-down", "[notify_on_call]", "high").await;
    rig.pager.set_down_for(4);
    let (daemon, feed, _) = rig.incident("daemon").await;
    rig.audit_until(firing);
    tokio::time::sleep(Duration::from_secs(12)).await;
    rig.pager.close();
    tokio::time::sleep(Duration::from_secs(12)).await;
    rig.pager.set_down(false);
    rig.pager.reopen();
    let audit = rig.audit_until(|r| {
        r.iter().map(Record::json).any(|o| {
            o["kind"] == "outcome" && o["connector"] == "pager" && o["outcome"] == "succeeded"
        })
    });
    feed.stop().await;
    let logs = daemon.log_text();

    let refused: Vec<_> = rig
        .pager
        .requests_to(PAGERDUTY_PATH)
        .into_iter()
        .filter(|r| r.status == 503)
        .collect();
    let gaps: Vec<u128> = refused
        .windows(2)
        .map(|w| w[1].at.duration_since(w[0].at).as_millis())
        .collect();
    check(
        "retried while down, never sooner than Retry-After (4 s)",
        refused.len() >= 2 && gaps.iter().all(|g| *g >= 4_000),
        format!("{} refusals, gaps {gaps:?} ms", refused.len()),
        &logs,
    );
    let retried = audit
        .iter()
        .filter(|o| {
            o["kind"] == "outcome" && o["connector"] == "pager" && o["outcome"] == "retried"
        })
        .count();
    let refused_connections = audit
        .iter()
        .filter(|o| {
            o["outcome"] == "retried" && o["detail"].as_str().is_some_and(|d| !d.contains("503"))
        })
        .count();
    check(
        "retried through the closed port too",
        refused_connections >= 1,
        format!("{retried} retries recorded, {refused_connections} without an answer"),
        &logs,
    );
    let pages = rig.pages();
    check(
        "the page delivered once",
        pages.len() == 1,
        pages.len(),
        &logs,
    );
    let lost = audit
        .iter()
        .filter(|o| o["outcome"] == "dead_lettered" || o["outcome"] == "escalated")
        .count();
    check("nothing dead-lettered or escalated", lost == 0, lost, &logs);
}

/// (status, body) of an HTTP request, made with curl.
fn http(method: &str, url: &str, body: Option<&str>) -> (u16, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method, url]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.output().expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// A silence made through replica A's API holds on replica B, which owns
/// the partition of the incident: B does not act.
#[tokio::test(flavor = "multi_thread")]
async fn a_silence_created_on_one_replica_is_honoured_on_another() {
    use canaryd_tests::tansu::free_port;
    let rig = Rig::start("drill-silence", "[auto_rollback, notify_on_call]").await;
    let (port_a, port_b) = (free_port(), free_port());
    let b = rig.spawn_serving("b", port_b);
    wait_for_assignment(&b);
    let a = rig.spawn_serving("a", port_a);
    wait_for_assignment(&a);
    assert!(a.wait_for_log("sharing silences", WAIT), "{}", a.log_text());
    assert!(b.wait_for_log("sharing silences", WAIT), "{}", b.log_text());
    let listening = |port: u16| {
        (0..200).any(|_| {
            let up = http("GET", &format!("http://127.0.0.1:{port}/-/healthy"), None).0 == 200;
            if !up {
                std::thread::sleep(Duration::from_millis(50));
            }
            up
        })
    };
    assert!(listening(port_a) && listening(port_b), "{}", a.log_text());
    // The silence is made on the replica that does not own the partition.
    let owns = |d: &Daemon| d.owned("events").contains(&0);
    let (owner, owner_port, maker_port) = if owns(&a) {
        ("a", port_a, port_b)
    } else {
        ("b", port_b, port_a)
    };
    println!("drill: replica {owner} owns the partition; the silence is made on the other");

    let (code, body) = http(
        "POST",
        &format!("http://127.0.0.1:{maker_port}/api/v1/silences"),
        Some(
            r#"{"rule":"Drill Canary Errors","until":"1h","created_by":"drill","comment":"maintenance"}"#,
        ),
    );
    let made = std::time::Instant::now();
    assert_eq!(code, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let mut seen_after = None;
    for _ in 0..1_000 {
        let (_, list) = http(
            "GET",
            &format!("http://127.0.0.1:{owner_port}/api/v1/silences"),
            None,
        );
        if list.contains(&id) {
            seen_after = Some(made.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let logs = all_logs(&[&a, &b]);
    check(
        "the owner lists the silence made on the other replica",
        seen_after.is_some(),
        format!("after {seen_after:?}"),
        &logs,
    );

    let feed = Feed::start(&rig.broker.bootstrap());
    tokio::time::sleep(Duration::from_secs(2)).await;
    feed.go_bad().await;
    let audit = rig.audit_until(|r| r.iter().map(Record::json).any(|v| v["kind"] == "silenced"));
    feed.stop().await;
    let logs = all_logs(&[&a, &b]);
    let silenced: Vec<&Value> = audit.iter().filter(|v| v["kind"] == "silenced").collect();
    check(
        "the owner fired and recorded its actions as silenced",
        !silenced.is_empty() && silenced.iter().all(|v| v["instance"] == owner),
        format!("{} silenced records", silenced.len()),
        &logs,
    );
    check("no PATCH", rig.patches() == 0, rig.patches(), &logs);
    check("no page", rig.pages().is_empty(), rig.pages().len(), &logs);

    // Deleted on the owner, gone from the other.
    let (code, _) = http(
        "DELETE",
        &format!("http://127.0.0.1:{owner_port}/api/v1/silences/{id}"),
        None,
    );
    assert_eq!(code, 204);
    let mut gone = false;
    for _ in 0..1_000 {
        let (_, list) = http(
            "GET",
            &format!("http://127.0.0.1:{maker_port}/api/v1/silences"),
            None,
        );
        if !list.contains(&id) {
            gone = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    check(
        "deleted on one, gone from the other",
        gone,
        "",
        &all_logs(&[&a, &b]),
    );
}

/// Alertmanager sends to a Service, so its repeat of an alert, or its
/// retry after a lost answer, may reach another replica: that replica
/// knows the alert was taken in, answers 200 and does not act again.
#[tokio::test(flavor = "multi_thread")]
async fn an_alertmanager_alert_taken_in_by_one_replica_is_a_duplicate_on_another() {
    use canaryd_tests::tansu::free_port;
    let rig = Rig::start("drill-am-dedup", "[auto_rollback, notify_on_call]").await;
    let (port_a, port_b) = (free_port(), free_port());
    let a = rig.spawn_serving("a", port_a);
    let b = rig.spawn_serving("b", port_b);
    for d in [&a, &b] {
        assert!(d.wait_for_log("sharing silences", WAIT), "{}", d.log_text());
    }
    let healthy = |port: u16| {
        (0..200).any(|_| {
            let up = http("GET", &format!("http://127.0.0.1:{port}/-/healthy"), None).0 == 200;
            if !up {
                std::thread::sleep(Duration::from_millis(50));
            }
            up
        })
    };
    assert!(healthy(port_a) && healthy(port_b), "{}", a.log_text());
    let payload = r#"{"version":"4","status":"firing","receiver":"canaryd","groupKey":"{}:{alertname=\"ModelDown\"}","alerts":[{"status":"firing","labels":{"alertname":"ModelDown","model":"summarizer","canary_action":"notify_on_call","severity":"critical"},"annotations":{"summary":"summarizer canary down"},"startsAt":"2026-12-07T06:00:00Z","fingerprint":"5c1d9f0e2a7b3c4d"}]}"#;
    let post = |port: u16| {
        http(
            "POST",
            &format!("http://127.0.0.1:{port}/api/v1/alertmanager"),
            Some(payload),
        )
    };
    let (code, body) = post(port_a);
    assert_eq!(code, 200, "{body}");
    let taken: Value = serde_json::from_str(&body).unwrap();
    check(
        "replica a takes the alert in as an action",
        taken["actions"] == 1,
        &body,
        &a.log_text(),
    );
    check(
        "replica b learns that a took the alert in",
        b.wait_for_log("taken in by another replica", WAIT),
        "",
        &all_logs(&[&a, &b]),
    );
    // The repeat reaches b.
    let (code, body) = post(port_b);
    assert_eq!(code, 200, "{body}");
    let repeat: Value = serde_json::from_str(&body).unwrap();
    check(
        "replica b answers the repeat as a duplicate",
        repeat["duplicates"] == 1 && repeat["actions"] == 0,
        &body,
        &all_logs(&[&a, &b]),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while rig.pages().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Long enough for a second page to arrive if b had acted.
    std::thread::sleep(Duration::from_secs(2));
    check(
        "one page",
        rig.pages().len() == 1,
        rig.pages().len(),
        &all_logs(&[&a, &b]),
    );
}

/// Behind a Service a rollout request reaches any replica: one that does
/// not carry the model forwards it to the one that does, found through the
/// consumer group, and lists every replica's rollouts.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollout_command_sent_to_the_replica_without_the_model_reaches_its_owner() {
    use canaryd_tests::tansu::free_port;
    let rig = Rig::start("drill-rollout-forward", "[auto_rollback]").await;
    let token = rig.dir.path().join("token");
    std::fs::write(&token, "s3cret-t0ken\n").unwrap();
    let (port_a, port_b) = (free_port(), free_port());
    let replica = |name: &str, port: u16| {
        let advertise = format!("127.0.0.1:{port}");
        rig.spawn_with_args(name, &["--advertise", &advertise], |text| {
            let text = text.replace(
                "  changelog_topic: canaryd-changelog\n",
                "  changelog_topic: canaryd-changelog\n  silences_topic: canaryd-silences\n",
            );
            format!(
                "{text}rollouts:\n  receiver: kube\n  default:\n    stages: [{{weight: 5, hold: 1h}}, {{weight: 25, hold: 1h}}]\n    soak: 1h\nhttp:\n  listen: 127.0.0.1:{port}\n  auth: {{bearer: {{file: {}}}}}\n",
                token.display()
            )
        })
    };
    let a = replica("a", port_a);
    wait_for_assignment(&a);
    let b = replica("b", port_b);
    assert!(
        b.wait_for_log("partitions assigned", WAIT),
        "{}",
        b.log_text()
    );
    let feed = Feed::start(&rig.broker.bootstrap());
    rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .any(|v| v["kind"] == "rollout" && v["weight"] == 5)
    });
    let logs = || all_logs(&[&a, &b]);
    // The replica that owns the events partition carries the rollout.
    let owns = |d: &Daemon| d.owned("events").contains(&0);
    let (owner, other_port) = if owns(&a) {
        ("a", port_b)
    } else {
        ("b", port_a)
    };
    println!("drill: replica {owner} carries the rollout; the requests go to the other");
    let other = format!("http://127.0.0.1:{other_port}");
    // The replicas announce themselves on the shared topic at start.
    let listed = (0..200).any(|_| {
        let (_, list) = http("GET", &format!("{other}/api/v1/rollouts"), None);
        let found = list.contains("summarizer");
        if !found {
            std::thread::sleep(Duration::from_millis(50));
        }
        found
    });
    check(
        "the other replica lists the owner's rollout",
        listed,
        "",
        &logs(),
    );
    let cli = |verb: &str| {
        let out = canaryd_tests::canaryd(&[
            "rollout",
            verb,
            "--model",
            "summarizer",
            "--url",
            &other,
            "--by",
            "alice",
            "--token-file",
            token.to_str().unwrap(),
        ]);
        let text = canaryd_tests::stdout(&out);
        (
            out.status.code(),
            serde_json::from_str::<Value>(&text).unwrap_or(Value::Null),
            canaryd_tests::stderr(&out),
        )
    };
    let (code, status, err) = cli("status");
    check(
        "status through the other replica shows the rollout at 5%",
        code == Some(0) && status["weight"] == 5,
        format!("{status} {err}"),
        &logs(),
    );
    let (code, paused, err) = cli("pause");
    check(
        "pause through the other replica is carried out by the owner",
        code == Some(0) && paused["state"] == "paused",
        format!("{paused} {err}"),
        &logs(),
    );
    let audit = rig.audit_until(|r| {
        r.iter().map(Record::json).any(|v| {
            v["kind"] == "rollout" && v["reason"].as_str().is_some_and(|s| s.contains("by alice"))
        })
    });
    let paused_by: Vec<&Value> = audit
        .iter()
        .filter(|v| {
            v["kind"] == "rollout" && v["reason"].as_str().is_some_and(|s| s.contains("by alice"))
        })
        .collect();
    check(
        "the owner recorded the pause, once",
        paused_by.len() == 1 && paused_by[0]["instance"] == owner,
        format!("{paused_by:?}"),
        &logs(),
    );
    let (code, list) = http("GET", &format!("{other}/api/v1/rollouts"), None);
    let list: Value = serde_json::from_str(&list).unwrap_or(Value::Null);
    check(
        "the other replica's list holds the owner's rollout",
        code == 200
            && list
                .as_array()
                .is_some_and(|l| l.iter().filter(|r| r["model"] == "summarizer").count() == 1),
        &list,
        &logs(),
    );
    let (code, answer) = http("GET", &format!("{other}/api/v1/rollouts/nobody"), None);
    check(
        "a model no replica carries is a 404 that says the others were asked",
        code == 404 && answer.contains("nor on the 1 other replica"),
        &answer,
        &logs(),
    );
    feed.stop().await;
}

/// A plan with a long second stage, its progress recorded every 2 s.
const READ_BACK_PLAN: &str = "rollouts:
  receiver: kube
  record_every: 2s
  default:
    stages:
      - { weight: 5, hold: 4s }
      - { weight: 25, hold: 30s }
      - { weight: 50, hold: 4s }
    soak: 4s
";

/// The drill's config with no changelog, and `extra` added.
fn without_changelog(text: &str, extra: &str) -> String {
    format!(
        "{}{extra}",
        text.replace("  changelog_topic: canaryd-changelog\n", "")
    )
}

/// The rollout state canaryd recorded on the drill's VirtualService.
fn recorded_rollout(rig: &Rig) -> Value {
    rig.kube
        .object("VirtualService", "ml-serving", "model-summarizer")
        .and_then(|vs| {
            serde_json::from_str(vs["metadata"]["annotations"]["canaryd.io/rollout"].as_str()?).ok()
        })
        .unwrap_or(Value::Null)
}

/// With no changelog at all, `kill -9` 16 s into stage 2's 30 s hold: the
/// new process finds nothing of its own, reads the rollout's state back
/// from the VirtualService, and carries on in stage 2 with the hold it had
/// (less the seconds after the last progress record), instead of starting
/// again at 5%.
#[tokio::test(flavor = "multi_thread")]
async fn without_a_changelog_a_new_owner_reads_the_stage_back_from_the_traffic_object() {
    let rig = Rig::start("drill-read-back", "[auto_rollback]").await;
    let first = rig.spawn_with("first", |text| without_changelog(&text, READ_BACK_PLAN));
    wait_for_assignment(&first);
    let feed = Feed::start(&rig.broker.bootstrap());
    let audit = rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .any(|v| v["kind"] == "rollout" && v["weight"] == 25)
    });
    let stage_2 = rollout_changes(&audit)
        .into_iter()
        .find(|(_, w, _)| *w == 25)
        .unwrap()
        .2;
    // Bounded: the progress records carry the hold to 16 s.
    let held = |state: &Value| {
        state["rollout"]["held"]
            .as_str()
            .and_then(|s| canaryd_rules::Span::parse(s).ok())
            .map_or(0, |s| s.millis())
    };
    let mut state = recorded_rollout(&rig);
    for _ in 0..600 {
        if state["rollout"]["stage"] == 1 && held(&state) >= 16_000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        state = recorded_rollout(&rig);
    }
    first.signal("KILL");
    let first_log = first.log_text();
    drop(first);
    check(
        "before the kill, the object records stage 2 and its hold so far",
        state["rollout"]["stage"] == 1 && held(&state) >= 16_000,
        &state,
        &first_log,
    );
    let port = canaryd_tests::tansu::free_port();
    let second = rig.spawn_with("second", |text| {
        without_changelog(
            &text,
            &format!("{READ_BACK_PLAN}http:\n  listen: 127.0.0.1:{port}\n"),
        )
    });
    wait_for_assignment(&second);
    let audit = rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .any(|v| v["kind"] == "rollout" && v["event"] == "complete")
    });
    feed.stop().await;
    let logs = format!("--- first\n{first_log}\n--- second\n{}", second.log_text());
    check(
        "the new process read the state back",
        second.log_text().contains("rollout state read back")
            && second.log_text().contains("Recorded"),
        "",
        &logs,
    );
    let mut distinct = rollout_changes(&audit);
    distinct.dedup();
    let steps: Vec<(&str, u64)> = distinct.iter().map(|(e, w, _)| (e.as_str(), *w)).collect();
    check(
        "each step once: no new rollout from 5% after the kill",
        steps
            == [
                ("stage", 5),
                ("stage", 25),
                ("stage", 50),
                ("promoted", 100),
                ("complete", 100),
            ],
        format!("{steps:?}"),
        &logs,
    );
    let stage_3 = distinct
        .iter()
        .find(|(e, w, _)| e == "stage" && *w == 50)
        .unwrap()
        .2;
    let took = (stage_3 - stage_2).num_milliseconds();
    // 30 s of hold, plus what the last record did not carry (at most its
    // 2 s period and a tick). Starting the hold again would take 30 s from
    // the first event the new process saw, at least 10 s after stage 2.
    check(
        "stage 2 held 30 s in all, the new owner crediting the recorded hold",
        (30_000..=36_000).contains(&took),
        format!("{took} ms"),
        &logs,
    );
    let weights: Vec<i64> = rig
        .kube
        .requests_matching("PATCH", "/virtualservices/model-summarizer")
        .iter()
        .filter(|r| r.status == 200)
        .filter_map(|r| {
            let body: Value = serde_json::from_str(&r.body).ok()?;
            body["spec"]["http"][0]["route"]
                .as_array()?
                .iter()
                .find(|d| d["destination"]["subset"] == "canary")?["weight"]
                .as_i64()
        })
        .collect();
    check(
        "the weights only rose: 5, 25, 50, 100",
        weights == [5, 25, 50, 100],
        format!("{weights:?}"),
        &logs,
    );
    let (_, body) = http(
        "GET",
        &format!("http://127.0.0.1:{port}/api/v1/rollouts/summarizer"),
        None,
    );
    let shown: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    check(
        "the new owner shows the rollout complete",
        shown["state"] == "complete",
        &shown,
        &logs,
    );
}

/// A rollout record on the VirtualService that canaryd cannot read: the
/// new owner does not guess. The rollout pauses with the reason (shown by
/// the API), the weights stay where they are, and the pause is recorded on
/// the object for whoever owns the model next.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreadable_rollout_record_pauses_the_rollout_with_the_reason_and_moves_nothing() {
    let rig = Rig::start("drill-read-back-corrupt", "[auto_rollback]").await;
    let mut vs = KubeFixture::virtual_service("ml-serving", "model-summarizer", 90, 10);
    vs["metadata"]["annotations"] = serde_json::json!({
        "canaryd.io/rollout": "{\"plan\": \"default\", \"rollout\": 42}",
        "canaryd.io/canary-weight": "10",
    });
    rig.kube.put(vs);
    let port = canaryd_tests::tansu::free_port();
    let daemon = rig.spawn_with("daemon", |text| {
        without_changelog(
            &text,
            &format!("{READ_BACK_PLAN}http:\n  listen: 127.0.0.1:{port}\n"),
        )
    });
    wait_for_assignment(&daemon);
    let feed = Feed::start(&rig.broker.bootstrap());
    let why = "canaryd.io/rollout on VirtualService ml-serving/model-summarizer is not a rollout record canaryd can read";
    rig.audit_until(|r| {
        r.iter().map(Record::json).any(|v| {
            v["kind"] == "rollout"
                && v["event"] == "paused"
                && v["reason"].as_str().is_some_and(|s| s.contains(why))
        })
    });
    // Longer than stage 1's hold: nothing moves.
    tokio::time::sleep(Duration::from_secs(5)).await;
    feed.stop().await;
    let logs = daemon.log_text();
    let (_, body) = http(
        "GET",
        &format!("http://127.0.0.1:{port}/api/v1/rollouts/summarizer"),
        None,
    );
    let shown: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    check(
        "the API shows it paused, with the reason",
        shown["state"] == "paused" && shown["phase"].as_str().is_some_and(|p| p.contains(why)),
        &shown,
        &logs,
    );
    check(
        "the canary keeps its 10%",
        rig.canary_weight() == 10,
        rig.canary_weight(),
        &logs,
    );
    let spec_writes = rig
        .kube
        .requests_matching("PATCH", "/virtualservices/model-summarizer")
        .iter()
        .filter(|r| r.body.contains("\"spec\""))
        .count();
    check(
        "no weight was written",
        spec_writes == 0,
        spec_writes,
        &logs,
    );
    let state = recorded_rollout(&rig);
    check(
        "the pause is recorded on the object",
        state["rollout"]["phase"] == "paused",
        &state,
        &logs,
    );
}

/// Four canaries go through the drill's plan (5%, 25%, 50%, then 100%
/// soaked), each turning bad in a different place: in stage 1, 2 or 3, or
/// in the soak. Each is rolled back to 0% from where it stood, with one
/// incident ticket naming that stage and weight, and goes no further.
#[tokio::test(flavor = "multi_thread")]
async fn a_rollback_from_each_stage_and_from_the_soak_sets_zero_and_opens_one_ticket_each() {
    let rig = Rig::start("drill-rollout-each-stage", "[auto_rollback]").await;
    // The stage each model turns bad in (by its weight), and its name.
    let cases: [(&str, i64); 4] = [("s1", 5), ("s2", 25), ("s3", 50), ("soak", 100)];
    for (model, _) in cases {
        rig.kube.put(KubeFixture::virtual_service(
            "ml-serving",
            &format!("model-{model}"),
            100,
            0,
        ));
    }
    let daemon = rig.spawn_with("daemon", |text| {
        format!("{text}{PLAN}  incident: [pager]\n")
    });
    wait_for_assignment(&daemon);
    let weight = |model: &str| {
        rig.kube
            .object("VirtualService", "ml-serving", &format!("model-{model}"))
            .and_then(|vs| vs["spec"]["http"][0]["route"][1]["weight"].as_i64())
    };
    let p = producer(&rig.broker.bootstrap());
    let mut bad = [false; 4];
    let mut back = [false; 4];
    // Bounded: 60 s of events, 100 ms apart.
    for _ in 0..600 {
        for (i, (model, at)) in cases.iter().enumerate() {
            let now = weight(model);
            bad[i] |= now == Some(*at);
            back[i] |= bad[i] && now == Some(0);
            let value = if bad[i] { 0.2 } else { 0.001 };
            let event = format!(
                r#"{{"type":"metric","ts":"{}","name":"canary_error_rate","value":{value},"labels":{{"model":"{model}","namespace":"ml-serving"}}}}"#,
                Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true)
            );
            send(&p, "events", 0, model, event.as_bytes()).await;
        }
        if back.iter().all(|b| *b) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let audit = rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .filter(|v| v["kind"] == "rollout" && v["event"] == "rolled_back")
            .count()
            >= 4
    });
    let logs = daemon.log_text();
    for (i, (model, at)) in cases.iter().enumerate() {
        let changes: Vec<(String, u64, u64)> = audit
            .iter()
            .filter(|r| r["kind"] == "rollout" && r["subject"]["model"] == *model)
            .filter(|r| r["event"] != "paused" && r["event"] != "resumed")
            .map(|r| {
                (
                    r["event"].as_str().unwrap().to_string(),
                    r["weight"].as_u64().unwrap(),
                    r["stage"].as_u64().unwrap(),
                )
            })
            .collect();
        let stage = [5, 25, 50, 100].iter().position(|w| w == at).unwrap() as u64 + 1;
        let last = changes.last().cloned();
        check(
            &format!("{model}: rolled back to 0 from stage {stage} ({at}%), nothing after"),
            back[i] && last == Some(("rolled_back".to_string(), 0, stage)),
            format!("{changes:?}"),
            &logs,
        );
        check(
            &format!("{model}: it went no further than {at}% before"),
            changes.iter().all(|(_, w, _)| *w as i64 <= *at),
            format!("{changes:?}"),
            &logs,
        );
        let tickets: Vec<Value> = rig
            .pages()
            .into_iter()
            .filter(|p| {
                let text = p.to_string();
                text.contains("rolled_back") && text.contains(&format!("{model} "))
            })
            .collect();
        check(
            &format!("{model}: one incident ticket, with its stage"),
            tickets.len() == 1 && tickets[0].to_string().contains(&format!("(stage {stage})")),
            format!("{tickets:#?}"),
            &logs,
        );
        check(
            &format!("{model}: the canary is at 0"),
            weight(model) == Some(0),
            format!("{:?}", weight(model)),
            &logs,
        );
    }
}

/// An Argo Rollout carried by the live controller: canaryd judges, Argo
/// moves the weights. Each stage passed promotes the Rollout to that
/// stage's `setWeight` step through its status, and the promotion to 100%
/// takes it to the end of its steps; no weight is written behind Argo.
#[tokio::test(flavor = "multi_thread")]
async fn an_argo_rollout_is_promoted_step_by_step_through_its_status() {
    let rig = Rig::start("drill-rollout-argo", "[auto_rollback]").await;
    let mut rollout = KubeFixture::rollout("ml-serving", "model-summarizer");
    // Argo paused at its first step: `setWeight: 10`, then `pause`.
    rollout["status"]["pauseConditions"] = serde_json::json!([{"reason": "CanaryPauseStep"}]);
    rig.kube.put(rollout);
    let daemon = rig.spawn_with("daemon", |text| {
        format!(
            "{}rollouts:\n  receiver: argo\n  default:\n    stages: [{{weight: 10, hold: 3s}}, {{weight: 50, hold: 3s}}]\n    soak: 2s\n",
            text.replace(
                "  pager: ",
                &format!(
                    "  argo:\n    type: kube\n    kubeconfig: {}\n    target: {{kind: Rollout, namespace: ml-serving, name: 'model-{{{{ model }}}}'}}\n  pager: ",
                    rig.kube.kubeconfig().display()
                ),
            )
        )
    });
    wait_for_assignment(&daemon);
    let feed = Feed::start(&rig.broker.bootstrap());
    let audit = rig.audit_until(|r| {
        r.iter()
            .map(Record::json)
            .any(|v| v["kind"] == "rollout" && v["event"] == "complete")
    });
    feed.stop().await;
    let logs = daemon.log_text();
    let steps: Vec<(String, u64)> = rollout_changes(&audit)
        .into_iter()
        .map(|(e, w, _)| (e, w))
        .collect();
    check(
        "stage 10%, stage 50%, promoted, complete",
        steps
            == [
                ("stage".to_string(), 10),
                ("stage".to_string(), 50),
                ("promoted".to_string(), 100),
                ("complete".to_string(), 100),
            ],
        format!("{steps:?}"),
        &logs,
    );
    let status: Vec<Value> = rig
        .kube
        .requests_matching("PATCH", "/rollouts/model-summarizer/status")
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.json()["status"].clone())
        .collect();
    check(
        "two promotions through /status: to step 2 (setWeight 50), then past the last step",
        status.len() == 2
            && status[0]["currentStepIndex"] == 2
            && status[1]["currentStepIndex"] == 4
            && status.iter().all(|s| s["pauseConditions"].is_null()),
        format!("{status:#?}"),
        &logs,
    );
    let spec_writes = rig
        .kube
        .requests_matching("PATCH", "/rollouts/model-summarizer")
        .len();
    check(
        "no write behind Argo's back",
        spec_writes == 0,
        spec_writes,
        &logs,
    );
    let rollout = rig
        .kube
        .object("Rollout", "ml-serving", "model-summarizer")
        .unwrap();
    check(
        "the Rollout is at the end of its steps, not aborted",
        rollout["status"]["currentStepIndex"] == 4 && rollout["status"]["abort"] == false,
        &rollout["status"],
        &logs,
    );
}

/// The API server refuses the write of stage 2's weight (403): the rollout
/// does not go on as if it were set. It pauses with the reason, the canary
/// keeps stage 1's weight, and a resume (once the permission is fixed)
/// sets it.
#[tokio::test(flavor = "multi_thread")]
async fn a_weight_the_api_server_refuses_pauses_the_rollout_instead_of_going_on() {
    let rig = Rig::start("drill-rollout-refused", "[auto_rollback]").await;
    let port = canaryd_tests::tansu::free_port();
    let daemon = rig.spawn_with("daemon", |text| {
        format!(
            "{text}rollouts:\n  receiver: kube\n  default:\n    stages: [{{weight: 5, hold: 6s}}, {{weight: 25, hold: 1h}}]\n    soak: 1h\nhttp:\n  listen: 127.0.0.1:{port}\n"
        )
    });
    wait_for_assignment(&daemon);
    let feed = Feed::start(&rig.broker.bootstrap());
    rig.audit_until(|r| {
        r.iter().map(Record::json).any(|v| {
            v["kind"] == "outcome" && v["connector"] == "kube" && v["outcome"] == "succeeded"
        })
    });
    rig.kube
        .fail_next("PATCH", "/virtualservices/model-summarizer", 1, 403);
    let why = "the canary's weight could not be set to 25%";
    rig.audit_until(|r| {
        r.iter().map(Record::json).any(|v| {
            v["kind"] == "rollout"
                && v["event"] == "paused"
                && v["reason"].as_str().is_some_and(|s| s.contains(why))
        })
    });
    let logs = daemon.log_text();
    check(
        "the canary keeps stage 1's 5%",
        rig.canary_weight() == 5,
        rig.canary_weight(),
        &logs,
    );
    let (_, body) = http(
        "GET",
        &format!("http://127.0.0.1:{port}/api/v1/rollouts/summarizer"),
        None,
    );
    let shown: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    check(
        "the API shows it paused, with the API server's answer",
        shown["state"] == "paused"
            && shown["phase"]
                .as_str()
                .is_some_and(|p| p.contains(why) && p.contains("403")),
        &shown,
        &logs,
    );
    let (code, resumed) = http(
        "POST",
        &format!("http://127.0.0.1:{port}/api/v1/rollouts/summarizer/resume"),
        Some(r#"{"by":"alice"}"#),
    );
    check("resume answers", code == 200, &resumed, &logs);
    let mut weight = rig.canary_weight();
    for _ in 0..100 {
        if weight == 25 {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        weight = rig.canary_weight();
    }
    feed.stop().await;
    check(
        "after the resume, stage 2's weight is set",
        weight == 25,
        weight,
        &daemon.log_text(),
    );
}
