//! The action pipeline:
//!
//! 1. Rollback latency: from a firing transition (actions decided, queued)
//!    to the PATCH arriving at the Kubernetes API server fixture, through
//!    the real kube-rs client. One rollback at a time, so no queueing.
//! 2. Pipeline overhead per notification: process CPU time per action
//!    through routing, dedup, rate limiting, the worker and outcome records,
//!    with a connector that does nothing.
//!
//! Run: `cargo bench -p canaryd-tests --bench actions`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a broken benchmark should stop loudly

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use canaryd::act::audit::Audit;
use canaryd::act::decide::actions_for;
use canaryd::act::pipeline::{Pipeline, PipelineConfig};
use canaryd::act::routes::{Route, Routes};
use canaryd_connectors::connector::BoxFuture;
use canaryd_connectors::{
    Action, Connector, ConnectorError, KubeConfig, KubeConnector, Outcome, OutcomeKind,
};
use canaryd_rules::{ActionName, LoadOptions, Phase, RuleSet, Timestamp, Transition, load_rules};
use canaryd_tests::kube_fixture::KubeFixture;
use canaryd_tests::repo;

const ROLLBACKS: usize = 300;
const NOTIFICATIONS: usize = 100_000;

/// Does nothing, successfully.
struct Nothing;

impl Connector for Nothing {
    fn name(&self) -> &str {
        "nothing"
    }

    fn execute<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Outcome, ConnectorError>> {
        Box::pin(async move {
            Ok(Outcome {
                key: action.key.clone(),
                connector: "nothing".into(),
                kind: OutcomeKind::Succeeded,
                dry_run: false,
                detail: String::new(),
            })
        })
    }
}

/// User + system CPU seconds of this process, from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // Fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

fn routes(action: ActionName, receiver: &str) -> Routes {
    BTreeMap::from([(
        action,
        Route {
            receivers: vec![receiver.into()],
            dry_run: false,
        },
    )])
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        rollback_latency().await;
        overhead().await;
    });
}

async fn rollback_latency() {
    let options = LoadOptions::default();
    let text = std::fs::read(repo("deploy/examples/canary-alerts.yaml")).unwrap();
    let rules = RuleSet::new(load_rules("canary-alerts.yaml", &text, &options).unwrap()).unwrap();
    let fixture = KubeFixture::start();
    for i in 0..ROLLBACKS {
        fixture.put(KubeFixture::virtual_service(
            "ml-serving",
            &format!("model-m{i}"),
            90,
            10,
        ));
    }
    let config: KubeConfig = serde_yaml_ng::from_str(&format!(
        "kubeconfig: {}\ntarget: {{kind: VirtualService, namespace: ml-serving, name: 'model-{{{{ model }}}}'}}",
        fixture.kubeconfig().display()
    ))
    .unwrap();
    let kube = Arc::new(KubeConnector::new(config).await.unwrap());
    let (pipeline, mut workers) = Pipeline::start(
        vec![kube],
        &routes(ActionName::AutoRollback, "kube"),
        &PipelineConfig::default(),
        Audit::log_only("bench".into()),
        tokio_util::sync::CancellationToken::new(),
    );
    let mut latencies = Vec::with_capacity(ROLLBACKS);
    for i in 0..ROLLBACKS {
        let model = format!("m{i}");
        let transition = Transition {
            ts: Timestamp(1_000),
            rule: 0, // Canary Error Rate High: auto_rollback
            subject: Arc::new(BTreeMap::from([("model".to_string(), model.clone())])),
            from: Phase::Pending,
            to: Phase::Firing,
            active_since: Some(Timestamp(0)),
            values: BTreeMap::from([("canary_error_rate".to_string(), 0.09)]),
        };
        let suffix = format!("/virtualservices/model-{model}");
        let start = Instant::now();
        for action in actions_for(&transition, &rules, false) {
            pipeline.submit(action).await.unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let patch = loop {
            if let Some(p) = fixture.requests_matching("PATCH", &suffix).first().cloned() {
                break p;
            }
            assert!(Instant::now() < deadline, "no PATCH for {model}");
            tokio::time::sleep(Duration::from_micros(100)).await;
        };
        latencies.push(patch.at.duration_since(start).as_secs_f64() * 1000.0);
    }
    drop(pipeline);
    while let Some(done) = workers.join_next().await {
        done.unwrap().unwrap();
    }
    let rolled = (0..ROLLBACKS)
        .filter(|i| {
            let vs = fixture
                .object("VirtualService", "ml-serving", &format!("model-m{i}"))
                .unwrap();
            vs["spec"]["http"][0]["route"][1]["weight"] == 0
        })
        .count();
    assert_eq!(rolled, ROLLBACKS, "every canary must end at weight 0");
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "rollback latency, firing transition -> PATCH at the API server ({ROLLBACKS} rollbacks): p50 {:.2} ms, p99 {:.2} ms",
        pct(0.5),
        pct(0.99)
    );
}

async fn overhead() {
    let (pipeline, mut workers) = Pipeline::start(
        vec![Arc::new(Nothing)],
        &routes(ActionName::NotifyMlTeam, "nothing"),
        &PipelineConfig {
            rate_limit_per_minute: 1_000_000,
            rate_limit_burst: 1_000_000,
            ..PipelineConfig::default()
        },
        Audit::log_only("bench".into()),
        tokio_util::sync::CancellationToken::new(),
    );
    let template = Action {
        key: String::new(),
        ts: Timestamp(0),
        rule: "Canary Fairness Violation".into(),
        subject: BTreeMap::new(),
        action: ActionName::NotifyMlTeam,
        severity: canaryd_rules::Severity::High,
        deadline: canaryd_rules::Span::seconds(120),
        dry_run: false,
        evidence: canaryd_connectors::Evidence {
            condition: "canary_fairness_metric < 0.8".into(),
            values: BTreeMap::from([("canary_fairness_metric".to_string(), 0.7)]),
            thresholds: vec![],
            duration: canaryd_rules::Span::seconds(600),
            since: Timestamp(0),
        },
        labels: BTreeMap::new(),
        annotations: BTreeMap::new(),
        traffic: None,
    };
    let actions: Vec<Action> = (0..NOTIFICATIONS)
        .map(|i| Action {
            key: format!("k{i}"),
            subject: BTreeMap::from([("model".to_string(), format!("m{}", i % 1000))]),
            ..template.clone()
        })
        .collect();
    let cpu = cpu_seconds();
    let wall = Instant::now();
    for action in actions {
        pipeline.submit(action).await.unwrap();
    }
    let stats = pipeline.stats.clone();
    drop(pipeline);
    while let Some(done) = workers.join_next().await {
        done.unwrap().unwrap();
    }
    let cpu = cpu_seconds() - cpu;
    let done = stats
        .outcomes()
        .get(&("nothing".to_string(), OutcomeKind::Succeeded))
        .copied()
        .unwrap_or(0);
    assert_eq!(done as usize, NOTIFICATIONS);
    println!(
        "pipeline overhead per notification ({NOTIFICATIONS}): {:.1} µs of CPU, {:.1} µs of wall time",
        cpu * 1e6 / NOTIFICATIONS as f64,
        wall.elapsed().as_secs_f64() * 1e6 / NOTIFICATIONS as f64
    );
}
