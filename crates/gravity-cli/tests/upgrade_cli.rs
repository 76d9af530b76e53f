//! End-to-end tests of the cluster upgrade through the `gravity` binary on
//! a simulated cluster: the seed's manual upgrade replayed command by
//! command, automatic upgrades on several topologies, every fault kind
//! (reported, fixed and retried, or rolled back), the one-operation gate,
//! `status history` and the agents.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

mod common;
use common::find_phase;

const OLD_PLANET: &str = "gravitational.io/planet:5.5.47-11312";
const NEW_PLANET: &str = "gravitational.io/planet:5.5.54-11312";
const NEW_APP: &str = "gravitational.io/telekube:5.5.50-dev.9";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A simulated cluster (`sim init` with `args`) with its upgrade image
    /// uploaded.
    fn uploaded(args: &[&str]) -> Self {
        let env = Env::new();
        env.init(args);
        let out = env.ok(&["upload", env.image().to_str().unwrap()]);
        assert!(out.contains("Cluster image has been uploaded"), "{out}");
        env
    }

    /// The seed's cluster with its upgrade image uploaded.
    fn seed() -> Self {
        Env::uploaded(&[])
    }

    fn init(&self, args: &[&str]) {
        let image = self.image();
        let mut a = vec!["sim", "init", "--image", image.to_str().unwrap()];
        a.extend_from_slice(args);
        let out = self.ok(&a);
        assert!(out.contains("Created simulated cluster"), "{out}");
    }

    fn image(&self) -> PathBuf {
        self.dir.path().join("telekube.tar")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        common::gravity(&self.state(), self.dir.path(), args)
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        common::succeeded(args, self.run(args))
    }

    /// Runs a command that must fail; returns its stdout and stderr.
    fn fails(&self, args: &[&str]) -> String {
        let (out, err) = common::failed(args, self.run(args));
        out + &err
    }

    fn execute(&self, phase: &str) {
        self.ok(&["plan", "execute", "--phase", phase]);
    }

    fn inspect(&self) -> Value {
        serde_json::from_str(&self.ok(&["sim", "inspect", "-o", "json"])).unwrap()
    }

    /// `sim inspect -o json` without pod placement (drains move pods, a
    /// rollback does not move them back).
    fn inspect_without_pods(&self) -> Value {
        let mut v = self.inspect();
        for n in v["nodes"].as_array_mut().unwrap() {
            n["pods"] = Value::Array(vec![]);
        }
        v["pending_pods"] = Value::Array(vec![]);
        v
    }

    fn plan_json(&self) -> Value {
        serde_json::from_str(&self.ok(&["plan", "-o", "json"])).unwrap()
    }

    /// The state of the phase at `path` in the current plan.
    fn phase_state(&self, path: &str) -> String {
        let plan = self.plan_json();
        find_phase(&plan["phases"], path)
            .unwrap_or_else(|| panic!("no phase {path} in the plan"))["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A `gravity status` field (`Cluster status`, `Application`).
    fn status(&self, field: &str) -> String {
        let out = self.ok(&["status"]);
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .unwrap_or_else(|| panic!("no {field} in {out}"))
            .trim()
            .to_string()
    }

    fn assert_active(&self, version: &str) {
        assert_eq!(self.status("Cluster status"), "active");
        assert_eq!(
            self.status("Application"),
            format!("telekube, version {version}")
        );
    }

    fn history(&self) -> String {
        self.ok(&["status", "history"])
    }

    /// The node package list of `node` (`None`: the local node, kevin-test1).
    fn packages(&self, node: Option<&str>) -> String {
        match node {
            Some(n) => self.ok(&["package", "list", "--node", n]),
            None => self.ok(&["package", "list"]),
        }
    }
}

/// Every phase of a plan, depth first.
fn all_phases(phases: &Value, out: &mut Vec<Value>) {
    for p in phases.as_array().into_iter().flatten() {
        out.push(p.clone());
        all_phases(&p["phases"], out);
    }
}

/// The package line of `name` (`repo/name:version`) in a package list.
fn package_line<'a>(list: &'a str, name: &str) -> &'a str {
    let prefix = format!("* {name} ");
    list.lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {name} in\n{list}"))
}

/// The package line whose name starts with `prefix` and carries `version`.
fn package_line_like<'a>(list: &'a str, prefix: &str, version: &str) -> &'a str {
    list.lines()
        .find(|l| l.starts_with(&format!("* {prefix}")) && l.contains(&format!(":{version}")))
        .unwrap_or_else(|| panic!("no {prefix}…:{version} in\n{list}"))
}

fn installed(line: &str) -> bool {
    line.contains("installed:installed")
}

/// Asserts every node runs the new planet, masters run etcd 3.3.22 serving
/// normally with leader election on, nothing is cordoned or tainted, no
/// fault is left and the applications are the target's.
fn assert_upgraded(snap: &Value) {
    let nodes = snap["nodes"].as_array().unwrap();
    assert!(!nodes.is_empty());
    for n in nodes {
        let h = n["hostname"].as_str().unwrap();
        assert_eq!(n["runtime"], NEW_PLANET, "{h}");
        assert_eq!(n["runtime_running"], true, "{h}");
        assert_eq!(n["unschedulable"], false, "{h} is cordoned");
        assert_eq!(n["taints"], Value::Array(vec![]), "{h} is tainted");
        assert_eq!(n["agent_running"], false, "{h} still runs its agent");
        if n["role"] == "master" {
            assert_eq!(n["etcd_version"], "3.3.22", "{h}");
            assert_eq!(n["etcd_data_dir"], "/ext/etcd/3.3.22", "{h}");
            assert_eq!(n["etcd_state"], "normal", "{h}");
            assert_eq!(n["election"], true, "{h}");
        } else {
            assert_eq!(n["etcd_version"], Value::Null, "{h}");
        }
    }
    assert_eq!(snap["applications"]["gravitational.io/telekube"], NEW_APP);
    assert_eq!(snap["faults"], Value::Array(vec![]));
    assert_eq!(snap["pending_pods"], Value::Array(vec![]));
    assert!(snap["leader"].is_string(), "no leader: {snap}");
    assert!(
        !snap["etcd_data"].as_object().unwrap().is_empty(),
        "etcd lost its data"
    );
}

fn assert_all_completed(env: &Env) {
    let plan = env.plan_json();
    let mut phases = Vec::new();
    all_phases(&plan["phases"], &mut phases);
    for p in &phases {
        assert_eq!(p["state"], "completed", "{}", p["id"]);
    }
}

// ---------------------------------------------------------------------------
// The seed's manual upgrade
// ---------------------------------------------------------------------------

/// The seed's walkthrough, "Start a manual upgrade" to "Complete the
/// Upgrade", command by command.
#[test]
fn seed_manual_upgrade_replayed_command_by_command() {
    let env = Env::seed();
    let fixture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/seed_plan_unstarted.txt"),
    )
    .unwrap();
    let before = env.inspect_without_pods();
    let before_packages = env.packages(None);
    assert!(installed(package_line(&before_packages, OLD_PLANET)));
    assert!(installed(package_line(
        &before_packages,
        "gravitational.io/gravity:5.5.46"
    )));

    // sudo ./gravity upgrade --manual
    let out = env.ok(&["upgrade", "--manual"]);
    assert!(
        out.contains("The operation has been created in manual mode."),
        "{out}"
    );
    assert_eq!(env.status("Cluster status"), "updating");
    let agents = env.inspect();
    for n in agents["nodes"].as_array().unwrap() {
        assert_eq!(n["agent_running"], true, "{}", n["hostname"]);
    }

    // ./gravity plan: the seed's table, line for line.
    let plan = env.ok(&["plan"]);
    assert_eq!(
        plan.lines().collect::<Vec<_>>(),
        fixture.lines().collect::<Vec<_>>()
    );

    // Execute and roll back /init/kevin-test1, then commit.
    let out = env.ok(&["plan", "execute", "--phase", "/init/kevin-test1"]);
    assert!(
        out.contains("Executing \"/init/kevin-test1\" locally"),
        "{out}"
    );
    assert_eq!(env.phase_state("/init/kevin-test1"), "completed");
    assert_eq!(env.phase_state("/init"), "in_progress");
    let out = env.ok(&["plan", "rollback", "--phase", "/init/kevin-test1"]);
    assert!(
        out.contains("Rolling back \"/init/kevin-test1\" locally"),
        "{out}"
    );
    assert_eq!(env.phase_state("/init/kevin-test1"), "rolled_back");
    let out = env.ok(&["plan", "complete"]);
    assert_eq!(out, "", "plan complete is silent, as in the seed");
    env.assert_active("5.5.46");
    let status = env.ok(&["status"]);
    assert!(status.contains("Last completed operation:"), "{status}");
    assert!(status.contains("      failed:\t"), "{status}");
    assert_eq!(env.inspect_without_pods(), before);
    assert_eq!(env.packages(None), before_packages);

    // Start a new upgrade: the same unstarted plan.
    env.ok(&["upgrade", "--manual"]);
    let plan = env.ok(&["plan"]);
    assert_eq!(
        plan.lines().collect::<Vec<_>>(),
        fixture.lines().collect::<Vec<_>>()
    );

    for phase in ["/init", "/checks", "/pre-update"] {
        env.execute(phase);
        assert_eq!(env.phase_state(phase), "completed", "{phase}");
    }
    env.ok(&[
        "plan",
        "execute",
        "--phase",
        "/bootstrap/kevin-test1",
        "--force",
    ]);

    // After bootstrap: the new packages are there, not installed.
    let list = env.packages(None);
    assert!(list.contains("[festivebrown4906]") && list.contains("[gravitational.io]"));
    assert!(!installed(package_line(&list, NEW_PLANET)), "{list}");
    assert!(package_line(&list, NEW_PLANET).contains("purpose:runtime"));
    assert!(installed(package_line(&list, OLD_PLANET)), "{list}");
    assert!(!installed(package_line(
        &list,
        "gravitational.io/gravity:5.5.50-dev.9"
    )));
    assert!(installed(package_line(
        &list,
        "gravitational.io/gravity:5.5.46"
    )));
    for (prefix, purpose) in [
        (
            "festivebrown4906/planet-10.162.0.7-secrets",
            "planet-secrets",
        ),
        (
            "festivebrown4906/planet-config-1016207festivebrown4906",
            "planet-config",
        ),
    ] {
        let new = package_line_like(&list, prefix, "5.5.54-11312+");
        assert!(!installed(new), "{new}");
        assert!(new.contains(&format!("purpose:{purpose}")), "{new}");
        assert!(new.contains("advertise-ip:10.162.0.7"), "{new}");
        assert!(installed(package_line_like(&list, prefix, "5.5.47-11312")));
    }
    // The other nodes are not bootstrapped yet.
    let other = env.packages(Some("kevin-test2"));
    assert!(!other.contains(NEW_PLANET), "{other}");

    env.execute("/bootstrap");
    let other = env.packages(Some("kevin-test2"));
    assert!(!installed(package_line(&other, NEW_PLANET)), "{other}");
    assert!(!installed(package_line_like(
        &other,
        "festivebrown4906/planet-10.162.0.6-secrets",
        "5.5.54-11312+"
    )));

    for phase in [
        "/coredns",
        "/masters/kevin-test1/kubelet-permissions",
        "/masters/kevin-test1/stepdown-kevin-test1",
        "/masters/kevin-test1/drain",
    ] {
        env.execute(phase);
    }
    let snap = env.inspect();
    assert_eq!(snap["nodes"][0]["unschedulable"], true, "drained");
    assert_eq!(snap["nodes"][0]["election"], false, "stepped down");
    assert_ne!(snap["leader"], "kevin-test1");

    env.execute("/masters/kevin-test1/system-upgrade");
    // After system-upgrade: installed:installed moved to the new packages.
    let list = env.packages(None);
    assert!(installed(package_line(&list, NEW_PLANET)), "{list}");
    assert!(!installed(package_line(&list, OLD_PLANET)), "{list}");
    assert!(installed(package_line(
        &list,
        "gravitational.io/gravity:5.5.50-dev.9"
    )));
    assert!(!installed(package_line(
        &list,
        "gravitational.io/gravity:5.5.46"
    )));
    for prefix in [
        "festivebrown4906/planet-10.162.0.7-secrets",
        "festivebrown4906/planet-config-1016207festivebrown4906",
    ] {
        assert!(installed(package_line_like(&list, prefix, "5.5.54-11312+")));
        assert!(!installed(package_line_like(&list, prefix, "5.5.47-11312")));
    }
    let snap = env.inspect();
    assert_eq!(snap["nodes"][0]["runtime"], NEW_PLANET);
    assert_eq!(snap["nodes"][1]["runtime"], OLD_PLANET);

    for phase in [
        "/masters/kevin-test1/taint",
        "/masters/kevin-test1/uncordon",
        "/masters/kevin-test1/untaint",
        "/masters/elect-kevin-test1",
    ] {
        env.execute(phase);
    }
    let snap = env.inspect();
    assert_eq!(snap["leader"], "kevin-test1");
    assert_eq!(snap["nodes"][0]["unschedulable"], false);
    assert_eq!(snap["nodes"][0]["taints"], Value::Array(vec![]));

    for phase in [
        "/masters",
        "/etcd/backup/kevin-test1",
        "/etcd/backup",
        "/etcd/shutdown/kevin-test1",
        "/etcd/shutdown",
        "/etcd/upgrade/kevin-test1",
        "/etcd/upgrade",
        "/etcd/restore",
        "/etcd/restart/kevin-test1",
        "/etcd/restart",
        "/config/kevin-test1",
        "/config",
        "/runtime/rbac-app",
        "/runtime",
        "/migration/labels",
        "/app/telekube",
        "/gc/kevin-test1",
    ] {
        env.execute(phase);
        assert_eq!(env.phase_state(phase), "completed", "{phase}");
    }
    // After gc: only the new packages are left on kevin-test1, installed.
    let list = env.packages(None);
    assert!(!list.contains(OLD_PLANET), "{list}");
    assert!(!list.contains("gravitational.io/gravity:5.5.46 "), "{list}");
    assert!(installed(package_line(&list, NEW_PLANET)), "{list}");
    assert!(installed(package_line(
        &list,
        "gravitational.io/gravity:5.5.50-dev.9"
    )));
    // kevin-test2 is not cleaned up yet.
    let other = env.packages(Some("kevin-test2"));
    assert!(!installed(package_line(&other, OLD_PLANET)), "{other}");
    assert!(installed(package_line(&other, NEW_PLANET)), "{other}");
    assert_eq!(env.phase_state("/gc"), "in_progress");

    env.execute("/gc");
    let other = env.packages(Some("kevin-test2"));
    assert!(!other.contains(OLD_PLANET), "{other}");
    assert_all_completed(&env);

    assert_eq!(env.ok(&["plan", "complete"]), "");
    env.assert_active("5.5.50-dev.9");
    let snap = env.inspect();
    assert_upgraded(&snap);
    assert_eq!(snap["leader"], "kevin-test1");
    // etcd holds the same keys after the backup/upgrade/restore.
    assert_eq!(snap["etcd_data"], before["etcd_data"]);
    let history = env.history();
    assert!(
        history.contains("phase /etcd/restore completed"),
        "{history}"
    );
    assert!(history.contains("phase /init/kevin-test1 rolled_back"));
}

// ---------------------------------------------------------------------------
// Automatic upgrades and topologies
// ---------------------------------------------------------------------------

#[test]
fn automatic_upgrade_runs_to_the_end() {
    let env = Env::seed();
    let before = env.inspect();
    let o = env.run(&["upgrade"]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{stdout}");
    assert!(
        stdout
            .contains("Upgrade of cluster festivebrown4906 to telekube 5.5.50-dev.9 has completed"),
        "{stdout}"
    );
    env.assert_active("5.5.50-dev.9");
    let status = env.ok(&["status"]);
    assert!(
        status.contains("(client) / 5.5.50-dev.9 (server)"),
        "{status}"
    );
    assert!(!status.contains("Active operations:"), "{status}");
    assert!(status.contains("      completed:\t"), "{status}");
    let snap = env.inspect();
    assert_upgraded(&snap);
    assert_eq!(snap["etcd_data"], before["etcd_data"]);
    assert_all_completed(&env);

    // Nothing newer to upgrade to.
    let e = env.fails(&["upgrade"]);
    assert!(e.contains("no upgrade image uploaded"), "{e}");
}

/// An automatic upgrade of a synthetic topology; returns the environment.
fn topology(masters: usize, workers: usize, parallel: usize) -> Env {
    let env = Env::uploaded(&[
        "--masters",
        &masters.to_string(),
        "--workers",
        &workers.to_string(),
    ]);
    let n = env.inspect()["nodes"].as_array().unwrap().len();
    assert_eq!(n, masters + workers);
    env.ok(&["upgrade", "--parallel-workers", &parallel.to_string()]);
    env.assert_active("5.5.50-dev.9");
    let snap = env.inspect();
    assert_upgraded(&snap);
    let roles: Vec<&str> = snap["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles.iter().filter(|r| **r == "master").count(), masters);
    assert_all_completed(&env);
    let plan = env.plan_json();
    for m in 1..=masters {
        assert!(
            find_phase(
                &plan["phases"],
                &format!("/masters/master-{m}/system-upgrade")
            )
            .is_some()
        );
    }
    for w in 1..=workers {
        assert!(
            find_phase(
                &plan["phases"],
                &format!("/nodes/worker-{w}/system-upgrade")
            )
            .is_some()
        );
    }
    assert_eq!(
        find_phase(&plan["phases"], "/nodes").is_some(),
        workers > 0,
        "a /nodes phase iff there are workers"
    );
    env
}

#[test]
fn topology_one_master() {
    let env = topology(1, 0, 1);
    let plan = env.plan_json();
    // A single master has no other master to hand leadership over to: no
    // kubelet-permissions/stepdown/elect steps.
    assert!(find_phase(&plan["phases"], "/masters/master-1/drain").is_some());
    assert!(find_phase(&plan["phases"], "/masters/master-1/stepdown-master-1").is_none());
    assert!(find_phase(&plan["phases"], "/masters/elect-master-1").is_none());
    assert!(find_phase(&plan["phases"], "/etcd/restart/master-1").is_some());
    assert!(find_phase(&plan["phases"], "/masters/master-2").is_none());
}

#[test]
fn topology_three_masters_two_workers() {
    let env = topology(3, 2, 1);
    let plan = env.plan_json();
    assert_eq!(
        find_phase(&plan["phases"], "/nodes").unwrap()["parallel"],
        1
    );
    // Workers have no etcd member but restart their etcd clients.
    assert!(find_phase(&plan["phases"], "/etcd/restart/worker-1").is_some());
    assert!(find_phase(&plan["phases"], "/etcd/upgrade/worker-1").is_none());
}

/// 5 masters and 20 workers, 4 workers at once: the slow variant, run once.
#[test]
fn topology_five_masters_twenty_workers_parallel() {
    let env = topology(5, 20, 4);
    let plan = env.plan_json();
    assert_eq!(
        find_phase(&plan["phases"], "/nodes").unwrap()["parallel"],
        4
    );
    // From the phase transitions: several workers were upgraded at once,
    // never more than four.
    let mut running: BTreeSet<String> = BTreeSet::new();
    let mut max = 0;
    for line in env.history().lines() {
        let Some(rest) = line.split_once("\tphase /nodes/").map(|(_, r)| r) else {
            continue;
        };
        let (path, state) = rest.split_once(' ').unwrap();
        let worker = path.split('/').next().unwrap().to_string();
        match (path.ends_with("/drain"), path.ends_with("/untaint"), state) {
            (true, _, "in_progress") => {
                running.insert(worker);
            }
            (_, true, "completed") => {
                running.remove(&worker);
            }
            _ => {}
        }
        max = max.max(running.len());
    }
    assert!(
        (2..=4).contains(&max),
        "{max} workers were upgraded at once"
    );
}

/// `sim init --upgrade KIND`, `upload`, `upgrade`: the cluster ends active
/// on the new version; the plan has `/masters` and `/etcd` as the spec
/// says (§1.6 A: an application-only upgrade is /checks, /pre-update,
/// /app, /gc; §1.4: no /etcd without an etcd version change). Returns the
/// environment and the top-level phases.
fn upgrade_of_kind(kind: &str, masters: bool, etcd: bool) -> (Env, Vec<String>) {
    let env = Env::uploaded(&["--upgrade", kind]);
    env.ok(&["upgrade"]);
    env.assert_active("5.5.50-dev.9");
    assert_all_completed(&env);
    let plan = env.plan_json();
    let top: Vec<String> = plan["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        top.iter().any(|p| p == "/masters"),
        masters,
        "{kind}: {top:?}"
    );
    assert_eq!(top.iter().any(|p| p == "/etcd"), etcd, "{kind}: {top:?}");
    let snap = env.inspect();
    assert_eq!(snap["applications"]["gravitational.io/telekube"], NEW_APP);
    for n in snap["nodes"].as_array().unwrap() {
        assert_eq!(n["unschedulable"], false, "{kind}: {n}");
        assert_eq!(n["taints"], Value::Array(vec![]), "{kind}: {n}");
        if n["role"] == "master" {
            assert_eq!(n["etcd_state"], "normal", "{kind}: {n}");
        }
    }
    (env, top)
}

#[test]
fn sim_init_upgrade_kinds_are_documented() {
    let env = Env::new();
    let help = env.ok(&["sim", "init", "--help"]);
    for kind in ["full", "app-only", "no-etcd-change"] {
        assert!(help.contains(kind), "{help}");
    }
    env.init(&["--upgrade", "no-etcd-change"]);
    let e = Env::new().fails(&["sim", "init", "--upgrade", "runtime-only"]);
    assert!(e.contains("runtime-only"), "{e}");
}

#[test]
fn application_only_upgrade_from_the_cli() {
    let (env, top) = upgrade_of_kind("app-only", false, false);
    assert_eq!(top, ["/checks", "/pre-update", "/app", "/gc"]);
    // The runtime is the installed one.
    for n in env.inspect()["nodes"].as_array().unwrap() {
        assert_eq!(n["runtime"], OLD_PLANET, "{n}");
        assert_eq!(n["etcd_version"].as_str().unwrap_or("3.3.20"), "3.3.20");
    }
}

#[test]
fn upgrade_without_etcd_change_from_the_cli() {
    let (env, top) = upgrade_of_kind("no-etcd-change", true, false);
    assert!(top.contains(&"/migration".to_string()), "{top:?}");
    for n in env.inspect()["nodes"].as_array().unwrap() {
        assert_eq!(n["runtime"], NEW_PLANET, "{n}");
        if n["role"] == "master" {
            assert_eq!(n["etcd_version"], "3.3.20", "{n}");
            assert_eq!(n["etcd_data_dir"], "/ext/etcd/3.3.20", "{n}");
        }
    }
}

#[test]
fn full_upgrade_from_the_cli() {
    let (env, _) = upgrade_of_kind("full", true, true);
    assert_upgraded(&env.inspect());
}

// ---------------------------------------------------------------------------
// Health probes in the status history
// ---------------------------------------------------------------------------

/// The history lines that contain every one of `words`.
fn history_lines(history: &str, words: &[&str]) -> usize {
    history
        .lines()
        .filter(|l| words.iter().all(|w| l.contains(w)))
        .count()
}

/// A disk-full fault found by a health probe (`gravity status`) and by
/// the preflight checks of `gravity upgrade`: `probe failed` (the check,
/// the node, the message) and `node degraded` once; healed, `probe
/// succeeded` and `node healthy` once.
#[test]
fn probe_failures_and_recoveries_are_in_the_status_history() {
    let env = Env::seed();
    env.ok(&["status"]);
    assert!(!env.history().contains("probe"), "{}", env.history());
    env.ok(&["sim", "fault", "disk-full", "--node", "kevin-test2"]);
    let status = env.ok(&["status"]);
    let node = status.split("* kevin-test2").nth(1).unwrap();
    assert!(node.contains("Status:\t\tdegraded"), "{status}");
    env.fails(&["upgrade"]);
    let history = env.history();
    let failed = ["probe failed", "node=kevin-test2", "checker=disk-space"];
    assert_eq!(history_lines(&history, &failed), 1, "{history}");
    assert!(
        history.contains("failed to validate disk requirements"),
        "{history}"
    );
    assert_eq!(
        history_lines(&history, &["node degraded", "node=kevin-test2"]),
        1,
        "{history}"
    );
    assert_eq!(
        history_lines(&history, &["probe succeeded"]),
        0,
        "{history}"
    );

    env.ok(&["sim", "heal", "disk-full", "--node", "kevin-test2"]);
    env.ok(&["upgrade"]);
    let history = env.history();
    let succeeded = ["probe succeeded", "node=kevin-test2", "checker=disk-space"];
    assert_eq!(history_lines(&history, &succeeded), 1, "{history}");
    assert_eq!(
        history_lines(&history, &["node healthy", "node=kevin-test2"]),
        1,
        "{history}"
    );
    // In order: injected, failed, degraded, healed, succeeded, healthy.
    let at = |w: &str| {
        history
            .find(w)
            .unwrap_or_else(|| panic!("no {w} in {history}"))
    };
    assert!(at("fault disk-full injected") < at("probe failed"));
    assert!(at("probe failed") < at("node degraded"));
    assert!(at("node degraded") < at("fault disk-full healed"));
    assert!(at("fault disk-full healed") < at("probe succeeded"));
    assert!(at("probe succeeded") < at("node healthy"));
    let status = env.ok(&["status"]);
    assert!(!status.contains("degraded"), "{status}");
}

/// The `/checks` phase records its probes too: failed while the fault is
/// there, succeeded when the phase is retried after the heal.
#[test]
fn checks_phase_records_probe_events() {
    let env = Env::seed();
    env.ok(&["upgrade", "--manual"]);
    env.execute("/init");
    env.ok(&["sim", "fault", "disk-full", "--node", "kevin-test3"]);
    let e = env.fails(&["plan", "execute", "--phase", "/checks"]);
    assert!(e.contains("The following checks failed:"), "{e}");
    let history = env.history();
    let failed = ["probe failed", "node=kevin-test3", "checker=disk-space"];
    assert_eq!(history_lines(&history, &failed), 1, "{history}");
    assert!(history.contains("phase /checks failed"), "{history}");
    env.ok(&["sim", "heal", "disk-full"]);
    env.execute("/checks");
    let history = env.history();
    let succeeded = ["probe succeeded", "node=kevin-test3", "checker=disk-space"];
    assert_eq!(history_lines(&history, &succeeded), 1, "{history}");
    assert_eq!(
        history_lines(&history, &["node healthy", "node=kevin-test3"]),
        1,
        "{history}"
    );
    assert!(history.find("probe succeeded") > history.find("phase /checks failed"));
}

// ---------------------------------------------------------------------------
// The one-operation gate, agents
// ---------------------------------------------------------------------------

#[test]
fn second_upgrade_refused_while_one_is_unfinished() {
    let env = Env::seed();
    env.ok(&["upgrade", "--manual"]);
    env.execute("/init");
    let plan_before = env.ok(&["plan"]);
    for args in [
        &["upgrade", "--manual"][..],
        &["upgrade"][..],
        &["upgrade", "--force"][..],
    ] {
        let e = env.fails(args);
        assert!(
            e.contains("[ERROR]: Upgrade operation can only be triggered for active clusters. This cluster is currently updating."),
            "{args:?}: {e}"
        );
        assert!(e.contains("gravity plan complete"), "{e}");
    }
    // Nothing changed: the same operation, still updating.
    assert_eq!(env.ok(&["plan"]), plan_before);
    assert_eq!(env.status("Cluster status"), "updating");
    let history = env.history();
    assert_eq!(history.matches("upgrade refused: ").count(), 3, "{history}");
    // Finishing the operation lets the next one start.
    env.ok(&["plan", "resume"]);
    env.ok(&["plan", "complete"]);
    env.assert_active("5.5.50-dev.9");
}

#[test]
fn agent_shutdown_then_remote_phase_needs_agent_deploy() {
    let env = Env::seed();
    env.ok(&["upgrade", "--manual"]);
    env.ok(&["agent", "shutdown"]);
    let snap = env.inspect();
    for n in snap["nodes"].as_array().unwrap() {
        assert_eq!(n["agent_running"], false);
    }
    let e = env.fails(&["plan", "execute", "--phase", "/init/kevin-test2"]);
    let err = e
        .lines()
        .find(|l| l.starts_with("[ERROR]: "))
        .unwrap_or_else(|| panic!("{e}"));
    assert!(
        err.contains("no agent is running on node kevin-test2"),
        "{err}"
    );
    assert!(err.contains("gravity agent deploy"), "{err}");
    // The refused phase did not start.
    assert_eq!(env.phase_state("/init/kevin-test2"), "unstarted");

    let out = env.ok(&["agent", "deploy"]);
    assert!(out.contains("Deployed agent on kevin-test2"), "{out}");
    let out = env.ok(&["plan", "execute", "--phase", "/init/kevin-test2"]);
    assert!(
        out.contains("Executing \"/init/kevin-test2\" on remote node kevin-test2"),
        "{out}"
    );
    assert_eq!(env.phase_state("/init/kevin-test2"), "completed");
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

/// A fault the preflight checks catch: the automatic upgrade is refused
/// before anything changes; injected after the operation started, the
/// `/checks` phase fails (and, for an unreachable node, a phase on it is
/// refused by its pre-check); `gravity
/// rollback` gives the cluster back as before; healed, the upgrade runs.
fn preflight_fault(kind: &str, expect: &[&str]) {
    let env = Env::seed();
    let pristine = env.inspect_without_pods();
    env.ok(&["sim", "fault", kind, "--node", "kevin-test2"]);
    let before = env.inspect();

    // The automatic upgrade is refused before anything changes.
    let e = env.fails(&["upgrade"]);
    assert!(
        e.contains("[ERROR]: The upgrade is prohibited because some preflight checks failed:"),
        "{kind}: {e}"
    );
    assert!(e.contains("kevin-test2"), "{kind}: {e}");
    for x in expect {
        assert!(e.contains(x), "{kind}: no {x:?} in {e}");
    }
    assert!(
        e.contains("Fix the problems and run the upgrade again."),
        "{e}"
    );
    assert_eq!(env.status("Cluster status"), "active");
    assert_eq!(env.inspect(), before);
    let e = env.fails(&["plan"]);
    assert!(e.contains("no operation found"), "{kind}: {e}");
    let history = env.history();
    assert!(
        history.contains(&format!("fault {kind} injected on kevin-test2")),
        "{history}"
    );
    assert!(
        history.contains("upgrade refused: The upgrade is prohibited"),
        "{history}"
    );

    // Healed, a manual upgrade starts; the fault comes back mid-way.
    env.ok(&["sim", "heal", kind, "--node", "kevin-test2"]);
    env.ok(&["upgrade", "--manual"]);
    if kind == "node-unreachable" {
        // A phase on the unreachable node is refused by its pre-check and
        // does not start.
        env.ok(&["sim", "fault", kind, "--node", "kevin-test2"]);
        let e = env.fails(&["plan", "execute", "--phase", "/init/kevin-test2"]);
        assert!(
            e.contains("[ERROR]: pre-check of phase \"/init/kevin-test2\" failed"),
            "{e}"
        );
        assert!(
            e.contains("node kevin-test2/10.162.0.6 is unreachable"),
            "{e}"
        );
        assert_eq!(env.phase_state("/init/kevin-test2"), "unstarted");
        env.ok(&["sim", "heal", kind]);
    }
    env.execute("/init");
    env.ok(&["sim", "fault", kind, "--node", "kevin-test2"]);
    let e = env.fails(&["plan", "resume"]);
    let failed = "/checks";
    assert!(
        e.contains(&format!("[ERROR]: failed to execute phase \"{failed}\"")),
        "{kind}: {e}"
    );
    assert!(e.contains("The following checks failed:"), "{kind}: {e}");
    assert!(e.contains("kevin-test2"), "{kind}: {e}");
    for x in expect {
        assert!(e.contains(x), "{kind}: no {x:?} in {e}");
    }
    assert_eq!(env.phase_state(failed), "failed");
    assert_eq!(env.status("Cluster status"), "updating");

    // Fixed, the whole operation is rolled back: the cluster is as before.
    env.ok(&["sim", "heal", kind]);
    env.ok(&["rollback", "--confirm"]);
    env.assert_active("5.5.46");
    assert_eq!(env.inspect_without_pods(), pristine, "{kind}");

    // And the upgrade runs to the end.
    env.ok(&["upgrade"]);
    env.assert_active("5.5.50-dev.9");
    assert_upgraded(&env.inspect());
}

#[test]
fn fault_disk_full_caught_by_preflight() {
    preflight_fault(
        "disk-full",
        &[
            "node kevin-test2 has 52MB free on /var/lib/gravity",
            "failed to validate disk requirements",
        ],
    );
}

#[test]
fn fault_node_unreachable_caught_by_preflight() {
    preflight_fault(
        "node-unreachable",
        &["kevin-test2/10.162.0.6 is unreachable"],
    );
}

#[test]
fn fault_clock_skew_caught_by_preflight() {
    preflight_fault(
        "clock-skew",
        &[
            "clocks are out of sync",
            "failed to validate time drift requirement",
        ],
    );
}

#[test]
fn fault_dns_broken_caught_by_preflight() {
    preflight_fault(
        "dns-broken",
        &[
            "node kevin-test2 has no DNS configuration",
            "failed to validate DNS configuration",
        ],
    );
}

enum Finish {
    /// `sim heal`, `plan resume`, `plan complete`.
    Resume,
    /// `sim heal`, `rollback --confirm`.
    Rollback,
}

/// A fault that stops the automatic upgrade at `phase`.
fn mid_upgrade_fault(fault: &[&str], kind: &str, phase: &str, expect: &[&str], finish: Finish) {
    let env = Env::seed();
    let before = env.inspect_without_pods();
    let before_packages = [
        env.packages(None),
        env.packages(Some("kevin-test2")),
        env.ok(&["package", "list", "--cluster"]),
    ];
    let mut args = vec!["sim", "fault", kind];
    args.extend_from_slice(fault);
    env.ok(&args);

    let e = env.fails(&["upgrade"]);
    assert!(
        e.contains(&format!("[ERROR]: failed to execute phase \"{phase}\"")),
        "{kind}: {e}"
    );
    for x in expect {
        assert!(e.contains(x), "{kind}: no {x:?} in {e}");
    }
    assert!(
        e.contains("The cluster stays in the updating state. Fix the cause and run \"gravity plan resume\", or roll back with \"gravity rollback\"."),
        "{e}"
    );
    assert_eq!(env.status("Cluster status"), "updating");
    assert_eq!(env.phase_state(phase), "failed");
    let plan = env.ok(&["plan"]);
    assert!(
        plan.contains(&format!("The {phase} phase (")) && plan.contains("has failed"),
        "{plan}"
    );
    let status = env.ok(&["status"]);
    assert!(status.contains("Active operations:"), "{status}");
    let history = env.history();
    assert!(
        history.contains(&format!("fault {kind} injected")),
        "{history}"
    );
    assert!(
        history.contains(&format!("phase {phase} failed")),
        "{history}"
    );
    assert!(history.contains("phase /init/kevin-test1 completed"));

    // Retrying without a fix fails the same way.
    let e = env.fails(&["plan", "resume"]);
    assert!(e.contains(&format!("\"{phase}\"")), "{e}");

    env.ok(&["sim", "heal", kind]);
    match finish {
        Finish::Resume => {
            env.ok(&["plan", "resume"]);
            env.ok(&["plan", "complete"]);
            env.assert_active("5.5.50-dev.9");
            assert_upgraded(&env.inspect());
            assert_all_completed(&env);
            let history = env.history();
            assert!(
                history.contains(&format!("fault {kind} healed")),
                "{history}"
            );
            assert!(
                history.contains(&format!("phase {phase} completed")),
                "{history}"
            );
        }
        Finish::Rollback => {
            let out = env.ok(&["rollback", "--confirm"]);
            assert!(out.contains("is failed"), "{out}");
            env.assert_active("5.5.46");
            assert_eq!(env.inspect_without_pods(), before, "{kind}");
            let after_packages = [
                env.packages(None),
                env.packages(Some("kevin-test2")),
                env.ok(&["package", "list", "--cluster"]),
            ];
            assert_eq!(after_packages, before_packages);
            let status = env.ok(&["status"]);
            assert!(!status.contains("Active operations:"), "{status}");
            assert!(
                env.history()
                    .contains(&format!("phase {phase} rolled_back"))
            );
        }
    }
}

const EVICTION: &[&str] = &[
    "failed to drain node kevin-test2/10.162.0.6",
    "blocked by PodDisruptionBudget",
];

#[test]
fn fault_eviction_blocked_heal_and_resume() {
    mid_upgrade_fault(
        &["--node", "kevin-test2"],
        "eviction-blocked",
        "/masters/kevin-test2/drain",
        EVICTION,
        Finish::Resume,
    );
}

#[test]
fn fault_eviction_blocked_rollback() {
    mid_upgrade_fault(
        &["--node", "kevin-test2"],
        "eviction-blocked",
        "/masters/kevin-test2/drain",
        EVICTION,
        Finish::Rollback,
    );
}

#[test]
fn fault_phase_fails_heal_and_resume() {
    mid_upgrade_fault(
        &["--phase", "/etcd/restore"],
        "phase-fails",
        "/etcd/restore",
        &["simulated failure (fault phase-fails)"],
        Finish::Resume,
    );
}

#[test]
fn fault_phase_fails_rollback() {
    mid_upgrade_fault(
        &["--phase", "/masters/kevin-test2/system-upgrade"],
        "phase-fails",
        "/masters/kevin-test2/system-upgrade",
        &[
            "failed on node kevin-test2/10.162.0.6",
            "simulated failure (fault phase-fails)",
        ],
        Finish::Rollback,
    );
}

/// A phase failing late (after etcd was upgraded and the applications
/// updated) still rolls back to exactly the cluster before the upgrade.
#[test]
fn fault_phase_fails_late_rollback() {
    mid_upgrade_fault(
        &["--phase", "/app/telekube"],
        "phase-fails",
        "/app/telekube",
        &["simulated failure (fault phase-fails)"],
        Finish::Rollback,
    );
}
