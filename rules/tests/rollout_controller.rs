//! The rollout controller on top of the engine, as replay and live mode
//! drive it: events in, rollout changes out, in event time.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::collections::BTreeMap;
use std::sync::Arc;

use canaryd_rules::event::{InferenceEvent, MetricEvent, Track};
use canaryd_rules::rollout::controller::{
    Change, ChangeKind, Controller, Found, Gating, NamedPlan, Plans, Watched,
};
use canaryd_rules::rollout::{Plan, Stage};
use canaryd_rules::{
    Engine, EngineConfig, Event, Ingested, LoadOptions, RuleSet, Span, Timestamp, load_rules,
};

const RULES: &str = r#"
alerts:
  - name: "Canary Errors"
    condition: "canary_error_rate > 0.05"
    duration: "2s"
    severity: "critical"
    action: "auto_rollback"
  - name: "Canary Slow"
    condition: "canary_p95_latency > 1000"
    duration: "2s"
    severity: "medium"
    action: "reduce_traffic"
  - name: "Canary Cost"
    condition: "canary_cost_per_request > 0.5"
    duration: "0s"
    severity: "low"
"#;

/// 5% for 10 s, 50% for 10 s (5 canary events), 100% soaked 10 s.
fn plans(gating: Gating) -> Plans {
    Plans {
        default: Some(NamedPlan {
            name: "default".into(),
            plan: Plan {
                stages: vec![
                    Stage {
                        weight: 5,
                        hold: Span::seconds(10),
                        min_requests: 1,
                    },
                    Stage {
                        weight: 50,
                        hold: Span::seconds(10),
                        min_requests: 5,
                    },
                ],
                soak: Span::seconds(10),
            },
            gating,
            read_back: true,
        }),
        models: Default::default(),
        manual: Default::default(),
    }
}

struct Run {
    engine: Engine,
    controller: Controller,
    changes: Vec<Change>,
}

impl Run {
    fn new(gating: Gating) -> Run {
        let options = LoadOptions::default();
        let rules = Arc::new(
            RuleSet::new(load_rules("t.yaml", RULES.as_bytes(), &options).unwrap()).unwrap(),
        );
        let config = EngineConfig {
            stale_after: Span::seconds(5),
            ..EngineConfig::default()
        };
        Run {
            engine: Engine::new(rules.clone(), &options.vocabulary, config),
            controller: Controller::new(Arc::new(plans(gating)), rules),
            changes: Vec::new(),
        }
    }

    /// One event through the engine and the controller, as replay and
    /// live mode do it.
    fn event(&mut self, event: Event) {
        let mut outputs = Vec::new();
        let applied = self.engine.ingest(&event, &mut outputs) == Ingested::Applied;
        let now = self.engine.watermark().unwrap();
        let changes =
            self.controller
                .after(&event, applied, self.engine.last_subject(), &outputs, now);
        self.changes.extend(changes);
    }

    fn metric(&mut self, sec: i64, name: &str, value: f64) {
        self.event(metric(sec, name, value));
    }

    /// A healthy canary and stable, one second each, from `from` to `to`.
    fn healthy(&mut self, from: i64, to: i64) {
        for s in from..to {
            self.metric(s, "canary_error_rate", 0.001);
            self.metric(s, "stable_error_rate", 0.001);
        }
    }

    /// (second, kind, weight) of each change.
    fn timeline(&self) -> Vec<(i64, ChangeKind, u8)> {
        self.changes
            .iter()
            .map(|c| (c.ts.millis() / 1000, c.kind, c.weight))
            .collect()
    }
}

fn metric(sec: i64, name: &str, value: f64) -> Event {
    Event::Metric(MetricEvent {
        ts: Timestamp(sec * 1000),
        name: name.into(),
        value,
        labels: BTreeMap::from([("model".to_string(), "m".to_string())]),
    })
}

use ChangeKind::*;

#[test]
fn a_healthy_canary_is_carried_through_every_stage_promoted_and_completed() {
    let mut run = Run::new(Gating::Every);
    run.healthy(0, 35);
    assert_eq!(
        run.timeline(),
        [
            (0, Stage, 5),
            (10, Stage, 50),
            (20, Promoted, 100),
            (30, Complete, 100)
        ]
    );
    assert!(run.changes[..3].iter().all(|c| c.traffic));
    assert!(!run.changes[3].traffic, "completion changes no traffic");
    assert_eq!(run.changes[1].stage, 2);
    assert_eq!(run.changes[2].stage, 3);
}

#[test]
fn a_critical_rule_rolls_back_at_once_with_its_name_and_the_version_stays_back() {
    let mut run = Run::new(Gating::Every);
    run.healthy(0, 12);
    for s in 12..16 {
        run.metric(s, "canary_error_rate", 0.2);
    }
    // Healthy again: a rolled-back version is not promoted again.
    run.healthy(16, 60);
    let timeline = run.timeline();
    assert_eq!(
        timeline,
        [
            (0, Stage, 5),
            (10, Stage, 50),
            (12, Paused, 50),
            (14, RolledBack, 0)
        ]
    );
    let rollback = run.changes.last().unwrap();
    assert!(rollback.traffic);
    assert!(
        rollback.reason.contains("Canary Errors"),
        "{}",
        rollback.reason
    );
    assert_eq!(rollback.stage, 2, "rolled back from stage 2");
}

#[test]
fn reduce_traffic_steps_back_one_stage_and_restarts_its_hold() {
    let mut run = Run::new(Gating::Every);
    run.healthy(0, 12);
    for s in 12..15 {
        run.metric(s, "canary_p95_latency", 2000.0);
        run.metric(s, "canary_error_rate", 0.001);
    }
    run.metric(15, "canary_p95_latency", 100.0);
    run.healthy(15, 40);
    let timeline = run.timeline();
    assert_eq!(
        &timeline[..4],
        [
            (0, Stage, 5),
            (10, Stage, 50),
            (12, Paused, 50),
            (14, SteppedBack, 5)
        ]
    );
    // The hold of stage 1 starts again at 14 and needs 10 clean seconds
    // after the slow rule clears at 15.
    let next = timeline[4..]
        .iter()
        .find(|(_, kind, _)| *kind == Stage)
        .unwrap();
    assert_eq!(next.2, 50);
    assert!(next.0 >= 25, "{timeline:?}");
}

#[test]
fn a_low_alert_stops_the_hold_clock_until_it_resolves() {
    let mut run = Run::new(Gating::Every);
    run.healthy(0, 4);
    for s in 4..8 {
        run.metric(s, "canary_cost_per_request", 0.9);
        run.metric(s, "canary_error_rate", 0.001);
    }
    run.metric(8, "canary_cost_per_request", 0.1);
    run.healthy(8, 20);
    let timeline = run.timeline();
    assert_eq!(
        timeline,
        [
            (0, Stage, 5),
            (4, Paused, 5),
            (8, Resumed, 5),
            (14, Stage, 50)
        ],
        "4 s clean before the alert, 6 after: passed at 14, not 10"
    );
}

#[test]
fn gating_only_the_named_rules_ignores_the_others() {
    let mut run = Run::new(Gating::Named(vec!["Canary Errors".into()]));
    run.healthy(0, 4);
    for s in 4..8 {
        run.metric(s, "canary_cost_per_request", 0.9);
        run.metric(s, "canary_error_rate", 0.001);
    }
    run.healthy(8, 12);
    assert_eq!(run.timeline(), [(0, Stage, 5), (10, Stage, 50)]);
}

#[test]
fn a_silent_canary_never_passes_it_waits_for_data_and_says_so() {
    let mut run = Run::new(Gating::Every);
    run.healthy(0, 12);
    // Only the stable from here: stage 2 needs 5 canary events in its hold.
    for s in 12..40 {
        run.metric(s, "stable_error_rate", 0.001);
    }
    let timeline = run.timeline();
    assert_eq!(&timeline[..2], [(0, Stage, 5), (10, Stage, 50)]);
    assert!(
        timeline[2..].iter().all(|(_, kind, _)| *kind == Paused),
        "{timeline:?}"
    );
    assert!(
        run.changes[2..]
            .iter()
            .any(|c| c.reason.contains("no fresh data") || c.reason.contains("waiting for data")),
        "{:?}",
        run.changes
    );
    assert!(!timeline.iter().any(|(_, kind, _)| *kind == Promoted));
}

#[test]
fn a_new_canary_version_starts_over_from_the_first_stage() {
    let mut run = Run::new(Gating::Every);
    for s in 0..12 {
        run.event(canary(s, "v2"));
    }
    for s in 12..14 {
        run.event(canary(s, "v3"));
    }
    assert_eq!(
        run.timeline(),
        [(0, Stage, 5), (10, Stage, 50), (12, Stage, 5)]
    );
    assert_eq!(run.changes[2].version, "v3");
    assert_eq!(run.controller.len(), 1);
}

#[test]
fn a_stage_short_of_canary_events_waits_for_data_then_passes_when_they_come() {
    let mut run = Run::new(Gating::Every);
    run.healthy(0, 12);
    // Stage 2 (from 10) wants 5 canary events in its 10 s hold: 11, then
    // one every 4 s, is 4.
    for s in (12..24).step_by(4) {
        run.metric(s, "canary_error_rate", 0.001);
    }
    let waiting = run.changes.iter().find(|c| c.kind == Paused).unwrap();
    assert!(waiting.reason.contains("waiting for data"), "{waiting:?}");
    assert!(!run.timeline().iter().any(|(_, kind, _)| *kind == Promoted));
    run.healthy(24, 30);
    assert_eq!(
        run.timeline().last().unwrap().1,
        Promoted,
        "{:?}",
        run.timeline()
    );
}

#[test]
fn a_controller_restored_mid_hold_carries_on_where_it_stood() {
    let mut whole = Run::new(Gating::Every);
    whole.healthy(0, 35);

    let mut first = Run::new(Gating::Every);
    first.healthy(0, 15);
    let saved = first.controller.state();
    assert_eq!(saved.len(), 1);
    // A restart: a new controller, the engine as the changelog restored it.
    let mut second = Run::new(Gating::Every);
    second.engine = first.engine;
    second.controller.restore(saved, second.engine.alerts());
    second.healthy(15, 35);

    let mut resumed = first.changes;
    resumed.extend(second.changes);
    assert_eq!(resumed, whole.changes, "promoted once, at the same time");
}

#[test]
fn a_restored_controller_still_sees_the_gating_alert_the_engine_restored() {
    let mut first = Run::new(Gating::Every);
    first.healthy(0, 4);
    for s in 4..6 {
        first.metric(s, "canary_cost_per_request", 0.9);
    }
    let saved = first.controller.state();
    let mut second = Run::new(Gating::Every);
    second.engine = first.engine;
    second.controller.restore(saved, second.engine.alerts());
    // Still over the threshold: the hold clock must stay stopped.
    for s in 6..20 {
        second.metric(s, "canary_error_rate", 0.001);
    }
    assert!(
        !second.timeline().iter().any(|(_, kind, _)| *kind == Stage),
        "passed a stage while a gating alert was firing: {:?}",
        second.timeline()
    );
}

#[test]
fn a_person_pauses_resumes_promotes_and_aborts_and_each_says_who() {
    use canaryd_rules::rollout::Command;
    let mut run = Run::new(Gating::Every);
    run.healthy(0, 3);
    let by = || "alice".to_string();
    let now = Timestamp(3_000);
    let paused = run
        .controller
        .command("m", Command::Pause { by: by() }, now)
        .unwrap();
    assert_eq!((paused[0].kind, paused[0].traffic), (Paused, false));
    assert_eq!(paused[0].reason, "paused by alice");
    // Paused: the hold does not run, however long.
    run.healthy(3, 30);
    assert_eq!(run.timeline(), [(0, Stage, 5)]);
    assert!(
        run.controller
            .command("m", Command::Pause { by: by() }, Timestamp(30_000))
            .is_err()
    );
    let resumed = run
        .controller
        .command("m", Command::Resume { by: by() }, Timestamp(30_000))
        .unwrap();
    assert_eq!(resumed[0].kind, Resumed);
    let promoted = run
        .controller
        .command("m", Command::Promote { by: by() }, Timestamp(30_000))
        .unwrap();
    assert_eq!(
        (promoted[0].kind, promoted[0].weight, promoted[0].traffic),
        (Stage, 50, true)
    );
    assert!(
        promoted[0].reason.contains("promoted by alice"),
        "{}",
        promoted[0].reason
    );
    let last = run
        .controller
        .command("m", Command::Promote { by: by() }, Timestamp(31_000))
        .unwrap();
    assert_eq!((last[0].kind, last[0].weight), (Promoted, 100));
    let aborted = run
        .controller
        .command("m", Command::Abort { by: by() }, Timestamp(32_000))
        .unwrap();
    assert_eq!(
        (aborted[0].kind, aborted[0].weight, aborted[0].traffic),
        (RolledBack, 0, true)
    );
    assert!(aborted[0].reason.contains("aborted by alice"));
    // Rolled back: only resume starts it again, from stage 1.
    assert!(
        run.controller
            .command("m", Command::Promote { by: by() }, Timestamp(33_000))
            .is_err()
    );
    let again = run
        .controller
        .command("m", Command::Resume { by: by() }, Timestamp(33_000))
        .unwrap();
    assert_eq!(
        (again[0].kind, again[0].weight, again[0].traffic),
        (Resumed, 5, true)
    );
    assert!(
        run.controller
            .command("other", Command::Pause { by: by() }, now)
            .is_err()
    );
}

/// A new owner with read-back on: nothing restored, the traffic object to
/// be read first.
fn reading_run() -> Run {
    let mut run = Run::new(Gating::Every);
    run.controller = run.controller.clone().with_read_back(true);
    run
}

impl Run {
    fn controller_rules(&self) -> Arc<RuleSet> {
        let options = LoadOptions::default();
        Arc::new(RuleSet::new(load_rules("t.yaml", RULES.as_bytes(), &options).unwrap()).unwrap())
    }

    fn read_back(&mut self, found: Found) {
        let now = self.engine.watermark().unwrap();
        let changes = self
            .controller
            .read_back("m", found, self.engine.alerts(), now);
        self.changes.extend(changes);
    }
}

/// What the object would record after `first` ran: its state, as
/// canaryd's annotation carries it.
fn recorded(first: &Run) -> Found {
    let (_, rollout) = first.controller.state().pop().unwrap();
    Found::Recorded {
        plan: "default".into(),
        rollout,
        hand_edit: None,
    }
}

#[test]
fn with_read_back_a_model_first_seen_waits_for_its_object_and_is_looked_up_once() {
    let mut run = reading_run();
    run.healthy(0, 3);
    assert!(run.changes.is_empty(), "nothing before the object is read");
    assert_eq!(run.controller.take_lookups(), ["m"]);
    run.healthy(3, 5);
    assert!(run.controller.take_lookups().is_empty(), "asked once");
    assert_eq!(run.controller.reading(), 1);
    // Nothing recorded: a new rollout, from the first canary event seen.
    run.read_back(Found::Nothing);
    assert_eq!(run.timeline(), [(4, Stage, 5)]);
    assert_eq!(run.changes[0].state.stage_started, Timestamp(0));
    run.healthy(5, 12);
    assert_eq!(
        run.timeline(),
        [(4, Stage, 5), (10, Stage, 50)],
        "its hold counted from the first event"
    );
    assert_eq!(run.controller.reading(), 0);
}

#[test]
fn a_new_owner_reads_the_stage_back_and_carries_on_its_hold_without_restarting_it() {
    let mut first = Run::new(Gating::Every);
    first.healthy(0, 16);
    assert_eq!(first.timeline(), [(0, Stage, 5), (10, Stage, 50)]);
    // The object records stage 2, entered at 10; periodic records carry
    // the hold so far (here: as stepped at 15).
    first
        .controller
        .step("m", Timestamp(15_000), &mut Vec::new());
    let found = recorded(&first);

    // A new owner with no changelog: a fresh engine from 17 (one second
    // of input nobody watched).
    let mut second = reading_run();
    second.healthy(17, 18);
    assert_eq!(second.controller.take_lookups(), ["m"]);
    second.read_back(found);
    assert!(second.changes.is_empty(), "no step is applied again");
    let (rollout, _) = second.controller.rollout("m").unwrap();
    assert_eq!((rollout.stage, rollout.held), (1, Span::seconds(5)));
    second.healthy(18, 40);
    // 5 s held before, 5 s more from 17 (15..17 not credited): 22.
    assert_eq!(
        second.timeline(),
        [(22, Promoted, 100), (32, Complete, 100)],
        "{:?}",
        second.changes
    );
}

#[test]
fn a_rolled_back_version_read_back_stays_at_zero() {
    let mut first = Run::new(Gating::Every);
    first.healthy(0, 12);
    for s in 12..16 {
        first.metric(s, "canary_error_rate", 0.2);
    }
    assert_eq!(first.timeline().last().unwrap().1, RolledBack);
    let found = recorded(&first);
    let mut second = reading_run();
    second.healthy(20, 21);
    second.read_back(found);
    second.healthy(21, 80);
    assert!(second.changes.is_empty(), "{:?}", second.changes);
    assert_eq!(
        second
            .controller
            .rollout("m")
            .unwrap()
            .0
            .weight(&plans(Gating::Every).default.unwrap().plan),
        0
    );
}

#[test]
fn another_version_recorded_gives_way_to_a_new_rollout_of_the_one_seen() {
    let mut first = Run::new(Gating::Every);
    first.healthy(0, 12);
    let Found::Recorded { mut rollout, .. } = recorded(&first) else {
        unreachable!()
    };
    rollout.version = "v1".into();
    let mut second = reading_run();
    second.event(canary(20, "v2"));
    second.read_back(Found::Recorded {
        plan: "default".into(),
        rollout,
        hand_edit: None,
    });
    assert_eq!(second.timeline(), [(20, Stage, 5)]);
    assert_eq!(second.changes[0].version, "v2");
}

#[test]
fn foreign_corrupt_or_hand_edited_records_pause_the_rollout_with_the_reason() {
    let first = {
        let mut r = Run::new(Gating::Every);
        r.healthy(0, 12);
        r
    };
    let Found::Recorded { rollout, .. } = recorded(&first) else {
        unreachable!()
    };
    let mut beyond = rollout.clone();
    beyond.stage = 7;
    let cases = [
        (
            Found::Recorded {
                plan: "fast".into(),
                rollout: rollout.clone(),
                hand_edit: None,
            },
            "plan `fast`",
        ),
        (
            Found::Recorded {
                plan: "default".into(),
                rollout: beyond,
                hand_edit: None,
            },
            "stage 8",
        ),
        (
            Found::Refused("canaryd.io/rollout is not JSON: expected value at line 1".into()),
            "not JSON",
        ),
        (
            Found::Recorded {
                plan: "default".into(),
                rollout,
                hand_edit: Some("canary weight 30, canaryd set 50".into()),
            },
            "hand edit",
        ),
    ];
    for (found, says) in cases {
        let mut second = reading_run();
        second.healthy(20, 21);
        second.read_back(found);
        assert_eq!(second.timeline(), [(20, Paused, second.changes[0].weight)]);
        assert!(!second.changes[0].traffic);
        assert!(
            second.changes[0].reason.contains(says),
            "{:?}",
            second.changes
        );
        second.healthy(21, 60);
        assert_eq!(second.changes.len(), 1, "paused: {:?}", second.changes);
        // A person decides.
        let resumed = second
            .controller
            .command(
                "m",
                canaryd_rules::rollout::Command::Resume {
                    by: "oncall".into(),
                },
                Timestamp(60_000),
            )
            .unwrap();
        assert!(resumed[0].traffic, "{resumed:?}");
    }
}

#[test]
fn a_gating_alert_raised_while_the_object_was_read_holds_the_adopted_stage() {
    let mut first = Run::new(Gating::Every);
    first.healthy(0, 12);
    let found = recorded(&first);
    let mut second = reading_run();
    for s in 20..23 {
        second.metric(s, "canary_cost_per_request", 0.9);
    }
    second.read_back(found);
    for s in 23..60 {
        second.metric(s, "canary_cost_per_request", 0.9);
        second.metric(s, "canary_error_rate", 0.001);
    }
    assert!(
        !second.timeline().iter().any(|(_, k, _)| *k == Promoted),
        "{:?}",
        second.timeline()
    );
}

#[test]
fn with_read_back_a_finished_rollout_is_forgotten_when_its_model_is_evicted() {
    let options = LoadOptions::default();
    let rules =
        Arc::new(RuleSet::new(load_rules("t.yaml", RULES.as_bytes(), &options).unwrap()).unwrap());
    let config = EngineConfig {
        stale_after: Span::seconds(5),
        evict_after: Span::seconds(60),
        ..EngineConfig::default()
    };
    for read_back in [false, true] {
        let mut run = Run::new(Gating::Every);
        run.engine = Engine::new(rules.clone(), &options.vocabulary, config.clone());
        run.controller = Controller::new(Arc::new(plans(Gating::Every)), rules.clone())
            .with_read_back(read_back);
        if read_back {
            run.healthy(0, 1);
            run.controller.take_lookups();
            run.read_back(Found::Nothing);
        }
        run.healthy(1, 35);
        assert_eq!(run.timeline().last().unwrap().1, Complete);
        // Silent for longer than evict_after: another model's events
        // move event time on.
        for s in (40..200).step_by(5) {
            let mut e = metric(s, "stable_error_rate", 0.001);
            if let Event::Metric(m) = &mut e {
                m.labels.insert("model".into(), "other".into());
            }
            run.event(e);
        }
        assert_eq!(
            run.controller.len(),
            usize::from(!read_back),
            "read_back {read_back}"
        );
    }
}

#[test]
fn a_plan_whose_receiver_keeps_no_state_starts_at_once_and_is_kept_after_it_finishes() {
    let mut run = Run::new(Gating::Every);
    let mut no_state = plans(Gating::Every);
    if let Some(p) = no_state.default.as_mut() {
        p.read_back = false;
    }
    run.controller =
        Controller::new(Arc::new(no_state), run.controller_rules()).with_read_back(true);
    run.healthy(0, 1);
    assert!(run.controller.take_lookups().is_empty(), "nothing to read");
    assert_eq!(run.timeline(), [(0, Stage, 5)], "started without waiting");
    assert!(
        run.controller
            .records_due(Timestamp(600_000), Span::seconds(1))
            .is_empty(),
        "nowhere to record progress"
    );
}

#[test]
fn progress_records_fall_due_every_period_of_event_time_and_carry_the_hold_so_far() {
    let mut run = reading_run();
    run.healthy(0, 1);
    run.controller.take_lookups();
    run.read_back(Found::Nothing);
    run.healthy(1, 4);
    let every = Span::seconds(5);
    // The start was recorded at 0 (its own change): nothing due before 5.
    assert!(
        run.controller
            .records_due(Timestamp(4_000), every)
            .is_empty()
    );
    run.healthy(4, 6);
    let due = run.controller.records_due(Timestamp(5_000), every);
    assert_eq!(due.len(), 1, "{due:?}");
    assert_eq!((due[0].model.as_str(), due[0].kind), ("m", Progress));
    assert!(!due[0].traffic);
    assert_eq!(
        (due[0].state.stage, due[0].state.held),
        (0, Span::seconds(5))
    );
    assert!(
        run.controller
            .records_due(Timestamp(9_000), every)
            .is_empty(),
        "one per period"
    );
    // A change records the state too: the period starts again from it.
    run.healthy(6, 11);
    assert_eq!(run.timeline().last().unwrap(), &(10, Stage, 50));
    assert!(
        run.controller
            .records_due(Timestamp(14_000), every)
            .is_empty()
    );
    assert_eq!(
        run.controller.records_due(Timestamp(15_000), every).len(),
        1
    );
    // Stopped rollouts have nothing to add.
    run.controller
        .command(
            "m",
            canaryd_rules::rollout::Command::Pause { by: "t".into() },
            Timestamp(15_000),
        )
        .unwrap();
    assert!(
        run.controller
            .records_due(Timestamp(60_000), every)
            .is_empty()
    );
}

/// Models that come and go (evicted and renumbered in the engine, finished
/// ones forgotten by the controller), change version and share the
/// stream: the controller finding each by the engine's subject decides
/// exactly what one hashing every model decides.
#[test]
fn finding_models_by_the_engines_subject_changes_no_decision() {
    let options = LoadOptions::default();
    let rules =
        Arc::new(RuleSet::new(load_rules("t.yaml", RULES.as_bytes(), &options).unwrap()).unwrap());
    let config = EngineConfig {
        stale_after: Span::seconds(5),
        evict_after: Span::seconds(20),
        ..EngineConfig::default()
    };
    // (model, version, first second, last second); `b` goes silent long
    // enough to be evicted, then comes back with another version.
    // Versions differ between models, so that an event counted to the
    // wrong model would start a new rollout.
    // `e` comes first in each second, so that its event is the one whose
    // moment evicts others (and moves it in the controller's index).
    let spans = [
        ("e", "e1", 12, 120),
        ("a", "a1", 0, 120),
        ("b", "b1", 0, 40),
        ("b", "b2", 70, 120),
        ("c", "c7", 5, 30),
        ("d", "d1", 10, 60),
        ("d", "d2", 60, 120),
    ];
    let mut events = Vec::new();
    for sec in 0..120 {
        for &(model, version, from, to) in &spans {
            if (from..to).contains(&sec) {
                for name in ["canary_error_rate", "stable_error_rate"] {
                    let bad = model == "d" && (80..84).contains(&sec);
                    let mut e = metric(sec, name, if bad { 0.3 } else { 0.001 });
                    if let Event::Metric(m) = &mut e {
                        m.labels.insert("model".into(), model.into());
                        m.labels.insert("version".into(), version.into());
                    }
                    events.push(e);
                }
            }
        }
    }
    let run = |hinted: bool, read_back: bool| {
        let mut engine = Engine::new(rules.clone(), &options.vocabulary, config.clone());
        let mut controller = Controller::new(Arc::new(plans(Gating::Every)), rules.clone())
            .with_read_back(read_back);
        let (mut changes, mut outputs, mut hints) = (Vec::new(), Vec::new(), 0);
        for event in &events {
            outputs.clear();
            let applied = engine.ingest(event, &mut outputs) == Ingested::Applied;
            let at = engine.last_subject().filter(|_| hinted);
            if let (Some(at), Event::Metric(m)) = (at, event) {
                let labels = engine.labels_of(at).expect("a valid subject");
                assert_eq!(
                    labels.get("model"),
                    m.labels.get("model"),
                    "at {}",
                    m.ts.millis()
                );
            }
            hints += usize::from(at.is_some());
            let now = engine.watermark().unwrap();
            changes.extend(controller.after(event, applied, at, &outputs, now));
            for model in controller.take_lookups() {
                changes.extend(controller.read_back(&model, Found::Nothing, engine.alerts(), now));
            }
        }
        (changes, controller.state(), engine.stats().evicted, hints)
    };
    // With read-back, finished models are also forgotten when evicted.
    for read_back in [false, true] {
        let (with, state_with, evicted, hints) = run(true, read_back);
        let (without, state_without, _, _) = run(false, read_back);
        // No rule reads stable_error_rate: those events go to no subject.
        assert_eq!(
            hints,
            events.len() / 2,
            "every canary event came with its subject"
        );
        assert!(
            evicted >= 2,
            "subjects were evicted and renumbered: {evicted}"
        );
        let models: std::collections::BTreeSet<_> = with.iter().map(|c| c.model.as_str()).collect();
        assert_eq!(models.len(), 5, "{models:?}");
        assert!(
            with.iter().any(|c| c.kind == RolledBack && c.model == "d"),
            "d's second version is rolled back"
        );
        let timeline = |changes: &[Change]| -> Vec<String> {
            let line =
                |c: &Change| format!("{} {} {:?} {}", c.ts.millis(), c.model, c.kind, c.weight);
            changes.iter().map(line).collect()
        };
        assert_eq!(timeline(&with), timeline(&without), "read_back {read_back}");
        assert_eq!(with, without, "read_back {read_back}");
        assert_eq!(
            format!("{state_with:?}"),
            format!("{state_without:?}"),
            "read_back {read_back}"
        );
    }
}

/// A canary's request of `version` at second `sec`.
fn canary(sec: i64, version: &str) -> Event {
    Event::Inference(InferenceEvent {
        ts: Timestamp(sec * 1000),
        model: "m".into(),
        version: version.into(),
        track: Track::Canary,
        latency_ms: 10.0,
        error: false,
        cost_usd: None,
        group: None,
        prediction: None,
        label: None,
        labels: BTreeMap::new(),
    })
}

impl Run {
    fn watched(&mut self, version: Option<&str>, hand_edit: Option<&str>) {
        let now = self.engine.watermark().unwrap();
        let seen = Watched {
            version: version.map(str::to_string),
            hand_edit: hand_edit.map(str::to_string),
        };
        let changes = self.controller.watched("m", &seen, now);
        self.changes.extend(changes);
    }
}

#[test]
fn late_events_of_a_replaced_version_never_start_it_again() {
    let mut run = Run::new(Gating::Every);
    for s in 0..12 {
        run.event(canary(s, "v2"));
    }
    // v3's pods come up while v2's drain: their events interleave.
    for s in 12..30 {
        run.event(canary(s, if s % 2 == 0 { "v3" } else { "v2" }));
    }
    assert_eq!(
        run.timeline(),
        [
            (0, Stage, 5),
            (10, Stage, 50),
            (12, Stage, 5),
            (22, Stage, 50)
        ],
        "one new rollout, of v3, never back to v2: {:?}",
        run.changes
    );
    let (rollout, _) = run.controller.rollout("m").unwrap();
    assert_eq!(rollout.version, "v3");
    assert_eq!(rollout.retired, ["v2"]);
    // A retired version is remembered durably, with the rollout's state.
    assert_eq!(run.changes.last().unwrap().state.retired, ["v2"]);
}

#[test]
fn a_rolled_back_version_does_not_come_back_after_the_next_one_replaced_it() {
    let mut run = Run::new(Gating::Every);
    for s in 0..3 {
        run.event(canary(s, "v1"));
    }
    let abort = canaryd_rules::rollout::Command::Abort { by: "alice".into() };
    let aborted = run
        .controller
        .command("m", abort, Timestamp(2_000))
        .unwrap();
    run.changes.extend(aborted);
    assert_eq!(run.timeline().last().unwrap().1, RolledBack);
    run.event(canary(3, "v9"));
    run.event(canary(4, "v1"));
    run.event(canary(5, "v1"));
    assert_eq!(
        run.timeline(),
        [(0, Stage, 5), (2, RolledBack, 0), (3, Stage, 5)],
        "{:?}",
        run.changes
    );
    assert_eq!(run.changes.last().unwrap().version, "v9");
    assert_eq!(run.controller.rollout("m").unwrap().0.version, "v9");
}

#[test]
fn a_version_named_on_the_traffic_object_starts_a_new_rollout_once() {
    // Metric events carry no version label: only the object names it.
    let mut run = Run::new(Gating::Every);
    run.healthy(0, 12);
    assert_eq!(run.timeline(), [(0, Stage, 5), (10, Stage, 50)]);
    run.watched(Some("v7"), None);
    assert_eq!(run.timeline().last(), Some(&(11, Stage, 5)));
    assert_eq!(run.changes.last().unwrap().version, "v7");
    assert!(
        run.changes
            .last()
            .unwrap()
            .reason
            .contains("new canary version v7"),
        "{}",
        run.changes.last().unwrap().reason
    );
    let before = run.changes.len();
    run.watched(Some("v7"), None);
    run.watched(None, None);
    run.watched(Some(""), None);
    // The object still naming the old version (a pipeline that has not
    // updated it yet) does not take the rollout back.
    run.watched(Some(""), None);
    assert_eq!(run.changes.len(), before, "{:?}", run.changes);
    run.healthy(12, 23);
    assert_eq!(
        run.timeline().last(),
        Some(&(21, Stage, 50)),
        "v7's hold counted from when the object named it: {:?}",
        run.changes
    );
}

#[test]
fn weights_a_person_set_pause_a_running_rollout_when_watched_once() {
    let mut run = Run::new(Gating::Every);
    run.healthy(0, 5);
    let edit = "VirtualService ns/m has canary weight 30, but canaryd last set 5";
    run.watched(None, Some(edit));
    let (second, kind, weight) = *run.timeline().last().unwrap();
    assert_eq!((second, kind, weight), (4, Paused, 5));
    let reason = &run.changes.last().unwrap().reason;
    assert!(
        reason.contains("hand edit") && reason.contains(edit),
        "{reason}"
    );
    assert!(
        !run.changes.last().unwrap().traffic,
        "a person's weights are never overwritten"
    );
    let before = run.changes.len();
    run.watched(None, Some(edit));
    run.healthy(5, 30);
    assert_eq!(run.changes.len(), before, "paused: {:?}", run.changes);
}

#[test]
fn a_new_owner_seeing_a_retired_versions_late_events_adopts_the_recorded_rollout() {
    let mut first = Run::new(Gating::Every);
    for s in 0..12 {
        first.event(canary(s, "v2"));
    }
    first.event(canary(12, "v3"));
    let found = recorded(&first);
    let mut second = reading_run();
    second.event(canary(13, "v2"));
    assert_eq!(second.controller.take_lookups(), ["m"]);
    second.read_back(found);
    assert!(second.changes.is_empty(), "{:?}", second.changes);
    assert_eq!(second.controller.rollout("m").unwrap().0.version, "v3");
}
