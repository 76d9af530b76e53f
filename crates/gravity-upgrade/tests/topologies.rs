//! Plan shapes for several cluster topologies, checked with assertions and
//! with snapshots of the rendered tables.

use std::sync::Arc;

use gravity_pack::{Locator, Version};
use gravity_plan::{PhasePath, PlanGraph, PlanView, render};
use gravity_upgrade::executors::{self, SystemUpgradeData, decode};
use gravity_upgrade::{
    BuildError, BuildOptions, Cluster, ClusterImage, ClusterNode, DockerConfig,
    IntermediateRuntime, build_plan, synthetic_plan,
};

fn loc(s: &str) -> Locator {
    Locator::parse(s).unwrap()
}

fn graph_of(cluster: &Cluster, target: &ClusterImage, opts: &BuildOptions) -> Arc<PlanGraph> {
    build_plan(cluster, target, opts).unwrap().graph().unwrap()
}

fn text(g: &Arc<PlanGraph>) -> String {
    render::text(&PlanView::new(g.clone()))
}

fn short(g: &Arc<PlanGraph>) -> String {
    render::short(&PlanView::new(g.clone()))
}

fn has(g: &PlanGraph, p: &str) -> bool {
    g.find_str(p).is_some()
}

fn requires(g: &PlanGraph, p: &str) -> Vec<String> {
    let ix = g.find_str(p).unwrap_or_else(|| panic!("no phase {p}"));
    g.node(ix)
        .phase
        .requires
        .iter()
        .map(|r| r.to_string())
        .collect()
}

fn exec(g: &PlanGraph, p: &str) -> Option<String> {
    let ix = g.find_str(p).unwrap_or_else(|| panic!("no phase {p}"));
    g.node(ix)
        .phase
        .exec_node
        .as_ref()
        .map(|n| n.hostname.clone())
}

fn top_level(g: &PlanGraph) -> Vec<String> {
    g.node(0)
        .children
        .iter()
        .map(|&c| g.node(c).phase.id.to_string())
        .collect()
}

fn children(g: &PlanGraph, p: &str) -> Vec<String> {
    let ix = g.find_str(p).unwrap();
    g.node(ix)
        .children
        .iter()
        .map(|&c| g.node(c).path().name().to_string())
        .collect()
}

/// The seed target carrying the installed etcd: no etcd upgrade.
fn target_without_etcd_change() -> ClusterImage {
    let mut t = ClusterImage::seed_target();
    t.etcd_version = ClusterImage::seed_installed().etcd_version;
    t
}

#[test]
fn one_master() {
    let g = graph_of(
        &Cluster::synthetic(1, 0),
        &ClusterImage::seed_target(),
        &BuildOptions::default(),
    );
    assert_eq!(
        children(&g, "/masters/master-1"),
        [
            "drain",
            "system-upgrade",
            "taint",
            "uncordon",
            "endpoints",
            "untaint"
        ]
    );
    assert!(!has(&g, "/masters/elect-master-1"));
    assert!(!has(&g, "/nodes"));
    assert_eq!(
        requires(&g, "/masters/master-1/endpoints"),
        ["/masters/master-1/uncordon"]
    );
    insta::assert_snapshot!("one_master_text", text(&g));
}

#[test]
fn three_masters_two_workers() {
    let g = graph_of(
        &Cluster::synthetic(3, 2),
        &ClusterImage::seed_target(),
        &BuildOptions::default(),
    );
    assert_eq!(
        top_level(&g),
        [
            "/init",
            "/checks",
            "/pre-update",
            "/bootstrap",
            "/coredns",
            "/masters",
            "/nodes",
            "/etcd",
            "/config",
            "/runtime",
            "/migration",
            "/app",
            "/gc"
        ]
    );
    assert_eq!(requires(&g, "/nodes"), ["/masters"]);
    assert!(requires(&g, "/etcd").is_empty());
    assert_eq!(requires(&g, "/config"), ["/etcd"]);
    // Workers: drained, tainted, uncordoned from the leader; upgraded locally.
    for p in ["drain", "taint", "uncordon", "endpoints", "untaint"] {
        assert_eq!(
            exec(&g, &format!("/nodes/worker-2/{p}")).as_deref(),
            Some("master-1")
        );
    }
    assert_eq!(
        exec(&g, "/nodes/worker-2/system-upgrade").as_deref(),
        Some("worker-2")
    );
    assert!(requires(&g, "/nodes/worker-2").is_empty());
    // Workers restart etcd clients but hold no etcd members or config.
    assert!(requires(&g, "/etcd/restart/worker-1").is_empty());
    assert!(!has(&g, "/etcd/backup/worker-1"));
    assert_eq!(
        children(&g, "/config"),
        ["master-1", "master-2", "master-3"]
    );
    assert_eq!(
        children(&g, "/gc"),
        ["master-1", "master-2", "master-3", "worker-1", "worker-2"]
    );
    insta::assert_snapshot!("three_masters_two_workers_text", text(&g));
}

#[test]
fn five_masters_twenty_workers_in_parallel() {
    let opts = BuildOptions::default().with_parallel_workers(4);
    let g = graph_of(
        &Cluster::synthetic(5, 20),
        &ClusterImage::seed_target(),
        &opts,
    );
    let nodes = g.find_str("/nodes").unwrap();
    assert_eq!(g.node(nodes).phase.parallel, 4);
    assert_eq!(g.node(nodes).children.len(), 20);
    for &w in &g.node(nodes).children {
        assert!(g.node(w).phase.requires.is_empty());
        assert_eq!(
            g.node(w).phase.parallel,
            1,
            "a worker's steps stay in order"
        );
    }
    // The masters stay one at a time, the leader first.
    assert_eq!(
        requires(&g, "/masters/master-2"),
        ["/masters/elect-master-1"]
    );
    assert_eq!(requires(&g, "/masters/master-5"), ["/masters/master-4"]);
    // Only the masters phase of the default build is serial.
    let serial = graph_of(
        &Cluster::synthetic(5, 20),
        &ClusterImage::seed_target(),
        &BuildOptions::default(),
    );
    assert_eq!(
        serial
            .node(serial.find_str("/nodes").unwrap())
            .phase
            .parallel,
        1
    );
    insta::assert_snapshot!("five_masters_twenty_workers_short", short(&g));
}

#[test]
fn application_only_upgrade_gets_the_short_plan() {
    let cluster = Cluster::seed();
    let target = cluster.installed.with_app_version("5.5.47").unwrap();
    let plan = build_plan(&cluster, &target, &BuildOptions::default()).unwrap();
    assert!(!plan.has_runtime_updates());
    assert!(plan.lead_master.is_none());
    let g = plan.graph().unwrap();
    assert_eq!(top_level(&g), ["/checks", "/pre-update", "/app", "/gc"]);
    assert!(requires(&g, "/checks").is_empty());
    assert_eq!(requires(&g, "/pre-update"), ["/checks"]);
    assert_eq!(requires(&g, "/app"), ["/pre-update"]);
    assert_eq!(requires(&g, "/gc"), ["/app"]);
    insta::assert_snapshot!("application_only_text", text(&g));
}

#[test]
fn no_etcd_change_drops_the_etcd_phase() {
    let g = graph_of(
        &Cluster::synthetic(3, 2),
        &target_without_etcd_change(),
        &BuildOptions::default(),
    );
    assert!(!has(&g, "/etcd"));
    assert_eq!(requires(&g, "/config"), ["/nodes"]);
    let g1 = graph_of(
        &Cluster::seed(),
        &target_without_etcd_change(),
        &BuildOptions::default(),
    );
    assert_eq!(requires(&g1, "/config"), ["/masters"]);
    insta::assert_snapshot!("no_etcd_change_text", text(&g1));
}

/// A cluster on runtime 4.30.0 (before taints and the flannel fix) going
/// to 4.35.0.
fn old_runtime() -> (Cluster, ClusterImage) {
    let mut installed = ClusterImage::seed_installed();
    installed.app = loc("gravitational.io/telekube:4.30.0");
    installed.runtime_app = loc("gravitational.io/kubernetes:4.30.0");
    let mut target = ClusterImage::seed_target();
    target.app = loc("gravitational.io/telekube:4.35.0");
    target.runtime_app = loc("gravitational.io/kubernetes:4.35.0");
    let mut cluster = Cluster::synthetic(2, 1);
    cluster.installed = installed;
    (cluster, target)
}

#[test]
fn taintless_runtime_and_flannel_restart() {
    let (cluster, target) = old_runtime();
    let g = graph_of(&cluster, &target, &BuildOptions::default());
    assert_eq!(top_level(&g)[0], "/flannel");
    assert!(requires(&g, "/init").is_empty());
    assert_eq!(
        children(&g, "/masters/master-1"),
        [
            "kubelet-permissions",
            "stepdown-master-1",
            "drain",
            "system-upgrade",
            "uncordon"
        ]
    );
    assert_eq!(
        children(&g, "/masters/master-2"),
        [
            "drain",
            "system-upgrade",
            "uncordon",
            "endpoints",
            "enable-master-2"
        ]
    );
    assert_eq!(
        children(&g, "/nodes/worker-1"),
        ["drain", "system-upgrade", "uncordon", "endpoints"]
    );
    insta::assert_snapshot!("taintless_flannel_text", text(&g));
}

#[test]
fn another_leader_goes_first() {
    let opts = BuildOptions::default().with_leader("10.0.0.2");
    let g = graph_of(
        &Cluster::synthetic(3, 1),
        &ClusterImage::seed_target(),
        &opts,
    );
    assert_eq!(
        children(&g, "/init"),
        ["master-2", "master-1", "master-3", "worker-1"]
    );
    let init = g.node(g.find_str("/init/master-2").unwrap());
    assert_eq!(
        init.phase.executor.as_deref(),
        Some(executors::UPDATE_INIT_LEADER)
    );
    assert_eq!(
        children(&g, "/masters"),
        ["master-2", "elect-master-2", "master-1", "master-3"]
    );
    assert_eq!(
        exec(&g, "/masters/master-1/drain").as_deref(),
        Some("master-2")
    );
    assert_eq!(requires(&g, "/etcd/restart/master-2"), ["/etcd/restore"]);
    assert_eq!(
        requires(&g, "/etcd/restart/master-1"),
        ["/etcd/upgrade/master-1"]
    );
    // gc keeps the stored order.
    assert_eq!(
        children(&g, "/gc"),
        ["master-1", "master-2", "master-3", "worker-1"]
    );
}

#[test]
fn devicemapper_nodes_get_the_docker_block() {
    let mut cluster = Cluster::synthetic(1, 1);
    cluster.docker = DockerConfig::new("devicemapper");
    cluster.nodes[1] = cluster.nodes[1].clone().with_docker_device("/dev/sdb");
    let g = graph_of(
        &cluster,
        &ClusterImage::seed_target(),
        &BuildOptions::default(),
    );
    assert!(!has(&g, "/masters/master-1/docker"), "no recorded device");
    assert_eq!(
        children(&g, "/nodes/worker-1"),
        [
            "drain",
            "system-upgrade",
            "docker",
            "taint",
            "uncordon",
            "endpoints",
            "untaint"
        ]
    );
    assert_eq!(
        children(&g, "/nodes/worker-1/docker"),
        ["devicemapper", "format", "mount", "planet"]
    );
    assert_eq!(
        requires(&g, "/nodes/worker-1/docker"),
        ["/nodes/worker-1/system-upgrade"]
    );
    assert_eq!(
        requires(&g, "/nodes/worker-1/taint"),
        ["/nodes/worker-1/docker"]
    );
    assert_eq!(
        requires(&g, "/nodes/worker-1/docker/format"),
        ["/nodes/worker-1/docker/devicemapper"]
    );
    let su = &g
        .node(g.find_str("/nodes/worker-1/system-upgrade").unwrap())
        .phase;
    assert!(decode::<SystemUpgradeData>(su).unwrap().docker_migration);
    let docker = &g.node(g.find_str("/nodes/worker-1/docker").unwrap()).phase;
    assert_eq!(
        docker.description,
        "Repurpose devicemapper device /dev/sdb for overlay data"
    );
    // --docker-device wins over the recorded device.
    let opts = BuildOptions {
        docker_device: Some("/dev/nvme1n1".into()),
        ..BuildOptions::default()
    };
    let g = graph_of(&cluster, &ClusterImage::seed_target(), &opts);
    assert!(has(&g, "/nodes/worker-1/docker"));
    assert_eq!(
        g.node(g.find_str("/nodes/worker-1/docker/format").unwrap())
            .phase
            .description,
        "Format /dev/nvme1n1"
    );
}

#[test]
fn migrations_follow_the_cluster() {
    let mut cluster = Cluster::seed();
    cluster.ops_center_links = vec!["https://opscenter.example.com".into()];
    cluster.legacy_role_rules = true;
    let g = graph_of(
        &cluster,
        &ClusterImage::seed_target(),
        &BuildOptions::default(),
    );
    assert_eq!(children(&g, "/migration"), ["links", "labels", "roles"]);
    assert_eq!(exec(&g, "/migration/roles").as_deref(), Some("kevin-test1"));
    cluster.trusted_clusters = vec!["opscenter.example.com".into()];
    let g = graph_of(
        &cluster,
        &ClusterImage::seed_target(),
        &BuildOptions::default(),
    );
    assert_eq!(children(&g, "/migration"), ["labels", "roles"]);
}

#[test]
fn intermediate_runtime_steps_wrap_the_phases() {
    let mut target = ClusterImage::seed_target();
    // The hop ships the installed system apps with a newer rbac-app.
    let mut hop_apps = ClusterImage::seed_installed().system_apps;
    for app in &mut hop_apps {
        if app.name() == "rbac-app" {
            *app = loc("gravitational.io/rbac-app:5.5.48");
        }
    }
    target.intermediate.push(IntermediateRuntime {
        runtime_app: loc("gravitational.io/kubernetes:5.5.48"),
        system_apps: hop_apps,
        runtime_package: loc("gravitational.io/planet:5.5.50-11312"),
        etcd_version: Some(Version::parse("3.3.21").unwrap()),
        teleport: loc("gravitational.io/teleport:3.0.5"),
        gravity: loc("gravitational.io/gravity:5.5.48"),
    });
    // Older than the installed runtime: skipped.
    target.intermediate.push(IntermediateRuntime {
        runtime_app: loc("gravitational.io/kubernetes:5.5.40"),
        system_apps: vec![],
        runtime_package: loc("gravitational.io/planet:5.5.40-11312"),
        etcd_version: Some(Version::parse("3.3.20").unwrap()),
        teleport: loc("gravitational.io/teleport:3.0.5"),
        gravity: loc("gravitational.io/gravity:5.5.40"),
    });
    let plan = build_plan(&Cluster::synthetic(2, 1), &target, &BuildOptions::default()).unwrap();
    assert_eq!(plan.intermediate_steps.len(), 1);
    let g = plan.graph().unwrap();
    assert_eq!(
        top_level(&g),
        [
            "/init",
            "/checks",
            "/pre-update",
            "/5.5.48",
            "/target",
            "/migration",
            "/app",
            "/gc"
        ]
    );
    assert_eq!(requires(&g, "/5.5.48"), ["/checks", "/pre-update"]);
    assert_eq!(requires(&g, "/target"), ["/5.5.48"]);
    assert_eq!(requires(&g, "/migration"), ["/target"]);
    assert_eq!(
        children(&g, "/5.5.48"),
        ["bootstrap", "masters", "nodes", "etcd", "config", "runtime"]
    );
    assert_eq!(
        children(&g, "/target"),
        [
            "bootstrap",
            "coredns",
            "masters",
            "nodes",
            "etcd",
            "config",
            "runtime"
        ]
    );
    assert!(requires(&g, "/5.5.48/bootstrap").is_empty());
    assert_eq!(requires(&g, "/5.5.48/masters"), ["/5.5.48/bootstrap"]);
    assert!(requires(&g, "/target/bootstrap").is_empty());
    assert_eq!(
        g.node(g.find_str("/5.5.48/etcd").unwrap())
            .phase
            .description,
        "Upgrade etcd 3.3.20 to 3.3.21"
    );
    assert_eq!(
        g.node(g.find_str("/target/etcd").unwrap())
            .phase
            .description,
        "Upgrade etcd 3.3.21 to 3.3.22"
    );
    assert_eq!(
        requires(&g, "/target/etcd/restart/master-1"),
        ["/target/etcd/restore"]
    );
    assert_eq!(children(&g, "/5.5.48/runtime"), ["rbac-app", "kubernetes"]);
    assert_eq!(
        children(&g, "/target/runtime"),
        [
            "rbac-app",
            "logging-app",
            "monitoring-app",
            "site",
            "kubernetes"
        ]
    );
    let boot = &g
        .node(g.find_str("/5.5.48/bootstrap/master-1").unwrap())
        .phase;
    assert_eq!(boot.data.to_value()["version"], "5.5.48");
    insta::assert_snapshot!("intermediate_short", short(&g));
}

#[test]
fn disabled_extensions_are_not_updated() {
    let mut target = ClusterImage::seed_target();
    target.extensions.logs_disabled = true;
    let plan = build_plan(&Cluster::seed(), &target, &BuildOptions::default()).unwrap();
    let names: Vec<_> = plan.runtime_updates.iter().map(|l| l.name()).collect();
    assert_eq!(names, ["rbac-app", "monitoring-app", "site", "kubernetes"]);
}

#[test]
fn refusals() {
    let cluster = Cluster::seed();
    let installed = cluster.installed.clone();
    let opts = BuildOptions::default();

    let e = build_plan(&cluster, &installed, &opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no update for gravitational.io/telekube:5.5.46"
    );

    let older = installed.with_app_version("5.5.40").unwrap();
    assert!(matches!(
        build_plan(&cluster, &older, &opts),
        Err(BuildError::NotNewer { .. })
    ));

    let mut other = ClusterImage::seed_target();
    other.app = loc("gravitational.io/other:1.0.0");
    let e = build_plan(&cluster, &other, &opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        "you are attempting to upgrade to other 1.0.0, but different application is installed: telekube 5.5.46"
    );

    let mut down = ClusterImage::seed_target();
    down.runtime_app = loc("gravitational.io/kubernetes:5.5.40");
    let e = build_plan(&cluster, &down, &opts).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Downgrade between Gravity versions 5.5.46 and 5.5.40 is not allowed."
    );

    let mut unlabelled = ClusterImage::seed_target();
    unlabelled.etcd_version = None;
    assert!(matches!(
        build_plan(&cluster, &unlabelled, &opts),
        Err(BuildError::MissingEtcdVersion(_))
    ));

    let target = ClusterImage::seed_target();
    let workers = Cluster::synthetic(1, 1);
    assert!(matches!(
        build_plan(
            &workers,
            &target,
            &BuildOptions::default().with_leader("worker-1")
        ),
        Err(BuildError::LeaderNotMaster(_))
    ));
    assert!(matches!(
        build_plan(
            &workers,
            &target,
            &BuildOptions::default().with_leader("nobody")
        ),
        Err(BuildError::UnknownLeader(_))
    ));

    let mut site = Cluster::synthetic(1, 0);
    site.nodes
        .push(ClusterNode::worker("gravity-site", "10.9.9.9"));
    let e = build_plan(&site, &target, &opts).unwrap_err();
    assert!(e.to_string().contains("/etcd/restart/gravity-site"), "{e}");
    // Without an etcd upgrade the name is harmless.
    assert!(build_plan(&site, &target_without_etcd_change(), &opts).is_ok());

    let empty = Cluster::new("empty", installed);
    assert!(matches!(
        build_plan(&empty, &target, &opts),
        Err(BuildError::EmptyCluster(_))
    ));
}

#[test]
fn synthetic_plans_scale() {
    for (m, w) in [(3, 1000), (1000, 0)] {
        let plan =
            synthetic_plan(m, w, &BuildOptions::default().with_parallel_workers(50)).unwrap();
        let g = plan.graph().unwrap();
        let upgrades = g
            .nodes()
            .iter()
            .filter(|n| n.phase.executor.as_deref() == Some(executors::UPDATE_SYSTEM))
            .count();
        assert_eq!(upgrades, m + w);
        assert!(
            g.find(&PhasePath::parse(&format!("/gc/master-{m}")).unwrap())
                .is_some()
        );
    }
}
