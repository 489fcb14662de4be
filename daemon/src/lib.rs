//! The `canaryd` daemon as a library; `main.rs` only parses flags and calls in.
//!
//! # Layout
//!
//! Folders follow the flow of work: an event is consumed and evaluated in
//! [`run`], its decisions are carried out in [`act`], and [`server`] shows
//! it all over HTTP. The offline commands in [`offline`] run the same
//! engine on files.
//!
//! - [`cli`]: the command line and what each command does.
//! - [`config`]: the config file, and loading the rules it names.
//! - [`rollouts`]: the rollout plans in the config file, and their checks.
//! - [`offline`]: `check`, `test` and `replay`, which need no broker.
//! - [`run`]: `canaryd run`: start-up and shutdown, the Kafka consume loop
//!   and its stages, the changelog, group membership, shared silences,
//!   reloads.
//! - [`act`]: from transitions to actions, routes, the action pipeline
//!   (queues, retries, escalation, rate limits), its outbox and the audit
//!   trail.
//! - [`server`]: the HTTP side: Alertmanager receiver, silences, API,
//!   status page.
//! - [`shared`]: what the consume loop, the pipeline and the HTTP server
//!   share: the snapshot, recent outcomes, silences, commands.
//! - [`metrics`]: the Prometheus metrics served at `/metrics`.
//! - [`dedup`]: the one bounded set of recently seen keys.
//! - [`clock`]: the wall clock as event time, read in one place.
//! - [`logging`]: text or JSON logs, with a filter that changes at runtime.
#![forbid(unsafe_code)]

pub mod act;
pub mod cli;
pub mod clock;
pub mod config;
pub mod dedup;
pub mod history;
pub mod logging;
pub mod metrics;
pub mod offline;
pub mod rollouts;
pub mod run;
pub mod server;
pub mod shared;
