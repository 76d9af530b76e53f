//! RBAC objects, ConfigMaps, the applications record and pod deletion.

use std::collections::BTreeMap;

use gravity_pack::Locator;
use gravity_upgrade::backend::{BackendError, BackendResult, Created};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::core::NamespaceResourceScope;

use crate::backend::{APPLICATIONS_KEY, KubeBackend};
use crate::error::{backend, is_conflict, is_not_found};
use crate::selector;

/// ClusterRole and ClusterRoleBinding of the kubelet during the upgrade.
pub(crate) const KUBELET_UPGRADE: &str = "kubelet-upgrade";
/// ClusterRole and ClusterRoleBinding of CoreDNS.
pub(crate) const COREDNS_RBAC: &str = "gravity:coredns";
/// Namespace of the CoreDNS ConfigMap.
pub(crate) const COREDNS_NAMESPACE: &str = "kube-system";
/// Name of the CoreDNS ConfigMap.
pub(crate) const COREDNS_CONFIG_MAP: &str = "coredns";

/// An object named as in [`Created::objects`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ObjectName {
    ClusterRole(String),
    ClusterRoleBinding(String),
    ConfigMap { namespace: String, name: String },
}

impl ObjectName {
    pub(crate) fn parse(text: &str) -> Option<ObjectName> {
        let (kind, rest) = text.split_once('/')?;
        if rest.is_empty() {
            return None;
        }
        match kind {
            "ClusterRole" => Some(ObjectName::ClusterRole(rest.into())),
            "ClusterRoleBinding" => Some(ObjectName::ClusterRoleBinding(rest.into())),
            "ConfigMap" => {
                let (ns, name) = rest.split_once('/')?;
                (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| {
                    ObjectName::ConfigMap {
                        namespace: ns.into(),
                        name: name.into(),
                    }
                })
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ObjectName::ClusterRole(n) => write!(f, "ClusterRole/{n}"),
            ObjectName::ClusterRoleBinding(n) => write!(f, "ClusterRoleBinding/{n}"),
            ObjectName::ConfigMap { namespace, name } => write!(f, "ConfigMap/{namespace}/{name}"),
        }
    }
}

fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: namespace.map(Into::into),
        ..Default::default()
    }
}

fn cluster_role(name: &str, rule: PolicyRule) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, None),
        rules: Some(vec![rule]),
        ..Default::default()
    }
}

fn binding(name: &str, user: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: name.into(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "User".into(),
            name: user.into(),
            namespace: None,
        }]),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A ConfigMap write that may have been applied with its answer lost.
struct Unsure<R> {
    /// The `resourceVersion` the write was computed from (`None`: a
    /// create).
    read: Option<String>,
    /// The data written (`None`: a delete).
    written: Option<BTreeMap<String, String>>,
    /// What the write would return.
    previous: Option<BTreeMap<String, String>>,
    result: R,
}

impl<R> Unsure<R> {
    /// Whether `current` is what the write made: gone after a delete, or
    /// changed since the read and holding exactly the written data.
    fn applied(&self, current: Option<&ConfigMap>) -> bool {
        match (current, &self.written) {
            (None, None) => true,
            (Some(cm), Some(data)) => {
                cm.metadata.resource_version != self.read
                    && cm.data.as_ref().unwrap_or(&BTreeMap::new()) == data
            }
            _ => false,
        }
    }
}

impl KubeBackend {
    /// Creates `obj`; returns false if it already exists (409).
    ///
    /// A create retried after a transient failure whose answer was lost
    /// may meet its own first attempt (409): it is reported as not created
    /// by this call: nothing tells it from an object that existed before,
    /// and a rollback must never delete one of those.
    async fn create_if_absent<K>(&self, api: Api<K>, obj: &K, label: &str) -> BackendResult<bool>
    where
        K: kube::Resource
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let pp = PostParams::default();
        match self.call(|| api.create(&pp, obj)).await {
            Ok(_) => Ok(true),
            Err(e) if is_conflict(&e) => Ok(false),
            Err(e) => Err(backend(format!("cannot create {label}"), e)),
        }
    }

    async fn create_rbac(
        &self,
        name: &str,
        rule: PolicyRule,
        user: &str,
    ) -> BackendResult<Created> {
        let mut created = Created::default();
        let role = ObjectName::ClusterRole(name.into()).to_string();
        if self
            .create_if_absent(
                Api::<ClusterRole>::all(self.client.clone()),
                &cluster_role(name, rule),
                &role,
            )
            .await?
        {
            created.objects.push(role);
        }
        let rb = ObjectName::ClusterRoleBinding(name.into()).to_string();
        if self
            .create_if_absent(
                Api::<ClusterRoleBinding>::all(self.client.clone()),
                &binding(name, user),
                &rb,
            )
            .await?
        {
            created.objects.push(rb);
        }
        Ok(created)
    }

    pub(crate) async fn create_kubelet_rbac(&self) -> BackendResult<Created> {
        let rule = PolicyRule {
            api_groups: Some(strings(&[""])),
            resources: Some(strings(&["nodes/status"])),
            verbs: strings(&["patch"]),
            ..Default::default()
        };
        self.create_rbac(KUBELET_UPGRADE, rule, "kubelet").await
    }

    pub(crate) async fn create_coredns_objects(&self, corefile: &str) -> BackendResult<Created> {
        let rule = PolicyRule {
            api_groups: Some(strings(&[""])),
            resources: Some(strings(&["endpoints", "services", "namespaces", "pods"])),
            verbs: strings(&["list", "watch"]),
            ..Default::default()
        };
        let mut created = self.create_rbac(COREDNS_RBAC, rule, "coredns").await?;
        let cm = ConfigMap {
            metadata: meta(COREDNS_CONFIG_MAP, Some(COREDNS_NAMESPACE)),
            data: Some(BTreeMap::from([(
                "Corefile".to_string(),
                corefile.to_string(),
            )])),
            ..Default::default()
        };
        let name = ObjectName::ConfigMap {
            namespace: COREDNS_NAMESPACE.into(),
            name: COREDNS_CONFIG_MAP.into(),
        }
        .to_string();
        if self
            .create_if_absent(
                Api::<ConfigMap>::namespaced(self.client.clone(), COREDNS_NAMESPACE),
                &cm,
                &name,
            )
            .await?
        {
            created.objects.push(name);
        }
        Ok(created)
    }

    pub(crate) async fn delete_named(&self, objects: &[String]) -> BackendResult<()> {
        let mut names = Vec::with_capacity(objects.len());
        for o in objects {
            names.push(ObjectName::parse(o).ok_or_else(|| {
                BackendError::Other(format!(
                    "cannot delete {o:?}: not an object name this backend knows; expected ClusterRole/<name>, ClusterRoleBinding/<name> or ConfigMap/<namespace>/<name>"
                ))
            })?);
        }
        // A delete retried after a lost answer finds the object gone: 404
        // is done either way.
        for n in names {
            let dp = DeleteParams::default();
            let r = match &n {
                ObjectName::ClusterRole(name) => {
                    let api = Api::<ClusterRole>::all(self.client.clone());
                    self.call(|| api.delete(name, &dp)).await.map(|_| ())
                }
                ObjectName::ClusterRoleBinding(name) => {
                    let api = Api::<ClusterRoleBinding>::all(self.client.clone());
                    self.call(|| api.delete(name, &dp)).await.map(|_| ())
                }
                ObjectName::ConfigMap { namespace, name } => {
                    let api = Api::<ConfigMap>::namespaced(self.client.clone(), namespace);
                    self.call(|| api.delete(name, &dp)).await.map(|_| ())
                }
            };
            match r {
                Ok(()) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(backend(format!("cannot delete {n}"), e)),
            }
        }
        Ok(())
    }

    fn namespaced<K>(&self, namespace: &str) -> Api<K>
    where
        K: kube::Resource<Scope = NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    pub(crate) async fn read_config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BackendResult<Option<ConfigMap>> {
        let api = self.namespaced::<ConfigMap>(namespace);
        self.call(|| api.get_opt(name))
            .await
            .map_err(|e| backend(format!("cannot read ConfigMap {namespace}/{name}"), e))
    }

    /// Replaces the data of a ConfigMap computed by `f` from the current
    /// one (creating or deleting it), with optimistic concurrency; returns
    /// the previous data and what `f` returned.
    ///
    /// A write retried after a transient failure may meet its own first
    /// attempt, applied with the answer lost (409 or 404). The map is read
    /// again as after any conflict; if it now is what that write made
    /// (a new `resourceVersion` with the written data, or gone after a
    /// delete), the write is done and its previous data is returned.
    pub(crate) async fn update_config_map<R>(
        &self,
        namespace: &str,
        name: &str,
        mut f: impl FnMut(
            Option<&BTreeMap<String, String>>,
        ) -> BackendResult<(Option<BTreeMap<String, String>>, R)>,
    ) -> BackendResult<(Option<BTreeMap<String, String>>, R)> {
        let api = self.namespaced::<ConfigMap>(namespace);
        let label = format!("ConfigMap {namespace}/{name}");
        let attempts = self.options.conflict_retries.saturating_add(1);
        let pp = PostParams::default();
        let mut unsure: Option<Unsure<R>> = None;
        for _ in 0..attempts {
            let current = self.read_config_map(namespace, name).await?;
            if let Some(u) = unsure.take()
                && u.applied(current.as_ref())
            {
                return Ok((u.previous, u.result));
            }
            let previous = current.as_ref().map(|c| c.data.clone().unwrap_or_default());
            let (next, r) = f(previous.as_ref())?;
            let read = current
                .as_ref()
                .and_then(|c| c.metadata.resource_version.clone());
            let res = match (current, next.clone()) {
                (None, None) => return Ok((previous, r)),
                (None, Some(data)) => {
                    let cm = ConfigMap {
                        metadata: meta(name, Some(namespace)),
                        data: Some(data),
                        ..Default::default()
                    };
                    self.call(|| api.create(&pp, &cm)).await.map(|_| ())
                }
                (Some(mut cm), Some(data)) => {
                    if previous.as_ref() == Some(&data) {
                        return Ok((previous, r));
                    }
                    cm.data = Some(data);
                    self.call(|| api.replace(name, &pp, &cm)).await.map(|_| ())
                }
                (Some(cm), None) => {
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            resource_version: cm.metadata.resource_version.clone(),
                            uid: cm.metadata.uid.clone(),
                        }),
                        ..Default::default()
                    };
                    self.call(|| api.delete(name, &dp)).await.map(|_| ())
                }
            };
            match res {
                Ok(()) => return Ok((previous, r)),
                // A concurrent writer created, changed or deleted it, or
                // this write's own lost first attempt did: again.
                Err(e) if is_conflict(&e) || is_not_found(&e) => {
                    if e.retried() {
                        unsure = Some(Unsure {
                            read,
                            written: next,
                            previous,
                            result: r,
                        });
                    }
                    continue;
                }
                Err(e) => return Err(backend(format!("cannot write {label}"), e)),
            }
        }
        Err(BackendError::Other(format!(
            "cannot write {label}: it was changed concurrently {attempts} times in a row (409 Conflict); retry"
        )))
    }

    pub(crate) async fn write_config_map(
        &self,
        namespace: &str,
        name: &str,
        data: Option<&BTreeMap<String, String>>,
    ) -> BackendResult<Option<BTreeMap<String, String>>> {
        let (prev, ()) = self
            .update_config_map(namespace, name, |_| Ok((data.cloned(), ())))
            .await?;
        Ok(prev)
    }

    fn applications_label(&self) -> String {
        format!(
            "ConfigMap {}/{}",
            self.options.applications_namespace, self.options.applications_config_map
        )
    }

    fn decode_applications(
        &self,
        data: Option<&BTreeMap<String, String>>,
    ) -> BackendResult<BTreeMap<String, String>> {
        match data.and_then(|d| d.get(APPLICATIONS_KEY)) {
            None => Ok(BTreeMap::new()),
            Some(text) => serde_json::from_str(text).map_err(|e| {
                BackendError::Corrupt(format!(
                    "{} key {APPLICATIONS_KEY} is not a JSON object of locators: {e}; repair or delete it",
                    self.applications_label()
                ))
            }),
        }
    }

    fn parse_locator(&self, text: &str) -> BackendResult<Locator> {
        Locator::parse(text).map_err(|e| {
            BackendError::Corrupt(format!(
                "{} holds an invalid application locator {text:?}: {e}; repair it",
                self.applications_label()
            ))
        })
    }

    pub(crate) async fn read_application(
        &self,
        repository: &str,
        name: &str,
    ) -> BackendResult<Option<Locator>> {
        let cm = self
            .read_config_map(
                &self.options.applications_namespace,
                &self.options.applications_config_map,
            )
            .await?;
        let apps = self.decode_applications(cm.and_then(|c| c.data).as_ref())?;
        apps.get(&format!("{repository}/{name}"))
            .map(|t| self.parse_locator(t))
            .transpose()
    }

    pub(crate) async fn write_application(
        &self,
        repository: &str,
        name: &str,
        app: Option<&Locator>,
    ) -> BackendResult<Option<Locator>> {
        let key = format!("{repository}/{name}");
        let ns = self.options.applications_namespace.clone();
        let cm = self.options.applications_config_map.clone();
        let (_, previous) = self
            .update_config_map(&ns, &cm, |data| {
                let mut apps = self.decode_applications(data)?;
                let previous = match app {
                    Some(a) => apps.insert(key.clone(), a.to_string()),
                    None => apps.remove(&key),
                };
                let mut next = data.cloned().unwrap_or_default();
                let text =
                    serde_json::to_string_pretty(&apps).expect("a map of strings serializes");
                next.insert(APPLICATIONS_KEY.into(), text);
                Ok((Some(next), previous))
            })
            .await?;
        previous.map(|t| self.parse_locator(&t)).transpose()
    }

    pub(crate) async fn delete_selected_pods(
        &self,
        namespace: &str,
        labels: &BTreeMap<String, String>,
    ) -> BackendResult<usize> {
        let api = self.namespaced::<Pod>(namespace);
        let sel = selector::equality(labels);
        let lp = ListParams::default().labels(&sel);
        let list = self.call(|| api.list(&lp)).await.map_err(|e| {
            backend(
                format!("cannot list the pods {sel:?} of namespace {namespace}"),
                e,
            )
        })?;
        let mut n = 0;
        let dp = DeleteParams::default();
        for p in list.items {
            let name = p.metadata.name.clone().unwrap_or_default();
            match self.call(|| api.delete(&name, &dp)).await {
                Ok(_) => n += 1,
                // Gone after a retry: most likely by the lost first attempt.
                Err(e) if is_not_found(&e) && e.retried() => n += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(backend(format!("cannot delete pod {namespace}/{name}"), e)),
            }
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_round_trip() {
        for t in [
            "ClusterRole/kubelet-upgrade",
            "ClusterRoleBinding/gravity:coredns",
            "ConfigMap/kube-system/coredns",
        ] {
            assert_eq!(ObjectName::parse(t).unwrap().to_string(), t);
        }
        for bad in [
            "ClusterRole/",
            "ConfigMap/coredns",
            "ConfigMap/a/b/c",
            "Secret/x",
            "nothing",
        ] {
            assert!(ObjectName::parse(bad).is_none(), "{bad}");
        }
    }
}
