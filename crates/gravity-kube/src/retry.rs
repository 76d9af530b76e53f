//! Retrying API calls that failed transiently (see [`is_transient`]).
//!
//! Every request the backend sends goes through [`KubeBackend::call`] (or
//! one of its variants), which repeats it with exponential backoff from
//! [`KubeOptions::transient_backoff`] up to
//! [`KubeOptions::transient_backoff_max`] for at most
//! [`KubeOptions::transient_budget`], and never past the deadline of the
//! drain or wait the call belongs to. Permanent failures (4xx answers,
//! other 500s) end the call at once.
//!
//! Repeating a request is safe for everything the backend sends: reads;
//! node patches and ConfigMap replaces and deletes, which carry the
//! `resourceVersion` they were computed from (a retry of a write that was
//! applied after all meets 409, and the callers then tell their own
//! effect from a concurrent writer's); deletes of named objects, where 404
//! counts as done; creates, where 409 AlreadyExists is either tolerated
//! ("create if absent") or, for hook jobs whose names are unique to the
//! call, means the job is this call's own; evictions, where 404 means the
//! pod is gone.
//!
//! [`KubeOptions::transient_backoff`]: crate::KubeOptions::transient_backoff
//! [`KubeOptions::transient_backoff_max`]: crate::KubeOptions::transient_backoff_max
//! [`KubeOptions::transient_budget`]: crate::KubeOptions::transient_budget

use std::future::Future;

use tokio::time::Instant;

use crate::backend::KubeBackend;
use crate::error::{CallError, is_transient};

/// Which failures a call retries, and until when.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Retry {
    /// A deadline the retries must not pass, besides the budget.
    pub(crate) deadline: Option<Instant>,
    /// The call is an eviction: 429 is a PodDisruptionBudget's refusal,
    /// left to the drain, not throttling.
    pub(crate) eviction: bool,
}

impl Retry {
    /// Retries until `deadline` at the latest.
    pub(crate) fn until(deadline: Instant) -> Retry {
        Retry {
            deadline: Some(deadline),
            eviction: false,
        }
    }
}

impl KubeBackend {
    /// Runs `f` (one API request) and repeats it while it fails
    /// transiently, within [`crate::KubeOptions::transient_budget`].
    pub(crate) async fn call<T, F, Fut>(&self, f: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        self.call_with(Retry::default(), f).await
    }

    /// [`KubeBackend::call`] that also stops retrying at `deadline`.
    pub(crate) async fn call_until<T, F, Fut>(
        &self,
        deadline: Instant,
        f: F,
    ) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        self.call_with(Retry::until(deadline), f).await
    }

    /// [`KubeBackend::call`] with the retry rules of `retry`.
    ///
    /// The first attempt is always made; a transient failure is retried
    /// after a backoff (doubled each time, capped) cut short so that the
    /// last attempt starts at the end of the budget or the deadline,
    /// whichever comes first. An attempt is not itself cut: once the
    /// server has the request, its answer is awaited (kube-rs bounds it
    /// with the client's timeouts).
    pub(crate) async fn call_with<T, F, Fut>(&self, retry: Retry, mut f: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let start = Instant::now();
        let budget_end = start + self.options.transient_budget;
        let end = retry.deadline.map_or(budget_end, |d| d.min(budget_end));
        let mut delay = self.options.transient_backoff;
        let mut attempts: u32 = 0;
        loop {
            attempts = attempts.saturating_add(1);
            let error = match f().await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let transient = is_transient(&error, retry.eviction);
            let now = Instant::now();
            if !transient || now >= end {
                return Err(CallError {
                    error,
                    attempts,
                    waited: now - start,
                    gave_up: transient,
                });
            }
            tokio::time::sleep(delay.min(end - now)).await;
            delay = (delay * 2).min(self.options.transient_backoff_max);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::KubeOptions;
    use crate::error::backend;
    use kube::core::Status;

    fn api(code: u16, reason: &str, message: &str) -> kube::Error {
        kube::Error::Api(Status::failure(message, reason).with_code(code).boxed())
    }

    fn refused() -> kube::Error {
        kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        )))
    }

    #[test]
    fn transient_failures_are_unavailability_not_answers() {
        assert!(is_transient(&refused(), false));
        let tls = kube::Error::Service(Box::new(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer",
        )));
        assert!(!is_transient(&tls, false));
        for code in [502, 503, 504] {
            assert!(is_transient(&api(code, "", "x"), false), "{code}");
            assert!(is_transient(&api(code, "", "x"), true), "{code}");
        }
        assert!(is_transient(
            &api(500, "InternalError", "etcdserver: leader changed"),
            false
        ));
        assert!(is_transient(
            &api(
                500,
                "InternalError",
                "rpc error: etcdserver: request timed out"
            ),
            false
        ));
        assert!(is_transient(&api(500, "ServerTimeout", "slow"), false));
        assert!(!is_transient(
            &api(500, "InternalError", "admission webhook failed"),
            false
        ));
        assert!(is_transient(
            &api(429, "TooManyRequests", "slow down"),
            false
        ));
        assert!(!is_transient(&api(429, "TooManyRequests", "budget"), true));
        for code in [400, 401, 403, 404, 409, 422] {
            assert!(!is_transient(&api(code, "", "x"), false), "{code}");
        }
        assert!(!is_transient(
            &kube::Error::SerdeError(serde_json::from_str::<u8>("x").unwrap_err()),
            false
        ));
    }

    fn backend_with(budget_ms: u64) -> KubeBackend {
        let config = kube::Config::new("http://127.0.0.1:1".parse().unwrap());
        let client = kube::Client::try_from(config).unwrap();
        KubeBackend::new(
            client,
            KubeOptions {
                transient_budget: Duration::from_millis(budget_ms),
                transient_backoff: Duration::from_millis(10),
                transient_backoff_max: Duration::from_millis(40),
                ..KubeOptions::default()
            },
        )
    }

    #[tokio::test]
    async fn transient_failures_are_retried_with_doubling_backoff_within_the_budget() {
        let kube = backend_with(300);
        let n = AtomicU32::new(0);
        let start = Instant::now();
        let v = kube
            .call(|| async {
                if n.fetch_add(1, Ordering::SeqCst) < 3 {
                    Err(api(503, "ServiceUnavailable", "x"))
                } else {
                    Ok(7)
                }
            })
            .await
            .unwrap();
        assert_eq!(v, 7);
        assert_eq!(n.load(Ordering::SeqCst), 4);
        // 10 + 20 + 40 ms.
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(70), "{elapsed:?}");

        // The budget ends the retries, the last attempt at its end.
        let n = AtomicU32::new(0);
        let start = Instant::now();
        let e = kube
            .call(|| async {
                n.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(refused())
            })
            .await
            .unwrap_err();
        let elapsed = start.elapsed();
        assert!(e.gave_up);
        assert!(e.waited >= Duration::from_millis(300), "{:?}", e.waited);
        assert!(elapsed < Duration::from_millis(600), "{elapsed:?}");
        // At most 0, 10, 30, 70, 110, ... 270, 300 ms.
        assert_eq!(e.attempts, n.load(Ordering::SeqCst));
        assert!((4..=11).contains(&e.attempts), "{}", e.attempts);
    }

    #[test]
    fn giving_up_says_how_long_how_often_and_what_to_do() {
        let e = CallError {
            error: refused(),
            attempts: 28,
            waited: Duration::from_micros(60_012_345),
            gave_up: true,
        };
        let err = backend("cannot read node n1", e);
        assert!(err.is_transient());
        assert_eq!(
            err.to_string(),
            "cannot read node n1: the Kubernetes API server was unavailable for 60.012s (28 attempts), last error: cannot reach the Kubernetes API server (ServiceError: connection refused); check that the API server is up, then resume the phase"
        );
    }

    #[tokio::test]
    async fn deadlines_cut_retries_and_permanent_failures_are_not_retried() {
        let kube = backend_with(60_000);
        let start = Instant::now();
        let e = kube
            .call_until(start + Duration::from_millis(25), || async {
                Err::<(), _>(api(504, "Timeout", "x"))
            })
            .await
            .unwrap_err();
        // 0, 10, 25 ms (fewer on a busy machine).
        let elapsed = start.elapsed();
        assert!(e.gave_up && (2..=3).contains(&e.attempts), "{e:?}");
        assert!(
            elapsed >= Duration::from_millis(25) && elapsed < Duration::from_secs(1),
            "{elapsed:?}"
        );
        let err = backend("what", e);
        assert!(err.is_transient(), "{err}");

        let e = kube
            .call(|| async { Err::<(), _>(api(403, "Forbidden", "no")) })
            .await
            .unwrap_err();
        assert_eq!((e.attempts, e.gave_up), (1, false));
        let err = backend("what", e);
        assert!(!err.is_transient());
        assert_eq!(
            err.to_string(),
            "what: the Kubernetes API server answered 403 Forbidden: no; the kubeconfig user lacks the RBAC permission for this, grant it or use a cluster-admin kubeconfig"
        );

        // An eviction's 429 is the drain's business.
        let e = kube
            .call_with(
                Retry {
                    deadline: None,
                    eviction: true,
                },
                || async { Err::<(), _>(api(429, "TooManyRequests", "budget")) },
            )
            .await
            .unwrap_err();
        assert_eq!((e.attempts, e.gave_up), (1, false));
    }
}
