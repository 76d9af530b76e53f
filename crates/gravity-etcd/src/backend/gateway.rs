//! What the backend needs beyond [`EtcdClient`]'s cluster-wide calls: a
//! read of the whole key space through one given member, and a short
//! `/health` probe that does not wait for a member still joining its
//! cluster.
//!
//! [`EtcdClient`]: crate::client::EtcdClient

use std::time::Duration;

use crate::client::{EtcdClient, EtcdError};

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

/// Every key of the cluster with its value, in key order, read in pages
/// from one snapshot through `url` alone (the member at that address, not
/// whichever member answers).
pub(crate) async fn range_all(
    url: &str,
    timeout: Duration,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>, EtcdError> {
    let client = EtcdClient::new([url], timeout)?;
    Ok(client
        .range_prefix("")
        .await?
        .into_iter()
        .map(|kv| (kv.key.into_bytes(), kv.value))
        .collect())
}
