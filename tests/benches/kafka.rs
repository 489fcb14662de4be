//! Through a real broker (Tansu on 127.0.0.1), in one run:
//!
//! 1. JSON decode alone, and decode + analytics + evaluation in-process,
//!    on one core: the ceilings.
//! 2. A bare rdkafka consumer reading N inference events: the broker's rate.
//! 3. `canaryd run` (in-process, one consumer) reading the same N events into
//!    decisions: at least 400,000 events/s and 40 % of the bare rate.
//!    Then again with durability on: changelog, audit topic and HTTP
//!    server (goal: at least 80 % of the run without them); with every
//!    model judged (goal: at most 10 % below the run without); and with the
//!    configuration shipped for Kubernetes itself
//!    (`deploy/k8s/base/config/canaryd.yaml`, see [`shipped`]).
//! 4. Latency from producing the event that completes a rule's duration to
//!    its action reaching the pipeline's connector: p50 and p99.
//! 5. Restoring a partition of 100,000 subjects from the changelog (goal:
//!    under 5 s).
//!
//! Run: `cargo bench -p canaryd-tests --bench kafka` (needs Tansu: tests/run installs it).
//! `BENCH_ONLY=restore` runs step 5 alone; `BENCH_ONLY=judge` measures the
//! canary judge's cost in-process (every model judged, against none; no
//! broker), `BENCH_ONLY=judge-e2e` end to end in alternating pairs;
//! `BENCH_ONLY=rollout` measures
//! the rollout controller's overhead in-process (decode, engine, and the
//! controller with all 1,000 models under the playbook's plan, against
//! none; no broker); `RUST_LOG=canaryd=info` shows the daemon's log.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a broken benchmark should stop loudly

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use canaryd::config::Config;
use canaryd::run::Live;
use canaryd_connectors::connector::BoxFuture;
use canaryd_connectors::{Action, Connector, ConnectorError, Outcome, OutcomeKind};
use canaryd_tests::kafka::{producer, send, send_all};
use canaryd_tests::repo;
use canaryd_tests::tansu::Tansu;
use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use std::sync::atomic::Ordering;
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 500_000;
const MODELS: usize = 1000;
const LATENCY_SAMPLES: usize = 2000;

fn inference(i: usize) -> (String, Vec<u8>) {
    inference_on(i, i.is_multiple_of(10))
}

/// Like [`inference`], but every model's canary serves one round in ten,
/// so that all 1,000 models have canary traffic.
fn inference_every_canary(i: usize) -> (String, Vec<u8>) {
    inference_on(i, (i / MODELS).is_multiple_of(10))
}

fn inference_on(i: usize, canary: bool) -> (String, Vec<u8>) {
    let model = format!("model-{:04}", i % MODELS);
    let track = if canary { "canary" } else { "stable" };
    let ms = i / 50; // 50 events per millisecond of event time
    let line = format!(
        r#"{{"type":"inference","ts":"2026-03-01T12:{:02}:{:02}.{:03}Z","model":"{model}","version":"v2.1.0","track":"{track}","latency_ms":{}.5,"error":{},"cost_usd":0.0021,"group":"{}","prediction":{},"label":{}}}"#,
        (ms / 60_000) % 60,
        (ms / 1000) % 60,
        ms % 1000,
        200 + (i * 7919) % 1800,
        i.is_multiple_of(97),
        ["A", "B", "C"][i % 3],
        i % 2,
        (i / 2) % 2,
    );
    (model, line.into_bytes())
}

fn config(bootstrap: &str, topic: &str, group: &str, rules: &Path) -> canaryd::config::Loaded {
    config_with(bootstrap, topic, group, &[rules], "", "")
}

/// [`config`] with the judge's rules too (`deploy/examples/judge.yaml`),
/// so that every model is judged.
fn judged(bootstrap: &str, topic: &str, group: &str, rules: &Path) -> canaryd::config::Loaded {
    let judge = repo("deploy/examples/judge.yaml");
    config_with(bootstrap, topic, group, &[rules, &judge], "", "")
}

/// Durability on: the changelog, the audit topic and the HTTP server.
fn durable(bootstrap: &str, topic: &str, group: &str, rules: &Path) -> canaryd::config::Loaded {
    let port = canaryd_tests::tansu::free_port();
    config_with(
        bootstrap,
        topic,
        group,
        &[rules],
        "  audit_topic: bench-audit\n  changelog_topic: bench-changelog\n",
        &format!("http:\n  listen: 127.0.0.1:{port}\n"),
    )
}

/// The configuration shipped for Kubernetes,
/// `deploy/k8s/base/config/canaryd.yaml`, with its rules, HTTP server (and
/// so metrics), audit, changelog and silences topics, changed only where
/// this machine differs: the broker, topic names, secrets from files here,
/// the API server fixture's kubeconfig, no SASL,
/// the default assignment strategy (on Tansu 0.6.0 cooperative members
/// lose their partitions when another dies), and dry run (the cluster's
/// receivers are not here).
fn shipped(
    bootstrap: &str,
    topic: &str,
    group: &str,
    dir: &Path,
    kubeconfig: &Path,
) -> canaryd::config::Loaded {
    use serde_yaml_ng::Value;
    let path = repo("deploy/k8s/base/config/canaryd.yaml");
    let mut config: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let token = dir.join("webhook-token");
    std::fs::write(&token, "bench-token").unwrap();
    let port = canaryd_tests::tansu::free_port();
    let set = |v: &mut Value, key: &str, to: Value| {
        v.as_mapping_mut().unwrap().insert(key.into(), to);
    };
    set(&mut config, "dry_run", true.into());
    let http = config.get_mut("http").unwrap();
    set(http, "listen", format!("127.0.0.1:{port}").into());
    set(
        http,
        "auth",
        serde_yaml_ng::from_str(&format!("{{bearer: {{file: {}}}}}", token.display())).unwrap(),
    );
    let kafka = config.get_mut("kafka").unwrap();
    for (key, value) in [
        ("brokers", bootstrap),
        ("group_id", group),
        ("dead_letter_topic", "bench-dlq"),
        ("audit_topic", "bench-audit"),
        ("changelog_topic", "bench-changelog"),
        ("silences_topic", "bench-silences"),
    ] {
        set(kafka, key, value.into());
    }
    set(kafka, "topics", vec![Value::from(topic)].into());
    let kafka = kafka.as_mapping_mut().unwrap();
    kafka.remove("properties");
    kafka.remove("assignment_strategy");
    // The receivers' secrets (`{env: …}` or `{file: /var/run/secrets/…}`)
    // from files here; they are read at start even in dry run.
    let receivers = config
        .get_mut("receivers")
        .unwrap()
        .as_mapping_mut()
        .unwrap();
    // In-cluster credentials are not here: the API server fixture's.
    let kube = receivers.get_mut("kube").unwrap();
    set(kube, "kubeconfig", kubeconfig.display().to_string().into());
    for (name, receiver) in receivers.iter_mut() {
        for (key, value) in receiver.as_mapping_mut().unwrap().iter_mut() {
            let secret = value
                .as_mapping()
                .is_some_and(|m| m.contains_key("env") || m.contains_key("file"));
            if !secret {
                continue;
            }
            let (name, key) = (name.as_str().unwrap(), key.as_str().unwrap());
            let file = dir.join(format!("{name}-{key}"));
            let content = if key == "url" {
                "http://127.0.0.1:9/"
            } else {
                "bench-secret"
            };
            std::fs::write(&file, content).unwrap();
            *value = serde_yaml_ng::from_str(&format!("{{file: {}}}", file.display())).unwrap();
        }
    }
    let text = serde_yaml_ng::to_string(&config).unwrap();
    // Parsed as if it sat where it ships, so its rule files are found.
    Config::parse(&path, &text).unwrap().load().unwrap()
}

fn config_with(
    bootstrap: &str,
    topic: &str,
    group: &str,
    rules: &[&Path],
    kafka_extra: &str,
    extra: &str,
) -> canaryd::config::Loaded {
    let rules: Vec<String> = rules.iter().map(|r| r.display().to_string()).collect();
    let text = format!(
        "rules: [{}]\ndry_run: true\nkafka:\n  brokers: {bootstrap}\n  group_id: {group}\n  topics: [{topic}]\n  dead_letter_topic: bench-dlq\n{kafka_extra}{extra}",
        rules.join(", ")
    );
    Config::parse(Path::new("bench.yaml"), &text)
        .unwrap()
        .load()
        .unwrap()
}

/// Records when each action reaches it, by model.
#[derive(Default)]
struct Stopwatch {
    seen: Mutex<HashMap<String, Instant>>,
}

impl Connector for Stopwatch {
    fn name(&self) -> &str {
        "stopwatch"
    }

    fn execute<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Outcome, ConnectorError>> {
        let now = Instant::now();
        if let Some(model) = action.subject.get("model") {
            self.seen
                .lock()
                .unwrap()
                .entry(model.clone())
                .or_insert(now);
        }
        Box::pin(async move {
            Ok(Outcome {
                key: action.key.clone(),
                connector: "stopwatch".into(),
                kind: OutcomeKind::Succeeded,
                dry_run: true,
                detail: String::new(),
            })
        })
    }
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

/// The topics every step uses.
const TOPICS: [(&str, i32); 8] = [
    ("bench-events", 1),
    ("bench-dlq", 1),
    ("bench-latency", 1),
    ("bench-audit", 1),
    ("bench-changelog", 1),
    ("bench-restore", 1),
    ("bench-restore-changelog", 1),
    ("bench-silences", 1),
];

async fn bench() {
    let rules = repo("deploy/examples/canary-alerts.yaml");
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "rollout") {
        rollout_overhead(&rules);
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "judge") {
        judge_overhead(&rules);
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "judge-e2e") {
        judge_end_to_end(&rules).await;
        return;
    }
    if std::env::var("BENCH_ONLY").is_ok_and(|only| only == "restore") {
        let broker = Tansu::start();
        broker.create_topics(&TOPICS).await;
        restore(&broker, &rules).await;
        return;
    }
    let messages: Vec<(String, Vec<u8>)> = (0..EVENTS).map(inference).collect();

    // 1. In-process ceilings, one core.
    let start = Instant::now();
    // Decoded events are dropped at once, as the full path below does, so
    // that neither loop pays for keeping half a million events.
    for (_, m) in &messages {
        std::hint::black_box(canaryd_rules::decode(m).unwrap());
    }
    let decode = start.elapsed();
    let loaded = config("127.0.0.1:1", "x", "x", &rules);
    let mut engine = canaryd_rules::Engine::new(
        loaded.rules.clone(),
        &loaded.vocabulary,
        loaded.config.engine.clone(),
    );
    let mut out = Vec::new();
    let start = Instant::now();
    for (_, m) in &messages {
        let event = canaryd_rules::decode(m).unwrap();
        engine.ingest(&event, &mut out);
        out.clear();
    }
    let full = start.elapsed();
    println!(
        "in-process, one core: decode alone {:.0} events/s; decode + analytics + evaluation {:.0} events/s",
        rate(EVENTS, decode),
        rate(EVENTS, full)
    );
    let with_judge = judge_pass(&judged("127.0.0.1:1", "x", "x", &rules), &messages);
    println!(
        "in-process, one core, every model judged: decode + analytics + evaluation + judge {:.0} events/s",
        rate(EVENTS, with_judge)
    );

    // 2. The broker, through a bare consumer.
    let broker = Tansu::start();
    broker.create_topics(&TOPICS).await;
    let p = producer(&broker.bootstrap());
    send_all(&p, "bench-events", 0, &messages).await;

    let bare: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "bare")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    bare.subscribe(&["bench-events"]).unwrap();
    let mut first = None;
    for n in 0..EVENTS {
        bare.recv().await.unwrap();
        if n == 0 {
            first = Some(Instant::now());
        }
    }
    let bare_time = first.unwrap().elapsed();
    drop(bare);
    let bare_rate = rate(EVENTS - 1, bare_time);
    println!("bare rdkafka consumer: {bare_rate:.0} events/s");

    // 3. canaryd, one consumer, into decisions; bare, then durable.
    let canaryd_rate = consume_all(config(
        &broker.bootstrap(),
        "bench-events",
        "canaryd-bench",
        &rules,
    ))
    .await;
    println!(
        "canaryd run, one consumer: {canaryd_rate:.0} events/s = {:.0}% of the bare consumer",
        100.0 * canaryd_rate / bare_rate
    );
    let durable_rate = consume_all(durable(
        &broker.bootstrap(),
        "bench-events",
        "canaryd-durable",
        &rules,
    ))
    .await;
    println!(
        "canaryd run with changelog, audit and HTTP: {durable_rate:.0} events/s = {:.0}% of the run without them",
        100.0 * durable_rate / canaryd_rate
    );
    let judged_rate = consume_all(judged(
        &broker.bootstrap(),
        "bench-events",
        "canaryd-judged",
        &rules,
    ))
    .await;
    println!(
        "canaryd run with every model judged (deploy/examples/judge.yaml too): {judged_rate:.0} events/s = {:.0}% of the run without",
        100.0 * judged_rate / canaryd_rate
    );
    let scratch = tempfile::tempdir().unwrap();
    let kube = canaryd_tests::kube_fixture::KubeFixture::start();
    let shipped_rate = consume_all(shipped(
        &broker.bootstrap(),
        "bench-events",
        "canaryd-shipped",
        scratch.path(),
        kube.kubeconfig(),
    ))
    .await;
    println!(
        "canaryd run as shipped (deploy/k8s/base/config/canaryd.yaml: both rule files, HTTP and metrics, audit, changelog, silences): {shipped_rate:.0} events/s = {:.0}% of the bare canaryd run",
        100.0 * shipped_rate / canaryd_rate
    );

    // 4. Latency: each subject's second error-rate sample completes the
    //    rule's 5 minutes; time from producing it to its action.
    // No batching delay on the producing side: the figure is the broker path.
    let p: rdkafka::producer::FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "0")
        .create()
        .unwrap();
    let stopwatch = Arc::new(Stopwatch::default());
    let live = Live::new(
        config(
            &broker.bootstrap(),
            "bench-latency",
            "canaryd-latency",
            &rules,
        ),
        "bench".into(),
    )
    .unwrap()
    .with_connector(stopwatch.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(live.run(shutdown.clone()));
    // Subject i starts at 12:00 + i ms and completes 5 minutes later, so
    // each completing event is the one that moves time past its own due.
    let metric = |i: usize, minute: u32| {
        format!(
            r#"{{"type":"metric","ts":"2026-03-01T12:{minute:02}:{:02}.{:03}Z","name":"canary_error_rate","value":0.2,"labels":{{"model":"l{i}"}}}}"#,
            i / 1000,
            i % 1000
        )
    };
    let warm: Vec<(String, Vec<u8>)> = (0..LATENCY_SAMPLES)
        .map(|i| (format!("l{i}"), metric(i, 0).into_bytes()))
        .collect();
    send_all(&p, "bench-latency", 0, &warm).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // let the consumer join and catch up
    let mut sent = HashMap::new();
    for i in 0..LATENCY_SAMPLES {
        let model = format!("l{i}");
        let line = metric(i, 5);
        sent.insert(model.clone(), Instant::now());
        send(&p, "bench-latency", 0, &model, line.as_bytes()).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while stopwatch.seen.lock().unwrap().len() < LATENCY_SAMPLES && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let mut latencies: Vec<f64> = {
        let seen = stopwatch.seen.lock().unwrap();
        sent.iter()
            .filter_map(|(m, t)| {
                seen.get(m)
                    .map(|s| s.duration_since(*t).as_secs_f64() * 1000.0)
            })
            .collect()
    };
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "latency, completing event produced -> action at the connector ({} samples): p50 {:.2} ms, p99 {:.2} ms",
        latencies.len(),
        pct(0.50),
        pct(0.99)
    );

    restore(&broker, &rules).await;
}

/// 5. Restore: one partition of RESTORE_SUBJECTS subjects, checkpointed by
///    one run at its shutdown, restored by the next.
async fn restore(broker: &Tansu, rules: &Path) {
    let p = producer(&broker.bootstrap());
    let subjects: Vec<(String, Vec<u8>)> = (0..RESTORE_SUBJECTS)
        .map(|i| {
            let model = format!("r{i:06}");
            let line = format!(
                r#"{{"type":"inference","ts":"2026-03-01T12:00:00Z","model":"{model}","version":"v2","track":"canary","latency_ms":120.5,"error":false,"cost_usd":0.0021}}"#
            );
            (model, line.into_bytes())
        })
        .collect();
    send_all(&p, "bench-restore", 0, &subjects).await;
    let restore_config = || {
        config_with(
            &broker.bootstrap(),
            "bench-restore",
            "canaryd-restore",
            &[rules],
            "  changelog_topic: bench-restore-changelog\n",
            "",
        )
    };
    consume_all_of(restore_config(), RESTORE_SUBJECTS).await;
    let live = Live::new(restore_config(), "bench".into()).unwrap();
    let stats = live.stats.clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(live.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(120);
    let settled =
        || stats.restores.load(Ordering::Relaxed) + stats.rebuilds.load(Ordering::Relaxed) > 0;
    while !settled() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    if stats.restores.load(Ordering::Relaxed) > 0 {
        println!(
            "restore from the changelog: {} subjects in {} ms",
            stats.restored_subjects.load(Ordering::Relaxed),
            stats.restore_millis.load(Ordering::Relaxed)
        );
    } else {
        // Seen with Tansu's memory storage: records it acknowledged at the
        // end of a large burst were missing when read back.
        println!(
            "restore from the changelog: the broker did not have the last checkpoint; the partition was rebuilt from the input instead (run again)"
        );
    }
}

const RESTORE_SUBJECTS: usize = 100_000;

/// Runs `canaryd run` over the whole event topic; events per second.
async fn consume_all(loaded: canaryd::config::Loaded) -> f64 {
    consume_all_of(loaded, EVENTS).await
}

/// Runs `canaryd run` until it consumed `events`, then shuts it down
/// (a last checkpoint included); events per second.
async fn consume_all_of(loaded: canaryd::config::Loaded, events: usize) -> f64 {
    let live = Live::new(loaded, "bench".into()).unwrap();
    let stats = live.stats.clone();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(live.run(shutdown.clone()));
    let mut first = None;
    loop {
        let n = stats.consumed.load(Ordering::Relaxed) as usize;
        if n >= 1 && first.is_none() {
            first = Some((Instant::now(), n));
        }
        if n >= events {
            break;
        }
        if task.is_finished() {
            panic!("canaryd run ended early: {:?}", task.await);
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    let (t0, n0) = first.unwrap();
    let events_per_second = rate(events - n0, t0.elapsed());
    shutdown.cancel();
    task.await.unwrap().unwrap();
    events_per_second
}

/// The judge's cost end to end: `canaryd run` through the broker, without
/// and with every model judged, in alternating pairs (this VM's runs
/// spread more than the 10 % sought); the median of the pairs' ratios.
async fn judge_end_to_end(rules: &Path) {
    const PAIRS: usize = 7;
    let broker = Tansu::start();
    broker.create_topics(&TOPICS).await;
    let messages: Vec<(String, Vec<u8>)> = (0..EVENTS).map(inference).collect();
    let p = producer(&broker.bootstrap());
    send_all(&p, "bench-events", 0, &messages).await;
    let (mut ratios, mut with, mut without) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..PAIRS {
        let run = |judging: bool| {
            let group = format!("judge-e2e-{i}-{judging}");
            let loaded = if judging {
                judged(&broker.bootstrap(), "bench-events", &group, rules)
            } else {
                config(&broker.bootstrap(), "bench-events", &group, rules)
            };
            consume_all(loaded)
        };
        let (a, b) = if i % 2 == 0 {
            let a = run(false).await;
            (a, run(true).await)
        } else {
            let b = run(true).await;
            (run(false).await, b)
        };
        ratios.push(b / a);
        without.push(a);
        with.push(b);
    }
    for v in [&mut ratios, &mut with, &mut without] {
        v.sort_by(f64::total_cmp);
    }
    println!(
        "canaryd run end to end, every model judged against none: {:.0} events/s against {:.0} = {:.0}% (median of {PAIRS} alternating pairs, from {:.0}% to {:.0}%)",
        with[PAIRS / 2],
        without[PAIRS / 2],
        100.0 * ratios[PAIRS / 2],
        100.0 * ratios[0],
        100.0 * ratios[PAIRS - 1],
    );
}

/// One pass of decode + engine over `messages`, on one core.
fn judge_pass(loaded: &canaryd::config::Loaded, messages: &[(String, Vec<u8>)]) -> Duration {
    let mut engine = canaryd_rules::Engine::new(
        loaded.rules.clone(),
        &loaded.vocabulary,
        loaded.config.engine.clone(),
    );
    let mut out = Vec::new();
    let start = Instant::now();
    for (_, m) in messages {
        let event = canaryd_rules::decode(m).unwrap();
        engine.ingest(&event, &mut out);
        out.clear();
    }
    start.elapsed()
}

/// The judge's cost on the consume path, in-process on one core: decode +
/// engine with the playbook's rules, and with the judge's rules too (every
/// model judged at every refresh). Passes in pairs, their order
/// alternating; the median of each.
fn judge_overhead(rules: &Path) {
    const PAIRS: usize = 11;
    let messages: Vec<(String, Vec<u8>)> = (0..EVENTS).map(inference_every_canary).collect();
    let (plain, judging) = (
        config("127.0.0.1:1", "x", "x", rules),
        judged("127.0.0.1:1", "x", "x", rules),
    );
    // One pass, for an instruction counter: see tests/bench/judge-overhead.sh.
    if let Ok(mode) = std::env::var("BENCH_PASS") {
        let (loaded, messages) = match mode.as_str() {
            "setup" => (&plain, &messages[..0]),
            "with" => (&judging, &messages[..]),
            _ => (&plain, &messages[..]),
        };
        std::hint::black_box(judge_pass(loaded, messages));
        return;
    }
    let (mut without, mut with, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..PAIRS {
        let (a, b) = if i % 2 == 0 {
            let a = judge_pass(&plain, &messages);
            (a, judge_pass(&judging, &messages))
        } else {
            let b = judge_pass(&judging, &messages);
            (judge_pass(&plain, &messages), b)
        };
        ratios.push(b.as_secs_f64() / a.as_secs_f64());
        without.push(a);
        with.push(b);
    }
    for v in [&mut without, &mut with] {
        v.sort();
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "judge on decode + engine, inference events, 1,000 models all judged: {:.0} events/s with, {:.0} without ({:+.1}% time, median of {PAIRS} pairs)",
        rate(EVENTS, with[PAIRS / 2]),
        rate(EVENTS, without[PAIRS / 2]),
        (ratios[PAIRS / 2] - 1.0) * 100.0,
    );
}

/// The rollout controller's cost on the consume path, in-process on one
/// core: decode + engine, with and without a controller carrying all 1,000
/// models through the playbook's plan. Passes in pairs, their order
/// alternating; the median of the pairs' ratios.
fn rollout_overhead(rules: &Path) {
    /// Pairs of passes: this machine's noise needs many.
    const PAIRS: usize = 31;
    use canaryd_rules::rollout::controller::{Controller, NamedPlan, Plans};
    let messages: Vec<(String, Vec<u8>)> = (0..EVENTS).map(inference_every_canary).collect();
    let loaded = config("127.0.0.1:1", "x", "x", rules);
    let plans = Arc::new(Plans {
        default: Some(NamedPlan::playbook()),
        ..Plans::default()
    });
    let pass = |rollouts: bool, messages: &[(String, Vec<u8>)]| {
        let mut engine = canaryd_rules::Engine::new(
            loaded.rules.clone(),
            &loaded.vocabulary,
            loaded.config.engine.clone(),
        );
        let mut controller = Controller::new(plans.clone(), loaded.rules.clone());
        let mut out = Vec::new();
        let mut changes = 0usize;
        let start = Instant::now();
        for (_, m) in messages {
            let event = canaryd_rules::decode(m).unwrap();
            let applied = engine.ingest(&event, &mut out) == canaryd_rules::Ingested::Applied;
            if rollouts && let Some(now) = engine.watermark() {
                changes += controller
                    .after(&event, applied, engine.last_subject(), &out, now)
                    .len();
            }
            out.clear();
        }
        let took = start.elapsed();
        if rollouts && !messages.is_empty() {
            assert_eq!(controller.len(), MODELS, "every model under rollout");
        }
        std::hint::black_box(changes);
        took
    };
    // One pass, for an instruction counter: see tests/bench/controller-overhead.sh.
    if let Ok(mode) = std::env::var("BENCH_PASS") {
        let messages = if mode == "setup" {
            &messages[..0]
        } else {
            &messages[..]
        };
        std::hint::black_box(pass(mode == "with", messages));
        return;
    }
    let (mut ratios, mut without) = (Vec::new(), Vec::new());
    for i in 0..PAIRS {
        let (a, b) = if i % 2 == 0 {
            let a = pass(false, &messages);
            (a, pass(true, &messages))
        } else {
            let b = pass(true, &messages);
            (pass(false, &messages), b)
        };
        ratios.push(b.as_secs_f64() / a.as_secs_f64());
        without.push(a);
    }
    ratios.sort_by(f64::total_cmp);
    without.sort();
    println!(
        "rollout overhead on decode + engine, inference events, 1,000 models under the playbook's plan: {:+.1}% time (median of {PAIRS} pairs, from {:+.1}% to {:+.1}%); {:.0} events/s without",
        (ratios[ratios.len() / 2] - 1.0) * 100.0,
        (ratios[0] - 1.0) * 100.0,
        (ratios[ratios.len() - 1] - 1.0) * 100.0,
        rate(EVENTS, without[without.len() / 2]),
    );
}
