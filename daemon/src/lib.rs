//! The `canaryd` daemon as a library; `main.rs` only parses flags and calls in.
//!
//! # Layout
//!
//! - [`cli`]: the command line and what each command does.
//! - [`config`]: the config file and loading the rules it names.
//! - [`check`]: `canaryd check`, validation of any canaryd file.
//! - [`ruletest`]: `canaryd test`, promtool-style rule unit tests.
//! - [`replay`]: `canaryd replay`, recorded events through the engine.
//! - [`decide`]: from alert transitions to actions.
//! - [`live`]: `canaryd run`, the Kafka consume loop.
//! - [`logging`]: text or JSON logs, with a filter that changes at runtime.
//! - [`kafka`]: Kafka settings and the consumer group context.
//! - [`pipeline`]: routing, queues, retries, escalation and rate limits for actions.
//! - [`receivers`]: the configured action targets, built into connectors.
//! - [`audit`]: transitions and outcomes published as JSON.
//! - [`secret`]: values read inline, from the environment or from files.
//! - [`server`]: the HTTP side: Alertmanager receiver, silences, API, status page.
//! - [`metrics`]: the Prometheus metrics served at `/metrics`.
#![forbid(unsafe_code)]

pub mod audit;
pub mod check;
pub mod cli;
pub mod config;
pub mod decide;
pub mod kafka;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod pipeline;
pub mod receivers;
pub mod replay;
pub mod ruletest;
pub mod secret;
pub mod server;
pub mod service;
