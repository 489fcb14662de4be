//! `canaryd replay`: recorded events through the engine, actions through
//! the dry-run connector, decisions to stdout.

use std::io::{self, BufRead, Write};

use canaryd_connectors::{Action, Connector, DryRun};
use canaryd_rules::rollout::controller::{Change, Controller};
use canaryd_rules::{Engine, Ingested, Output, Span, Subject, Timestamp, Transition, decode};
use serde_json::json;

use crate::act::decide::actions_for;
use crate::config::Loaded;

/// Lines longer than this are reported as malformed, not decoded.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// How decisions are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// A readable timeline and a summary.
    Text,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a replay saw.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Summary {
    /// Lines holding a valid event.
    pub events: u64,
    /// Lines skipped because they were not valid events.
    pub malformed: u64,
    /// Events dropped as later than the allowed lateness.
    pub late: u64,
    /// Events dropped as far ahead of event time with no later event to
    /// confirm the jump (a wrong clock).
    pub future: u64,
    /// Metric events for variables no rule reads.
    pub unused: u64,
    /// Inference events among them.
    pub inference: u64,
    /// Alert phase changes.
    pub transitions: u64,
    /// Subjects that went stale.
    pub stale: u64,
    /// Subjects forgotten after `engine.evict_after` without events.
    #[serde(skip_serializing_if = "is_zero")]
    pub evicted: u64,
    /// Actions decided, in order.
    pub actions: Vec<Action>,
    /// Rollout changes, in order (with a config that has `rollouts:`).
    pub rollouts: Vec<Change>,
}

/// Replays `input` (JSON lines) through the rules in `loaded`, writing
/// decisions to `out` and malformed-line reports to `diag`. `on_bytes` is
/// told how many bytes were consumed, for a progress bar.
pub async fn replay<R: BufRead, W: Write, D: Write>(
    loaded: &Loaded,
    mut input: R,
    out: &mut W,
    diag: &mut D,
    format: Format,
    mut on_bytes: impl FnMut(u64),
) -> io::Result<Summary> {
    let mut engine = Engine::new(
        loaded.rules.clone(),
        &loaded.vocabulary,
        loaded.engine_config(),
    );
    let connector = DryRun::new();
    let mut summary = Summary::default();
    let mut outputs = Vec::new();
    let mut line = Vec::new();
    let mut number = 0u64;
    let mut guard = JumpGuard::default();
    let mut rollouts = loaded.rollout_controller();
    loop {
        line.clear();
        let n = input.read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        number += 1;
        on_bytes(n as u64);
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        if text.len() > MAX_LINE_BYTES {
            summary.malformed += 1;
            writeln!(
                diag,
                "line {number}: skipped: longer than {MAX_LINE_BYTES} bytes"
            )?;
            continue;
        }
        let event = match decode(text) {
            Ok(e) => e,
            Err(e) => {
                summary.malformed += 1;
                writeln!(diag, "line {number}: skipped: {e}")?;
                continue;
            }
        };
        summary.events += 1;
        if matches!(event, canaryd_rules::Event::Inference(_)) {
            summary.inference += 1;
        }
        let (ready, dropped) = guard.admit(number, event, engine.watermark());
        for (line, ts) in dropped {
            summary.future += 1;
            writeln!(
                diag,
                "line {line}: dropped: {ts} is more than {MAX_JUMP} ahead of event time and no later event confirmed the jump"
            )?;
        }
        for (number, event) in ready {
            let ingested = ingest(
                &mut engine,
                number,
                &event,
                &mut outputs,
                &mut summary,
                diag,
            )?;
            let changes = match (rollouts.as_mut(), engine.watermark()) {
                (Some(r), Some(now)) => r.after(
                    &event,
                    ingested == Ingested::Applied,
                    engine.last_subject(),
                    &outputs,
                    now,
                ),
                _ => Vec::new(),
            };
            for output in outputs.drain(..) {
                emit(loaded, &connector, output, out, format, &mut summary).await?;
            }
            for change in changes {
                write_change(&change, out, format)?;
                summary.rollouts.push(change);
            }
        }
    }
    for (line, ts) in guard.finish() {
        summary.future += 1;
        writeln!(
            diag,
            "line {line}: dropped: {ts} is more than {MAX_JUMP} ahead of event time and no later event confirmed the jump"
        )?;
    }
    if let (Some(r), Some(now)) = (rollouts.as_mut(), engine.watermark()) {
        let mut changes = Vec::new();
        r.step_all(now, &mut changes);
        for change in changes {
            write_change(&change, out, format)?;
            summary.rollouts.push(change);
        }
    }
    match format {
        Format::Json => {
            let mut counts = json!({
                "kind": "summary",
                "events": summary.events,
                "malformed": summary.malformed,
                "late": summary.late,
                "future": summary.future,
                "transitions": summary.transitions,
                "actions": summary.actions.len(),
            });
            if rollouts.is_some() {
                counts["rollout_changes"] = json!(summary.rollouts.len());
            }
            writeln!(out, "{counts}")?;
        }
        Format::Text => {
            write_text_summary(out, &summary, &engine)?;
            if let Some(r) = &rollouts {
                write_rollouts_summary(out, r)?;
            }
        }
    }
    Ok(summary)
}

/// One event into the engine, counted.
fn ingest<D: Write>(
    engine: &mut Engine,
    number: u64,
    event: &canaryd_rules::Event,
    outputs: &mut Vec<Output>,
    summary: &mut Summary,
    diag: &mut D,
) -> io::Result<Ingested> {
    let ingested = engine.ingest(event, outputs);
    match ingested {
        Ingested::Late => {
            summary.late += 1;
            writeln!(
                diag,
                "line {number}: dropped: later than the allowed lateness"
            )?;
        }
        Ingested::Unused => summary.unused += 1,
        Ingested::OutOfWindow => summary.late += 1,
        Ingested::Applied | Ingested::Unmatched => {}
    }
    Ok(ingested)
}

/// How far ahead of event time an event may be before the replay asks
/// for confirmation.
const MAX_JUMP: Span = Span::seconds(3600);

/// Events beyond [`MAX_JUMP`] that confirm a jump of event time.
const CONFIRM: usize = 3;

/// Replay has no wall clock to bound event time, so the stream bounds
/// itself: an event more than [`MAX_JUMP`] ahead of the watermark is held.
/// [`CONFIRM`] such events in a row confirm the jump (a gap in a recording)
/// and are applied in order; an event within reach first means the held
/// ones came from a wrong clock, and they are dropped.
#[derive(Default)]
struct JumpGuard {
    held: Vec<Numbered>,
}

/// An event with its line number.
type Numbered = (u64, canaryd_rules::Event);

impl JumpGuard {
    /// Takes event `number`; gives back what to apply now, in order, and
    /// the (line, time) of what it drops.
    fn admit(
        &mut self,
        number: u64,
        event: canaryd_rules::Event,
        watermark: Option<Timestamp>,
    ) -> (Vec<Numbered>, Vec<(u64, Timestamp)>) {
        let ahead = watermark.is_some_and(|w| event.ts() > w.plus(MAX_JUMP));
        if ahead {
            self.held.push((number, event));
            if self.held.len() >= CONFIRM {
                return (std::mem::take(&mut self.held), Vec::new());
            }
            return (Vec::new(), Vec::new());
        }
        (vec![(number, event)], self.finish())
    }

    /// Drops whatever is held; the (line, time) of each.
    fn finish(&mut self) -> Vec<(u64, Timestamp)> {
        self.held.drain(..).map(|(n, e)| (n, e.ts())).collect()
    }
}

async fn emit<W: Write>(
    loaded: &Loaded,
    connector: &DryRun,
    output: Output,
    out: &mut W,
    format: Format,
    summary: &mut Summary,
) -> io::Result<()> {
    match output {
        Output::Stale { ts, subject } => {
            summary.stale += 1;
            match format {
                Format::Json => writeln!(
                    out,
                    "{}",
                    json!({"kind": "stale", "ts": ts, "subject": subject})
                )?,
                Format::Text => {
                    writeln!(out, "{ts}  STALE     {}  no fresh data", Subject(&subject))?
                }
            }
        }
        Output::Evicted {
            ts,
            subject,
            alerts,
        } => {
            summary.evicted += 1;
            match format {
                Format::Json => writeln!(
                    out,
                    "{}",
                    json!({"kind": "evicted", "ts": ts, "subject": subject, "alerts_ended": alerts})
                )?,
                Format::Text => writeln!(
                    out,
                    "{ts}  EVICTED   {}  no events for engine.evict_after; {} alert(s) ended quietly",
                    Subject(&subject),
                    alerts.len()
                )?,
            }
        }
        Output::Transition(t) => {
            summary.transitions += 1;
            write_transition(loaded, &t, out, format)?;
            // Replay never acts: every action goes through the dry-run connector.
            for mut action in actions_for(&t, &loaded.rules, true) {
                action.dry_run = true;
                let outcome = connector.execute(&action).await;
                match format {
                    Format::Json => {
                        let line = json!({
                            "kind": "action",
                            "ts": action.ts,
                            "rule": action.rule,
                            "subject": action.subject,
                            "action": action.action,
                            "dry_run": action.dry_run,
                            "severity": action.severity,
                            "deadline_s": action.deadline.as_secs_f64(),
                            "key": action.key,
                            "evidence": action.evidence,
                            "annotations": action.annotations,
                        });
                        writeln!(out, "{line}")?;
                    }
                    Format::Text => {
                        let detail = match &outcome {
                            Ok(o) => o.detail.clone(),
                            Err(e) => e.to_string(),
                        };
                        writeln!(
                            out,
                            "{}  ACTION    {}  {}  deadline {}  [dry run: {detail}]",
                            action.ts,
                            action.action,
                            Subject(&action.subject),
                            action.deadline,
                        )?;
                        if let Some(summary) = action.annotations.get("summary") {
                            writeln!(out, "{:24}            {summary}", "")?;
                        }
                    }
                }
                summary.actions.push(action);
            }
        }
    }
    Ok(())
}

fn write_transition<W: Write>(
    loaded: &Loaded,
    t: &Transition,
    out: &mut W,
    format: Format,
) -> io::Result<()> {
    let Some(rule) = loaded.rules.rules().get(t.rule) else {
        return Ok(());
    };
    match format {
        Format::Json => {
            let line = json!({
                "kind": "transition",
                "ts": t.ts,
                "rule": rule.name,
                "subject": t.subject,
                "from": t.from,
                "to": t.to,
                "severity": rule.severity,
                "values": t.values,
            });
            writeln!(out, "{line}")
        }
        Format::Text => {
            let values: Vec<String> = t.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                out,
                "{}  {:<8}  {:<28}  {}  {}  ({})",
                t.ts,
                t.to.as_str().to_uppercase(),
                rule.name,
                Subject(&t.subject),
                values.join(" "),
                rule.severity
            )
        }
    }
}

fn write_change<W: Write>(c: &Change, out: &mut W, format: Format) -> io::Result<()> {
    match format {
        Format::Json => {
            let line = json!({
                "kind": "rollout",
                "ts": c.ts,
                "subject": {"model": c.model},
                "version": c.version,
                "event": c.kind,
                "weight": c.weight,
                "stage": c.stage,
                "reason": c.reason,
            });
            writeln!(out, "{line}")
        }
        Format::Text => writeln!(
            out,
            "{}  ROLLOUT   {:<12}  model={}  {}%  stage {}  {}",
            c.ts,
            c.kind.as_str(),
            c.model,
            c.weight,
            c.stage,
            c.reason
        ),
    }
}

fn write_rollouts_summary<W: Write>(out: &mut W, c: &Controller) -> io::Result<()> {
    if c.is_empty() {
        return writeln!(out, "  rollouts: no canary event for a model with a plan");
    }
    for (model, rollout, plan) in c.rollouts() {
        writeln!(
            out,
            "  rollout: model={model} {}: {}% (stage {} of plan {}), {}",
            if rollout.version.is_empty() {
                "(no version label)"
            } else {
                rollout.version.as_str()
            },
            rollout.weight(&plan.plan),
            rollout.stage + 1,
            plan.name,
            rollout.phase
        )?;
    }
    Ok(())
}

fn write_text_summary<W: Write>(out: &mut W, s: &Summary, engine: &Engine) -> io::Result<()> {
    writeln!(out)?;
    writeln!(out, "Summary")?;
    writeln!(
        out,
        "  events: {} ({} malformed lines skipped, {} late, {} far ahead, {} unused, {} inference)",
        s.events, s.malformed, s.late, s.future, s.unused, s.inference
    )?;
    writeln!(
        out,
        "  transitions: {}, subjects gone stale: {}",
        s.transitions, s.stale
    )?;
    let firing: Vec<String> = engine
        .alerts()
        .filter(|a| a.state.phase == canaryd_rules::Phase::Firing)
        .map(|a| format!("{} ({})", a.rule, Subject(a.subject)))
        .collect();
    writeln!(
        out,
        "  firing at the end: {}",
        if firing.is_empty() {
            "none".into()
        } else {
            firing.join(", ")
        }
    )?;
    if s.actions.is_empty() {
        writeln!(out, "  decision: no action")?;
    }
    for a in &s.actions {
        writeln!(
            out,
            "  decision: {} {} at {} because {} (dry run)",
            a.action,
            Subject(&a.subject),
            a.ts,
            a.rule
        )?;
    }
    Ok(())
}
