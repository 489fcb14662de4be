//! `deploy/`: the Kubernetes manifests, the Dockerfile, the monitoring and
//! the Alertmanager snippet, checked rather than just written.
//!
//! Every kustomization under `deploy/` is rendered with `kubectl kustomize`
//! (offline). Each rendered object is deserialised into its `k8s-openapi`
//! type and serialised back: k8s-openapi ignores unknown fields, so a field
//! that does not survive the round trip is misspelt or misplaced. Custom
//! resources (Istio, Prometheus Operator) are checked against a small
//! closed schema of the fields used. Then the manifests are checked against
//! the daemon itself: probe paths and port, metric names, the RBAC the kube
//! connector needs, the config passing `canaryd check`, the grace period.

#![allow(clippy::unwrap_used, clippy::expect_used)] // tests panic on purpose

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use canaryd_tests::{canaryd, repo, stderr, stdout};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::serde::Deserialize;
use serde_json::Value;

/// The kustomizations a platform team applies, each of which must render.
const KUSTOMIZATIONS: [&str; 5] = [
    "deploy/k8s/base",
    "deploy/k8s/overlays/dev",
    "deploy/k8s/overlays/prod",
    "deploy/k8s/examples",
    "deploy/monitoring",
];

/// The kustomizations that deploy canaryd itself.
const DEPLOYMENTS: [&str; 3] = [
    "deploy/k8s/base",
    "deploy/k8s/overlays/dev",
    "deploy/k8s/overlays/prod",
];

/// The playbook's traffic splits: percent of traffic on the canary.
const SPLITS: [u64; 6] = [0, 5, 10, 25, 50, 100];

// ---------------------------------------------------------------------------
// Rendering

fn kubectl() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBECTL") {
        return PathBuf::from(path);
    }
    let candidates = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|dir| dir.join("kubectl"));
    for candidate in candidates {
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "kubectl is missing: these tests render deploy/ with `kubectl kustomize`. \
         Install kubectl (any version with kustomize v5) or point KUBECTL at it."
    );
}

/// `kubectl kustomize dir`, as one JSON value per object.
fn render(dir: &str) -> Vec<Value> {
    let out = Command::new(kubectl())
        .arg("kustomize")
        .arg(repo(dir))
        .output()
        .unwrap_or_else(|e| panic!("cannot run kubectl: {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {dir} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    parse_docs(&String::from_utf8_lossy(&out.stdout), dir)
}

fn parse_docs(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// Every kustomization, rendered once per test process.
fn rendered() -> &'static BTreeMap<&'static str, Vec<Value>> {
    static RENDERED: OnceLock<BTreeMap<&'static str, Vec<Value>>> = OnceLock::new();
    RENDERED.get_or_init(|| KUSTOMIZATIONS.iter().map(|d| (*d, render(d))).collect())
}

fn objects(dir: &str) -> &'static [Value] {
    rendered()
        .get(dir)
        .unwrap_or_else(|| panic!("{dir} is not in KUSTOMIZATIONS"))
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or("")
}

fn name(v: &Value) -> &str {
    v["metadata"]["name"].as_str().unwrap_or("")
}

fn ident(v: &Value) -> String {
    format!(
        "{}/{} {}/{}",
        v["apiVersion"].as_str().unwrap_or("?"),
        kind(v),
        v["metadata"]["namespace"].as_str().unwrap_or("-"),
        name(v)
    )
}

fn all_of<'a>(dir: &str, k: &'a str) -> impl Iterator<Item = &'static Value> + 'a {
    objects(dir).iter().filter(move |v| kind(v) == k)
}

fn one_of(dir: &str, k: &str, n: &str) -> &'static Value {
    let found: Vec<_> = all_of(dir, k).filter(|v| name(v) == n).collect();
    assert_eq!(
        found.len(),
        1,
        "{dir}: expected one {k} {n}, found {found:?}"
    );
    found[0]
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_file(path: &str) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

// ---------------------------------------------------------------------------
// Types: k8s-openapi round trip, and closed schemas for custom resources

/// Every difference between what was written and what survived the typed
/// round trip, as paths.
fn diff(path: &str, written: &Value, typed: &Value, out: &mut Vec<String>) {
    match (written, typed) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, va) in a {
                let p = format!("{path}.{k}");
                match b.get(k) {
                    Some(vb) => diff(&p, va, vb, out),
                    None => out.push(format!("{p}: dropped (unknown or misplaced field)")),
                }
            }
            for k in b.keys().filter(|k| !a.contains_key(*k)) {
                out.push(format!("{path}.{k}: added by the type"));
            }
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => {
            for (i, (va, vb)) in a.iter().zip(b).enumerate() {
                diff(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(format!("{path}: {a} became {b}")),
    }
}

fn round_trip<T>(obj: &Value) -> Result<(), String>
where
    T: k8s_openapi::serde::de::DeserializeOwned + k8s_openapi::serde::Serialize,
{
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    let mut diffs = Vec::new();
    diff("", obj, &back, &mut diffs);
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("; "))
    }
}

/// A closed schema: objects reject keys they do not list.
enum S {
    Str,
    Int,
    /// Exactly this string.
    Is(&'static str),
    /// An object of string values (labels, annotations, selectors).
    StrMap,
    List(&'static S),
    Obj(&'static [F]),
}

struct F(&'static str, bool, S);

const fn req(key: &'static str, s: S) -> F {
    F(key, true, s)
}

const fn opt(key: &'static str, s: S) -> F {
    F(key, false, s)
}

const META: S = S::Obj(&[
    req("name", S::Str),
    req("namespace", S::Str),
    opt("labels", S::StrMap),
    opt("annotations", S::StrMap),
]);

/// Istio networking.istio.io/v1 VirtualService, the fields used.
const VIRTUAL_SERVICE: S = S::Obj(&[
    req("apiVersion", S::Is("networking.istio.io/v1")),
    req("kind", S::Is("VirtualService")),
    req("metadata", META),
    req(
        "spec",
        S::Obj(&[
            req("hosts", S::List(&S::Str)),
            req(
                "http",
                S::List(&S::Obj(&[
                    opt("name", S::Str),
                    req(
                        "route",
                        S::List(&S::Obj(&[
                            req(
                                "destination",
                                S::Obj(&[
                                    req("host", S::Str),
                                    req("subset", S::Str),
                                    opt("port", S::Obj(&[req("number", S::Int)])),
                                ]),
                            ),
                            req("weight", S::Int),
                        ])),
                    ),
                ])),
            ),
        ]),
    ),
]);

/// Istio networking.istio.io/v1 DestinationRule, the fields used.
const DESTINATION_RULE: S = S::Obj(&[
    req("apiVersion", S::Is("networking.istio.io/v1")),
    req("kind", S::Is("DestinationRule")),
    req("metadata", META),
    req(
        "spec",
        S::Obj(&[
            req("host", S::Str),
            req(
                "subsets",
                S::List(&S::Obj(&[req("name", S::Str), req("labels", S::StrMap)])),
            ),
        ]),
    ),
]);

/// Prometheus Operator monitoring.coreos.com/v1 ServiceMonitor, the fields used.
const SERVICE_MONITOR: S = S::Obj(&[
    req("apiVersion", S::Is("monitoring.coreos.com/v1")),
    req("kind", S::Is("ServiceMonitor")),
    req("metadata", META),
    req(
        "spec",
        S::Obj(&[
            req("selector", S::Obj(&[req("matchLabels", S::StrMap)])),
            opt(
                "namespaceSelector",
                S::Obj(&[req("matchNames", S::List(&S::Str))]),
            ),
            req(
                "endpoints",
                S::List(&S::Obj(&[
                    req("port", S::Str),
                    req("path", S::Str),
                    opt("interval", S::Str),
                    opt("scrapeTimeout", S::Str),
                ])),
            ),
        ]),
    ),
]);

/// Prometheus Operator monitoring.coreos.com/v1 PrometheusRule, the fields used.
const PROMETHEUS_RULE: S = S::Obj(&[
    req("apiVersion", S::Is("monitoring.coreos.com/v1")),
    req("kind", S::Is("PrometheusRule")),
    req("metadata", META),
    req(
        "spec",
        S::Obj(&[req(
            "groups",
            S::List(&S::Obj(&[
                req("name", S::Str),
                req(
                    "rules",
                    S::List(&S::Obj(&[
                        req("alert", S::Str),
                        req("expr", S::Str),
                        opt("for", S::Str),
                        req("labels", S::StrMap),
                        req("annotations", S::StrMap),
                    ])),
                ),
            ])),
        )]),
    ),
]);

fn check_schema(path: &str, v: &Value, s: &S, errors: &mut Vec<String>) {
    match s {
        S::Str if v.is_string() => {}
        S::Int if v.is_i64() || v.is_u64() => {}
        S::Is(want) if v.as_str() == Some(want) => {}
        S::Is(want) => errors.push(format!("{path}: expected {want:?}, found {v}")),
        S::StrMap => match v.as_object() {
            Some(map) => {
                for (k, val) in map {
                    if !val.is_string() {
                        errors.push(format!("{path}.{k}: expected a string, found {val}"));
                    }
                }
            }
            None => errors.push(format!("{path}: expected a map of strings, found {v}")),
        },
        S::List(item) => match v.as_array() {
            Some(items) if !items.is_empty() => {
                for (i, x) in items.iter().enumerate() {
                    check_schema(&format!("{path}[{i}]"), x, item, errors);
                }
            }
            _ => errors.push(format!("{path}: expected a non-empty list, found {v}")),
        },
        S::Obj(fields) => match v.as_object() {
            Some(map) => {
                for k in map.keys() {
                    if !fields.iter().any(|f| f.0 == k) {
                        errors.push(format!("{path}.{k}: unknown field"));
                    }
                }
                for F(key, required, schema) in fields.iter() {
                    match map.get(*key) {
                        Some(x) => check_schema(&format!("{path}.{key}"), x, schema, errors),
                        None if *required => errors.push(format!("{path}.{key}: missing")),
                        None => {}
                    }
                }
            }
            None => errors.push(format!("{path}: expected an object, found {v}")),
        },
        S::Str => errors.push(format!("{path}: expected a string, found {v}")),
        S::Int => errors.push(format!("{path}: expected an integer, found {v}")),
    }
}

fn schema(obj: &Value, s: &S) -> Result<(), String> {
    let mut errors = Vec::new();
    check_schema("", obj, s, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// Checks one object strictly against its type or schema.
fn check_object(obj: &Value) -> Result<(), String> {
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    match (api_version, kind(obj)) {
        ("apps/v1", "Deployment") => round_trip::<Deployment>(obj),
        ("v1", "Service") => round_trip::<Service>(obj),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(obj),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(obj),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(obj),
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(obj),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(obj),
        ("networking.istio.io/v1", "VirtualService") => {
            schema(obj, &VIRTUAL_SERVICE).and_then(|()| split_weights(obj).map(|_| ()))
        }
        ("networking.istio.io/v1", "DestinationRule") => schema(obj, &DESTINATION_RULE),
        ("monitoring.coreos.com/v1", "ServiceMonitor") => schema(obj, &SERVICE_MONITOR),
        ("monitoring.coreos.com/v1", "PrometheusRule") => schema(obj, &PROMETHEUS_RULE),
        (a, k) => Err(format!(
            "{a} {k} is not a kind these tests know: add its type or schema to check_object"
        )),
    }
}

/// The (stable, canary) weights of each HTTP route of a VirtualService,
/// which must name the subsets `stable` and `canary` and sum to 100.
fn split_weights(vs: &Value) -> Result<Vec<(u64, u64)>, String> {
    let mut out = Vec::new();
    let routes = vs["spec"]["http"].as_array().cloned().unwrap_or_default();
    for (i, http) in routes.iter().enumerate() {
        let mut weights = BTreeMap::new();
        for dest in http["route"].as_array().cloned().unwrap_or_default() {
            let subset = dest["destination"]["subset"].as_str().unwrap_or("");
            let weight = dest["weight"].as_u64().ok_or("a weight is not a number")?;
            if weights.insert(subset.to_string(), weight).is_some() {
                return Err(format!("http[{i}]: subset {subset} appears twice"));
            }
        }
        let keys: Vec<_> = weights.keys().map(String::as_str).collect();
        if keys != ["canary", "stable"] {
            return Err(format!(
                "http[{i}]: destinations must be the subsets canary and stable, found {keys:?}"
            ));
        }
        let (stable, canary) = (weights["stable"], weights["canary"]);
        if stable + canary != 100 {
            return Err(format!(
                "http[{i}]: weights stable {stable} + canary {canary} do not sum to 100"
            ));
        }
        out.push((stable, canary));
    }
    if out.is_empty() {
        return Err("no http routes".into());
    }
    Ok(out)
}

#[test]
fn every_kustomization_renders_into_strictly_typed_objects() {
    let mut failures = Vec::new();
    for dir in KUSTOMIZATIONS {
        let objs = objects(dir);
        assert!(!objs.is_empty(), "{dir} renders nothing");
        for obj in objs {
            if let Err(e) = check_object(obj) {
                failures.push(format!("{dir}: {}: {e}", ident(obj)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Every kustomization under deploy/ is one of those rendered here.
    let mut found = Vec::new();
    find_kustomizations(&repo("deploy"), &mut found);
    let found: BTreeSet<String> = found
        .iter()
        .map(|p| {
            p.strip_prefix(canaryd_tests::root())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let listed: BTreeSet<String> = KUSTOMIZATIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(found, listed, "add new kustomizations to KUSTOMIZATIONS");

    // What each deployment contains.
    for dir in DEPLOYMENTS {
        let kinds: BTreeSet<&str> = objects(dir).iter().map(kind).collect();
        for want in [
            "Deployment",
            "Service",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
        ] {
            assert!(kinds.contains(want), "{dir} has no {want}: {kinds:?}");
        }
        assert!(
            !kinds.contains("Secret"),
            "{dir}: credentials are not shipped in manifests"
        );
    }
    assert_eq!(
        all_of("deploy/k8s/base", "PodDisruptionBudget").count(),
        1,
        "the base has a PodDisruptionBudget"
    );
}

fn find_kustomizations(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            find_kustomizations(&path, out);
        } else if path.file_name().is_some_and(|n| n == "kustomization.yaml") {
            out.push(path.parent().unwrap().to_path_buf());
        }
    }
}

#[test]
fn the_strict_checks_catch_a_misspelt_field() {
    // The checks above must be able to fail: a typo in a Deployment, and an
    // unknown key in a VirtualService, are both reported.
    let mut deployment = one_of("deploy/k8s/base", "Deployment", "canaryd").clone();
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"]["httpGett"] =
        deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]
            .clone();
    let e = check_object(&deployment).unwrap_err();
    assert!(e.contains("readinesProbe: dropped"), "{e}");

    let mut vs = yaml_file("deploy/k8s/examples/traffic-split-5percent.yaml");
    vs["spec"]["http"][0]["route"][0]["wieght"] = Value::from(95);
    let e = check_object(&vs).unwrap_err();
    assert!(
        e.contains(".spec.http[0].route[0].wieght: unknown field"),
        "{e}"
    );

    let mut vs = yaml_file("deploy/k8s/examples/traffic-split-5percent.yaml");
    vs["spec"]["http"][0]["route"][0]["weight"] = Value::from(90);
    let e = check_object(&vs).unwrap_err();
    assert!(e.contains("do not sum to 100"), "{e}");
}

// ---------------------------------------------------------------------------
// The playbook's traffic objects

#[test]
fn traffic_splits_follow_the_playbook_and_match_the_kube_receiver() {
    let base = config_of("deploy/k8s/base");
    let target = &base["receivers"]["kube"]["target"];
    assert_eq!(target["kind"], "VirtualService");
    let subset = |key: &str| target[key].as_str().unwrap_or(key).to_string();
    assert_eq!(
        (subset("stable"), subset("canary")),
        ("stable".into(), "canary".into())
    );

    let rule = one_of("deploy/k8s/examples", "DestinationRule", "model-summarizer");
    let subsets: BTreeSet<&str> = rule["spec"]["subsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(subsets, BTreeSet::from(["canary", "stable"]));

    let mut reference: Option<Value> = None;
    for percent in SPLITS {
        let path = format!("deploy/k8s/examples/traffic-split-{percent}percent.yaml");
        let docs = parse_docs(&read(&path), &path);
        assert_eq!(docs.len(), 1, "{path}: one VirtualService");
        let vs = &docs[0];
        check_object(vs).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(kind(vs), "VirtualService", "{path}");
        // The name the kube receiver computes for model=summarizer.
        let want_name = target["name"]
            .as_str()
            .unwrap()
            .replace("{{ model }}", "summarizer");
        assert_eq!(name(vs), want_name, "{path}");
        assert_eq!(vs["metadata"]["namespace"], target["namespace"], "{path}");
        assert_eq!(
            vs["spec"]["http"][0]["route"][0]["destination"]["host"], rule["spec"]["host"],
            "{path}: routes to the DestinationRule's host"
        );
        let weights = split_weights(vs).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(
            weights.iter().all(|w| *w == (100 - percent, percent)),
            "{path}: expected stable {} / canary {percent}, found {weights:?}",
            100 - percent
        );
        // Apart from the weights, every split is the same object.
        let mut stripped = vs.clone();
        for http in stripped["spec"]["http"].as_array_mut().unwrap() {
            for r in http["route"].as_array_mut().unwrap() {
                r.as_object_mut().unwrap().remove("weight");
            }
        }
        match &reference {
            None => reference = Some(stripped),
            Some(r) => assert_eq!(&stripped, r, "{path} differs from the 0 % split"),
        }
    }
    // The kustomization applies the starting split (canary 0 %).
    let vs = one_of("deploy/k8s/examples", "VirtualService", "model-summarizer");
    assert_eq!(split_weights(vs).unwrap(), vec![(100, 0)]);
}

// ---------------------------------------------------------------------------
// The Deployment against the daemon

fn pod_spec(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]
}

fn container(deployment: &Value) -> &Value {
    let containers = pod_spec(deployment)["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

fn deployment(dir: &str) -> &'static Value {
    one_of(dir, "Deployment", "canaryd")
}

/// The routes the daemon's HTTP server registers (daemon/src/server/mod.rs).
fn served_routes() -> BTreeSet<String> {
    let source = read("daemon/src/server/mod.rs");
    let routes: BTreeSet<String> = source
        .split(".route(\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .map(str::to_string)
        .collect();
    assert!(
        routes.len() > 5,
        "no routes found in the server: {routes:?}"
    );
    routes
}

#[test]
fn probes_and_ports_match_what_the_daemon_serves() {
    let routes = served_routes();
    let default_port = canaryd::server::HttpConfig::default().listen.port();
    for dir in DEPLOYMENTS {
        let d = deployment(dir);
        let c = container(d);
        let config = config_of(dir);
        let listen: std::net::SocketAddr = config["http"]["listen"]
            .as_str()
            .unwrap_or_else(|| panic!("{dir}: canaryd.yaml has no http.listen"))
            .parse()
            .unwrap();
        assert!(
            listen.ip().is_unspecified(),
            "{dir}: canaryd must listen on all interfaces, not {listen}"
        );
        assert_eq!(listen.port(), default_port, "{dir}: the documented port");
        let ports = c["ports"].as_array().unwrap();
        let http = ports
            .iter()
            .find(|p| p["name"] == "http")
            .unwrap_or_else(|| panic!("{dir}: no container port named http"));
        assert_eq!(http["containerPort"], listen.port(), "{dir}");

        for (probe, path) in [
            ("livenessProbe", "/-/healthy"),
            ("readinessProbe", "/-/ready"),
        ] {
            let get = &c[probe]["httpGet"];
            assert_eq!(get["path"], path, "{dir}: {probe}");
            assert!(
                routes.contains(path),
                "the daemon does not serve {path}: {routes:?}"
            );
            assert!(
                get["port"] == "http" || get["port"] == listen.port(),
                "{dir}: {probe} port {} is not the http port",
                get["port"]
            );
        }

        let service = one_of(dir, "Service", "canaryd");
        let sp = &service["spec"]["ports"][0];
        assert_eq!(sp["name"], "http", "{dir}");
        assert_eq!(sp["port"], listen.port(), "{dir}");
        assert!(sp["targetPort"] == "http" || sp["targetPort"] == listen.port());
        assert_eq!(
            service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"],
            "{dir}: the Service selects the pods"
        );

        // The image's entrypoint reads the config where the ConfigMap is mounted.
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == "config")
            .unwrap();
        assert!(
            mount.get("subPath").is_none(),
            "{dir}: subPath mounts never update"
        );
        assert_eq!(mount["mountPath"], "/etc/canaryd", "{dir}");
        let volume = pod_spec(d)["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "config")
            .unwrap();
        let cm_name = volume["configMap"]["name"].as_str().unwrap();
        let cm = one_of(dir, "ConfigMap", cm_name);
        assert!(cm["data"]["canaryd.yaml"].is_string(), "{dir}");
    }

    // The ServiceMonitor scrapes the served metrics on the Service's port.
    let monitor = one_of("deploy/monitoring", "ServiceMonitor", "canaryd");
    let service = one_of("deploy/k8s/base", "Service", "canaryd");
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], service["spec"]["ports"][0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert!(routes.contains("/metrics"));
    for (k, v) in monitor["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(
            &service["metadata"]["labels"][k], v,
            "ServiceMonitor selector {k}"
        );
    }
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["matchNames"][0],
        service["metadata"]["namespace"]
    );
}

#[test]
fn pods_are_locked_down() {
    for dir in DEPLOYMENTS {
        let d = deployment(dir);
        let pod = pod_spec(d);
        let c = container(d);
        let psc = &pod["securityContext"];
        let csc = &c["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{dir}");
        assert!(
            psc["runAsUser"].as_u64().unwrap_or(0) > 0,
            "{dir}: runAsUser"
        );
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{dir}");
        assert_eq!(csc["runAsNonRoot"], true, "{dir}");
        assert_eq!(csc["readOnlyRootFilesystem"], true, "{dir}");
        assert_eq!(csc["allowPrivilegeEscalation"], false, "{dir}");
        assert_ne!(csc["privileged"], true, "{dir}");
        assert_eq!(
            csc["capabilities"]["drop"],
            serde_json::json!(["ALL"]),
            "{dir}"
        );
        assert!(csc["capabilities"].get("add").is_none(), "{dir}");
        assert_eq!(csc["seccompProfile"]["type"], "RuntimeDefault", "{dir}");
        assert!(pod.get("hostNetwork").is_none() && pod.get("hostPID").is_none());
        for r in ["requests", "limits"] {
            for what in ["cpu", "memory"] {
                assert!(
                    c["resources"][r][what].is_string(),
                    "{dir}: resources.{r}.{what}"
                );
            }
        }
        assert_eq!(pod["serviceAccountName"], "canaryd", "{dir}");
    }
}

#[test]
fn replicas_form_one_consumer_group_and_drains_can_proceed() {
    for dir in DEPLOYMENTS {
        let d = deployment(dir);
        let replicas = d["spec"]["replicas"].as_u64().unwrap();
        let config = config_of(dir);
        assert!(
            config["kafka"]["group_id"].is_string(),
            "{dir}: one explicit consumer group for every replica"
        );
        let pdbs: Vec<_> = all_of(dir, "PodDisruptionBudget").collect();
        for pdb in &pdbs {
            let min = pdb["spec"]["minAvailable"].as_u64().unwrap();
            assert!(
                replicas > min,
                "{dir}: minAvailable {min} with {replicas} replicas blocks every drain"
            );
            assert_eq!(
                pdb["spec"]["selector"]["matchLabels"], d["spec"]["selector"]["matchLabels"],
                "{dir}: the PodDisruptionBudget covers the Deployment"
            );
        }
        if replicas >= 2 {
            assert_eq!(
                pdbs.len(),
                1,
                "{dir}: {replicas} replicas need a PodDisruptionBudget"
            );
        }
    }
    assert_eq!(deployment("deploy/k8s/base")["spec"]["replicas"], 2);
    assert_eq!(
        deployment("deploy/k8s/overlays/prod")["spec"]["replicas"],
        2
    );
}

#[test]
fn termination_grace_outlasts_the_daemons_shutdown_grace() {
    for dir in DEPLOYMENTS {
        let d = deployment(dir);
        let text = configmap_files(dir)["canaryd.yaml"].clone();
        let config = canaryd::config::Config::parse(Path::new("/etc/canaryd/canaryd.yaml"), &text)
            .unwrap_or_else(|e| panic!("{dir}: {e}"));
        let grace = config.pipeline.shutdown_grace.as_secs_f64();
        let pod_grace = pod_spec(d)["terminationGracePeriodSeconds"]
            .as_f64()
            .unwrap_or(30.0);
        assert!(
            pod_grace > grace,
            "{dir}: terminationGracePeriodSeconds {pod_grace} must be longer than pipeline.shutdown_grace {grace}s"
        );
    }
}

// ---------------------------------------------------------------------------
// RBAC: exactly what the kube connector calls

/// What connectors/src/kube.rs does against the API server, as RBAC
/// (api group, resource, verb). It GETs the target, PATCHes it (a JSON merge
/// patch), GETs it again to verify; aborts an Argo Rollout by PATCHing
/// rollouts/status; and creates a core/v1 Event. `kube_rs_calls_are_the_ones_granted`
/// below fails when kube.rs starts calling something else.
const EXPECTED_RBAC: [(&str, &str, &str); 8] = [
    ("networking.istio.io", "virtualservices", "get"),
    ("networking.istio.io", "virtualservices", "patch"),
    ("gateway.networking.k8s.io", "httproutes", "get"),
    ("gateway.networking.k8s.io", "httproutes", "patch"),
    ("argoproj.io", "rollouts", "get"),
    ("argoproj.io", "rollouts", "patch"),
    ("argoproj.io", "rollouts/status", "patch"),
    ("", "events", "create"),
];

#[test]
fn rbac_grants_exactly_what_the_kube_connector_calls() {
    let expected: BTreeSet<(String, String, String)> = EXPECTED_RBAC
        .iter()
        .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
        .collect();
    for dir in DEPLOYMENTS {
        let kinds: BTreeSet<&str> = objects(dir).iter().map(kind).collect();
        assert!(
            !kinds.contains("ClusterRole") && !kinds.contains("ClusterRoleBinding"),
            "{dir}: no cluster-wide rights"
        );
        let roles: Vec<_> = all_of(dir, "Role").collect();
        assert_eq!(roles.len(), 1, "{dir}: one Role");
        let role = roles[0];
        let mut granted = BTreeSet::new();
        for rule in role["rules"].as_array().unwrap() {
            assert!(rule.get("resourceNames").is_none() || rule["resourceNames"].is_array());
            for g in rule["apiGroups"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        let (g, r, v) = (
                            g.as_str().unwrap().to_string(),
                            r.as_str().unwrap().to_string(),
                            v.as_str().unwrap().to_string(),
                        );
                        assert!(
                            !g.contains('*') && !r.contains('*') && !v.contains('*'),
                            "{dir}: wildcard in the Role"
                        );
                        assert_ne!(r, "secrets", "{dir}: no secrets access");
                        granted.insert((g, r, v));
                    }
                }
            }
        }
        let more: Vec<_> = granted.difference(&expected).collect();
        let less: Vec<_> = expected.difference(&granted).collect();
        assert!(
            more.is_empty() && less.is_empty(),
            "{dir}: the Role grants more than the kube connector calls: {more:?}; less: {less:?}"
        );

        // The Role is in the namespace the kube receiver changes, and bound to
        // the pods' ServiceAccount.
        let config = config_of(dir);
        assert_eq!(
            role["metadata"]["namespace"], config["receivers"]["kube"]["target"]["namespace"],
            "{dir}: the Role must be in the kube receiver's target namespace"
        );
        let binding = one_of(dir, "RoleBinding", name(role));
        assert_eq!(
            binding["metadata"]["namespace"],
            role["metadata"]["namespace"]
        );
        assert_eq!(binding["roleRef"]["kind"], "Role", "{dir}");
        assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
        let sa = one_of(dir, "ServiceAccount", "canaryd");
        let d = deployment(dir);
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{
                "kind": "ServiceAccount",
                "name": name(sa),
                "namespace": sa["metadata"]["namespace"],
            }]),
            "{dir}"
        );
        assert_eq!(pod_spec(d)["serviceAccountName"], name(sa));
        assert_eq!(d["metadata"]["namespace"], sa["metadata"]["namespace"]);
    }
}

#[test]
fn kube_rs_calls_are_the_ones_granted() {
    // The API calls in kube.rs (outside its unit tests): `api.get(`,
    // `api.patch(`, `api.patch_status(` on the target and `events.create(`.
    // A new call (replace, delete, list, get_status…) fails here until
    // EXPECTED_RBAC and deploy/k8s/base/rbac.yaml grant it.
    let source = read("connectors/src/kube.rs");
    let source = source.split("#[cfg(test)]").next().unwrap();
    let mut calls = BTreeSet::new();
    for receiver in ["api.", "events."] {
        for (i, _) in source.match_indices(receiver) {
            if source[..i]
                .chars()
                .next_back()
                .is_some_and(|c| c.is_alphanumeric() || c == '_')
            {
                continue;
            }
            let rest = &source[i + receiver.len()..];
            let method: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if rest[method.len()..].starts_with('(') {
                calls.insert(format!("{receiver}{method}"));
            }
        }
    }
    let expected: BTreeSet<String> = ["api.get", "api.patch", "api.patch_status", "events.create"]
        .into_iter()
        .map(str::to_string)
        .collect();
    assert_eq!(
        calls, expected,
        "connectors/src/kube.rs calls the API differently: update EXPECTED_RBAC and rbac.yaml"
    );
    // And the kinds it targets are the three granted.
    for (group, plural) in [
        ("networking.istio.io", "virtualservices"),
        ("gateway.networking.k8s.io", "httproutes"),
        ("argoproj.io", "rollouts"),
    ] {
        assert!(
            source.contains(&format!("\"{group}\"")) && source.contains(&format!("\"{plural}\"")),
            "kube.rs no longer targets {group}/{plural}"
        );
    }
}

// ---------------------------------------------------------------------------
// Config: the ConfigMap's files

/// The rendered `canaryd-config` ConfigMap's files.
fn configmap_files(dir: &str) -> BTreeMap<String, String> {
    let cm = one_of(dir, "ConfigMap", "canaryd-config");
    serde_json::from_value(cm["data"].clone()).unwrap()
}

/// The rendered canaryd.yaml, as a value.
fn config_of(dir: &str) -> Value {
    serde_yaml_ng::from_str(&configmap_files(dir)["canaryd.yaml"]).unwrap()
}

#[test]
fn the_configmaps_config_passes_canaryd_check() {
    for dir in DEPLOYMENTS {
        let files = configmap_files(dir);
        let tmp = tempfile::tempdir().unwrap();
        for (file, text) in &files {
            std::fs::write(tmp.path().join(file), text).unwrap();
        }
        let config = tmp.path().join("canaryd.yaml");
        let out = canaryd(&["check", config.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{dir}: canaryd check\n{}{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            stdout(&out).contains("ok, config with 9 rules from 2 files"),
            "{dir}: {}",
            stdout(&out)
        );
        // The rule files are the examples', unchanged (canary-alerts.yaml is
        // the playbook's file as it is).
        for rules in ["canary-alerts.yaml", "playbook-triggers.yaml"] {
            assert_eq!(
                files.get(rules),
                Some(&read(&format!("deploy/examples/{rules}"))),
                "{dir}: {rules} differs from deploy/examples/{rules}"
            );
        }
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            [
                "canary-alerts.yaml",
                "canaryd.yaml",
                "playbook-triggers.yaml"
            ],
            "{dir}"
        );
    }
    // The check fails on a broken config, so the test above can fail.
    let tmp = tempfile::tempdir().unwrap();
    let files = configmap_files("deploy/k8s/base");
    for (file, text) in &files {
        std::fs::write(tmp.path().join(file), text).unwrap();
    }
    let broken = files["canaryd.yaml"].replace("listen:", "listne:");
    std::fs::write(tmp.path().join("canaryd.yaml"), broken).unwrap();
    let out = canaryd(&["check", tmp.path().join("canaryd.yaml").to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
}

#[test]
fn dev_is_the_base_config_in_dry_run_and_prod_acts() {
    let base = config_of("deploy/k8s/base");
    let prod = config_of("deploy/k8s/overlays/prod");
    let mut dev = config_of("deploy/k8s/overlays/dev");
    assert_eq!(prod, base);
    assert_ne!(base["dry_run"], true, "the base acts");
    assert_eq!(dev["dry_run"], true, "dev is a dry run");
    assert_ne!(
        dev["kafka"]["group_id"], base["kafka"]["group_id"],
        "dev must not join the base's consumer group and take its partitions"
    );
    for topic in ["changelog_topic", "silences_topic"] {
        assert!(
            base["kafka"][topic].is_string(),
            "the base keeps durable state: {topic}"
        );
        assert_ne!(
            dev["kafka"][topic], base["kafka"][topic],
            "dev must not read or write the base's {topic}"
        );
        dev["kafka"][topic] = base["kafka"][topic].clone();
    }
    // Nothing else differs.
    dev.as_object_mut().unwrap().remove("dry_run");
    dev["kafka"]["group_id"] = base["kafka"]["group_id"].clone();
    assert_eq!(dev, base, "dev's canaryd.yaml drifted from the base's");
}

/// Every `{file: …}` and `{env: …}` secret reference in the config.
fn secret_refs(v: &Value, files: &mut BTreeSet<String>, envs: &mut BTreeSet<String>) {
    match v {
        Value::Object(map) if map.len() == 1 && map.contains_key("file") => {
            files.insert(map["file"].as_str().unwrap().to_string());
        }
        Value::Object(map) if map.len() == 1 && map.contains_key("env") => {
            envs.insert(map["env"].as_str().unwrap().to_string());
        }
        Value::Object(map) => map.values().for_each(|x| secret_refs(x, files, envs)),
        Value::Array(items) => items.iter().for_each(|x| secret_refs(x, files, envs)),
        _ => {}
    }
}

#[test]
fn credentials_come_from_the_secret_and_are_documented() {
    let docs = read("README.md");
    for dir in DEPLOYMENTS {
        let d = deployment(dir);
        let c = container(d);
        let config = config_of(dir);
        let (mut files, mut envs) = (BTreeSet::new(), BTreeSet::new());
        secret_refs(&config, &mut files, &mut envs);
        assert!(!files.is_empty() && !envs.is_empty(), "{dir}");
        assert!(
            config["http"]["auth"]["bearer"]["file"].is_string(),
            "{dir}: the webhook needs auth, from a file"
        );

        let volume = pod_spec(d)["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v.get("secret").is_some())
            .unwrap_or_else(|| panic!("{dir}: no Secret volume"));
        let secret = volume["secret"]["secretName"].as_str().unwrap();
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap();
        let dir_path = mount["mountPath"].as_str().unwrap();
        assert_eq!(mount["readOnly"], true);
        for file in &files {
            let key = file
                .strip_prefix(&format!("{dir_path}/"))
                .unwrap_or_else(|| panic!("{dir}: {file} is not in the Secret volume {dir_path}"));
            assert!(
                docs.contains(&format!("--from-file={key}=")),
                "README.md must show how to create Secret key {key}"
            );
        }
        let env_from = c["envFrom"].as_array().unwrap();
        assert!(
            env_from.iter().any(|e| e["secretRef"]["name"] == secret),
            "{dir}: the env secrets ({envs:?}) come from the Secret {secret}"
        );
        let literal: BTreeSet<&str> = c["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["name"].as_str())
            .collect();
        for env in &envs {
            assert!(!literal.contains(env.as_str()), "{dir}: {env} set inline");
            assert!(
                docs.contains(&format!("--from-literal={env}=")),
                "README.md must show how to create Secret key {env}"
            );
        }
        assert!(docs.contains(secret), "README.md names the Secret");
    }
}

// ---------------------------------------------------------------------------
// Monitoring: the metric names exist

/// Every series name the daemon exports, from its own registry: every
/// family is given a sample (empty families are not encoded), then the
/// `# TYPE` lines are read.
fn exported_series() -> BTreeSet<String> {
    let m = canaryd::metrics::Metrics::new();
    m.inc_consumed("t");
    m.inc_dead_lettered("not_json");
    m.inc_late();
    m.add_rule_evaluations(1);
    m.inc_action("kube", "failed");
    m.observe_connector_duration("kube", std::time::Duration::from_millis(1));
    m.set_consumer_lag("t", 0, 1);
    m.inc_rollout_transition("m", "stage");
    let full = canaryd_rules::analytics::TrackStats {
        requests: 10,
        request_rate: 1.0,
        error_rate: Some(0.1),
        success_rate: Some(0.9),
        p50_latency: Some(1.0),
        p95_latency: Some(2.0),
        p99_latency: Some(3.0),
        cost_per_request: Some(0.01),
        demographic_parity: Some(0.0),
        equal_opportunity: Some(0.0),
        disparate_impact: Some(1.0),
        ..Default::default()
    };
    let group = canaryd_rules::analytics::GroupRate {
        group: "a".into(),
        positive_rate: 0.5,
        predictions: 10,
    };
    let subject: std::collections::BTreeMap<String, String> =
        [("model".to_string(), "m".to_string())].into();
    m.export(&canaryd::metrics::Exported {
        subjects: &[canaryd_rules::SubjectAnalytics {
            labels: std::sync::Arc::new(subject.clone()),
            tracks: [full.clone(), full],
            groups: [vec![group.clone()], vec![group]],
            latency_sums: [Some(10.0), Some(10.0)],
            judgement: canaryd_rules::judge::Judgement {
                score: Some(100.0),
                error_rate: Some(canaryd_rules::judge::MetricJudgement {
                    verdict: canaryd_rules::judge::Verdict::Pass,
                    fails: false,
                    effect: 0.0,
                    evidence: 1.0,
                    needed: 400.0,
                    samples: [10, 10],
                    group: None,
                }),
                ..Default::default()
            },
            stale: false,
        }],
        omitted: 0,
        alerts: &[canaryd::metrics::AlertSeries {
            rule: "r".into(),
            subject,
            state: "firing",
        }],
        rollouts: &[canaryd::metrics::RolloutSeries {
            model: "m".into(),
            stage: 1,
            weight: 5,
            hold_remaining: std::time::Duration::ZERO,
        }],
        held: 1,
        event_times: &[canaryd::metrics::PartitionTime {
            topic: "events".into(),
            partition: 0,
            at: canaryd_rules::Timestamp(1_772_366_400_000),
        }],
    });
    m.record_reload(
        true,
        std::time::Duration::ZERO,
        std::time::SystemTime::now(),
    );
    let text = m.encode();
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        names.insert(name.to_string());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        if kind == "summary" {
            for suffix in ["_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    // The families documented in daemon/src/metrics.rs's table are the
    // ones encoded: a new family must be documented and given a sample above.
    let documented: BTreeSet<String> = read("daemon/src/metrics.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//! | "))
        .filter_map(|l| l.split(" | ").next())
        .flat_map(|names| names.split(", "))
        .filter_map(|n| n.strip_prefix('`')?.strip_suffix('`'))
        .filter(|n| n.starts_with("canaryd_"))
        .map(String::from)
        .collect();
    let encoded: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(|n| {
            // Counters are typed under their name without `_total`.
            if documented.contains(&format!("{n}_total")) {
                format!("{n}_total")
            } else {
                n.to_string()
            }
        })
        .collect();
    assert_eq!(encoded, documented, "{text}");
    names
}

/// The `canaryd_…` names an expression uses.
fn used_series(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (i, _) in expr.match_indices("canaryd_") {
        if expr[..i]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = expr[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        out.insert(name);
    }
    out
}

/// The values a label is matched against in an expression: `label="a"` and
/// `label=~"a|b"`.
fn label_values(expr: &str, label: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for op in ["=\"", "=~\""] {
        for (i, _) in expr.match_indices(&format!("{label}{op}")) {
            let rest = &expr[i + label.len() + op.len()..];
            let value = rest.split('"').next().unwrap();
            out.extend(value.split('|').map(str::to_string));
        }
    }
    out
}

fn outcome_kinds() -> BTreeSet<String> {
    use canaryd_connectors::action::OutcomeKind::*;
    [
        Accepted,
        Succeeded,
        Retried,
        Failed,
        DeadLettered,
        Escalated,
    ]
    .iter()
    .map(|k| {
        serde_json::to_value(k)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    })
    .collect()
}

/// The rule names in the config's rule files.
fn rule_names() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in ["canary-alerts.yaml", "playbook-triggers.yaml"] {
        let rules: Value =
            serde_yaml_ng::from_str(&configmap_files("deploy/k8s/base")[file]).unwrap();
        for r in rules["alerts"].as_array().unwrap() {
            out.insert(r["name"].as_str().unwrap().to_string());
        }
    }
    out
}

/// Checks the canaryd metric names and label values used in `exprs`;
/// returns the names used.
fn check_exprs(what: &str, exprs: &[String]) -> BTreeSet<String> {
    let exported = exported_series();
    let outcomes = outcome_kinds();
    let rules = rule_names();
    let mut used = BTreeSet::new();
    let mut errors = Vec::new();
    for expr in exprs {
        let names = used_series(expr);
        for n in &names {
            if !exported.contains(n) {
                errors.push(format!("{what}: {n} is not exported by canaryd: {expr}"));
            }
        }
        for v in label_values(expr, "outcome") {
            if !outcomes.contains(&v) {
                errors.push(format!("{what}: outcome {v:?} does not exist: {expr}"));
            }
        }
        for v in label_values(expr, "rule") {
            if !rules.contains(&v) {
                errors.push(format!("{what}: no rule is named {v:?}: {expr}"));
            }
        }
        used.extend(names);
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    used
}

#[test]
fn prometheus_rules_alert_on_canaryd_with_metrics_it_exports() {
    let rule = one_of("deploy/monitoring", "PrometheusRule", "canaryd");
    let mut exprs = Vec::new();
    let mut alerts = BTreeMap::new();
    for group in rule["spec"]["groups"].as_array().unwrap() {
        for r in group["rules"].as_array().unwrap() {
            let expr = r["expr"].as_str().unwrap().to_string();
            assert!(
                ["critical", "warning"].contains(&r["labels"]["severity"].as_str().unwrap_or("")),
                "{}: severity",
                r["alert"]
            );
            if let Some(d) = r["for"].as_str() {
                assert!(
                    canaryd_rules::Span::parse(d).is_ok(),
                    "{}: for {d:?}",
                    r["alert"]
                );
            }
            alerts.insert(r["alert"].as_str().unwrap().to_string(), expr.clone());
            exprs.push(expr);
        }
    }
    let used = check_exprs("PrometheusRule", &exprs);
    for needed in [
        "canaryd_config_last_reload_successful",
        "canaryd_consumer_lag",
        "canaryd_events_dead_lettered_total",
        "canaryd_actions_total",
    ] {
        assert!(used.contains(needed), "no alert uses {needed}");
    }
    let actions = alerts
        .values()
        .find(|e| e.contains("canaryd_actions_total"))
        .unwrap();
    assert_eq!(
        label_values(actions, "outcome"),
        ["dead_lettered", "escalated", "failed"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    // The check itself fails on a wrong name.
    let wrong = std::panic::catch_unwind(|| {
        check_exprs("x", &["rate(canaryd_actions_totl[5m])".to_string()])
    });
    assert!(wrong.is_err());
}

#[test]
fn the_grafana_dashboard_uses_canaryds_metrics() {
    let text = read("deploy/monitoring/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let mut exprs = Vec::new();
    let mut titles = Vec::new();
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        titles.push(panel["title"].as_str().unwrap().to_string());
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "duplicate panel id"
        );
        for t in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    let used = check_exprs("grafana-dashboard.json", &exprs);
    assert!(used.contains("canaryd_alerts") && used.contains("canaryd_actions_total"));
    for want in ["Canary vs stable: performance", "fairness"] {
        assert!(
            titles.iter().any(|t| t.contains(want)),
            "no panel titled {want:?}: {titles:?}"
        );
    }
    // Fairness is the playbook's fairness rule.
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("Canary Fairness Violation"))
    );
    // The dashboard is shipped as a ConfigMap, unchanged.
    let cm = one_of(
        "deploy/monitoring",
        "ConfigMap",
        "canaryd-grafana-dashboard",
    );
    assert_eq!(cm["data"]["grafana-dashboard.json"], text.as_str());
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    // So are the playbook's two (their queries are checked against a live
    // daemon's /metrics in tests/tests/monitoring.rs).
    for (name, file) in [
        (
            "canaryd-model-performance-dashboard",
            "model-performance-dashboard.json",
        ),
        ("canaryd-fairness-dashboard", "fairness-dashboard.json"),
    ] {
        let cm = one_of("deploy/monitoring", "ConfigMap", name);
        let text = read(&format!("deploy/monitoring/{file}"));
        assert_eq!(cm["data"][file], text.as_str(), "{file}");
        assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    }
}

// ---------------------------------------------------------------------------
// Alertmanager

#[test]
fn alertmanager_routes_to_canaryds_webhook_with_auth() {
    let path = "deploy/alertmanager/canaryd-receiver.yaml";
    let am = yaml_file(path);
    let receiver = am["receivers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "canaryd")
        .unwrap_or_else(|| panic!("{path}: no canaryd receiver"));
    let hook = &receiver["webhook_configs"][0];
    let service = one_of("deploy/k8s/base", "Service", "canaryd");
    let want = format!(
        "http://{}.{}.svc:{}/api/v1/alertmanager",
        name(service),
        service["metadata"]["namespace"].as_str().unwrap(),
        service["spec"]["ports"][0]["port"]
    );
    assert_eq!(hook["url"], want.as_str());
    assert!(served_routes().contains("/api/v1/alertmanager"));
    assert_eq!(hook["send_resolved"], true);
    let auth = &hook["http_config"]["authorization"];
    assert_eq!(auth["type"], "Bearer");
    assert!(
        auth["credentials_file"].is_string(),
        "{path}: credentials_file"
    );
    assert!(auth.get("credentials").is_none(), "{path}: no inline token");
    let routed = am["route"]["routes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["receiver"] == "canaryd");
    assert!(routed, "{path}: no route to canaryd");
    // canaryd's webhook requires the bearer token.
    assert!(config_of("deploy/k8s/base")["http"]["auth"]["bearer"].is_object());

    // amtool (tests/run installs prometheus-alertmanager) validates it fully.
    match Command::new("amtool")
        .args(["check-config", repo(path).to_str().unwrap()])
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "amtool check-config {path}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("amtool not found ({e}); skipped amtool check-config"),
    }
}

// ---------------------------------------------------------------------------
// Dockerfile, statically (there is no container engine here)

struct Instruction {
    op: String,
    args: String,
}

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<Instruction> {
    let text = read("deploy/Dockerfile");
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        if let Some(part) = trimmed.strip_suffix('\\') {
            current.push_str(part);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (op, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push(Instruction {
            op: op.to_uppercase(),
            args: args.trim().to_string(),
        });
        current.clear();
    }
    out
}

#[test]
fn the_dockerfile_builds_the_workspace_binary_locked_and_runs_it_as_non_root() {
    let instructions = dockerfile();
    let froms: Vec<usize> = instructions
        .iter()
        .enumerate()
        .filter(|(_, i)| i.op == "FROM")
        .map(|(n, _)| n)
        .collect();
    assert!(froms.len() >= 2, "multi-stage");
    let build = &instructions[..*froms.last().unwrap()];
    let runtime = &instructions[*froms.last().unwrap()..];

    // The binary: the workspace's `canaryd` package, built --locked.
    let daemon_manifest = read("daemon/Cargo.toml");
    assert!(daemon_manifest.contains("name = \"canaryd\""));
    assert!(
        read("Cargo.toml").contains("\"daemon\""),
        "daemon is a workspace member"
    );
    let cargo = build
        .iter()
        .find(|i| i.op == "RUN" && i.args.contains("cargo build"))
        .expect("a RUN cargo build");
    let words: Vec<&str> = cargo.args.split_whitespace().collect();
    assert!(
        words.contains(&"--locked"),
        "cargo build --locked: {}",
        cargo.args
    );
    assert!(words.contains(&"--release"), "{}", cargo.args);
    assert!(
        words.windows(2).any(|w| w == ["-p", "canaryd"]),
        "-p canaryd: {}",
        cargo.args
    );
    assert!(
        cargo.args.contains("target/release/canaryd"),
        "{}",
        cargo.args
    );

    // The runtime: no shell commands, a numeric non-root user matching the
    // pods' runAsUser, the binary as the exec-form entrypoint.
    let base = &runtime[0].args;
    assert!(
        runtime.iter().all(|i| i.op != "RUN"),
        "the runtime stage runs nothing: it has no shell"
    );
    if build[0].args.contains("bookworm") {
        assert!(
            base.contains("debian12"),
            "the builder's glibc (bookworm) matches the runtime"
        );
    }
    let user = runtime
        .iter()
        .rev()
        .find(|i| i.op == "USER")
        .expect("a USER in the runtime stage");
    let uid: u64 = user
        .args
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("USER {} must be numeric for runAsNonRoot", user.args));
    assert_ne!(uid, 0, "non-root USER");
    for dir in DEPLOYMENTS {
        assert_eq!(
            pod_spec(deployment(dir))["securityContext"]["runAsUser"],
            uid,
            "{dir}: runAsUser matches the image's USER"
        );
    }
    let copy = runtime
        .iter()
        .find(|i| i.op == "COPY" && i.args.starts_with("--from="))
        .expect("COPY --from the builder");
    let dest = copy.args.split_whitespace().last().unwrap();
    let entrypoint = runtime
        .iter()
        .find(|i| i.op == "ENTRYPOINT")
        .expect("an ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(&entrypoint.args)
        .unwrap_or_else(|_| panic!("exec-form ENTRYPOINT: {}", entrypoint.args));
    assert_eq!(argv[0], dest, "the entrypoint is the copied binary");
    assert_eq!(argv[1..], ["run", "--config", "/etc/canaryd/canaryd.yaml"]);
    let expose = runtime.iter().find(|i| i.op == "EXPOSE").expect("EXPOSE");
    assert_eq!(
        expose.args,
        canaryd::server::HttpConfig::default()
            .listen
            .port()
            .to_string()
    );
    // The args the Deployment appends are flags `canaryd run` takes.
    for dir in DEPLOYMENTS {
        let args: Vec<String> =
            serde_json::from_value(container(deployment(dir))["args"].clone()).unwrap();
        let mut argv = argv.clone();
        argv.extend(args);
        let parsed = <canaryd::cli::Cli as clap::Parser>::try_parse_from(&argv);
        assert!(parsed.is_ok(), "{dir}: {argv:?}: {:?}", parsed.err());
        // The other replicas reach this one where its HTTP server listens.
        let advertise = argv
            .iter()
            .position(|a| a == "--advertise")
            .and_then(|i| argv.get(i + 1))
            .unwrap_or_else(|| panic!("{dir}: no --advertise in {argv:?}"));
        assert_eq!(
            advertise.rsplit_once(':').map(|(_, port)| port),
            Some(expose.args.as_str()),
            "{dir}: --advertise {advertise} names the HTTP port"
        );
    }
}
