//! A small etcd v3 client over etcd's JSON gateway (`/v3/kv/*`, `/v3/watch`).
//!
//! Why the gateway and not gRPC: every etcd 3.x server serves it on the
//! client port, and it needs no generated code, so the workspace builds on
//! an air-gapped build host without `protoc`. The gateway speaks the same
//! protobuf messages as JSON (bytes as base64, 64-bit integers as strings,
//! zero values omitted), which is all the upgrade and the plan store need:
//! ranges, puts, deletes, transactions with compare guards, and watches.
//!
//! Requests go to the first endpoint that answers; a connection failure
//! moves on to the next, so a client given every member's address keeps
//! working while a member is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdError {
    /// No endpoint answered.
    #[error("etcd is unavailable at {endpoints}: {reason}")]
    Unavailable {
        /// The endpoints tried, comma-separated.
        endpoints: String,
        /// The last failure.
        reason: String,
    },
    /// etcd answered with an error.
    #[error("etcd at {endpoint} refused {what}: {message}")]
    Server {
        /// The endpoint.
        endpoint: String,
        /// The request (`put /a/b`).
        what: String,
        /// etcd's message.
        message: String,
    },
    /// etcd's answer could not be understood.
    #[error("etcd at {endpoint} sent an answer to {what} that cannot be read: {reason}")]
    Decode {
        /// The endpoint.
        endpoint: String,
        /// The request.
        what: String,
        /// Why.
        reason: String,
    },
    /// The client was given no endpoint or a malformed one.
    #[error("bad etcd endpoint {0:?}: give URLs such as http://127.0.0.1:2379")]
    BadEndpoint(String),
}

/// Result of client calls.
pub type EtcdResult<T> = Result<T, EtcdError>;

/// A key and its value with etcd's revisions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Vec<u8>,
    /// Revision of the key's creation.
    pub create_revision: i64,
    /// Revision of the key's last change.
    pub mod_revision: i64,
    /// Number of changes since creation (1 for a new key).
    pub version: i64,
}

impl KeyValue {
    /// The value as UTF-8 text (lossy).
    pub fn value_str(&self) -> String {
        String::from_utf8_lossy(&self.value).into_owned()
    }
}

/// A guard of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key's last change has this revision (0: absent).
    ModRevision(String, i64),
    /// The key holds this value.
    Value(String, Vec<u8>),
}

/// An operation inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOp {
    /// Writes a key.
    Put(String, Vec<u8>),
    /// Reads a key.
    Get(String),
    /// Deletes a key.
    Delete(String),
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnResult {
    /// Whether every guard held (the success branch ran).
    pub succeeded: bool,
    /// The store revision after the transaction.
    pub revision: i64,
    /// For each `Get` of the branch that ran, in order, the key if present.
    pub gets: Vec<Option<KeyValue>>,
}

/// The status of one member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberStatus {
    /// The endpoint asked.
    pub endpoint: String,
    /// The server version (`3.4.23`).
    pub version: String,
    /// The member's id.
    pub member_id: u64,
    /// The leader's id (0: no leader).
    pub leader: u64,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was written.
    Put(KeyValue),
    /// A key was deleted (revision of the deletion).
    Delete {
        /// The key.
        key: String,
        /// The revision.
        mod_revision: i64,
    },
}

/// An etcd v3 client (cheap to clone).
#[derive(Debug, Clone)]
pub struct EtcdClient {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    endpoints: Vec<String>,
    http: reqwest::Client,
    preferred: AtomicUsize,
}

fn b64(s: &[u8]) -> String {
    B64.encode(s)
}

/// The end of the range of keys starting with `prefix`.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Every byte 0xff (or empty prefix): to the end of the key space.
    vec![0]
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

#[derive(Deserialize)]
struct RawKv {
    key: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    create_revision: Value,
    #[serde(default)]
    mod_revision: Value,
    #[serde(default)]
    version: Value,
}

impl RawKv {
    fn decode(self) -> Result<KeyValue, String> {
        let key = B64.decode(&self.key).map_err(|e| e.to_string())?;
        let value = match self.value {
            Some(v) => B64.decode(v).map_err(|e| e.to_string())?,
            None => Vec::new(),
        };
        Ok(KeyValue {
            key: String::from_utf8(key).map_err(|e| e.to_string())?,
            value,
            create_revision: int(&self.create_revision),
            mod_revision: int(&self.mod_revision),
            version: int(&self.version),
        })
    }
}

fn kvs(v: &Value) -> Result<Vec<KeyValue>, String> {
    match v.get("kvs") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(list) => {
            let raw: Vec<RawKv> =
                serde_json::from_value(list.clone()).map_err(|e| e.to_string())?;
            raw.into_iter().map(RawKv::decode).collect()
        }
    }
}

fn header_revision(v: &Value) -> i64 {
    v.get("header")
        .and_then(|h| h.get("revision"))
        .map(int)
        .unwrap_or(0)
}

impl EtcdClient {
    /// A client of the members at `endpoints` (`http://host:port`), with a
    /// per-request timeout.
    pub fn new<I, S>(endpoints: I, timeout: Duration) -> EtcdResult<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut list = Vec::new();
        for e in endpoints {
            let e: String = e.into();
            let e = e.trim().trim_end_matches('/').to_string();
            if !(e.starts_with("http://") || e.starts_with("https://")) || e.len() < 10 {
                return Err(EtcdError::BadEndpoint(e));
            }
            list.push(e);
        }
        if list.is_empty() {
            return Err(EtcdError::BadEndpoint(String::new()));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(timeout)
            .no_proxy()
            .build()
            .map_err(|e| EtcdError::Unavailable {
                endpoints: list.join(","),
                reason: e.to_string(),
            })?;
        Ok(EtcdClient {
            inner: Arc::new(Inner {
                endpoints: list,
                http,
                preferred: AtomicUsize::new(0),
            }),
        })
    }

    /// Parses a comma-separated endpoint list (`--etcd-endpoints`).
    pub fn from_list(list: &str, timeout: Duration) -> EtcdResult<Self> {
        EtcdClient::new(list.split(',').filter(|s| !s.trim().is_empty()), timeout)
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.inner.endpoints
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// Posts `body` to `path`, trying each endpoint from the preferred one.
    async fn call(&self, path: &str, what: &str, body: Value) -> EtcdResult<(String, Value)> {
        let n = self.inner.endpoints.len();
        let start = self.inner.preferred.load(Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..n {
            let i = (start + k) % n;
            let endpoint = &self.inner.endpoints[i];
            let resp = self
                .inner
                .http
                .post(format!("{endpoint}{path}"))
                .timeout(self.timeout())
                .json(&body)
                .send()
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let status = resp.status();
            let text = match resp.text().await {
                Ok(t) => t,
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let v: Value = serde_json::from_str(&text).map_err(|e| EtcdError::Decode {
                endpoint: endpoint.clone(),
                what: what.to_string(),
                reason: format!("{e} (status {status})"),
            })?;
            if !status.is_success() || v.get("error").is_some() {
                let message = v
                    .get("message")
                    .or_else(|| v.get("error"))
                    .and_then(Value::as_str)
                    .unwrap_or("unknown error")
                    .to_string();
                // A member without quorum or a leader: try the next one.
                if message.contains("no leader")
                    || message.contains("timed out")
                    || message.contains("not capable")
                    || message.contains("stopped")
                {
                    last = message;
                    continue;
                }
                return Err(EtcdError::Server {
                    endpoint: endpoint.clone(),
                    what: what.to_string(),
                    message,
                });
            }
            self.inner.preferred.store(i, Ordering::Relaxed);
            return Ok((endpoint.clone(), v));
        }
        Err(EtcdError::Unavailable {
            endpoints: self.inner.endpoints.join(","),
            reason: last,
        })
    }

    fn decode_err(endpoint: String, what: &str) -> impl FnOnce(String) -> EtcdError + '_ {
        move |reason| EtcdError::Decode {
            endpoint,
            what: what.to_string(),
            reason,
        }
    }

    /// One key.
    pub async fn get(&self, key: &str) -> EtcdResult<Option<KeyValue>> {
        let what = format!("get {key}");
        let (ep, v) = self
            .call("/v3/kv/range", &what, json!({ "key": b64(key.as_bytes()) }))
            .await?;
        Ok(kvs(&v)
            .map_err(Self::decode_err(ep, &what))?
            .into_iter()
            .next())
    }

    /// Every key starting with `prefix` (the empty prefix: every key), in
    /// key order (read in pages from one snapshot, so large ranges do not
    /// make one huge answer).
    pub async fn range_prefix(&self, prefix: &str) -> EtcdResult<Vec<KeyValue>> {
        const PAGE: usize = 2000;
        let what = format!("range {prefix}");
        let end = b64(&prefix_end(prefix.as_bytes()));
        // etcd refuses an empty key: the whole key space starts at "\0".
        let mut from = if prefix.is_empty() {
            vec![0]
        } else {
            prefix.as_bytes().to_vec()
        };
        let mut out = Vec::new();
        let mut revision = 0i64;
        loop {
            let mut body = json!({
                "key": b64(&from),
                "range_end": end,
                "limit": PAGE.to_string(),
            });
            if revision > 0 {
                // Later pages read the same snapshot as the first one.
                body["revision"] = json!(revision.to_string());
            }
            let (ep, v) = self.call("/v3/kv/range", &what, body).await?;
            if revision == 0 {
                revision = header_revision(&v);
            }
            let page = kvs(&v).map_err(Self::decode_err(ep, &what))?;
            let more = v.get("more").and_then(Value::as_bool).unwrap_or(false);
            let got = page.len();
            if let Some(last) = page.last() {
                from = last.key.as_bytes().to_vec();
                from.push(0);
            }
            out.extend(page);
            if !more || got == 0 {
                return Ok(out);
            }
        }
    }

    /// Writes a key; returns the store revision.
    pub async fn put(&self, key: &str, value: &[u8]) -> EtcdResult<i64> {
        let what = format!("put {key}");
        let (_, v) = self
            .call(
                "/v3/kv/put",
                &what,
                json!({ "key": b64(key.as_bytes()), "value": b64(value) }),
            )
            .await?;
        Ok(header_revision(&v))
    }

    /// Deletes a key; returns whether it existed.
    pub async fn delete(&self, key: &str) -> EtcdResult<bool> {
        let what = format!("delete {key}");
        let (_, v) = self
            .call(
                "/v3/kv/deleterange",
                &what,
                json!({ "key": b64(key.as_bytes()) }),
            )
            .await?;
        Ok(v.get("deleted").map(int).unwrap_or(0) > 0)
    }

    /// Deletes every key starting with `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> EtcdResult<u64> {
        let what = format!("delete {prefix}*");
        let (_, v) = self
            .call(
                "/v3/kv/deleterange",
                &what,
                json!({
                    "key": b64(prefix.as_bytes()),
                    "range_end": b64(&prefix_end(prefix.as_bytes())),
                }),
            )
            .await?;
        Ok(v.get("deleted").map(int).unwrap_or(0) as u64)
    }

    /// Runs `success` if every guard holds, `failure` otherwise, atomically.
    pub async fn txn(
        &self,
        compare: &[Compare],
        success: &[TxnOp],
        failure: &[TxnOp],
    ) -> EtcdResult<TxnResult> {
        fn cmp(c: &Compare) -> Value {
            match c {
                Compare::Absent(k) => json!({
                    "key": b64(k.as_bytes()), "target": "CREATE", "result": "EQUAL",
                    "create_revision": "0",
                }),
                Compare::ModRevision(k, r) => json!({
                    "key": b64(k.as_bytes()), "target": "MOD", "result": "EQUAL",
                    "mod_revision": r.to_string(),
                }),
                Compare::Value(k, v) => json!({
                    "key": b64(k.as_bytes()), "target": "VALUE", "result": "EQUAL",
                    "value": b64(v),
                }),
            }
        }
        fn op(o: &TxnOp) -> Value {
            match o {
                TxnOp::Put(k, v) => {
                    json!({ "request_put": { "key": b64(k.as_bytes()), "value": b64(v) } })
                }
                TxnOp::Get(k) => json!({ "request_range": { "key": b64(k.as_bytes()) } }),
                TxnOp::Delete(k) => {
                    json!({ "request_delete_range": { "key": b64(k.as_bytes()) } })
                }
            }
        }
        let what = format!(
            "transaction on {}",
            success
                .iter()
                .map(|o| match o {
                    TxnOp::Put(k, _) | TxnOp::Get(k) | TxnOp::Delete(k) => k.as_str(),
                })
                .next()
                .unwrap_or("")
        );
        let body = json!({
            "compare": compare.iter().map(cmp).collect::<Vec<_>>(),
            "success": success.iter().map(op).collect::<Vec<_>>(),
            "failure": failure.iter().map(op).collect::<Vec<_>>(),
        });
        let (ep, v) = self.call("/v3/kv/txn", &what, body).await?;
        let succeeded = v.get("succeeded").and_then(Value::as_bool).unwrap_or(false);
        let mut gets = Vec::new();
        if let Some(Value::Array(responses)) = v.get("responses") {
            for r in responses {
                if let Some(range) = r.get("response_range") {
                    let found = kvs(range).map_err(Self::decode_err(ep.clone(), &what))?;
                    gets.push(found.into_iter().next());
                }
            }
        }
        Ok(TxnResult {
            succeeded,
            revision: header_revision(&v),
            gets,
        })
    }

    /// Whether the cluster answers a linearizable read through any endpoint
    /// (the equivalent of `etcdctl cluster-health` for our purposes).
    pub async fn healthy(&self) -> bool {
        self.call(
            "/v3/kv/range",
            "health check",
            json!({ "key": b64(b"health") }),
        )
        .await
        .is_ok()
    }

    /// The status of the member at one endpoint.
    pub async fn status(&self, endpoint: &str) -> EtcdResult<MemberStatus> {
        let client = EtcdClient::new([endpoint], self.timeout())?;
        let (ep, v) = client
            .call("/v3/maintenance/status", "status", json!({}))
            .await?;
        let member_id = v
            .get("header")
            .and_then(|h| h.get("member_id"))
            .map(int)
            .unwrap_or(0) as u64;
        Ok(MemberStatus {
            endpoint: ep,
            version: v
                .get("version")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            member_id,
            leader: v.get("leader").map(int).unwrap_or(0) as u64,
        })
    }

    /// Watches every key starting with `prefix` from `start_revision`
    /// (0: from now). The stream ends when the connection does; callers
    /// that need continuity resume from the last revision they saw + 1.
    pub async fn watch_prefix(
        &self,
        prefix: &str,
        start_revision: i64,
    ) -> EtcdResult<impl Stream<Item = EtcdResult<WatchEvent>> + Send + 'static + use<>> {
        let mut create = json!({
            "key": b64(prefix.as_bytes()),
            "range_end": b64(&prefix_end(prefix.as_bytes())),
        });
        if start_revision > 0 {
            create["start_revision"] = json!(start_revision.to_string());
        }
        let body = json!({ "create_request": create });
        let n = self.inner.endpoints.len();
        let start = self.inner.preferred.load(Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..n {
            let endpoint = self.inner.endpoints[(start + k) % n].clone();
            let resp = self
                .inner
                .http
                .post(format!("{endpoint}/v3/watch"))
                .json(&body)
                .send()
                .await;
            let resp = match resp {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    last = format!("status {}", r.status());
                    continue;
                }
                Err(e) => {
                    last = e.to_string();
                    continue;
                }
            };
            let what = format!("watch {prefix}");
            let bytes = resp.bytes_stream();
            let stream = futures::stream::unfold(
                (bytes, Vec::<u8>::new(), std::collections::VecDeque::new()),
                move |(mut bytes, mut buf, mut pending)| {
                    let endpoint = endpoint.clone();
                    let what = what.clone();
                    async move {
                        loop {
                            if let Some(ev) = pending.pop_front() {
                                return Some((ev, (bytes, buf, pending)));
                            }
                            // Parse every complete JSON message in the buffer.
                            let mut consumed = 0;
                            {
                                let mut it =
                                    serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
                                loop {
                                    match it.next() {
                                        Some(Ok(msg)) => {
                                            consumed = it.byte_offset();
                                            for ev in watch_events(&msg, &endpoint, &what) {
                                                pending.push_back(ev);
                                            }
                                        }
                                        Some(Err(e)) if e.is_eof() => break,
                                        Some(Err(e)) => {
                                            pending.push_back(Err(EtcdError::Decode {
                                                endpoint: endpoint.clone(),
                                                what: what.clone(),
                                                reason: e.to_string(),
                                            }));
                                            consumed = buf.len();
                                            break;
                                        }
                                        None => break,
                                    }
                                }
                            }
                            buf.drain(..consumed);
                            if !pending.is_empty() {
                                continue;
                            }
                            match bytes.next().await {
                                Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                                Some(Err(e)) => {
                                    let err = EtcdError::Unavailable {
                                        endpoints: endpoint.clone(),
                                        reason: e.to_string(),
                                    };
                                    return Some((Err(err), (bytes, Vec::new(), pending)));
                                }
                                None => return None,
                            }
                        }
                    }
                },
            );
            return Ok(stream);
        }
        Err(EtcdError::Unavailable {
            endpoints: self.inner.endpoints.join(","),
            reason: last,
        })
    }
}

fn watch_events(msg: &Value, endpoint: &str, what: &str) -> Vec<EtcdResult<WatchEvent>> {
    let result = msg.get("result").unwrap_or(msg);
    let Some(Value::Array(events)) = result.get("events") else {
        return Vec::new();
    };
    events
        .iter()
        .map(|e| {
            let raw: RawKv = serde_json::from_value(e.get("kv").cloned().unwrap_or(Value::Null))
                .map_err(|err| err.to_string())
                .map_err(|reason| EtcdError::Decode {
                    endpoint: endpoint.to_string(),
                    what: what.to_string(),
                    reason,
                })?;
            let kv = raw.decode().map_err(|reason| EtcdError::Decode {
                endpoint: endpoint.to_string(),
                what: what.to_string(),
                reason,
            })?;
            Ok(match e.get("type").and_then(Value::as_str) {
                Some("DELETE") => WatchEvent::Delete {
                    key: kv.key,
                    mod_revision: kv.mod_revision,
                },
                _ => WatchEvent::Put(kv),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn endpoints_must_be_urls() {
        assert!(EtcdClient::from_list("127.0.0.1:2379", Duration::from_secs(1)).is_err());
        assert!(EtcdClient::from_list("", Duration::from_secs(1)).is_err());
        let c = EtcdClient::from_list(
            "http://127.0.0.1:2379, http://127.0.0.1:22379/",
            Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            c.endpoints(),
            ["http://127.0.0.1:2379", "http://127.0.0.1:22379"]
        );
    }

    #[test]
    fn decodes_gateway_key_values() {
        let v = json!({"kvs":[{"key":"Zm9v","create_revision":"2","mod_revision":"3","version":"2","value":"YmFy"}]});
        let got = kvs(&v).unwrap();
        assert_eq!(got[0].key, "foo");
        assert_eq!(got[0].value_str(), "bar");
        assert_eq!((got[0].create_revision, got[0].mod_revision), (2, 3));
        // An empty value is omitted by the gateway.
        let v = json!({"kvs":[{"key":"Zm9v"}]});
        assert!(kvs(&v).unwrap()[0].value.is_empty());
    }
}
