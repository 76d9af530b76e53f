//! An in-process fake Kubernetes API server for the tests.
//!
//! It serves plain HTTP on `127.0.0.1:<random port>` and keeps objects as
//! JSON (nodes, pods, PodDisruptionBudgets, endpoints, ConfigMaps,
//! ClusterRoles/Bindings, Jobs) with resource versions and uids, pod logs,
//! and a record of every request (method, path, query, content type, body).
//!
//! It understands what the backend sends: list (field selectors
//! `spec.nodeName`/`metadata.name`, equality label selectors), get, create
//! (409 AlreadyExists), replace (409 on a stale `resourceVersion`), JSON
//! merge patch (409 on a stale `metadata.resourceVersion`), delete (with
//! preconditions), the pod `eviction` and `log` subresources. Jobs "run"
//! when created: they get a pod with logs and complete (or fail) after a
//! scripted number of polls.
//!
//! Scripted faults: evictions answered 429 N times or forever, evictions
//! accepted while the pod stays (or is replaced with a new uid),
//! concurrent writers that change a node just before the next patch (so
//! that the patch meets a 409 Conflict), and an unavailable API server:
//! the next K requests matching a method and a path substring answered
//! with a status (a `Status` body, nothing done), or their connection
//! closed without an answer, before or after the request is applied
//! ([`FakeApi::fail_next`], [`FakeApi::drop_next`],
//! [`FakeApi::drop_answer_next`], [`FakeApi::stall_next`]). Failed requests are recorded like any
//! other, so that tests can count attempts.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gravity_kube::{KubeBackend, KubeOptions};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string.
    pub query: String,
    /// The content type, if any.
    pub content_type: Option<String>,
    /// The body as JSON (`Null` if empty, a string if not JSON).
    pub body: Value,
}

impl Recorded {
    /// A decoded query parameter.
    pub fn param(&self, key: &str) -> Option<String> {
        form_urlencoded::parse(self.query.as_bytes())
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.into_owned())
    }

    /// `METHOD path`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// How a created Job behaves.
#[derive(Debug, Clone)]
pub struct JobScript {
    /// Whether it succeeds.
    pub succeed: bool,
    /// What its pod logs.
    pub logs: String,
    /// How many GETs of the job see it still running.
    pub polls: u32,
}

impl Default for JobScript {
    fn default() -> Self {
        JobScript {
            succeed: true,
            logs: "hook ran\n".into(),
            polls: 0,
        }
    }
}

/// Answer 429 (or fail) forever.
pub const FOREVER: u32 = u32::MAX;

/// What a scripted fault does to a request.
#[derive(Debug, Clone)]
enum FaultAction {
    /// Answer this status without doing anything.
    Answer {
        code: u16,
        reason: String,
        message: String,
    },
    /// Close the connection without answering, nothing done.
    Drop,
    /// Do the request, then close the connection without answering.
    DropAnswer,
    /// Hold the answer back this long (nothing done), then close the
    /// connection: a server that accepted the request and hangs.
    Stall(Duration),
}

/// A fault for the next `times` requests of `method` whose path contains
/// `path`.
#[derive(Debug, Clone)]
struct Fault {
    method: String,
    path: String,
    times: u32,
    action: FaultAction,
}

/// What the service does with a request.
enum Outcome {
    Answer(StatusCode, Value),
    Drop,
    Stall(Duration),
}

type Key = (String, String);

#[derive(Default)]
struct State {
    store: BTreeMap<String, BTreeMap<Key, Value>>,
    requests: Vec<Recorded>,
    rv: u64,
    uid: u64,
    logs: BTreeMap<(String, String, String), String>,
    evict_429: BTreeMap<String, u32>,
    evict_keeps: BTreeSet<String>,
    evict_replaces: BTreeSet<String>,
    node_writers: BTreeMap<String, VecDeque<Value>>,
    job_scripts: Vec<(String, JobScript)>,
    running_jobs: BTreeMap<Key, (u32, bool)>,
    faults: Vec<Fault>,
}

fn kind_of(plural: &str) -> (&'static str, &'static str) {
    match plural {
        "nodes" => ("v1", "Node"),
        "pods" => ("v1", "Pod"),
        "endpoints" => ("v1", "Endpoints"),
        "configmaps" => ("v1", "ConfigMap"),
        "poddisruptionbudgets" => ("policy/v1", "PodDisruptionBudget"),
        "clusterroles" => ("rbac.authorization.k8s.io/v1", "ClusterRole"),
        "clusterrolebindings" => ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
        "jobs" => ("batch/v1", "Job"),
        _ => ("v1", "Unknown"),
    }
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

fn status(code: StatusCode, reason: &str, message: &str) -> (StatusCode, Value) {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason,
            "code": code.as_u16(),
        }),
    )
}

fn success() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"})
}

fn name_of(v: &Value) -> String {
    v["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn labels_of(v: &Value) -> BTreeMap<String, String> {
    v["metadata"]["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Equality-based label selector terms: `k=v`, `k==v`, `k!=v`, `k`, `!k`.
fn label_match(selector: &str, labels: &BTreeMap<String, String>) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|t| {
        if let Some((k, v)) = t.split_once("!=") {
            labels.get(k).map(String::as_str) != Some(v)
        } else if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
            labels.get(k).map(String::as_str) == Some(v)
        } else if let Some(k) = t.strip_prefix('!') {
            !labels.contains_key(k)
        } else {
            labels.contains_key(t)
        }
    })
}

fn field_match(selector: &str, obj: &Value) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|t| {
        let (k, v) = t.split_once('=').unwrap_or((t, ""));
        let pointer = format!("/{}", k.replace('.', "/"));
        obj.pointer(&pointer)
            .and_then(Value::as_str)
            .unwrap_or_default()
            == v
    })
}

/// A parsed resource path.
struct Route {
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn route(path: &str) -> Option<Route> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match segs.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", _, _, rest @ ..] => rest,
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, rest) = rest.split_first()?;
    Some(Route {
        plural: plural.to_string(),
        namespace,
        name: rest.first().map(|s| s.to_string()),
        sub: rest.get(1).map(|s| s.to_string()),
    })
}

impl State {
    /// The action of the first scripted fault matching the request, used
    /// up by one.
    fn fault(&mut self, method: &str, path: &str) -> Option<FaultAction> {
        let f = self
            .faults
            .iter_mut()
            .find(|f| f.times > 0 && f.method == method && path.contains(&f.path))?;
        if f.times != FOREVER {
            f.times -= 1;
        }
        Some(f.action.clone())
    }

    fn next_rv(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn next_uid(&mut self) -> String {
        self.uid += 1;
        format!("00000000-0000-4000-8000-{:012}", self.uid)
    }

    fn coll(&mut self, plural: &str) -> &mut BTreeMap<Key, Value> {
        self.store.entry(plural.to_string()).or_default()
    }

    /// Stores a new object: fills kind, uid, resourceVersion, timestamp.
    fn insert(&mut self, plural: &str, ns: Option<&str>, mut obj: Value) -> Value {
        let (api_version, kind) = kind_of(plural);
        obj["apiVersion"] = json!(api_version);
        obj["kind"] = json!(kind);
        if !obj["metadata"].is_object() {
            obj["metadata"] = json!({});
        }
        if let Some(ns) = ns {
            obj["metadata"]["namespace"] = json!(ns);
        }
        obj["metadata"]["uid"] = json!(self.next_uid());
        obj["metadata"]["resourceVersion"] = json!(self.next_rv());
        obj["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        let key = (ns.unwrap_or_default().to_string(), name_of(&obj));
        self.coll(plural).insert(key, obj.clone());
        obj
    }

    fn handle(
        &mut self,
        method: &str,
        path: &str,
        query: &str,
        body: &Value,
        ctype: Option<&str>,
    ) -> (StatusCode, Value) {
        let Some(r) = route(path) else {
            return status(
                StatusCode::NOT_FOUND,
                "NotFound",
                &format!("no route {path}"),
            );
        };
        let params: BTreeMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let ns = r.namespace.clone().unwrap_or_default();
        match (method, r.name.clone(), r.sub.as_deref()) {
            ("GET", None, _) => self.list(&r, &params),
            ("POST", None, _) => self.create(&r, body),
            ("GET", Some(name), None) => self.get(&r.plural, &ns, &name),
            ("GET", Some(name), Some("log")) => {
                let c = params.get("container").cloned().unwrap_or_default();
                match self.logs.get(&(ns.clone(), name.clone(), c)) {
                    Some(l) => (StatusCode::OK, Value::String(l.clone())),
                    None => status(StatusCode::NOT_FOUND, "NotFound", "no logs"),
                }
            }
            ("POST", Some(name), Some("eviction")) => self.evict(&ns, &name),
            ("PUT", Some(name), None) => self.replace(&r.plural, &ns, &name, body),
            ("PATCH", Some(name), None) => {
                if ctype != Some("application/merge-patch+json") {
                    return status(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        "UnsupportedMediaType",
                        "merge patches only",
                    );
                }
                self.patch(&r.plural, &ns, &name, body)
            }
            ("DELETE", Some(name), None) => self.delete(&r.plural, &ns, &name, body),
            _ => status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", path),
        }
    }

    fn list(&mut self, r: &Route, params: &BTreeMap<String, String>) -> (StatusCode, Value) {
        let (api_version, kind) = kind_of(&r.plural);
        let fields = params.get("fieldSelector").cloned().unwrap_or_default();
        let labels = params.get("labelSelector").cloned().unwrap_or_default();
        let items: Vec<Value> = self
            .coll(&r.plural)
            .iter()
            .filter(|((ns, _), _)| r.namespace.as_ref().is_none_or(|n| n == ns))
            .map(|(_, v)| v)
            .filter(|v| field_match(&fields, v) && label_match(&labels, &labels_of(v)))
            .cloned()
            .collect();
        (
            StatusCode::OK,
            json!({
                "apiVersion": api_version, "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": self.rv.to_string()}, "items": items,
            }),
        )
    }

    fn get(&mut self, plural: &str, ns: &str, name: &str) -> (StatusCode, Value) {
        let key = (ns.to_string(), name.to_string());
        if plural == "jobs" {
            self.advance_job(&key);
        }
        match self.coll(plural).get(&key) {
            Some(v) => (StatusCode::OK, v.clone()),
            None => not_found(plural, name),
        }
    }

    fn create(&mut self, r: &Route, body: &Value) -> (StatusCode, Value) {
        let name = name_of(body);
        let ns = r.namespace.clone().unwrap_or_default();
        if name.is_empty() {
            return status(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Invalid",
                "metadata.name is required",
            );
        }
        if self
            .coll(&r.plural)
            .contains_key(&(ns.clone(), name.clone()))
        {
            return status(
                StatusCode::CONFLICT,
                "AlreadyExists",
                &format!("{} \"{name}\" already exists", r.plural),
            );
        }
        let mut obj = self.insert(&r.plural, r.namespace.as_deref(), body.clone());
        if r.plural == "jobs" {
            obj = self.start_job(&ns, obj);
        }
        (StatusCode::CREATED, obj)
    }

    fn start_job(&mut self, ns: &str, mut job: Value) -> Value {
        let name = name_of(&job);
        let uid = job["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let script = self
            .job_scripts
            .iter()
            .find(|(p, _)| name.starts_with(p.as_str()))
            .map(|(_, s)| s.clone())
            .unwrap_or_default();
        let selector = json!({"batch.kubernetes.io/controller-uid": uid});
        job["spec"]["selector"] = json!({"matchLabels": selector});
        let mut pod = job["spec"]["template"].clone();
        let pod_name = format!("{name}-x7k2p");
        pod["metadata"]["name"] = json!(pod_name);
        let mut labels = pod["metadata"]["labels"]
            .as_object()
            .cloned()
            .unwrap_or_default();
        labels.insert("batch.kubernetes.io/controller-uid".into(), json!(uid));
        labels.insert("job-name".into(), json!(name));
        pod["metadata"]["labels"] = Value::Object(labels);
        let containers: Vec<String> = pod["spec"]["containers"]
            .as_array()
            .map(|cs| cs.iter().map(name_of_container).collect())
            .unwrap_or_default();
        self.insert("pods", Some(ns), pod);
        for c in containers {
            self.logs
                .insert((ns.to_string(), pod_name.clone(), c), script.logs.clone());
        }
        let key = (ns.to_string(), name);
        self.running_jobs
            .insert(key.clone(), (script.polls, script.succeed));
        self.coll("jobs").insert(key.clone(), job);
        self.advance_job_by(&key, 0);
        self.coll("jobs")[&key].clone()
    }

    fn advance_job(&mut self, key: &Key) {
        self.advance_job_by(key, 1);
    }

    fn advance_job_by(&mut self, key: &Key, step: u32) {
        let Some((left, succeed)) = self.running_jobs.get(key).copied() else {
            return;
        };
        let left = left.saturating_sub(step);
        let st = if left > 0 {
            self.running_jobs.insert(key.clone(), (left, succeed));
            json!({"active": 1})
        } else {
            self.running_jobs.remove(key);
            if succeed {
                json!({"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]})
            } else {
                json!({"failed": 1, "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]})
            }
        };
        if let Some(j) = self.coll("jobs").get_mut(key) {
            j["status"] = st;
        }
    }

    fn evict(&mut self, ns: &str, name: &str) -> (StatusCode, Value) {
        let key = (ns.to_string(), name.to_string());
        let pod_key = format!("{ns}/{name}");
        if !self.coll("pods").contains_key(&key) {
            return not_found("pods", name);
        }
        if let Some(n) = self.evict_429.get_mut(&pod_key)
            && *n > 0
        {
            if *n != FOREVER {
                *n -= 1;
            }
            return status(
                StatusCode::TOO_MANY_REQUESTS,
                "TooManyRequests",
                "Cannot evict pod as it would violate the pod's disruption budget.",
            );
        }
        if self.evict_keeps.contains(&pod_key) {
            return (StatusCode::CREATED, success());
        }
        let pod = self.coll("pods").remove(&key).expect("present");
        if self.evict_replaces.contains(&pod_key) {
            self.insert("pods", Some(ns), pod);
        }
        (StatusCode::CREATED, success())
    }

    fn replace(&mut self, plural: &str, ns: &str, name: &str, body: &Value) -> (StatusCode, Value) {
        let key = (ns.to_string(), name.to_string());
        let cur = match self.guarded_current(plural, &key, body) {
            Ok(cur) => cur,
            Err(answer) => return answer,
        };
        let mut obj = body.clone();
        obj["metadata"]["uid"] = cur["metadata"]["uid"].clone();
        obj["metadata"]["resourceVersion"] = json!(self.next_rv());
        self.coll(plural).insert(key, obj.clone());
        (StatusCode::OK, obj)
    }

    fn patch(&mut self, plural: &str, ns: &str, name: &str, body: &Value) -> (StatusCode, Value) {
        let key = (ns.to_string(), name.to_string());
        if plural == "nodes"
            && let Some(w) = self
                .node_writers
                .get_mut(name)
                .and_then(VecDeque::pop_front)
        {
            let rv = self.next_rv();
            if let Some(n) = self.coll("nodes").get_mut(&key) {
                merge(n, &w);
                n["metadata"]["resourceVersion"] = json!(rv);
            }
        }
        let cur = match self.guarded_current(plural, &key, body) {
            Ok(cur) => cur,
            Err(answer) => return answer,
        };
        let mut obj = cur;
        merge(&mut obj, body);
        obj["metadata"]["resourceVersion"] = json!(self.next_rv());
        self.coll(plural).insert(key, obj.clone());
        (StatusCode::OK, obj)
    }

    /// The stored object a replace or patch applies to, if it exists and
    /// the `metadata.resourceVersion` of `body` (when given) is its own;
    /// else the 404 or 409 answer.
    fn guarded_current(
        &mut self,
        plural: &str,
        key: &Key,
        body: &Value,
    ) -> Result<Value, (StatusCode, Value)> {
        let name = &key.1;
        let cur = self
            .coll(plural)
            .get(key)
            .cloned()
            .ok_or_else(|| not_found(plural, name))?;
        match body["metadata"]["resourceVersion"].as_str() {
            Some(rv) if Some(rv) != cur["metadata"]["resourceVersion"].as_str() => {
                Err(conflict(plural, name))
            }
            _ => Ok(cur),
        }
    }

    fn delete(&mut self, plural: &str, ns: &str, name: &str, body: &Value) -> (StatusCode, Value) {
        let key = (ns.to_string(), name.to_string());
        let Some(cur) = self.coll(plural).get(&key).cloned() else {
            return not_found(plural, name);
        };
        let pre = &body["preconditions"];
        for f in ["resourceVersion", "uid"] {
            if let Some(want) = pre[f].as_str()
                && Some(want) != cur["metadata"][f].as_str()
            {
                return conflict(plural, name);
            }
        }
        self.coll(plural).remove(&key);
        (StatusCode::OK, success())
    }
}

fn name_of_container(c: &Value) -> String {
    c["name"].as_str().unwrap_or_default().to_string()
}

fn not_found(plural: &str, name: &str) -> (StatusCode, Value) {
    status(
        StatusCode::NOT_FOUND,
        "NotFound",
        &format!("{plural} \"{name}\" not found"),
    )
}

fn conflict(plural: &str, name: &str) -> (StatusCode, Value) {
    status(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
}

/// The fake API server; stops when dropped.
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let ctype = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    };
    let outcome = {
        let mut s = state.lock().unwrap();
        s.requests.push(Recorded {
            method: method.clone(),
            path: path.clone(),
            query: query.clone(),
            content_type: ctype.clone(),
            body: body.clone(),
        });
        match s.fault(&method, &path) {
            Some(FaultAction::Answer {
                code,
                reason,
                message,
            }) => Outcome::Answer(
                StatusCode::from_u16(code).expect("a valid status code"),
                json!({
                    "kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": message, "reason": reason,
                    "code": code,
                }),
            ),
            Some(FaultAction::Drop) => Outcome::Drop,
            Some(FaultAction::Stall(d)) => Outcome::Stall(d),
            Some(FaultAction::DropAnswer) => {
                s.handle(&method, &path, &query, &body, ctype.as_deref());
                Outcome::Drop
            }
            None => {
                let (code, out) = s.handle(&method, &path, &query, &body, ctype.as_deref());
                Outcome::Answer(code, out)
            }
        }
    };
    // An error from the service makes hyper close the connection without
    // an answer.
    let (code, out) = match outcome {
        Outcome::Answer(code, out) => (code, out),
        Outcome::Stall(d) => {
            tokio::time::sleep(d).await;
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "scripted fault: stalled",
            ));
        }
        Outcome::Drop => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionAborted,
                "scripted fault: connection dropped",
            ));
        }
    };
    let (ct, bytes) = match out {
        Value::String(text) if code.is_success() => ("text/plain", Bytes::from(text)),
        v => (
            "application/json",
            Bytes::from(serde_json::to_vec(&v).unwrap()),
        ),
    };
    Ok(Response::builder()
        .status(code)
        .header(hyper::header::CONTENT_TYPE, ct)
        .body(Full::new(bytes))
        .unwrap())
}

impl FakeApi {
    /// Starts a fake on a random loopback port.
    pub async fn start() -> FakeApi {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = st.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| serve(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        FakeApi { state, addr, task }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Options with short waits for tests: transient failures are retried
    /// for 2 s, from 5 ms to 50 ms apart.
    pub fn fast_options() -> KubeOptions {
        KubeOptions {
            poll_interval: Duration::from_millis(10),
            eviction_backoff: Duration::from_millis(10),
            eviction_backoff_max: Duration::from_millis(40),
            transient_budget: Duration::from_secs(2),
            transient_backoff: Duration::from_millis(5),
            transient_backoff_max: Duration::from_millis(50),
            request_timeout: Some(Duration::from_secs(1)),
            hook_timeout: Duration::from_secs(5),
            ..KubeOptions::default()
        }
    }

    /// A backend talking to this fake.
    pub fn backend(&self, options: KubeOptions) -> KubeBackend {
        let config = kube::Config::new(self.url().parse().unwrap());
        KubeBackend::from_config(config, options).unwrap()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// Stores an object as is (kind, uid, resourceVersion filled in).
    pub fn put(&self, plural: &str, namespace: Option<&str>, obj: Value) -> Value {
        self.with(|s| s.insert(plural, namespace, obj))
    }

    /// An object, if present.
    pub fn get(&self, plural: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        self.with(|s| {
            s.coll(plural)
                .get(&(namespace.unwrap_or_default().to_string(), name.to_string()))
                .cloned()
        })
    }

    /// Names (`namespace/name`, or `name`) of the objects of a kind.
    pub fn names(&self, plural: &str) -> Vec<String> {
        self.with(|s| {
            s.coll(plural)
                .keys()
                .map(|(ns, n)| {
                    if ns.is_empty() {
                        n.clone()
                    } else {
                        format!("{ns}/{n}")
                    }
                })
                .collect()
        })
    }

    /// A ready node with labels.
    pub fn add_node(&self, name: &str, labels: &[(&str, &str)]) -> Value {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        self.put(
            "nodes",
            None,
            json!({
                "metadata": {"name": name, "labels": labels},
                "spec": {},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
            }),
        )
    }

    /// A node object.
    pub fn node(&self, name: &str) -> Value {
        self.get("nodes", None, name).expect("node exists")
    }

    /// A pod on `node`; `owner` is the kind of its controller, if any.
    pub fn add_pod(
        &self,
        ns: &str,
        name: &str,
        node: &str,
        labels: &[(&str, &str)],
        owner: Option<&str>,
        mirror: bool,
    ) -> Value {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let mut pod = json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
        });
        if let Some(kind) = owner {
            pod["metadata"]["ownerReferences"] = json!([{
                "apiVersion": "apps/v1", "kind": kind, "name": format!("{name}-owner"),
                "uid": "11111111-0000-4000-8000-000000000000", "controller": true,
            }]);
        }
        if mirror {
            pod["metadata"]["annotations"] = json!({"kubernetes.io/config.mirror": "abc"});
        }
        self.put("pods", Some(ns), pod)
    }

    /// A policy/v1 PodDisruptionBudget selecting `match_labels`.
    pub fn add_pdb(&self, ns: &str, name: &str, match_labels: &[(&str, &str)]) {
        let labels: BTreeMap<&str, &str> = match_labels.iter().copied().collect();
        self.put(
            "poddisruptionbudgets",
            Some(ns),
            json!({
                "metadata": {"name": name},
                "spec": {"minAvailable": 1, "selector": {"matchLabels": labels}},
            }),
        );
    }

    /// Endpoints in `ns` with ready addresses `(ip, nodeName)`.
    pub fn add_endpoints(
        &self,
        ns: &str,
        name: &str,
        labels: &[(&str, &str)],
        addrs: &[(&str, Option<&str>)],
    ) {
        let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
        let addresses: Vec<Value> = addrs
            .iter()
            .map(|(ip, node)| match node {
                Some(n) => json!({"ip": ip, "nodeName": n}),
                None => json!({"ip": ip}),
            })
            .collect();
        self.put(
            "endpoints",
            Some(ns),
            json!({
                "metadata": {"name": name, "labels": labels},
                "subsets": [{"addresses": addresses, "ports": [{"port": 53}]}],
            }),
        );
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    /// The requests of `method` whose path ends with `suffix`.
    pub fn requests_of(&self, method: &str, suffix: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == method && r.path.ends_with(suffix))
            .collect()
    }

    /// The requests other than GETs (the writes).
    pub fn writes(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method != "GET")
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.with(|s| s.requests.clear());
    }

    /// Evictions of `ns/name` are answered 429 `n` times ([`FOREVER`]).
    pub fn evict_429(&self, pod: &str, n: u32) {
        self.with(|s| s.evict_429.insert(pod.to_string(), n));
    }

    /// Evictions of `ns/name` are accepted but the pod stays.
    pub fn evict_keeps_pod(&self, pod: &str) {
        self.with(|s| s.evict_keeps.insert(pod.to_string()));
    }

    /// Evictions of `ns/name` replace the pod (same name, new uid).
    pub fn evict_replaces_pod(&self, pod: &str) {
        self.with(|s| s.evict_replaces.insert(pod.to_string()));
    }

    /// Another writer applies `patch` to the node just before the next
    /// PATCH of it arrives (which then meets a stale resourceVersion).
    pub fn concurrent_node_write(&self, node: &str, patch: Value) {
        self.with(|s| {
            s.node_writers
                .entry(node.to_string())
                .or_default()
                .push_back(patch)
        });
    }

    /// The next `times` requests ([`FOREVER`]) of `method` whose path
    /// contains `path` are answered `code` with a `Status` body (reason
    /// from the code: `ServiceUnavailable`, `Timeout`, `InternalError`,
    /// ...) and not carried out. Faults are matched in the order they were
    /// scripted; the request log records the failed requests too.
    pub fn fail_next(&self, method: &str, path: &str, code: u16, times: u32) {
        let reason = match code {
            403 => "Forbidden",
            429 => "TooManyRequests",
            500 => "InternalError",
            502 => "BadGateway",
            503 => "ServiceUnavailable",
            504 => "Timeout",
            _ => "Failure",
        };
        let message = format!("scripted fault: {code} {reason}");
        self.fail_next_with(method, path, code, reason, &message, times);
    }

    /// [`FakeApi::fail_next`] with the `Status` reason and message given
    /// (say `InternalError`, `etcdserver: leader changed`).
    pub fn fail_next_with(
        &self,
        method: &str,
        path: &str,
        code: u16,
        reason: &str,
        message: &str,
        times: u32,
    ) {
        self.add_fault(
            method,
            path,
            times,
            FaultAction::Answer {
                code,
                reason: reason.into(),
                message: message.into(),
            },
        );
    }

    /// The next `times` requests of `method` whose path contains `path`
    /// are read, recorded and not carried out; their connection is closed
    /// without an answer.
    pub fn drop_next(&self, method: &str, path: &str, times: u32) {
        self.add_fault(method, path, times, FaultAction::Drop);
    }

    /// The next `times` requests of `method` whose path contains `path`
    /// are carried out, then their connection is closed without an answer
    /// (the client cannot know whether they were applied).
    pub fn drop_answer_next(&self, method: &str, path: &str, times: u32) {
        self.add_fault(method, path, times, FaultAction::DropAnswer);
    }

    /// The next `times` requests of `method` whose path contains `path`
    /// are read, recorded and not carried out; no answer comes for `for_`,
    /// then the connection is closed.
    pub fn stall_next(&self, method: &str, path: &str, for_: Duration, times: u32) {
        self.add_fault(method, path, times, FaultAction::Stall(for_));
    }

    fn add_fault(&self, method: &str, path: &str, times: u32, action: FaultAction) {
        self.with(|s| {
            s.faults.push(Fault {
                method: method.into(),
                path: path.into(),
                times,
                action,
            })
        });
    }

    /// Jobs whose name starts with `prefix` behave as `script`.
    pub fn script_job(&self, prefix: &str, script: JobScript) {
        self.with(|s| s.job_scripts.push((prefix.to_string(), script)));
    }
}

/// A hook Job manifest named `name` whose pod runs `containers` (the
/// fake "runs" it when created: see [`FakeApi::script_job`]).
pub fn hook_job(name: &str, containers: &[&str]) -> k8s_openapi::api::batch::v1::Job {
    let containers: Vec<Value> = containers
        .iter()
        .map(|c| json!({"name": c, "image": format!("{c}:1")}))
        .collect();
    serde_json::from_value(json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": containers,
        }}},
    }))
    .expect("a valid Job")
}
