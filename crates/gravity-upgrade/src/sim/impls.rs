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
    s.master_names().iter().map(String::as_str).find(|h| {
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

/// The data dir through which clients see the cluster's data.
fn serving_dir(s: &SimState) -> BackendResult<String> {
    let Some(m) = serving_member(s) else {
        return Err(BackendError::Etcd {
            node: s.cluster.name.clone(),
            detail: "no etcd member serves clients (the etcd cluster is down); finish or roll back the /etcd phase".into(),
        });
    };
    Ok(s.etcd.members[m].data_dir.clone())
}

fn known(s: &SimState, node: &str) -> BackendResult<()> {
    if s.position(node).is_none() {
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
    s.kube_node_mut(node)
        .ok_or_else(|| BackendError::UnknownNode(node.to_string()))
}

/// Puts pending pods on schedulable nodes.
fn schedule(s: &mut SimState) {
    let pending: Vec<usize> = s.pending_pods().collect();
    for i in pending {
        if let Some(n) = s.pick_node(None) {
            s.set_pod_node(i, Some(n));
        }
    }
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
        self.look(|s| {
            let mut out = Vec::new();
            for n in &s.cluster.nodes {
                out.push(node_info(s, &n.hostname)?);
            }
            Ok(out)
        })
        .await
    }

    async fn node(&self, name: &str) -> BackendResult<NodeInfo> {
        self.look(|s| node_info(s, name)).await
    }

    async fn cordon(&self, node: &str) -> BackendResult<bool> {
        self.change(|s| {
            if s.kube.nodes.get(node).is_some_and(|k| k.unschedulable) {
                return Ok(false);
            }
            kube_node(s, node)?.unschedulable = true;
            s.refresh_eligible(node);
            Ok(true)
        })
        .await
    }

    async fn uncordon(&self, node: &str) -> BackendResult<bool> {
        self.change(|s| {
            let changed = s.kube.nodes.get(node).is_some_and(|k| k.unschedulable);
            if changed {
                kube_node(s, node)?.unschedulable = false;
                s.refresh_eligible(node);
            } else {
                known(s, node)?;
                if !s.kube.nodes.contains_key(node) {
                    return Err(BackendError::UnknownNode(node.to_string()));
                }
            }
            schedule(s);
            Ok(changed)
        })
        .await
    }

    async fn drain(&self, node: &str, opts: &DrainOptions) -> BackendResult<DrainReport> {
        self.change(|s| {
            known(s, node)?;
            let blocked_by_fault = s.fault(FaultKind::EvictionBlocked, node).is_some();
            let mut report = DrainReport::default();
            let mut blocked = Vec::new();
            let mut budgets = Vec::new();
            let on_node: Vec<usize> = s.pods_on(node).collect();
            for i in on_node {
                let p = &s.kube.pods[i];
                if p.mirror || p.owner.as_deref() == Some("DaemonSet") {
                    report.skipped.push(p.key());
                    continue;
                }
                let target = s.pick_node(Some(node));
                let refusing: Vec<String> = s
                    .pdbs_of(i)
                    .iter()
                    .filter(|&&j| {
                        if blocked_by_fault {
                            return true;
                        }
                        let running = s.pdb_running(j);
                        target.is_none() && running.saturating_sub(1) < s.kube.pdbs[j].min_available
                    })
                    .map(|&j| format!("{}/{}", s.kube.pdbs[j].namespace, s.kube.pdbs[j].name))
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
                s.set_pod_node(i, target);
                s.pod_mut(i).restarts += 1;
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
        .await
    }

    async fn add_taint(&self, node: &str, taint: &Taint) -> BackendResult<bool> {
        self.change(|s| {
            let k = kube_node(s, node)?;
            if k.taints.contains(taint) {
                return Ok(false);
            }
            k.taints.push(taint.clone());
            Ok(true)
        })
        .await
    }

    async fn remove_taint(&self, node: &str, taint: &Taint) -> BackendResult<bool> {
        self.change(|s| {
            let k = kube_node(s, node)?;
            let before = k.taints.len();
            k.taints.retain(|t| t != taint);
            Ok(k.taints.len() != before)
        })
        .await
    }

    async fn set_node_labels(
        &self,
        node: &str,
        labels: &BTreeMap<String, Option<String>>,
    ) -> BackendResult<BTreeMap<String, Option<String>>> {
        self.change(|s| {
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
        .await
    }

    async fn create_kubelet_permissions(&self) -> BackendResult<Created> {
        self.change(|s| {
            Ok(created_objects(
                s,
                &[
                    "ClusterRole/kubelet-upgrade",
                    "ClusterRoleBinding/kubelet-upgrade",
                ],
                None,
            ))
        })
        .await
    }

    async fn create_coredns(&self, corefile: &str) -> BackendResult<Created> {
        self.change(|s| {
            Ok(created_objects(
                s,
                &[
                    "ClusterRole/gravity:coredns",
                    "ClusterRoleBinding/gravity:coredns",
                ],
                Some(("kube-system/coredns", corefile)),
            ))
        })
        .await
    }

    async fn delete_objects(&self, objects: &[String]) -> BackendResult<()> {
        self.change(|s| {
            for o in objects {
                if let Some(cm) = o.strip_prefix("ConfigMap/") {
                    s.kube.config_maps.remove(cm);
                } else {
                    s.kube.objects.remove(o);
                }
            }
            Ok(())
        })
        .await
    }

    async fn run_hook(&self, app: &Locator, hook: Hook) -> BackendResult<HookOutcome> {
        self.change(|s| {
            // Only the user application defines a preUpdate hook, and the
            // simulated images have no overlay-network application (the
            // only kind that defines the network hooks).
            let user_app = s.cluster.installed.app.name() == app.name();
            let defined = match hook {
                Hook::PreUpdate => user_app,
                Hook::NetworkUpdate | Hook::NetworkRollback => false,
                _ => true,
            };
            if !defined {
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
        .await
    }

    async fn application(&self, repository: &str, name: &str) -> BackendResult<Option<Locator>> {
        self.look(|s| {
            Ok(s.kube
                .applications
                .get(&format!("{repository}/{name}"))
                .cloned())
        })
        .await
    }

    async fn set_application(
        &self,
        repository: &str,
        name: &str,
        app: Option<&Locator>,
    ) -> BackendResult<Option<Locator>> {
        self.change(|s| {
            let key = format!("{repository}/{name}");
            Ok(match app {
                Some(a) => s.kube.applications.insert(key, a.clone()),
                None => s.kube.applications.remove(&key),
            })
        })
        .await
    }

    async fn wait_endpoints(&self, node: &str, timeout: Duration) -> BackendResult<()> {
        self.look(|s| endpoints_ready(s, node, timeout)).await
    }

    async fn delete_pods(
        &self,
        namespace: &str,
        selector: &BTreeMap<String, String>,
    ) -> BackendResult<usize> {
        self.change(|s| {
            let pods = s.select_pods(namespace, selector);
            for &i in &pods {
                s.pod_mut(i).restarts += 1;
            }
            Ok(pods.len())
        })
        .await
    }

    async fn config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> BackendResult<Option<BTreeMap<String, String>>> {
        self.look(|s| {
            Ok(s.kube
                .config_maps
                .get(&format!("{namespace}/{name}"))
                .cloned())
        })
        .await
    }

    async fn put_config_map(
        &self,
        namespace: &str,
        name: &str,
        data: Option<&BTreeMap<String, String>>,
    ) -> BackendResult<Option<BTreeMap<String, String>>> {
        self.change(|s| {
            let key = format!("{namespace}/{name}");
            Ok(match data {
                Some(d) => s.kube.config_maps.insert(key, d.clone()),
                None => s.kube.config_maps.remove(&key),
            })
        })
        .await
    }
}

fn endpoints_ready(s: &SimState, node: &str, timeout: Duration) -> BackendResult<()> {
    known(s, node)?;
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
    let site_selector = BTreeMap::from([("app".to_string(), "gravity-site".to_string())]);
    let site = s
        .select_pods("kube-system", &site_selector)
        .into_iter()
        .any(|i| s.kube.pods[i].node.as_deref().is_some_and(running));
    if !site {
        return not_ready("no gravity-site endpoint is serving".into());
    }
    let dns = s.pods_on(node).any(|i| {
        let p = &s.kube.pods[i];
        p.namespace == "kube-system"
            && matches!(
                p.labels.get("k8s-app").map(String::as_str),
                Some("kube-dns" | "kubedns" | "kube-dns-worker")
            )
    });
    if !dns || !running(node) || dns_config(s, node).is_none() {
        return not_ready("the node's kube-dns endpoint is not serving".into());
    }
    Ok(())
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
        self.change(|s| {
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
            s.put_file(node, path, text);
            Ok(BackupInfo {
                keys: trailer.count,
                sha256: trailer.sha256,
            })
        })
        .await
    }

    async fn shutdown(&self, node: &str) -> BackendResult<bool> {
        self.change(|s| {
            reach(s, node)?;
            Ok(match member_mut(s, node) {
                Some(m) => m.serving.take().is_some(),
                None => false,
            })
        })
        .await
    }

    async fn start(&self, node: &str, address: EtcdAddress) -> BackendResult<bool> {
        self.change(|s| {
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
        .await
    }

    async fn upgrade(&self, node: &str, version: &Version) -> BackendResult<bool> {
        self.change(|s| {
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
            s.etcd_dir(&dir);
            Ok(true)
        })
        .await
    }

    async fn rollback_upgrade(&self, node: &str) -> BackendResult<bool> {
        self.change(|s| {
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
        .await
    }

    async fn restore(&self, node: &str, path: &str) -> BackendResult<usize> {
        self.change(|s| {
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
            s.etcd_dir(&dir);
            for (k, v) in &data {
                s.etcd_put(&dir, k, v);
            }
            Ok(n)
        })
        .await
    }

    async fn member(&self, node: &str) -> BackendResult<Option<EtcdMember>> {
        self.look(|s| {
            reach(s, node)?;
            Ok(s.etcd.members.get(node).map(|m| EtcdMember {
                node: node.to_string(),
                version: m.version.clone(),
                data_dir: m.data_dir.clone(),
                previous: m.previous.clone(),
                serving: m.serving,
                healthy: m.serving.is_some(),
            }))
        })
        .await
    }

    async fn get(&self, key: &str) -> BackendResult<Option<String>> {
        self.look(|s| {
            let dir = serving_dir(s)?;
            Ok(s.etcd.data.get(&dir).and_then(|m| m.get(key)).cloned())
        })
        .await
    }

    async fn put(&self, key: &str, value: &str) -> BackendResult<()> {
        self.change(|s| {
            let dir = serving_dir(s)?;
            s.etcd_put(&dir, key, value);
            Ok(())
        })
        .await
    }

    async fn delete(&self, key: &str) -> BackendResult<bool> {
        self.change(|s| {
            let dir = serving_dir(s)?;
            Ok(s.etcd_delete(&dir, key))
        })
        .await
    }

    async fn list(&self, prefix: &str) -> BackendResult<BTreeMap<String, String>> {
        self.look(|s| {
            let dir = serving_dir(s)?;
            Ok(s.etcd
                .data
                .get(&dir)
                .into_iter()
                .flat_map(|m| {
                    m.range::<str, _>((
                        std::ops::Bound::Included(prefix),
                        std::ops::Bound::Unbounded,
                    ))
                })
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect())
        })
        .await
    }
}

fn sys<'a>(s: &'a mut SimState, node: &str) -> BackendResult<&'a mut super::state::SimNode> {
    reach(s, node)?;
    s.node_mut(node)
        .ok_or_else(|| BackendError::UnknownNode(node.to_string()))
}

/// A node's system, to read.
fn sys_ref<'a>(s: &'a SimState, node: &str) -> BackendResult<&'a super::state::SimNode> {
    reach(s, node)?;
    s.nodes
        .get(node)
        .ok_or_else(|| BackendError::UnknownNode(node.to_string()))
}

#[async_trait]
impl NodeSystem for SimulatedCluster {
    async fn ping(&self, node: &str) -> BackendResult<()> {
        self.look(|s| reach(s, node)).await
    }

    async fn agent_running(&self, node: &str) -> BackendResult<bool> {
        self.look(|s| Ok(sys_ref(s, node)?.agent_running)).await
    }

    async fn deploy_agent(&self, node: &str) -> BackendResult<bool> {
        self.change(|s| {
            let n = sys(s, node)?;
            Ok(!std::mem::replace(&mut n.agent_running, true))
        })
        .await
    }

    async fn shutdown_agent(&self, node: &str) -> BackendResult<bool> {
        self.change(|s| {
            let n = sys(s, node)?;
            Ok(std::mem::replace(&mut n.agent_running, false))
        })
        .await
    }

    async fn runtime(&self, node: &str) -> BackendResult<Locator> {
        self.look(|s| Ok(sys_ref(s, node)?.runtime.clone())).await
    }

    async fn switch_runtime(
        &self,
        node: &str,
        package: &Locator,
        no_start: bool,
    ) -> BackendResult<Locator> {
        self.change(|s| {
            let n = sys(s, node)?;
            let prev = std::mem::replace(&mut n.runtime, package.clone());
            n.runtime_running = !no_start;
            s.refresh_eligible(node);
            schedule(s);
            Ok(prev)
        })
        .await
    }

    async fn set_runtime_running(&self, node: &str, running: bool) -> BackendResult<bool> {
        self.change(|s| {
            let n = sys(s, node)?;
            let changed = n.runtime_running != running;
            n.runtime_running = running;
            s.refresh_eligible(node);
            schedule(s);
            Ok(changed)
        })
        .await
    }

    async fn disk_space(&self, node: &str, _path: &str) -> BackendResult<DiskSpace> {
        self.look(|s| {
            let total = sys_ref(s, node)?.disk_total;
            Ok(DiskSpace {
                total,
                free: disk_free(s, node),
            })
        })
        .await
    }

    async fn clock(&self, node: &str) -> BackendResult<DateTime<Utc>> {
        self.look(|s| {
            sys_ref(s, node)?;
            Ok(Utc::now() + chrono::Duration::milliseconds(clock_offset(s, node)))
        })
        .await
    }

    async fn dns_config(&self, node: &str) -> BackendResult<Option<DnsConfig>> {
        self.look(|s| {
            sys_ref(s, node)?;
            Ok(dns_config(s, node))
        })
        .await
    }

    async fn check_temp_dir(&self, node: &str) -> BackendResult<()> {
        self.look(|s| {
            sys_ref(s, node)?;
            if s.fault(FaultKind::DiskFull, node).is_some() {
                return Err(BackendError::Injected(format!(
                    "failed to create a test file in temp directory /tmp on {:?}: No space left on device",
                    s.display(node)
                )));
            }
            Ok(())
        })
        .await
    }

    async fn restart_service(&self, node: &str, service: &str) -> BackendResult<()> {
        self.change(|s| {
            *sys(s, node)?
                .service_restarts
                .entry(service.to_string())
                .or_default() += 1;
            Ok(())
        })
        .await
    }

    async fn gc_journal(&self, node: &str) -> BackendResult<()> {
        self.change(|s| {
            sys(s, node)?.journal_gc += 1;
            Ok(())
        })
        .await
    }

    async fn set_docker_device(
        &self,
        node: &str,
        device: &str,
        state: &str,
    ) -> BackendResult<String> {
        self.change(|s| {
            let n = sys(s, node)?;
            Ok(n.docker_devices
                .insert(device.to_string(), state.to_string())
                .unwrap_or_else(|| "none".into()))
        })
        .await
    }

    async fn record(&self, node: &str, key: &str) -> BackendResult<Option<serde_json::Value>> {
        self.look(|s| Ok(sys_ref(s, node)?.records.get(key).cloned()))
            .await
    }

    async fn put_record(
        &self,
        node: &str,
        key: &str,
        value: Option<&serde_json::Value>,
    ) -> BackendResult<()> {
        self.change(|s| {
            sys_ref(s, node)?;
            s.put_record(node, key, value.cloned());
            Ok(())
        })
        .await
    }
}

#[async_trait]
impl Election for SimulatedCluster {
    async fn leader(&self) -> BackendResult<Option<String>> {
        self.look(|s| Ok(s.leader.clone())).await
    }

    async fn set_enabled(&self, node: &str, enabled: bool) -> BackendResult<Option<bool>> {
        self.change(|s| {
            known(s, node)?;
            if !s
                .position(node)
                .is_some_and(|i| s.cluster.nodes[i].is_master())
            {
                return Err(BackendError::Other(format!(
                    "node {} is not a master; leader election only runs on masters",
                    s.display(node)
                )));
            }
            let prev = s.election.insert(node.to_string(), enabled);
            let key = format!("/planet/cluster/{}/election/{}", s.cluster.name, s.ip(node));
            if let Ok(dir) = serving_dir(s) {
                s.etcd_put(&dir, &key, &enabled.to_string());
            } else {
                return Err(BackendError::Other(format!(
                    "setting leader election on {:?} to {enabled}: etcd is not serving clients",
                    s.display(node)
                )));
            }
            s.reelect();
            Ok(prev)
        })
        .await
    }

    async fn status(&self) -> BackendResult<BTreeMap<String, bool>> {
        self.look(|s| Ok(s.election.clone())).await
    }
}

#[async_trait]
impl PhaseGate for SimulatedCluster {
    async fn before_execute(&self, phase: &str, node: Option<&str>) -> BackendResult<()> {
        self.look(|s| gate(s, phase, node)).await
    }
}

fn gate(s: &SimState, phase: &str, node: Option<&str>) -> BackendResult<()> {
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
