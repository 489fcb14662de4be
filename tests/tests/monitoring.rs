//! What Prometheus and Grafana see of a live daemon: its `/metrics` lint
//! clean, per-model figures equal to what was fed, the shipped dashboards'
//! queries name series and labels the daemon exports, the PrometheusRule
//! passes `promtool test rules`, and the series count stays flat while
//! thousands of short-lived models come and go.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use canaryd_tests::kafka::{producer, send_all};
use canaryd_tests::kube_fixture::KubeFixture;
use canaryd_tests::tansu::{Tansu, free_port};
use canaryd_tests::{Daemon, repo};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// The body of a GET, or "" when the daemon does not answer.
fn get(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", url])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(limit: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// One sample of a scrape: name, labels, value.
#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The samples of a Prometheus text-format scrape.
fn parse_scrape(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}').unwrap())),
            None => (series, BTreeMap::new()),
        };
        out.push(Sample {
            name: name.to_string(),
            labels,
            value: value.parse().unwrap_or(f64::NAN),
        });
    }
    out
}

/// `a="x",b="y\"z"` into pairs.
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    while let Some((name, after)) = rest.split_once("=\"") {
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, e)) = chars.next() {
                        value.push(match e {
                            'n' => '\n',
                            other => other,
                        });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.insert(name.trim_start_matches(',').to_string(), value);
        rest = &after[end..];
    }
    labels
}

/// The value of the one sample of `name` whose labels include `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(v))
        })
        .collect();
    assert!(found.len() <= 1, "{name} {want:?}: {found:?}");
    found.first().map(|s| s.value)
}

fn close(got: Option<f64>, want: f64, tolerance: f64, what: &str) {
    let got = got.unwrap_or_else(|| panic!("{what}: no sample"));
    assert!(
        (got - want).abs() <= tolerance * want.abs().max(1e-12),
        "{what}: {got}, want {want}"
    );
}

/// A label matcher of a PromQL selector.
#[derive(Debug)]
struct Matcher {
    label: String,
    op: String,
    value: String,
}

/// Every `canaryd_…` selector in a PromQL expression, with its matchers.
fn selectors(expr: &str) -> Vec<(String, Vec<Matcher>)> {
    let mut out = Vec::new();
    for (i, _) in expr.match_indices("canaryd_") {
        if expr[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let rest = &expr[i..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = rest[..end].to_string();
        let mut matchers = Vec::new();
        if let Some(body) = rest[end..].strip_prefix('{') {
            let body = &body[..body.find('}').unwrap()];
            for m in split_matchers(body) {
                let op_at = m.find(['=', '!']).unwrap();
                let op_len = if m[op_at..].starts_with("=~")
                    || m[op_at..].starts_with("!~")
                    || m[op_at..].starts_with("!=")
                {
                    2
                } else {
                    1
                };
                matchers.push(Matcher {
                    label: m[..op_at].trim().to_string(),
                    op: m[op_at..op_at + op_len].to_string(),
                    value: m[op_at + op_len..]
                        .trim()
                        .trim_matches('"')
                        .replace("\\\"", "\""),
                });
            }
        }
        out.push((name, matchers));
    }
    out
}

/// Matchers split at the commas outside quotes.
fn split_matchers(body: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    for c in body.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                current.push(c);
            }
            ',' if !quoted => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    if !current.trim().is_empty() {
        out.push(current);
    }
    out
}

/// Labels whose every value a live daemon exports from the start.
const CLOSED: [&str; 7] = [
    "track",
    "quantile",
    "outcome",
    "connector",
    "reason",
    "kind",
    "result",
];

/// What is wrong with `expr` against the scrape: a series it names that
/// is not exported, a label it matches on that the series lacks, or a
/// literal value of a [`CLOSED`] label no series has. Template variables
/// (`$model`) match any.
fn problems(what: &str, expr: &str, samples: &[Sample]) -> Vec<String> {
    let mut out = Vec::new();
    for (name, matchers) in selectors(expr) {
        let series: Vec<&Sample> = samples.iter().filter(|s| s.name == name).collect();
        if series.is_empty() {
            out.push(format!("{what}: {name} is not in /metrics: {expr}"));
            continue;
        }
        for m in &matchers {
            if !series.iter().any(|s| s.labels.contains_key(&m.label)) {
                out.push(format!("{what}: {name} has no label {}: {expr}", m.label));
                continue;
            }
            // Values are checked where the daemon's set of them is closed
            // and always exported; rule names are checked against the rule
            // files offline (tests/tests/deploy.rs), and alerts come and go.
            if m.value.contains('$') || m.op.starts_with('!') || !CLOSED.contains(&m.label.as_str())
            {
                continue;
            }
            let alternatives: Vec<&str> = if m.op == "=~" {
                m.value.split('|').collect()
            } else {
                vec![m.value.as_str()]
            };
            for alternative in alternatives {
                if !series
                    .iter()
                    .any(|s| s.labels.get(&m.label).map(String::as_str) == Some(alternative))
                {
                    out.push(format!(
                        "{what}: no {name} has {}=\"{alternative}\": {expr}",
                        m.label
                    ));
                }
            }
        }
    }
    out
}

/// The PromQL a Grafana dashboard runs: panel targets, annotations and
/// the template variables' queries (`label_values(metric, label)` is
/// checked as `metric{label=~"$any"}`).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push((
                format!("panel {:?}", panel["title"].as_str().unwrap_or("")),
                t["expr"].as_str().unwrap().to_string(),
            ));
        }
    }
    for a in dashboard["annotations"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(expr) = a["expr"].as_str() {
            out.push((format!("annotation {:?}", a["name"]), expr.to_string()));
        }
    }
    for v in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(q) = v["query"]["query"].as_str()
            && let Some(args) = q
                .strip_prefix("label_values(")
                .and_then(|a| a.strip_suffix(')'))
        {
            let (metric, label) = args.split_once(',').unwrap();
            out.push((
                format!("variable {:?}", v["name"]),
                format!("{}{{{}=~\"$any\"}}", metric.trim(), label.trim()),
            ));
        }
    }
    out
}

/// Rollouts through the kube receiver, staying in their first stage.
const ROLLOUTS: &str = "rollouts:
  receiver: kube
  default:
    stages:
      - { weight: 5, hold: 1h }
      - { weight: 50, hold: 1h }
";

/// The broker, the Kubernetes API fixture, and a daemon serving HTTP.
struct Rig {
    broker: Tansu,
    _kube: KubeFixture,
    daemon: Daemon,
    base: String,
    _dir: tempfile::TempDir,
}

impl Rig {
    /// A daemon with the playbook's example rules and the judge's, a kube
    /// receiver, and `extra` config appended.
    async fn start(group: &str, extra: &str) -> Rig {
        Rig::start_with(group, extra, "").await
    }

    /// [`Rig::start`], with `http_extra` added to the `http:` section.
    async fn start_with(group: &str, extra: &str, http_extra: &str) -> Rig {
        let broker = Tansu::start();
        broker
            .create_topics(&[("events", 1), ("events-dlq", 1), ("canaryd-audit", 1)])
            .await;
        let kube = KubeFixture::start();
        kube.put(KubeFixture::virtual_service(
            "ml-serving",
            "model-fraud",
            100,
            0,
        ));
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("canaryd.yaml");
        std::fs::write(
            &config,
            format!(
                "rules: [{rules}, {judge}]
receivers:
  kube:
    type: kube
    kubeconfig: {kubeconfig}
    target: {{kind: VirtualService, namespace: ml-serving, name: 'model-{{{{ model }}}}'}}
routes:
  auto_rollback: {{receivers: [kube]}}
  reduce_traffic: {{receivers: [kube]}}
http:
  listen: 127.0.0.1:{port}
{http_extra}kafka:
  brokers: {bootstrap}
  group_id: {group}
  topics: [events]
  dead_letter_topic: events-dlq
  audit_topic: canaryd-audit
{extra}",
                rules = repo("deploy/examples/canary-alerts.yaml").display(),
                judge = repo("deploy/examples/judge.yaml").display(),
                kubeconfig = kube.kubeconfig().display(),
                bootstrap = broker.bootstrap(),
            ),
        )
        .unwrap();
        let daemon = Daemon::spawn(
            &["run", "--config", config.to_str().unwrap()],
            dir.path().join("canaryd.log"),
        );
        let base = format!("http://127.0.0.1:{port}");
        assert!(
            wait_until(WAIT, || get(&format!("{base}/-/ready")).contains("ready")
                && !get(&format!("{base}/-/ready")).contains("not")),
            "{}",
            daemon.log_text()
        );
        Rig {
            broker,
            _kube: kube,
            daemon,
            base,
            _dir: dir,
        }
    }

    fn scrape(&self) -> String {
        get(&format!("{}/metrics", self.base))
    }
}

/// An inference event for `model` at `at` (ms since the epoch).
#[allow(clippy::too_many_arguments)]
fn inference(
    model: &str,
    track: &str,
    at: i64,
    latency_ms: f64,
    error: bool,
    cost: f64,
    group: &str,
    prediction: bool,
    label: bool,
) -> (String, Vec<u8>) {
    let ts = chrono::DateTime::from_timestamp_millis(at)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let line = json!({"type": "inference", "ts": ts, "model": model, "version": "v2", "track": track,
        "latency_ms": latency_ms, "error": error, "cost_usd": cost,
        "group": group, "prediction": prediction, "label": label});
    (model.to_string(), line.to_string().into_bytes())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs `promtool` with `args` in `dir`; its output, and whether it passed.
fn promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> (bool, String) {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed by tests/run (Debian's prometheus)");
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One model's canary and stable traffic, with known figures: the scrape
/// must show exactly them, lint clean, and carry every series and label
/// value the shipped dashboards query.
#[tokio::test(flavor = "multi_thread")]
async fn a_live_scrape_lints_clean_shows_what_was_fed_and_serves_every_dashboard_query() {
    // A rollout plan whose first stage holds for an hour: its gauges too.
    let rig = Rig::start("canaryd-monitoring", ROLLOUTS).await;
    // 400 requests per track over the last 40 s. Canary: 1 in 40 fails,
    // 300 ms, $0.004; group A predicts positive 1 in 2, group B 1 in 4.
    // Stable: no errors, 200 ms, $0.002, both groups 1 in 2.
    let start = now_ms() - 40_000;
    let mut lines = Vec::new();
    for i in 0..400i64 {
        let at = start + i * 100;
        let group = if i % 2 == 0 { "A" } else { "B" };
        let canary_positive = if group == "A" { i % 4 == 0 } else { i % 8 == 1 };
        lines.push(inference(
            "fraud",
            "canary",
            at,
            300.0,
            i % 40 == 0,
            0.004,
            group,
            canary_positive,
            i % 3 == 0,
        ));
        lines.push(inference(
            "fraud",
            "stable",
            at,
            200.0,
            false,
            0.002,
            group,
            (i / 2) % 2 == 0,
            i % 3 == 0,
        ));
    }
    send_all(&producer(&rig.broker.bootstrap()), "events", 0, &lines).await;
    let fed = |text: &str| {
        value(
            &parse_scrape(text),
            "canaryd_model_window_requests",
            &[("model", "fraud"), ("track", "stable")],
        ) == Some(400.0)
    };
    assert!(
        wait_until(WAIT, || fed(&rig.scrape())),
        "{}\n{}",
        rig.scrape(),
        rig.daemon.log_text()
    );
    // The rollout started at its first stage: its gauges are in the scrape.
    assert!(
        wait_until(WAIT, || rig
            .scrape()
            .contains("canaryd_rollout_weight{model=\"fraud\"} 5")),
        "{}",
        rig.scrape()
    );
    // Consumer lag comes with librdkafka's statistics, every 5 s.
    assert!(
        wait_until(WAIT, || rig.scrape().contains("canaryd_consumer_lag{")),
        "{}",
        rig.scrape()
    );
    let text = rig.scrape();
    let samples = parse_scrape(&text);

    // Event time: the partition's watermark, at least the last event fed
    // (an idle partition moves on with the clock), never past now; the
    // replica's is the least of its partitions'.
    let last_fed = (start + 399 * 100) as f64 / 1000.0;
    let partition_time = value(
        &samples,
        "canaryd_partition_event_time_seconds",
        &[("topic", "events"), ("partition", "0")],
    )
    .unwrap_or_else(|| panic!("no partition event time in\n{text}"));
    assert!(
        (last_fed..=now_ms() as f64 / 1000.0 + 1.0).contains(&partition_time),
        "{partition_time} against {last_fed}"
    );
    assert_eq!(
        value(&samples, "canaryd_event_time_seconds", &[]),
        Some(partition_time),
        "{text}"
    );

    // What was fed.
    let canary = |name: &str, extra: &[(&str, &str)]| {
        let mut want = vec![("model", "fraud"), ("track", "canary")];
        want.extend_from_slice(extra);
        value(&samples, name, &want)
    };
    let stable = |name: &str, extra: &[(&str, &str)]| {
        let mut want = vec![("model", "fraud"), ("track", "stable")];
        want.extend_from_slice(extra);
        value(&samples, name, &want)
    };
    close(
        canary("canaryd_model_window_requests", &[]),
        400.0,
        0.0,
        "canary requests",
    );
    close(
        canary("canaryd_model_error_ratio", &[]),
        10.0 / 400.0,
        1e-9,
        "canary errors",
    );
    close(
        canary("canaryd_model_success_ratio", &[]),
        390.0 / 400.0,
        1e-9,
        "canary success",
    );
    close(
        stable("canaryd_model_error_ratio", &[]),
        0.0,
        0.0,
        "stable errors",
    );
    for (q, canary_s, stable_s) in [("0.5", 0.3, 0.2), ("0.95", 0.3, 0.2), ("0.99", 0.3, 0.2)] {
        close(
            canary("canaryd_model_latency_seconds", &[("quantile", q)]),
            canary_s,
            0.01,
            &format!("canary p{q}"),
        );
        close(
            stable("canaryd_model_latency_seconds", &[("quantile", q)]),
            stable_s,
            0.01,
            &format!("stable p{q}"),
        );
    }
    close(
        canary("canaryd_model_cost_per_request_usd", &[]),
        0.004,
        1e-9,
        "canary cost",
    );
    close(
        stable("canaryd_model_cost_per_request_usd", &[]),
        0.002,
        1e-9,
        "stable cost",
    );
    close(
        canary("canaryd_model_positive_prediction_ratio", &[("group", "A")]),
        0.5,
        1e-9,
        "canary A",
    );
    close(
        canary("canaryd_model_positive_prediction_ratio", &[("group", "B")]),
        0.25,
        1e-9,
        "canary B",
    );
    close(
        canary("canaryd_model_demographic_parity_difference", &[]),
        0.25,
        1e-9,
        "DP",
    );
    close(
        canary("canaryd_model_disparate_impact_ratio", &[]),
        0.5,
        1e-9,
        "DI",
    );
    close(
        stable("canaryd_model_disparate_impact_ratio", &[]),
        1.0,
        1e-9,
        "stable DI",
    );
    assert!(canary("canaryd_model_equal_opportunity_difference", &[]).is_some());
    assert!(stable("canaryd_model_requests_per_second", &[]).unwrap() > 0.0);
    // A fresh daemon: loaded fine, and the families a dashboard rates over
    // exist before their first increment.
    assert_eq!(
        value(&samples, "canaryd_config_last_reload_successful", &[]),
        Some(1.0)
    );
    for (name, labels) in [
        (
            "canaryd_actions_total",
            vec![("connector", "kube"), ("outcome", "failed")],
        ),
        (
            "canaryd_events_dead_lettered_total",
            vec![("reason", "not_json")],
        ),
        (
            "canaryd_connector_duration_seconds_count",
            vec![("connector", "kube")],
        ),
    ] {
        assert!(
            value(&samples, name, &labels).is_some(),
            "{name} {labels:?} in\n{text}"
        );
    }

    // Prometheus' own linter finds nothing wrong with the names.
    let dir = tempfile::tempdir().unwrap();
    let (ok, lint) = promtool(dir.path(), &["check", "metrics"], Some(&text));
    assert!(ok, "promtool check metrics:\n{lint}");

    // Every query of every shipped dashboard.
    let mut errors = Vec::new();
    let mut checked = 0;
    for file in [
        "model-performance-dashboard.json",
        "fairness-dashboard.json",
        "grafana-dashboard.json",
    ] {
        let dashboard: Value = serde_json::from_str(
            &std::fs::read_to_string(repo(&format!("deploy/monitoring/{file}"))).unwrap(),
        )
        .unwrap_or_else(|e| panic!("{file} parses: {e}"));
        for (what, expr) in dashboard_queries(&dashboard) {
            checked += 1;
            errors.extend(problems(&format!("{file} {what}"), &expr, &samples));
        }
    }
    assert!(checked > 20, "{checked} queries");
    assert!(
        errors.is_empty(),
        "{}\n\nscrape:\n{text}",
        errors.join("\n")
    );
    // The checker itself catches a wrong label and a wrong value.
    assert!(!problems("x", r#"canaryd_model_error_ratio{modle="fraud"}"#, &samples).is_empty());
    assert!(
        !problems(
            "x",
            r#"canaryd_model_latency_seconds{quantile="0.9"}"#,
            &samples
        )
        .is_empty()
    );
    assert!(!problems("x", r#"canaryd_model_error_rate{model="fraud"}"#, &samples).is_empty());
}

/// The PrometheusRule's alerts, unit-tested by Prometheus' own promtool.
#[test]
fn the_prometheus_rule_passes_promtool_test_rules() {
    let rule: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo("deploy/monitoring/prometheusrule.yaml")).unwrap(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let groups = serde_yaml_ng::to_string(&serde_yaml_ng::Mapping::from_iter([(
        "groups".into(),
        rule["spec"]["groups"].clone(),
    )]))
    .unwrap();
    std::fs::write(dir.path().join("rules.yaml"), groups).unwrap();
    let test: PathBuf = repo("deploy/monitoring/prometheusrule.test.yaml");
    std::fs::copy(&test, dir.path().join("test.yaml")).unwrap();
    let (ok, out) = promtool(dir.path(), &["check", "rules", "rules.yaml"], None);
    assert!(ok, "{out}");
    let (ok, out) = promtool(dir.path(), &["test", "rules", "test.yaml"], None);
    assert!(ok, "{out}");
    // Every alert of the rule is tested.
    let tests = std::fs::read_to_string(&test).unwrap();
    let alerts: BTreeSet<&str> = rule["spec"]["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap())
        .filter_map(|r| r["alert"].as_str())
        .collect();
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no promtool test"
        );
    }
}

/// The number of samples of families whose name starts with `prefix`.
fn series_count(samples: &[Sample], prefix: &str) -> usize {
    samples
        .iter()
        .filter(|s| s.name.starts_with(prefix))
        .count()
}

/// 10,000 short-lived models, then 10,000 others, then one: the exported
/// series stay capped at `http.metrics.max_subjects` subjects, the models
/// gone (evicted) leave none behind, and the engines hold only the living.
#[tokio::test(flavor = "multi_thread")]
async fn series_and_engine_memory_stay_flat_while_ten_thousand_models_come_and_go() {
    // The export capped well below the churn.
    let rig = Rig::start_with(
        "canaryd-churn",
        "engine: {stale_after: 60s, evict_after: 120s}\n",
        "  metrics: {max_subjects: 50}\n",
    )
    .await;
    let p = producer(&rig.broker.bootstrap());
    // Event time well in the past, so every batch is in order and on time.
    let t0 = now_ms() - 50 * 60_000;
    let batch = |prefix: &str, at: i64| -> Vec<(String, Vec<u8>)> {
        (0..10_000i64)
            .map(|i| {
                inference(
                    &format!("{prefix}-{i:05}"),
                    "canary",
                    at + i,
                    100.0,
                    false,
                    0.001,
                    "A",
                    true,
                    true,
                )
            })
            .collect()
    };
    let scrape_when = |ok: &dyn Fn(&[Sample]) -> bool| -> Vec<Sample> {
        let mut samples = parse_scrape(&rig.scrape());
        let start = Instant::now();
        while !ok(&samples) && start.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(500));
            samples = parse_scrape(&rig.scrape());
        }
        samples
    };
    let held = |s: &[Sample]| value(s, "canaryd_subjects", &[]);
    let omitted = |s: &[Sample]| value(s, "canaryd_model_subjects_omitted", &[]);
    let evicted = |s: &[Sample]| value(s, "canaryd_subjects_evicted_total", &[]);

    send_all(&p, "events", 0, &batch("first", t0)).await;
    let first = scrape_when(&|s| held(s) == Some(10_000.0));
    assert_eq!(held(&first), Some(10_000.0), "{}", rig.daemon.log_text());
    assert_eq!(omitted(&first), Some(9_950.0));
    let models: BTreeSet<&str> = first
        .iter()
        .filter(|s| s.name == "canaryd_model_window_requests")
        .filter_map(|s| s.labels.get("model").map(String::as_str))
        .collect();
    assert_eq!(models.len(), 50, "{models:?}");
    let per_batch = series_count(&first, "canaryd_model_");
    // The status page draws a bounded number of cards, and says so.
    let dom = canaryd_tests::render_in_browser(&format!("{}/", rig.base));
    assert!(
        dom.contains("showing 24 of 10000 models"),
        "{}",
        &dom[..dom.len().min(3000)]
    );
    assert_eq!(dom.matches("<article class=\"subject\"").count(), 24);

    // Ten minutes of event time later, another 10,000: the first are
    // evicted as the second arrive.
    send_all(&p, "events", 0, &batch("second", t0 + 10 * 60_000)).await;
    let second = scrape_when(&|s| evicted(s) == Some(10_000.0) && held(s) == Some(10_000.0));
    assert_eq!(evicted(&second), Some(10_000.0));
    assert_eq!(held(&second), Some(10_000.0), "memory is bounded");
    assert_eq!(omitted(&second), Some(9_950.0));
    assert_eq!(series_count(&second, "canaryd_model_"), per_batch, "flat");
    assert!(
        second.iter().all(|s| !s
            .labels
            .get("model")
            .is_some_and(|m| m.starts_with("first-"))),
        "no series of an evicted model"
    );

    // One more model later still: only it is left.
    send_all(
        &p,
        "events",
        0,
        &[inference(
            "last",
            "canary",
            t0 + 20 * 60_000,
            100.0,
            false,
            0.001,
            "A",
            true,
            true,
        )],
    )
    .await;
    let last = scrape_when(&|s| held(s) == Some(1.0));
    assert_eq!(held(&last), Some(1.0));
    assert_eq!(evicted(&last), Some(20_000.0));
    assert_eq!(omitted(&last), Some(0.0));
    let models: BTreeSet<&str> = last
        .iter()
        .filter(|s| s.name.starts_with("canaryd_model_"))
        .filter_map(|s| s.labels.get("model").map(String::as_str))
        .collect();
    assert_eq!(models, BTreeSet::from(["last"]));
    // The evictions are in the audit trail, counted as they are read: it
    // holds tens of thousands of records.
    let counted = std::cell::Cell::new((0usize, 0usize)); // (records seen, evictions)
    canaryd_tests::kafka::read_until(&rig.broker.bootstrap(), "canaryd-audit", WAIT, |r| {
        let (seen, mut evictions) = counted.get();
        evictions += r[seen..]
            .iter()
            .filter(|r| r.json()["kind"] == "evicted")
            .count();
        counted.set((r.len(), evictions));
        evictions >= 20_000
    });
    assert_eq!(counted.get().1, 20_000, "{} audit records", counted.get().0);
}

/// The status page charts a live model's canary against stable from the
/// daemon's own history, with the rollout's first stage marked and its
/// weight line; rendered by headless Chromium, with a screenshot kept in
/// `target/test-artefacts/status-page-charts.png`.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_charts_canary_against_stable_with_rollout_marks_in_chromium() {
    let rig = Rig::start_with("canaryd-charts", ROLLOUTS, "  history: {every: 1s}\n").await;
    let p = producer(&rig.broker.bootstrap());
    // Four batches a second and a half apart, each stamped with its wall
    // time: the history takes a point at each, in event time. The canary
    // errs 1 in 10, stable never.
    for batch in 0..4 {
        let at = now_ms();
        let mut lines = Vec::new();
        for i in 0..100i64 {
            let group = if i % 2 == 0 { "A" } else { "B" };
            lines.push(inference(
                "fraud",
                "canary",
                at + i,
                320.0,
                i % 10 == 0,
                0.004,
                group,
                i % 3 == 0,
                true,
            ));
            lines.push(inference(
                "fraud",
                "stable",
                at + i,
                210.0,
                false,
                0.002,
                group,
                i % 3 == 0,
                true,
            ));
        }
        send_all(&p, "events", 0, &lines).await;
        if batch < 3 {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
    }
    let history_url = format!("{}/api/v1/history/fraud", rig.base);
    let enough = || {
        let h: Value = serde_json::from_str(&get(&history_url)).unwrap_or(Value::Null);
        h["points"].as_array().is_some_and(|p| p.len() >= 3)
            && h["marks"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["kind"] == "stage"))
    };
    assert!(
        wait_until(WAIT, enough),
        "{}\n{}",
        get(&history_url),
        rig.daemon.log_text()
    );
    let history: Value = serde_json::from_str(&get(&history_url)).unwrap();
    let last = history["points"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    close(
        last["canary"]["error_rate"].as_f64(),
        0.1,
        1e-9,
        "canary error rate point",
    );
    assert_eq!(last["stable"]["error_rate"], 0.0);
    assert_eq!(last["weight"], 5);

    let dom = canaryd_tests::render_in_browser(&format!("{}/", rig.base));
    let card = {
        let start = dom
            .find("class=\"charts\" data-model=\"fraud\"")
            .unwrap_or_else(|| panic!("no charts for fraud in {dom}"));
        let rest = &dom[start..];
        rest[..rest.find("class=\"legend\"").unwrap_or(rest.len())].to_string()
    };
    let points_of = |metric: &str, track: &str| -> usize {
        let chart_at = card
            .find(&format!("data-metric=\"{metric}\""))
            .unwrap_or_else(|| panic!("no {metric} chart in {card}"));
        let chart = &card[chart_at..card[chart_at..].find("</svg>").unwrap() + chart_at];
        let line_at = chart
            .find(&format!("class=\"line {track}\""))
            .unwrap_or_else(|| panic!("no {track} line in {chart}"));
        let line = &chart[line_at..];
        let n = line.split("data-points=\"").nth(1).unwrap();
        n[..n.find('"').unwrap()].parse().unwrap()
    };
    for metric in ["error_rate", "p95_latency", "disparate_impact"] {
        for track in ["canary", "stable"] {
            assert!(points_of(metric, track) >= 3, "{metric} {track}: {card}");
        }
    }
    assert!(points_of("weight", "weight") >= 3, "{card}");
    assert!(
        card.contains("class=\"mark mark-stage\""),
        "the rollout's stage is marked: {card}"
    );
    // The judge: slower (320 against 210 ms), costlier (twice) and failing
    // (10 % against none) fail; fairness (the same predictions) passes.
    let subject: Value =
        serde_json::from_str(&get(&format!("{}/api/v1/subjects/fraud", rig.base))).unwrap();
    let judge = &subject["judge"];
    assert_eq!(judge["score"], 25.0, "{subject}");
    for (metric, verdict) in [
        ("latency", "high"),
        ("cost", "high"),
        ("error_rate", "high"),
        ("fairness", "pass"),
    ] {
        assert_eq!(judge[metric]["verdict"], verdict, "{metric}: {subject}");
    }
    close(
        judge["latency"]["effect"].as_f64(),
        320.0 / 210.0,
        0.03,
        "latency effect",
    );
    let judged = {
        let start = dom
            .find("class=\"judge\" data-model=\"fraud\"")
            .unwrap_or_else(|| panic!("no judge for fraud in {dom}"));
        let rest = &dom[start..];
        rest[..rest.find("</table>").unwrap_or(rest.len())].to_string()
    };
    assert!(judged.contains("data-score=\"25\""), "{judged}");
    for (metric, verdict) in [("latency", "high"), ("fairness", "pass")] {
        let row = &judged[judged
            .find(&format!("data-metric=\"{metric}\""))
            .unwrap_or_else(|| panic!("no {metric} row in {judged}"))..];
        let row = &row[..row.find("</tr>").unwrap()];
        assert!(
            row.contains(&format!("data-verdict=\"{verdict}\"")),
            "{metric}: {row}"
        );
    }
    let shot =
        canaryd_tests::screenshot_in_browser(&format!("{}/", rig.base), "status-page-charts");
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
