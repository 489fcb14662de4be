//! Properties: evaluation is deterministic, respects event order, and agrees
//! with an independent model of "the condition held for the duration".

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::collections::BTreeMap;
use std::sync::Arc;

use canaryd_rules::event::MetricEvent;
use canaryd_rules::{
    Engine, EngineConfig, Event, LoadOptions, Output, RuleSet, Span, Timestamp, load_rules,
};
use proptest::prelude::*;

fn engine(hold_s: i64) -> Engine {
    let text = format!(
        "alerts:\n  - name: r\n    condition: canary_error_rate > 0.5\n    duration: {hold_s}s\n    severity: high\n"
    );
    let options = LoadOptions::default();
    let rules = load_rules("p.yaml", text.as_bytes(), &options).unwrap();
    let config = EngineConfig {
        stale_after: Span::seconds(1_000_000),
        allowed_lateness: Span::ZERO,
        ..EngineConfig::default()
    };
    Engine::new(
        Arc::new(RuleSet::new(rules).unwrap()),
        &options.vocabulary,
        config,
    )
}

fn event(ts_s: i64, model: u8, value: f64) -> Event {
    Event::Metric(MetricEvent {
        ts: Timestamp(ts_s * 1000),
        name: "canary_error_rate".into(),
        value,
        labels: BTreeMap::from([("model".to_string(), format!("m{model}"))]),
    })
}

/// (seconds since previous event, model, value)
fn events() -> impl Strategy<Value = Vec<(i64, u8, f64)>> {
    prop::collection::vec(
        (
            0i64..120,
            0u8..3,
            prop_oneof![Just(0.1), Just(0.9), 0.0f64..1.0],
        ),
        0..80,
    )
}

fn to_events(steps: &[(i64, u8, f64)]) -> Vec<Event> {
    let mut ts = 0;
    steps
        .iter()
        .map(|&(gap, model, value)| {
            ts += gap;
            event(ts, model, value)
        })
        .collect()
}

fn transitions(engine: &mut Engine, events: &[Event], ticks: &[i64]) -> Vec<(i64, String, String)> {
    let mut out = Vec::new();
    let mut lines = Vec::new();
    let mut ticks = ticks.iter().peekable();
    for e in events {
        // Optional extra clock ticks up to this event's time.
        while let Some(&&t) = ticks.peek() {
            if t * 1000 > e.ts().millis() {
                break;
            }
            engine.advance(Timestamp(t * 1000), &mut out);
            ticks.next();
        }
        engine.ingest(e, &mut out);
        for o in out.drain(..) {
            if let Output::Transition(t) = o {
                lines.push((
                    t.ts.millis() / 1000,
                    t.subject["model"].clone(),
                    format!("{}->{}", t.from, t.to),
                ));
            }
        }
    }
    lines
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn the_same_events_give_the_same_decisions(steps in events(), hold in 0i64..400) {
        let events = to_events(&steps);
        let a = transitions(&mut engine(hold), &events, &[]);
        let b = transitions(&mut engine(hold), &events, &[]);
        prop_assert_eq!(a, b);
    }

    #[test]
    fn transitions_come_out_in_event_time_order(steps in events(), hold in 0i64..400) {
        let events = to_events(&steps);
        let lines = transitions(&mut engine(hold), &events, &[]);
        prop_assert!(lines.windows(2).all(|w| w[0].0 <= w[1].0), "{:?}", lines);
    }

    #[test]
    fn clock_ticks_between_events_change_nothing(steps in events(), hold in 0i64..400, ticks in prop::collection::vec(0i64..10_000, 0..30)) {
        let events = to_events(&steps);
        let mut ticks = ticks;
        ticks.sort_unstable();
        let plain = transitions(&mut engine(hold), &events, &[]);
        let ticked = transitions(&mut engine(hold), &events, &ticks);
        prop_assert_eq!(plain, ticked);
    }

    #[test]
    fn each_subject_matches_the_independent_model(steps in events(), hold in 0i64..400) {
        let events = to_events(&steps);
        let lines = transitions(&mut engine(hold), &events, &[]);
        for model in 0u8..3 {
            let name = format!("m{model}");
            let mut ts = 0;
            let mine: Vec<(i64, f64)> = steps.iter().filter_map(|&(gap, m, v)| {
                ts += gap;
                (m == model).then_some((ts, v))
            }).collect();
            // Timers fire when any subject's event moves the watermark past
            // them; the model needs the times of all events for that.
            let mut all_ts = 0;
            let watermarks: Vec<i64> = steps.iter().map(|&(gap, _, _)| { all_ts += gap; all_ts }).collect();
            let expected = oracle_with_watermark(&mine, &watermarks, hold);
            let got: Vec<(i64, String)> = lines.iter().filter(|l| l.1 == name).map(|l| (l.0, l.2.replace("resolved->", "inactive->"))).collect();
            prop_assert_eq!(got, expected, "model {}", name);
        }
    }
}

/// An independent model of one subject: a run of values above 0.5 that
/// lasts `hold` seconds fires at its start plus `hold`, as soon as any
/// subject's event moves time past that (the watermark is shared).
fn oracle_with_watermark(mine: &[(i64, f64)], watermarks: &[i64], hold: i64) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    let (mut run_start, mut fired) = (None::<i64>, false);
    let mut mine = mine.iter().peekable();
    for &wm in watermarks {
        if let (Some(s), false) = (run_start, fired)
            && s + hold <= wm
        {
            out.push((s + hold, "pending->firing".to_string()));
            fired = true;
        }
        while let Some(&&(ts, value)) = mine.peek() {
            if ts != wm {
                break;
            }
            mine.next();
            let sub = oracle_step(&mut run_start, &mut fired, ts, value, hold);
            out.extend(sub);
        }
    }
    out
}

fn oracle_step(
    run_start: &mut Option<i64>,
    fired: &mut bool,
    ts: i64,
    value: f64,
    hold: i64,
) -> Vec<(i64, String)> {
    let mut out = Vec::new();
    if value > 0.5 {
        if run_start.is_none() {
            *run_start = Some(ts);
            if hold == 0 {
                out.push((ts, "inactive->firing".into()));
                *fired = true;
            } else {
                out.push((ts, "inactive->pending".into()));
            }
        } else if let (Some(s), false) = (*run_start, *fired)
            && s + hold <= ts
        {
            out.push((ts, "pending->firing".into()));
            *fired = true;
        }
    } else if run_start.take().is_some() {
        out.push((
            ts,
            if *fired {
                "firing->resolved"
            } else {
                "pending->inactive"
            }
            .into(),
        ));
        *fired = false;
    }
    out
}

proptest! {
    /// A Wilson interval holds the observed rate, stays within 0..1, is
    /// no looser at a higher count of the same rate, and a higher
    /// confidence only widens it.
    #[test]
    fn confidence_bounds_hold_the_rate_and_tighten_with_the_count(
        trials in 1u64..5_000,
        share in 0.0f64..=1.0,
        scale in 2u64..10,
        level in 0.5f64..0.999,
    ) {
        use canaryd_rules::analytics::{Confidence, wilson_z};
        let successes = (share * trials as f64).round() as u64;
        let p = successes as f64 / trials as f64;
        let z = Confidence(level).z();
        let (low, high) = wilson_z(successes, trials, z).unwrap();
        prop_assert!(0.0 <= low && low <= p + 1e-12 && p <= high + 1e-12 && high <= 1.0);
        let (low_n, high_n) = wilson_z(successes * scale, trials * scale, z).unwrap();
        prop_assert!(high_n - low_n <= high - low + 1e-12, "{trials}x{scale}");
        let (low_w, high_w) = wilson_z(successes, trials, Confidence((level + 1.0) / 2.0).z()).unwrap();
        prop_assert!(low_w <= low + 1e-12 && high <= high_w + 1e-12);
    }
}

#[test]
fn confidence_levels_have_their_normal_quantiles() {
    use canaryd_rules::analytics::Confidence;
    for (level, z) in [
        (0.95, 1.959_963_985),
        (0.99, 2.575_829_304),
        (0.5, 0.674_489_750),
        (0.9999, 3.890_591_886),
    ] {
        assert!(
            (Confidence(level).z() - z).abs() < 1e-7,
            "{level}: {}",
            Confidence(level).z()
        );
    }
}

proptest! {
    /// The watermark is never past the latest time the engine was shown,
    /// by an event or by `advance`, and never goes back.
    #[test]
    fn the_watermark_never_passes_what_was_seen_nor_goes_back(
        steps in prop::collection::vec((-60i64..120, 0u8..3, any::<bool>()), 0..120),
    ) {
        let mut e = engine(30);
        let mut out = Vec::new();
        let (mut ts, mut seen, mut last) = (1_000i64, i64::MIN, None);
        for (gap, model, tick) in steps {
            ts = (ts + gap).max(0);
            if tick {
                e.advance(Timestamp(ts * 1000), &mut out);
            } else {
                e.ingest(&event(ts, model, 0.5), &mut out);
            }
            seen = seen.max(ts * 1000);
            let wm = e.watermark().map(|w| w.millis());
            prop_assert!(wm.is_some_and(|w| w <= seen), "{wm:?} > {seen}");
            prop_assert!(last <= wm, "went back from {last:?} to {wm:?}");
            last = wm;
        }
    }
}
