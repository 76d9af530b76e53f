//! A Kubernetes backend for gravity-rs upgrades, over [kube-rs](kube).
//!
//! [`KubeBackend`] implements [`gravity_upgrade::backend::Kubernetes`]
//! against a real API server:
//!
//! - **Nodes.** Cordon and uncordon are JSON merge patches of
//!   `spec.unschedulable`; taints (`spec.taints`) and labels
//!   (`metadata.labels`) are merge patches too. Every node patch carries the
//!   `metadata.resourceVersion` that was read, so a concurrent writer makes
//!   the API server answer 409 Conflict; the node is then read again and the
//!   change recomputed, at most [`KubeOptions::conflict_retries`] times. The
//!   `bool`s ("did this call change anything") are therefore exact, which
//!   the phases rely on to undo only what they did.
//! - **Drain.** The node's pods are listed with the field selector
//!   `spec.nodeName=<node>`; DaemonSet-owned pods and mirror pods
//!   (annotation `kubernetes.io/config.mirror`) are skipped; every other pod
//!   is evicted concurrently through the policy/v1 Eviction subresource. A
//!   429 (a PodDisruptionBudget refuses) is retried with exponential backoff;
//!   then each pod is polled until it is gone or replaced (its uid changed).
//!   All of it is bounded by [`DrainOptions::eviction_deadline`]; past it the
//!   drain fails with [`BackendError::EvictionBlocked`], naming the pods and
//!   the disruption budgets (those of the pod's namespace whose selector
//!   matches the pod) that block them.
//! - **Objects.** The `kubelet-upgrade` and `gravity:coredns` RBAC objects
//!   and the `kube-system/coredns` ConfigMap are created if absent (409
//!   AlreadyExists is tolerated); [`Created`] lists exactly what the call
//!   created, and [`Kubernetes::delete_objects`] deletes exactly what it is
//!   given.
//! - **Hooks.** Application hooks run as Jobs, whose specs come from a
//!   [`HookJobs`] provider ([`DirHookJobs`]: `<dir>/<app>/<hook>.yaml`;
//!   [`MemoryHookJobs`] for tests). The backend waits for the Job and
//!   returns its pods' logs.
//! - **Endpoints.** [`Kubernetes::wait_endpoints`] polls the Endpoints of
//!   `kube-system` until a gravity-site address exists (label
//!   `app=gravity-site`) and a DNS address (label `k8s-app` one of
//!   `kube-dns`, `kubedns`, `kube-dns-worker`) has the node as `nodeName`.
//! - **Records.** Installed applications are kept in the ConfigMap
//!   `kube-system/gravity-applications` (see [`APPLICATIONS_KEY`]).
//! - **Transient failures.** The API server restarts during an upgrade.
//!   A request that gets no answer (connection refused, reset or closed,
//!   timeout), 502, 503, 504, 429 (throttling; not for evictions, where
//!   429 is a disruption budget's refusal) or a 500 from an etcd leader
//!   change or timeout is repeated with exponential backoff for up to
//!   [`KubeOptions::transient_budget`], and never past the deadline of the
//!   drain or wait it belongs to; then the call fails with
//!   [`BackendError::ApiUnavailable`] (see [`BackendError::is_transient`]).
//!   Other failures are returned at once. Repeating is safe: node patches
//!   and ConfigMap writes carry the `resourceVersion` they were computed
//!   from, and one whose first answer was lost and whose retry meets its
//!   own effect (409 or 404) is recognised as done, so their "did this
//!   call change anything" answers stay exact; a delete or an eviction
//!   that meets 404 is done; a "create if absent" that meets 409 on a
//!   retry reports the object as not created by the call (a rollback
//!   never deletes what it cannot tell from a pre-existing object).
//!
//! Configuration comes from a kubeconfig file ([`KubeBackend::from_kubeconfig`]),
//! from the environment as kubectl finds it ([`KubeBackend::infer`]:
//! `KUBECONFIG`, `~/.kube/config`, then the in-cluster service account), or
//! from a ready [`kube::Client`] ([`KubeBackend::new`]).
//!
//! The crate never prints: failures are [`BackendError`]s naming the node or
//! object concerned and what to do.
//!
//! [`BackendError`]: gravity_upgrade::backend::BackendError
//! [`BackendError::EvictionBlocked`]: gravity_upgrade::backend::BackendError::EvictionBlocked
//! [`BackendError::ApiUnavailable`]: gravity_upgrade::backend::BackendError::ApiUnavailable
//! [`BackendError::is_transient`]: gravity_upgrade::backend::BackendError::is_transient
//! [`DrainOptions::eviction_deadline`]: gravity_upgrade::backend::DrainOptions::eviction_deadline
//! [`Created`]: gravity_upgrade::backend::Created
//! [`Kubernetes::delete_objects`]: gravity_upgrade::backend::Kubernetes::delete_objects
//! [`Kubernetes::wait_endpoints`]: gravity_upgrade::backend::Kubernetes::wait_endpoints

mod backend;
mod drain;
mod endpoints;
mod error;
mod hooks;
mod nodes;
mod objects;
mod retry;
mod selector;

pub use backend::{APPLICATIONS_KEY, KubeBackend, KubeOptions};
pub use hooks::{APP_LABEL, DirHookJobs, HOOK_LABEL, HookJobs, MemoryHookJobs, NoHookJobs};
