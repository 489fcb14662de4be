//! Logging on stderr, text or JSON, with a filter that can change while
//! the daemon runs (`PUT /-/log-level`).

use std::sync::OnceLock;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::reload::Handle;

/// Sets the filter in force; installed by [`init`].
type Setter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

static SETTER: OnceLock<Setter> = OnceLock::new();

/// Log output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sets up logging on stderr. `level` (e.g. `info`, `canaryd=debug`)
/// overrides `RUST_LOG`; the default is `warn`.
pub fn init(format: LogFormat, level: Option<&str>) {
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
    };
    // A second init (in tests) fails harmlessly; logging is already set up.
    match format {
        LogFormat::Text => {
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                remember(handle);
            }
        }
        LogFormat::Json => {
            let builder = tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            if builder.try_init().is_ok() {
                remember(handle);
            }
        }
    }
}

fn remember<L, S>(handle: Handle<L, S>)
where
    L: From<EnvFilter> + Send + Sync + 'static,
    S: 'static,
{
    let setter: Setter =
        Box::new(move |filter| handle.reload(L::from(filter)).map_err(|e| e.to_string()));
    let _ = SETTER.set(setter);
}

/// Changes the filter, e.g. to `debug` or `canaryd=debug,rdkafka=warn`.
pub fn set_level(spec: &str) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(spec.trim()).map_err(|e| format!("invalid log filter {spec:?}: {e}"))?;
    match SETTER.get() {
        Some(set) => set(filter),
        None => Err("logging was not set up by canaryd".to_string()),
    }
}
