//! The notification connectors (PagerDuty, Slack, webhook, email) against local receivers that speak real HTTP and a real SMTP server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use canaryd_connectors::{
    Action, Connector, ConnectorError, Evidence, OutcomeKind, ReceiverConfig, ReceiverError,
};
use canaryd_rules::condition::Threshold;
use canaryd_rules::{ActionName, Severity, Span, Timestamp};
use canaryd_tests::receivers::{
    Fault, PAGERDUTY_PATH, Receivers, SLACK_CHANNEL, SLACK_PATH, SLACK_TOKEN, validate_pagerduty,
    validate_slack, webhook_path,
};
use canaryd_tests::smtp::Smtpd;
use serde_json::{Value, json};

const RULE: &str = "Canary Error Rate High";
const RUNBOOK: &str = "https://runbooks.example.com/canary#error-rate";
const ROUTING_KEY: &str = "R0UT1NGKEY0123456789abcdefABCDEF";
const WAIT: Duration = Duration::from_secs(10);

fn action(severity: Severity, dry_run: bool) -> Action {
    let subject: BTreeMap<String, String> =
        [("model".to_string(), "summarizer".to_string())].into();
    Action {
        key: Action::key_for(RULE, &subject, Timestamp(1_772_366_760_000)),
        ts: Timestamp(1_772_367_060_000),
        rule: RULE.into(),
        subject,
        action: ActionName::NotifyOnCall,
        severity,
        deadline: Span::seconds(30),
        dry_run,
        evidence: Evidence {
            condition: "canary_error_rate > 0.05".into(),
            values: [
                ("canary_error_rate".to_string(), 0.105313),
                ("canary_requests".to_string(), 1200.0),
            ]
            .into(),
            thresholds: vec![Threshold {
                variable: "canary_error_rate".into(),
                op: ">",
                value: 0.05,
            }],
            duration: Span::seconds(300),
            since: Timestamp(1_772_366_760_000),
        },
        labels: [("team".to_string(), "ml-platform".to_string())].into(),
        annotations: [
            (
                "summary".to_string(),
                "summarizer: canary error rate 0.105313".to_string(),
            ),
            ("runbook".to_string(), RUNBOOK.to_string()),
        ]
        .into(),
        traffic: None,
    }
}

fn firing() -> Action {
    action(Severity::Critical, false)
}

async fn build(name: &str, yaml: &str) -> Arc<dyn Connector> {
    let config: ReceiverConfig = serde_yaml_ng::from_str(yaml).unwrap();
    assert!(config.check().is_empty(), "{:?}", config.check());
    match config.build(name).await {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

async fn pagerduty(receivers: &Receivers, extra: &str) -> Arc<dyn Connector> {
    build(
        "pagerduty-oncall",
        &format!(
            "{{type: pagerduty, routing_key: {ROUTING_KEY}, url: '{}'{extra}}}",
            receivers.pagerduty_url()
        ),
    )
    .await
}

async fn slack(receivers: &Receivers, extra: &str) -> Arc<dyn Connector> {
    build(
        "slack-oncall",
        &format!("{{type: slack, url: '{}'{extra}}}", receivers.slack_url()),
    )
    .await
}

/// A Slack receiver on the Web API stand-in, with `token` and `channel`.
async fn slack_api(receivers: &Receivers, token: &str, channel: &str) -> Arc<dyn Connector> {
    build(
        "slack-threads",
        &format!(
            "{{type: slack, token: '{token}', channel: {channel}, api_url: '{}'}}",
            receivers.slack_api_url()
        ),
    )
    .await
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
async fn pagerduty_trigger_and_resolve_pass_the_schema_and_share_the_dedup_key() {
    let receivers = Receivers::start();
    let pd = pagerduty(&receivers, "").await;
    let a = firing();

    let outcome = pd.execute(&a).await.unwrap();
    assert_eq!(outcome.kind, OutcomeKind::Succeeded);
    assert_eq!(outcome.connector, "pagerduty-oncall");
    assert!(!outcome.dry_run);
    assert!(outcome.detail.contains("trigger"), "{}", outcome.detail);
    let resolved = pd.resolve(&a).expect("PagerDuty resolves").await.unwrap();
    assert!(resolved.detail.contains("resolve"), "{}", resolved.detail);

    let events = receivers.requests_to(PAGERDUTY_PATH);
    assert_eq!(events.len(), 2);
    for e in &events {
        assert_eq!(e.status, 202, "{:?}: {}", e.errors, e.body);
        assert!(e.errors.is_empty(), "{:?}", e.errors);
        let answer: Value = serde_json::from_str(&e.answer).unwrap();
        assert_eq!(answer["status"], "success");
        assert_eq!(answer["dedup_key"], a.key.as_str());
        assert!(
            e.header("content-type")
                .unwrap()
                .starts_with("application/json")
        );
    }
    let trigger = events[0].json();
    assert_eq!(trigger["event_action"], "trigger");
    assert_eq!(trigger["routing_key"], ROUTING_KEY);
    assert_eq!(trigger["dedup_key"], a.key.as_str());
    assert_eq!(trigger["client"], "canaryd");
    let p = &trigger["payload"];
    assert_eq!(
        p["summary"],
        "[CRITICAL] Canary Error Rate High: notify_on_call for model=summarizer"
    );
    assert_eq!(p["source"], "canaryd");
    assert_eq!(p["severity"], "critical");
    assert_eq!(p["timestamp"], "2026-03-01T12:11:00.000Z");
    assert_eq!(p["component"], "summarizer");
    assert_eq!(p["group"], "ml-platform");
    assert_eq!(p["class"], RULE);
    let details = &p["custom_details"];
    assert_eq!(details["values"]["canary_error_rate"], 0.105313);
    assert_eq!(
        details["thresholds"],
        json!([{"variable": "canary_error_rate", "op": ">", "value": 0.05}])
    );
    assert_eq!(details["condition"], "canary_error_rate > 0.05");
    assert_eq!(details["subject"], json!({"model": "summarizer"}));
    assert_eq!(details["annotations"]["runbook"], RUNBOOK);
    assert_eq!(
        trigger["links"],
        json!([{"href": RUNBOOK, "text": "Runbook"}])
    );

    let resolve = events[1].json();
    assert_eq!(
        resolve,
        json!({"routing_key": ROUTING_KEY, "event_action": "resolve", "dedup_key": a.key})
    );
}

#[tokio::test]
async fn pagerduty_severities_are_mapped() {
    let receivers = Receivers::start();
    let pd = pagerduty(&receivers, "").await;
    let cases = [
        (Severity::Critical, "critical"),
        (Severity::High, "error"),
        (Severity::Medium, "warning"),
        (Severity::Low, "info"),
    ];
    for (severity, _) in cases {
        pd.execute(&action(severity, false)).await.unwrap();
    }
    let sent: Vec<String> = receivers
        .accepted(PAGERDUTY_PATH)
        .iter()
        .map(|r| {
            r.json()["payload"]["severity"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let expected: Vec<String> = cases.iter().map(|(_, s)| s.to_string()).collect();
    assert_eq!(sent, expected);
}

#[tokio::test]
async fn a_payload_the_schema_refuses_is_permanent_with_the_receivers_reasons() {
    let receivers = Receivers::start();
    // A title that renders empty makes an empty payload.summary, which
    // PagerDuty refuses.
    let pd = pagerduty(
        &receivers,
        ", title_template: \"{% if false %}x{% endif %}\"",
    )
    .await;
    let err = pd.execute(&firing()).await.unwrap_err();
    let message = permanent(&err);
    assert!(message.contains("400 Bad Request"), "{message}");
    assert!(message.contains("payload.summary is required"), "{message}");
    assert_eq!(receivers.requests_to(PAGERDUTY_PATH)[0].status, 400);
}

#[tokio::test]
async fn slack_shows_rule_subject_values_against_thresholds_and_the_runbook() {
    let receivers = Receivers::start();
    let slack = slack(&receivers, ", channel: '#ml-oncall'").await;

    let outcome = slack.execute(&firing()).await.unwrap();
    assert_eq!(outcome.connector, "slack-oncall");

    let posted = receivers.accepted(SLACK_PATH);
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].answer, "ok");
    let message = posted[0].json();
    assert!(validate_slack(&message).is_empty());
    assert_eq!(message["channel"], "#ml-oncall");
    assert_eq!(
        message["text"],
        "[CRITICAL] Canary Error Rate High: notify_on_call for model=summarizer"
    );
    let blocks = message["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["type"], "header");
    let body = blocks[1]["text"]["text"].as_str().unwrap();
    for expected in [
        "Canary Error Rate High (critical) fired for model=summarizer.",
        "summarizer: canary error rate 0.105313",
        "Condition: canary_error_rate &gt; 0.05",
        "canary_error_rate = 0.105313 (threshold &gt; 0.05)",
        "canary_requests = 1200",
        "True since 2026-03-01T12:06:00.000Z (required for 5m)",
        &format!("Runbook: {RUNBOOK}"),
    ] {
        assert!(
            body.contains(expected),
            "`{expected}` missing from:\n{body}"
        );
    }
    let button = blocks
        .iter()
        .find(|b| b["type"] == "actions")
        .expect("a runbook button");
    assert_eq!(button["elements"][0]["url"], RUNBOOK);
    let context = blocks.last().unwrap()["elements"][0]["text"]
        .as_str()
        .unwrap();
    assert!(context.contains("firing"), "{context}");

    // The resolution is a message too.
    slack
        .resolve(&firing())
        .expect("Slack resolves")
        .await
        .unwrap();
    let posted = receivers.accepted(SLACK_PATH);
    assert_eq!(posted.len(), 2);
    assert_eq!(
        posted[1].json()["text"],
        "[RESOLVED] Canary Error Rate High for model=summarizer"
    );
}

#[tokio::test]
async fn a_slack_url_can_come_from_a_file() {
    let receivers = Receivers::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("slack-oncall");
    std::fs::write(&file, format!("{}\n", receivers.slack_url())).unwrap();
    let slack = build(
        "slack-oncall",
        &format!("{{type: slack, url: {{file: '{}'}}}}", file.display()),
    )
    .await;
    slack.execute(&firing()).await.unwrap();
    assert_eq!(receivers.accepted(SLACK_PATH).len(), 1);
}

#[tokio::test]
async fn a_webhook_with_a_bearer_token_sends_it_with_the_whole_action() {
    let receivers = Receivers::start();
    let path = webhook_path("incidents");
    receivers.require_authorization(&path, "Bearer t0ken-123");
    let hook = build(
        "incidents",
        &format!(
            "{{type: webhook, url: '{}', bearer: t0ken-123, headers: {{X-Team: ml-platform}}}}",
            receivers.webhook_url("incidents")
        ),
    )
    .await;
    let a = firing();

    hook.execute(&a).await.unwrap();
    hook.resolve(&a).expect("webhooks resolve").await.unwrap();

    let got = receivers.accepted(&path);
    assert_eq!(got.len(), 2, "{:?}", receivers.requests());
    assert_eq!(got[0].header("authorization"), Some("Bearer t0ken-123"));
    assert_eq!(got[0].header("x-team"), Some("ml-platform"));
    let body = got[0].json();
    assert_eq!(body["status"], "firing");
    assert_eq!(body["key"], a.key.as_str());
    assert_eq!(body["rule"], RULE);
    assert_eq!(body["subject"], json!({"model": "summarizer"}));
    assert_eq!(body["action"], "notify_on_call");
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["evidence"]["values"]["canary_error_rate"], 0.105313);
    assert_eq!(body["annotations"]["runbook"], RUNBOOK);
    assert_eq!(got[1].json()["status"], "resolved");
    // One key per action and status, the same on every retry.
    let firing_key = format!("canaryd-{}-firing", a.key_digest());
    assert_eq!(got[0].header("idempotency-key"), Some(firing_key.as_str()));
    let resolved_key = format!("canaryd-{}-resolved", a.key_digest());
    assert_eq!(
        got[1].header("idempotency-key"),
        Some(resolved_key.as_str())
    );
    hook.execute(&a).await.unwrap();
    let again = receivers.accepted(&path);
    assert_eq!(
        again[2].header("idempotency-key"),
        got[0].header("idempotency-key")
    );
}

#[tokio::test]
async fn a_webhook_with_basic_auth_sends_it_and_wrong_credentials_are_permanent() {
    let receivers = Receivers::start();
    let path = webhook_path("tickets");
    // base64("canaryd:s3cret")
    receivers.require_authorization(&path, "Basic Y2FuYXJ5ZDpzM2NyZXQ=");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "s3cret\n").unwrap();
    let hook = build(
        "tickets",
        &format!(
            "{{type: webhook, url: '{}', basic: {{username: canaryd, password: {{file: '{}'}}}}}}",
            receivers.webhook_url("tickets"),
            dir.path().join("pw").display()
        ),
    )
    .await;
    hook.execute(&firing()).await.unwrap();
    let got = receivers.accepted(&path);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("authorization"),
        Some("Basic Y2FuYXJ5ZDpzM2NyZXQ=")
    );

    let wrong = build(
        "tickets",
        &format!(
            "{{type: webhook, url: '{}', basic: {{username: canaryd, password: wrong}}}}",
            receivers.webhook_url("tickets")
        ),
    )
    .await;
    let err = wrong.execute(&firing()).await.unwrap_err();
    let message = permanent(&err);
    assert!(message.contains("401 Unauthorized"), "{message}");
    assert!(message.contains("credentials"), "{message}");
}

#[tokio::test]
async fn email_is_delivered_to_a_real_smtp_server() {
    let smtpd = Smtpd::start();
    let mail = build(
        "email-ml",
        &format!(
            "{{type: email, host: 127.0.0.1, port: {}, tls: none, from: 'canaryd <canaryd@example.com>', to: [ml-team@example.com, oncall@example.com]}}",
            smtpd.port()
        ),
    )
    .await;

    let outcome = mail.execute(&firing()).await.unwrap();
    assert_eq!(outcome.kind, OutcomeKind::Succeeded);
    assert!(
        outcome
            .detail
            .starts_with("emailed ml-team@example.com, oncall@example.com: "),
        "{}",
        outcome.detail
    );

    let messages = smtpd.wait_for_messages(1, WAIT);
    assert_eq!(messages.len(), 1, "{}", smtpd.log_text());
    let m = &messages[0];
    assert_eq!(
        m.subject(),
        "[CRITICAL] Canary Error Rate High: notify_on_call for model=summarizer"
    );
    assert_eq!(m.header("From"), Some("canaryd <canaryd@example.com>"));
    assert_eq!(
        m.envelope_recipients(),
        vec!["ml-team@example.com", "oncall@example.com"]
    );
    assert!(
        m.header("Content-Type").unwrap().starts_with("text/plain"),
        "{:?}",
        m.headers
    );
    for expected in [
        "Canary Error Rate High (critical) fired for model=summarizer.",
        "Condition: canary_error_rate > 0.05",
        "  canary_error_rate = 0.105313 (threshold > 0.05)",
        &format!("Runbook: {RUNBOOK}"),
        &format!("Key: {}", firing().key),
    ] {
        assert!(
            m.body.contains(expected),
            "`{expected}` missing from:\n{}",
            m.body
        );
    }

    mail.resolve(&firing())
        .expect("email resolves")
        .await
        .unwrap();
    let messages = smtpd.wait_for_messages(2, WAIT);
    assert_eq!(messages.len(), 2);
    assert!(
        messages
            .iter()
            .any(|m| m.subject() == "[RESOLVED] Canary Error Rate High for model=summarizer"),
        "{:?}",
        messages
            .iter()
            .map(|m| m.subject().to_string())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn an_smtp_server_refusing_authentication_is_permanent_with_a_clear_message() {
    let smtpd = Smtpd::start_refusing_auth();
    let mail = build(
        "email-ml",
        &format!(
            "{{type: email, host: 127.0.0.1, port: {}, tls: none, username: canaryd, password: wrong, from: canaryd@example.com, to: [ml-team@example.com]}}",
            smtpd.port()
        ),
    )
    .await;
    let err = mail.execute(&firing()).await.unwrap_err();
    let message = permanent(&err);
    assert!(
        message.starts_with(&format!(
            "SMTP authentication refused by 127.0.0.1:{}: ",
            smtpd.port()
        )),
        "{message}"
    );
    assert!(message.contains("535"), "{message}");
    assert!(!message.contains("wrong"), "the password leaked: {message}");
}

#[tokio::test]
async fn an_smtp_server_that_is_not_there_is_retriable() {
    let port = canaryd_tests::tansu::free_port();
    let mail = build(
        "email-ml",
        &format!(
            "{{type: email, host: 127.0.0.1, port: {port}, tls: none, from: canaryd@example.com, to: [ml-team@example.com], timeout: 5s}}"
        ),
    )
    .await;
    let err = mail.execute(&firing()).await.unwrap_err();
    assert!(
        retriable(&err).contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_error_is_retriable_and_the_next_try_succeeds() {
    let receivers = Receivers::start();
    receivers.fail_next(1, Fault::Status(500));
    let pd = pagerduty(&receivers, "").await;
    let err = pd.execute(&firing()).await.unwrap_err();
    let message = retriable(&err);
    assert!(message.contains("500 Internal Server Error"), "{message}");
    assert!(!message.contains(ROUTING_KEY));
    // The same long-lived client carries the retry.
    pd.execute(&firing()).await.unwrap();
    let statuses: Vec<u16> = receivers
        .requests_to(PAGERDUTY_PATH)
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![500, 202]);
}

#[tokio::test]
async fn rate_limiting_is_retriable_and_quotes_retry_after() {
    let receivers = Receivers::start();
    receivers.fail_next(1, Fault::TooManyRequests { retry_after: 7 });
    let slack = slack(&receivers, "").await;
    let err = slack.execute(&firing()).await.unwrap_err();
    let message = retriable(&err);
    assert!(message.contains("429 Too Many Requests"), "{message}");
    assert!(message.contains("retry after 7s"), "{message}");
    // The Slack URL is the secret: it never shows in a message.
    assert!(!message.contains("/services/"), "{message}");
}

#[tokio::test]
async fn a_slow_receiver_beyond_the_timeout_is_retriable() {
    let receivers = Receivers::start();
    receivers.fail_next(1, Fault::Delay(Duration::from_secs(30)));
    let hook = build(
        "incidents",
        &format!(
            "{{type: webhook, url: '{}', timeout: 300ms, connect_timeout: 300ms}}",
            receivers.webhook_url("incidents")
        ),
    )
    .await;
    let err = hook.execute(&firing()).await.unwrap_err();
    assert!(retriable(&err).contains("timeout"), "{err}");
    assert_eq!(receivers.requests().len(), 1);
}

#[tokio::test]
async fn a_bad_request_is_permanent_with_the_receivers_answer() {
    let receivers = Receivers::start();
    receivers.fail_next(1, Fault::Status(400));
    let slack = slack(&receivers, "").await;
    let err = slack.execute(&firing()).await.unwrap_err();
    let message = permanent(&err);
    assert!(message.contains("400 Bad Request"), "{message}");
    assert!(message.contains("injected by the test: 400"), "{message}");
}

#[tokio::test]
async fn a_receiver_that_is_down_is_retriable_until_it_is_back() {
    let receivers = Receivers::start();
    receivers.set_down(true);
    let pd = pagerduty(&receivers, "").await;
    for _ in 0..2 {
        let err = pd.execute(&firing()).await.unwrap_err();
        assert!(retriable(&err).contains("503"), "{err}");
    }
    receivers.set_down(false);
    pd.execute(&firing()).await.unwrap();
    assert_eq!(receivers.accepted(PAGERDUTY_PATH).len(), 1);
    assert_eq!(receivers.requests_to(PAGERDUTY_PATH).len(), 3);
}

#[tokio::test]
async fn a_refused_connection_is_retriable() {
    let port = canaryd_tests::tansu::free_port();
    let hook = build(
        "incidents",
        &format!("{{type: webhook, url: 'http://127.0.0.1:{port}/hooks/x'}}"),
    )
    .await;
    let err = hook.execute(&firing()).await.unwrap_err();
    assert!(retriable(&err).contains("cannot connect"), "{err}");
}

#[tokio::test]
async fn dry_run_sends_nothing() {
    let receivers = Receivers::start();
    let smtpd = Smtpd::start();
    let connectors = [
        pagerduty(&receivers, "").await,
        slack(&receivers, "").await,
        build(
            "incidents",
            &format!(
                "{{type: webhook, url: '{}'}}",
                receivers.webhook_url("incidents")
            ),
        )
        .await,
        build(
            "email-ml",
            &format!(
                "{{type: email, host: 127.0.0.1, port: {}, tls: none, from: canaryd@example.com, to: [ml-team@example.com]}}",
                smtpd.port()
            ),
        )
        .await,
    ];
    let dry = action(Severity::Critical, true);
    for c in &connectors {
        let outcome = c.execute(&dry).await.unwrap();
        assert_eq!(outcome.kind, OutcomeKind::Succeeded);
        assert!(outcome.dry_run, "{}", c.name());
        assert!(outcome.detail.starts_with("would "), "{}", outcome.detail);
        let resolved = c.resolve(&dry).unwrap().await.unwrap();
        assert!(resolved.dry_run);
    }
    assert!(
        receivers.requests().is_empty(),
        "{:?}",
        receivers.requests()
    );
    assert!(smtpd.messages().is_empty());

    // The same connectors do send when it is not a dry run, so the
    // emptiness above is not the receivers failing to record.
    for c in &connectors {
        c.execute(&firing()).await.unwrap();
    }
    assert_eq!(receivers.requests().len(), 3);
    assert!(receivers.requests().iter().all(|r| r.accepted()));
    assert_eq!(smtpd.wait_for_messages(1, WAIT).len(), 1);
}

#[tokio::test]
async fn a_template_that_does_not_compile_is_reported_by_check() {
    let config: ReceiverConfig = serde_yaml_ng::from_str(
        "{type: slack, url: {env: SLACK_URL}, title_template: '{{ rule', body_template: '{{ rulez }}'}",
    )
    .unwrap();
    let problems = config.check();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("title_template: template does not compile"),
        "{problems:?}"
    );
    assert!(
        problems[1].contains("body_template: template uses unknown variable `rulez`"),
        "{problems:?}"
    );
    let Err(err) = config.build("slack-oncall").await else {
        panic!("built with a broken template");
    };
    assert!(matches!(err, ReceiverError::Invalid { .. }), "{err}");
    assert!(
        err.to_string().starts_with("receiver slack-oncall: "),
        "{err}"
    );

    // Every type checks its templates.
    for kind in [
        "{type: pagerduty, routing_key: k",
        "{type: webhook, url: 'http://x/'",
        "{type: email, host: h, from: a@b.c, to: [d@e.f]",
    ] {
        let config: ReceiverConfig =
            serde_yaml_ng::from_str(&format!("{kind}, body_template: '{{% for %}}'}}")).unwrap();
        assert_eq!(config.check().len(), 1, "{kind}: {:?}", config.check());
    }
}

#[test]
fn the_receivers_refuse_what_the_services_refuse() {
    // The fixtures' own schema checks, so that the tests above rest on
    // receivers that can say no.
    let good = json!({
        "routing_key": ROUTING_KEY, "event_action": "trigger", "dedup_key": "k",
        "payload": {"summary": "s", "source": "canaryd", "severity": "critical",
                    "timestamp": "2026-03-01T12:11:00.000Z"}
    });
    assert!(validate_pagerduty(&good).is_empty());
    let mut bad = good.clone();
    bad["payload"]["severity"] = json!("high");
    bad["payload"]["summary"] = json!("x".repeat(1025));
    bad["payload"]["timestamp"] = json!("yesterday");
    bad["dedup_key"] = json!("k".repeat(256));
    bad["event_action"] = json!("trigger");
    bad["dedupkey"] = json!("typo");
    let errors = validate_pagerduty(&bad);
    assert_eq!(errors.len(), 5, "{errors:?}");
    let resolve = json!({"routing_key": ROUTING_KEY, "event_action": "resolve"});
    assert_eq!(
        validate_pagerduty(&resolve),
        vec!["dedup_key is required to resolve"]
    );
    assert!(!validate_pagerduty(&json!({"routing_key": "", "event_action": "page"})).is_empty());

    assert!(validate_slack(&json!({"text": "hi"})).is_empty());
    assert!(validate_slack(&json!({}))[0].starts_with("no_text"));
    let errors = validate_slack(&json!({"text": "x", "blocks": [
        {"type": "header", "text": {"type": "mrkdwn", "text": "x"}},
        {"type": "section"},
        {"type": "sparkle"}
    ]}));
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(errors.iter().all(|e| e.starts_with("blocks")), "{errors:?}");
}

#[test]
fn the_slack_receiver_answers_like_slack() {
    // Over plain HTTP, without canaryd: a message with neither text nor
    // blocks is refused with 400 no_text, one with text is ok.
    let receivers = Receivers::start();
    let post = |body: &str| -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream =
            std::net::TcpStream::connect(receivers.base_url().trim_start_matches("http://"))
                .unwrap();
        write!(
            stream,
            "POST {SLACK_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.split(' ').nth(1).unwrap().parse().unwrap();
        let body = response.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
        (status, body)
    };
    assert_eq!(post("{}"), (400, "no_text".to_string()));
    assert_eq!(post("not json"), (400, "invalid_payload".to_string()));
    assert_eq!(post(r#"{"text":"hello"}"#), (200, "ok".to_string()));
    assert!(receivers.wait_for_answers(3, WAIT));
}

/// Through Slack's Web API an incident is one thread: the firing message
/// carries the action's key, a retry or a new owner after a crash finds it
/// in the channel's history instead of posting again, and the resolution
/// is one reply in its thread, also sent to the channel.
#[tokio::test]
async fn slack_web_api_threads_an_incident_and_never_posts_it_twice() {
    let receivers = Receivers::start();
    let first = slack_api(&receivers, SLACK_TOKEN, SLACK_CHANNEL).await;
    let a = firing();
    let posted = first.execute(&a).await.unwrap();
    assert!(
        posted.detail.contains("posted to Slack (thread"),
        "{}",
        posted.detail
    );
    // A retry after a lost answer, on the same replica.
    let again = first.execute(&a).await.unwrap();
    assert!(
        again.detail.contains("not posted again"),
        "{}",
        again.detail
    );
    // A new owner after a crash knows nothing: Slack's history tells it.
    let second = slack_api(&receivers, SLACK_TOKEN, SLACK_CHANNEL).await;
    let found = second.execute(&a).await.unwrap();
    assert!(
        found.detail.contains("not posted again"),
        "{}",
        found.detail
    );

    let messages = receivers.slack_messages();
    assert_eq!(messages.len(), 1, "{messages:#?}");
    let parent = &messages[0];
    assert_eq!(parent["channel"], SLACK_CHANNEL);
    assert_eq!(parent["metadata"]["event_type"], "canaryd_incident");
    assert_eq!(parent["metadata"]["event_payload"]["key"], a.key.as_str());
    assert!(parent["thread_ts"].is_null());

    let resolved = second.resolve(&a).expect("Slack resolves").await.unwrap();
    assert!(
        resolved
            .detail
            .contains("resolution posted in Slack thread"),
        "{}",
        resolved.detail
    );
    // The first replica, whose memory says unresolved, finds the reply.
    let twice = first.resolve(&a).expect("Slack resolves").await.unwrap();
    assert!(
        twice.detail.contains("not posted again"),
        "{}",
        twice.detail
    );
    let messages = receivers.slack_messages();
    assert_eq!(messages.len(), 2, "{messages:#?}");
    let reply = &messages[1];
    assert_eq!(reply["thread_ts"], parent["ts"]);
    assert_eq!(reply["reply_broadcast"], true);
    assert_eq!(reply["metadata"]["event_type"], "canaryd_resolved");
    assert!(
        reply["text"].as_str().unwrap().starts_with("[RESOLVED]"),
        "{reply}"
    );

    for r in receivers.requests() {
        assert!(
            r.errors.is_empty(),
            "{} {}: {:?}",
            r.method,
            r.path,
            r.errors
        );
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {SLACK_TOKEN}").as_str())
        );
    }
}

/// The Web API's errors: a wrong token or channel needs a person, a rate
/// limit is retried no sooner than Slack asks.
#[tokio::test]
async fn slack_web_api_refusals_are_permanent_and_rate_limits_retried() {
    let receivers = Receivers::start();
    let e = slack_api(&receivers, "xoxb-wrong", SLACK_CHANNEL)
        .await
        .execute(&firing())
        .await
        .unwrap_err();
    assert!(permanent(&e).contains("invalid_auth"), "{e}");
    let e = slack_api(&receivers, SLACK_TOKEN, "C0ELSEWHERE")
        .await
        .execute(&firing())
        .await
        .unwrap_err();
    assert!(permanent(&e).contains("channel_not_found"), "{e}");
    receivers.fail_next(1, Fault::TooManyRequests { retry_after: 7 });
    let e = slack_api(&receivers, SLACK_TOKEN, SLACK_CHANNEL)
        .await
        .execute(&firing())
        .await
        .unwrap_err();
    assert!(retriable(&e).contains("429"), "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));
    assert!(receivers.slack_messages().is_empty());
}
