//! The engine computing the playbook's variables from raw inference events:
//! rules fire on computed values, guards hold back noise, silence shows.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::collections::BTreeMap;
use std::sync::Arc;

use canaryd_rules::event::{InferenceEvent, MetricEvent, Track};
use canaryd_rules::{
    Engine, EngineConfig, Event, LoadOptions, Output, Phase, RuleSet, Timestamp, load_rules,
};

fn engine(rules: &str) -> Engine {
    engine_with(rules, EngineConfig::default())
}

fn engine_with(rules: &str, config: EngineConfig) -> Engine {
    let options = LoadOptions::default();
    let rules = load_rules("r.yaml", rules.as_bytes(), &options).unwrap();
    Engine::new(
        Arc::new(RuleSet::new(rules).unwrap()),
        &options.vocabulary,
        config,
    )
}

fn request(ms: i64, track: Track, error: bool, latency: f64) -> Event {
    Event::Inference(InferenceEvent {
        ts: Timestamp(ms),
        model: "summarizer".into(),
        version: "v".into(),
        track,
        latency_ms: latency,
        error,
        cost_usd: Some(0.002),
        group: None,
        prediction: None,
        label: None,
        labels: BTreeMap::new(),
    })
}

/// Feeds events; returns (seconds, rule, to) for every transition.
fn feed(engine: &mut Engine, events: impl IntoIterator<Item = Event>) -> Vec<(i64, String, Phase)> {
    let mut out = Vec::new();
    let mut seen = Vec::new();
    for e in events {
        engine.ingest(&e, &mut out);
        for o in out.drain(..) {
            if let Output::Transition(t) = o {
                seen.push((
                    t.ts.millis() / 1000,
                    engine.rules().rules()[t.rule].name.clone(),
                    t.to,
                ));
            }
        }
    }
    seen
}

fn subject() -> BTreeMap<String, String> {
    BTreeMap::from([("model".to_string(), "summarizer".to_string())])
}

const PLAYBOOK: &str = include_str!("../../deploy/examples/canary-alerts.yaml");

#[test]
fn an_error_spike_in_raw_traffic_fires_the_playbook_rule() {
    let mut e = engine(PLAYBOOK);
    // 10 canary and 10 stable requests per second for 12 minutes; from
    // minute 2 one canary request in ten fails (10 % > 5 %).
    let events = (0..12 * 60 * 10).flat_map(|i| {
        let ms = i * 100;
        let failing = ms >= 120_000 && i % 10 == 0;
        [
            request(ms, Track::Canary, failing, 300.0),
            request(ms, Track::Stable, false, 280.0),
        ]
    });
    let seen = feed(&mut e, events);
    let firing: Vec<_> = seen
        .iter()
        .filter(|(_, r, to)| r == "Canary Error Rate High" && *to == Phase::Firing)
        .collect();
    assert_eq!(firing.len(), 1, "{seen:?}");
    // Over the 5-minute window the rate is 0.1 * (t - 120) / t, which
    // crosses 5 % at t = 240 s; the rule then needs 5 more minutes.
    let at = firing[0].0;
    assert!((530..=560).contains(&at), "fired at {at}s: {seen:?}");
    assert!(seen.iter().all(|(_, r, _)| r != "Canary Latency High"));
}

const GUARDED: &str = r#"
alerts:
  - name: default guard
    condition: canary_error_rate > 0.05
    duration: 0s
    severity: critical
  - name: success guard
    condition: canary_success_rate < 0.95
    duration: 0s
    severity: critical
"#;

/// `failing` of `n` canary requests, one a second, the failures spread
/// evenly (the last request of each stretch fails).
fn canary_requests(n: i64, failing: i64) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let fails = (i + 1) * failing / n > i * failing / n;
            request(i * 1000, Track::Canary, fails, 100.0)
        })
        .collect()
}

/// Below min_samples (100 by default) a rate is judged on evidence: 30
/// failing of 50 rolls back (95 % interval 0.46..0.72, all above 5 %), 2
/// of 30 does not (0.018..0.21 straddles it), and a clean canary is judged
/// healthy only once the interval is below the threshold.
#[test]
fn below_min_samples_a_rate_is_judged_on_evidence() {
    let phase = |e: &Engine, rule: &str| e.alert(rule, &subject()).unwrap().phase;
    let mut e = engine(GUARDED);
    let seen = feed(&mut e, canary_requests(50, 30));
    assert_eq!(phase(&e, "default guard"), Phase::Firing, "{seen:?}");
    assert_eq!(phase(&e, "success guard"), Phase::Firing, "{seen:?}");

    let mut e = engine(GUARDED);
    let seen = feed(&mut e, canary_requests(30, 2));
    assert!(seen.is_empty(), "2 of 30 is not evidence: {seen:?}");
    assert_eq!(phase(&e, "default guard"), Phase::Inactive);

    // Firing on evidence, then clean traffic: it does not resolve at the
    // first clean request.
    let mut e = engine(GUARDED);
    feed(&mut e, canary_requests(10, 10));
    assert_eq!(phase(&e, "default guard"), Phase::Firing);
    let clean = (10..250).map(|i| request(i * 1000, Track::Canary, false, 100.0));
    let seen = feed(&mut e, clean);
    let resolved: Vec<_> = seen
        .iter()
        .filter(|(_, r, to)| r == "default guard" && *to == Phase::Resolved)
        .collect();
    assert_eq!(resolved.len(), 1, "{seen:?}");
    // Not at the first clean request: the interval of 10 failed of the
    // first n stays above 5 % until min_samples; from there the point
    // estimate 10 / n decides: no longer above 5 % at the 200th request
    // (t = 199 s).
    assert_eq!(resolved[0].0, 199, "{seen:?}");
}

/// Without `analytics.confidence`, too few requests are no data, unless
/// the rule lowers its own `min_samples`.
#[test]
fn too_few_canary_requests_are_no_data_unless_the_rule_says_otherwise() {
    let rules = r#"
alerts:
  - name: default guard
    condition: canary_error_rate > 0.05
    duration: 0s
    severity: critical
  - name: small canary
    condition: canary_error_rate > 0.05
    duration: 0s
    severity: critical
    min_samples: 10
"#;
    let mut config = EngineConfig::default();
    config.analytics.confidence = None;
    let mut e = engine_with(rules, config);
    // 20 canary requests in the window, half failing: far below the default 100.
    let events = (0..20).map(|i| request(i * 1000, Track::Canary, i % 2 == 0, 100.0));
    let mut seen = feed(&mut e, events);
    seen.extend(feed(&mut e, [request(25_000, Track::Stable, false, 100.0)]));
    assert_eq!(
        e.alert("default guard", &subject()).unwrap().phase,
        Phase::Inactive,
        "{seen:?}"
    );
    assert_eq!(
        e.alert("small canary", &subject()).unwrap().phase,
        Phase::Firing,
        "{seen:?}"
    );
}

#[test]
fn a_silent_canary_is_visible_while_stable_still_serves() {
    let rules = r#"
alerts:
  - name: canary silent
    condition: canary_request_rate == 0
    duration: 2m
    severity: high
"#;
    let mut e = engine(rules);
    // Both tracks serve for a minute, then only stable does.
    let events = (0..20 * 60).flat_map(|s| {
        let ms = s * 1000;
        let mut v = vec![request(ms, Track::Stable, false, 100.0)];
        if s < 60 {
            v.push(request(ms, Track::Canary, false, 100.0));
        }
        v
    });
    let seen = feed(&mut e, events);
    let firing: Vec<_> = seen
        .iter()
        .filter(|(_, _, to)| *to == Phase::Firing)
        .collect();
    assert_eq!(firing.len(), 1, "{seen:?}");
    // The canary's last request leaves the 5-minute window around 6 min;
    // two minutes of silence later the rule fires.
    assert!((450..=520).contains(&firing[0].0), "{seen:?}");
}

#[test]
fn a_metric_event_takes_precedence_over_the_computed_value() {
    let rules = r#"
alerts:
  - name: errors
    condition: canary_error_rate > 0.05
    duration: 0s
    severity: critical
"#;
    let mut e = engine(rules);
    let healthy = (0..200).map(|i| request(i * 100, Track::Canary, false, 100.0));
    feed(&mut e, healthy);
    assert_eq!(
        e.alert("errors", &subject()).unwrap().phase,
        Phase::Inactive
    );
    let metric = Event::Metric(MetricEvent {
        ts: Timestamp(20_500),
        name: "canary_error_rate".into(),
        value: 0.5,
        labels: subject(),
    });
    let more = (0..50).map(|i| request(21_000 + i * 100, Track::Canary, false, 100.0));
    let seen = feed(&mut e, std::iter::once(metric).chain(more));
    assert_eq!(
        seen,
        vec![(20, "errors".to_string(), Phase::Firing)],
        "the computed 0 must not override it"
    );
    assert_eq!(e.alert("errors", &subject()).unwrap().phase, Phase::Firing);
}

#[test]
fn a_rule_on_the_judge_fires_when_the_canary_turns_slow_and_not_before() {
    let rules = r#"
alerts:
  - name: Canary Judged Slow
    condition: 'judge_latency_verdict == "high" && canary_score < 100'
    duration: 30s
    severity: high
    action: auto_rollback
"#;
    let mut e = engine(rules);
    // 10 requests a second on each track, latencies spread 200-400 ms on
    // both; from minute 3 the canary's are 1.5 times as long.
    let events = (0..8 * 60 * 10).flat_map(|i| {
        let ms = i * 100;
        let spread = 200.0 + (i * 37 % 200) as f64;
        let slow = if ms >= 180_000 { 1.5 } else { 1.0 };
        [
            request(ms, Track::Canary, false, spread * slow),
            request(ms, Track::Stable, false, spread),
        ]
    });
    let seen = feed(&mut e, events);
    let firing: Vec<_> = seen
        .iter()
        .filter(|(_, _, to)| *to == Phase::Firing)
        .collect();
    assert_eq!(firing.len(), 1, "{seen:?}");
    // The evidence is overwhelming within seconds, but the mean ratio of
    // the experiment (every request since the first) passes the 20 %
    // tolerance only once 40 % of it is slow (1 + 0.5 * 0.4 = 1.2), at
    // 300 s: pending about 120 s after the change, firing 30 s later.
    let (at, _, _) = firing[0];
    assert!(
        (180 + 120 + 30 - 20..=180 + 120 + 30 + 20).contains(at),
        "{seen:?}"
    );
    assert!(seen.iter().all(|(t, _, _)| *t >= 280), "{seen:?}");
    let judged = e.analytics(10).remove(0).judgement;
    assert_eq!(
        judged.latency.unwrap().verdict,
        canaryd_rules::judge::Verdict::High
    );
}

#[test]
fn a_condition_may_name_a_verdict_but_no_other_string() {
    let options = LoadOptions::default();
    let rule = |condition: &str| {
        format!(
            "alerts:\n  - name: r\n    condition: '{condition}'\n    duration: 1m\n    severity: low\n    action: notify_ml_team\n"
        )
    };
    for ok in [
        r#"judge_error_rate_verdict == "high""#,
        r#"judge_fairness_verdict != "pass""#,
        r#"judge_latency_verdict == "low" || canary_score < 50"#,
    ] {
        load_rules("r.yaml", rule(ok).as_bytes(), &options)
            .unwrap_or_else(|e| panic!("{ok}: {e:?}"));
    }
    let err = load_rules(
        "r.yaml",
        rule(r#"judge_latency_verdict == "hihg""#).as_bytes(),
        &options,
    )
    .unwrap_err();
    let err = format!("{}", err[0]);
    assert!(err.contains("unknown string \"hihg\""), "{err}");
}
