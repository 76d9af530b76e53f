//! [`KubeBackend`]: configuration and the [`Kubernetes`] implementation.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gravity_pack::Locator;
use gravity_upgrade::backend::{
    BackendError, BackendResult, Created, DrainOptions, DrainReport, Hook, HookOutcome, Kubernetes,
    NodeInfo, Taint,
};
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::hooks::{HookJobs, NoHookJobs};

/// The key of the applications ConfigMap that holds the installed
/// applications: a JSON object from `repository/name` to the locator
/// `repository/name:version`.
///
/// ConfigMap keys may only hold `[-._a-zA-Z0-9]`, and both repositories and
/// names may contain `.`, `_` and `-`, so one key per application could not
/// be decoded unambiguously; one JSON document, replaced with optimistic
/// concurrency, can.
pub const APPLICATIONS_KEY: &str = "applications.json";

/// Waits, retries and names used by [`KubeBackend`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeOptions {
    /// Interval between polls (evicted pods, jobs, endpoints).
    pub poll_interval: Duration,
    /// First wait after an eviction refused with 429; doubled after each
    /// refusal up to [`KubeOptions::eviction_backoff_max`].
    pub eviction_backoff: Duration,
    /// Longest wait between two eviction attempts of one pod.
    pub eviction_backoff_max: Duration,
    /// How long one API call is retried while the API server is
    /// unavailable: no connection, no answer, 502/503/504, 429 throttling
    /// (except an eviction's 429, see
    /// [`KubeOptions::eviction_backoff`]), or a 500 from an etcd leader
    /// change or timeout. Past it the call fails with
    /// [`BackendError::ApiUnavailable`]. Calls of a drain or a wait also
    /// stop retrying at its deadline. Other failures are never retried.
    /// `Duration::ZERO` turns the retries off.
    pub transient_budget: Duration,
    /// First wait before retrying a transient failure; doubled after each
    /// up to [`KubeOptions::transient_backoff_max`].
    pub transient_backoff: Duration,
    /// Longest wait between two attempts of a call failing transiently.
    pub transient_backoff_max: Duration,
    /// How long one request may go without an answer before it is given
    /// up (and, as a transient failure, retried). kube-rs sets no such
    /// limit by default (it would cut exec and watch streams, which this
    /// backend does not use), so an API server that accepted a request
    /// and hangs would hang the phase for good. Applied by
    /// [`KubeBackend::from_config`] and the constructors that use it;
    /// `None` leaves the client's setting.
    pub request_timeout: Option<Duration>,
    /// How many times a write that met a concurrent writer (409 Conflict)
    /// is recomputed from a fresh read and retried.
    pub conflict_retries: u32,
    /// The namespace hook jobs run in when their manifest names none.
    pub hook_namespace: String,
    /// How long a hook job may run.
    pub hook_timeout: Duration,
    /// Namespace of the applications ConfigMap.
    pub applications_namespace: String,
    /// Name of the applications ConfigMap (see [`APPLICATIONS_KEY`]).
    pub applications_config_map: String,
}

impl Default for KubeOptions {
    /// Gravity's values: polls every second, eviction backoff from 500 ms
    /// to 30 s, transient failures retried for up to 60 s with backoff
    /// from 200 ms to 5 s (an API server restart during the upgrade takes
    /// seconds to tens of seconds), 30 s for one request to be answered,
    /// 5 conflict retries, hooks in
    /// `kube-system` for up to 20 minutes, applications in
    /// `kube-system/gravity-applications`.
    fn default() -> Self {
        KubeOptions {
            poll_interval: Duration::from_secs(1),
            eviction_backoff: Duration::from_millis(500),
            eviction_backoff_max: Duration::from_secs(30),
            transient_budget: Duration::from_secs(60),
            transient_backoff: Duration::from_millis(200),
            transient_backoff_max: Duration::from_secs(5),
            request_timeout: Some(Duration::from_secs(30)),
            conflict_retries: 5,
            hook_namespace: "kube-system".into(),
            hook_timeout: Duration::from_secs(20 * 60),
            applications_namespace: "kube-system".into(),
            applications_config_map: "gravity-applications".into(),
        }
    }
}

/// The first line of an error's message: a YAML syntax error carries the
/// offending source lines after its message (which names the line and
/// column), and the hint that follows it must stay on the message's line.
fn first_line(e: &dyn std::fmt::Display) -> String {
    let text = e.to_string();
    text.lines()
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_string()
}

/// The [`Kubernetes`] backend over a kube-rs [`kube::Client`].
#[derive(Clone)]
pub struct KubeBackend {
    pub(crate) client: kube::Client,
    pub(crate) options: KubeOptions,
    pub(crate) hooks: Arc<dyn HookJobs>,
}

impl std::fmt::Debug for KubeBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeBackend")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl KubeBackend {
    /// A backend over `client`. No application defines hooks until a
    /// provider is set with [`KubeBackend::with_hooks`].
    ///
    /// The client should not retry 429 answers itself (kube-rs does by
    /// default, see [`kube::Config::default_retry`]): the drain retries
    /// refused evictions within its own deadline, and the backend retries
    /// other transient failures within [`KubeOptions::transient_budget`]
    /// and the deadlines of drains and waits. The other constructors turn
    /// that retry off.
    pub fn new(client: kube::Client, options: KubeOptions) -> Self {
        KubeBackend {
            client,
            options,
            hooks: Arc::new(NoHookJobs),
        }
    }

    /// A backend for the API server and credentials of `config` (its
    /// `default_retry` is turned off, and its read timeout set from
    /// [`KubeOptions::request_timeout`]).
    pub fn from_config(mut config: kube::Config, options: KubeOptions) -> BackendResult<Self> {
        config.default_retry = false;
        if let Some(t) = options.request_timeout {
            // Counted from when the request is written, not from when its
            // pooled connection went idle.
            config.read_timeout = Some(t);
            config.reset_reader_on_write = true;
        }
        let url = config.cluster_url.to_string();
        let client = kube::Client::try_from(config).map_err(|e| {
            BackendError::Other(format!(
                "cannot create a Kubernetes client for {url}: {e}; check the cluster and user entries of the kubeconfig"
            ))
        })?;
        Ok(KubeBackend::new(client, options))
    }

    /// A backend for the current context of the kubeconfig file at `path`,
    /// with [`KubeOptions::default`].
    pub async fn from_kubeconfig(path: impl AsRef<Path>) -> BackendResult<Self> {
        let path = path.as_ref();
        let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
            BackendError::Other(format!(
                "cannot read kubeconfig {}: {}; check the file (it is written by \"kubectl config\")",
                path.display(),
                first_line(&e)
            ))
        })?;
        let config =
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    BackendError::Other(format!(
                        "cannot use kubeconfig {}: {}; check its current context, cluster and user",
                        path.display(),
                        first_line(&e)
                    ))
                })?;
        KubeBackend::from_config(config, KubeOptions::default())
    }

    /// A backend configured as kubectl would find it: the kubeconfig named
    /// by `KUBECONFIG`, else `~/.kube/config`, else the in-cluster service
    /// account; with [`KubeOptions::default`].
    pub async fn infer() -> BackendResult<Self> {
        let config = kube::Config::infer().await.map_err(|e| {
            BackendError::Other(format!(
                "cannot find a Kubernetes configuration: {}; set KUBECONFIG or write ~/.kube/config, or run inside the cluster",
                first_line(&e)
            ))
        })?;
        KubeBackend::from_config(config, KubeOptions::default())
    }

    /// The same backend taking hook jobs from `hooks`.
    pub fn with_hooks(mut self, hooks: Arc<dyn HookJobs>) -> Self {
        self.hooks = hooks;
        self
    }

    /// The client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// The options.
    pub fn options(&self) -> &KubeOptions {
        &self.options
    }
}

#[async_trait]
impl Kubernetes for KubeBackend {
    async fn nodes(&self) -> BackendResult<Vec<NodeInfo>> {
        self.list_nodes().await
    }

    async fn node(&self, name: &str) -> BackendResult<NodeInfo> {
        self.node_info(name).await
    }

    async fn cordon(&self, node: &str) -> BackendResult<bool> {
        self.set_unschedulable(node, true).await
    }

    async fn uncordon(&self, node: &str) -> BackendResult<bool> {
        self.set_unschedulable(node, false).await
    }

    async fn drain(&self, node: &str, opts: &DrainOptions) -> BackendResult<DrainReport> {
        self.drain_node(node, opts).await
    }

    async fn add_taint(&self, node: &str, taint: &Taint) -> BackendResult<bool> {
        self.change_taint(node, taint, true).await
    }

    async fn remove_taint(&self, node: &str, taint: &Taint) -> BackendResult<bool> {
        self.change_taint(node, taint, false).await
    }

    async fn set_node_labels(
        &self,
        node: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> BackendResult<BTreeMap<String, Option<String>>> {
        self.change_labels(node, labels).await
    }

    async fn create_kubelet_permissions(&self) -> BackendResult<Created> {
        self.create_kubelet_rbac().await
    }

    async fn create_coredns(&self, corefile: &str) -> BackendResult<Created> {
        self.create_coredns_objects(corefile).await
    }

    async fn delete_objects(&self, objects: &[String]) -> BackendResult<()> {
        self.delete_named(objects).await
    }

    async fn run_hook(&self, app: &Locator, hook: Hook) -> BackendResult<HookOutcome> {
        self.run_hook_job(app, hook).await
    }

    async fn application(&self, repository: &str, name: &str) -> BackendResult<Option<Locator>> {
        self.read_application(repository, name).await
    }

    async fn set_application(
        &self,
        repository: &str,
        name: &str,
        app: Option<&Locator>,
    ) -> BackendResult<Option<Locator>> {
        self.write_application(repository, name, app).await
    }

    async fn wait_endpoints(&self, node: &str, timeout: Duration) -> BackendResult<()> {
        self.wait_node_endpoints(node, timeout).await
    }

    async fn delete_pods(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> BackendResult<usize> {
        self.delete_selected_pods(namespace, selector).await
    }

    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BackendResult<Option<BTreeMap<String, String>>> {
        Ok(self
            .read_config_map(namespace, name)
            .await?
            .map(|cm| cm.data.unwrap_or_default()))
    }

    async fn put_config_map(
        &self,
        namespace: &str,
        name: &str,
        data: Option<&BTreeMap<String, String>>,
    ) -> BackendResult<Option<BTreeMap<String, String>>> {
        self.write_config_map(namespace, name, data).await
    }
}
