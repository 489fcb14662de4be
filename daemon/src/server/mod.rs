//! The HTTP side of `canaryd run`: the Alertmanager receiver, silences,
//! health, readiness, reload, `/metrics`, the JSON API and the status page.
//!
//! The server knows nothing of Kafka or the engine: everything it needs
//! from the running daemon goes through the [`Backend`] trait. Silences and
//! the Alertmanager de-duplication memory live here, in memory.
//!
//! | Endpoint | Auth | What |
//! |---|---|---|
//! | `POST /api/v1/alertmanager` | yes | Alertmanager webhook (version 4) in; alerts to [`Backend::ingest`], alerts carrying the action label to [`Backend::act`] |
//! | `GET /api/v1/alerts` | | [`Backend::alerts`]: `{"alerts":[…],"subjects":[…]}` |
//! | `GET /api/v1/rules` | | [`Backend::rules`] |
//! | `GET /api/v1/actions` | | [`Backend::actions`] |
//! | `GET /api/v1/subjects/{model}` | | [`Backend::subject`], 404 when unknown |
//! | `GET /api/v1/silences` | | the active silences, a JSON array |
//! | `POST /api/v1/silences` | yes | a new silence; 201 with it (and its `id`) |
//! | `DELETE /api/v1/silences/{id}` | yes | 204, or 404 when unknown |
//! | `POST /-/reload` | yes | [`Backend::reload`]: 200 with its report, 500 with its errors |
//! | `GET /-/healthy` | | always 200 |
//! | `GET /-/ready` | | 200 or 503, per [`Backend::ready`] |
//! | `GET /metrics` | | [`Backend::metrics`], Prometheus text 0.0.4 |
//! | `GET /` | | the status page, from the binary |
//!
//! Errors are JSON: `{"error":"…"}`. A 401 carries `WWW-Authenticate`.
//!
//! **Alertmanager payload counts.** Each webhook payload ends with one
//! [`PayloadResult`], reported through [`Backend::record_payload`]; the
//! daemon forwards it to
//! [`Metrics::inc_alertmanager_payload`](crate::metrics::Metrics::inc_alertmanager_payload),
//! which exports `canaryd_alertmanager_payloads_total{result}`.

mod alertmanager;
mod auth;
mod peers;
mod silences;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use canaryd_rules::Timestamp;
use canaryd_rules::event::AlertEvent;
use http_body_util::BodyExt;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use alertmanager::{AlertmanagerMapping, DirectAction};
pub use auth::AuthConfig;
pub use peers::{FORWARDED, REPLICA};
pub use silences::{Silence, SilenceChange};

pub use crate::metrics::PayloadResult;

use crate::clock::wall_clock;

use alertmanager::{Dedup, Item};
use silences::{NewSilence, Silences};

/// A boxed, sendable future borrowing the backend.
pub type BoxFuture<'a, T> = canaryd_connectors::connector::BoxFuture<'a, T>;

/// How many Alertmanager alerts (fingerprint + start + status) are remembered
/// for de-duplication; the oldest are forgotten first.
pub const DEDUP_MEMORY: usize = 100_000;

/// The status page, built into the binary.
const STATUS_PAGE: &str = include_str!("../status.html");

/// `http:` in the config file.
///
/// ```yaml
/// http:
///   listen: 0.0.0.0:9464        # default
///   body_limit: 1048576         # bytes; default 1 MiB, 413 above
///   auth:                       # optional; or basic: {username: u, password: {file: /path}}
///     bearer: {env: CANARYD_HTTP_TOKEN}
///   alertmanager:
///     action_label: canary_action   # default
///     subject_labels: [model]       # default
///   metrics:
///     max_subjects: 1000            # default
///   history:
///     every: 30s                    # default
///     keep: 1h                      # default
///     max_models: 200               # default
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// Credentials required by the endpoints that change things: the
    /// Alertmanager receiver, creating and deleting silences, and reload.
    pub auth: Option<AuthConfig>,
    /// Largest request body accepted, in bytes; larger ones get 413.
    pub body_limit: usize,
    /// How Alertmanager alerts ask for an action directly.
    pub alertmanager: AlertmanagerMapping,
    /// What `/metrics` exports of the engines.
    pub metrics: MetricsExport,
    /// The trend the status page's charts draw.
    pub history: crate::history::HistoryConfig,
}

/// Bounds on the per-subject series `/metrics` exports.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsExport {
    /// Most subjects (by their labels, in order) exported in the
    /// `canaryd_model_*` families; the rest are counted in
    /// `canaryd_model_subjects_omitted`. About 30 series per subject.
    pub max_subjects: usize,
}

impl Default for MetricsExport {
    fn default() -> Self {
        MetricsExport { max_subjects: 1000 }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 9464)),
            auth: None,
            body_limit: 1024 * 1024,
            alertmanager: AlertmanagerMapping::default(),
            metrics: MetricsExport::default(),
            history: crate::history::HistoryConfig::default(),
        }
    }
}

impl HttpConfig {
    /// Every problem `canaryd check` should report, without reading secrets.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.body_limit == 0 {
            out.push("http.body_limit: must be at least 1 byte".to_string());
        }
        if let Some(auth) = &self.auth {
            out.extend(auth.problems());
        }
        out.extend(self.alertmanager.problems());
        out.extend(self.history.problems());
        out
    }

    /// Reads the secrets, as [`Server::new`] will: an error names the
    /// one that cannot be had. A reload checks this before it is accepted.
    pub fn resolve_secrets(&self) -> Result<(), String> {
        match &self.auth {
            Some(auth) => auth.resolve().map(drop),
            None => Ok(()),
        }
    }
}

/// What the server needs from the running daemon.
///
/// Every method is called from request handlers on the tokio runtime: the
/// synchronous ones must answer quickly and never block. What shows the
/// engines (alerts, subjects, rollouts, metrics) is asked for per request.
pub trait Backend: Send + Sync + 'static {
    /// Feeds Alertmanager alerts into the engine as alert events; resolves
    /// once they are accepted, and the webhook then answers 200. `Err`
    /// answers 503, so that Alertmanager retries.
    fn ingest(&self, alerts: Vec<AlertEvent>) -> BoxFuture<'_, Result<(), String>>;

    /// Alerts whose labels carry the action label (e.g.
    /// `canary_action=auto_rollback`): carries the action out directly for
    /// the subject taken from the subject labels. Resolves once the action
    /// pipeline accepted them; `Err` answers 503.
    fn act(&self, requests: Vec<DirectAction>) -> BoxFuture<'_, Result<(), String>>;

    /// `GET /api/v1/alerts`: `{"alerts":[{"rule","subject","state","since","values","silenced"}…],"subjects":["summarizer",…]}`.
    fn alerts(&self) -> BoxFuture<'_, serde_json::Value>;

    /// `GET /api/v1/rules`: `[{"name","condition","duration","severity","actions":[…]}…]`.
    fn rules(&self) -> serde_json::Value;

    /// `GET /api/v1/subjects/{model}`: `{"model","canary":{…},"stable":{…},"judge":{…}}`,
    /// or `None` for a model the daemon does not know (404).
    fn subject(&self, model: String) -> BoxFuture<'_, Option<serde_json::Value>>;

    /// `GET /api/v1/actions`: recent actions and their outcomes,
    /// `[{"ts","rule","subject","action","connector","outcome","detail","dry_run"}…]`.
    fn actions(&self) -> serde_json::Value;

    /// `POST /-/reload`: reloads the configuration; `Ok` answers 200 with
    /// the report, `Err` 500 with the errors.
    fn reload(&self) -> BoxFuture<'_, Result<serde_json::Value, Vec<String>>>;

    /// `GET /-/ready`: whether the daemon is ready (200) or not (503).
    fn ready(&self) -> bool;

    /// `GET /metrics`: the body, in the Prometheus text format 0.0.4.
    fn metrics(&self) -> BoxFuture<'_, String>;

    /// Told the active silences whenever they change: one created or
    /// deleted, or one expired.
    fn silenced(&self, silences: &[Silence]);

    /// `GET /api/v1/history/{model}`: the model's recent figures and
    /// marks, `{"model","every_s","points":[…],"marks":[…]}`, or `None`
    /// (404). None by default.
    fn history(&self, model: &str) -> Option<serde_json::Value> {
        let _ = model;
        None
    }

    /// `GET /api/v1/rollouts`: every rollout this replica carries,
    /// `[{"model","version","plan","stage","stages","weight","state","phase","hold_s","held_s","hold_remaining_s",…}…]`.
    fn rollouts(&self) -> BoxFuture<'_, serde_json::Value> {
        Box::pin(async { serde_json::Value::Array(Vec::new()) })
    }

    /// `POST /api/v1/rollouts/{model}/{pause|resume|promote|abort}`: the
    /// rollout after the command, or the status to answer and why nothing
    /// changed.
    fn rollout_command(
        &self,
        model: String,
        command: canaryd_rules::rollout::Command,
    ) -> BoxFuture<'_, Result<serde_json::Value, (u16, String)>> {
        let _ = command;
        Box::pin(async move { Err((404, format!("no rollout of model `{model}` here"))) })
    }

    /// Told how each Alertmanager payload ended, for
    /// `canaryd_alertmanager_payloads_total{result}`. Does nothing by default.
    fn record_payload(&self, result: PayloadResult) {
        let _ = result;
    }
}

/// The HTTP server, its settings checked and its secrets read, not yet
/// listening.
pub struct Server {
    app: Arc<App>,
}

/// Applies silences created or deleted on other replicas to this one.
#[derive(Clone)]
pub struct RemoteSilences {
    app: Arc<App>,
}

impl RemoteSilences {
    /// Applies `change`; the backend is told when it changes anything.
    pub fn apply(&self, change: SilenceChange) {
        let now = (self.app.now)();
        let mut silences = self.app.silences();
        let changed = match change {
            SilenceChange::Created(silence) => {
                let id = silence.id.clone();
                match silences.insert(silence, now) {
                    Ok(added) => {
                        if added {
                            tracing::info!(%id, "silence created on another replica");
                        }
                        added
                    }
                    Err(e) => {
                        tracing::warn!(%id, error = %e, "silence from another replica not kept");
                        false
                    }
                }
            }
            SilenceChange::Deleted(id) => {
                let removed = silences.remove(&id);
                if removed {
                    tracing::info!(%id, "silence deleted on another replica");
                }
                removed
            }
            SilenceChange::Replica { address, seen } => {
                drop(silences);
                self.app
                    .replicas
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .update(address, seen);
                return;
            }
            SilenceChange::AlertSeen(key) => {
                drop(silences);
                let mut dedup = self.app.dedup.lock().unwrap_or_else(|p| p.into_inner());
                if dedup.insert(key.clone()) {
                    let fingerprint = key.split('\u{0}').next().unwrap_or_default();
                    tracing::info!(%fingerprint, "Alertmanager alert taken in by another replica: a repeat here is a duplicate");
                }
                return;
            }
        };
        if changed {
            self.app.backend.silenced(&silences.list());
        }
    }
}

impl Server {
    /// Checks `config` and reads the secrets in `config.auth`, once: a
    /// missing, unreadable or inline one is an error here, at start-up,
    /// never a server that quietly does not run.
    pub fn new(config: &HttpConfig, backend: Arc<dyn Backend>) -> Result<Server, String> {
        let app = App::new(config, backend, Arc::new(wall_clock), None)?;
        Ok(Server { app })
    }

    /// [`Server::new`], telling `share` of every silence created or
    /// deleted here, and with the handle that applies other replicas'.
    pub fn sharing_silences(
        config: &HttpConfig,
        backend: Arc<dyn Backend>,
        share: mpsc::Sender<SilenceChange>,
    ) -> Result<(Server, RemoteSilences), String> {
        let app = App::new(config, backend, Arc::new(wall_clock), Some(share))?;
        let remote = RemoteSilences { app: app.clone() };
        Ok((Server { app }, remote))
    }

    /// Serves on `listener` until `shutdown` is cancelled, then stops
    /// accepting connections and lets the requests in flight finish.
    /// Expired silences are dropped (and the backend told) within a second.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        let app = self.app;
        // Stops with the server, without cancelling the caller's token.
        let sweeper_stop = shutdown.child_token();
        let sweeper = {
            let app = app.clone();
            let shutdown = sweeper_stop.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(1));
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        _ = every.tick() => app.expire_silences(),
                    }
                }
            })
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, auth = app.auth.is_some(), "HTTP server listening");
        }
        let served = axum::serve(listener, app.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        sweeper_stop.cancel();
        if let Err(e) = sweeper.await {
            tracing::warn!(error = %e, "silence expiry task failed");
        }
        tracing::info!("HTTP server stopped");
        served
    }
}

/// [`Server::new`] then [`Server::serve`]; an invalid config or unreadable
/// secret fails with [`std::io::ErrorKind::InvalidInput`].
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: HttpConfig,
    backend: Arc<dyn Backend>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let server = Server::new(&config, backend)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    server.serve(listener, shutdown).await
}

type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The server's state, shared by every handler.
struct App {
    backend: Arc<dyn Backend>,
    auth: Option<auth::Credentials>,
    body_limit: usize,
    mapping: AlertmanagerMapping,
    dedup: Arc<Mutex<Dedup>>,
    silences: Mutex<Silences>,
    /// Where silences made here go, to be shared with other replicas.
    share: Option<mpsc::Sender<SilenceChange>>,
    /// Asks the other replicas about rollouts this one does not carry.
    forwarder: peers::Forwarder,
    /// The other replicas, as they announce themselves.
    replicas: Mutex<peers::Replicas>,
    now: Clock,
}

impl App {
    /// Reads the secrets and checks the settings.
    fn new(
        config: &HttpConfig,
        backend: Arc<dyn Backend>,
        now: Clock,
        share: Option<mpsc::Sender<SilenceChange>>,
    ) -> Result<Arc<App>, String> {
        let problems = config.problems();
        if !problems.is_empty() {
            return Err(problems.join("; "));
        }
        let auth = config.auth.as_ref().map(AuthConfig::resolve).transpose()?;
        Ok(Arc::new(App {
            backend,
            auth,
            body_limit: config.body_limit,
            mapping: config.alertmanager.clone(),
            dedup: Arc::new(Mutex::new(Dedup::new(DEDUP_MEMORY))),
            silences: Mutex::new(Silences::default()),
            share,
            forwarder: peers::Forwarder::new()?,
            replicas: Mutex::new(peers::Replicas::default()),
            now,
        }))
    }

    fn router(self: Arc<App>) -> Router {
        Router::new()
            .route("/", get(index))
            .route("/-/healthy", get(healthy))
            .route("/-/ready", get(ready))
            .route("/-/reload", post(reload))
            .route("/-/log-level", axum::routing::put(log_level))
            .route("/metrics", get(metrics))
            .route("/api/v1/alertmanager", post(alertmanager))
            .route("/api/v1/alerts", get(alerts))
            .route("/api/v1/rules", get(rules))
            .route("/api/v1/actions", get(actions))
            .route("/api/v1/subjects/{model}", get(subject))
            .route("/api/v1/history/{model}", get(history))
            .route("/api/v1/rollouts", get(rollouts))
            .route("/api/v1/rollouts/{model}", get(rollout))
            .route("/api/v1/rollouts/{model}/{command}", post(rollout_command))
            .route("/api/v1/silences", get(list_silences).post(create_silence))
            .route("/api/v1/silences/{id}", delete(delete_silence))
            .with_state(self)
    }

    /// The 401 response when credentials are required and missing or wrong.
    fn deny(&self, headers: &HeaderMap) -> Option<Response> {
        match &self.auth {
            Some(credentials) if !credentials.accepts(headers) => {
                let mut response = error(StatusCode::UNAUTHORIZED, "missing or wrong credentials");
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(credentials.challenge()),
                );
                Some(response)
            }
            _ => None,
        }
    }

    /// The other replicas heard from lately, newest first.
    fn peers(&self) -> Vec<String> {
        let now = (self.now)();
        self.replicas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .live(now)
    }

    fn silences(&self) -> std::sync::MutexGuard<'_, Silences> {
        self.silences.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands a change made here to the replicas' shared topic. The queue
    /// is bounded; a change that does not fit is said in the log.
    fn share(&self, change: SilenceChange) {
        let Some(share) = &self.share else { return };
        if let Err(e) = share.try_send(change) {
            tracing::error!(error = %e, "silence or Alertmanager alert not shared with the other replicas: the queue is full or closed");
        }
    }

    /// Drops expired silences, telling the backend if any went.
    fn expire_silences(&self) {
        let now = (self.now)();
        let mut silences = self.silences();
        if silences.expire(now) {
            // Told under the lock, so that the backend sees changes in order.
            self.backend.silenced(&silences.list());
        }
    }
}

/// A JSON error body.
fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// Why a JSON request body was refused.
enum BodyRejection {
    ContentType,
    TooLarge,
    Unreadable(String),
}

impl BodyRejection {
    fn response(&self, limit: usize) -> Response {
        match self {
            BodyRejection::ContentType => error(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            ),
            BodyRejection::TooLarge => error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body over the limit of {limit} bytes"),
            ),
            BodyRejection::Unreadable(e) => error(
                StatusCode::BAD_REQUEST,
                format!("cannot read request body: {e}"),
            ),
        }
    }
}

/// Checks the content type and reads at most `limit` bytes of body.
async fn json_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, BodyRejection> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(BodyRejection::ContentType);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyRejection::TooLarge);
    }
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(BodyRejection::TooLarge),
        Err(e) => Err(BodyRejection::Unreadable(e.to_string())),
    }
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

async fn healthy() -> &'static str {
    "healthy\n"
}

async fn ready(State(app): State<Arc<App>>) -> Response {
    if app.backend.ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        app.backend.metrics().await,
    )
        .into_response()
}

async fn reload(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    if let Some(denied) = app.deny(&headers) {
        return denied;
    }
    match app.backend.reload().await {
        Ok(report) => {
            tracing::info!("configuration reloaded through /-/reload");
            axum::Json(report).into_response()
        }
        Err(errors) => {
            tracing::warn!(?errors, "reload through /-/reload failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                axum::Json(json!({ "errors": errors })),
            )
                .into_response()
        }
    }
}

/// `PUT /-/log-level` with a filter such as `debug` or `canaryd=debug`.
async fn log_level(State(app): State<Arc<App>>, headers: HeaderMap, body: String) -> Response {
    if let Some(denied) = app.deny(&headers) {
        return denied;
    }
    match crate::logging::set_level(&body) {
        Ok(()) => {
            tracing::warn!(filter = %body.trim(), "log filter changed");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, axum::Json(json!({ "error": e }))).into_response(),
    }
}

async fn alerts(State(app): State<Arc<App>>) -> Response {
    axum::Json(app.backend.alerts().await).into_response()
}

async fn rules(State(app): State<Arc<App>>) -> Response {
    axum::Json(app.backend.rules()).into_response()
}

async fn actions(State(app): State<Arc<App>>) -> Response {
    axum::Json(app.backend.actions()).into_response()
}

async fn subject(State(app): State<Arc<App>>, Path(model): Path<String>) -> Response {
    match app.backend.subject(model.clone()).await {
        Some(v) => axum::Json(v).into_response(),
        None => error(StatusCode::NOT_FOUND, format!("unknown model `{model}`")),
    }
}

async fn history(State(app): State<Arc<App>>, Path(model): Path<String>) -> Response {
    match app.backend.history(&model) {
        Some(v) => axum::Json(v).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            format!("no history of model `{model}`"),
        ),
    }
}

/// `GET /api/v1/rollouts`: this replica's rollouts, and, unless asked by
/// another replica, every other replica's.
async fn rollouts(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let mut all = match app.backend.rollouts().await {
        serde_json::Value::Array(list) => list,
        other => vec![other],
    };
    if !peers::Forwarder::forwarded(&headers) {
        let peers = app.peers();
        if !peers.is_empty() {
            all.extend(
                app.forwarder
                    .gather(&peers, &["api", "v1", "rollouts"], &headers)
                    .await,
            );
        }
    }
    axum::Json(serde_json::Value::Array(all)).into_response()
}

/// `GET /api/v1/rollouts/{model}`, answered by the replica that carries it.
async fn rollout(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(model): Path<String>,
) -> Response {
    let all = app.backend.rollouts().await;
    if let Some(r) = all
        .as_array()
        .and_then(|a| a.iter().find(|r| r["model"] == model.as_str()))
    {
        return axum::Json(r.clone()).into_response();
    }
    let why = format!("no rollout of model `{model}` on this replica");
    let segments = ["api", "v1", "rollouts", model.as_str()];
    elsewhere(&app, Method::GET, &segments, &headers, Bytes::new(), why).await
}

/// The answer of the replica that carries what this one does not, or 404
/// with `why` (and how many others were asked).
async fn elsewhere(
    app: &App,
    method: Method,
    segments: &[&str],
    headers: &HeaderMap,
    body: Bytes,
    why: String,
) -> Response {
    if peers::Forwarder::forwarded(headers) {
        return error(StatusCode::NOT_FOUND, why);
    }
    let peers = app.peers();
    if let Some(answer) = app
        .forwarder
        .first(&peers, method, segments, headers, body)
        .await
    {
        return answer;
    }
    let asked = match peers.len() {
        0 => String::new(),
        1 => ", nor on the 1 other replica".to_string(),
        n => format!(", nor on the {n} other replicas"),
    };
    error(StatusCode::NOT_FOUND, format!("{why}{asked}"))
}

/// Who asks for a rollout command, and why: `{"by": "alice"}`, optional.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RolloutRequest {
    #[serde(default)]
    by: Option<String>,
}

/// `POST /api/v1/rollouts/{model}/{pause|resume|promote|abort}`.
async fn rollout_command(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path((model, command)): Path<(String, String)>,
    body: Body,
) -> Response {
    if let Some(denied) = app.deny(&headers) {
        return denied;
    }
    let bytes = match axum::body::to_bytes(body, app.body_limit).await {
        Ok(b) => b,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("cannot read the body: {e}"),
            );
        }
    };
    let request: RolloutRequest = if bytes.iter().all(u8::is_ascii_whitespace) {
        RolloutRequest::default()
    } else {
        match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid request: {e}")),
        }
    };
    let by = request
        .by
        .filter(|b| !b.trim().is_empty())
        .unwrap_or_else(|| "the API".to_string());
    use canaryd_rules::rollout::Command;
    let verb = command.clone();
    let command = match command.as_str() {
        "pause" => Command::Pause { by: by.clone() },
        "resume" => Command::Resume { by: by.clone() },
        "promote" => Command::Promote { by: by.clone() },
        "abort" => Command::Abort { by: by.clone() },
        other => {
            return error(
                StatusCode::NOT_FOUND,
                format!("unknown rollout command `{other}`: use pause, resume, promote or abort"),
            );
        }
    };
    match app.backend.rollout_command(model.clone(), command).await {
        Ok(rollout) => {
            tracing::warn!(%model, %by, "rollout command carried out");
            axum::Json(rollout).into_response()
        }
        Err((404, why)) => {
            let segments = ["api", "v1", "rollouts", model.as_str(), verb.as_str()];
            elsewhere(&app, Method::POST, &segments, &headers, bytes, why).await
        }
        Err((status, why)) => error(
            StatusCode::from_u16(status).unwrap_or(StatusCode::CONFLICT),
            why,
        ),
    }
}

/// `POST /api/v1/alertmanager`.
async fn alertmanager(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    let (result, response) = receive_alerts(&app, &headers, body).await;
    app.backend.record_payload(result);
    response
}

async fn receive_alerts(app: &App, headers: &HeaderMap, body: Body) -> (PayloadResult, Response) {
    if let Some(denied) = app.deny(headers) {
        tracing::warn!("Alertmanager payload refused: missing or wrong credentials");
        return (PayloadResult::Unauthorized, denied);
    }
    let bytes = match json_body(headers, body, app.body_limit).await {
        Ok(b) => b,
        Err(rejection) => {
            let result = match rejection {
                BodyRejection::ContentType => PayloadResult::BadContentType,
                BodyRejection::TooLarge => PayloadResult::TooLarge,
                BodyRejection::Unreadable(_) => PayloadResult::Malformed,
            };
            tracing::warn!(result = result.as_str(), "Alertmanager payload refused");
            return (result, rejection.response(app.body_limit));
        }
    };
    let items = match alertmanager::parse(&bytes, &app.mapping, (app.now)()) {
        Ok(items) => items,
        Err(reason) => {
            tracing::warn!(%reason, "Alertmanager payload refused");
            return (
                PayloadResult::Malformed,
                error(StatusCode::BAD_REQUEST, reason),
            );
        }
    };
    let total = items.len();
    // Reserved keys are released if the backend refuses or the request is
    // dropped, so Alertmanager's retry is not taken for a duplicate.
    let (mut events, mut requests, mut event_keys, mut action_keys) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    {
        let mut dedup = app.dedup.lock().unwrap_or_else(|p| p.into_inner());
        for incoming in items {
            if !dedup.insert(incoming.key.clone()) {
                continue;
            }
            match incoming.item {
                Item::Event(e) => {
                    events.push(e);
                    event_keys.push(incoming.key);
                }
                Item::Action(a) => {
                    requests.push(a);
                    action_keys.push(incoming.key);
                }
            }
        }
    }
    let mut event_guard = alertmanager::Reservation::new(app.dedup.clone(), event_keys);
    let mut action_guard = alertmanager::Reservation::new(app.dedup.clone(), action_keys);
    let (n_events, n_actions) = (events.len(), requests.len());
    let duplicates = total - n_events - n_actions;
    if n_events + n_actions == 0 && duplicates > 0 {
        tracing::debug!(duplicates, "Alertmanager payload held only duplicates");
        return (
            PayloadResult::Duplicate,
            axum::Json(json!({ "alerts": 0, "actions": 0, "duplicates": duplicates }))
                .into_response(),
        );
    }
    if !events.is_empty() {
        if let Err(e) = app.backend.ingest(events).await {
            tracing::warn!(error = %e, "Alertmanager alerts not accepted; asking for a retry");
            return (
                PayloadResult::Unavailable,
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not accepted: {e}"),
                ),
            );
        }
        for key in event_guard.keep() {
            app.share(SilenceChange::AlertSeen(key));
        }
    }
    if !requests.is_empty() {
        if let Err(e) = app.backend.act(requests).await {
            tracing::warn!(error = %e, "Alertmanager actions not accepted; asking for a retry");
            return (
                PayloadResult::Unavailable,
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not accepted: {e}"),
                ),
            );
        }
        for key in action_guard.keep() {
            app.share(SilenceChange::AlertSeen(key));
        }
    }
    tracing::debug!(
        alerts = n_events,
        actions = n_actions,
        duplicates,
        "Alertmanager payload accepted"
    );
    (
        PayloadResult::Accepted,
        axum::Json(json!({ "alerts": n_events, "actions": n_actions, "duplicates": duplicates }))
            .into_response(),
    )
}

/// `GET /api/v1/silences`.
async fn list_silences(State(app): State<Arc<App>>) -> Response {
    app.expire_silences();
    axum::Json(app.silences().list()).into_response()
}

/// `POST /api/v1/silences`.
async fn create_silence(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> Response {
    if let Some(denied) = app.deny(&headers) {
        return denied;
    }
    let bytes = match json_body(&headers, body, app.body_limit).await {
        Ok(b) => b,
        Err(rejection) => return rejection.response(app.body_limit),
    };
    let new: NewSilence = match serde_json::from_slice(&bytes) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid silence: {e}")),
    };
    let now = (app.now)();
    let mut silences = app.silences();
    silences.expire(now);
    let silence = match silences.add(new, now) {
        Ok(s) => s,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    app.backend.silenced(&silences.list());
    app.share(SilenceChange::Created(silence.clone()));
    drop(silences);
    tracing::info!(id = %silence.id, rule = ?silence.rule, subject = ?silence.subject, until = %silence.until, created_by = %silence.created_by, "silence created");
    let location = HeaderValue::from_str(&format!("/api/v1/silences/{}", silence.id)).ok();
    let mut response = (StatusCode::CREATED, axum::Json(silence)).into_response();
    if let Some(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// `DELETE /api/v1/silences/{id}`.
async fn delete_silence(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(denied) = app.deny(&headers) {
        return denied;
    }
    let now = (app.now)();
    let mut silences = app.silences();
    let expired = silences.expire(now);
    let removed = silences.remove(&id);
    if removed || expired {
        app.backend.silenced(&silences.list());
    }
    if removed {
        app.share(SilenceChange::Deleted(id.clone()));
    }
    drop(silences);
    if removed {
        tracing::info!(%id, "silence deleted");
        StatusCode::NO_CONTENT.into_response()
    } else {
        error(StatusCode::NOT_FOUND, format!("no active silence `{id}`"))
    }
}
