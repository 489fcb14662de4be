//! canaryd against Prometheus and Alertmanager, side by side, at their
//! tightest settings: the same breach, at the same instant, to both.
//!
//! - canaryd: the breach is a metric event produced to Kafka (Tansu on
//!   127.0.0.1); `canaryd run` (in-process, release build) evaluates a rule
//!   with `duration: 0s` and rolls back through kube-rs. Measured: breach →
//!   the rollback PATCH arriving at the Kubernetes API server fixture.
//! - Prometheus (Debian's 2.42) scrapes an exporter every 1 s and evaluates
//!   the same condition every 1 s with `for: 0s`; Alertmanager (Debian's
//!   0.25) with `group_wait: 0s` sends the webhook. Measured: breach → the
//!   webhook arriving. That is before anything acts on it.
//!
//! Each breach is a fresh model, so neither side has state for it; the
//! breaches are spread over the scrape cycle. Prints medians, p99s and the
//! ratio, from one run. Goal: canaryd at least 100 times faster.
//!
//! Run: `tests/bench/side-by-side.sh` (or `cargo bench -p canaryd-tests
//! --bench peer`; needs Tansu, prometheus and prometheus-alertmanager,
//! which tests/run installs).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a broken benchmark should stop loudly

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use canaryd::config::Config;
use canaryd::run::Live;
use canaryd_tests::kube_fixture::KubeFixture;
use canaryd_tests::local_http::LocalHttp;
use canaryd_tests::receivers::Receivers;
use canaryd_tests::tansu::{Tansu, free_port};
use http_body_util::Full;
use hyper::Response;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio_util::sync::CancellationToken;

/// Breaches measured.
const BREACHES: usize = 30;
/// How long one breach may take to reach both, at most.
const LIMIT: Duration = Duration::from_secs(30);

/// A server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(url: &str) {
    let start = Instant::now();
    while start.elapsed() < LIMIT {
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", url])
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} did not come up");
}

fn alertmanager(dir: &std::path::Path, webhook: &str) -> (Server, u16) {
    let port = free_port();
    let config = dir.join("alertmanager.yml");
    std::fs::write(
        &config,
        format!(
            "route:
  receiver: hook
  group_by: [alertname, model]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: hook
    webhook_configs:
      - url: {webhook}
        send_resolved: false
"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus-alertmanager")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--cluster.listen-address=")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus-alertmanager is installed by tests/run");
    let server = Server(child);
    wait_ready(&format!("http://127.0.0.1:{port}/-/ready"));
    (server, port)
}

fn prometheus(dir: &std::path::Path, exporter: u16, alertmanager: u16) -> Server {
    let port = free_port();
    std::fs::write(
        dir.join("rules.yml"),
        "groups:
  - name: canary
    interval: 1s
    rules:
      - alert: CanaryErrorRateHigh
        expr: canary_error_rate > 0.05
        for: 0s
        labels: {severity: critical}
",
    )
    .unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files: [rules.yml]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ['127.0.0.1:{alertmanager}']}}]
scrape_configs:
  - job_name: models
    static_configs: [{{targets: ['127.0.0.1:{exporter}']}}]
"
        ),
    )
    .unwrap();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("prom-data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed by tests/run");
    let server = Server(child);
    wait_ready(&format!("http://127.0.0.1:{port}/-/ready"));
    server
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Tansu::start();
    broker
        .create_topics(&[("events", 1), ("events-dlq", 1)])
        .await;
    let kube = KubeFixture::start();
    for i in 0..BREACHES {
        kube.put(KubeFixture::virtual_service(
            "ml-serving",
            &format!("model-m{i}"),
            90,
            10,
        ));
    }

    // canaryd: the breach rule, a kube receiver, Kafka.
    std::fs::write(
        dir.path().join("rules.yaml"),
        "alerts:
  - name: Canary Error Rate High
    condition: canary_error_rate > 0.05
    duration: 0s
    severity: critical
    action: auto_rollback
",
    )
    .unwrap();
    let config = format!(
        "rules: [rules.yaml]
receivers:
  kube:
    type: kube
    kubeconfig: {kubeconfig}
    target: {{kind: VirtualService, namespace: ml-serving, name: 'model-{{{{ model }}}}'}}
routes:
  auto_rollback: {{receivers: [kube]}}
kafka:
  brokers: {bootstrap}
  group_id: canaryd-peer
  topics: [events]
  dead_letter_topic: events-dlq
",
        kubeconfig = kube.kubeconfig().display(),
        bootstrap = broker.bootstrap(),
    );
    let loaded = Config::parse(&dir.path().join("canaryd.yaml"), &config)
        .unwrap()
        .load()
        .unwrap();
    let shutdown = CancellationToken::new();
    let live = Live::new(loaded, "peer".into()).unwrap();
    let canaryd = tokio::spawn(live.run(shutdown.clone()));

    // Prometheus and Alertmanager: an exporter whose values the breach sets.
    let exposed: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    let served = exposed.clone();
    let exporter = LocalHttp::start("exporter", move |_req| {
        let body = served.lock().unwrap().clone();
        async move {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            Ok(r)
        }
    });
    let hooks = Receivers::start();
    let (_am, am_port) = alertmanager(dir.path(), &hooks.webhook_url("peer"));
    let _prom = prometheus(dir.path(), exporter.port(), am_port);

    // No batching on the producing side: the figure is the broker path.
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("linger.ms", "0")
        .create()
        .unwrap();
    // Warm up: canaryd joined and caught up, Prometheus scraping.
    let warm = r#"{"type":"metric","ts":"2026-03-01T12:00:00Z","name":"canary_error_rate","value":0.0,"labels":{"model":"warm"}}"#;
    let _ = canaryd_tests::kafka::send(&p, "events", 0, "warm", warm.as_bytes()).await;
    tokio::time::sleep(Duration::from_secs(5)).await;

    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for i in 0..BREACHES {
        let model = format!("m{i}");
        // Spread the breaches over the 1 s scrape and evaluation cycle.
        tokio::time::sleep(Duration::from_millis(700 + (i as u64 * 379) % 1000)).await;
        let wall = chrono::Utc::now();
        let event = format!(
            r#"{{"type":"metric","ts":"{}","name":"canary_error_rate","value":0.2,"labels":{{"model":"{model}"}}}}"#,
            wall.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        );
        // The breach: both see it now.
        let breach = Instant::now();
        {
            let mut text = exposed.lock().unwrap();
            text.push_str(&format!("canary_error_rate{{model=\"{model}\"}} 0.2\n"));
        }
        let record = FutureRecord::to("events")
            .partition(0)
            .key(&model)
            .payload(&event);
        if let Err((e, _)) = p.send(record, Duration::from_secs(10)).await {
            panic!("produce: {e}");
        }
        let path = format!("/virtualservices/model-{model}");
        let start = Instant::now();
        let (mut patched, mut hooked) = (None, None);
        while (patched.is_none() || hooked.is_none()) && start.elapsed() < LIMIT {
            if patched.is_none() {
                patched = kube
                    .requests()
                    .into_iter()
                    .find(|r| r.method == "PATCH" && r.path.ends_with(&path))
                    .map(|r| r.at);
            }
            if hooked.is_none() {
                hooked = hooks
                    .requests()
                    .into_iter()
                    .find(|r| r.body.contains(&format!("\"model\":\"{model}\"")))
                    .map(|r| r.at);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let (Some(patched), Some(hooked)) = (patched, hooked) else {
            panic!("breach {i}: canaryd {patched:?}, Alertmanager {hooked:?} within {LIMIT:?}");
        };
        ours.push(patched.saturating_duration_since(breach));
        theirs.push(hooked.saturating_duration_since(breach));
    }
    shutdown.cancel();
    let _ = canaryd.await;

    ours.sort();
    theirs.sort();
    let (our50, our99) = (percentile(&ours, 0.5), percentile(&ours, 0.99));
    let (their50, their99) = (percentile(&theirs, 0.5), percentile(&theirs, 0.99));
    println!("{BREACHES} breaches, each a fresh model, spread over the 1 s cycle:");
    println!(
        "canaryd (Kafka -> rule -> kube-rs PATCH):                 p50 {:8.2} ms   p99 {:8.2} ms",
        ms(our50),
        ms(our99)
    );
    println!(
        "Prometheus + Alertmanager (scrape 1s, eval 1s, for 0s,   p50 {:8.2} ms   p99 {:8.2} ms",
        ms(their50),
        ms(their99)
    );
    println!("  group_wait 0s -> webhook, before any action)");
    println!(
        "ratio: {:.0}x faster at the median, {:.0}x at p99 (goal: >= 100x)",
        their50.as_secs_f64() / our50.as_secs_f64(),
        their99.as_secs_f64() / our99.as_secs_f64()
    );
}
