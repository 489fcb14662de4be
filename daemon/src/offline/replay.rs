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

/// One partition's evaluation, as `canaryd run` keeps one per partition it
/// owns: its engine (and so its own event time and lateness), its guard
/// against far-future stamps, and its rollouts.
struct Lane {
    engine: Engine,
    guard: JumpGuard,
    rollouts: Option<Controller>,
}

/// The partition Kafka's default partitioner gives an event keyed by its
/// model (as producers key them): murmur2 of the key, made positive,
/// modulo `partitions`. Events without a model go to partition 0.
fn partition_of(event: &canaryd_rules::Event, partitions: usize) -> usize {
    if partitions <= 1 {
        return 0;
    }
    let model = match event {
        canaryd_rules::Event::Inference(e) => Some(e.model.as_str()),
        canaryd_rules::Event::Metric(m) => m.labels.get("model").map(String::as_str),
        canaryd_rules::Event::Alert(a) => a.labels.get("model").map(String::as_str),
    };
    model.map_or(0, |m| {
        (murmur2(m.as_bytes()) & 0x7fff_ffff) as usize % partitions
    })
}

/// Kafka's murmur2 (seed 0x9747b28c), as its Java client's default
/// partitioner and librdkafka's `murmur2_random` compute it.
fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = 0x9747_b28c ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        // chunks_exact(4): every chunk converts.
        let mut k = u32::from_le_bytes(chunk.try_into().unwrap_or([0; 4]));
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let rest = chunks.remainder();
    if let Some(&third) = rest.get(2) {
        h ^= u32::from(third) << 16;
    }
    if let Some(&second) = rest.get(1) {
        h ^= u32::from(second) << 8;
    }
    if let Some(&first) = rest.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^ (h >> 15)
}

/// Replays `input` (JSON lines) through the rules in `loaded`, writing
/// decisions to `out` and malformed-line reports to `diag`. `on_bytes` is
/// told how many bytes were consumed, for a progress bar.
///
/// With `partitions` above 1, each event is evaluated in its model's
/// partition, as `canaryd run` evaluates it: lateness is judged within the
/// partition, so a recording of a stalled partition's backlog arriving
/// after the others' newer events loses nothing. A partition's time moves
/// with its own events; at the end of the recording every partition is
/// moved to the latest time seen, as a live replica moves an idle one
/// once the broker says nothing is waiting.
pub async fn replay<R: BufRead, W: Write, D: Write>(
    loaded: &Loaded,
    mut input: R,
    out: &mut W,
    diag: &mut D,
    format: Format,
    partitions: usize,
    mut on_bytes: impl FnMut(u64),
) -> io::Result<Summary> {
    let mut lanes: Vec<Lane> = (0..partitions.max(1))
        .map(|_| Lane {
            engine: Engine::new(
                loaded.rules.clone(),
                &loaded.vocabulary,
                loaded.engine_config(),
            ),
            guard: JumpGuard::default(),
            rollouts: loaded.rollout_controller(),
        })
        .collect();
    let connector = DryRun::new();
    let mut summary = Summary::default();
    let mut outputs = Vec::new();
    let mut line = Vec::new();
    let mut number = 0u64;
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
        let count = lanes.len();
        let Some(lane) = lanes.get_mut(partition_of(&event, count)) else {
            continue; // unreachable: partition_of is below the lane count
        };
        let (ready, dropped) = lane.guard.admit(number, event, lane.engine.watermark());
        report_far_ahead(diag, &mut summary, dropped)?;
        for (number, event) in ready {
            let ingested = ingest(
                &mut lane.engine,
                number,
                &event,
                &mut outputs,
                &mut summary,
                diag,
            )?;
            let changes = match (lane.rollouts.as_mut(), lane.engine.watermark()) {
                (Some(r), Some(now)) => r.after(
                    &event,
                    ingested == Ingested::Applied,
                    lane.engine.last_subject(),
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
    let end = lanes.iter().filter_map(|l| l.engine.watermark()).max();
    for lane in &mut lanes {
        let dropped = lane.guard.finish();
        report_far_ahead(diag, &mut summary, dropped)?;
        // An idle partition catches up with the others (a no-op for one).
        if let Some(end) = end {
            lane.engine.advance(end, &mut outputs);
            for output in outputs.drain(..) {
                emit(loaded, &connector, output, out, format, &mut summary).await?;
            }
        }
        if let (Some(r), Some(now)) = (lane.rollouts.as_mut(), lane.engine.watermark()) {
            let mut changes = Vec::new();
            r.step_all(now, &mut changes);
            for change in changes {
                write_change(&change, out, format)?;
                summary.rollouts.push(change);
            }
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
            if lanes.iter().any(|l| l.rollouts.is_some()) {
                counts["rollout_changes"] = json!(summary.rollouts.len());
            }
            writeln!(out, "{counts}")?;
        }
        Format::Text => {
            let engines: Vec<&Engine> = lanes.iter().map(|l| &l.engine).collect();
            write_text_summary(out, &summary, &engines)?;
            let controllers: Vec<&Controller> =
                lanes.iter().filter_map(|l| l.rollouts.as_ref()).collect();
            if !controllers.is_empty() {
                write_rollouts_summary(out, &controllers)?;
            }
        }
    }
    Ok(summary)
}

/// Reports and counts the events a guard dropped as far ahead.
fn report_far_ahead<D: Write>(
    diag: &mut D,
    summary: &mut Summary,
    dropped: Vec<(u64, Timestamp)>,
) -> io::Result<()> {
    for (line, ts) in dropped {
        summary.future += 1;
        writeln!(
            diag,
            "line {line}: dropped: {ts} is more than {MAX_JUMP} ahead of event time and no later event confirmed the jump"
        )?;
    }
    Ok(())
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

fn write_rollouts_summary<W: Write>(out: &mut W, controllers: &[&Controller]) -> io::Result<()> {
    if controllers.iter().all(|c| c.is_empty()) {
        return writeln!(out, "  rollouts: no canary event for a model with a plan");
    }
    for (model, rollout, plan) in controllers.iter().flat_map(|c| c.rollouts()) {
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

fn write_text_summary<W: Write>(out: &mut W, s: &Summary, engines: &[&Engine]) -> io::Result<()> {
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
    let firing: Vec<String> = engines
        .iter()
        .flat_map(|e| e.alerts())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_kafkas() {
        // Kafka's own test vectors (UtilsTest.testMurmur2), as Java ints.
        for (key, want) in [
            ("21", -973_932_308i32),
            ("foobar", -790_332_482),
            ("a-little-bit-long-string", -985_981_536),
            ("a-little-bit-longer-string", -1_486_304_829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            ("abc", 479_470_107),
        ] {
            assert_eq!(murmur2(key.as_bytes()) as i32, want, "{key}");
        }
    }
}
