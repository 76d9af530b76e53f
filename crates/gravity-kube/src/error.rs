//! Mapping kube-rs errors to [`BackendError`]s with context.

use gravity_upgrade::backend::BackendError;

/// The HTTP status of an API error, if the server answered one.
pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Whether the server answered 404 Not Found.
pub(crate) fn is_not_found(e: &kube::Error) -> bool {
    api_code(e) == Some(404)
}

/// Whether the server answered 409 (Conflict or AlreadyExists).
pub(crate) fn is_conflict(e: &kube::Error) -> bool {
    api_code(e) == Some(409)
}

/// A [`BackendError`] for a failed call: `what` says what was being done
/// (and to which object).
pub(crate) fn backend(what: impl std::fmt::Display, e: kube::Error) -> BackendError {
    match &e {
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
            BackendError::Other(format!(
                "{what}: the Kubernetes API server answered {}{reason}: {}{hint}",
                s.code, s.message
            ))
        }
        kube::Error::HyperError(_) | kube::Error::Service(_) => BackendError::Other(format!(
            "{what}: cannot reach the Kubernetes API server ({e}); check the server address of the kubeconfig and that the API server is up"
        )),
        kube::Error::Auth(_) => BackendError::Other(format!(
            "{what}: cannot authenticate to the Kubernetes API server ({e}); check the credentials of the kubeconfig"
        )),
        kube::Error::SerdeError(_) => BackendError::Other(format!(
            "{what}: the Kubernetes API server sent an answer that cannot be read ({e}); check the server's version"
        )),
        _ => BackendError::Other(format!("{what}: {e}")),
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
