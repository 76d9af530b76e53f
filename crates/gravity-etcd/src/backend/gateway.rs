//! The two gateway calls the backend needs beyond [`EtcdClient`]: a read of
//! the whole key space (the client ranges by prefix, and etcd refuses the
//! empty prefix) and a short `/health` probe that does not wait for a
//! member still joining its cluster.
//!
//! [`EtcdClient`]: crate::client::EtcdClient

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

use crate::client::EtcdError;

/// A plain HTTP client for the probes (no proxy, short connect timeout).
pub(crate) fn http(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .no_proxy()
        .build()
        .unwrap_or_default()
}

/// Whether the member at `url` answers `/health` with `true` within `timeout`.
pub(crate) async fn healthy(http: &reqwest::Client, url: &str, timeout: Duration) -> bool {
    let resp = http
        .get(format!("{}/health", url.trim_end_matches('/')))
        .timeout(timeout)
        .send()
        .await;
    match resp {
        Ok(r) => r
            .text()
            .await
            .is_ok_and(|t| t.contains("\"health\":\"true\"")),
        Err(_) => false,
    }
}

/// Whether something accepts TCP connections at `url` (`http://ip:port`).
pub(crate) async fn listening(url: &str) -> bool {
    let Some(addr) = url.strip_prefix("http://") else {
        return false;
    };
    let addr = addr.trim_end_matches('/').to_string();
    matches!(
        tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr)
        )
        .await,
        Ok(Ok(_))
    )
}

fn int(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// Every key of the cluster with its value, in key order, read in pages
/// from one snapshot through `url`.
pub(crate) async fn range_all(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, EtcdError> {
    const PAGE: usize = 2000;
    let url = url.trim_end_matches('/');
    let what = "range of every key";
    let unavailable = |reason: String| EtcdError::Unavailable {
        endpoints: url.to_string(),
        reason,
    };
    let decode = |reason: String| EtcdError::Decode {
        endpoint: url.to_string(),
        what: what.to_string(),
        reason,
    };
    let mut from = vec![0u8];
    let mut revision = 0i64;
    let mut out = Vec::new();
    loop {
        let mut body = json!({
            "key": B64.encode(&from),
            "range_end": B64.encode([0u8]),
            "limit": PAGE.to_string(),
        });
        if revision > 0 {
            body["revision"] = json!(revision.to_string());
        }
        let resp = http
            .post(format!("{url}/v3/kv/range"))
            .timeout(timeout)
            .json(&body)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| unavailable(e.to_string()))?;
        let v: Value =
            serde_json::from_str(&text).map_err(|e| decode(format!("{e} (status {status})")))?;
        if !status.is_success() || v.get("error").is_some() {
            let message = v
                .get("message")
                .or_else(|| v.get("error"))
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string();
            return Err(EtcdError::Server {
                endpoint: url.to_string(),
                what: what.to_string(),
                message,
            });
        }
        if revision == 0 {
            revision = v
                .get("header")
                .and_then(|h| h.get("revision"))
                .map(int)
                .unwrap_or(0);
        }
        let kvs = match v.get("kvs") {
            Some(Value::Array(a)) => a.clone(),
            _ => Vec::new(),
        };
        let got = kvs.len();
        for kv in kvs {
            let field = |name: &str| -> Result<Vec<u8>, EtcdError> {
                match kv.get(name).and_then(Value::as_str) {
                    Some(s) => B64.decode(s).map_err(|e| decode(e.to_string())),
                    None => Ok(Vec::new()),
                }
            };
            let key = field("key")?;
            let value = field("value")?;
            from = key.clone();
            from.push(0);
            out.push((key, value));
        }
        let more = v.get("more").and_then(Value::as_bool).unwrap_or(false);
        if !more || got == 0 {
            return Ok(out);
        }
    }
}
