//! Local stand-ins for the notification services: PagerDuty's Events API
//! v2, Slack incoming webhooks and a generic webhook, served over real HTTP
//! on 127.0.0.1 on a free port, on their own thread; stopped when dropped.
//!
//! Every request is recorded (method, path, headers, body, the status
//! answered and the validation errors found). Payloads are checked against
//! each API's documented schema, and a payload that breaks it is refused the
//! way the service refuses it:
//!
//! - `POST /v2/enqueue` ([`PAGERDUTY_PATH`]): PagerDuty Events API v2
//!   ([`validate_pagerduty`]). 202 `{"status":"success","message":"Event
//!   processed","dedup_key":...}` or 400 `{"status":"invalid
//!   event","message":"Event object is invalid","errors":[...]}`.
//! - `POST /services/...` ([`SLACK_PATH`]): a Slack incoming webhook
//!   ([`validate_slack`]). 200 `ok`, or 400 `invalid_payload`, `no_text` or
//!   `invalid_blocks`.
//! - `/api/chat.postMessage`, `/api/conversations.history` and
//!   `/api/conversations.replies` ([`SLACK_API_PATH`]): Slack's Web API for
//!   a bot token [`SLACK_TOKEN`] in channel [`SLACK_CHANNEL`]: messages are
//!   kept, with threads and metadata, and listed as Slack lists them
//!   (history newest first, paged by `limit` and `cursor`; replies oldest
//!   first). Errors as Slack answers them: 200 `{"ok":false,"error":...}`
//!   (`invalid_auth`, `channel_not_found`, `thread_not_found`,
//!   `invalid_blocks`, `invalid_metadata_format`).
//! - any other path: a generic webhook. Any JSON object is accepted (200
//!   `{"ok":true}`); a path can be made to require an `Authorization`
//!   header ([`Receivers::require_authorization`], 401 otherwise).
//!
//! The checks are a little stricter than the services: unknown top-level
//! keys are refused, so that a misspelt field fails a test instead of being
//! ignored.
//!
//! Faults: [`Receivers::fail_next`] answers the next requests with 429
//! (with `Retry-After`), 500, 503 or any status, or delays them;
//! [`Receivers::set_down`] answers 503 to everything until switched back;
//! [`Receivers::close`] stops listening, [`Receivers::reopen`] comes back
//! on the same port.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

/// Where the PagerDuty stand-in listens.
pub const PAGERDUTY_PATH: &str = "/v2/enqueue";

/// Where the Slack stand-in listens (any path under `/services/` works).
pub const SLACK_PATH: &str = "/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX";

/// Where the Slack Web API stand-in's methods live: `/api/METHOD`.
pub const SLACK_API_PATH: &str = "/api";

/// The bot token the Slack Web API stand-in accepts.
pub const SLACK_TOKEN: &str = "xoxb-0000000000-canaryd-test-token";

/// The one channel the Slack Web API stand-in has.
pub const SLACK_CHANNEL: &str = "C0CANARYD";

/// PagerDuty's `payload.severity` values.
pub const PAGERDUTY_SEVERITIES: [&str; 4] = ["critical", "error", "warning", "info"];

/// One request as a receiver got it.
#[derive(Clone, Debug)]
pub struct Received {
    /// When the whole request had arrived.
    pub at: Instant,
    /// `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Headers, names in lowercase.
    pub headers: BTreeMap<String, String>,
    /// The body as text.
    pub body: String,
    /// The status answered; 0 while a delayed request has not been answered.
    pub status: u16,
    /// The body answered.
    pub answer: String,
    /// Why the payload was refused (schema errors); empty when it was not.
    pub errors: Vec<String>,
}

impl Received {
    /// The body as JSON; `Null` if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// A header's value (`name` in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    /// Whether the receiver answered 2xx.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// What an injected fault does to a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this status (e.g. 400, 500, 503) and a short JSON body.
    Status(u16),
    /// Answer 429 Too Many Requests with `Retry-After: retry_after` (seconds).
    TooManyRequests {
        /// The `Retry-After` value, in seconds.
        retry_after: u64,
    },
    /// Wait this long, then answer normally.
    Delay(Duration),
}

#[derive(Debug, Default)]
struct State {
    log: Vec<Received>,
    faults: Vec<(usize, Fault)>,
    down: bool,
    /// The `Retry-After` (seconds) of the 503s while down.
    down_retry_after: Option<u64>,
    auth: BTreeMap<String, String>,
    generated_keys: u64,
    /// Messages posted through the Slack Web API, oldest first.
    slack_messages: Vec<Value>,
}

impl State {
    fn take_fault(&mut self) -> Option<Fault> {
        let slot = self.faults.iter_mut().find(|(left, _)| *left > 0)?;
        slot.0 -= 1;
        let fault = slot.1.clone();
        self.faults.retain(|(left, _)| *left > 0);
        Some(fault)
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panicking test thread may poison the lock; the state is still usable.
    match shared.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// The running receivers; stopped when dropped.
pub struct Receivers {
    port: u16,
    state: Shared,
    /// Stops the server when dropped; `None` while closed.
    server: Option<crate::local_http::LocalHttp>,
}

impl Receivers {
    /// Starts the server on 127.0.0.1 on a free port, on its own thread and
    /// runtime (so it works from any test, async or not).
    pub fn start() -> Receivers {
        let state: Shared = Arc::default();
        let server = serve(&state, 0);
        Receivers {
            port: server.port(),
            state,
            server: Some(server),
        }
    }

    /// Stops listening: connections are refused until [`Receivers::reopen`].
    pub fn close(&mut self) {
        self.server = None;
    }

    /// Listens again on the same port, with the same log and settings.
    pub fn reopen(&mut self) {
        if self.server.is_none() {
            self.server = Some(serve(&self.state, self.port));
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The PagerDuty Events API v2 endpoint.
    pub fn pagerduty_url(&self) -> String {
        self.url(PAGERDUTY_PATH)
    }

    /// A Slack incoming webhook URL.
    pub fn slack_url(&self) -> String {
        self.url(SLACK_PATH)
    }

    /// The Slack Web API's base URL.
    pub fn slack_api_url(&self) -> String {
        self.url(SLACK_API_PATH)
    }

    /// The messages posted through the Slack Web API, oldest first, with
    /// their `ts`, `thread_ts`, `reply_broadcast` and `metadata`.
    pub fn slack_messages(&self) -> Vec<Value> {
        lock(&self.state).slack_messages.clone()
    }

    /// A generic webhook URL, `/hooks/NAME`.
    pub fn webhook_url(&self, name: &str) -> String {
        self.url(&webhook_path(name))
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<Received> {
        lock(&self.state).log.clone()
    }

    /// The requests to `path`, in order.
    pub fn requests_to(&self, path: &str) -> Vec<Received> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// The requests to `path` that were answered 2xx, in order.
    pub fn accepted(&self, path: &str) -> Vec<Received> {
        self.requests_to(path)
            .into_iter()
            .filter(Received::accepted)
            .collect()
    }

    /// Applies `fault` to the next `times` requests (any path), after the
    /// faults already queued.
    pub fn fail_next(&self, times: usize, fault: Fault) {
        lock(&self.state).faults.push((times, fault));
    }

    /// Down: answer 503 to every request until switched back.
    pub fn set_down(&self, down: bool) {
        let mut s = lock(&self.state);
        s.down = down;
        s.down_retry_after = None;
    }

    /// Down, asking clients to come back after `retry_after` seconds.
    pub fn set_down_for(&self, retry_after: u64) {
        let mut s = lock(&self.state);
        s.down = true;
        s.down_retry_after = Some(retry_after);
    }

    /// Requires `Authorization: value` on `path` (401 otherwise).
    pub fn require_authorization(&self, path: &str, value: &str) {
        lock(&self.state)
            .auth
            .insert(path.to_string(), value.to_string());
    }

    /// Waits (bounded) until `count` requests have been answered; whether
    /// they were.
    pub fn wait_for_answers(&self, count: usize, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            let answered = self.requests().iter().filter(|r| r.status != 0).count();
            if answered >= count {
                return true;
            }
            if start.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve(state: &Shared, port: u16) -> crate::local_http::LocalHttp {
    let served = state.clone();
    crate::local_http::LocalHttp::start_on("receivers", port, move |req| {
        handle(served.clone(), req)
    })
}

/// `/hooks/NAME`.
pub fn webhook_path(name: &str) -> String {
    format!("/hooks/{name}")
}

type Reply = Response<Full<Bytes>>;

struct Answer {
    status: u16,
    content_type: &'static str,
    body: String,
    retry_after: Option<u64>,
    errors: Vec<String>,
}

impl Answer {
    fn json(status: u16, body: &Value) -> Answer {
        Answer {
            status,
            content_type: "application/json",
            body: body.to_string(),
            retry_after: None,
            errors: Vec::new(),
        }
    }

    fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
            retry_after: None,
            errors: Vec::new(),
        }
    }

    fn with_errors(mut self, errors: Vec<String>) -> Answer {
        self.errors = errors;
        self
    }

    fn reply(&self) -> Reply {
        let mut response = Response::new(Full::new(Bytes::from(self.body.clone())));
        *response.status_mut() =
            StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(self.content_type),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(hyper::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

async fn handle(state: Shared, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let headers: BTreeMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = match req.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let (index, fault, down, required_auth) = {
        let mut s = lock(&state);
        s.log.push(Received {
            at: Instant::now(),
            method: method.clone(),
            path: path.clone(),
            headers: headers.clone(),
            body: body.clone(),
            status: 0,
            answer: String::new(),
            errors: Vec::new(),
        });
        let index = s.log.len() - 1;
        let down = s.down.then_some(s.down_retry_after);
        let fault = if down.is_some() { None } else { s.take_fault() };
        (index, fault, down, s.auth.get(&path).cloned())
    };
    let answer = if let Some(retry_after) = down {
        let mut answer = Answer::json(503, &json!({"error": "the receiver is down"}));
        answer.retry_after = retry_after;
        answer
    } else {
        match fault {
            Some(Fault::Status(code)) => Answer::json(
                code,
                &json!({"error": format!("injected by the test: {code}")}),
            ),
            Some(Fault::TooManyRequests { retry_after }) => Answer {
                retry_after: Some(retry_after),
                ..Answer::json(
                    429,
                    &json!({"error": "rate limited (injected by the test)"}),
                )
            },
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                route(
                    &state,
                    &method,
                    &path,
                    &query,
                    &headers,
                    required_auth.as_deref(),
                    &body,
                )
            }
            None => route(
                &state,
                &method,
                &path,
                &query,
                &headers,
                required_auth.as_deref(),
                &body,
            ),
        }
    };
    if let Some(entry) = lock(&state).log.get_mut(index) {
        entry.status = answer.status;
        entry.answer = answer.body.clone();
        entry.errors = answer.errors.clone();
    }
    Ok(answer.reply())
}

fn route(
    state: &Shared,
    method: &str,
    path: &str,
    query: &str,
    headers: &BTreeMap<String, String>,
    required_auth: Option<&str>,
    body: &str,
) -> Answer {
    if let Some(api_method) = path.strip_prefix("/api/") {
        return slack_api(state, method, api_method, query, headers, body);
    }
    if method != "POST" {
        return Answer::json(
            405,
            &json!({"error": format!("{method} is not allowed; POST")}),
        );
    }
    if let Some(expected) = required_auth
        && headers.get("authorization").map(String::as_str) != Some(expected)
    {
        return Answer::json(401, &json!({"error": "unauthorized"}));
    }
    let json_content = headers.get("content-type").is_some_and(|ct| {
        ct.trim()
            .to_ascii_lowercase()
            .starts_with("application/json")
    });
    if path == PAGERDUTY_PATH {
        pagerduty(state, json_content, body)
    } else if path.starts_with("/services/") {
        slack(json_content, body)
    } else {
        webhook(json_content, body)
    }
}

fn pagerduty(state: &Shared, json_content: bool, body: &str) -> Answer {
    let invalid = |errors: Vec<String>| {
        Answer::json(
            400,
            &json!({"status": "invalid event", "message": "Event object is invalid", "errors": errors}),
        )
        .with_errors(errors)
    };
    if !json_content {
        return invalid(vec!["Content-Type must be application/json".into()]);
    }
    let event: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => return invalid(vec![format!("body is not JSON: {e}")]),
    };
    let errors = validate_pagerduty(&event);
    if !errors.is_empty() {
        return invalid(errors);
    }
    let dedup_key = match event["dedup_key"].as_str() {
        Some(k) => k.to_string(),
        None => {
            let mut s = lock(state);
            s.generated_keys += 1;
            format!("generated-{:032x}", s.generated_keys)
        }
    };
    Answer::json(
        202,
        &json!({"status": "success", "message": "Event processed", "dedup_key": dedup_key}),
    )
}

fn slack(json_content: bool, body: &str) -> Answer {
    if !json_content {
        return Answer::text(400, "invalid_payload")
            .with_errors(vec!["Content-Type must be application/json".into()]);
    }
    let message: Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(e) => {
            return Answer::text(400, "invalid_payload")
                .with_errors(vec![format!("body is not JSON: {e}")]);
        }
    };
    let errors = validate_slack(&message);
    if errors.is_empty() {
        return Answer::text(200, "ok");
    }
    let code = if errors.iter().any(|e| e.starts_with("no_text")) {
        "no_text"
    } else if errors.iter().all(|e| e.starts_with("blocks")) {
        "invalid_blocks"
    } else {
        "invalid_payload"
    };
    Answer::text(400, code).with_errors(errors)
}

/// Slack's Web API, for the methods canaryd calls.
fn slack_api(
    state: &Shared,
    http_method: &str,
    api_method: &str,
    query: &str,
    headers: &BTreeMap<String, String>,
    body: &str,
) -> Answer {
    let fail = |error: &str, errors: Vec<String>| {
        Answer::json(200, &json!({"ok": false, "error": error})).with_errors(errors)
    };
    if headers.get("authorization").map(String::as_str) != Some(&format!("Bearer {SLACK_TOKEN}")) {
        return fail("invalid_auth", vec!["no or a wrong bearer token".into()]);
    }
    let params: BTreeMap<String, String> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let with_metadata = params.get("include_all_metadata").map(String::as_str) == Some("true");
    let shown = |m: &Value| {
        let mut m = m.clone();
        if !with_metadata && let Some(o) = m.as_object_mut() {
            o.remove("metadata");
        }
        m
    };
    match (http_method, api_method) {
        ("POST", "chat.postMessage") => {
            let mut message: Value = match serde_json::from_str(body) {
                Ok(v) => v,
                Err(e) => return fail("invalid_json", vec![format!("body is not JSON: {e}")]),
            };
            if message["channel"] != SLACK_CHANNEL {
                return fail(
                    "channel_not_found",
                    vec![format!("channel {}", message["channel"])],
                );
            }
            let mut as_webhook = message.clone();
            if let Some(o) = as_webhook.as_object_mut() {
                o.remove("metadata");
                o.remove("reply_broadcast");
            }
            let errors = validate_slack(&as_webhook);
            if !errors.is_empty() {
                return fail("invalid_blocks", errors);
            }
            let metadata = &message["metadata"];
            let metadata_ok = metadata.is_null()
                || (non_empty_string(&metadata["event_type"])
                    && metadata["event_payload"].is_object());
            if !metadata_ok {
                return fail(
                    "invalid_metadata_format",
                    vec!["metadata needs event_type and an event_payload object".into()],
                );
            }
            let mut s = lock(state);
            if let Some(parent) = message["thread_ts"].as_str()
                && !s.slack_messages.iter().any(|m| m["ts"] == parent)
            {
                return fail("thread_not_found", vec![format!("no message {parent}")]);
            }
            let ts = format!("1772367060.{:06}", s.slack_messages.len() + 1);
            message["ts"] = json!(ts);
            s.slack_messages.push(message.clone());
            Answer::json(
                200,
                &json!({"ok": true, "channel": SLACK_CHANNEL, "ts": ts, "message": message}),
            )
        }
        ("GET", "conversations.history") => {
            if params.get("channel").map(String::as_str) != Some(SLACK_CHANNEL) {
                return fail("channel_not_found", Vec::new());
            }
            let oldest: f64 = params
                .get("oldest")
                .and_then(|o| o.parse().ok())
                .unwrap_or(0.0);
            let limit: usize = params
                .get("limit")
                .and_then(|l| l.parse().ok())
                .unwrap_or(100);
            let from: usize = params
                .get("cursor")
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let s = lock(state);
            // Top-level messages and replies also sent to the channel.
            let listed: Vec<Value> = s
                .slack_messages
                .iter()
                .rev()
                .filter(|m| m["thread_ts"].is_null() || m["reply_broadcast"] == true)
                .filter(|m| {
                    m["ts"]
                        .as_str()
                        .and_then(|t| t.parse::<f64>().ok())
                        .unwrap_or(0.0)
                        > oldest
                })
                .map(shown)
                .collect();
            let page: Vec<Value> = listed.iter().skip(from).take(limit).cloned().collect();
            let next = if from + limit < listed.len() {
                (from + limit).to_string()
            } else {
                String::new()
            };
            Answer::json(
                200,
                &json!({"ok": true, "messages": page, "has_more": !next.is_empty(), "response_metadata": {"next_cursor": next}}),
            )
        }
        ("GET", "conversations.replies") => {
            let Some(parent) = params.get("ts") else {
                return fail("invalid_arguments", vec!["ts is required".into()]);
            };
            let s = lock(state);
            let thread: Vec<Value> = s
                .slack_messages
                .iter()
                .filter(|m| m["ts"] == parent.as_str() || m["thread_ts"] == parent.as_str())
                .map(shown)
                .collect();
            if thread.is_empty() {
                return fail("thread_not_found", Vec::new());
            }
            Answer::json(
                200,
                &json!({"ok": true, "messages": thread, "has_more": false}),
            )
        }
        _ => Answer::json(404, &json!({"ok": false, "error": "unknown_method"})),
    }
}

/// Decodes a query string's `%XX` escapes and `+`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escaped = (b == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (b, escaped) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (b, None) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn webhook(json_content: bool, body: &str) -> Answer {
    if !json_content {
        return Answer::json(415, &json!({"error": "send application/json"}))
            .with_errors(vec!["Content-Type must be application/json".into()]);
    }
    match serde_json::from_str::<Value>(body) {
        Ok(Value::Object(_)) => Answer::json(200, &json!({"ok": true})),
        Ok(_) => Answer::json(400, &json!({"error": "expected a JSON object"}))
            .with_errors(vec!["body is not a JSON object".into()]),
        Err(e) => Answer::json(400, &json!({"error": "not JSON"}))
            .with_errors(vec![format!("body is not JSON: {e}")]),
    }
}

fn is_string(v: &Value) -> bool {
    v.is_string()
}

fn non_empty_string(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.trim().is_empty())
}

fn chars(v: &Value) -> usize {
    v.as_str().map(|s| s.chars().count()).unwrap_or(0)
}

/// Checks a PagerDuty Events API v2 event against the documented schema:
/// `routing_key` a non-empty string; `event_action` one of `trigger`,
/// `acknowledge`, `resolve`; `dedup_key` a string of at most 255
/// characters, required to acknowledge or resolve; for a trigger, `payload`
/// with a non-empty `summary` of at most 1024 characters, a non-empty
/// `source`, a `severity` of `critical`, `error`, `warning` or `info`, an
/// optional RFC 3339 `timestamp`, optional string `component`, `group` and
/// `class` and optional `custom_details`; optional `links` (`href`
/// required), `images` (`src` required), `client` and `client_url`.
/// Unknown keys are refused. Empty when valid.
pub fn validate_pagerduty(event: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(map) = event.as_object() else {
        return vec!["the event must be a JSON object".into()];
    };
    const KEYS: [&str; 8] = [
        "routing_key",
        "event_action",
        "dedup_key",
        "payload",
        "links",
        "images",
        "client",
        "client_url",
    ];
    for key in map.keys() {
        if !KEYS.contains(&key.as_str()) {
            errors.push(format!("unknown field `{key}`"));
        }
    }
    if !non_empty_string(&event["routing_key"]) {
        errors.push("routing_key is required and must be a non-empty string".into());
    }
    let action = event["event_action"].as_str().unwrap_or("");
    if !["trigger", "acknowledge", "resolve"].contains(&action) {
        errors.push(format!(
            "event_action must be trigger, acknowledge or resolve, not {}",
            event["event_action"]
        ));
    }
    match &event["dedup_key"] {
        Value::Null if action == "acknowledge" || action == "resolve" => {
            errors.push(format!("dedup_key is required to {action}"));
        }
        Value::Null => {}
        Value::String(k) if k.is_empty() => errors.push("dedup_key is empty".into()),
        Value::String(k) if k.chars().count() > 255 => errors.push(format!(
            "dedup_key is {} characters; at most 255",
            k.chars().count()
        )),
        Value::String(_) => {}
        other => errors.push(format!("dedup_key must be a string, not {other}")),
    }
    if action == "trigger" {
        let payload = &event["payload"];
        match payload.as_object() {
            None => errors.push("payload is required to trigger and must be an object".into()),
            Some(p) => {
                const PAYLOAD_KEYS: [&str; 8] = [
                    "summary",
                    "source",
                    "severity",
                    "timestamp",
                    "component",
                    "group",
                    "class",
                    "custom_details",
                ];
                for key in p.keys() {
                    if !PAYLOAD_KEYS.contains(&key.as_str()) {
                        errors.push(format!("unknown field `payload.{key}`"));
                    }
                }
                if !non_empty_string(&payload["summary"]) {
                    errors
                        .push("payload.summary is required and must be a non-empty string".into());
                } else if chars(&payload["summary"]) > 1024 {
                    errors.push(format!(
                        "payload.summary is {} characters; at most 1024",
                        chars(&payload["summary"])
                    ));
                }
                if !non_empty_string(&payload["source"]) {
                    errors.push("payload.source is required and must be a non-empty string".into());
                }
                let severity = payload["severity"].as_str().unwrap_or("");
                if !PAGERDUTY_SEVERITIES.contains(&severity) {
                    errors.push(format!(
                        "payload.severity must be critical, error, warning or info, not {}",
                        payload["severity"]
                    ));
                }
                match &payload["timestamp"] {
                    Value::Null => {}
                    Value::String(t) if chrono::DateTime::parse_from_rfc3339(t).is_ok() => {}
                    other => errors.push(format!(
                        "payload.timestamp must be an ISO 8601 (RFC 3339) time, not {other}"
                    )),
                }
                for key in ["component", "group", "class"] {
                    if !payload[key].is_null() && !is_string(&payload[key]) {
                        errors.push(format!("payload.{key} must be a string"));
                    }
                }
            }
        }
    }
    for (list, required) in [("links", "href"), ("images", "src")] {
        match &event[list] {
            Value::Null => {}
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if !non_empty_string(&item[required]) {
                        errors.push(format!("{list}[{i}].{required} is required"));
                    }
                }
            }
            _ => errors.push(format!("{list} must be a list")),
        }
    }
    for key in ["client", "client_url"] {
        if !event[key].is_null() && !is_string(&event[key]) {
            errors.push(format!("{key} must be a string"));
        }
    }
    errors
}

/// Checks a Slack incoming-webhook message: a JSON object with a non-empty
/// `text` or a non-empty `blocks` list (errors then start with `no_text`);
/// at most 50 blocks, each of a known type with valid text objects:
/// `header` (plain_text, at most 150 characters), `section` (text of at most
/// 3000 characters, or 1 to 10 fields of at most 2000), `context` (1 to 10
/// elements), `actions` (1 to 25 elements; a button has plain_text of at
/// most 75 characters and an optional url), `divider` (errors start with
/// `blocks`). Known top-level keys only. Empty when valid.
pub fn validate_slack(message: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(map) = message.as_object() else {
        return vec!["the message must be a JSON object".into()];
    };
    const KEYS: [&str; 11] = [
        "text",
        "blocks",
        "attachments",
        "channel",
        "username",
        "icon_emoji",
        "icon_url",
        "thread_ts",
        "mrkdwn",
        "unfurl_links",
        "unfurl_media",
    ];
    for key in map.keys() {
        if !KEYS.contains(&key.as_str()) {
            errors.push(format!("unknown field `{key}`"));
        }
    }
    if !message["text"].is_null() && !is_string(&message["text"]) {
        errors.push("text must be a string".into());
    }
    let blocks = match &message["blocks"] {
        Value::Null => Vec::new(),
        Value::Array(b) => b.clone(),
        _ => {
            errors.push("blocks must be a list".into());
            Vec::new()
        }
    };
    if !non_empty_string(&message["text"]) && blocks.is_empty() {
        errors.push("no_text: the message has neither text nor blocks".into());
    }
    if blocks.len() > 50 {
        errors.push(format!("blocks: {} blocks; at most 50", blocks.len()));
    }
    for (i, block) in blocks.iter().enumerate() {
        let at = format!("blocks[{i}]");
        match block["type"].as_str().unwrap_or("") {
            "header" => text_object(
                &mut errors,
                &format!("{at}.text"),
                &block["text"],
                true,
                150,
            ),
            "section" => {
                let has_text = !block["text"].is_null();
                let fields = block["fields"].as_array();
                if !has_text && fields.is_none() {
                    errors.push(format!("{at}: a section needs text or fields"));
                }
                if has_text {
                    text_object(
                        &mut errors,
                        &format!("{at}.text"),
                        &block["text"],
                        false,
                        3000,
                    );
                }
                if let Some(fields) = fields {
                    if fields.is_empty() || fields.len() > 10 {
                        errors.push(format!("{at}.fields: 1 to 10, not {}", fields.len()));
                    }
                    for (j, f) in fields.iter().enumerate() {
                        text_object(&mut errors, &format!("{at}.fields[{j}]"), f, false, 2000);
                    }
                }
            }
            "context" => match block["elements"].as_array() {
                Some(els) if !els.is_empty() && els.len() <= 10 => {
                    for (j, e) in els.iter().enumerate() {
                        if e["type"] != "image" {
                            text_object(
                                &mut errors,
                                &format!("{at}.elements[{j}]"),
                                e,
                                false,
                                3000,
                            );
                        }
                    }
                }
                _ => errors.push(format!("{at}.elements: 1 to 10 elements")),
            },
            "actions" => match block["elements"].as_array() {
                Some(els) if !els.is_empty() && els.len() <= 25 => {
                    for (j, e) in els.iter().enumerate() {
                        let where_ = format!("{at}.elements[{j}]");
                        if e["type"] == "button" {
                            text_object(
                                &mut errors,
                                &format!("{where_}.text"),
                                &e["text"],
                                true,
                                75,
                            );
                            if !e["url"].is_null()
                                && !e["url"].as_str().is_some_and(|u| {
                                    (u.starts_with("http://") || u.starts_with("https://"))
                                        && u.len() <= 3000
                                })
                            {
                                errors.push(format!("{where_}.url must be an http(s) URL"));
                            }
                        } else if !non_empty_string(&e["type"]) {
                            errors.push(format!("{where_}.type is required"));
                        }
                    }
                }
                _ => errors.push(format!("{at}.elements: 1 to 25 elements")),
            },
            "divider" => {}
            other => errors.push(format!("{at}: unknown block type `{other}`")),
        }
    }
    errors
}

/// Checks a Slack text object; its errors start with `blocks`.
fn text_object(errors: &mut Vec<String>, at: &str, text: &Value, plain_only: bool, max: usize) {
    let kind = text["type"].as_str().unwrap_or("");
    let kinds_ok = if plain_only {
        kind == "plain_text"
    } else {
        kind == "plain_text" || kind == "mrkdwn"
    };
    if !kinds_ok {
        errors.push(format!(
            "{}: type must be {}, not {}",
            blocks_prefixed(at),
            if plain_only {
                "plain_text"
            } else {
                "plain_text or mrkdwn"
            },
            text["type"]
        ));
    }
    if !non_empty_string(&text["text"]) {
        errors.push(format!(
            "{}: text must be a non-empty string",
            blocks_prefixed(at)
        ));
    } else if chars(&text["text"]) > max {
        errors.push(format!(
            "{}: text is {} characters; at most {max}",
            blocks_prefixed(at),
            chars(&text["text"])
        ));
    }
}

fn blocks_prefixed(at: &str) -> String {
    if at.starts_with("blocks") {
        at.to_string()
    } else {
        format!("blocks: {at}")
    }
}
