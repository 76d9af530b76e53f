//! Mapping kube-rs errors to [`BackendError`]s with context, and telling
//! transient failures (worth retrying) from permanent ones.

use std::time::Duration;

use gravity_upgrade::backend::BackendError;

/// A failed API call: the error that ended it and how it was retried (see
/// [`crate::KubeBackend::call`]).
#[derive(Debug)]
pub(crate) struct CallError {
    /// The last error.
    pub(crate) error: kube::Error,
    /// Requests sent (or tried) in all.
    pub(crate) attempts: u32,
    /// From the first attempt to the end.
    pub(crate) waited: Duration,
    /// The error is transient and the call ran out of time retrying it.
    pub(crate) gave_up: bool,
}

impl CallError {
    /// Whether an earlier attempt failed transiently. Such an attempt may
    /// have reached the server and been applied with its answer lost, so a
    /// write that ends in 409 or 404 may be meeting its own effect.
    pub(crate) fn retried(&self) -> bool {
        self.attempts > 1
    }
}

impl From<kube::Error> for CallError {
    fn from(error: kube::Error) -> Self {
        CallError {
            error,
            attempts: 1,
            waited: Duration::ZERO,
            gave_up: false,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

/// Errors that carry a kube-rs error.
pub(crate) trait KubeFailure {
    /// The kube-rs error.
    fn kube_error(&self) -> &kube::Error;
}

impl KubeFailure for kube::Error {
    fn kube_error(&self) -> &kube::Error {
        self
    }
}

impl KubeFailure for CallError {
    fn kube_error(&self) -> &kube::Error {
        &self.error
    }
}

/// The HTTP status of an API error, if the server answered one.
pub(crate) fn api_code(e: &impl KubeFailure) -> Option<u16> {
    match e.kube_error() {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Whether the server answered 404 Not Found.
pub(crate) fn is_not_found(e: &impl KubeFailure) -> bool {
    api_code(e) == Some(404)
}

/// Whether the server answered 409 (Conflict or AlreadyExists).
pub(crate) fn is_conflict(e: &impl KubeFailure) -> bool {
    api_code(e) == Some(409)
}

/// Messages of 500 answers that only say etcd, behind the API server, is
/// changing leaders or was too slow to answer: the same request succeeds
/// moments later. Other 500s (a webhook or admission bug, a broken
/// aggregated API) are not retried.
const ETCD_TRANSIENT: [&str; 3] = [
    "etcdserver: leader changed",
    "etcdserver: no leader",
    "etcdserver: request timed out",
];

/// Whether `e` is a failure of the API server's availability rather than an
/// answer about the request, so that the same request may succeed later:
///
/// - no answer: the connection was refused, reset or closed, or timed out
///   (kube-rs reports these as hyper or service errors), but not a TLS
///   failure ([`is_tls_failure`]: a certificate or protocol mismatch
///   does not pass by itself);
/// - 502, 503, 504 (a load balancer without a live API server behind it,
///   an API server starting or stopping);
/// - 500 whose reason is `ServerTimeout`/`Timeout` or whose message is an
///   etcd leader change or timeout ([`ETCD_TRANSIENT`]);
/// - 429 (API priority and fairness throttles the client), except for an
///   eviction (`eviction`), where 429 means a PodDisruptionBudget refuses
///   and the drain retries it on its own terms.
pub(crate) fn is_transient(e: &kube::Error, eviction: bool) -> bool {
    match e {
        kube::Error::Api(s) => match s.code {
            502..=504 => true,
            429 => !eviction,
            500 => {
                matches!(s.reason.as_str(), "ServerTimeout" | "Timeout")
                    || ETCD_TRANSIENT.iter().any(|m| s.message.contains(m))
            }
            _ => false,
        },
        kube::Error::HyperError(e) => !is_tls_failure(e),
        kube::Error::Service(e) => !is_tls_failure(e.as_ref()),
        _ => false,
    }
}

/// Whether the chain of `e` holds an I/O error of kind `InvalidData`: how
/// the TLS stack reports a certificate it does not trust or a peer that
/// does not speak TLS.
fn is_tls_failure(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
        {
            return true;
        }
        next = e.source();
    }
    false
}

/// What went wrong, without the context, and the hint of what to do.
fn describe(e: &kube::Error) -> (String, &'static str) {
    match e {
        kube::Error::Api(s) => {
            let hint = match s.code {
                401 => "; check the credentials of the kubeconfig",
                403 => {
                    "; the kubeconfig user lacks the RBAC permission for this, grant it or use a cluster-admin kubeconfig"
                }
                404 => "; it does not exist",
                409 => "; it was changed concurrently, retry",
                429 => "; the API server is throttling requests, retry later",
                500..=599 => "; check the health of the Kubernetes API server and retry",
                _ => "",
            };
            let reason = if s.reason.is_empty() {
                String::new()
            } else {
                format!(" {}", s.reason)
            };
            (
                format!(
                    "the Kubernetes API server answered {}{reason}: {}",
                    s.code, s.message
                ),
                hint,
            )
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => (
            format!("cannot reach the Kubernetes API server ({e})"),
            "; check the server address of the kubeconfig and that the API server is up",
        ),
        kube::Error::Auth(_) => (
            format!("cannot authenticate to the Kubernetes API server ({e})"),
            "; check the credentials of the kubeconfig",
        ),
        kube::Error::SerdeError(_) => (
            format!("the Kubernetes API server sent an answer that cannot be read ({e})"),
            "; check the server's version",
        ),
        _ => (e.to_string(), ""),
    }
}

/// A [`BackendError`] for a failed call: `what` says what was being done
/// (and to which object). A call that gave up retrying a transient failure
/// is [`BackendError::ApiUnavailable`]; any other is
/// [`BackendError::Other`], with a hint of what to do.
pub(crate) fn backend(what: impl std::fmt::Display, e: impl Into<CallError>) -> BackendError {
    let e = e.into();
    let (detail, hint) = describe(&e.error);
    if e.gave_up {
        BackendError::ApiUnavailable {
            what: what.to_string(),
            attempts: e.attempts,
            waited: e.waited,
            last: detail,
        }
    } else {
        BackendError::Other(format!("{what}: {detail}{hint}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Status::failure("boom", reason).with_code(code).boxed())
    }

    #[test]
    fn codes_are_recognised() {
        assert!(is_not_found(&api(404, "NotFound")));
        assert!(is_conflict(&api(409, "AlreadyExists")));
        assert!(!is_conflict(&api(429, "TooManyRequests")));
        assert_eq!(api_code(&api(500, "InternalError")), Some(500));
    }

    #[test]
    fn messages_say_what_and_what_to_do() {
        let e = backend("cannot patch node n1", api(403, "Forbidden")).to_string();
        assert!(
            e.starts_with(
                "cannot patch node n1: the Kubernetes API server answered 403 Forbidden: boom"
            ),
            "{e}"
        );
        assert!(e.contains("RBAC"), "{e}");
    }
}
