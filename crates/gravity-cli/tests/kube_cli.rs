//! `gravity --kubeconfig FILE` end to end: the `gravity` binary drives the
//! kube-rs backend (`gravity_kube::KubeBackend`) against the in-process
//! fake Kubernetes API server of gravity-kube's tests, while the rest of
//! the cluster stays the simulated one of the state directory.

mod common;
#[path = "../../gravity-kube/tests/fake_api/mod.rs"]
mod fake_api;

use std::path::{Path, PathBuf};

use common::{find_phase, succeeded, text};
use fake_api::FakeApi;
use serde_json::{Value, json};

/// How a command is told about the kubeconfig.
#[derive(Clone, Copy)]
enum Via {
    /// `--kubeconfig FILE`.
    Flag,
    /// `GRAVITY_KUBECONFIG=FILE`.
    Env,
}

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    /// A simulated cluster (`sim init`) with its upgrade image uploaded.
    async fn new() -> Env {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
        };
        let image = env.dir.path().join("telekube.tar");
        let image = image.to_str().unwrap();
        let out = env.ok(&["sim", "init", "--image", image]).await;
        assert!(out.contains("Created simulated cluster"), "{out}");
        let out = env.ok(&["upload", image]).await;
        assert!(out.contains("Cluster image has been uploaded"), "{out}");
        env
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// `gravity --state-dir <state> args…`, with no kubeconfig or etcd
    /// from the environment of the test.
    fn cmd(&self, args: &[&str]) -> tokio::process::Command {
        let mut c =
            tokio::process::Command::from(common::gravity(&self.state(), self.dir.path(), args));
        c.kill_on_drop(true);
        c
    }

    /// The same with the kubeconfig `config`, given `via`.
    fn kube_cmd(&self, config: &Path, via: Via, args: &[&str]) -> tokio::process::Command {
        let mut c = self.cmd(&[]);
        match via {
            Via::Flag => {
                c.arg("--kubeconfig").arg(config);
            }
            Via::Env => {
                c.env("GRAVITY_KUBECONFIG", config);
            }
        }
        c.args(args);
        c
    }

    /// Runs a command without a kubeconfig that must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        succeeded(args, self.cmd(args).output().await.unwrap())
    }

    /// Runs a command with the kubeconfig `config` that must succeed; its
    /// stdout.
    async fn kube_ok(&self, config: &Path, via: Via, args: &[&str]) -> String {
        let o = self.kube_cmd(config, via, args).output().await.unwrap();
        succeeded(args, o)
    }

    /// The phases of the current plan as `gravity plan -o json` shows them.
    async fn plan_json(&self) -> Value {
        serde_json::from_str(&self.ok(&["plan", "-o", "json"]).await).unwrap()
    }

    /// The state of the phase at `path`.
    async fn phase_state(&self, path: &str) -> String {
        let plan = self.plan_json().await;
        find_phase(&plan["phases"], path).unwrap_or_else(|| panic!("no phase {path}"))["state"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// `gravity sim inspect -o json`.
    async fn inspect(&self) -> Value {
        serde_json::from_str(&self.ok(&["sim", "inspect", "-o", "json"]).await).unwrap()
    }

    /// A kubeconfig file for the fake API server at `url`.
    fn kubeconfig(&self, url: &str) -> PathBuf {
        let path = self.dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: admin\ncurrent-context: fake\nusers:\n- name: admin\n  user:\n    token: secret-token\n"
            ),
        )
        .unwrap();
        path
    }
}

/// The hostnames of the simulated cluster, masters first as `sim inspect`
/// lists them.
async fn hostnames(env: &Env) -> Vec<String> {
    env.inspect().await["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["hostname"].as_str().unwrap().to_string())
        .collect()
}

fn writes(fake: &FakeApi) -> Vec<String> {
    fake.writes().iter().map(|r| r.line()).collect()
}

/// The first PATCH of `path` is a JSON merge patch of `spec` carrying the
/// resource version `rv` the backend read.
fn assert_merge_patch(fake: &FakeApi, path: &str, rv: &str, spec: Value) {
    let patch = &fake.requests_of("PATCH", path)[0];
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        patch.body,
        json!({"metadata": {"resourceVersion": rv}, "spec": spec})
    );
}

fn resource_version(node: &Value) -> String {
    node["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The simulated cluster's own view of `node` (`sim inspect`).
async fn sim_node(env: &Env, node: &str) -> Value {
    env.inspect().await["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["hostname"] == node)
        .unwrap_or_else(|| panic!("no node {node}"))
        .clone()
}

/// The scenario of both kubeconfig tests: a manual upgrade run up to the
/// first master's drain, which cordons it and evicts its pods on the fake
/// API server, then the drain rolled back, which uncordons it there.
async fn drain_and_rollback_through(via: Via) {
    let env = Env::new().await;
    let fake = FakeApi::start().await;
    let nodes = hostnames(&env).await;
    for n in &nodes {
        fake.add_node(n, &[("gravitational.io/k8s-role", "master")]);
    }
    let first = nodes[0].as_str();
    fake.add_pod(
        "default",
        "web-1",
        first,
        &[("app", "web")],
        Some("ReplicaSet"),
        false,
    );
    fake.add_pod(
        "kube-system",
        "flannel-x",
        first,
        &[],
        Some("DaemonSet"),
        false,
    );
    fake.add_pod(
        "default",
        "web-2",
        &nodes[1],
        &[("app", "web")],
        Some("ReplicaSet"),
        false,
    );
    let config = env.kubeconfig(&fake.url());

    // The preflight reads the nodes from the API server, writes nothing.
    let out = env.kube_ok(&config, via, &["upgrade", "--manual"]).await;
    assert!(
        out.contains("The operation has been created in manual mode."),
        "{out}"
    );
    assert!(
        fake.requests()
            .iter()
            .any(|r| r.line() == "GET /api/v1/nodes"),
        "{:?}",
        fake.requests()
    );
    assert_eq!(writes(&fake), Vec::<String>::new());

    // The phases the drain requires; /coredns and kubelet-permissions
    // create their objects on the API server.
    let kubelet = format!("/masters/{first}/kubelet-permissions");
    let stepdown = format!("/masters/{first}/stepdown-{first}");
    for phase in [
        "/init",
        "/checks",
        "/pre-update",
        "/bootstrap",
        "/coredns",
        &kubelet,
        &stepdown,
    ] {
        env.kube_ok(&config, via, &["plan", "execute", "--phase", phase])
            .await;
    }
    assert_eq!(
        fake.names("clusterroles"),
        ["gravity:coredns", "kubelet-upgrade"]
    );
    assert_eq!(
        fake.names("clusterrolebindings"),
        ["gravity:coredns", "kubelet-upgrade"]
    );
    assert_eq!(fake.names("configmaps"), ["kube-system/coredns"]);

    // The drain: one merge patch cordoning the node, with the
    // resourceVersion read, then one eviction, of the ReplicaSet pod.
    let drain = format!("/masters/{first}/drain");
    fake.clear_requests();
    let rv = resource_version(&fake.node(first));
    let out = env
        .kube_ok(&config, via, &["plan", "execute", "--phase", &drain])
        .await;
    assert!(
        out.contains(&format!(
            "{drain}: evicted 1 pods from {first} (1 DaemonSet/mirror pods left)"
        )),
        "{out}"
    );
    let node_path = format!("/api/v1/nodes/{first}");
    assert_eq!(
        writes(&fake),
        [
            format!("PATCH {node_path}"),
            "POST /api/v1/namespaces/default/pods/web-1/eviction".to_string(),
        ]
    );
    assert_merge_patch(&fake, &node_path, &rv, json!({"unschedulable": true}));
    let eviction = &fake.requests_of("POST", "/eviction")[0];
    assert_eq!(
        eviction.body,
        json!({
            "apiVersion": "policy/v1",
            "kind": "Eviction",
            "metadata": {"name": "web-1", "namespace": "default"},
        })
    );
    let pods = fake
        .requests()
        .into_iter()
        .find(|r| r.line() == "GET /api/v1/pods")
        .expect("the node's pods were listed");
    assert_eq!(
        pods.param("fieldSelector"),
        Some(format!("spec.nodeName={first}"))
    );
    assert!(
        !fake
            .requests()
            .iter()
            .any(|r| r.path.contains("flannel-x") || r.path.contains("web-2")),
        "{:?}",
        fake.requests()
    );
    assert_eq!(fake.node(first)["spec"]["unschedulable"], json!(true));
    assert_eq!(
        fake.names("pods"),
        ["default/web-2", "kube-system/flannel-x"]
    );
    assert_eq!(env.phase_state(&drain).await, "completed");
    // The simulated cluster's Kubernetes was not used.
    assert_eq!(sim_node(&env, first).await["unschedulable"], json!(false));

    // Its rollback: one merge patch removing spec.unschedulable.
    fake.clear_requests();
    let rv = resource_version(&fake.node(first));
    let out = env
        .kube_ok(&config, via, &["plan", "rollback", "--phase", &drain])
        .await;
    assert!(
        out.contains(&format!("Rolling back \"{drain}\" locally")),
        "{out}"
    );
    assert_eq!(writes(&fake), [format!("PATCH {node_path}")]);
    assert_merge_patch(&fake, &node_path, &rv, json!({"unschedulable": null}));
    assert!(fake.node(first)["spec"].get("unschedulable").is_none());
    assert_eq!(env.phase_state(&drain).await, "rolled_back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeconfig_flag_drains_and_uncordons_through_the_api_server() {
    drain_and_rollback_through(Via::Flag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gravity_kubeconfig_env_drains_and_uncordons_through_the_api_server() {
    drain_and_rollback_through(Via::Env).await;
}

/// Runs a command with an unreadable kubeconfig: it must fail with one
/// line on stderr, the `[ERROR]` naming the file, and nothing on stdout.
async fn refused(env: &Env, config: &Path, via: Via, args: &[&str]) {
    let o = env.kube_cmd(config, via, args).output().await.unwrap();
    assert!(
        o.status.code().is_some_and(|c| c != 0),
        "gravity {args:?} with {} did not fail: {}",
        config.display(),
        text(&o)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "", "{args:?}");
    let err = String::from_utf8(o.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{args:?}: not one line:\n{err}");
    assert!(err.ends_with('\n'), "{err:?}");
    let prefix = format!("[ERROR]: cannot read kubeconfig {}: ", config.display());
    assert!(err.starts_with(&prefix), "{args:?}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_kubeconfig_is_one_line_of_error_and_changes_nothing() {
    let env = Env::new().await;
    let missing = env.dir.path().join("missing-kubeconfig");
    let garbage = env.dir.path().join("garbage-kubeconfig");
    std::fs::write(&garbage, "clusters: [\n- name: {\n\u{1}\u{2} not yaml\n").unwrap();
    let hint = "; check the file (it is written by \"kubectl config\")\n";
    let cases = [
        (missing.as_path(), Via::Flag),
        (garbage.as_path(), Via::Flag),
        (garbage.as_path(), Via::Env),
    ];

    // No operation is started.
    for (config, via) in cases {
        refused(&env, config, via, &["upgrade", "--manual"]).await;
    }
    // The table's heading and underline, no operation.
    let ops = env.ok(&["operation", "list"]).await;
    assert_eq!(ops.lines().count(), 2, "{ops}");

    // No phase of a started operation runs or is rolled back.
    env.ok(&["upgrade", "--manual"]).await;
    env.ok(&["plan", "execute", "--phase", "/init"]).await;
    let before = env.plan_json().await;
    let cluster = env.inspect().await;
    for (config, via) in cases {
        for args in [
            &["plan", "execute", "--phase", "/checks"][..],
            &["plan", "rollback", "--phase", "/init"],
            &["plan", "resume"],
        ] {
            refused(&env, config, via, args).await;
        }
    }
    assert_eq!(env.plan_json().await, before);
    assert_eq!(env.inspect().await, cluster);
    assert_eq!(env.phase_state("/init").await, "completed");
    assert_eq!(env.phase_state("/checks").await, "unstarted");

    // The messages: what is wrong with which file, and what to do.
    for (config, what) in [
        (&missing, "No such file or directory"),
        (&garbage, "line 2 column 1"),
    ] {
        let o = env
            .kube_cmd(config, Via::Flag, &["upgrade", "--manual"])
            .output()
            .await
            .unwrap();
        let err = String::from_utf8(o.stderr).unwrap();
        assert!(err.contains(what), "{err}");
        assert!(err.ends_with(hint), "{err}");
    }
}
