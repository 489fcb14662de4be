//! A fake Kubernetes API server for the traffic connector's tests.
//!
//! It serves real HTTP on 127.0.0.1 on a free port and behaves like the API
//! server for exactly the resources canaryd touches: Istio VirtualServices,
//! Gateway API HTTPRoutes and Argo Rollouts (GET and PATCH, with the
//! `status` subresource) and core/v1 and events.k8s.io/v1 Events (POST). The
//! connector's real `kube::Client` talks to it through the kubeconfig that
//! [`KubeFixture::kubeconfig`] points at; nothing in the client is mocked.
//!
//! Like the API server, it
//! - requires the bearer token written in the kubeconfig (401 otherwise);
//! - accepts `application/merge-patch+json` (RFC 7386: objects merge, `null`
//!   deletes, lists are replaced whole) and `application/apply-patch+yaml`
//!   (server-side apply, simplified to the same field merge), and answers
//!   415 to anything else;
//! - keeps `status` out of a PATCH of the object and everything but `status`
//!   out of a PATCH of its `/status` subresource;
//! - bumps `metadata.resourceVersion` on each write that changes something,
//!   and answers 409 Conflict (a `Status` with reason `Conflict`) when a
//!   patch carries a `metadata.resourceVersion` that is not the current one.
//!
//! Unlike the API server, it also requires `fieldManager=canaryd` on every
//! PATCH (400 otherwise), so the tests see that canaryd names itself.
//!
//! Tests can inject faults ([`KubeFixture::fail_next`],
//! [`KubeFixture::delay_next`]), read every request ([`KubeFixture::requests`])
//! and the stored objects and events. The server stops when the fixture is
//! dropped.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};

/// The bearer token in the kubeconfig; other tokens get 401.
pub const TOKEN: &str = "canaryd-fixture-token";

/// The field manager every PATCH must name.
pub const FIELD_MANAGER: &str = "canaryd";

/// The resources served: (group, version, plural, kind).
const RESOURCES: [(&str, &str, &str, &str); 3] = [
    (
        "networking.istio.io",
        "v1",
        "virtualservices",
        "VirtualService",
    ),
    ("gateway.networking.k8s.io", "v1", "httproutes", "HTTPRoute"),
    ("argoproj.io", "v1alpha1", "rollouts", "Rollout"),
];

/// One request as the fixture received it.
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    /// When the whole request had arrived.
    pub at: std::time::Instant,
    /// `GET`, `PATCH`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The body as text.
    pub body: String,
    /// The status the fixture answered with; 0 while it has not answered yet
    /// (a delayed request).
    pub status: u16,
}

impl LoggedRequest {
    /// The value of query parameter `key` (not percent-decoded).
    pub fn query_param(&self, key: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then(|| v.to_string())
        })
    }

    /// The body parsed as JSON (or YAML for an apply patch); `Null` if it is
    /// neither.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .or_else(|_| serde_yaml_ng::from_str(&self.body))
            .unwrap_or(Value::Null)
    }

    /// Whether this is a `method` request whose path ends with `suffix`.
    pub fn is(&self, method: &str, suffix: &str) -> bool {
        self.method.eq_ignore_ascii_case(method) && self.path.ends_with(suffix)
    }
}

/// What an injected fault does.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    /// Answer with this HTTP status and a matching `Status` object, without
    /// touching any stored object.
    Status(u16),
    /// Wait this long, then answer normally.
    Delay(Duration),
    /// Carry the request out at once, then wait this long before answering:
    /// a write that landed while its answer was lost.
    ThenDelay(Duration),
    /// Answer normally, then store this object as [`KubeFixture::put`]
    /// does: a concurrent writer that changes the object right after a
    /// client has read it.
    ThenPut(Box<Value>),
}

#[derive(Debug)]
struct FaultRule {
    method: String,
    suffix: String,
    remaining: usize,
    fault: Fault,
}

#[derive(Debug, Default)]
struct State {
    /// Objects by their URL path.
    objects: BTreeMap<String, Value>,
    events: Vec<Value>,
    log: Vec<LoggedRequest>,
    faults: Vec<FaultRule>,
    resource_version: u64,
    uid: u64,
}

impl State {
    fn next_rv(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    fn next_uid(&mut self) -> String {
        self.uid += 1;
        format!("00000000-0000-4000-8000-{:012x}", self.uid)
    }

    /// The first fault that matches, counted down.
    fn take_fault(&mut self, method: &str, path: &str) -> Option<Fault> {
        let rule = self.faults.iter_mut().find(|r| {
            r.remaining > 0
                && (r.method.is_empty() || r.method.eq_ignore_ascii_case(method))
                && path.ends_with(&r.suffix)
        })?;
        rule.remaining -= 1;
        Some(rule.fault.clone())
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

/// A running fake API server; stopped when dropped.
pub struct KubeFixture {
    port: u16,
    state: Shared,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    /// Stops the server when dropped.
    _server: crate::local_http::LocalHttp,
}

impl KubeFixture {
    /// Starts the server on 127.0.0.1 on a free port, on its own thread and
    /// runtime (so it works from any test, async or not), and writes a
    /// kubeconfig for it.
    pub fn start() -> KubeFixture {
        let state: Shared = Arc::default();
        let served = state.clone();
        let server = crate::local_http::LocalHttp::start("kube-fixture", move |req| {
            handle(served.clone(), req)
        });
        let port = server.port();
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("kube fixture: tempdir: {e}"));
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(&kubeconfig, kubeconfig_text(port))
            .unwrap_or_else(|e| panic!("kube fixture: write kubeconfig: {e}"));
        KubeFixture {
            port,
            state,
            kubeconfig,
            _dir: dir,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig whose current context (`fixture`) points at this server
    /// with user `canaryd` and bearer token [`TOKEN`].
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Stores `object` (which names its `apiVersion`, `kind`,
    /// `metadata.namespace` and `metadata.name`), giving it a uid and a new
    /// resourceVersion. Panics on a kind the fixture does not serve.
    pub fn put(&self, object: Value) {
        let key = object_key(&object).unwrap_or_else(|| {
            panic!("kube fixture: cannot store {object}: unknown apiVersion/kind or no name")
        });
        store(&mut lock(&self.state), key, object);
    }

    /// The stored object of `kind` (e.g. `VirtualService`), if any.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let (group, version, plural, _) = RESOURCES.iter().find(|r| r.3 == kind)?;
        let key = format!("/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}");
        lock(&self.state).objects.get(&key).cloned()
    }

    /// Every Event recorded, in order.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.state).events.clone()
    }

    /// Every request received, in order.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        lock(&self.state).log.clone()
    }

    /// The requests with `method` whose path ends with `suffix`.
    pub fn requests_matching(&self, method: &str, suffix: &str) -> Vec<LoggedRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.is(method, suffix))
            .collect()
    }

    /// Answers the next `times` requests with `method` (any method when "")
    /// whose path ends with `suffix` with `status` (e.g. 403, 404, 409, 500).
    pub fn fail_next(&self, method: &str, suffix: &str, times: usize, status: u16) {
        self.inject(method, suffix, times, Fault::Status(status));
    }

    /// Delays the next `times` matching requests by `delay`, then answers
    /// them normally.
    pub fn delay_next(&self, method: &str, suffix: &str, times: usize, delay: Duration) {
        self.inject(method, suffix, times, Fault::Delay(delay));
    }

    /// After answering the next `method` request whose path ends with
    /// `suffix`, replaces the stored object with `object` (new
    /// resourceVersion): a concurrent change between a client's read and
    /// its write.
    pub fn put_after_next(&self, method: &str, suffix: &str, object: Value) {
        assert!(
            object_key(&object).is_some(),
            "kube fixture: cannot store {object}: unknown apiVersion/kind or no name"
        );
        self.inject(method, suffix, 1, Fault::ThenPut(Box::new(object)));
    }

    /// Adds a fault rule; rules are tried in the order they were added.
    pub fn inject(&self, method: &str, suffix: &str, times: usize, fault: Fault) {
        lock(&self.state).faults.push(FaultRule {
            method: method.to_string(),
            suffix: suffix.to_string(),
            remaining: times,
            fault,
        });
    }

    /// An Istio VirtualService routing `stable`/`canary` percent of traffic
    /// to the subsets `stable` and `canary` of host `name`, like the
    /// playbook's `traffic-split-*.yaml`.
    pub fn virtual_service(namespace: &str, name: &str, stable: i64, canary: i64) -> Value {
        json!({
            "apiVersion": "networking.istio.io/v1",
            "kind": "VirtualService",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "hosts": [name],
                "http": [{
                    "route": [
                        {"destination": {"host": name, "subset": "stable"}, "weight": stable},
                        {"destination": {"host": name, "subset": "canary"}, "weight": canary}
                    ]
                }]
            }
        })
    }

    /// A Gateway API HTTPRoute splitting between the services `stable` and
    /// `canary` with the given weights.
    pub fn http_route(namespace: &str, name: &str, stable: i64, canary: i64) -> Value {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "parentRefs": [{"name": "ml-gateway"}],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {"name": "stable", "port": 8080, "weight": stable},
                        {"name": "canary", "port": 8080, "weight": canary}
                    ]
                }]
            }
        })
    }

    /// An Argo Rollout in the middle of a canary (not aborted).
    pub fn rollout(namespace: &str, name: &str) -> Value {
        json!({
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "replicas": 4,
                "strategy": {"canary": {"steps": [
                    {"setWeight": 10}, {"pause": {"duration": "1h"}},
                    {"setWeight": 50}, {"pause": {}}
                ]}}
            },
            "status": {"phase": "Progressing", "currentStepIndex": 1, "abort": false}
        })
    }
}

/// Stores `object` under `key`, keeping the uid of the object it replaces
/// (or giving it one) and a new resourceVersion.
fn store(state: &mut State, key: String, mut object: Value) {
    let old_uid = state
        .objects
        .get(&key)
        .and_then(|o| o["metadata"].get("uid").cloned());
    let uid = match old_uid {
        Some(u) => u,
        None => json!(state.next_uid()),
    };
    let rv = state.next_rv();
    let meta = &mut object["metadata"];
    if meta.get("uid").is_none() {
        meta["uid"] = uid;
    }
    meta["resourceVersion"] = json!(rv);
    if meta.get("generation").is_none() {
        meta["generation"] = json!(1);
    }
    state.objects.insert(key, object);
}

fn kubeconfig_text(port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
  - name: fixture
    cluster:
      server: http://127.0.0.1:{port}
users:
  - name: canaryd
    user:
      token: {TOKEN}
contexts:
  - name: fixture
    context:
      cluster: fixture
      user: canaryd
      namespace: default
current-context: fixture
"
    )
}

type Reply = Response<Full<Bytes>>;

fn reply(code: u16, body: &Value) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() =
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// A `Status` object, as the API server sends with every error.
fn status(code: u16, message: &str, details: Option<Value>) -> Reply {
    let mut body = json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason_for(code),
        "code": code,
    });
    if let Some(d) = details {
        body["details"] = d;
    }
    reply(code, &body)
}

async fn handle(state: Shared, req: Request<Incoming>) -> Result<Reply, Infallible> {
    let method = req.method().as_str().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let header = |name: hyper::header::HeaderName| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let content_type = header(hyper::header::CONTENT_TYPE);
    let authorization = header(hyper::header::AUTHORIZATION);
    let body = match req.into_body().collect().await {
        Ok(b) => String::from_utf8_lossy(&b.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let (index, fault) = {
        let mut s = lock(&state);
        s.log.push(LoggedRequest {
            at: std::time::Instant::now(),
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: content_type.clone(),
            authorization: authorization.clone(),
            body: body.clone(),
            status: 0,
        });
        let index = s.log.len() - 1;
        (index, s.take_fault(&method, &path))
    };
    let answer = || {
        route(
            &state,
            &method,
            &path,
            &query,
            content_type.as_deref(),
            authorization.as_deref(),
            &body,
        )
    };
    let response = match fault {
        Some(Fault::Status(code)) => status(
            code,
            &format!("injected by the test: {code} for {method} {path}"),
            None,
        ),
        Some(Fault::Delay(d)) => {
            tokio::time::sleep(d).await;
            answer()
        }
        Some(Fault::ThenDelay(d)) => {
            let response = answer();
            tokio::time::sleep(d).await;
            response
        }
        Some(Fault::ThenPut(object)) => {
            let response = answer();
            if let Some(key) = object_key(&object) {
                store(&mut lock(&state), key, *object);
            }
            response
        }
        None => answer(),
    };
    if let Some(entry) = lock(&state).log.get_mut(index) {
        entry.status = response.status().as_u16();
    }
    Ok(response)
}

fn route(
    state: &Shared,
    method: &str,
    path: &str,
    query: &str,
    content_type: Option<&str>,
    authorization: Option<&str>,
    body: &str,
) -> Reply {
    if authorization != Some(format!("Bearer {TOKEN}").as_str()) {
        return status(401, "Unauthorized", None);
    }
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        ("GET", ["version"]) => reply(
            200,
            &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-canaryd-fixture", "platform": "linux/amd64"}),
        ),
        ("GET", ["api"]) => reply(200, &json!({"kind": "APIVersions", "versions": ["v1"]})),
        ("GET", ["apis"]) => reply(200, &api_groups()),
        ("POST", ["api", "v1", "namespaces", ns, "events"])
        | ("POST", ["apis", "events.k8s.io", "v1", "namespaces", ns, "events"]) => {
            create_event(state, ns, body)
        }
        (
            _,
            [
                "apis",
                group,
                version,
                "namespaces",
                ns,
                plural,
                name,
                rest @ ..,
            ],
        ) if rest.is_empty() || rest == ["status"] => {
            let Some(resource) = RESOURCES
                .iter()
                .find(|r| r.0 == *group && r.1 == *version && r.2 == *plural)
            else {
                return status(
                    404,
                    "the server could not find the requested resource",
                    None,
                );
            };
            let key = format!("/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}");
            let subresource = !rest.is_empty();
            match method {
                "GET" => match lock(state).objects.get(&key) {
                    Some(obj) => reply(200, obj),
                    None => not_found(resource, name),
                },
                "PATCH" => patch(
                    state,
                    resource,
                    &key,
                    name,
                    subresource,
                    query,
                    content_type,
                    body,
                ),
                _ => status(
                    405,
                    &format!("{method} is not supported by the fixture"),
                    None,
                ),
            }
        }
        _ => status(
            404,
            "the server could not find the requested resource",
            None,
        ),
    }
}

fn api_groups() -> Value {
    let mut groups: Vec<Value> = RESOURCES
        .iter()
        .map(|(group, version, _, _)| {
            let gv = format!("{group}/{version}");
            json!({"name": group, "versions": [{"groupVersion": gv, "version": version}],
                   "preferredVersion": {"groupVersion": gv, "version": version}})
        })
        .collect();
    groups.push(json!({"name": "events.k8s.io",
        "versions": [{"groupVersion": "events.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "events.k8s.io/v1", "version": "v1"}}));
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn not_found(resource: &(&str, &str, &str, &str), name: &str) -> Reply {
    let (group, _, plural, _) = resource;
    status(
        404,
        &format!("{plural}.{group} \"{name}\" not found"),
        Some(json!({"name": name, "group": group, "kind": plural})),
    )
}

#[allow(clippy::too_many_arguments)]
fn patch(
    state: &Shared,
    resource: &(&str, &str, &str, &str),
    key: &str,
    name: &str,
    subresource: bool,
    query: &str,
    content_type: Option<&str>,
    body: &str,
) -> Reply {
    let field_manager = query
        .split('&')
        .find_map(|p| p.strip_prefix("fieldManager="));
    if field_manager != Some(FIELD_MANAGER) {
        return status(
            400,
            &format!("the fixture requires fieldManager={FIELD_MANAGER}, got {field_manager:?}"),
            None,
        );
    }
    let media = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let parsed: Result<Value, String> = match media.as_str() {
        "application/merge-patch+json" => serde_json::from_str(body).map_err(|e| e.to_string()),
        "application/apply-patch+yaml" => serde_yaml_ng::from_str(body).map_err(|e| e.to_string()),
        other => {
            return status(
                415,
                &format!(
                    "the body of the request was in an unknown format - accepted media types include: application/merge-patch+json, application/apply-patch+yaml (got {other:?})"
                ),
                None,
            );
        }
    };
    let patch = match parsed {
        Ok(p) if p.is_object() => p,
        Ok(_) => return status(400, "a patch must be an object", None),
        Err(e) => return status(400, &format!("cannot parse the patch: {e}"), None),
    };
    let mut s = lock(state);
    let Some(old) = s.objects.get(key).cloned() else {
        return not_found(resource, name);
    };
    let (group, _, plural, _) = resource;
    if let Some(sent) = patch["metadata"].get("resourceVersion")
        && *sent != old["metadata"]["resourceVersion"]
    {
        return status(
            409,
            &format!(
                "Operation cannot be fulfilled on {plural}.{group} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
            ),
            Some(json!({"name": name, "group": group, "kind": plural})),
        );
    }
    let mut merged = old.clone();
    merge_patch(&mut merged, &patch);
    let mut new = if subresource {
        // /status changes status only.
        let mut n = old.clone();
        set_or_remove(&mut n, "status", merged.get("status").cloned());
        n
    } else {
        // The object itself: status is the subresource's.
        set_or_remove(&mut merged, "status", old.get("status").cloned());
        merged
    };
    // Identity stays what it was.
    for field in ["name", "namespace", "uid", "resourceVersion", "generation"] {
        set_or_remove(
            &mut new["metadata"],
            field,
            old["metadata"].get(field).cloned(),
        );
    }
    new["apiVersion"] = old["apiVersion"].clone();
    new["kind"] = old["kind"].clone();
    if new != old {
        if new.get("spec") != old.get("spec") {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            new["metadata"]["generation"] = json!(generation + 1);
        }
        let rv = s.next_rv();
        new["metadata"]["resourceVersion"] = json!(rv);
        s.objects.insert(key.to_string(), new.clone());
    }
    reply(200, &new)
}

fn set_or_remove(target: &mut Value, field: &str, value: Option<Value>) {
    let Some(map) = target.as_object_mut() else {
        return;
    };
    match value {
        Some(v) => {
            map.insert(field.to_string(), v);
        }
        None => {
            map.remove(field);
        }
    }
}

/// RFC 7386 JSON merge patch: objects merge key by key, `null` deletes,
/// anything else (lists included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(fields) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(map) = target else {
        return;
    };
    for (k, v) in fields {
        if v.is_null() {
            map.remove(k);
        } else {
            merge_patch(map.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn create_event(state: &Shared, ns: &str, body: &str) -> Reply {
    let mut event: Value = match serde_json::from_str(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return status(400, "an Event must be a JSON object", None),
    };
    let meta_ns = event["metadata"]["namespace"]
        .as_str()
        .unwrap_or(ns)
        .to_string();
    if meta_ns != ns {
        return status(
            400,
            &format!(
                "the namespace of the object ({meta_ns}) does not match the namespace on the request ({ns})"
            ),
            None,
        );
    }
    let involved_ns = event["involvedObject"]["namespace"]
        .as_str()
        .or_else(|| event["regarding"]["namespace"].as_str())
        .unwrap_or("");
    if involved_ns != ns {
        return status(
            422,
            &format!(
                "Event is invalid: involvedObject.namespace: Invalid value: {involved_ns:?}: does not match event.namespace"
            ),
            None,
        );
    }
    let mut s = lock(state);
    let name = match event["metadata"]["name"].as_str() {
        Some(n) if !n.is_empty() => n.to_string(),
        _ => match event["metadata"]["generateName"].as_str() {
            Some(prefix) => format!("{prefix}{:05x}", s.events.len() + 1),
            None => return status(422, "Event is invalid: metadata.name: Required value", None),
        },
    };
    if s.events
        .iter()
        .any(|e| e["metadata"]["name"] == json!(name) && e["metadata"]["namespace"] == json!(ns))
    {
        return status(409, &format!("events \"{name}\" already exists"), None);
    }
    let uid = s.next_uid();
    let rv = s.next_rv();
    event["metadata"]["name"] = json!(name);
    event["metadata"]["namespace"] = json!(ns);
    event["metadata"]["uid"] = json!(uid);
    event["metadata"]["resourceVersion"] = json!(rv);
    s.events.push(event.clone());
    reply(201, &event)
}

/// The URL path of a stored object.
fn object_key(object: &Value) -> Option<String> {
    let api_version = object["apiVersion"].as_str()?;
    let kind = object["kind"].as_str()?;
    let ns = object["metadata"]["namespace"].as_str()?;
    let name = object["metadata"]["name"].as_str()?;
    let (group, version, plural, _) = RESOURCES
        .iter()
        .find(|r| format!("{}/{}", r.0, r.1) == api_version && r.3 == kind)?;
    Some(format!(
        "/apis/{group}/{version}/namespaces/{ns}/{plural}/{name}"
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2, 3]});
        merge_patch(&mut doc, &json!({"a": "z", "c": {"f": null}, "l": [9]}));
        assert_eq!(doc, json!({"a": "z", "c": {"d": "e"}, "l": [9]}));
    }
}
