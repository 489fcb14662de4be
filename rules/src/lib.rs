//! canaryd's pure core: everything that decides, nothing that does.
//!
//! No I/O and no clock reads: time is always an argument, so every
//! behaviour replays exactly and is tested as a table.
//!
//! # Layout
//!
//! - [`time`]: event timestamps and rule durations (`5m`, `1h30m`).
//! - [`policy`]: severities, action names and the playbook's decision matrix.
//! - [`vocabulary`]: the variables conditions may use, and typo suggestions.
//! - [`condition`]: evalexpr conditions, compiled and checked once at load.
//! - [`load`]: rule files in, validated [`Rule`]s out, every error with its line.
//! - [`rule`]: the compiled rule and the [`RuleSet`].
//! - [`template`]: annotation templates (minijinja).
//! - [`state`]: the alert state machine, a pure `step` function.
//! - [`subject`]: [`Subject`], how a subject's labels are written (`model=summarizer`).
//! - [`event`]: the event schema and its decoder.
//! - [`engine`]: events in, transitions out, driven by a watermark;
//!   [`engine::checkpoint`] saves and restores its state by name.
//! - [`analytics`]: per subject-track sliding windows over inference events.
//! - [`judge`]: the canary judge, canary against stable per metric over
//!   those windows (Mann-Whitney U, two-proportion tests), scored 0-100.
//! - [`rollout`]: the progressive rollout through a plan's stages, a pure
//!   `step` function over event time and the gating rules.
#![forbid(unsafe_code)]

pub mod analytics;
pub mod condition;
pub mod engine;
pub mod event;
pub mod judge;
pub mod load;
pub mod policy;
pub mod rollout;
pub mod rule;
pub mod state;
pub mod subject;
pub mod template;
pub mod time;
pub mod vocabulary;
mod yaml;

pub use engine::checkpoint::{EngineCheckpoint, SubjectState};
pub use engine::{
    EndedAlert, Engine, EngineConfig, Ingested, Labels, Output, ReloadReport, SubjectAnalytics,
    SubjectRef, Transition,
};
pub use event::{Event, decode};
pub use load::{LoadOptions, load_rules};
pub use policy::{ActionName, DecisionMatrix, Severity};
pub use rule::{Rule, RuleError, RuleSet};
pub use state::{AlertState, Observation, Phase};
pub use subject::Subject;
pub use time::{Span, Timestamp};
pub use vocabulary::Vocabulary;
