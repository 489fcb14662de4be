//! The daemon's configuration file, and loading everything it points at.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use canaryd_rules::{
    DecisionMatrix, EngineConfig, LoadOptions, RuleError, RuleSet, Span, Vocabulary, load_rules,
};
use serde::Deserialize;

/// `canaryd.yaml`. Unknown keys are errors, so typos never pass silently.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Rule files, relative to the config file.
    pub rules: Vec<PathBuf>,
    /// Default action and deadline per severity; the playbook's by default.
    #[serde(default)]
    pub decision_matrix: DecisionMatrix,
    /// Staleness and lateness.
    #[serde(default)]
    pub engine: EngineConfig,
    /// Windows over inference events: length, minimum samples, refresh.
    #[serde(default)]
    pub analytics: canaryd_rules::analytics::AnalyticsConfig,
    /// Record every action without carrying it out.
    #[serde(default)]
    pub dry_run: bool,
    /// Site-specific metric names that conditions may use, beyond the built-in ones.
    #[serde(default)]
    pub variables: Vec<String>,
    /// Queues, workers, retries and rate limits of the action pipeline.
    #[serde(default)]
    pub pipeline: crate::act::pipeline::PipelineConfig,
    /// Named action targets.
    #[serde(default)]
    pub receivers: std::collections::BTreeMap<String, canaryd_connectors::ReceiverConfig>,
    /// Which receivers each action goes to.
    #[serde(default)]
    pub routes: crate::act::routes::Routes,
    /// The HTTP server: Alertmanager webhook, JSON API, metrics, status page.
    #[serde(default)]
    pub http: Option<crate::server::HttpConfig>,
    /// Where events come from; required by `canaryd run`.
    #[serde(default)]
    pub kafka: Option<crate::run::kafka::KafkaConfig>,
    /// The plans canaries are carried through, from their first stage to 100%.
    #[serde(default)]
    pub rollouts: Option<crate::rollouts::RolloutsConfig>,
}

/// Why configuration could not be loaded. Every variant lists all it found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with line and column.
        message: String,
    },
    /// One or more rule files are not valid.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Rules(Vec<RuleError>),
}

impl ConfigError {
    /// One line per problem, for printing.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Rules(errors) => errors.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

/// A configuration with its rules loaded and compiled.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The configuration as written.
    pub config: Config,
    /// The variables conditions could use.
    pub vocabulary: Vocabulary,
    /// Every rule, from every file.
    pub rules: Arc<RuleSet>,
}

impl Loaded {
    /// Every problem with receivers, routes and Kafka settings.
    pub fn problems(&self) -> Vec<String> {
        let mut out =
            crate::act::routes::problems(&self.config.receivers, &self.config.routes, &self.rules);
        if let Some(kafka) = &self.config.kafka {
            out.extend(kafka.problems());
            if kafka.silences_topic.is_some() && self.config.http.is_none() {
                out.push(
                    "kafka.silences_topic needs http: silences are made through the HTTP API and kept by its server"
                        .to_string(),
                );
            }
        }
        if let Some(http) = &self.config.http {
            out.extend(http.problems().into_iter().map(|p| format!("http: {p}")));
        }
        if let Some(c) = self.config.analytics.confidence
            && !c.is_valid()
        {
            out.push(format!(
                "analytics.confidence ({}) must be between 0.5 and 0.9999, or null to leave rates below min_samples as no data",
                c.0
            ));
        }
        out.extend(self.config.analytics.judge.problem());
        let engine = &self.config.engine;
        if engine.evict_after <= engine.stale_after {
            out.push(format!(
                "engine.evict_after ({}) must be longer than engine.stale_after ({}): a subject goes stale before it is forgotten",
                engine.evict_after, engine.stale_after
            ));
        }
        if let Some(rollouts) = &self.config.rollouts {
            let live = self.config.kafka.is_some();
            out.extend(rollouts.problems(&self.config.receivers, &self.rules, live));
        }
        out
    }

    /// How much input rebuilds the evaluation state when the changelog is
    /// lost: the longest rule hold (with its keep-firing time) plus the
    /// analytics window and the staleness horizon.
    pub fn rebuild_lookback(&self) -> Span {
        let hold = self
            .rules
            .rules()
            .iter()
            .map(|r| {
                r.timing
                    .hold
                    .millis()
                    .saturating_add(r.timing.keep_firing_for.millis())
            })
            .max()
            .unwrap_or(0);
        let engine = self.engine_config();
        Span(
            hold.saturating_add(engine.analytics.window.millis())
                .saturating_add(engine.stale_after.millis()),
        )
    }

    /// The plans in `rollouts:`, if there are any.
    pub fn rollout_plans(&self) -> Option<Arc<canaryd_rules::rollout::controller::Plans>> {
        let plans = self.config.rollouts.as_ref()?.plans(&self.config.receivers);
        (!plans.is_empty()).then_some(plans)
    }

    /// A rollout controller for the plans in `rollouts:`, if there are
    /// any, as replay runs it: with no traffic object to read back.
    pub fn rollout_controller(&self) -> Option<canaryd_rules::rollout::controller::Controller> {
        let plans = self.rollout_plans()?;
        Some(canaryd_rules::rollout::controller::Controller::new(
            plans,
            self.rules.clone(),
        ))
    }

    /// The controller `canaryd run` uses: a model first seen without a
    /// restored state is read back from its traffic object first.
    pub fn live_rollout_controller(
        &self,
    ) -> Option<canaryd_rules::rollout::controller::Controller> {
        Some(self.rollout_controller()?.with_read_back(true))
    }

    /// The engine's settings: `engine:` plus `analytics:`.
    pub fn engine_config(&self) -> EngineConfig {
        EngineConfig {
            analytics: self.config.analytics.clone(),
            ..self.config.engine.clone()
        }
    }
}

impl Config {
    /// Reads and parses a config file, without loading its rules.
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(path, &text)
    }

    /// Parses config text; `path` names it in errors and anchors relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let mut config: Config =
            serde_yaml_ng::from_str(text).map_err(|e| invalid(e.to_string()))?;
        if config.rules.is_empty() {
            return Err(invalid("`rules:` must list at least one rule file".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        for rule_file in &mut config.rules {
            if rule_file.is_relative() {
                *rule_file = base.join(&*rule_file);
            }
        }
        config.receivers = std::mem::take(&mut config.receivers)
            .into_iter()
            .map(|(name, spec)| (name, spec.with_base_dir(base)))
            .collect();
        Ok(config)
    }

    /// Loads every rule file, reporting all errors across all files.
    pub fn load(self) -> Result<Loaded, ConfigError> {
        self.load_reusing(None)
    }

    /// Like [`Config::load`], reusing the compiled conditions of `running`
    /// where a rule's condition did not change: a reload's fast path.
    pub fn load_reusing(self, running: Option<&Loaded>) -> Result<Loaded, ConfigError> {
        let vocabulary = Vocabulary::builtin().with_extra(self.variables.iter().cloned());
        let options = LoadOptions {
            vocabulary: vocabulary.clone(),
            matrix: self.decision_matrix.clone(),
            previous: running.map(|l| (l.rules.clone(), l.vocabulary.clone())),
            ..LoadOptions::default()
        };
        let rules = load_rule_files(&self.rules, &options)?;
        Ok(Loaded {
            config: self,
            vocabulary,
            rules: Arc::new(rules),
        })
    }
}

/// Loads rule files into one set, collecting the errors of all of them.
pub fn load_rule_files(paths: &[PathBuf], options: &LoadOptions) -> Result<RuleSet, ConfigError> {
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        let bytes = match read_bounded(path, options.max_bytes) {
            Ok(b) => b,
            Err(e) => {
                errors.push(RuleError {
                    file: Arc::from(name.as_str()),
                    line: 0,
                    rule: None,
                    message: e,
                });
                continue;
            }
        };
        match load_rules(&name, &bytes, options) {
            Ok(mut r) => rules.append(&mut r),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigError::Rules(errors));
    }
    RuleSet::new(rules).map_err(ConfigError::Rules)
}

/// Reads at most one byte past `max`, so a huge file is refused without
/// being read whole.
fn read_bounded(path: &Path, max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    Ok(bytes)
}
