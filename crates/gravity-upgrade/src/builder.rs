//! The upgrade plan builder: (cluster, installed, target image) →
//! [`gravity_plan::Plan`] with only the phases that are needed (spec §1–§2).
//!
//! The builder is linear in the number of nodes: the node order (leader
//! first, masters, workers) is computed once as index lists, every node's
//! [`UpdateServer`] is computed once per step, and requirements are wired
//! while the tree is built (no searching the tree or the server list).

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use gravity_pack::{Locator, Version};
use gravity_plan::{GraphError, Node, Phase, PhaseData, PhasePath, Plan, PlanGraph};
use serde::Serialize;
use uuid::Uuid;

use crate::cluster::{Cluster, ClusterNode, DnsConfig};
use crate::error::BuildError;
use crate::executors::{self as ex, *};
use crate::image::{ClusterImage, Extensions};

/// The operation kind of upgrade plans.
pub const OPERATION_KIND: &str = "update";

/// The first runtime version whose nodes are tainted during their upgrade.
pub const BASE_TAINTS_VERSION: &str = "4.36.0";

/// The first runtime version with the overlay network checker; clusters
/// below it get the `/flannel` phase.
pub const FLANNEL_FIX_VERSION: &str = "5.5.46";

/// How the plan is built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// How many workers are upgraded at once (the `/nodes` phase's
    /// `parallel` limit); `--parallel-workers`, default 1 (Gravity's
    /// behaviour). 0 is treated as 1.
    pub parallel_workers: usize,
    /// Operation id; a random UUID when absent.
    pub operation_id: Option<String>,
    /// Creation time; now when absent. Its Unix time is the build metadata
    /// of generated package versions (`5.5.54-11312+1596339382`).
    pub created: Option<DateTime<Utc>>,
    /// The lead master (host name or advertise address): the node the
    /// upgrade is driven from. The first master when absent.
    pub leader: Option<String>,
    /// `--docker-device`: the device for a devicemapper → overlay migration.
    pub docker_device: Option<String>,
    /// The target step's package changeset id; random when absent.
    /// Intermediate steps derive theirs from it (or are random too).
    pub changeset_id: Option<Uuid>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            parallel_workers: 1,
            operation_id: None,
            created: None,
            leader: None,
            docker_device: None,
            changeset_id: None,
        }
    }
}

impl BuildOptions {
    /// Options with a fixed operation id, creation time and changeset id,
    /// so that the same inputs always give the same plan.
    pub fn deterministic(operation_id: impl Into<String>, created: DateTime<Utc>) -> Self {
        BuildOptions {
            operation_id: Some(operation_id.into()),
            created: Some(created),
            changeset_id: Some(Uuid::from_u128(0x6f1c_26f5_0d7a_4a8c_9b1e_0000_0000_0001)),
            ..BuildOptions::default()
        }
    }

    /// The same options with another worker parallelism.
    pub fn with_parallel_workers(mut self, n: usize) -> Self {
        self.parallel_workers = n;
        self
    }

    /// The same options with another lead master.
    pub fn with_leader(mut self, leader: impl Into<String>) -> Self {
        self.leader = Some(leader.into());
        self
    }
}

/// The etcd upgrade decided for a step (spec §1.4).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdUpgrade {
    /// Installed version; `None` when the installed planet had no label.
    pub installed: Option<Version>,
    /// Version after the upgrade.
    pub update: Version,
}

impl EtcdUpgrade {
    /// Decides whether etcd is upgraded: when the installed version is
    /// unknown or lower. The update runtime package must carry a version.
    pub fn decide(
        installed: Option<&Version>,
        update: Option<&Version>,
        update_package: &Locator,
    ) -> Result<Option<EtcdUpgrade>, BuildError> {
        let update = update
            .ok_or_else(|| BuildError::MissingEtcdVersion(Box::new(update_package.clone())))?;
        Ok(match installed {
            Some(i) if i >= update => None,
            _ => Some(EtcdUpgrade {
                installed: installed.cloned(),
                update: update.clone(),
            }),
        })
    }

    /// `Upgrade etcd 3.3.20 to 3.3.22`, or `Upgrade etcd to 3.3.22`.
    pub fn description(&self) -> String {
        match &self.installed {
            Some(i) => format!("Upgrade etcd {i} to {}", self.update),
            None => format!("Upgrade etcd to {}", self.update),
        }
    }
}

/// A built upgrade plan with the plan-level facts Gravity keeps beside the
/// phases.
#[derive(Debug, Clone, PartialEq)]
pub struct UpgradePlan {
    /// The plan (operation kind `update`).
    pub plan: Plan,
    /// The coordinator (`lead_master`); only set when the plan updates the
    /// runtime.
    pub lead_master: Option<ClusterNode>,
    /// The gravity binary the plan must be executed with (`gravity_package`).
    pub gravity_package: Locator,
    /// The cluster DNS configuration (`dns_config`).
    pub dns_config: DnsConfig,
    /// The target step's runtime application updates, in execution order.
    pub runtime_updates: Vec<Locator>,
    /// The application updates, in execution order.
    pub app_updates: Vec<Locator>,
    /// The target step's etcd upgrade, if any.
    pub etcd: Option<EtcdUpgrade>,
    /// Versions of the intermediate runtimes the plan passes through.
    pub intermediate_steps: Vec<Version>,
}

impl UpgradePlan {
    /// Whether the plan upgrades the runtime (not only the application).
    pub fn has_runtime_updates(&self) -> bool {
        self.lead_master.is_some()
    }

    /// Indexes the plan into a validated graph.
    pub fn graph(&self) -> Result<Arc<PlanGraph>, GraphError> {
        PlanGraph::build(self.plan.clone())
    }

    /// The plan itself.
    pub fn into_plan(self) -> Plan {
        self.plan
    }
}

/// Builds the upgrade plan of `cluster` (whose installed image is
/// [`Cluster::installed`]) to `target`.
///
/// Fails on an invalid cluster model (see [`Cluster::validate`]), when the
/// target is not an update of the installed application (`no update for
/// ...`), when the runtime would be downgraded, when the requested leader is
/// not a master, or when the target runtime does not say which etcd it
/// carries while the runtime is updated.
pub fn build_plan(
    cluster: &Cluster,
    target: &ClusterImage,
    opts: &BuildOptions,
) -> Result<UpgradePlan, BuildError> {
    cluster.validate()?;
    let installed = &cluster.installed;
    check_versions(installed, target)?;

    let leader = match &opts.leader {
        Some(l) => {
            let ix = cluster
                .nodes
                .iter()
                .position(|n| n.hostname == *l || n.advertise_ip == *l)
                .ok_or_else(|| BuildError::UnknownLeader(l.clone()))?;
            if !cluster.nodes[ix].is_master() {
                return Err(BuildError::LeaderNotMaster(
                    cluster.nodes[ix].hostname.clone(),
                ));
            }
            ix
        }
        None => cluster
            .nodes
            .iter()
            .position(ClusterNode::is_master)
            .ok_or_else(|| BuildError::NoMaster(cluster.name.clone()))?,
    };

    let created = opts.created.unwrap_or_else(Utc::now);
    let operation_id = opts
        .operation_id
        .clone()
        .unwrap_or_else(|| Uuid::new_v4().to_string());

    let cx = Cx::new(cluster, target, opts, leader, created.timestamp());
    let app_updates = cx.app_updates();

    // Intermediate runtimes newer than the installed one, oldest first.
    let mut hops: Vec<_> = target
        .intermediate
        .iter()
        .filter(|h| h.runtime_app.version() > installed.runtime_version())
        .collect();
    hops.sort_by(|a, b| a.runtime_app.version().cmp(b.runtime_app.version()));

    let mut steps = Vec::with_capacity(hops.len() + 1);
    let mut prev = Baseline::installed(installed);
    for (i, hop) in hops.iter().enumerate() {
        let next = Baseline {
            runtime_app: &hop.runtime_app,
            system_apps: &hop.system_apps,
            planet: &hop.runtime_package,
            etcd: hop.etcd_version.as_ref(),
            teleport: &hop.teleport,
        };
        let step = cx.intermediate_step(&prev, &next, &hop.gravity, i)?;
        steps.push(step);
        prev = next;
    }
    let target_base = Baseline::installed(target);
    let target_step = cx.target_step(&prev, &target_base, hops.is_empty())?;
    let has_runtime = !steps.is_empty() || !target_step.runtime_updates.is_empty();

    let root = PhasePath::root();
    let mut top: Vec<Phase> = Vec::new();
    if has_runtime {
        cx.check_reserved_hostnames(steps.iter().chain([&target_step]))?;
        if *installed.runtime_version() < ver(FLANNEL_FIX_VERSION) {
            top.push(cx.flannel(&root)?);
        }
        let init_updates = &steps.first().unwrap_or(&target_step).updates;
        top.push(cx.init(&root, init_updates)?);
        let checks = cx.checks(&root, &[path(&root, "init")?])?;
        let checks_id = checks.id.clone();
        top.push(checks);
        let pre = cx.pre_update(&root, &[path(&root, "init")?, checks_id.clone()])?;
        let pre_id = pre.id.clone();
        top.push(pre);
        if steps.is_empty() {
            cx.add_step(&root, &mut top, &target_step, Some(vec![checks_id, pre_id]))?;
        } else {
            let mut wrappers = Vec::with_capacity(steps.len() + 1);
            for step in &steps {
                wrappers.push(step);
            }
            wrappers.push(&target_step);
            for (i, step) in wrappers.into_iter().enumerate() {
                let (id, desc) = match &step.version {
                    Some(v) => (v.to_string(), format!("Update to intermediate runtime {v}")),
                    None => (
                        "target".to_string(),
                        format!("Update to runtime {}", target.runtime_version()),
                    ),
                };
                let mut wrapper = Phase::new(path(&root, &id)?, desc);
                let mut children = Vec::new();
                cx.add_step(&wrapper.id, &mut children, step, None)?;
                wrapper.phases = children;
                if i == 0 {
                    wrapper.requires = vec![checks_id.clone(), pre_id.clone()];
                    top.push(wrapper);
                } else {
                    add_sequential(&mut top, wrapper);
                }
            }
        }
        add_sequential(&mut top, cx.migration(&root)?);
        add_sequential(&mut top, cx.app(&root, &app_updates)?);
        add_sequential(&mut top, cx.gc(&root)?);
    } else {
        top.push(cx.checks(&root, &[])?);
        add_sequential(&mut top, cx.pre_update(&root, &[])?);
        add_sequential(&mut top, cx.app(&root, &app_updates)?);
        add_sequential(&mut top, cx.gc(&root)?);
    }

    Ok(UpgradePlan {
        plan: Plan {
            operation_id,
            operation_kind: OPERATION_KIND.into(),
            cluster_name: cluster.name.clone(),
            created,
            phases: top,
        },
        lead_master: has_runtime.then(|| cluster.nodes[leader].clone()),
        gravity_package: target.gravity.clone(),
        dns_config: cluster.dns.clone(),
        runtime_updates: target_step.runtime_updates.clone(),
        app_updates,
        etcd: target_step.etcd.clone(),
        intermediate_steps: steps.iter().filter_map(|s| s.version.clone()).collect(),
    })
}

/// Application checks of spec §1.1 and §4.1: same application, a newer
/// version, no runtime downgrade.
fn check_versions(installed: &ClusterImage, target: &ClusterImage) -> Result<(), BuildError> {
    if installed.app.repository() != target.app.repository()
        || installed.app.name() != target.app.name()
    {
        return Err(BuildError::DifferentApp {
            update_name: target.app.name().into(),
            update_version: target.version().to_string(),
            installed_name: installed.app.name().into(),
            installed_version: installed.version().to_string(),
        });
    }
    if installed.app == target.app {
        return Err(BuildError::NoUpdate(Box::new(installed.app.clone())));
    }
    if target.version() < installed.version() {
        return Err(BuildError::NotNewer {
            update: target.version().to_string(),
            installed: installed.version().to_string(),
        });
    }
    if target.runtime_version() < installed.runtime_version() {
        return Err(BuildError::Downgrade {
            installed: installed.runtime_version().to_string(),
            update: target.runtime_version().to_string(),
        });
    }
    Ok(())
}

fn ver(text: &str) -> Version {
    Version::parse(text).expect("built-in version is valid")
}

fn path(parent: &PhasePath, segment: &str) -> Result<PhasePath, BuildError> {
    Ok(parent.join(segment)?)
}

fn data<T: Serialize>(value: &T) -> PhaseData {
    PhaseData::from_serialize(value).expect("phase data serializes to JSON")
}

/// Gravity's `AddSequential`: the child requires the current last sibling.
fn add_sequential(siblings: &mut Vec<Phase>, mut child: Phase) {
    if let Some(last) = siblings.last() {
        child.requires.push(last.id.clone());
    }
    siblings.push(child);
}

fn leaf(
    id: PhasePath,
    description: String,
    executor: &str,
    node: Option<&Node>,
    exec_node: Option<&Node>,
    data: PhaseData,
) -> Phase {
    let mut p = Phase::new(id, description);
    p.executor = Some(executor.to_string());
    p.node = node.cloned();
    p.exec_node = exec_node.cloned();
    p.data = data;
    p
}

/// What a step starts from or moves to.
struct Baseline<'a> {
    runtime_app: &'a Locator,
    system_apps: &'a [Locator],
    planet: &'a Locator,
    etcd: Option<&'a Version>,
    teleport: &'a Locator,
}

impl<'a> Baseline<'a> {
    fn installed(image: &'a ClusterImage) -> Self {
        Baseline {
            runtime_app: &image.runtime_app,
            system_apps: &image.system_apps,
            planet: &image.runtime_package,
            etcd: image.etcd_version.as_ref(),
            teleport: &image.teleport,
        }
    }
}

/// One runtime step (an intermediate hop or the target).
struct Step {
    /// Intermediate hop version; `None` for the target.
    version: Option<Version>,
    /// Per node, indexed like `cluster.nodes`.
    updates: Vec<UpdateServer>,
    /// Per node: the Docker device to migrate, if any.
    docker_devices: Vec<Option<String>>,
    runtime_updates: Vec<Locator>,
    /// Installed versions of the updated runtime apps (same order).
    runtime_installed: Vec<Option<Locator>>,
    etcd: Option<EtcdUpgrade>,
    taints: bool,
    changeset_id: Uuid,
    gravity: Locator,
    coredns: bool,
}

/// Build context: the inputs, the node order and the plan nodes, computed once.
struct Cx<'a> {
    cluster: &'a Cluster,
    installed: &'a ClusterImage,
    target: &'a ClusterImage,
    opts: &'a BuildOptions,
    leader: usize,
    /// Leader first, then the others in stored order.
    all: Vec<usize>,
    /// Masters, leader first.
    masters: Vec<usize>,
    /// Workers in stored order.
    workers: Vec<usize>,
    /// `cluster.nodes[i]` as a plan node.
    nodes: Vec<Node>,
    /// `cluster.nodes[i]` as `NodeData`, serialized once and shared by all
    /// the phases that act on the node.
    node_data: Vec<PhaseData>,
    timestamp: i64,
}

impl<'a> Cx<'a> {
    fn new(
        cluster: &'a Cluster,
        target: &'a ClusterImage,
        opts: &'a BuildOptions,
        leader: usize,
        timestamp: i64,
    ) -> Self {
        let n = cluster.nodes.len();
        let mut all = Vec::with_capacity(n);
        all.push(leader);
        all.extend((0..n).filter(|&i| i != leader));
        let masters = all
            .iter()
            .copied()
            .filter(|&i| cluster.nodes[i].is_master())
            .collect();
        let workers = (0..n).filter(|&i| !cluster.nodes[i].is_master()).collect();
        Cx {
            cluster,
            installed: &cluster.installed,
            target,
            opts,
            leader,
            all,
            masters,
            workers,
            nodes: cluster.nodes.iter().map(ClusterNode::plan_node).collect(),
            node_data: cluster
                .nodes
                .iter()
                .map(|n| data(&NodeData { server: n.clone() }))
                .collect(),
            timestamp,
        }
    }

    fn node(&self, i: usize) -> &ClusterNode {
        &self.cluster.nodes[i]
    }

    fn lead(&self) -> &Node {
        &self.nodes[self.leader]
    }

    fn node_data(&self, i: usize) -> PhaseData {
        self.node_data[i].clone()
    }

    // ----------------------------------------------------------------- inputs

    /// Application updates: the update app's dependencies then the app
    /// itself, kept when new or newer than installed (spec §1.1).
    fn app_updates(&self) -> Vec<Locator> {
        let installed: HashMap<(&str, &str), &Version> = self
            .installed
            .app_dependencies
            .iter()
            .chain([&self.installed.app])
            .map(|l| ((l.repository(), l.name()), l.version()))
            .collect();
        self.target
            .app_dependencies
            .iter()
            .chain([&self.target.app])
            .filter(|l| match installed.get(&(l.repository(), l.name())) {
                Some(v) => l.version() > *v,
                None => true,
            })
            .cloned()
            .collect()
    }

    /// Runtime application updates from `prev` to `next` (spec §1.3, §1.5):
    /// the new manifest's system apps then the runtime app, kept when new
    /// or newer, minus disabled extensions, `rbac-app` first. Also returns
    /// the installed version of each.
    fn runtime_updates(
        prev: &Baseline<'_>,
        next: &Baseline<'_>,
        extensions: &Extensions,
    ) -> (Vec<Locator>, Vec<Option<Locator>>) {
        if prev.runtime_app == next.runtime_app {
            return (Vec::new(), Vec::new());
        }
        let installed: HashMap<(&str, &str), &Locator> = prev
            .system_apps
            .iter()
            .chain([prev.runtime_app])
            .map(|l| ((l.repository(), l.name()), l))
            .collect();
        let mut updates: Vec<(Locator, Option<Locator>)> = next
            .system_apps
            .iter()
            .chain([next.runtime_app])
            .filter(|l| !extensions.disables(l.name()))
            .filter_map(|l| {
                let old = installed.get(&(l.repository(), l.name())).copied();
                match old {
                    Some(o) if l.version() <= o.version() => None,
                    _ => Some((l.clone(), old.cloned())),
                }
            })
            .collect();
        // Stable partition: rbac-app first, the rest in manifest order.
        updates.sort_by_key(|(l, _)| l.name() != "rbac-app");
        updates.into_iter().unzip()
    }

    /// `v` with the build time as its metadata (`5.5.54-11312+1596339382`),
    /// as Gravity names the packages it generates.
    fn with_timestamp(&self, v: &Version) -> Result<Version, BuildError> {
        let core = v.as_str().split('+').next().unwrap_or(v.as_str());
        Ok(Version::parse(&format!("{core}+{}", self.timestamp))?)
    }

    /// `<cluster>/planet-<ip>-secrets:<planet version>+<time>`.
    fn secrets_package(&self, n: &ClusterNode, planet: &Locator) -> Result<Locator, BuildError> {
        let v = self.with_timestamp(planet.version())?;
        Ok(Locator::new(
            &self.cluster.name,
            &format!("planet-{}-secrets", n.advertise_ip),
            v.as_str(),
        )?)
    }

    /// `<cluster>/planet-config-<ip without dots><cluster>:<planet version>+<time>`.
    fn planet_config_package(
        &self,
        n: &ClusterNode,
        planet: &Locator,
    ) -> Result<Locator, BuildError> {
        let v = self.with_timestamp(planet.version())?;
        Ok(Locator::new(
            &self.cluster.name,
            &format!(
                "planet-config-{}{}",
                n.advertise_ip.replace('.', ""),
                self.cluster.name
            ),
            v.as_str(),
        )?)
    }

    /// `<cluster>/teleport-node-config-<ip without dots><cluster>:<teleport version>`.
    fn teleport_config_package(
        &self,
        n: &ClusterNode,
        teleport: &Locator,
    ) -> Result<Locator, BuildError> {
        Ok(Locator::new(
            &self.cluster.name,
            &format!(
                "teleport-node-config-{}{}",
                n.advertise_ip.replace('.', ""),
                self.cluster.name
            ),
            teleport.version().as_str(),
        )?)
    }

    fn changeset_id(&self, hop: Option<usize>) -> Uuid {
        match (self.opts.changeset_id, hop) {
            (Some(base), None) => base,
            (Some(base), Some(i)) => Uuid::from_u128(base.as_u128().wrapping_add(i as u128 + 1)),
            (None, _) => Uuid::new_v4(),
        }
    }

    /// An intermediate hop (spec §1.2): planet always updated, teleport
    /// always updated without node config, Docker unchanged; runtime apps
    /// filtered with the installed manifest.
    fn intermediate_step(
        &self,
        prev: &Baseline<'_>,
        next: &Baseline<'_>,
        gravity: &Locator,
        index: usize,
    ) -> Result<Step, BuildError> {
        let mut updates = Vec::with_capacity(self.cluster.nodes.len());
        for n in &self.cluster.nodes {
            updates.push(UpdateServer {
                server: n.clone(),
                runtime: RuntimeUpdate {
                    installed: prev.planet.clone(),
                    secrets_package: Some(self.secrets_package(n, next.planet)?),
                    update: Some(RuntimePackageUpdate {
                        package: next.planet.clone(),
                        config_package: self.planet_config_package(n, next.planet)?,
                    }),
                },
                teleport: TeleportUpdate {
                    installed: prev.teleport.clone(),
                    update: Some(TeleportPackageUpdate {
                        package: next.teleport.clone(),
                        node_config_package: None,
                    }),
                },
                docker: DockerUpdate {
                    installed: self.cluster.docker.clone(),
                    update: self.cluster.docker.clone(),
                },
            });
        }
        let (runtime_updates, runtime_installed) =
            Self::runtime_updates(prev, next, &self.installed.extensions);
        Ok(Step {
            version: Some(next.runtime_app.version().clone()),
            docker_devices: vec![None; updates.len()],
            updates,
            runtime_updates,
            runtime_installed,
            etcd: EtcdUpgrade::decide(prev.etcd, next.etcd, next.planet)?,
            taints: *next.runtime_app.version() >= ver(BASE_TAINTS_VERSION),
            changeset_id: self.changeset_id(Some(index)),
            gravity: gravity.clone(),
            coredns: false,
        })
    }

    /// The target step (spec §1.3).
    fn target_step(
        &self,
        prev: &Baseline<'_>,
        next: &Baseline<'_>,
        direct: bool,
    ) -> Result<Step, BuildError> {
        let planet_update = self.installed.runtime_package.version() < next.planet.version();
        let teleport_update = prev.teleport.version() < next.teleport.version();
        let target_docker = &self.target.docker;
        let migrate = self.cluster.docker.storage_driver == "devicemapper"
            && matches!(
                target_docker.storage_driver.as_str(),
                "overlay" | "overlay2"
            );
        let mut updates = Vec::with_capacity(self.cluster.nodes.len());
        let mut docker_devices = Vec::with_capacity(self.cluster.nodes.len());
        for n in &self.cluster.nodes {
            let runtime = if planet_update {
                RuntimeUpdate {
                    installed: prev.planet.clone(),
                    secrets_package: Some(self.secrets_package(n, next.planet)?),
                    update: Some(RuntimePackageUpdate {
                        package: next.planet.clone(),
                        config_package: self.planet_config_package(n, next.planet)?,
                    }),
                }
            } else {
                RuntimeUpdate {
                    installed: prev.planet.clone(),
                    secrets_package: None,
                    update: None,
                }
            };
            let teleport = TeleportUpdate {
                installed: prev.teleport.clone(),
                update: if teleport_update {
                    Some(TeleportPackageUpdate {
                        package: next.teleport.clone(),
                        node_config_package: Some(self.teleport_config_package(n, next.teleport)?),
                    })
                } else {
                    None
                },
            };
            updates.push(UpdateServer {
                server: n.clone(),
                runtime,
                teleport,
                docker: DockerUpdate {
                    installed: self.cluster.docker.clone(),
                    update: target_docker.clone(),
                },
            });
            let recorded = n.docker_device.as_deref().filter(|d| !d.is_empty());
            docker_devices.push(match (migrate, recorded) {
                (true, Some(dev)) => Some(self.opts.docker_device.clone().unwrap_or(dev.into())),
                _ => None,
            });
        }
        let (runtime_updates, runtime_installed) =
            Self::runtime_updates(prev, next, &self.target.extensions);
        // The etcd decision only matters when the runtime is updated.
        let etcd = if !direct || !runtime_updates.is_empty() {
            EtcdUpgrade::decide(prev.etcd, next.etcd, next.planet)?
        } else {
            None
        };
        Ok(Step {
            version: None,
            updates,
            docker_devices,
            runtime_updates,
            runtime_installed,
            etcd,
            taints: *next.runtime_app.version() >= ver(BASE_TAINTS_VERSION),
            changeset_id: self.changeset_id(None),
            gravity: self.target.gravity.clone(),
            coredns: true,
        })
    }

    /// Host names that would collide with fixed phase ids.
    fn check_reserved_hostnames<'s>(
        &self,
        steps: impl Iterator<Item = &'s Step>,
    ) -> Result<(), BuildError> {
        let mut etcd = false;
        for s in steps {
            etcd |= s.etcd.is_some();
        }
        let elect = format!("elect-{}", self.node(self.leader).hostname);
        for &i in &self.all {
            let n = self.node(i);
            if etcd && n.hostname == "gravity-site" {
                return Err(BuildError::ReservedHostname {
                    hostname: n.hostname.clone(),
                    path: "/etcd/restart/gravity-site".into(),
                });
            }
            if n.is_master() && self.masters.len() > 1 && n.hostname == elect {
                return Err(BuildError::ReservedHostname {
                    hostname: n.hostname.clone(),
                    path: format!("/masters/{elect}"),
                });
            }
        }
        Ok(())
    }

    // ----------------------------------------------------------------- phases

    fn flannel(&self, parent: &PhasePath) -> Result<Phase, BuildError> {
        let mut p = Phase::new(path(parent, "flannel")?, "Restart flanneld");
        for (i, n) in self.cluster.nodes.iter().enumerate() {
            p.phases.push(leaf(
                path(&p.id, &n.hostname)?,
                format!("Restart flanneld on node {:?}", n.hostname),
                ex::FLANNEL_RESTART,
                Some(&self.nodes[i]),
                None,
                self.node_data(i),
            ));
        }
        Ok(p)
    }

    fn init(&self, parent: &PhasePath, updates: &[UpdateServer]) -> Result<Phase, BuildError> {
        let mut p = Phase::new(path(parent, "init")?, "Initialize update operation");
        for &i in &self.all {
            let n = self.node(i);
            let is_leader = i == self.leader;
            let d = InitData {
                package: is_leader.then(|| self.target.app.clone()),
                installed_package: is_leader.then(|| self.installed.app.clone()),
                dns_config: is_leader.then(|| self.cluster.dns.clone()),
                update: updates[i].clone(),
            };
            p.phases.push(leaf(
                path(&p.id, &n.hostname)?,
                format!("Initialize node {:?}", n.hostname),
                if is_leader {
                    ex::UPDATE_INIT_LEADER
                } else {
                    ex::UPDATE_INIT
                },
                None,
                Some(&self.nodes[i]),
                data(&d),
            ));
        }
        Ok(p)
    }

    fn checks(&self, parent: &PhasePath, requires: &[PhasePath]) -> Result<Phase, BuildError> {
        let mut p = leaf(
            path(parent, "checks")?,
            "Run preflight checks".into(),
            ex::UPDATE_CHECKS,
            None,
            None,
            data(&ChecksData {
                package: self.target.app.clone(),
                installed_package: self.installed.app.clone(),
                docker_device: self.opts.docker_device.clone(),
            }),
        );
        p.requires = requires.to_vec();
        Ok(p)
    }

    fn pre_update(&self, parent: &PhasePath, requires: &[PhasePath]) -> Result<Phase, BuildError> {
        let mut p = leaf(
            path(parent, "pre-update")?,
            "Run pre-update application hook".into(),
            ex::PRE_UPDATE,
            None,
            None,
            data(&AppData {
                package: self.target.app.clone(),
                installed_package: Some(self.installed.app.clone()),
            }),
        );
        p.requires = requires.to_vec();
        Ok(p)
    }

    /// Adds a step's phases to `siblings` (the root for the inline target
    /// step, a wrapper's children otherwise). `bootstrap_requires` is set
    /// for the inline form.
    fn add_step(
        &self,
        parent: &PhasePath,
        siblings: &mut Vec<Phase>,
        step: &Step,
        bootstrap_requires: Option<Vec<PhasePath>>,
    ) -> Result<(), BuildError> {
        let mut bootstrap = self.bootstrap(parent, step)?;
        match bootstrap_requires {
            Some(r) => bootstrap.requires = r,
            None => bootstrap.requires.clear(),
        }
        // The first phase of a step is added without a sibling requirement.
        siblings.push(bootstrap);
        if step.coredns {
            add_sequential(
                siblings,
                leaf(
                    path(parent, "coredns")?,
                    "Provision CoreDNS resources".into(),
                    ex::COREDNS,
                    Some(self.lead()),
                    None,
                    self.node_data(self.leader),
                ),
            );
        }
        add_sequential(siblings, self.masters_phase(parent, step)?);
        if !self.workers.is_empty() {
            add_sequential(siblings, self.nodes_phase(parent, step)?);
        }
        if let Some(etcd) = &step.etcd {
            // Deliberately no requirement (spec §6): agents may not be able
            // to sync the plan once etcd is down.
            siblings.push(self.etcd_phase(parent, etcd)?);
        }
        add_sequential(siblings, self.config_phase(parent)?);
        if !step.runtime_updates.is_empty() {
            add_sequential(siblings, self.runtime_phase(parent, step)?);
        }
        Ok(())
    }

    fn bootstrap(&self, parent: &PhasePath, step: &Step) -> Result<Phase, BuildError> {
        let mut p = Phase::new(
            path(parent, "bootstrap")?,
            "Bootstrap update operation on nodes",
        );
        for &i in &self.all {
            let n = self.node(i);
            let is_leader = i == self.leader;
            let updates = if is_leader {
                self.all.iter().map(|&j| step.updates[j].clone()).collect()
            } else {
                vec![step.updates[i].clone()]
            };
            let d = BootstrapData {
                package: self.target.app.clone(),
                installed_package: self.installed.app.clone(),
                updates,
                gravity_package: step.gravity.clone(),
                version: step.version.clone(),
            };
            p.phases.push(leaf(
                path(&p.id, &n.hostname)?,
                format!("Bootstrap node {:?}", n.hostname),
                if is_leader {
                    ex::UPDATE_BOOTSTRAP_LEADER
                } else {
                    ex::UPDATE_BOOTSTRAP
                },
                None,
                Some(&self.nodes[i]),
                data(&d),
            ));
        }
        Ok(p)
    }

    fn masters_phase(&self, parent: &PhasePath, step: &Step) -> Result<Phase, BuildError> {
        let mut p = Phase::new(path(parent, "masters")?, "Update master nodes");
        let several = self.masters.len() > 1;
        let lead = self.node(self.leader);
        let desc = |h: &str| format!("Update system software on master node {h:?}");

        // The lead master.
        let mut first = Phase::new(path(&p.id, &lead.hostname)?, desc(&lead.hostname));
        if several {
            add_sequential(
                &mut first.phases,
                leaf(
                    path(&first.id, "kubelet-permissions")?,
                    format!("Add permissions to kubelet on {:?}", lead.hostname),
                    ex::KUBELET_PERMISSIONS,
                    Some(self.lead()),
                    None,
                    self.node_data(self.leader),
                ),
            );
            add_sequential(
                &mut first.phases,
                leaf(
                    path(&first.id, &format!("stepdown-{}", lead.hostname))?,
                    format!("Step down {:?} as Kubernetes leader", lead.hostname),
                    ex::ELECTION_STATUS,
                    Some(self.lead()),
                    None,
                    data(&ElectionData {
                        server: lead.clone(),
                        enable: Vec::new(),
                        disable: vec![NodeRef::from(lead)],
                    }),
                ),
            );
        }
        self.node_steps(&mut first, self.leader, step, !several)?;
        add_sequential(&mut p.phases, first);

        if several {
            add_sequential(
                &mut p.phases,
                leaf(
                    path(&p.id, &format!("elect-{}", lead.hostname))?,
                    format!("Make node {:?} Kubernetes leader", lead.hostname),
                    ex::ELECTION_STATUS,
                    Some(self.lead()),
                    None,
                    data(&ElectionData {
                        server: lead.clone(),
                        enable: vec![NodeRef::from(lead)],
                        disable: self.masters[1..]
                            .iter()
                            .map(|&i| NodeRef::from(self.node(i)))
                            .collect(),
                    }),
                ),
            );
        }

        for &i in &self.masters[1..] {
            let n = self.node(i);
            let mut phase = Phase::new(path(&p.id, &n.hostname)?, desc(&n.hostname));
            self.node_steps(&mut phase, i, step, true)?;
            add_sequential(
                &mut phase.phases,
                leaf(
                    path(&phase.id, &format!("enable-{}", n.hostname))?,
                    format!("Enable leader election on node {:?}", n.hostname),
                    ex::ELECTION_STATUS,
                    Some(&self.nodes[i]),
                    None,
                    data(&ElectionData {
                        server: n.clone(),
                        enable: vec![NodeRef::from(n)],
                        disable: Vec::new(),
                    }),
                ),
            );
            add_sequential(&mut p.phases, phase);
        }
        Ok(p)
    }

    fn nodes_phase(&self, parent: &PhasePath, step: &Step) -> Result<Phase, BuildError> {
        let mut p = Phase::new(path(parent, "nodes")?, "Update regular nodes");
        p.parallel = self.opts.parallel_workers.max(1);
        p.phases.reserve(self.workers.len());
        for &i in &self.workers {
            let n = self.node(i);
            let mut phase = Phase::new(
                path(&p.id, &n.hostname)?,
                format!("Update system software on node {:?}", n.hostname),
            );
            self.node_steps(&mut phase, i, step, true)?;
            // Workers do not depend on each other.
            p.phases.push(phase);
        }
        Ok(p)
    }

    /// drain, system-upgrade, docker, taint, uncordon, endpoints, untaint,
    /// each requiring the previous. Kubernetes-side phases run on the lead
    /// master; the system upgrade runs on the node.
    fn node_steps(
        &self,
        phase: &mut Phase,
        i: usize,
        step: &Step,
        endpoints: bool,
    ) -> Result<(), BuildError> {
        let n = self.node(i);
        let h = &n.hostname;
        let node = &self.nodes[i];
        let lead = self.lead();
        let nd = self.node_data(i);
        let id = phase.id.clone();
        let kids = &mut phase.phases;
        add_sequential(
            kids,
            leaf(
                path(&id, "drain")?,
                format!("Drain node {h:?}"),
                ex::DRAIN_NODE,
                Some(node),
                Some(lead),
                nd.clone(),
            ),
        );
        let device = step.docker_devices[i].as_deref();
        add_sequential(
            kids,
            leaf(
                path(&id, "system-upgrade")?,
                format!("Update system software on node {h:?}"),
                ex::UPDATE_SYSTEM,
                None,
                Some(node),
                data(&SystemUpgradeData {
                    update: step.updates[i].clone(),
                    changeset_id: step.changeset_id,
                    gravity_package: step.gravity.clone(),
                    docker_migration: device.is_some(),
                }),
            ),
        );
        if let Some(dev) = device {
            add_sequential(kids, self.docker_phase(&id, i, dev, step)?);
        }
        if step.taints {
            add_sequential(
                kids,
                leaf(
                    path(&id, "taint")?,
                    format!("Taint node {h:?}"),
                    ex::TAINT_NODE,
                    Some(node),
                    Some(lead),
                    nd.clone(),
                ),
            );
        }
        add_sequential(
            kids,
            leaf(
                path(&id, "uncordon")?,
                format!("Uncordon node {h:?}"),
                ex::UNCORDON_NODE,
                Some(node),
                Some(lead),
                nd.clone(),
            ),
        );
        if endpoints {
            add_sequential(
                kids,
                leaf(
                    path(&id, "endpoints")?,
                    format!("Wait for DNS/cluster endpoints on {h:?}"),
                    ex::ENDPOINTS,
                    Some(node),
                    Some(lead),
                    nd.clone(),
                ),
            );
        }
        if step.taints {
            add_sequential(
                kids,
                leaf(
                    path(&id, "untaint")?,
                    format!("Remove taint from node {h:?}"),
                    ex::UNTAINT_NODE,
                    Some(node),
                    Some(lead),
                    nd,
                ),
            );
        }
        Ok(())
    }

    /// The devicemapper → overlay migration block of one node.
    fn docker_phase(
        &self,
        parent: &PhasePath,
        i: usize,
        dev: &str,
        step: &Step,
    ) -> Result<Phase, BuildError> {
        let node = &self.nodes[i];
        let mut p = Phase::new(
            path(parent, "docker")?,
            format!("Repurpose devicemapper device {dev} for overlay data"),
        );
        let dd = data(&DockerDeviceData {
            server: self.node(i).clone(),
            docker_device: dev.to_string(),
        });
        let kids = &mut p.phases;
        add_sequential(
            kids,
            leaf(
                path(&p.id, "devicemapper")?,
                format!("Remove devicemapper environment from {dev}"),
                ex::DEVICEMAPPER,
                Some(node),
                None,
                dd.clone(),
            ),
        );
        add_sequential(
            kids,
            leaf(
                path(&p.id, "format")?,
                format!("Format {dev}"),
                ex::FORMAT,
                Some(node),
                None,
                dd.clone(),
            ),
        );
        add_sequential(
            kids,
            leaf(
                path(&p.id, "mount")?,
                format!("Create mount for {dev}"),
                ex::MOUNT,
                Some(node),
                None,
                dd,
            ),
        );
        add_sequential(
            kids,
            leaf(
                path(&p.id, "planet")?,
                "Start the new Planet container".into(),
                ex::PLANET_START,
                Some(node),
                None,
                data(&PlanetStartData {
                    update: step.updates[i].clone(),
                }),
            ),
        );
        Ok(p)
    }

    fn etcd_data(&self, i: usize, etcd: &EtcdUpgrade) -> PhaseData {
        data(&EtcdData {
            server: self.node(i).clone(),
            installed: etcd.installed.clone(),
            update: etcd.update.clone(),
            leader: i == self.leader,
        })
    }

    fn etcd_phase(&self, parent: &PhasePath, etcd: &EtcdUpgrade) -> Result<Phase, BuildError> {
        let mut p = Phase::new(path(parent, "etcd")?, etcd.description());
        let backup_id = path(&p.id, "backup")?;
        let shutdown_id = path(&p.id, "shutdown")?;
        let upgrade_id = path(&p.id, "upgrade")?;
        let restore_id = path(&p.id, "restore")?;
        let mut backup = Phase::new(backup_id.clone(), "Backup etcd data");
        let mut shutdown = Phase::new(shutdown_id.clone(), "Shutdown etcd cluster");
        let mut upgrade = Phase::new(upgrade_id.clone(), "Upgrade etcd servers");
        let mut restart = Phase::new(path(&p.id, "restart")?, "Restart etcd servers");
        for &i in &self.masters {
            let h = &self.node(i).hostname;
            let node = Some(&self.nodes[i]);
            let d = self.etcd_data(i, etcd);
            let backup_node = path(&backup_id, h)?;
            let shutdown_node = path(&shutdown_id, h)?;
            let upgrade_node = path(&upgrade_id, h)?;
            backup.phases.push(leaf(
                backup_node.clone(),
                format!("Backup etcd on node {h:?}"),
                ex::ETCD_BACKUP,
                node,
                None,
                d.clone(),
            ));
            let mut s = leaf(
                shutdown_node.clone(),
                format!("Shutdown etcd on node {h:?}"),
                ex::ETCD_SHUTDOWN,
                node,
                None,
                d.clone(),
            );
            s.requires.push(backup_node);
            shutdown.phases.push(s);
            let mut u = leaf(
                upgrade_node.clone(),
                format!("Upgrade etcd on node {h:?}"),
                ex::ETCD_UPGRADE,
                node,
                None,
                d.clone(),
            );
            u.requires.push(shutdown_node);
            upgrade.phases.push(u);
            let mut r = leaf(
                path(&restart.id, h)?,
                format!("Restart etcd on node {h:?}"),
                ex::ETCD_RESTART,
                node,
                None,
                d,
            );
            r.requires.push(if i == self.leader {
                restore_id.clone()
            } else {
                upgrade_node
            });
            restart.phases.push(r);
        }
        for &i in &self.workers {
            let h = &self.node(i).hostname;
            restart.phases.push(leaf(
                path(&restart.id, h)?,
                format!("Restart etcd on node {h:?}"),
                ex::ETCD_RESTART,
                Some(&self.nodes[i]),
                None,
                self.etcd_data(i, etcd),
            ));
        }
        restart.phases.push(leaf(
            path(&restart.id, "gravity-site")?,
            "Restart gravity-site service".into(),
            ex::ETCD_RESTART_GRAVITY,
            Some(self.lead()),
            None,
            self.etcd_data(self.leader, etcd),
        ));
        let mut restore = leaf(
            restore_id,
            "Restore etcd data from backup".into(),
            ex::ETCD_RESTORE,
            Some(self.lead()),
            None,
            self.etcd_data(self.leader, etcd),
        );
        restore.requires.push(upgrade_id);
        p.phases = vec![backup, shutdown, upgrade, restore, restart];
        Ok(p)
    }

    fn config_phase(&self, parent: &PhasePath) -> Result<Phase, BuildError> {
        let mut p = Phase::new(
            path(parent, "config")?,
            "Update system configuration on nodes",
        );
        for &i in &self.masters {
            let h = &self.node(i).hostname;
            p.phases.push(leaf(
                path(&p.id, h)?,
                format!("Update system configuration on node {h:?}"),
                ex::CONFIG,
                Some(&self.nodes[i]),
                None,
                self.node_data(i),
            ));
        }
        Ok(p)
    }

    fn runtime_phase(&self, parent: &PhasePath, step: &Step) -> Result<Phase, BuildError> {
        let mut p = Phase::new(path(parent, "runtime")?, "Update application runtime");
        for (loc, old) in step.runtime_updates.iter().zip(&step.runtime_installed) {
            let child = leaf(
                path(&p.id, loc.name())?,
                format!(
                    "Update system application {:?} to {}",
                    loc.name(),
                    loc.version()
                ),
                ex::UPDATE_APP,
                None,
                None,
                data(&AppData {
                    package: loc.clone(),
                    installed_package: old.clone(),
                }),
            );
            add_sequential(&mut p.phases, child);
        }
        Ok(p)
    }

    fn migration(&self, parent: &PhasePath) -> Result<Phase, BuildError> {
        let mut p = Phase::new(
            path(parent, "migration")?,
            "Perform system database migration",
        );
        if !self.cluster.ops_center_links.is_empty() && self.cluster.trusted_clusters.is_empty() {
            p.phases.push(leaf(
                path(&p.id, "links")?,
                "Migrate remote Ops Center links to trusted clusters".into(),
                ex::LINKS,
                None,
                None,
                data(&LinksData {
                    links: self.cluster.ops_center_links.clone(),
                }),
            ));
        }
        p.phases.push(leaf(
            path(&p.id, "labels")?,
            "Update node labels".into(),
            ex::LABELS,
            None,
            None,
            data(&LabelsData {
                servers: self.cluster.nodes.iter().map(NodeRef::from).collect(),
            }),
        ));
        if self.cluster.legacy_role_rules {
            p.phases.push(leaf(
                path(&p.id, "roles")?,
                "Migrate cluster roles to a new format".into(),
                ex::ROLES,
                None,
                Some(self.lead()),
                self.node_data(self.leader),
            ));
        }
        Ok(p)
    }

    fn app(&self, parent: &PhasePath, updates: &[Locator]) -> Result<Phase, BuildError> {
        let mut p = Phase::new(path(parent, "app")?, "Update installed application");
        let installed: HashMap<(&str, &str), &Locator> = self
            .installed
            .app_dependencies
            .iter()
            .chain([&self.installed.app])
            .map(|l| ((l.repository(), l.name()), l))
            .collect();
        for loc in updates {
            p.phases.push(leaf(
                path(&p.id, loc.name())?,
                format!("Update application {:?} to {}", loc.name(), loc.version()),
                ex::UPDATE_APP,
                None,
                None,
                data(&AppData {
                    package: loc.clone(),
                    installed_package: installed
                        .get(&(loc.repository(), loc.name()))
                        .map(|l| (*l).clone()),
                }),
            ));
        }
        Ok(p)
    }

    fn gc(&self, parent: &PhasePath) -> Result<Phase, BuildError> {
        let mut p = Phase::new(path(parent, "gc")?, "Run cleanup tasks");
        for (i, n) in self.cluster.nodes.iter().enumerate() {
            p.phases.push(leaf(
                path(&p.id, &n.hostname)?,
                format!("Clean up node {:?}", n.hostname),
                ex::CLEANUP_NODE,
                Some(&self.nodes[i]),
                None,
                self.node_data(i),
            ));
        }
        Ok(p)
    }
}
