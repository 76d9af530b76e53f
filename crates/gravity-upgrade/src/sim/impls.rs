//! The backend traits over the simulated state.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use gravity_pack::{Locator, Version};

use super::state::{FaultKind, SimState, etcd_data_dir};
use super::{CLOCK_SKEW_MS, DISK_FULL_FREE, SimulatedCluster};
use crate::backend::{
    BackendError, BackendResult, BackupInfo, Created, DiskSpace, DrainOptions, DrainReport,
    Election, Etcd, EtcdAddress, EtcdMember, Hook, HookOutcome, Kubernetes, NodeInfo, NodeSystem,
    PhaseGate, Taint, backup,
};
use crate::cluster::DnsConfig;

pub(crate) fn disk_free(s: &SimState, node: &str) -> u64 {
    let free = s.nodes.get(node).map(|n| n.disk_free).unwrap_or(0);
    if s.fault(FaultKind::DiskFull, node).is_some() {
        free.min(DISK_FULL_FREE)
    } else {
        free
    }
}

pub(crate) fn clock_offset(s: &SimState, node: &str) -> i64 {
    let o = s.nodes.get(node).map(|n| n.clock_offset_ms).unwrap_or(0);
    if s.fault(FaultKind::ClockSkew, node).is_some() {
        o + CLOCK_SKEW_MS
    } else {
        o
    }
}

pub(crate) fn dns_config(s: &SimState, node: &str) -> Option<DnsConfig> {
    if s.fault(FaultKind::DnsBroken, node).is_some() {
        return None;
    }
    s.nodes.get(node).and_then(|n| n.dns.clone())
}

/// The member through which clients see the cluster's data.
fn serving_member(s: &SimState) -> Option<&str> {
    s.cluster.masters().map(|m| m.hostname.as_str()).find(|h| {
        s.etcd
            .members
            .get(*h)
            .is_some_and(|m| m.serving == Some(EtcdAddress::Normal))
            && s.fault(FaultKind::NodeUnreachable, h).is_none()
    })
}

pub(crate) fn cluster_data(s: &SimState) -> Option<&BTreeMap<String, String>> {
    let m = serving_member(s)?;
    s.etcd.data.get(&s.etcd.members[m].data_dir)
}

fn cluster_data_mut(s: &mut SimState) -> BackendResult<&mut BTreeMap<String, String>> {
    let Some(m) = serving_member(s).map(str::to_string) else {
        return Err(BackendError::Etcd {
            node: s.cluster.name.clone(),
            detail: "no etcd member serves clients (the etcd cluster is down); finish or roll back the /etcd phase".into(),
        });
    };
    let dir = s.etcd.members[&m].data_dir.clone();
    Ok(s.etcd.data.entry(dir).or_default())
}

fn known(s: &SimState, node: &str) -> BackendResult<()> {
    if s.cluster.node(node).is_none() {
        return Err(BackendError::UnknownNode(node.to_string()));
    }
    Ok(())
}

fn reach(s: &SimState, node: &str) -> BackendResult<()> {
    known(s, node)?;
    if s.fault(FaultKind::NodeUnreachable, node).is_some() {
        return Err(BackendError::Unreachable {
            node: s.display(node),
            reason: "no route to host (simulated fault node-unreachable)".into(),
        });
    }
    Ok(())
}

fn kube_node<'a>(
    s: &'a mut SimState,
    node: &str,
) -> BackendResult<&'a mut super::state::SimKubeNode> {
    s.kube
        .nodes
        .get_mut(node)
        .ok_or_else(|| BackendError::UnknownNode(node.to_string()))
}

fn matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Puts pending pods on schedulable nodes.
fn schedule(s: &mut SimState) {
    for i in 0..s.kube.pods.len() {
        if s.kube.pods[i].node.is_none()
            && let Some(n) = pick_node(s, None)
        {
            s.kube.pods[i].node = Some(n);
        }
    }
}

/// The schedulable node with the fewest pods (cluster order breaks ties).
fn pick_node(s: &SimState, except: Option<&str>) -> Option<String> {
    s.cluster
        .nodes
        .iter()
        .map(|n| n.hostname.as_str())
        .filter(|h| Some(*h) != except)
        .filter(|h| {
            s.kube.nodes.get(*h).is_some_and(|k| !k.unschedulable)
                && s.nodes.get(*h).is_some_and(|n| n.runtime_running)
        })
        .min_by_key(|h| {
            s.kube
                .pods
                .iter()
                .filter(|p| p.node.as_deref() == Some(*h))
                .count()
        })
        .map(str::to_string)
}

fn created_objects(s: &mut SimState, objects: &[&str], cm: Option<(&str, &str)>) -> Created {
    let mut created = Created::default();
    for o in objects {
        if s.kube.objects.insert(o.to_string()) {
            created.objects.push(o.to_string());
        }
    }
    if let Some((name, corefile)) = cm
        && !s.kube.config_maps.contains_key(name)
    {
        s.kube.config_maps.insert(
            name.to_string(),
            BTreeMap::from([("Corefile".to_string(), corefile.to_string())]),
        );
        created.objects.push(format!("ConfigMap/{name}"));
    }
    created
}

#[async_trait]
impl Kubernetes for SimulatedCluster {
    async fn nodes(&self) -> BackendResult<Vec<NodeInfo>> {
        let s = self.read()?;
        let mut out = Vec::new();
        for n in &s.cluster.nodes {
            out.push(node_info(&s, &n.hostname)?);
        }
        Ok(out)
    }

    async fn node(&self, name: &str) -> BackendResult<NodeInfo> {
        node_info(&self.read()?, name)
    }

    async fn cordon(&self, node: &str) -> BackendResult<bool> {
        self.update(|s| {
            let k = kube_node(s, node)?;
            let changed = !k.unschedulable;
            k.unschedulable = true;
            Ok(changed)
        })
    }

    async fn uncordon(&self, node: &str) -> BackendResult<bool> {
        self.update(|s| {
            let k = kube_node(s, node)?;
            let changed = k.unschedulable;
            k.unschedulable = false;
            schedule(s);
            Ok(changed)
        })
    }

    async fn drain(&self, node: &str, opts: &DrainOptions) -> BackendResult<DrainReport> {
        self.update(|s| {
            known(s, node)?;
            let blocked_by_fault = s.fault(FaultKind::EvictionBlocked, node).is_some();
            let mut report = DrainReport::default();
            let mut blocked = Vec::new();
            let mut budgets = Vec::new();
            let on_node: Vec<usize> = (0..s.kube.pods.len())
                .filter(|&i| s.kube.pods[i].node.as_deref() == Some(node))
                .collect();
            for i in on_node {
                let p = &s.kube.pods[i];
                if p.mirror || p.owner.as_deref() == Some("DaemonSet") {
                    report.skipped.push(p.key());
                    continue;
                }
                let pdbs: Vec<_> = s
                    .kube
                    .pdbs
                    .iter()
                    .filter(|b| b.namespace == p.namespace && matches(&b.selector, &p.labels))
                    .cloned()
                    .collect();
                let target = pick_node(s, Some(node));
                let refusing: Vec<String> = pdbs
                    .iter()
                    .filter(|b| {
                        if blocked_by_fault {
                            return true;
                        }
                        let running = s
                            .kube
                            .pods
                            .iter()
                            .filter(|q| {
                                q.node.is_some()
                                    && q.namespace == b.namespace
                                    && matches(&b.selector, &q.labels)
                            })
                            .count();
                        target.is_none() && running.saturating_sub(1) < b.min_available
                    })
                    .map(|b| format!("{}/{}", b.namespace, b.name))
                    .collect();
                if !refusing.is_empty() {
                    blocked.push(p.key());
                    for b in refusing {
                        if !budgets.contains(&b) {
                            budgets.push(b);
                        }
                    }
                    continue;
                }
                report.evicted.push(p.key());
                let p = &mut s.kube.pods[i];
                p.node = target;
                p.restarts += 1;
            }
            if !blocked.is_empty() {
                return Err(BackendError::EvictionBlocked {
                    node: s.display(node),
                    pods: blocked.join(", "),
                    budgets: budgets.join(", "),
                    waited: opts.eviction_deadline,
                });
            }
            Ok(report)
        })
    }

    async fn add_taint(&self, node: &str, taint: &Taint) -> BackendResult<bool> {
        self.update(|s| {
            let k = kube_node(s, node)?;
            if k.taints.contains(taint) {
                return Ok(false);
            }
            k.taints.push(taint.clone());
            Ok(true)
        })
    }

    async fn remove_taint(&self, node: &str, taint: &Taint) -> BackendResult<bool> {
        self.update(|s| {
            let k = kube_node(s, node)?;
            let before = k.taints.len();
            k.taints.retain(|t| t != taint);
            Ok(k.taints.len() != before)
        })
    }

    async fn set_node_labels(
        &self,
        node: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> BackendResult<BTreeMap<String, Option<String>>> {
        self.update(|s| {
            let k = kube_node(s, node)?;
            let mut prev = BTreeMap::new();
            for (key, v) in labels {
                let old = match v {
                    Some(v) => k.labels.insert(key.clone(), v.clone()),
                    None => k.labels.remove(key),
                };
                prev.insert(key.clone(), old);
            }
            Ok(prev)
        })
    }

    async fn create_kubelet_permissions(&self) -> BackendResult<Created> {
        self.update(|s| {
            Ok(created_objects(
                s,
                &[
                    "ClusterRole/kubelet-upgrade",
                    "ClusterRoleBinding/kubelet-upgrade",
                ],
                None,
            ))
        })
    }

    async fn create_coredns(&self, corefile: &str) -> BackendResult<Created> {
        self.update(|s| {
            Ok(created_objects(
                s,
                &[
                    "ClusterRole/gravity:coredns",
                    "ClusterRoleBinding/gravity:coredns",
                ],
                Some(("kube-system/coredns", corefile)),
            ))
        })
    }

    async fn delete_objects(&self, objects: &[String]) -> BackendResult<()> {
        self.update(|s| {
            for o in objects {
                if let Some(cm) = o.strip_prefix("ConfigMap/") {
                    s.kube.config_maps.remove(cm);
                } else {
                    s.kube.objects.remove(o);
                }
            }
            Ok(())
        })
    }

    async fn run_hook(&self, app: &Locator, hook: Hook) -> BackendResult<HookOutcome> {
        self.update(|s| {
            // Only the user application defines a preUpdate hook.
            let user_app = s.cluster.installed.app.name() == app.name();
            if hook == Hook::PreUpdate && !user_app {
                return Ok(HookOutcome {
                    ran: false,
                    logs: Vec::new(),
                });
            }
            let job = format!("{}:{}", app, hook.as_str());
            s.kube.hook_jobs.push(job.clone());
            Ok(HookOutcome {
                ran: true,
                logs: vec![format!("job {job} completed")],
            })
        })
    }

    async fn application(&self, repository: &str, name: &str) -> BackendResult<Option<Locator>> {
        Ok(self
            .read()?
            .kube
            .applications
            .get(&format!("{repository}/{name}"))
            .cloned())
    }

    async fn set_application(
        &self,
        repository: &str,
        name: &str,
        app: Option<&Locator>,
    ) -> BackendResult<Option<Locator>> {
        self.update(|s| {
            let key = format!("{repository}/{name}");
            Ok(match app {
                Some(a) => s.kube.applications.insert(key, a.clone()),
                None => s.kube.applications.remove(&key),
            })
        })
    }

    async fn wait_endpoints(&self, node: &str, timeout: Duration) -> BackendResult<()> {
        let s = self.read()?;
        known(&s, node)?;
        let not_ready = |detail: String| {
            Err(BackendError::EndpointsNotReady {
                node: s.display(node),
                detail: format!("{detail} (waited {timeout:?})"),
            })
        };
        let running = |h: &str| {
            s.nodes.get(h).is_some_and(|n| n.runtime_running)
                && s.fault(FaultKind::NodeUnreachable, h).is_none()
        };
        let site = s.kube.pods.iter().any(|p| {
            p.namespace == "kube-system"
                && p.labels.get("app").map(String::as_str) == Some("gravity-site")
                && p.node.as_deref().is_some_and(running)
        });
        if !site {
            return not_ready("no gravity-site endpoint is serving".into());
        }
        let dns = s.kube.pods.iter().any(|p| {
            p.namespace == "kube-system"
                && matches!(
                    p.labels.get("k8s-app").map(String::as_str),
                    Some("kube-dns" | "kubedns" | "kube-dns-worker")
                )
                && p.node.as_deref() == Some(node)
        });
        if !dns || !running(node) || dns_config(&s, node).is_none() {
            return not_ready("the node's kube-dns endpoint is not serving".into());
        }
        Ok(())
    }

    async fn delete_pods(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> BackendResult<usize> {
        self.update(|s| {
            let mut n = 0;
            for p in &mut s.kube.pods {
                if p.namespace == namespace && matches(selector, &p.labels) {
                    p.restarts += 1;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BackendResult<Option<BTreeMap<String, String>>> {
        Ok(self
            .read()?
            .kube
            .config_maps
            .get(&format!("{namespace}/{name}"))
            .cloned())
    }

    async fn put_config_map(
        &self,
        namespace: &str,
        name: &str,
        data: Option<&BTreeMap<String, String>>,
    ) -> BackendResult<Option<BTreeMap<String, String>>> {
        self.update(|s| {
            let key = format!("{namespace}/{name}");
            Ok(match data {
                Some(d) => s.kube.config_maps.insert(key, d.clone()),
                None => s.kube.config_maps.remove(&key),
            })
        })
    }
}

fn node_info(s: &SimState, name: &str) -> BackendResult<NodeInfo> {
    let k = s
        .kube
        .nodes
        .get(name)
        .ok_or_else(|| BackendError::UnknownNode(name.to_string()))?;
    Ok(NodeInfo {
        name: name.to_string(),
        labels: k.labels.clone(),
        taints: k.taints.clone(),
        unschedulable: k.unschedulable,
        ready: s.nodes.get(name).is_some_and(|n| n.runtime_running)
            && s.fault(FaultKind::NodeUnreachable, name).is_none(),
    })
}

fn member_mut<'a>(s: &'a mut SimState, node: &str) -> Option<&'a mut super::state::SimEtcdMember> {
    s.etcd.members.get_mut(node)
}

#[async_trait]
impl Etcd for SimulatedCluster {
    async fn backup(&self, node: &str, path: &str) -> BackendResult<BackupInfo> {
        self.update(|s| {
            reach(s, node)?;
            let display = s.display(node);
            let Some(m) = s.etcd.members.get(node) else {
                return Err(BackendError::Etcd {
                    node: display,
                    detail: "the node has no etcd member to back up".into(),
                });
            };
            if m.serving.is_none() {
                return Err(BackendError::Etcd {
                    node: display,
                    detail: "etcd is not running; start it (roll back /etcd/shutdown) and retry the backup".into(),
                });
            }
            let data = s.etcd.data.get(&m.data_dir).cloned().unwrap_or_default();
            let (text, trailer) = backup::encode(&data);
            let free = disk_free(s, node);
            if (text.len() as u64) > free || s.fault(FaultKind::DiskFull, node).is_some() {
                return Err(BackendError::DiskFull {
                    node: display,
                    path: path.to_string(),
                    free,
                    needed: (text.len() as u64).max(DISK_FULL_FREE + 1),
                });
            }
            s.nodes
                .get_mut(node)
                .expect("known node")
                .files
                .insert(path.to_string(), text);
            Ok(BackupInfo {
                keys: trailer.count,
                sha256: trailer.sha256,
            })
        })
    }

    async fn shutdown(&self, node: &str) -> BackendResult<bool> {
        self.update(|s| {
            reach(s, node)?;
            Ok(match member_mut(s, node) {
                Some(m) => m.serving.take().is_some(),
                None => false,
            })
        })
    }

    async fn start(&self, node: &str, address: EtcdAddress) -> BackendResult<bool> {
        self.update(|s| {
            reach(s, node)?;
            Ok(match member_mut(s, node) {
                Some(m) => {
                    let was_stopped = m.serving.is_none();
                    m.serving = Some(address);
                    was_stopped
                }
                None => false,
            })
        })
    }

    async fn upgrade(&self, node: &str, version: &Version) -> BackendResult<bool> {
        self.update(|s| {
            reach(s, node)?;
            let display = s.display(node);
            let Some(m) = member_mut(s, node) else {
                return Err(BackendError::Etcd {
                    node: display,
                    detail: "the node has no etcd member to upgrade".into(),
                });
            };
            if m.version == *version {
                return Ok(false);
            }
            if m.serving.is_some() {
                return Err(BackendError::Etcd {
                    node: display,
                    detail: "etcd is still running; shut it down first (/etcd/shutdown)".into(),
                });
            }
            m.previous = Some((m.version.clone(), m.data_dir.clone()));
            m.version = version.clone();
            m.data_dir = etcd_data_dir(version);
            let dir = m.data_dir.clone();
            s.etcd.data.entry(dir).or_default();
            Ok(true)
        })
    }

    async fn rollback_upgrade(&self, node: &str) -> BackendResult<bool> {
        self.update(|s| {
            reach(s, node)?;
            Ok(match member_mut(s, node) {
                Some(m) => match m.previous.take() {
                    Some((v, d)) => {
                        m.version = v;
                        m.data_dir = d;
                        true
                    }
                    None => false,
                },
                None => false,
            })
        })
    }

    async fn restore(&self, node: &str, path: &str) -> BackendResult<usize> {
        self.update(|s| {
            reach(s, node)?;
            let display = s.display(node);
            let Some(m) = s.etcd.members.get(node) else {
                return Err(BackendError::Etcd {
                    node: display,
                    detail: "the node has no etcd member to restore into".into(),
                });
            };
            if m.serving.is_none() {
                return Err(BackendError::Etcd {
                    node: display,
                    detail: "etcd is not running (wait-for-etcd failed); run /etcd/upgrade first"
                        .into(),
                });
            }
            let dir = m.data_dir.clone();
            let text =
                s.nodes[node]
                    .files
                    .get(path)
                    .cloned()
                    .ok_or_else(|| BackendError::BadBackup {
                        path: format!("{display}:{path}"),
                        reason: "the file does not exist".into(),
                    })?;
            let data = backup::decode(&text).map_err(|reason| BackendError::BadBackup {
                path: format!("{display}:{path}"),
                reason,
            })?;
            let n = data.len();
            s.etcd.data.entry(dir).or_default().extend(data);
            Ok(n)
        })
    }

    async fn member(&self, node: &str) -> BackendResult<Option<EtcdMember>> {
        let s = self.read()?;
        reach(&s, node)?;
        Ok(s.etcd.members.get(node).map(|m| EtcdMember {
            node: node.to_string(),
            version: m.version.clone(),
            data_dir: m.data_dir.clone(),
            previous: m.previous.clone(),
            serving: m.serving,
            healthy: m.serving.is_some(),
        }))
    }

    async fn get(&self, key: &str) -> BackendResult<Option<String>> {
        let mut s = self.read()?;
        Ok(cluster_data_mut(&mut s)?.get(key).cloned())
    }

    async fn put(&self, key: &str, value: &str) -> BackendResult<()> {
        self.update(|s| {
            cluster_data_mut(s)?.insert(key.to_string(), value.to_string());
            Ok(())
        })
    }

    async fn list(&self, prefix: &str) -> BackendResult<BTreeMap<String, String>> {
        let mut s = self.read()?;
        Ok(cluster_data_mut(&mut s)?
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }
}

fn sys<'a>(s: &'a mut SimState, node: &str) -> BackendResult<&'a mut super::state::SimNode> {
    reach(s, node)?;
    s.nodes
        .get_mut(node)
        .ok_or_else(|| BackendError::UnknownNode(node.to_string()))
}

#[async_trait]
impl NodeSystem for SimulatedCluster {
    async fn ping(&self, node: &str) -> BackendResult<()> {
        reach(&self.read()?, node)
    }

    async fn agent_running(&self, node: &str) -> BackendResult<bool> {
        let mut s = self.read()?;
        Ok(sys(&mut s, node)?.agent_running)
    }

    async fn deploy_agent(&self, node: &str) -> BackendResult<bool> {
        self.update(|s| {
            let n = sys(s, node)?;
            Ok(!std::mem::replace(&mut n.agent_running, true))
        })
    }

    async fn shutdown_agent(&self, node: &str) -> BackendResult<bool> {
        self.update(|s| {
            let n = sys(s, node)?;
            Ok(std::mem::replace(&mut n.agent_running, false))
        })
    }

    async fn runtime(&self, node: &str) -> BackendResult<Locator> {
        let mut s = self.read()?;
        Ok(sys(&mut s, node)?.runtime.clone())
    }

    async fn switch_runtime(
        &self,
        node: &str,
        package: &Locator,
        no_start: bool,
    ) -> BackendResult<Locator> {
        self.update(|s| {
            let n = sys(s, node)?;
            let prev = std::mem::replace(&mut n.runtime, package.clone());
            n.runtime_running = !no_start;
            schedule(s);
            Ok(prev)
        })
    }

    async fn set_runtime_running(&self, node: &str, running: bool) -> BackendResult<bool> {
        self.update(|s| {
            let n = sys(s, node)?;
            let changed = n.runtime_running != running;
            n.runtime_running = running;
            schedule(s);
            Ok(changed)
        })
    }

    async fn disk_space(&self, node: &str, _path: &str) -> BackendResult<DiskSpace> {
        let mut s = self.read()?;
        let total = sys(&mut s, node)?.disk_total;
        Ok(DiskSpace {
            total,
            free: disk_free(&s, node),
        })
    }

    async fn clock(&self, node: &str) -> BackendResult<DateTime<Utc>> {
        let mut s = self.read()?;
        sys(&mut s, node)?;
        Ok(Utc::now() + chrono::Duration::milliseconds(clock_offset(&s, node)))
    }

    async fn dns_config(&self, node: &str) -> BackendResult<Option<DnsConfig>> {
        let mut s = self.read()?;
        sys(&mut s, node)?;
        Ok(dns_config(&s, node))
    }

    async fn check_temp_dir(&self, node: &str) -> BackendResult<()> {
        let mut s = self.read()?;
        sys(&mut s, node)?;
        if s.fault(FaultKind::DiskFull, node).is_some() {
            return Err(BackendError::Injected(format!(
                "failed to create a test file in temp directory /tmp on {:?}: No space left on device",
                s.display(node)
            )));
        }
        Ok(())
    }

    async fn restart_service(&self, node: &str, service: &str) -> BackendResult<()> {
        self.update(|s| {
            *sys(s, node)?
                .service_restarts
                .entry(service.to_string())
                .or_default() += 1;
            Ok(())
        })
    }

    async fn gc_journal(&self, node: &str) -> BackendResult<()> {
        self.update(|s| {
            sys(s, node)?.journal_gc += 1;
            Ok(())
        })
    }

    async fn set_docker_device(
        &self,
        node: &str,
        device: &str,
        state: &str,
    ) -> BackendResult<String> {
        self.update(|s| {
            let n = sys(s, node)?;
            Ok(n.docker_devices
                .insert(device.to_string(), state.to_string())
                .unwrap_or_else(|| "none".into()))
        })
    }

    async fn record(&self, node: &str, key: &str) -> BackendResult<Option<serde_json::Value>> {
        let mut s = self.read()?;
        Ok(sys(&mut s, node)?.records.get(key).cloned())
    }

    async fn put_record(
        &self,
        node: &str,
        key: &str,
        value: Option<&serde_json::Value>,
    ) -> BackendResult<()> {
        self.update(|s| {
            let n = sys(s, node)?;
            match value {
                Some(v) => n.records.insert(key.to_string(), v.clone()),
                None => n.records.remove(key),
            };
            Ok(())
        })
    }
}

#[async_trait]
impl Election for SimulatedCluster {
    async fn leader(&self) -> BackendResult<Option<String>> {
        Ok(self.read()?.leader)
    }

    async fn set_enabled(&self, node: &str, enabled: bool) -> BackendResult<Option<bool>> {
        self.update(|s| {
            known(s, node)?;
            if !s.cluster.node(node).is_some_and(|n| n.is_master()) {
                return Err(BackendError::Other(format!(
                    "node {} is not a master; leader election only runs on masters",
                    s.display(node)
                )));
            }
            let prev = s.election.insert(node.to_string(), enabled);
            let key = format!("/planet/cluster/{}/election/{}", s.cluster.name, s.ip(node));
            if let Ok(data) = cluster_data_mut(s) {
                data.insert(key, enabled.to_string());
            } else {
                return Err(BackendError::Other(format!(
                    "setting leader election on {:?} to {enabled}: etcd is not serving clients",
                    s.display(node)
                )));
            }
            s.reelect();
            Ok(prev)
        })
    }

    async fn status(&self) -> BackendResult<BTreeMap<String, bool>> {
        Ok(self.read()?.election)
    }
}

#[async_trait]
impl PhaseGate for SimulatedCluster {
    async fn before_execute(&self, phase: &str, node: Option<&str>) -> BackendResult<()> {
        let s = self.read()?;
        for f in &s.faults {
            if f.kind != FaultKind::PhaseFails {
                continue;
            }
            let Some(p) = f.phase.as_deref() else {
                continue;
            };
            let hit = phase == p || phase.starts_with(&format!("{}/", p.trim_end_matches('/')));
            let node_ok = match (&f.node, node) {
                (None, _) => true,
                (Some(a), Some(b)) => a == b,
                (Some(_), None) => false,
            };
            if hit && node_ok {
                let on = node
                    .map(|n| s.display(n))
                    .unwrap_or_else(|| "the coordinator".into());
                return Err(BackendError::Injected(format!(
                    "phase {phase} failed on node {on}: simulated failure (fault phase-fails); heal it and resume"
                )));
            }
        }
        Ok(())
    }
}
