//! `canaryd replay` on the built-in example, as the README's first command runs it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use canaryd_tests::{assert_golden, canaryd, repo, stderr, stdout};
use serde_json::Value;

const RULES: &str = "deploy/examples/canary-alerts.yaml";
const EVENTS: &str = "deploy/examples/incident.jsonl";

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn the_example_incident_rolls_the_summarizer_back() {
    let out = canaryd(&[
        "replay", "--rules", RULES, "--events", EVENTS, "--output", "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    let actions: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "action").collect();
    assert_eq!(actions.len(), 2, "{actions:#?}");
    let rollback = actions[0];
    assert_eq!(rollback["action"], "auto_rollback");
    assert_eq!(rollback["subject"]["model"], "summarizer");
    assert_eq!(rollback["dry_run"], true);
    assert_eq!(rollback["deadline_s"], 30.0);
    assert_eq!(rollback["rule"], "Canary Error Rate High");
    // The spike starts at 12:06; the rule needs 5 minutes.
    assert_eq!(rollback["ts"], "2026-03-01T12:11:00.000Z");
    assert!(
        rollback["evidence"]["values"]["canary_error_rate"]
            .as_f64()
            .unwrap()
            > 0.05
    );
    assert_eq!(rollback["evidence"]["thresholds"][0]["value"], 0.05);
    // Every action follows the transition that caused it, at the same time.
    let firing = lines
        .iter()
        .position(|l| {
            l["kind"] == "transition"
                && l["to"] == "firing"
                && l["rule"] == "Canary Error Rate High"
        })
        .unwrap();
    assert_eq!(lines[firing + 1]["kind"], "action");
    assert_eq!(lines[firing]["ts"], rollback["ts"]);
    // The healthy translator never moves.
    assert!(lines.iter().all(|l| l["subject"]["model"] != "translator"));
    let summary = lines.last().unwrap();
    assert_eq!(summary["kind"], "summary");
    assert_eq!(summary["malformed"], 0);
    assert_eq!(summary["actions"], 2);
}

#[test]
fn json_output_matches_the_golden_file() {
    let out = canaryd(&[
        "replay", "--rules", RULES, "--events", EVENTS, "--output", "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_golden("incident.json", &stdout(&out));
}

#[test]
fn text_output_matches_the_golden_file() {
    let out = canaryd(&["replay", "--rules", RULES, "--events", EVENTS]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_golden("incident.txt", &stdout(&out));
}

#[test]
fn malformed_lines_are_reported_skipped_and_change_no_decision() {
    let clean = std::fs::read(repo(EVENTS)).unwrap();
    let noise: Vec<Vec<u8>> = vec![
        b"this is not json".to_vec(),
        b"{\"type\":\"metric\",\"ts\":\"2026-03-01T12:00:00Z\"".to_vec(),
        br#"{"type":"metric","ts":"2026-03-01T12:00:00Z","name":"canary_error_rate","value":"high","labels":{"model":"summarizer"}}"#.to_vec(),
        br#"{"type":"metric","ts":"noon","name":"canary_error_rate","value":0.9,"labels":{"model":"summarizer"}}"#.to_vec(),
        br#"{"type":"metric","ts":"2026-03-01T12:00:00Z","value":0.9}"#.to_vec(),
        br#"{"type":"gauge","ts":"2026-03-01T12:00:00Z"}"#.to_vec(),
        b"\xff\xfe\xfd binary".to_vec(),
        br#"[1,2,3]"#.to_vec(),
        br#"{"type":"inference","ts":"2026-03-01T12:00:00Z","model":"m","version":"v","track":"canary","latency_ms":-5,"error":false}"#.to_vec(),
    ];
    let mut noisy = Vec::new();
    let mut expected_lines = Vec::new();
    let mut line_no = 0;
    for (i, line) in clean
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .enumerate()
    {
        if i % 50 == 7 {
            let bad = &noise[(i / 50) % noise.len()];
            noisy.extend_from_slice(bad);
            noisy.push(b'\n');
            line_no += 1;
            expected_lines.push(line_no);
        }
        noisy.extend_from_slice(line);
        noisy.push(b'\n');
        line_no += 1;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("noisy.jsonl");
    std::fs::write(&path, &noisy).unwrap();

    let decisions = |events: &str| {
        let out = canaryd(&[
            "replay", "--rules", RULES, "--events", events, "--output", "json",
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
        let lines = json_lines(&stdout(&out));
        let kept: Vec<Value> = lines
            .iter()
            .filter(|l| l["kind"] != "summary")
            .cloned()
            .collect();
        (kept, lines.last().cloned().unwrap(), stderr(&out))
    };
    let (clean_decisions, _, _) = decisions(EVENTS);
    let (noisy_decisions, summary, diag) = decisions(path.to_str().unwrap());
    assert_eq!(clean_decisions, noisy_decisions);
    assert!(!clean_decisions.is_empty());
    assert_eq!(summary["malformed"], expected_lines.len());
    for n in &expected_lines {
        assert!(
            diag.contains(&format!("line {n}: skipped: ")),
            "line {n} not reported in:\n{diag}"
        );
    }
}

#[test]
fn replay_with_a_config_applies_its_extra_rules() {
    let out = canaryd(&[
        "replay",
        "--config",
        "deploy/examples/canaryd.yaml",
        "--events",
        EVENTS,
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    // The 20%-over-baseline latency criterion fires too (medium: reduce traffic).
    assert!(
        lines.iter().any(|l| l["kind"] == "action"
            && l["rule"] == "Canary Latency Regression"
            && l["action"] == "reduce_traffic"),
        "{lines:#?}"
    );
}

#[test]
fn a_missing_events_file_is_a_clear_error() {
    let out = canaryd(&["replay", "--rules", RULES, "--events", "no/such/file.jsonl"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("no/such/file.jsonl"),
        "{}",
        stderr(&out)
    );
}

/// Inference traffic for `model`: `per_second` events per track while the
/// track is up, over `seconds`, stamped from 12:00:00.
fn traffic(
    model: &str,
    seconds: i64,
    per_second: i64,
    canary_up: impl Fn(i64) -> bool,
    stable_up: impl Fn(i64) -> bool,
) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    for ms in (0..seconds * 1000).step_by((1000 / per_second) as usize) {
        for (track, up) in [
            ("canary", canary_up(ms / 1000)),
            ("stable", stable_up(ms / 1000)),
        ] {
            if up {
                out.push((
                    ms,
                    format!(
                        r#"{{"type":"inference","ts":"2026-03-01T12:{:02}:{:02}.{:03}Z","model":"{model}","version":"v2","track":"{track}","latency_ms":120.5,"error":false}}"#,
                        ms / 60_000,
                        (ms / 1000) % 60,
                        ms % 1000
                    ),
                ));
            }
        }
    }
    out
}

/// The firing transitions of "Canary Silent" when `events` are replayed
/// through the shipped rules.
fn silent_firings(events: Vec<(i64, String)>) -> Vec<Value> {
    replay_events(&[RULES, "deploy/examples/playbook-triggers.yaml"], events)
        .into_iter()
        .filter(|l| {
            l["kind"] == "transition" && l["rule"] == "Canary Silent" && l["to"] == "firing"
        })
        .collect()
}

/// `canaryd replay --output json` of `events` (timed lines, put in time
/// order here) through the rule files `rules`; its output lines.
fn replay_events(rules: &[&str], mut events: Vec<(i64, String)>) -> Vec<Value> {
    events.sort_by_key(|(ms, _)| *ms);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let text: Vec<String> = events.into_iter().map(|(_, l)| l).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    let mut args = vec!["replay"];
    for file in rules {
        args.extend(["--rules", file]);
    }
    args.extend(["--events", path.to_str().unwrap(), "--output", "json"]);
    let out = canaryd(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    json_lines(&stdout(&out))
}

#[test]
fn a_canary_that_stops_while_its_stable_serves_is_rolled_back_within_30_s() {
    // Both tracks at 5 requests/s for 2 minutes; the canary stops at 60 s.
    let firings = silent_firings(traffic("summarizer", 120, 5, |s| s < 60, |_| true));
    assert_eq!(firings.len(), 1, "{firings:#?}");
    // The last canary event is at 59.8 s; the rule fires 20 s after it.
    let ts = firings[0]["ts"].as_str().unwrap();
    assert!(
        ("2026-03-01T12:01:19.800Z"..="2026-03-01T12:01:29.800Z").contains(&ts),
        "fired at {ts}, not within 30 s of the last canary event"
    );
}

#[test]
fn a_silent_canary_is_not_fired_on_when_both_tracks_go_quiet_or_it_never_started() {
    // Both tracks of `summarizer` stop at 60 s; `translator` keeps event
    // time moving.
    let mut events = traffic("summarizer", 120, 5, |s| s < 60, |s| s < 60);
    events.extend(traffic("translator", 120, 5, |_| true, |_| true));
    // A new canary that has not sent anything yet, beside a busy stable.
    events.extend(traffic("ranker", 120, 5, |_| false, |_| true));
    // A low-traffic canary: one request every 15 s is its normal pace.
    events.extend(
        traffic("tagger", 120, 5, |_| true, |_| true)
            .into_iter()
            .filter(|(ms, l)| !l.contains(r#""track":"canary""#) || ms % 15_000 == 0),
    );
    let firings = silent_firings(events);
    assert!(firings.is_empty(), "{firings:#?}");
}

#[test]
fn a_lone_far_future_event_does_not_move_replay_time_but_a_confirmed_jump_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut lines: Vec<String> = std::fs::read_to_string(repo(EVENTS))
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    // A wrong clock, a third of the way in, before the spike.
    let wrong = r#"{"type":"metric","ts":"2099-01-01T00:00:00Z","name":"canary_error_rate","value":0.001,"labels":{"model":"summarizer","namespace":"ml-serving"}}"#;
    lines.insert(lines.len() / 3, wrong.to_string());
    // A recording that resumes a day later: three events confirm the jump.
    for minute in 0..3 {
        lines.push(format!(
            r#"{{"type":"metric","ts":"2026-03-02T12:0{minute}:00Z","name":"canary_p95_latency","value":9000,"labels":{{"model":"later","namespace":"ml-serving"}}}}"#
        ));
    }
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = canaryd(&[
        "replay",
        "--rules",
        RULES,
        "--events",
        path.to_str().unwrap(),
        "--output",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    let rollback = lines
        .iter()
        .find(|l| l["kind"] == "action" && l["action"] == "auto_rollback")
        .expect("the incident is still seen");
    assert_eq!(rollback["ts"], "2026-03-01T12:11:00.000Z");
    let summary = lines.iter().find(|l| l["kind"] == "summary").unwrap();
    assert_eq!(summary["future"], 1, "{summary}");
    assert_eq!(summary["late"], 0, "{summary}");
    assert!(
        stderr(&out).contains("2099-01-01T00:00:00.000Z is more than 1h ahead of event time"),
        "{}",
        stderr(&out)
    );
    // The day-later events were applied: their subject went pending.
    assert!(
        lines
            .iter()
            .any(|l| l["kind"] == "transition" && l["subject"]["model"] == "later"),
        "{lines:#?}"
    );
}

#[test]
fn at_low_traffic_the_error_rate_lower_bound_rolls_back_30_of_50_failing_and_not_2_of_30() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yaml");
    std::fs::write(
        &rules,
        r#"alerts:
  - name: "Canary Errors On Evidence"
    condition: "canary_requests >= 20 && canary_error_rate_lower > 0.05"
    duration: "0s"
    severity: "high"
"#,
    )
    .unwrap();
    // Over one minute: `failing` serves 50 canary requests, 30 failing;
    // `noisy` serves 30, 2 failing; errors spread evenly. Both far below
    // min_samples (100). The bound is checked at every refresh, so the
    // rule asks for 20 requests first: one early error alone has a lower
    // bound of 0.21.
    let mut events = Vec::new();
    for (model, requests, errors) in [("failing", 50u64, 30u64), ("noisy", 30, 2)] {
        for i in 0..requests {
            let ms = i * 60_000 / requests;
            events.push((
                ms as i64,
                format!(
                    r#"{{"type":"inference","ts":"2026-03-01T12:00:{:02}.{:03}Z","model":"{model}","version":"v2","track":"canary","latency_ms":120.5,"error":{}}}"#,
                    ms / 1000,
                    ms % 1000,
                    (i + 1) * errors / requests > i * errors / requests
                ),
            ));
        }
    }
    let firing = |rules: &str| {
        replay_events(&[rules], events.clone())
            .into_iter()
            .filter(|l| l["kind"] == "transition" && l["to"] == "firing")
            .map(|l| l["subject"]["model"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(firing(rules.to_str().unwrap()), ["failing"]);
    // The playbook's own rule, guarded by min_samples, sees neither.
    assert!(firing(RULES).is_empty());
}

/// The README's backtest: the example config (the playbook's plan) over
/// 90 hours of recorded traffic.
fn backtest(events: &str, format: &str) -> std::process::Output {
    canaryd(&[
        "replay",
        "--config",
        "deploy/examples/canaryd.yaml",
        "--events",
        events,
        "--output",
        format,
    ])
}

#[test]
fn a_backtest_of_the_playbook_plan_carries_the_canary_to_complete_through_a_pause_and_a_step_back()
{
    let out = backtest("deploy/examples/rollout.jsonl", "json");
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    let rollout: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "rollout").collect();
    let timeline: Vec<(String, u64)> = rollout
        .iter()
        .map(|l| {
            (
                l["event"].as_str().unwrap().to_string(),
                l["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    let at = |event: &str, weight: u64| {
        timeline
            .iter()
            .position(|(e, w)| e == event && *w == weight)
            .unwrap_or_else(|| panic!("no {event} at {weight}%: {timeline:?}"))
    };
    // The playbook's weights, in order, with the two episodes between.
    let order = [
        at("stage", 5),
        at("stage", 10),
        at("stepped_back", 10),
        at("promoted", 100),
        at("complete", 100),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{timeline:?}");
    assert!(timeline.iter().any(|(e, _)| e == "paused"));
    assert!(timeline.iter().any(|(e, _)| e == "resumed"));
    assert!(!timeline.iter().any(|(e, _)| e == "rolled_back"));
    // Each stage held its plan's time: 1 h + 3 h (the low alert's half
    // hour added) then, after the step back, 3 h + 20 h + 24 h, and 24 h
    // soaked: complete some 83 hours after the start.
    let ts = |i: usize| {
        chrono::DateTime::parse_from_rfc3339(rollout[i]["ts"].as_str().unwrap()).unwrap()
    };
    let hours = (ts(rollout.len() - 1) - ts(0)).num_minutes() as f64 / 60.0;
    assert!((80.0..86.0).contains(&hours), "{hours} h: {timeline:?}");
    let promoted = rollout[order[3]];
    assert_eq!(promoted["subject"]["model"], "summarizer");
    assert_eq!(promoted["version"], "v2.1.0");
    assert_eq!(promoted["stage"], 5);
    let summary = lines.last().unwrap();
    assert_eq!(summary["rollout_changes"], rollout.len());
}

#[test]
fn a_backtest_matches_the_golden_timeline() {
    let out = backtest("deploy/examples/rollout.jsonl", "text");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_golden("rollout.txt", &stdout(&out));
}

#[test]
fn the_recorded_incident_rolls_the_rollout_back_at_the_firing_and_never_promotes() {
    let out = backtest(EVENTS, "json");
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = json_lines(&stdout(&out));
    let rollout: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "rollout").collect();
    assert_golden(
        "incident-rollout.json",
        &rollout.iter().map(|l| format!("{l}\n")).collect::<String>(),
    );
    let summarizer: Vec<&&Value> = rollout
        .iter()
        .filter(|l| l["subject"]["model"] == "summarizer")
        .collect();
    let events: Vec<&str> = summarizer
        .iter()
        .map(|l| l["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["stage", "paused", "rolled_back"]);
    let rollback = summarizer[2];
    assert_eq!(rollback["weight"], 0);
    assert_eq!(rollback["ts"], "2026-03-01T12:11:00.000Z", "at the firing");
    assert!(
        rollback["reason"]
            .as_str()
            .unwrap()
            .contains("Canary Error Rate High")
    );
    // The healthy translator starts its first stage and holds there: an
    // hour of plan, 25 minutes of recording.
    let translator: Vec<&str> = rollout
        .iter()
        .filter(|l| l["subject"]["model"] == "translator")
        .map(|l| l["event"].as_str().unwrap())
        .collect();
    assert_eq!(translator, ["stage"]);
}

/// Twenty minutes of a low-traffic canary (one request every 10 s, far
/// below `min_samples` in the 5-minute window) beside a busy stable: the
/// canary fails `canary_fails(i)` of its requests.
fn low_traffic(dir: &std::path::Path, name: &str, canary_fails: impl Fn(i64) -> bool) -> String {
    let mut lines = Vec::new();
    for s in 0..20 * 60i64 {
        let ts = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(1_772_366_400_000 + ms)
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        };
        for k in 0..5 {
            lines.push(format!(
                r#"{{"type":"inference","ts":"{}","model":"quiet","version":"v1","track":"stable","latency_ms":180,"error":false}}"#,
                ts(s * 1000 + k * 200)
            ));
        }
        if s % 10 == 0 {
            let i = s / 10;
            lines.push(format!(
                r#"{{"type":"inference","ts":"{}","model":"quiet","version":"v2","track":"canary","latency_ms":190,"error":{}}}"#,
                ts(s * 1000 + 100),
                canary_fails(i)
            ));
        }
    }
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_string()
}

/// Low traffic, decided on evidence: a canary failing 6 in 10 of its few
/// requests is rolled back by the playbook's rule (its window never holds
/// `min_samples` requests); one failing 1 in 25, noise around the 5 %
/// line, is not. Without `analytics.confidence` the failing one would
/// never be rolled back.
#[test]
fn a_failing_canary_at_very_low_traffic_is_rolled_back_and_noise_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let failing = low_traffic(dir.path(), "failing.jsonl", |i| i % 10 < 6);
    let out = canaryd(&["replay", "--rules", RULES, "--events", &failing]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_golden("low-traffic-failing.txt", &stdout(&out));
    assert!(
        stdout(&out).contains("ACTION    auto_rollback"),
        "{}",
        stdout(&out)
    );

    let noise = low_traffic(dir.path(), "noise.jsonl", |i| i % 25 == 24);
    let out = canaryd(&["replay", "--rules", RULES, "--events", &noise]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_golden("low-traffic-noise.txt", &stdout(&out));
    assert!(!stdout(&out).contains("auto_rollback"), "{}", stdout(&out));

    let config = dir.path().join("count-guard.yaml");
    std::fs::write(
        &config,
        format!(
            "rules: [{}]\nanalytics: {{confidence: null}}\n",
            repo(RULES).display()
        ),
    )
    .unwrap();
    let out = canaryd(&[
        "replay",
        "--config",
        config.to_str().unwrap(),
        "--events",
        &failing,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        !stdout(&out).contains("auto_rollback"),
        "a fixed count guard never sees enough requests: {}",
        stdout(&out)
    );
}

/// Twelve minutes of two models at 5 requests a second a track, as a
/// consumer that stalled on `ranker`'s partition would record them:
/// `ranker`'s events from 12:03 to 12:08 arrive only after `summarizer`'s
/// up to 12:08, in their own order. `ranker`'s canary fails one request
/// in five from 12:04, while its partition is stalled.
fn stalled_partition(dir: &std::path::Path) -> String {
    let line = |model: &str, ms: i64, track: &str, error: bool| {
        let ts = chrono::DateTime::from_timestamp_millis(1_772_366_400_000 + ms)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        format!(
            r#"{{"type":"inference","ts":"{ts}","model":"{model}","version":"v2","track":"{track}","latency_ms":150,"error":{error}}}"#
        )
    };
    let model = |name: &str, from_s: i64, to_s: i64| -> Vec<String> {
        let mut out = Vec::new();
        for i in from_s * 5..to_s * 5 {
            let ms = i * 200;
            let failing = name == "ranker" && ms >= 4 * 60_000 && i % 5 == 0;
            out.push(line(name, ms, "canary", failing));
            out.push(line(name, ms + 50, "stable", false));
        }
        out
    };
    let interleaved = |from_s: i64, to_s: i64| -> Vec<String> {
        let (a, b) = (
            model("summarizer", from_s, to_s),
            model("ranker", from_s, to_s),
        );
        a.chunks(2)
            .zip(b.chunks(2))
            .flat_map(|(x, y)| x.iter().chain(y))
            .cloned()
            .collect()
    };
    let mut lines = interleaved(0, 180);
    lines.extend(model("summarizer", 180, 480));
    lines.extend(model("ranker", 180, 480));
    lines.extend(interleaved(480, 720));
    let path = dir.join("stalled.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.to_str().unwrap().to_string()
}

/// The catch-up after a stall: evaluated per partition, as `canaryd run`
/// does (`ranker` and `summarizer` fall in different partitions of two),
/// `ranker`'s backlog is in order within its partition and none of it is
/// late: its canary's error rate passes 5 % at 12:05:09 and it is rolled
/// back five minutes later, at 12:10:09, as without the stall. Judged as
/// one stream, the backlog is five minutes behind `summarizer`'s events,
/// dropped as late, and the failure is seen only from 12:08: it has not
/// held five minutes when the recording ends.
#[test]
fn a_stalled_partitions_backlog_is_evaluated_in_its_partition_and_rolls_back_on_time() {
    let dir = tempfile::tempdir().unwrap();
    let events = stalled_partition(dir.path());
    let out = canaryd(&[
        "replay",
        "--rules",
        RULES,
        "--events",
        &events,
        "--partitions",
        "2",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_golden("stall-catch-up.txt", &stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("0 late"), "{text}");
    assert!(
        text.contains("decision: auto_rollback model=ranker at 2026-03-01T12:10:09.000Z"),
        "{text}"
    );

    let one = canaryd(&["replay", "--rules", RULES, "--events", &events]);
    assert!(one.status.success(), "{}", stderr(&one));
    let text = stdout(&one);
    assert!(text.contains("decision: no action"), "{text}");
    assert!(!text.contains(" 0 late"), "{text}");
}
