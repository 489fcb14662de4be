//! The Kubernetes traffic connector: carries out `auto_rollback` and
//! `reduce_traffic` by changing the canary's weight on an Istio
//! `VirtualService`, a Gateway API `HTTPRoute`, or by aborting an Argo
//! `Rollout`; and a rollout's stages, by setting weights or by promoting
//! the Argo `Rollout` to the stage's step.
//!
//! One long-lived [`kube::Client`] serves every action and every API call is
//! wrapped in the configured timeout. A change is made like this:
//!
//! 1. GET the target and compute the new weights. If they are already what
//!    the action asks for, succeed without writing (idempotent).
//!    If the object records the action's key as applied, succeed without
//!    writing: a retried `reduce_traffic` (after a crash, or a lost answer)
//!    must not cut twice.
//! 2. PATCH with a JSON merge patch (field manager `canaryd`) that carries
//!    the `metadata.resourceVersion` that was read, so that a concurrent
//!    change is answered with 409 Conflict, and records the action's key in
//!    the annotations [`APPLIED_ANNOTATION`] and [`LAST_ACTION_ANNOTATION`]
//!    in the same write. On a conflict, read again and recompute, up to
//!    [`MAX_ATTEMPTS`] times ("retried with a fresh read").
//! 3. GET again and verify the weights; a mismatch is a retriable error
//!    (something else changed the object again right after the write).
//! 4. Record a core/v1 `Event` on the target (reason `CanaryRollback` or
//!    `CanaryTrafficReduced`). Failing to record it is logged, not fatal.
//!
//! Errors: 401, 403, 404 and other rejected requests are
//! [`ConnectorError::Permanent`], with a message naming the verb, object and
//! namespace; 5xx, 429, timeouts, refused connections and a conflict that
//! outlasts the retries are [`ConnectorError::Retriable`].
//!
//! ```yaml
//! kube:
//!   kubeconfig: /etc/canaryd/kubeconfig   # optional
//!   context: prod                         # optional
//!   timeout: 5s                           # per API call
//!   target:
//!     kind: VirtualService                # VirtualService | HTTPRoute | Rollout
//!     namespace: ml-serving               # template over the subject's labels
//!     name: "model-{{ model }}"           # template over the subject's labels
//!     canary: canary                      # subset (VirtualService) or backendRef name (HTTPRoute)
//!     stable: stable
//!   reduce_step: 0.5                      # reduce_traffic: canary weight *= step, rounded down
//! ```

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use canaryd_rules::{ActionName, Span, Subject, Timestamp};
use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use minijinja::{Environment, UndefinedBehavior};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::action::{Action, Outcome, TrafficChange};
use crate::connector::{BoxFuture, Connector, ConnectorError, TrafficState};
use crate::retry::RetryPolicy;

/// How many times a write is tried when the object keeps changing under it
/// (409 Conflict): each try reads the object afresh.
pub const MAX_ATTEMPTS: usize = 5;

/// Between those tries: 10 ms doubling to 200 ms, jittered so that two
/// writers that collided do not collide again.
const CONFLICT_RETRY: RetryPolicy = RetryPolicy {
    initial: Duration::from_millis(10),
    max: Duration::from_millis(200),
};

/// The field manager canaryd's writes are recorded under.
pub const FIELD_MANAGER: &str = "canaryd";

/// The digests ([`Action::key_digest`]) of the last [`APPLIED_MEMORY`]
/// traffic actions applied to the object, oldest first, comma-separated.
pub const APPLIED_ANNOTATION: &str = "canaryd.io/applied-actions";

/// The key of the last traffic action applied, for people.
pub const LAST_ACTION_ANNOTATION: &str = "canaryd.io/last-action";

/// How many applied actions an object remembers.
pub const APPLIED_MEMORY: usize = 20;

/// Event reason for a rollback (canary weight 0, or an aborted Rollout).
pub const REASON_ROLLBACK: &str = "CanaryRollback";

/// Event reason for a reduced canary weight.
pub const REASON_REDUCED: &str = "CanaryTrafficReduced";

/// The Kubernetes Event reason for a rollout's weight change.
pub const REASON_SHIFTED: &str = "CanaryTrafficShifted";

/// The annotation holding a rollout's state (JSON), written in the same
/// patch as the weights it goes with.
pub const ROLLOUT_ANNOTATION: &str = "canaryd.io/rollout";

/// The annotation holding the canary weight canaryd last wrote: a rollout
/// step that finds another weight there knows a person changed it.
pub const WEIGHT_ANNOTATION: &str = "canaryd.io/canary-weight";

/// The event time (milliseconds) of the rollout change that set the
/// weights: an older change landing later is superseded. Records of state
/// alone do not move it, so they never supersede a weight change.
pub const TRAFFIC_AT_ANNOTATION: &str = "canaryd.io/traffic-at";

/// The annotation a deployment pipeline sets to the canary version it
/// deployed (the events' `version` label): canaryd reads it on its
/// periodic reads and starts a new rollout when it names a new version.
pub const CANARY_VERSION_ANNOTATION: &str = "canaryd.io/canary-version";

/// How a refused rollout step's error begins when a person changed the
/// weights: the rollout pauses rather than fight them.
pub const HAND_EDIT: &str = "hand edit:";

/// The `kube:` section of the config file.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubeConfig {
    /// A kubeconfig file. Absent: [`kube::Config::infer`], which tries
    /// `$KUBECONFIG` or `~/.kube/config` and then the in-cluster service
    /// account. Used as given; see [`KubeConfig::with_base_dir`].
    #[serde(default)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use; absent means its current context.
    #[serde(default)]
    pub context: Option<String>,
    /// The limit for each API call (default 5s).
    #[serde(default = "default_timeout")]
    pub timeout: Span,
    /// The object whose traffic split is changed.
    pub target: TargetConfig,
    /// `reduce_traffic` multiplies the canary weight by this, rounding down;
    /// `0 < reduce_step < 1` (default 0.5).
    #[serde(default = "default_reduce_step")]
    pub reduce_step: f64,
}

/// Which object carries the traffic split, and how to find the two tracks in it.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// The kind of object.
    pub kind: TargetKind,
    /// Its namespace: a minijinja template over the subject's labels, e.g.
    /// `ml-{{ team }}`.
    pub namespace: String,
    /// Its name: a minijinja template over the subject's labels, e.g.
    /// `model-{{ model }}`.
    pub name: String,
    /// The canary: a destination subset (VirtualService) or a backendRef
    /// name (HTTPRoute). Unused for a Rollout. Default `canary`.
    #[serde(default = "default_canary")]
    pub canary: String,
    /// The stable track, like `canary`. Default `stable`.
    #[serde(default = "default_stable")]
    pub stable: String,
}

/// The kinds of object the connector can change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Deserialize)]
pub enum TargetKind {
    /// Istio `networking.istio.io/v1` VirtualService: weights in
    /// `spec.http[].route[]`, tracks told apart by `destination.subset`.
    VirtualService,
    /// Gateway API `gateway.networking.k8s.io/v1` HTTPRoute: weights in
    /// `spec.rules[].backendRefs[]`, tracks told apart by backendRef `name`.
    #[serde(rename = "HTTPRoute")]
    HttpRoute,
    /// Argo Rollouts `argoproj.io/v1alpha1` Rollout: both actions abort it
    /// (`status.abort: true`, as `kubectl argo rollouts abort` does). Argo
    /// owns the weights of a Rollout and would overwrite any weight canaryd
    /// set, so reducing traffic is done the only way Argo honours: by
    /// aborting, which sends all traffic back to stable. A rollout stage
    /// promotes it to the stage's `setWeight` step.
    Rollout,
}

impl TargetKind {
    /// The Kubernetes kind, e.g. `VirtualService`.
    pub fn kind(self) -> &'static str {
        match self {
            TargetKind::VirtualService => "VirtualService",
            TargetKind::HttpRoute => "HTTPRoute",
            TargetKind::Rollout => "Rollout",
        }
    }

    /// The API group.
    pub fn group(self) -> &'static str {
        match self {
            TargetKind::VirtualService => "networking.istio.io",
            TargetKind::HttpRoute => "gateway.networking.k8s.io",
            TargetKind::Rollout => "argoproj.io",
        }
    }

    /// The API version within the group.
    pub fn version(self) -> &'static str {
        match self {
            TargetKind::VirtualService | TargetKind::HttpRoute => "v1",
            TargetKind::Rollout => "v1alpha1",
        }
    }

    /// The resource name in URLs and RBAC rules, e.g. `virtualservices`.
    pub fn plural(self) -> &'static str {
        match self {
            TargetKind::VirtualService => "virtualservices",
            TargetKind::HttpRoute => "httproutes",
            TargetKind::Rollout => "rollouts",
        }
    }

    /// The resource for kube's dynamic API.
    pub fn api_resource(self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group(), self.version(), self.kind()),
            self.plural(),
        )
    }
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.kind())
    }
}

fn default_timeout() -> Span {
    Span::seconds(5)
}

fn default_reduce_step() -> f64 {
    0.5
}

fn default_canary() -> String {
    "canary".to_string()
}

fn default_stable() -> String {
    "stable".to_string()
}

fn template_env() -> Environment<'static> {
    let mut env = Environment::new();
    // A label missing from the subject must fail, not render as "".
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env
}

impl KubeConfig {
    /// Problems with the values that do not depend on any rule: the reduce
    /// step, the timeout, the track names. Empty when valid.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if !(self.reduce_step.is_finite() && self.reduce_step > 0.0 && self.reduce_step < 1.0) {
            problems.push(format!(
                "kube.reduce_step must be greater than 0 and less than 1, not {}",
                self.reduce_step
            ));
        }
        if self.timeout.millis() <= 0 {
            problems.push("kube.timeout must be longer than 0s".to_string());
        }
        if self.target.kind != TargetKind::Rollout {
            if self.target.canary.is_empty() || self.target.stable.is_empty() {
                problems.push("kube.target.canary and kube.target.stable may not be empty".into());
            } else if self.target.canary == self.target.stable {
                problems.push(format!(
                    "kube.target.canary and kube.target.stable are both `{}`",
                    self.target.canary
                ));
            }
        }
        for (field, source) in self.templates() {
            if let Err(e) = template_env().template_from_str(source) {
                problems.push(format!("{field}: template does not compile: {e}"));
            }
        }
        problems
    }

    /// Problems with the `namespace` and `name` templates for a rule whose
    /// subjects carry `labels` (its `group_by`): a template that does not
    /// compile, or that uses a label the subject will not have. Empty when
    /// valid.
    pub fn check_templates(&self, labels: &[String]) -> Vec<String> {
        let env = template_env();
        let mut problems = Vec::new();
        for (field, source) in self.templates() {
            let template = match env.template_from_str(source) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(format!("{field}: template does not compile: {e}"));
                    continue;
                }
            };
            let mut unknown: Vec<String> = template
                .undeclared_variables(false)
                .into_iter()
                .filter(|v| !labels.contains(v))
                .collect();
            unknown.sort();
            for name in unknown {
                problems.push(format!(
                    "{field}: template `{source}` uses label `{name}`, which is not in the rule's group_by [{}]",
                    labels.join(", ")
                ));
            }
        }
        problems
    }

    /// Resolves a relative `kubeconfig` path against `dir` (the config
    /// file's directory).
    pub fn with_base_dir(mut self, dir: &Path) -> KubeConfig {
        if let Some(path) = &self.kubeconfig
            && path.is_relative()
        {
            self.kubeconfig = Some(dir.join(path));
        }
        self
    }

    fn templates(&self) -> [(&'static str, &str); 2] {
        [
            ("kube.target.namespace", self.target.namespace.as_str()),
            ("kube.target.name", self.target.name.as_str()),
        ]
    }

    fn timeout_duration(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.timeout.millis()).unwrap_or(0))
    }
}

/// Why a [`KubeConnector`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KubeConnectorError {
    /// The `kube:` section is invalid.
    #[error("invalid kube config: {}", .0.join("; "))]
    Invalid(Vec<String>),
    /// The kubeconfig file could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No kubeconfig was given and none could be inferred.
    #[error(
        "no Kubernetes configuration: no kubeconfig ($KUBECONFIG or ~/.kube/config) and not in a cluster: {0}"
    )]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// Carries out `auto_rollback` and `reduce_traffic` against Kubernetes.
#[derive(Clone)]
pub struct KubeConnector {
    client: kube::Client,
    config: KubeConfig,
    timeout: Duration,
}

impl fmt::Debug for KubeConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeConnector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KubeConnector {
    /// Validates `config` and builds the one client: from `kubeconfig` (and
    /// `context`) when given, else by [`kube::Config::infer`].
    pub async fn new(config: KubeConfig) -> Result<KubeConnector, KubeConnectorError> {
        let problems = config.check();
        if !problems.is_empty() {
            return Err(KubeConnectorError::Invalid(problems));
        }
        let kube_config = match &config.kubeconfig {
            Some(path) => {
                let wrap = |source| KubeConnectorError::Kubeconfig {
                    path: path.clone(),
                    source,
                };
                let file = kube::config::Kubeconfig::read_from(path).map_err(wrap)?;
                let options = kube::config::KubeConfigOptions {
                    context: config.context.clone(),
                    ..Default::default()
                };
                kube::Config::from_custom_kubeconfig(file, &options)
                    .await
                    .map_err(wrap)?
            }
            None => kube::Config::infer()
                .await
                .map_err(KubeConnectorError::Infer)?,
        };
        let client = kube::Client::try_from(kube_config).map_err(KubeConnectorError::Client)?;
        KubeConnector::from_client(client, config)
    }

    /// Uses an existing client (shared with other parts of the daemon).
    pub fn from_client(
        client: kube::Client,
        config: KubeConfig,
    ) -> Result<KubeConnector, KubeConnectorError> {
        let problems = config.check();
        if !problems.is_empty() {
            return Err(KubeConnectorError::Invalid(problems));
        }
        let timeout = config.timeout_duration();
        Ok(KubeConnector {
            client,
            config,
            timeout,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &KubeConfig {
        &self.config
    }

    /// See [`KubeConfig::check_templates`].
    pub fn check_templates(&self, labels: &[String]) -> Vec<String> {
        self.config.check_templates(labels)
    }

    /// The target for this action's subject: the rendered namespace and name.
    fn target(&self, action: &Action) -> Result<Target, ConnectorError> {
        self.target_for(&action.subject)
    }

    fn target_for(
        &self,
        subject: &std::collections::BTreeMap<String, String>,
    ) -> Result<Target, ConnectorError> {
        let env = template_env();
        let context = minijinja::Value::from(minijinja::value::Serde(subject));
        let render = |field: &str, source: &str| -> Result<String, ConnectorError> {
            let text = env.render_str(source, &context).map_err(|e| {
                ConnectorError::Permanent(format!(
                    "{field}: cannot render `{source}` for {}: {e}",
                    Subject(subject)
                ))
            })?;
            check_name(&text).map_err(|why| {
                ConnectorError::Permanent(format!(
                    "{field}: `{source}` rendered `{text}` for {}, which {why}",
                    Subject(subject)
                ))
            })?;
            Ok(text)
        };
        Ok(Target {
            kind: self.config.target.kind,
            namespace: render("kube.target.namespace", &self.config.target.namespace)?,
            name: render("kube.target.name", &self.config.target.name)?,
        })
    }

    /// Runs `call` within the timeout.
    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, CallFailure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(CallFailure::Kube(e)),
            Err(_) => Err(CallFailure::Timeout),
        }
    }

    fn fail(&self, verb: &str, resource: &str, target: &Target, e: CallFailure) -> ConnectorError {
        classify(verb, resource, target, e, self.timeout)
    }

    #[tracing::instrument(
        name = "kube.execute",
        skip_all,
        fields(rule = %action.rule, action = %action.action, key = %action.key, dry_run = action.dry_run)
    )]
    async fn run(&self, action: &Action) -> Result<Outcome, ConnectorError> {
        let op = match (action.action, &action.traffic) {
            (ActionName::ShiftTraffic, Some(t)) => Op::Set(t.weight),
            (ActionName::ShiftTraffic, None) => {
                return Err(ConnectorError::Permanent(
                    "shift_traffic without a weight: only the rollout controller asks for it"
                        .into(),
                ));
            }
            (ActionName::AutoRollback, _) => Op::Rollback,
            (ActionName::ReduceTraffic, _) => Op::Reduce(self.config.reduce_step),
            _ => return Err(ConnectorError::Permanent("not a traffic action".into())),
        };
        let target = self.target(action)?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &target.namespace,
            &target.kind.api_resource(),
        );
        if let Some(t) = action.traffic.as_ref().filter(|t| t.record) {
            return self.record_state(action, t, &target, &api).await;
        }
        let mut backoff = CONFLICT_RETRY.backoff();
        for attempt in 1..=MAX_ATTEMPTS {
            let current = self
                .timed(api.get(&target.name))
                .await
                .map_err(|e| self.fail("get", target.kind.plural(), &target, e))?;
            let applied = applied_actions(&current);
            let digest = action.key_digest();
            if applied.contains(&digest.as_str()) {
                let detail = format!(
                    "{target}: action {} already applied (recorded in {APPLIED_ANNOTATION}); nothing to do",
                    action.key
                );
                tracing::info!(%detail, "already applied");
                return Ok(Outcome::succeeded(
                    self.name(),
                    action,
                    action.dry_run,
                    detail,
                ));
            }
            if let Some(t) = &action.traffic
                && let Some(recorded) = traffic_at(&current)
                && recorded > t.at
            {
                // Workers run in parallel: a later change can land first.
                let detail = format!(
                    "{target}: superseded: the object records a later rollout change (at {}) than this one (at {})",
                    Timestamp(recorded),
                    Timestamp(t.at)
                );
                tracing::info!(%detail, "rollout change superseded");
                return Ok(Outcome::succeeded(
                    self.name(),
                    action,
                    action.dry_run,
                    detail,
                ));
            }
            let plan = self.plan(&target, op, &current)?;
            if let (Some(t), Some(written), Some(now)) = (
                &action.traffic,
                written_weight(&current),
                plan.canary_before(),
            ) && now != written
                && !t.adopt
            {
                return Err(ConnectorError::Permanent(format!(
                    "{HAND_EDIT} {target} has canary weight {now}, but canaryd last set {written}: not changing it; the rollout pauses until a person resumes it"
                )));
            }
            if plan.is_noop() {
                // The weights stand but the rollout moved on (a new version
                // at the same stage weight, a resume): its state is recorded.
                if let Some(t) = &action.traffic
                    && t.state.is_some()
                    && target.kind != TargetKind::Rollout
                    && annotation(&current, ROLLOUT_ANNOTATION) != t.state.as_deref()
                {
                    return self.record_state(action, t, &target, &api).await;
                }
                let detail = format!("{target}: {}; nothing to do", plan.already());
                tracing::info!(%detail, "already at target");
                return Ok(Outcome::succeeded(
                    self.name(),
                    action,
                    action.dry_run,
                    detail,
                ));
            }
            if action.dry_run {
                let detail = format!("would set {target}: {}", plan.describe());
                return Ok(Outcome::succeeded(self.name(), action, true, detail));
            }
            let resource_version = current.metadata.resource_version.clone();
            let mut remembered: Vec<&str> = applied;
            remembered.push(&digest);
            let skip = remembered.len().saturating_sub(APPLIED_MEMORY);
            let mut annotations = json!({
                APPLIED_ANNOTATION: remembered[skip..].join(","),
                LAST_ACTION_ANNOTATION: truncate(&action.key, 253),
            });
            if let Some(t) = &action.traffic {
                annotations[TRAFFIC_AT_ANNOTATION] = json!(t.at.to_string());
                // A record of a later state (a pause) may have landed first.
                if let Some(state) = &t.state
                    && rollout_at(&current).is_none_or(|recorded| recorded <= t.at)
                {
                    annotations[ROLLOUT_ANNOTATION] = json!(state);
                }
            }
            if let Some(weight) = plan.canary_after() {
                annotations[WEIGHT_ANNOTATION] = json!(weight.to_string());
            }
            let written = self
                .write(&api, &target, &plan, resource_version, annotations)
                .await;
            match written {
                Ok(()) => {}
                Err(CallFailure::Kube(kube::Error::Api(status))) if status.code == 409 => {
                    tracing::debug!(
                        attempt,
                        "conflict: {target} changed since it was read; reading again"
                    );
                    // Another writer is active: let it finish before re-reading.
                    tokio::time::sleep(backoff.next_delay(None)).await;
                    continue;
                }
                Err(e) => return Err(self.fail("patch", plan.resource(), &target, e)),
            }
            let after = self.timed(api.get(&target.name)).await.map_err(|e| {
                let e = self.fail("get", target.kind.plural(), &target, e);
                ConnectorError::retriable(format!(
                    "{target} was written but could not be read back to verify: {e}"
                ))
            })?;
            plan.verify(&target, &self.config.target, &after)
                .map_err(ConnectorError::retriable)?;
            let change = plan.describe();
            self.record_event(action, &target, &plan, &change, &after)
                .await;
            let detail = format!("{target}: {change} (verified)");
            tracing::info!(%detail, attempt, "traffic changed");
            return Ok(Outcome::succeeded(self.name(), action, false, detail));
        }
        Err(ConnectorError::retriable(format!(
            "conflict: {target} changed concurrently on each of {MAX_ATTEMPTS} attempts (409 Conflict); giving up for now"
        )))
    }

    /// Writes a rollout's state alone on the object, never its weights
    /// ([`TrafficChange::record`]); not the applied-actions memory either,
    /// nor a Kubernetes Event: nothing moved.
    async fn record_state(
        &self,
        action: &Action,
        t: &TrafficChange,
        target: &Target,
        api: &Api<DynamicObject>,
    ) -> Result<Outcome, ConnectorError> {
        let done = |detail: String| {
            tracing::debug!(%detail, "rollout state");
            Ok(Outcome::succeeded(
                self.name(),
                action,
                action.dry_run,
                detail,
            ))
        };
        let Some(state) = t.state.as_deref() else {
            return Err(ConnectorError::Permanent(
                "a rollout record without a state".into(),
            ));
        };
        if target.kind == TargetKind::Rollout {
            return done(format!("{target}: an Argo Rollout keeps its own state"));
        }
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        let mut backoff = CONFLICT_RETRY.backoff();
        for _ in 1..=MAX_ATTEMPTS {
            let current = self
                .timed(api.get(&target.name))
                .await
                .map_err(|e| self.fail("get", target.kind.plural(), target, e))?;
            if let Some(recorded) = rollout_at(&current)
                && recorded > t.at
            {
                return done(format!(
                    "{target}: superseded: the object records a later rollout state (at {}) than this one (at {})",
                    Timestamp(recorded),
                    Timestamp(t.at)
                ));
            }
            if annotation(&current, ROLLOUT_ANNOTATION) == Some(state) {
                return done(format!("{target}: rollout state already recorded"));
            }
            if !t.adopt {
                let now = self
                    .plan(target, Op::Set(t.weight), &current)?
                    .canary_before();
                if let (Some(written), Some(now)) = (written_weight(&current), now)
                    && now != written
                {
                    return Err(ConnectorError::Permanent(format!(
                        "{HAND_EDIT} {target} has canary weight {now}, but canaryd last set {written}: not recording over it; the rollout pauses until a person resumes it"
                    )));
                }
                // Its weight change is still on its way: a state recorded
                // ahead of it would tell a new owner of traffic not there.
                if now != Some(i64::from(t.weight)) {
                    return done(format!(
                        "{target}: canary weight is not yet {}%: state not recorded",
                        t.weight
                    ));
                }
            }
            if action.dry_run {
                return done(format!("would record the rollout's state on {target}"));
            }
            let mut body = json!({ "metadata": { "annotations": { ROLLOUT_ANNOTATION: state } } });
            if let Some(rv) = &current.metadata.resource_version {
                body["metadata"]["resourceVersion"] = json!(rv);
            }
            match self
                .timed(api.patch(&target.name, &params, &Patch::Merge(&body)))
                .await
            {
                Ok(after) if annotation(&after, ROLLOUT_ANNOTATION) == Some(state) => {
                    return done(format!("{target}: rollout state recorded"));
                }
                Ok(_) => {
                    return Err(ConnectorError::retriable(format!(
                        "{target}: the rollout state written is not what the server returned"
                    )));
                }
                Err(CallFailure::Kube(kube::Error::Api(status))) if status.code == 409 => {
                    tokio::time::sleep(backoff.next_delay(None)).await;
                }
                Err(e) => return Err(self.fail("patch", target.kind.plural(), target, e)),
            }
        }
        Err(ConnectorError::retriable(format!(
            "conflict: {target} changed concurrently on each of {MAX_ATTEMPTS} attempts (409 Conflict); giving up for now"
        )))
    }

    /// GETs the subject's object: the rollout state recorded there and the
    /// weights as they are.
    async fn read(
        &self,
        subject: &std::collections::BTreeMap<String, String>,
    ) -> Result<TrafficState, ConnectorError> {
        let target = self.target_for(subject)?;
        let api: Api<DynamicObject> = Api::namespaced_with(
            self.client.clone(),
            &target.namespace,
            &target.kind.api_resource(),
        );
        let current = self
            .timed(api.get(&target.name))
            .await
            .map_err(|e| self.fail("get", target.kind.plural(), &target, e))?;
        let canary_weight = self
            .plan(&target, Op::Rollback, &current)
            .ok()
            .and_then(|p| p.canary_before());
        Ok(TrafficState {
            target: target.to_string(),
            rollout: annotation(&current, ROLLOUT_ANNOTATION).map(str::to_string),
            canary_weight,
            written_weight: written_weight(&current),
            canary_version: annotation(&current, CANARY_VERSION_ANNOTATION)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string),
        })
    }

    fn plan(
        &self,
        target: &Target,
        op: Op,
        current: &DynamicObject,
    ) -> Result<Plan, ConnectorError> {
        match target.kind {
            TargetKind::Rollout => match op {
                Op::Set(weight) if weight > 0 => plan_promotion(&current.data, weight)
                    .map_err(|why| ConnectorError::Permanent(format!("{target}: {why}"))),
                _ => Ok(Plan::Abort {
                    already: current.data["status"]["abort"] == Value::Bool(true),
                }),
            },
            kind => plan_weights(
                kind,
                &current.data,
                op,
                &self.config.target.canary,
                &self.config.target.stable,
            )
            .map_err(|why| ConnectorError::Permanent(format!("{target}: {why}"))),
        }
    }

    async fn write(
        &self,
        api: &Api<DynamicObject>,
        target: &Target,
        plan: &Plan,
        resource_version: Option<String>,
        annotations: Value,
    ) -> Result<(), CallFailure> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        let mut body = match plan {
            Plan::Abort { .. } => json!({ "status": { "abort": true } }),
            Plan::Promote { step, .. } => {
                json!({ "status": { "pauseConditions": null, "currentStepIndex": step.1 } })
            }
            Plan::Weights {
                list_key, new_list, ..
            } => {
                json!({ "spec": { (*list_key): new_list } })
            }
        };
        // The resourceVersion makes the write conditional on nothing having
        // changed since the read: otherwise the server answers 409.
        if let Some(rv) = resource_version {
            body["metadata"]["resourceVersion"] = json!(rv);
        }
        // The status subresource ignores metadata; an abort is idempotent.
        if matches!(plan, Plan::Weights { .. }) {
            body["metadata"]["annotations"] = annotations;
        }
        let patch = Patch::Merge(&body);
        match plan {
            Plan::Abort { .. } => {
                self.timed(api.patch_status(&target.name, &params, &patch))
                    .await?;
            }
            Plan::Promote { unpause, .. } => {
                self.timed(api.patch_status(&target.name, &params, &patch))
                    .await?;
                // Status first: a Rollout unpaused before its step index
                // moves would run its current pause again.
                if *unpause {
                    let spec = json!({ "spec": { "paused": false } });
                    self.timed(api.patch(&target.name, &params, &Patch::Merge(&spec)))
                        .await?;
                }
            }
            Plan::Weights { .. } => {
                self.timed(api.patch(&target.name, &params, &patch)).await?;
            }
        }
        Ok(())
    }

    async fn record_event(
        &self,
        action: &Action,
        target: &Target,
        plan: &Plan,
        change: &str,
        object: &DynamicObject,
    ) {
        let reason = match (plan, action.action) {
            (Plan::Weights { .. }, ActionName::ReduceTraffic) => REASON_REDUCED,
            (Plan::Weights { .. }, ActionName::ShiftTraffic) | (Plan::Promote { .. }, _) => {
                REASON_SHIFTED
            }
            _ => REASON_ROLLBACK,
        };
        let values: Vec<String> = action
            .evidence
            .values
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let message = format!(
            "canaryd {} for {} because rule \"{}\" ({}) fired: {}; {change}",
            action.action,
            Subject(&action.subject),
            action.rule,
            action.severity,
            if values.is_empty() {
                action.evidence.condition.clone()
            } else {
                format!("{} with {}", action.evidence.condition, values.join(", "))
            },
        );
        let now = k8s_openapi::jiff::Timestamp::now();
        let event = Event {
            metadata: ObjectMeta {
                name: Some(format!("{}.{:x}", target.name, now.as_nanosecond())),
                namespace: Some(target.namespace.clone()),
                ..Default::default()
            },
            involved_object: ObjectReference {
                api_version: Some(format!("{}/{}", target.kind.group(), target.kind.version())),
                kind: Some(target.kind.kind().to_string()),
                name: Some(target.name.clone()),
                namespace: Some(target.namespace.clone()),
                uid: object.metadata.uid.clone(),
                resource_version: object.metadata.resource_version.clone(),
                ..Default::default()
            },
            reason: Some(reason.to_string()),
            message: Some(truncate(&message, 1024)),
            type_: Some("Warning".to_string()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(EventSource {
                component: Some(FIELD_MANAGER.to_string()),
                ..Default::default()
            }),
            reporting_component: Some(FIELD_MANAGER.to_string()),
            reporting_instance: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
            ..Default::default()
        };
        let events: Api<Event> = Api::namespaced(self.client.clone(), &target.namespace);
        if let Err(e) = self
            .timed(events.create(&PostParams::default(), &event))
            .await
        {
            let e = self.fail("create", "events", target, e);
            tracing::warn!(error = %e, "could not record the Kubernetes Event for {target}; the change itself succeeded");
        }
    }
}

impl Connector for KubeConnector {
    fn name(&self) -> &str {
        "kube"
    }

    fn execute<'a>(&'a self, action: &'a Action) -> BoxFuture<'a, Result<Outcome, ConnectorError>> {
        Box::pin(self.run(action))
    }

    /// An Argo Rollout keeps its own state: there is none of canaryd's on it.
    fn read_traffic<'a>(
        &'a self,
        subject: &'a std::collections::BTreeMap<String, String>,
    ) -> Option<BoxFuture<'a, Result<TrafficState, ConnectorError>>> {
        (self.config.target.kind != TargetKind::Rollout).then(|| {
            let read: BoxFuture<'a, _> = Box::pin(self.read(subject));
            read
        })
    }
}

/// A rendered target.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Target {
    kind: TargetKind,
    namespace: String,
    name: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// What an API call ended with, short of success.
#[derive(Debug)]
enum CallFailure {
    Timeout,
    Kube(kube::Error),
}

/// Maps a failed call to a connector error with a message a human can act on.
fn classify(
    verb: &str,
    resource: &str,
    target: &Target,
    failure: CallFailure,
    timeout: Duration,
) -> ConnectorError {
    use ConnectorError::Permanent;
    let e = match failure {
        CallFailure::Timeout => {
            return ConnectorError::retriable(format!(
                "timeout: {verb} {target} took longer than {}",
                Span(i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX))
            ));
        }
        CallFailure::Kube(e) => e,
    };
    let status = match e {
        kube::Error::Api(status) => status,
        kube::Error::Auth(e) => {
            return Permanent(format!(
                "cannot authenticate to the Kubernetes API server to {verb} {target}: {e}"
            ));
        }
        e @ (kube::Error::BuildRequest(_)
        | kube::Error::InferConfig(_)
        | kube::Error::InferKubeconfig(_)
        | kube::Error::TlsRequired
        | kube::Error::ProxyProtocolUnsupported { .. }
        | kube::Error::ProxyProtocolDisabled { .. }) => {
            return Permanent(format!("cannot {verb} {target}: {e}"));
        }
        e => {
            return ConnectorError::retriable(format!(
                "cannot reach the Kubernetes API server to {verb} {target}: {e}"
            ));
        }
    };
    let server = if status.message.is_empty() {
        String::new()
    } else {
        format!(" (API server: {})", status.message)
    };
    match status.code {
        401 => Permanent(format!(
            "unauthorized: the Kubernetes API server rejected canaryd's credentials to {verb} {target}{server}"
        )),
        403 => Permanent(format!(
            "forbidden: canaryd's service account may not {verb} {resource} in {}{server}",
            target.namespace
        )),
        404 => Permanent(format!("not found: {target}{server}")),
        409 => {
            ConnectorError::retriable(format!("conflict: {target} changed concurrently{server}"))
        }
        408 | 429 => ConnectorError::retriable(format!(
            "{verb} {target}: the API server answered {} {}{server}",
            status.code, status.reason
        )),
        500..=599 => ConnectorError::retriable(format!(
            "{verb} {target}: the API server answered {} {}{server}",
            status.code, status.reason
        )),
        code => Permanent(format!(
            "{verb} {target} was rejected: {code} {}{server}",
            status.reason
        )),
    }
}

/// What an action does to the weights.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    /// Canary weight to 0.
    Rollback,
    /// Canary weight times the step, rounded down.
    Reduce(f64),
    /// Canary weight to this percent of the pair's total.
    Set(u8),
}

/// One route that has both tracks, and its weights before and after.
#[derive(Clone, Debug, PartialEq, Eq)]
struct RouteChange {
    /// Index in `spec.http` or `spec.rules`.
    index: usize,
    canary: (i64, i64),
    stable: (i64, i64),
}

/// One of `object`'s annotations.
fn annotation<'o>(object: &'o DynamicObject, name: &str) -> Option<&'o str> {
    object
        .metadata
        .annotations
        .as_ref()?
        .get(name)
        .map(String::as_str)
}

/// The canary weight canaryd last wrote to `object`, if it recorded one.
fn written_weight(object: &DynamicObject) -> Option<i64> {
    annotation(object, WEIGHT_ANNOTATION)?.parse().ok()
}

/// The event time of the rollout change that set `object`'s weights; an
/// object written before canaryd recorded it has only its state's.
fn traffic_at(object: &DynamicObject) -> Option<i64> {
    match annotation(object, TRAFFIC_AT_ANNOTATION) {
        Some(at) => at.parse().ok(),
        None => rollout_at(object),
    }
}

/// The event time of the rollout state `object` records, if any.
fn rollout_at(object: &DynamicObject) -> Option<i64> {
    let state = annotation(object, ROLLOUT_ANNOTATION)?;
    serde_json::from_str::<Value>(state).ok()?["at"].as_i64()
}

/// The digests of the actions `object` records as applied.
fn applied_actions(object: &DynamicObject) -> Vec<&str> {
    object
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(APPLIED_ANNOTATION))
        .map(|list| list.split(',').filter(|d| !d.is_empty()).collect())
        .unwrap_or_default()
}

/// The write an action needs.
#[derive(Clone, Debug, PartialEq)]
enum Plan {
    /// Change weights: `spec.<list_key>` becomes `new_list`.
    Weights {
        kind: TargetKind,
        list_key: &'static str,
        new_list: Value,
        changes: Vec<RouteChange>,
    },
    /// Abort a Rollout.
    Abort {
        /// `status.abort` is already true.
        already: bool,
    },
    /// Move an Argo Rollout on to the `setWeight` step of a stage's weight,
    /// as `kubectl argo rollouts promote` does: its pause conditions
    /// cleared and its step index set (in `status`), and `spec.paused`
    /// unset. Argo then sets the weight itself, and pauses at the next
    /// `pause: {}` for canaryd's next decision.
    Promote {
        /// The Rollout's canary weight now (its last `setWeight` done).
        from: i64,
        /// The stage's weight.
        to: i64,
        /// `status.currentStepIndex` now, and the index to go on from.
        step: (u64, u64),
        /// `spec.paused` is set and must be unset.
        unpause: bool,
        /// Already at (or past) the stage's weight.
        already: bool,
    },
}

/// How an Argo Rollout goes on to the stage of `weight` percent. Its
/// `setWeight` steps must be the plan's stages (100 is its end); a weight
/// it has already reached is nothing to do, since Argo never steps back
/// (`reduce_traffic` and rollbacks abort it).
fn plan_promotion(rollout: &Value, weight: u8) -> Result<Plan, String> {
    let Some(steps) = rollout["spec"]["strategy"]["canary"]["steps"].as_array() else {
        return Err(
            "not a canary Rollout with steps: canaryd can only abort it (set the plan's stages as its setWeight steps)"
                .into(),
        );
    };
    let index = rollout["status"]["currentStepIndex"].as_u64().unwrap_or(0);
    let done = usize::try_from(index)
        .unwrap_or(usize::MAX)
        .min(steps.len());
    let from = if done == steps.len() {
        100
    } else {
        steps[..done]
            .iter()
            .rev()
            .find_map(|s| s["setWeight"].as_i64())
            .unwrap_or(0)
    };
    let to = i64::from(weight);
    let target = if to == 100 {
        Some(steps.len())
    } else {
        steps
            .iter()
            .position(|s| s["setWeight"].as_i64() == Some(to))
    };
    let Some(target) = target else {
        let weights: Vec<String> = steps
            .iter()
            .filter_map(|s| s["setWeight"].as_i64())
            .map(|w| w.to_string())
            .collect();
        return Err(format!(
            "the stage's weight {to}% is not one of the Rollout's setWeight steps ({}); make the plan's stages its steps",
            weights.join(", ")
        ));
    };
    Ok(Plan::Promote {
        from,
        to,
        step: (index, target as u64),
        unpause: rollout["spec"]["paused"] == Value::Bool(true),
        already: from >= to || index >= target as u64,
    })
}

impl Plan {
    /// The first route's canary weight before the write.
    fn canary_before(&self) -> Option<i64> {
        match self {
            Plan::Weights { changes, .. } => changes.first().map(|c| c.canary.0),
            Plan::Abort { .. } | Plan::Promote { .. } => None,
        }
    }

    /// The first route's canary weight after the write.
    fn canary_after(&self) -> Option<i64> {
        match self {
            Plan::Weights { changes, .. } => changes.first().map(|c| c.canary.1),
            Plan::Abort { .. } | Plan::Promote { .. } => None,
        }
    }

    fn is_noop(&self) -> bool {
        match self {
            Plan::Abort { already } | Plan::Promote { already, .. } => *already,
            Plan::Weights { changes, .. } => changes
                .iter()
                .all(|c| c.canary.0 == c.canary.1 && c.stable.0 == c.stable.1),
        }
    }

    /// The resource written, for error messages and RBAC.
    fn resource(&self) -> &'static str {
        match self {
            Plan::Abort { .. } | Plan::Promote { .. } => "rollouts/status",
            Plan::Weights { kind, .. } => kind.plural(),
        }
    }

    /// "canary 10 -> 0, stable 90 -> 100", per route when routes differ.
    fn describe(&self) -> String {
        match self {
            Plan::Abort { .. } => "aborted (status.abort true)".to_string(),
            Plan::Promote { from, to, step, .. } => format!(
                "promoted from {from}% to the {to}% step (status.currentStepIndex {} -> {})",
                step.0, step.1
            ),
            Plan::Weights {
                list_key, changes, ..
            } => {
                let text = |c: &RouteChange| {
                    format!(
                        "canary {} -> {}, stable {} -> {}",
                        c.canary.0, c.canary.1, c.stable.0, c.stable.1
                    )
                };
                let first = changes.first().map(text).unwrap_or_default();
                if changes.iter().all(|c| text(c) == first) {
                    first
                } else {
                    changes
                        .iter()
                        .map(|c| format!("{list_key}[{}]: {}", c.index, text(c)))
                        .collect::<Vec<_>>()
                        .join("; ")
                }
            }
        }
    }

    /// "already canary 0, stable 100".
    fn already(&self) -> String {
        match self {
            Plan::Abort { .. } => "already aborted".to_string(),
            Plan::Promote { from, to, .. } => {
                format!("already at {from}% (the stage's step is {to}%; Argo never steps back)")
            }
            Plan::Weights { changes, .. } => {
                let mut seen: Vec<(i64, i64)> =
                    changes.iter().map(|c| (c.canary.0, c.stable.0)).collect();
                seen.dedup();
                let parts: Vec<String> = seen
                    .iter()
                    .map(|(c, s)| format!("canary {c}, stable {s}"))
                    .collect();
                format!("already {}", parts.join("; "))
            }
        }
    }

    /// Checks that `after` (read back after the write) carries the planned
    /// state.
    fn verify(
        &self,
        target: &Target,
        tracks: &TargetConfig,
        after: &DynamicObject,
    ) -> Result<(), String> {
        match self {
            Plan::Promote { step, unpause, .. } => {
                let index = after.data["status"]["currentStepIndex"].as_u64();
                let paused = after.data["spec"]["paused"] == Value::Bool(true);
                // Argo may already have gone on from the step set.
                if index.is_some_and(|i| i >= step.1) && !(*unpause && paused) {
                    Ok(())
                } else {
                    Err(format!(
                        "verification failed: {target} was promoted but reads status.currentStepIndex {}, spec.paused {paused}",
                        after.data["status"]["currentStepIndex"]
                    ))
                }
            }
            Plan::Abort { .. } => {
                if after.data["status"]["abort"] == Value::Bool(true) {
                    Ok(())
                } else {
                    Err(format!(
                        "verification failed: {target} was patched but status.abort reads {}",
                        after.data["status"]["abort"]
                    ))
                }
            }
            Plan::Weights {
                kind,
                list_key,
                changes,
                ..
            } => {
                let shape = Shape::of(*kind);
                for c in changes {
                    let route = &after.data["spec"][*list_key][c.index];
                    let found = find_pair(shape, route, &tracks.canary, &tracks.stable)
                        .ok()
                        .flatten();
                    let read = found.map(|p| (p.canary_weight, p.stable_weight));
                    if read != Some((c.canary.1, c.stable.1)) {
                        return Err(format!(
                            "verification failed: {target} {list_key}[{}] should have canary {}, stable {} but reads {}",
                            c.index,
                            c.canary.1,
                            c.stable.1,
                            match read {
                                Some((cw, sw)) => format!("canary {cw}, stable {sw}"),
                                None => "no canary/stable pair".to_string(),
                            }
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// Where the weights live in a kind of object.
#[derive(Clone, Copy, Debug)]
struct Shape {
    /// `spec.<list_key>[]`: the routes.
    list_key: &'static str,
    /// `<route>.<entries_key>[]`: the weighted destinations.
    entries_key: &'static str,
    /// The weight an entry without one has.
    default_weight: i64,
}

impl Shape {
    fn of(kind: TargetKind) -> Shape {
        match kind {
            // Istio: with more than one destination, a destination without
            // a weight gets none of the traffic.
            TargetKind::VirtualService | TargetKind::Rollout => Shape {
                list_key: "http",
                entries_key: "route",
                default_weight: 0,
            },
            // Gateway API: weight defaults to 1.
            TargetKind::HttpRoute => Shape {
                list_key: "rules",
                entries_key: "backendRefs",
                default_weight: 1,
            },
        }
    }

    fn track_name(self, entry: &Value) -> Option<&str> {
        match self.entries_key {
            "route" => entry["destination"]["subset"].as_str(),
            _ => entry["name"].as_str(),
        }
    }
}

/// The canary and stable entries of one route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Pair {
    canary_index: usize,
    stable_index: usize,
    canary_weight: i64,
    stable_weight: i64,
}

/// Finds the canary and stable entries in `route`; `None` if it lacks either.
fn find_pair(
    shape: Shape,
    route: &Value,
    canary: &str,
    stable: &str,
) -> Result<Option<Pair>, String> {
    let Some(entries) = route[shape.entries_key].as_array() else {
        return Ok(None);
    };
    let position = |track: &str| {
        entries
            .iter()
            .position(|e| shape.track_name(e) == Some(track))
    };
    let (Some(ci), Some(si)) = (position(canary), position(stable)) else {
        return Ok(None);
    };
    let weight = |i: usize| -> Result<i64, String> {
        match &entries[i]["weight"] {
            Value::Null => Ok(shape.default_weight),
            v => v
                .as_i64()
                .filter(|w| *w >= 0)
                .ok_or_else(|| format!("weight {v} is not a whole number ≥ 0")),
        }
    };
    Ok(Some(Pair {
        canary_index: ci,
        stable_index: si,
        canary_weight: weight(ci)?,
        stable_weight: weight(si)?,
    }))
}

/// Computes the new weights for every route that has both tracks. The sum
/// of the two weights is kept (100 in a percentage split): the stable track
/// gets what the canary loses.
fn plan_weights(
    kind: TargetKind,
    data: &Value,
    op: Op,
    canary: &str,
    stable: &str,
) -> Result<Plan, String> {
    let shape = Shape::of(kind);
    let routes = data["spec"][shape.list_key]
        .as_array()
        .ok_or_else(|| format!("spec.{} is missing or not a list", shape.list_key))?;
    let mut new_list = routes.clone();
    let mut changes = Vec::new();
    for (index, route) in routes.iter().enumerate() {
        let Some(pair) = find_pair(shape, route, canary, stable)
            .map_err(|why| format!("spec.{}[{index}]: {why}", shape.list_key))?
        else {
            continue;
        };
        let total = pair
            .canary_weight
            .checked_add(pair.stable_weight)
            .ok_or_else(|| format!("spec.{}[{index}]: weights too large", shape.list_key))?;
        if total == 0 {
            return Err(format!(
                "spec.{}[{index}]: canary and stable both have weight 0",
                shape.list_key
            ));
        }
        let new_canary = match op {
            Op::Rollback => 0,
            // step is in (0, 1) (checked at load), so the product is in
            // [0, weight] and rounding down keeps it there.
            Op::Reduce(step) => ((pair.canary_weight as f64) * step).floor() as i64,
            // At most `total`, so it fits; the product is taken in i128.
            Op::Set(percent) => {
                i64::try_from(i128::from(total) * i128::from(percent.min(100)) / 100)
                    .unwrap_or(total)
            }
        };
        let new_stable = total - new_canary;
        let entries = &mut new_list[index][shape.entries_key];
        entries[pair.canary_index]["weight"] = json!(new_canary);
        entries[pair.stable_index]["weight"] = json!(new_stable);
        changes.push(RouteChange {
            index,
            canary: (pair.canary_weight, new_canary),
            stable: (pair.stable_weight, new_stable),
        });
    }
    if changes.is_empty() {
        let what = match kind {
            TargetKind::HttpRoute => "backendRefs named",
            _ => "destinations with subsets",
        };
        return Err(format!(
            "no route in spec.{} has both {what} `{canary}` and `{stable}`",
            shape.list_key
        ));
    }
    Ok(Plan::Weights {
        kind,
        list_key: shape.list_key,
        new_list: Value::Array(new_list),
        changes,
    })
}

/// Whether `name` can be a Kubernetes namespace or object name (a DNS
/// subdomain), so that a label value can never reach another path.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > 253 {
        return Err("is longer than 253 characters");
    }
    let ok = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ends_ok = name
        .bytes()
        .next()
        .zip(name.bytes().last())
        .is_some_and(|(a, z)| a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric());
    if ok && ends_ok {
        Ok(())
    } else {
        Err(
            "is not a valid Kubernetes name (lowercase letters, digits, '-' and '.', starting and ending with a letter or digit)",
        )
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

    use super::*;

    fn config(yaml: &str) -> KubeConfig {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn vs(weights: &[(&str, i64)]) -> Value {
        let route: Vec<Value> = weights
            .iter()
            .map(|(subset, w)| {
                json!({"destination": {"host": "model-summarizer", "subset": subset}, "weight": w})
            })
            .collect();
        json!({"spec": {"hosts": ["model-summarizer"], "http": [{"route": route}]}})
    }

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c = config(
            "target: {kind: VirtualService, namespace: ml-serving, name: 'model-{{ model }}'}",
        );
        assert_eq!(c.timeout, Span::seconds(5));
        assert_eq!(c.reduce_step, 0.5);
        assert_eq!(c.target.canary, "canary");
        assert_eq!(c.target.stable, "stable");
        assert!(c.check().is_empty());
        let err = serde_yaml_ng::from_str::<KubeConfig>(
            "target: {kind: VirtualService, namespace: a, name: b}\nreduce_stpe: 0.5",
        )
        .unwrap_err();
        assert!(err.to_string().contains("reduce_stpe"), "{err}");
        let c = config("target: {kind: HTTPRoute, namespace: a, name: b}\ntimeout: 250ms");
        assert_eq!(c.target.kind, TargetKind::HttpRoute);
        assert_eq!(c.timeout, Span(250));
    }

    #[test]
    fn check_rejects_bad_steps_and_same_tracks() {
        let c = config(
            "target: {kind: VirtualService, namespace: a, name: b, canary: x, stable: x}\nreduce_step: 1",
        );
        let problems = c.check();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("reduce_step"));
        assert!(problems[1].contains("both `x`"));
    }

    #[test]
    fn templates_may_only_use_group_by_labels() {
        let c = config(
            "target: {kind: VirtualService, namespace: 'ml-{{ region }}', name: 'model-{{ model }}'}",
        );
        let problems = c.check_templates(&["model".to_string()]);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("`region`"), "{problems:?}");
        assert!(
            problems[0].contains("kube.target.namespace"),
            "{problems:?}"
        );
        assert!(
            c.check_templates(&["model".to_string(), "region".to_string()])
                .is_empty()
        );
        let broken = config("target: {kind: VirtualService, namespace: a, name: 'model-{{ model'}");
        assert!(broken.check_templates(&["model".into()])[0].contains("does not compile"));
        assert!(!broken.check().is_empty());
    }

    #[test]
    fn rollback_moves_the_canary_weight_to_stable() {
        let plan = plan_weights(
            TargetKind::VirtualService,
            &vs(&[("stable", 90), ("canary", 10)]),
            Op::Rollback,
            "canary",
            "stable",
        )
        .unwrap();
        assert_eq!(plan.describe(), "canary 10 -> 0, stable 90 -> 100");
        let Plan::Weights { new_list, .. } = &plan else {
            panic!()
        };
        assert_eq!(new_list[0]["route"][0]["weight"], 100);
        assert_eq!(new_list[0]["route"][1]["weight"], 0);
        assert_eq!(
            new_list[0]["route"][1]["destination"]["host"],
            "model-summarizer"
        );
        assert!(!plan.is_noop());
        let done = plan_weights(
            TargetKind::VirtualService,
            &vs(&[("stable", 100), ("canary", 0)]),
            Op::Rollback,
            "canary",
            "stable",
        )
        .unwrap();
        assert!(done.is_noop());
        assert_eq!(done.already(), "already canary 0, stable 100");
    }

    #[test]
    fn reduce_rounds_down_and_keeps_the_sum() {
        let plan = plan_weights(
            TargetKind::VirtualService,
            &vs(&[("stable", 75), ("canary", 25)]),
            Op::Reduce(0.5),
            "canary",
            "stable",
        )
        .unwrap();
        assert_eq!(plan.describe(), "canary 25 -> 12, stable 75 -> 88");
        let route = json!({"spec": {"rules": [
            {"backendRefs": [{"name": "stable"}, {"name": "canary"}]},
            {"backendRefs": [{"name": "other", "weight": 1}]},
            {"backendRefs": [{"name": "canary", "weight": 30}, {"name": "stable", "weight": 70}]}
        ]}});
        let plan = plan_weights(
            TargetKind::HttpRoute,
            &route,
            Op::Reduce(0.5),
            "canary",
            "stable",
        )
        .unwrap();
        // HTTPRoute weights default to 1.
        assert_eq!(
            plan.describe(),
            "rules[0]: canary 1 -> 0, stable 1 -> 2; rules[2]: canary 30 -> 15, stable 70 -> 85"
        );
    }

    #[test]
    fn missing_tracks_and_bad_weights_are_errors() {
        let e = plan_weights(
            TargetKind::VirtualService,
            &vs(&[("stable", 100)]),
            Op::Rollback,
            "canary",
            "stable",
        )
        .unwrap_err();
        assert!(e.contains("`canary` and `stable`"), "{e}");
        let e = plan_weights(
            TargetKind::VirtualService,
            &json!({"spec": {}}),
            Op::Rollback,
            "canary",
            "stable",
        )
        .unwrap_err();
        assert!(e.contains("spec.http"), "{e}");
        let bad = json!({"spec": {"http": [{"route": [
            {"destination": {"subset": "canary"}, "weight": "ten"},
            {"destination": {"subset": "stable"}, "weight": 90}
        ]}]}});
        let e = plan_weights(
            TargetKind::VirtualService,
            &bad,
            Op::Rollback,
            "canary",
            "stable",
        )
        .unwrap_err();
        assert!(e.contains("whole number"), "{e}");
    }

    #[test]
    fn errors_are_classified_with_clear_messages() {
        let target = Target {
            kind: TargetKind::VirtualService,
            namespace: "ml-serving".into(),
            name: "model-x".into(),
        };
        let api = |code: u16| {
            CallFailure::Kube(kube::Error::Api(
                kube::core::Status::failure("nope", "Reason")
                    .with_code(code)
                    .boxed(),
            ))
        };
        let t = Duration::from_secs(5);
        let e = classify("patch", "virtualservices", &target, api(403), t);
        assert!(!e.is_retriable());
        assert!(
            e.to_string().contains(
                "forbidden: canaryd's service account may not patch virtualservices in ml-serving"
            ),
            "{e}"
        );
        let e = classify("get", "virtualservices", &target, api(404), t);
        assert!(
            e.to_string()
                .contains("not found: VirtualService ml-serving/model-x"),
            "{e}"
        );
        assert!(!e.is_retriable());
        assert!(classify("get", "virtualservices", &target, api(500), t).is_retriable());
        assert!(classify("get", "virtualservices", &target, api(429), t).is_retriable());
        assert!(!classify("patch", "virtualservices", &target, api(422), t).is_retriable());
        let e = classify("get", "virtualservices", &target, CallFailure::Timeout, t);
        assert!(e.is_retriable());
        assert!(e.to_string().contains("took longer than 5s"), "{e}");
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("model-summarizer").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("Model").is_err());
        assert!(check_name("a/../b").is_err());
        assert!(check_name("-a").is_err());
    }
}
