//! The command line.

use std::io::{BufReader, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::offline::replay::{self, Format};
use crate::offline::{check, ruletest};

/// canaryd keeps canary rollouts of ML models safe.
#[derive(Debug, Parser)]
#[command(name = "canaryd", version, about)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `canaryd=debug`. Overrides RUST_LOG.
    #[arg(long, global = true)]
    pub log_level: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::logging::LogFormat;

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate rule files, rule test files and config files; list every error.
    Check {
        /// Files to check.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run rule unit tests.
    Test {
        /// Rule test files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run the daemon: consume events from Kafka and act on firing rules.
    Run {
        /// The config file.
        #[arg(long)]
        config: PathBuf,
        /// This replica's name in logs and audit records (default: host name and pid).
        #[arg(long)]
        instance: Option<String>,
        /// Where the other replicas reach this one's HTTP server
        /// (`HOST:PORT`, e.g. `$(POD_IP):9464`): a rollout request for a
        /// model another replica carries is forwarded to it.
        #[arg(long)]
        advertise: Option<String>,
    },
    /// Feed recorded events through the rules; every action is a dry run.
    Replay {
        /// Rule files (or use --config).
        #[arg(long, num_args = 1.., required_unless_present = "config")]
        rules: Vec<PathBuf>,
        /// A config file, for its rules, decision matrix and engine settings.
        #[arg(long, conflicts_with = "rules")]
        config: Option<PathBuf>,
        /// Events, one JSON object per line.
        #[arg(long)]
        events: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Text)]
        output: Format,
        /// Evaluate each model in its partition of a topic with this many,
        /// as `canaryd run` does (lateness judged per partition); 1 judges
        /// the recording as one stream.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
        partitions: u16,
    },
    /// Show or steer a model's rollout through a running canaryd's API.
    Rollout {
        /// What to do.
        #[arg(value_enum)]
        verb: RolloutVerb,
        /// The model (every rollout when `status` has none).
        #[arg(long, required_unless_present = "all")]
        model: Option<String>,
        /// With `status`: every rollout of the replica.
        #[arg(long, conflicts_with = "model")]
        all: bool,
        /// The replica's HTTP address, e.g. http://canaryd:9090.
        #[arg(long)]
        url: String,
        /// Who asks, recorded with the change (default: $USER).
        #[arg(long)]
        by: Option<String>,
        /// A file holding the API's bearer token, if it needs one.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

/// What `canaryd rollout` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum RolloutVerb {
    /// Show the rollout.
    Status,
    /// Stop the hold clock and every traffic change.
    Pause,
    /// Carry on from a pause, or start a rolled-back version again.
    Resume,
    /// Pass the current stage now.
    Promote,
    /// Roll back to 0% now.
    Abort,
}

/// Exit codes: 0 success, 1 invalid input or failed tests, 2 usage (clap),
/// 3 an I/O error.
const INVALID: u8 = 1;
const IO_ERROR: u8 = 3;

/// Sets up logging on stderr.
pub fn init_logging(format: LogFormat, level: Option<&str>) {
    crate::logging::init(format, level);
}

/// Runs a parsed command line and returns the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Check { files } => run_check(&files),
        Command::Test { files } => run_tests(&files),
        Command::Replay {
            rules,
            config,
            events,
            output,
            partitions,
        } => run_replay(rules, config, events, output, partitions.into()),
        Command::Run {
            config,
            instance,
            advertise,
        } => run_daemon(&config, instance, advertise),
        Command::Rollout {
            verb,
            model,
            all: _,
            url,
            by,
            token_file,
        } => run_rollout(verb, model, &url, by, token_file),
    }
}

/// `canaryd rollout`: one API call; prints the answer as JSON.
fn run_rollout(
    verb: RolloutVerb,
    model: Option<String>,
    url: &str,
    by: Option<String>,
    token_file: Option<PathBuf>,
) -> ExitCode {
    let token = match token_file.map(std::fs::read_to_string).transpose() {
        Ok(t) => t.map(|t| t.trim().to_string()),
        Err(e) => {
            eprintln!("cannot read the token file: {e}");
            return ExitCode::from(INVALID);
        }
    };
    let base = url.trim_end_matches('/');
    let path = match (&model, verb) {
        (None, RolloutVerb::Status) => format!("{base}/api/v1/rollouts"),
        (None, _) => {
            eprintln!("{verb:?} needs --model");
            return ExitCode::from(INVALID);
        }
        (Some(m), RolloutVerb::Status) => format!("{base}/api/v1/rollouts/{m}"),
        (Some(m), verb) => format!(
            "{base}/api/v1/rollouts/{m}/{}",
            format!("{verb:?}").to_lowercase()
        ),
    };
    let by = by
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "canaryd rollout".to_string());
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let answer = runtime.block_on(async move {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()?;
        let request = match verb {
            RolloutVerb::Status => client.get(&path),
            _ => client.post(&path).json(&serde_json::json!({ "by": by })),
        };
        let request = match &token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let response = request.send().await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or(serde_json::Value::Null);
        Ok::<_, reqwest::Error>((status, body))
    });
    match answer {
        Ok((status, body)) if status.is_success() => {
            println!(
                "{}",
                serde_json::to_string_pretty(&body).unwrap_or_default()
            );
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            let why = body["error"]
                .as_str()
                .map_or_else(|| body.to_string(), str::to_string);
            eprintln!("{status}: {why}");
            ExitCode::from(INVALID)
        }
        Err(e) => {
            eprintln!("cannot reach {url}: {e}");
            ExitCode::from(IO_ERROR)
        }
    }
}

fn run_daemon(
    path: &std::path::Path,
    instance: Option<String>,
    advertise: Option<String>,
) -> ExitCode {
    let loaded = match Config::read(path).and_then(Config::load) {
        Ok(l) => l,
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            return ExitCode::from(INVALID);
        }
    };
    let instance = instance.unwrap_or_else(default_instance);
    let live = match crate::run::Live::new(loaded, instance)
        .map(|l| l.with_config_path(path.to_path_buf()))
        .and_then(|l| l.advertising(advertise))
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            return ExitCode::from(INVALID);
        }
    };
    let runtime = match runtime(tokio::runtime::Builder::new_multi_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let signals = tokio::spawn(cancel_on_signal(shutdown.clone()));
        let result = live.run(shutdown).await;
        signals.abort();
        result
    });
    // Everything that matters is done (drained, committed); what may still
    // run is a blocking probe of the broker, which must not hold up exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "canaryd stopped");
            eprintln!("canaryd stopped: {e}");
            // Something the config names cannot be had (a secret, the
            // address): the config is what to fix.
            let code = match e {
                crate::run::RunError::Config(_) => INVALID,
                _ => IO_ERROR,
            };
            ExitCode::from(code)
        }
    }
}

/// An async runtime from `builder`, or the exit code for not having one.
fn runtime(mut builder: tokio::runtime::Builder) -> Result<tokio::runtime::Runtime, ExitCode> {
    builder.enable_all().build().map_err(|e| {
        eprintln!("cannot start the async runtime: {e}");
        ExitCode::from(IO_ERROR)
    })
}

/// Cancels `token` on SIGTERM or SIGINT.
async fn cancel_on_signal(token: tokio_util::sync::CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot listen for signals; stopping");
        }
    }
    token.cancel();
}

fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "canaryd".into());
    format!("{host}-{}", std::process::id())
}

fn run_check(files: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for file in files {
        match check::check_file(file) {
            Ok(line) => println!("{line}"),
            Err(errors) => {
                failed = true;
                for e in errors {
                    println!("{e}");
                }
            }
        }
    }
    if failed {
        ExitCode::from(INVALID)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_tests(files: &[PathBuf]) -> ExitCode {
    let (mut passed, mut failed) = (0, 0);
    for file in files {
        println!("{}", file.display());
        let (tests, loaded) = match ruletest::load(file) {
            Ok(x) => x,
            Err(e) => {
                failed += 1;
                println!("  error: {e}");
                continue;
            }
        };
        for result in ruletest::run(&tests, &loaded) {
            if result.failures.is_empty() {
                passed += 1;
                println!("  ok    {}", result.name);
            } else {
                failed += 1;
                println!("  FAIL  {}", result.name);
                for f in result.failures {
                    println!("        {}", f.trim_end().replace('\n', "\n        "));
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        ExitCode::from(INVALID)
    } else {
        ExitCode::SUCCESS
    }
}

fn run_replay(
    rules: Vec<PathBuf>,
    config: Option<PathBuf>,
    events: PathBuf,
    output: Format,
    partitions: usize,
) -> ExitCode {
    let config = match config {
        Some(path) => Config::read(&path),
        None => Ok(Config {
            rules,
            ..Config::default()
        }),
    };
    let loaded = match config.and_then(Config::load) {
        Ok(l) => l,
        Err(e) => {
            for line in e.lines() {
                eprintln!("{line}");
            }
            return ExitCode::from(match e {
                ConfigError::Io { .. } => IO_ERROR,
                _ => INVALID,
            });
        }
    };
    let file = match std::fs::File::open(&events) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("{}: {e}", events.display());
            return ExitCode::from(IO_ERROR);
        }
    };
    let progress = if std::io::stderr().is_terminal() {
        let total = file.metadata().map(|m| m.len()).unwrap_or(0);
        let bar = indicatif::ProgressBar::new(total);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let runtime = match runtime(tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut diag = Suspended(progress.as_ref());
    let result = runtime.block_on(replay::replay(
        &loaded,
        BufReader::new(file),
        &mut out,
        &mut diag,
        output,
        partitions,
        |n| {
            if let Some(bar) = &progress {
                bar.inc(n)
            }
        },
    ));
    if let Some(bar) = &progress {
        bar.finish_and_clear();
    }
    match result.and_then(|_| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is the reader's choice, not a failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replay failed: {e}");
            ExitCode::from(IO_ERROR)
        }
    }
}

/// Writes diagnostics to stderr without tearing the progress bar.
struct Suspended<'a>(Option<&'a indicatif::ProgressBar>);

impl Write for Suspended<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0 {
            Some(bar) => bar.suspend(|| std::io::stderr().write(buf)),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
