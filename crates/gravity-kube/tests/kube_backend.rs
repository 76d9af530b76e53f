//! The kube-rs backend against the in-process fake API server: the exact
//! requests it sends and what it returns.

mod fake_api;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_api::{FOREVER, FakeApi, JobScript, hook_job};
use gravity_kube::{APPLICATIONS_KEY, KubeBackend, MemoryHookJobs};
use gravity_pack::Locator;
use gravity_upgrade::backend::{BackendError, DrainOptions, Hook, Kubernetes, Taint};
use serde_json::{Value, json};

async fn fake_with_node(node: &str) -> (FakeApi, KubeBackend) {
    let fake = FakeApi::start().await;
    fake.add_node(node, &[("gravitational.io/k8s-role", "master")]);
    let kube = fake.backend(FakeApi::fast_options());
    (fake, kube)
}

fn rv(v: &Value) -> String {
    v["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

fn drain_opts(ms: u64) -> DrainOptions {
    DrainOptions {
        eviction_deadline: Duration::from_millis(ms),
    }
}

fn eviction_body(ns: &str, name: &str) -> Value {
    json!({
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns},
    })
}

#[tokio::test]
async fn nodes_are_read_with_labels_taints_and_readiness() {
    let (fake, kube) = fake_with_node("n1").await;
    fake.put(
        "nodes",
        None,
        json!({
            "metadata": {"name": "n2"},
            "spec": {"unschedulable": true, "taints": [{"key": "k", "value": "v", "effect": "NoSchedule"}]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        }),
    );
    let nodes = kube.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2);
    let n1 = kube.node("n1").await.unwrap();
    assert!(n1.ready && !n1.unschedulable && n1.taints.is_empty());
    assert_eq!(n1.labels["gravitational.io/k8s-role"], "master");
    let n2 = &nodes[1];
    assert!(!n2.ready && n2.unschedulable);
    assert_eq!(n2.taints[0].to_string(), "k=v:NoSchedule");
    assert!(matches!(
        kube.node("nope").await,
        Err(BackendError::UnknownNode(n)) if n == "nope"
    ));
    assert!(matches!(
        kube.cordon("nope").await,
        Err(BackendError::UnknownNode(_))
    ));
    assert!(matches!(
        kube.drain("nope", &drain_opts(100)).await,
        Err(BackendError::UnknownNode(_))
    ));
}

#[tokio::test]
async fn cordon_and_uncordon_merge_patch_unschedulable_and_report_changes() {
    let (fake, kube) = fake_with_node("n1").await;
    let before = rv(&fake.node("n1"));
    assert!(kube.cordon("n1").await.unwrap());
    let patches = fake.requests_of("PATCH", "/api/v1/nodes/n1");
    assert_eq!(patches.len(), 1);
    assert_eq!(
        patches[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        patches[0].body,
        json!({"metadata": {"resourceVersion": before}, "spec": {"unschedulable": true}})
    );
    assert_eq!(fake.node("n1")["spec"]["unschedulable"], json!(true));

    // Already cordoned: nothing is written and nothing changed.
    fake.clear_requests();
    assert!(!kube.cordon("n1").await.unwrap());
    assert!(fake.writes().is_empty(), "{:?}", fake.writes());

    let before = rv(&fake.node("n1"));
    assert!(kube.uncordon("n1").await.unwrap());
    let patches = fake.requests_of("PATCH", "/api/v1/nodes/n1");
    assert_eq!(
        patches[0].body,
        json!({"metadata": {"resourceVersion": before}, "spec": {"unschedulable": null}})
    );
    assert!(fake.node("n1")["spec"].get("unschedulable").is_none());
    fake.clear_requests();
    assert!(!kube.uncordon("n1").await.unwrap());
    assert!(fake.writes().is_empty());
}

#[tokio::test]
async fn drain_evicts_through_the_eviction_api_after_the_cordon_and_skips_daemonset_and_mirror_pods()
 {
    let (fake, kube) = fake_with_node("n1").await;
    fake.add_node("n2", &[]);
    fake.add_pod(
        "default",
        "web-1",
        "n1",
        &[("app", "web")],
        Some("ReplicaSet"),
        false,
    );
    fake.add_pod("default", "lonely", "n1", &[], None, false);
    fake.add_pod(
        "kube-system",
        "fluentd-x",
        "n1",
        &[],
        Some("DaemonSet"),
        false,
    );
    fake.add_pod(
        "kube-system",
        "kube-apiserver-n1",
        "n1",
        &[],
        Some("Node"),
        true,
    );
    fake.add_pod(
        "default",
        "web-2",
        "n2",
        &[("app", "web")],
        Some("ReplicaSet"),
        false,
    );

    assert!(kube.cordon("n1").await.unwrap());
    let report = kube.drain("n1", &drain_opts(5_000)).await.unwrap();
    let mut evicted = report.evicted.clone();
    evicted.sort();
    assert_eq!(evicted, ["default/lonely", "default/web-1"]);
    let mut skipped = report.skipped.clone();
    skipped.sort();
    assert_eq!(
        skipped,
        ["kube-system/fluentd-x", "kube-system/kube-apiserver-n1"]
    );

    let reqs = fake.requests();
    let list = reqs
        .iter()
        .find(|r| r.method == "GET" && r.path == "/api/v1/pods")
        .expect("pods listed across namespaces");
    assert_eq!(
        list.param("fieldSelector").as_deref(),
        Some("spec.nodeName=n1")
    );
    let evictions: Vec<_> = reqs
        .iter()
        .filter(|r| r.path.ends_with("/eviction"))
        .collect();
    assert_eq!(evictions.len(), 2, "{evictions:?}");
    for (ns, name) in [("default", "web-1"), ("default", "lonely")] {
        let e = evictions
            .iter()
            .find(|r| r.path == format!("/api/v1/namespaces/{ns}/pods/{name}/eviction"))
            .unwrap_or_else(|| panic!("no eviction of {name}"));
        assert_eq!(e.method, "POST");
        assert_eq!(e.body, eviction_body(ns, name));
    }
    let cordon = reqs.iter().position(|r| r.method == "PATCH").unwrap();
    let first_eviction = reqs
        .iter()
        .position(|r| r.path.ends_with("/eviction"))
        .unwrap();
    assert!(cordon < first_eviction, "the cordon comes first");
    // Each evicted pod was checked to be gone.
    for name in ["web-1", "lonely"] {
        assert!(
            reqs.iter().any(|r| r.method == "GET"
                && r.path == format!("/api/v1/namespaces/default/pods/{name}")),
            "{name} was not waited for"
        );
    }
    assert_eq!(
        fake.names("pods"),
        [
            "default/web-2",
            "kube-system/fluentd-x",
            "kube-system/kube-apiserver-n1"
        ]
    );
}

#[tokio::test]
async fn drain_retries_refused_evictions_with_backoff() {
    let (fake, kube) = fake_with_node("n1").await;
    fake.add_pod(
        "default",
        "web-1",
        "n1",
        &[("app", "web")],
        Some("ReplicaSet"),
        false,
    );
    fake.add_pdb("default", "web-pdb", &[("app", "web")]);
    fake.evict_429("default/web-1", 3);
    let start = Instant::now();
    let report = kube.drain("n1", &drain_opts(10_000)).await.unwrap();
    assert_eq!(report.evicted, ["default/web-1"]);
    let evictions = fake.requests_of("POST", "/pods/web-1/eviction");
    assert_eq!(evictions.len(), 4, "three refusals, then accepted");
    assert!(
        evictions
            .iter()
            .all(|e| e.body == eviction_body("default", "web-1"))
    );
    // Backoff 10 ms, 20 ms, 40 ms.
    assert!(
        start.elapsed() >= Duration::from_millis(70),
        "{:?}",
        start.elapsed()
    );
    assert!(fake.get("pods", Some("default"), "web-1").is_none());
}

#[tokio::test]
async fn drain_deadline_names_the_blocked_pods_and_their_budgets() {
    let (fake, kube) = fake_with_node("n1").await;
    fake.add_pod(
        "default",
        "web-1",
        "n1",
        &[("app", "web")],
        Some("ReplicaSet"),
        false,
    );
    fake.add_pod(
        "default",
        "api-1",
        "n1",
        &[("app", "api")],
        Some("ReplicaSet"),
        false,
    );
    fake.add_pdb("default", "web-pdb", &[("app", "web")]);
    fake.add_pdb("default", "db-pdb", &[("app", "db")]);
    fake.add_pdb("other", "web-pdb-elsewhere", &[("app", "web")]);
    fake.evict_429("default/web-1", FOREVER);
    let start = Instant::now();
    let err = kube.drain("n1", &drain_opts(300)).await.unwrap_err();
    let elapsed = start.elapsed();
    match &err {
        BackendError::EvictionBlocked {
            node,
            pods,
            budgets,
            waited,
        } => {
            assert_eq!(node, "n1");
            assert_eq!(pods, "default/web-1");
            assert_eq!(budgets, "default/web-pdb");
            assert!(*waited >= Duration::from_millis(300), "{waited:?}");
        }
        e => panic!("unexpected {e}"),
    }
    assert!(elapsed < Duration::from_secs(3), "{elapsed:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("default/web-1") && msg.contains("PodDisruptionBudget default/web-pdb"),
        "{msg}"
    );
    // Retried until the deadline, the other pod evicted meanwhile.
    assert!(fake.requests_of("POST", "/pods/web-1/eviction").len() >= 4);
    assert_eq!(fake.requests_of("POST", "/pods/api-1/eviction").len(), 1);
    assert!(fake.get("pods", Some("default"), "api-1").is_none());
    assert!(fake.get("pods", Some("default"), "web-1").is_some());
    // The budgets were looked up in the pod's namespace only.
    let pdb_lists: Vec<_> = fake
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/poddisruptionbudgets"))
        .collect();
    assert_eq!(pdb_lists.len(), 1);
    assert_eq!(
        pdb_lists[0].path,
        "/apis/policy/v1/namespaces/default/poddisruptionbudgets"
    );
}

#[tokio::test]
async fn drain_waits_for_pods_to_go_or_be_replaced() {
    let (fake, kube) = fake_with_node("n1").await;
    fake.add_pod(
        "default",
        "db-0",
        "n1",
        &[("app", "db")],
        Some("StatefulSet"),
        false,
    );
    fake.evict_replaces_pod("default/db-0");
    let report = kube.drain("n1", &drain_opts(2_000)).await.unwrap();
    assert_eq!(report.evicted, ["default/db-0"]);
    // Replaced: same name, new uid.
    assert!(fake.get("pods", Some("default"), "db-0").is_some());

    fake.add_pod("default", "stuck", "n1", &[], None, false);
    fake.evict_keeps_pod("default/stuck");
    fake.evict_keeps_pod("default/db-0");
    fake.clear_requests();
    let err = kube.drain("n1", &drain_opts(200)).await.unwrap_err();
    match err {
        BackendError::EvictionBlocked { pods, budgets, .. } => {
            assert_eq!(
                pods,
                "default/db-0 (evicted, still terminating), default/stuck (evicted, still terminating)"
            );
            assert_eq!(budgets, "(none: the evicted pods did not terminate)");
        }
        e => panic!("unexpected {e}"),
    }
    assert_eq!(fake.requests_of("POST", "/pods/stuck/eviction").len(), 1);
    assert!(
        fake.requests_of("GET", "/api/v1/namespaces/default/pods/stuck")
            .len()
            >= 3,
        "polled until the deadline"
    );
}

#[tokio::test]
async fn taints_are_merge_patched_with_the_read_resource_version() {
    let (fake, kube) = fake_with_node("n1").await;
    let other = json!({"key": "dedicated", "value": "db", "effect": "NoSchedule"});
    fake.put(
        "nodes",
        None,
        json!({"metadata": {"name": "n2"}, "spec": {"taints": [other.clone()]}}),
    );
    let t = Taint::runlevel_system();
    let runlevel =
        json!({"key": "gravitational.io/runlevel", "value": "system", "effect": "NoExecute"});

    let before = rv(&fake.node("n2"));
    assert!(kube.add_taint("n2", &t).await.unwrap());
    let p = fake.requests_of("PATCH", "/api/v1/nodes/n2");
    assert_eq!(p.len(), 1);
    assert_eq!(
        p[0].content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(
        p[0].body,
        json!({"metadata": {"resourceVersion": before}, "spec": {"taints": [other.clone(), runlevel.clone()]}})
    );
    assert_eq!(fake.node("n2")["spec"]["taints"], json!([other, runlevel]));

    fake.clear_requests();
    assert!(!kube.add_taint("n2", &t).await.unwrap(), "already there");
    assert!(fake.writes().is_empty());

    let before = rv(&fake.node("n2"));
    assert!(kube.remove_taint("n2", &t).await.unwrap());
    let p = fake.requests_of("PATCH", "/api/v1/nodes/n2");
    assert_eq!(
        p[0].body,
        json!({"metadata": {"resourceVersion": before}, "spec": {"taints": [other.clone()]}})
    );
    fake.clear_requests();
    assert!(!kube.remove_taint("n2", &t).await.unwrap(), "already gone");
    assert!(fake.writes().is_empty());
    assert_eq!(
        kube.node("n2").await.unwrap().taints,
        vec![Taint {
            key: "dedicated".into(),
            value: "db".into(),
            effect: "NoSchedule".into()
        }]
    );
}

#[tokio::test]
async fn a_conflicting_node_write_is_reread_and_retried() {
    let (fake, kube) = fake_with_node("n1").await;
    fake.concurrent_node_write(
        "n1",
        json!({"metadata": {"labels": {"other-writer": "yes"}}, "spec": {"taints": [{"key": "x", "effect": "NoSchedule"}]}}),
    );
    let first_rv = rv(&fake.node("n1"));
    assert!(
        kube.add_taint("n1", &Taint::runlevel_system())
            .await
            .unwrap()
    );
    let lines: Vec<String> = fake.requests().iter().map(|r| r.line()).collect();
    assert_eq!(
        lines,
        [
            "GET /api/v1/nodes/n1",
            "PATCH /api/v1/nodes/n1",
            "GET /api/v1/nodes/n1",
            "PATCH /api/v1/nodes/n1"
        ]
    );
    let patches = fake.requests_of("PATCH", "/api/v1/nodes/n1");
    assert_eq!(
        patches[0].body["metadata"]["resourceVersion"],
        json!(first_rv)
    );
    // The retry is computed from the re-read node: the other writer's taint stays.
    assert_ne!(
        patches[1].body["metadata"]["resourceVersion"],
        json!(first_rv)
    );
    assert_eq!(
        patches[1].body["spec"]["taints"],
        json!([
            {"key": "x", "effect": "NoSchedule"},
            {"key": "gravitational.io/runlevel", "value": "system", "effect": "NoExecute"}
        ])
    );
    let node = fake.node("n1");
    assert_eq!(node["metadata"]["labels"]["other-writer"], "yes");
    assert_eq!(node["spec"]["taints"].as_array().unwrap().len(), 2);

    // A cordon meeting a conflict is retried the same way.
    fake.concurrent_node_write("n1", json!({"metadata": {"labels": {"again": "1"}}}));
    fake.clear_requests();
    assert!(kube.cordon("n1").await.unwrap());
    assert_eq!(fake.requests_of("PATCH", "/api/v1/nodes/n1").len(), 2);
}

#[tokio::test]
async fn conflict_retries_are_bounded() {
    let fake = FakeApi::start().await;
    fake.add_node("n1", &[]);
    let kube = fake.backend(gravity_kube::KubeOptions {
        conflict_retries: 2,
        ..FakeApi::fast_options()
    });
    for i in 0..10 {
        fake.concurrent_node_write("n1", json!({"metadata": {"labels": {"w": i.to_string()}}}));
    }
    let err = kube
        .add_taint("n1", &Taint::runlevel_system())
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("node n1") && msg.contains("changed concurrently 3 times"),
        "{msg}"
    );
    assert_eq!(fake.requests_of("PATCH", "/api/v1/nodes/n1").len(), 3);
    assert!(fake.node("n1")["spec"].get("taints").is_none());
}

#[tokio::test]
async fn node_labels_are_merge_patched_and_previous_values_returned() {
    let fake = FakeApi::start().await;
    fake.add_node("n1", &[("old", "x"), ("same", "3")]);
    let kube = fake.backend(FakeApi::fast_options());
    let want: BTreeMap<String, Option<String>> = [
        ("new".to_string(), Some("1".to_string())),
        ("old".to_string(), None),
        ("same".to_string(), Some("3".to_string())),
    ]
    .into();
    let before = rv(&fake.node("n1"));
    let prev = kube.set_node_labels("n1", &want).await.unwrap();
    assert_eq!(
        prev,
        BTreeMap::from([
            ("new".to_string(), None),
            ("old".to_string(), Some("x".to_string())),
            ("same".to_string(), Some("3".to_string())),
        ])
    );
    let p = fake.requests_of("PATCH", "/api/v1/nodes/n1");
    assert_eq!(
        p[0].body,
        json!({"metadata": {"labels": {"new": "1", "old": null}, "resourceVersion": before}})
    );
    assert_eq!(
        fake.node("n1")["metadata"]["labels"],
        json!({"new": "1", "same": "3"})
    );
    fake.clear_requests();
    kube.set_node_labels("n1", &want).await.unwrap();
    assert!(fake.writes().is_empty(), "nothing to change");
}

#[tokio::test]
async fn kubelet_permissions_tolerate_already_exists_and_report_only_what_they_created() {
    let fake = FakeApi::start().await;
    let kube = fake.backend(FakeApi::fast_options());
    fake.put(
        "clusterroles",
        None,
        json!({"metadata": {"name": "kubelet-upgrade"}, "rules": []}),
    );
    let c = kube.create_kubelet_permissions().await.unwrap();
    assert_eq!(c.objects, ["ClusterRoleBinding/kubelet-upgrade"]);
    let posts = fake.writes();
    assert_eq!(posts.len(), 2);
    assert_eq!(
        posts[0].path,
        "/apis/rbac.authorization.k8s.io/v1/clusterroles"
    );
    assert_eq!(
        posts[0].body["rules"],
        json!([{"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}])
    );
    assert_eq!(
        posts[1].path,
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings"
    );
    assert_eq!(
        posts[1].body["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubelet-upgrade"})
    );
    assert_eq!(
        posts[1].body["subjects"],
        json!([{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kubelet"}])
    );
    // The pre-existing role was left as it was.
    assert_eq!(
        fake.get("clusterroles", None, "kubelet-upgrade").unwrap()["rules"],
        json!([])
    );
    assert!(
        kube.create_kubelet_permissions()
            .await
            .unwrap()
            .objects
            .is_empty()
    );
}

#[tokio::test]
async fn coredns_objects_are_created_only_if_absent() {
    let fake = FakeApi::start().await;
    let kube = fake.backend(FakeApi::fast_options());
    let c = kube.create_coredns(".:53 {}\n").await.unwrap();
    assert_eq!(
        c.objects,
        [
            "ClusterRole/gravity:coredns",
            "ClusterRoleBinding/gravity:coredns",
            "ConfigMap/kube-system/coredns"
        ]
    );
    let role = fake.get("clusterroles", None, "gravity:coredns").unwrap();
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["endpoints", "services", "namespaces", "pods"], "verbs": ["list", "watch"]}])
    );
    let rb = fake
        .get("clusterrolebindings", None, "gravity:coredns")
        .unwrap();
    assert_eq!(rb["subjects"][0]["name"], "coredns");
    let cm = fake
        .get("configmaps", Some("kube-system"), "coredns")
        .unwrap();
    assert_eq!(cm["data"], json!({"Corefile": ".:53 {}\n"}));
    assert!(
        kube.create_coredns("other")
            .await
            .unwrap()
            .objects
            .is_empty()
    );

    // A user-edited Corefile is never overwritten.
    let fake = FakeApi::start().await;
    let kube = fake.backend(FakeApi::fast_options());
    fake.put(
        "configmaps",
        Some("kube-system"),
        json!({"metadata": {"name": "coredns"}, "data": {"Corefile": "user"}}),
    );
    let c = kube.create_coredns("generated").await.unwrap();
    assert_eq!(
        c.objects,
        [
            "ClusterRole/gravity:coredns",
            "ClusterRoleBinding/gravity:coredns"
        ]
    );
    assert_eq!(
        fake.get("configmaps", Some("kube-system"), "coredns")
            .unwrap()["data"]["Corefile"],
        "user"
    );
    assert!(fake.writes().iter().all(|r| r.method == "POST"));
}

#[tokio::test]
async fn delete_objects_deletes_exactly_what_is_named() {
    let fake = FakeApi::start().await;
    let kube = fake.backend(FakeApi::fast_options());
    kube.create_kubelet_permissions().await.unwrap();
    kube.create_coredns("x").await.unwrap();
    fake.clear_requests();
    kube.delete_objects(&[
        "ClusterRoleBinding/kubelet-upgrade".into(),
        "ConfigMap/kube-system/coredns".into(),
        "ClusterRole/never-created".into(),
    ])
    .await
    .unwrap();
    let deletes: Vec<String> = fake.writes().iter().map(|r| r.line()).collect();
    assert_eq!(
        deletes,
        [
            "DELETE /apis/rbac.authorization.k8s.io/v1/clusterrolebindings/kubelet-upgrade",
            "DELETE /api/v1/namespaces/kube-system/configmaps/coredns",
            "DELETE /apis/rbac.authorization.k8s.io/v1/clusterroles/never-created",
        ]
    );
    assert_eq!(
        fake.names("clusterroles"),
        ["gravity:coredns", "kubelet-upgrade"]
    );
    assert_eq!(fake.names("clusterrolebindings"), ["gravity:coredns"]);
    assert!(fake.names("configmaps").is_empty());

    // A name it does not understand fails before anything is deleted.
    fake.clear_requests();
    let err = kube
        .delete_objects(&["ClusterRole/gravity:coredns".into(), "Secret/x".into()])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("\"Secret/x\""), "{err}");
    assert!(fake.writes().is_empty());
}

#[tokio::test]
async fn hooks_run_as_jobs_and_return_their_logs() {
    let fake = FakeApi::start().await;
    let jobs = Arc::new(MemoryHookJobs::new());
    jobs.insert(
        "telekube",
        Hook::PreUpdate,
        hook_job("telekube-pre", &["hook", "sidecar"]),
    );
    jobs.insert(
        "telekube",
        Hook::Update,
        hook_job("telekube-update", &["hook", "sidecar"]),
    );
    let kube = fake.backend(FakeApi::fast_options()).with_hooks(jobs);
    fake.script_job(
        "telekube-pre",
        JobScript {
            succeed: true,
            logs: "checking\nready to update\n".into(),
            polls: 2,
        },
    );
    fake.script_job(
        "telekube-update",
        JobScript {
            succeed: false,
            logs: "migration failed: disk full\n".into(),
            polls: 0,
        },
    );
    let app = Locator::parse("gravitational.io/telekube:5.5.50-dev.9").unwrap();

    let out = kube.run_hook(&app, Hook::PreUpdate).await.unwrap();
    assert!(out.ran);
    assert_eq!(
        out.logs,
        ["checking", "ready to update", "checking", "ready to update"],
        "both containers' logs"
    );
    let posts = fake.requests_of("POST", "/apis/batch/v1/namespaces/kube-system/jobs");
    assert_eq!(posts.len(), 1);
    let name = posts[0].body["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        name.starts_with("telekube-pre-") && name.len() == "telekube-pre-".len() + 8,
        "{name}"
    );
    assert_eq!(
        posts[0].body["metadata"]["labels"],
        json!({"gravitational.io/hook": "preUpdate", "gravitational.io/app": "telekube"})
    );
    assert_eq!(posts[0].body["metadata"]["namespace"], "kube-system");
    assert!(
        fake.requests_of("GET", &format!("/jobs/{name}")).len() >= 2,
        "waited for the job"
    );
    let log_reads = fake.requests_of("GET", &format!("/pods/{name}-x7k2p/log"));
    let containers: Vec<_> = log_reads
        .iter()
        .map(|r| r.param("container").unwrap())
        .collect();
    assert_eq!(containers, ["hook", "sidecar"]);

    // No job for the hook: nothing runs.
    fake.clear_requests();
    let out = kube.run_hook(&app, Hook::PostUpdate).await.unwrap();
    assert!(!out.ran && out.logs.is_empty());
    assert!(fake.requests().is_empty());

    // A failed job: HookFailed with its logs.
    match kube.run_hook(&app, Hook::Update).await.unwrap_err() {
        BackendError::HookFailed { app: a, hook, logs } => {
            assert_eq!(a, "gravitational.io/telekube:5.5.50-dev.9");
            assert_eq!(hook, "update");
            assert!(logs.contains("migration failed: disk full"), "{logs}");
        }
        e => panic!("unexpected {e}"),
    }
}

#[tokio::test]
async fn a_hook_job_that_does_not_finish_times_out() {
    let fake = FakeApi::start().await;
    let jobs = Arc::new(MemoryHookJobs::new());
    jobs.insert(
        "telekube",
        Hook::Rollback,
        hook_job("slow", &["hook", "sidecar"]),
    );
    let kube = fake
        .backend(gravity_kube::KubeOptions {
            hook_timeout: Duration::from_millis(100),
            ..FakeApi::fast_options()
        })
        .with_hooks(jobs);
    fake.script_job(
        "slow",
        JobScript {
            polls: 1_000,
            ..Default::default()
        },
    );
    let app = Locator::parse("gravitational.io/telekube:5.5.50").unwrap();
    let err = kube.run_hook(&app, Hook::Rollback).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with("gravitational.io/telekube:5.5.50(rollback) hook failed")
            && msg.contains("did not finish within"),
        "{msg}"
    );
}

#[tokio::test]
async fn endpoints_wait_until_dns_on_the_node_and_gravity_site_serve() {
    let (fake, kube) = fake_with_node("n1").await;
    fake.add_endpoints(
        "kube-system",
        "gravity-site",
        &[("app", "gravity-site")],
        &[("10.0.0.2", Some("n2"))],
    );
    fake.add_endpoints(
        "kube-system",
        "kube-dns",
        &[("k8s-app", "kube-dns")],
        &[("10.0.0.2", Some("n2")), ("10.0.0.9", None)],
    );
    let err = kube
        .wait_endpoints("n1", Duration::from_millis(150))
        .await
        .unwrap_err();
    match &err {
        BackendError::EndpointsNotReady { node, detail } => {
            assert_eq!(node, "n1");
            assert!(
                detail.contains("no DNS endpoint is serving on the node"),
                "{detail}"
            );
            assert!(!detail.contains("gravity-site endpoint"), "{detail}");
            assert!(detail.contains("waited"), "{detail}");
        }
        e => panic!("unexpected {e}"),
    }
    let polls = fake.requests_of("GET", "/api/v1/namespaces/kube-system/endpoints");
    assert!(polls.len() >= 3, "polled {}", polls.len());

    // The DNS endpoint appears on the node while waiting.
    let kube2 = kube.clone();
    let waiter =
        tokio::spawn(async move { kube2.wait_endpoints("n1", Duration::from_secs(5)).await });
    tokio::time::sleep(Duration::from_millis(60)).await;
    fake.add_endpoints(
        "kube-system",
        "kube-dns-worker",
        &[("k8s-app", "kube-dns-worker")],
        &[("10.0.0.1", Some("n1"))],
    );
    waiter.await.unwrap().unwrap();

    // No gravity-site at all.
    let (fake, kube) = fake_with_node("n1").await;
    fake.add_endpoints(
        "kube-system",
        "kube-dns",
        &[("k8s-app", "kube-dns")],
        &[("10.0.0.1", Some("n1"))],
    );
    let err = kube
        .wait_endpoints("n1", Duration::from_millis(30))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("no gravity-site endpoint"),
        "{err}"
    );
}

#[tokio::test]
async fn applications_are_kept_in_a_config_map() {
    let fake = FakeApi::start().await;
    let kube = fake.backend(FakeApi::fast_options());
    let v1 = Locator::parse("gravitational.io/telekube:5.5.47").unwrap();
    let v2 = Locator::parse("gravitational.io/telekube:5.5.50-dev.9").unwrap();
    assert_eq!(
        kube.application("gravitational.io", "telekube")
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        kube.set_application("gravitational.io", "telekube", Some(&v1))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        kube.set_application("gravitational.io", "telekube", Some(&v2))
            .await
            .unwrap(),
        Some(v1)
    );
    kube.set_application(
        "gravitational.io",
        "dns-app",
        Some(&Locator::parse("gravitational.io/dns-app:0.3.0").unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(
        kube.application("gravitational.io", "telekube")
            .await
            .unwrap(),
        Some(v2.clone())
    );
    let cm = fake
        .get("configmaps", Some("kube-system"), "gravity-applications")
        .unwrap();
    let apps: Value = serde_json::from_str(cm["data"][APPLICATIONS_KEY].as_str().unwrap()).unwrap();
    assert_eq!(
        apps,
        json!({
            "gravitational.io/dns-app": "gravitational.io/dns-app:0.3.0",
            "gravitational.io/telekube": "gravitational.io/telekube:5.5.50-dev.9",
        })
    );
    // Updates replace the ConfigMap guarded by its resourceVersion.
    let puts = fake.requests_of("PUT", "/configmaps/gravity-applications");
    assert_eq!(puts.len(), 2);
    assert!(
        puts.iter()
            .all(|p| p.body["metadata"]["resourceVersion"].is_string())
    );
    assert_eq!(
        kube.set_application("gravitational.io", "telekube", None)
            .await
            .unwrap(),
        Some(v2)
    );
    assert_eq!(
        kube.application("gravitational.io", "telekube")
            .await
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn config_maps_are_read_written_and_deleted() {
    let fake = FakeApi::start().await;
    let kube = fake.backend(FakeApi::fast_options());
    assert_eq!(kube.config_map("kube-system", "x").await.unwrap(), None);
    let a: BTreeMap<String, String> = [("k".to_string(), "1".to_string())].into();
    let b: BTreeMap<String, String> = [("k".to_string(), "2".to_string())].into();
    assert_eq!(
        kube.put_config_map("kube-system", "x", Some(&a))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        kube.put_config_map("kube-system", "x", Some(&b))
            .await
            .unwrap(),
        Some(a)
    );
    assert_eq!(
        kube.config_map("kube-system", "x").await.unwrap(),
        Some(b.clone())
    );
    fake.clear_requests();
    assert_eq!(
        kube.put_config_map("kube-system", "x", None).await.unwrap(),
        Some(b)
    );
    let del = fake.requests_of("DELETE", "/api/v1/namespaces/kube-system/configmaps/x");
    assert_eq!(del.len(), 1);
    assert!(del[0].body["preconditions"]["resourceVersion"].is_string());
    assert_eq!(kube.config_map("kube-system", "x").await.unwrap(), None);
    assert_eq!(
        kube.put_config_map("kube-system", "x", None).await.unwrap(),
        None
    );
}

#[tokio::test]
async fn delete_pods_deletes_the_selected_pods() {
    let fake = FakeApi::start().await;
    let kube = fake.backend(FakeApi::fast_options());
    fake.add_pod(
        "kube-system",
        "dns-1",
        "n1",
        &[("k8s-app", "kube-dns"), ("v", "1")],
        Some("ReplicaSet"),
        false,
    );
    fake.add_pod(
        "kube-system",
        "dns-2",
        "n2",
        &[("k8s-app", "kube-dns"), ("v", "1")],
        Some("ReplicaSet"),
        false,
    );
    fake.add_pod(
        "kube-system",
        "other",
        "n1",
        &[("k8s-app", "other")],
        None,
        false,
    );
    fake.add_pod(
        "default",
        "dns-elsewhere",
        "n1",
        &[("k8s-app", "kube-dns"), ("v", "1")],
        None,
        false,
    );
    let sel: BTreeMap<String, String> = [
        ("k8s-app".to_string(), "kube-dns".to_string()),
        ("v".to_string(), "1".to_string()),
    ]
    .into();
    assert_eq!(kube.delete_pods("kube-system", &sel).await.unwrap(), 2);
    let list = fake.requests_of("GET", "/api/v1/namespaces/kube-system/pods");
    assert_eq!(
        list[0].param("labelSelector").as_deref(),
        Some("k8s-app=kube-dns,v=1")
    );
    assert_eq!(
        fake.names("pods"),
        ["default/dns-elsewhere", "kube-system/other"]
    );
}

#[tokio::test]
async fn kubeconfig_files_configure_the_backend() {
    let fake = FakeApi::start().await;
    fake.add_node("n1", &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: admin\ncurrent-context: fake\nusers:\n- name: admin\n  user:\n    token: secret-token\n",
            fake.url()
        ),
    )
    .unwrap();
    let kube = KubeBackend::from_kubeconfig(&path).await.unwrap();
    assert_eq!(kube.nodes().await.unwrap()[0].name, "n1");
    assert_eq!(fake.requests()[0].line(), "GET /api/v1/nodes");

    let missing = dir.path().join("missing");
    let err = KubeBackend::from_kubeconfig(&missing).await.unwrap_err();
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn an_unreachable_api_server_is_reported_with_what_to_do() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let kube = KubeBackend::from_config(
        kube::Config::new(url.parse().unwrap()),
        FakeApi::fast_options(),
    )
    .unwrap();
    let err = kube.node("n1").await.unwrap_err().to_string();
    assert!(
        err.contains("cannot read node n1")
            && err.contains("cannot reach the Kubernetes API server"),
        "{err}"
    );
}

/// `METHOD path` of every request so far.
fn lines(fake: &FakeApi) -> Vec<String> {
    fake.requests().iter().map(|r| r.line()).collect()
}

#[tokio::test]
async fn cordon_rides_out_an_unavailable_api_server() {
    let (fake, kube) = fake_with_node("n1").await;
    let before = rv(&fake.node("n1"));
    fake.fail_next("GET", "/api/v1/nodes/n1", 503, 2);
    fake.fail_next("PATCH", "/api/v1/nodes/n1", 503, 1);
    assert!(kube.cordon("n1").await.unwrap());
    assert_eq!(
        lines(&fake),
        [
            "GET /api/v1/nodes/n1",
            "GET /api/v1/nodes/n1",
            "GET /api/v1/nodes/n1",
            "PATCH /api/v1/nodes/n1",
            "PATCH /api/v1/nodes/n1",
        ]
    );
    // The same guarded patch both times.
    let want = json!({"metadata": {"resourceVersion": before}, "spec": {"unschedulable": true}});
    for p in fake.requests_of("PATCH", "/api/v1/nodes/n1") {
        assert_eq!(p.body, want);
    }
    assert_eq!(fake.node("n1")["spec"]["unschedulable"], json!(true));
}

#[tokio::test]
async fn a_request_the_api_server_never_answers_is_given_up_and_retried() {
    let (fake, kube) = fake_with_node("n1").await;
    // fast_options: 1 s per request. The stalled read would otherwise
    // wait for the whole 30 s stall.
    fake.stall_next("GET", "/api/v1/nodes/n1", Duration::from_secs(30), 1);
    let start = Instant::now();
    assert!(kube.cordon("n1").await.unwrap());
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        lines(&fake),
        [
            "GET /api/v1/nodes/n1",
            "GET /api/v1/nodes/n1",
            "PATCH /api/v1/nodes/n1",
        ]
    );
    assert_eq!(fake.node("n1")["spec"]["unschedulable"], json!(true));
}

#[tokio::test]
async fn a_node_patch_applied_with_its_answer_lost_still_reports_the_change() {
    let (fake, kube) = fake_with_node("n1").await;
    fake.drop_answer_next("PATCH", "/api/v1/nodes/n1", 1);
    // The retry meets the first patch's own effect (409), the node is
    // read again: cordoned, with a newer resourceVersion.
    assert!(kube.cordon("n1").await.unwrap(), "this call cordoned it");
    assert_eq!(
        lines(&fake),
        [
            "GET /api/v1/nodes/n1",
            "PATCH /api/v1/nodes/n1",
            "PATCH /api/v1/nodes/n1",
            "GET /api/v1/nodes/n1",
        ]
    );
    assert_eq!(fake.node("n1")["spec"]["unschedulable"], json!(true));

    // Labels: the previous values are those before this call's write.
    fake.drop_answer_next("PATCH", "/api/v1/nodes/n1", 1);
    let labels: BTreeMap<String, Option<String>> =
        [("role".to_string(), Some("db".to_string()))].into();
    let previous = kube.set_node_labels("n1", &labels).await.unwrap();
    assert_eq!(previous, [("role".to_string(), None)].into());
    assert_eq!(fake.node("n1")["metadata"]["labels"]["role"], "db");

    // A concurrent writer that did not do the change is not mistaken for
    // the lost patch: the change is made again.
    fake.clear_requests();
    fake.fail_next("PATCH", "/api/v1/nodes/n1", 503, 1);
    fake.concurrent_node_write("n1", json!({"metadata": {"labels": {"other": "x"}}}));
    assert!(kube.uncordon("n1").await.unwrap());
    assert_eq!(fake.requests_of("PATCH", "/api/v1/nodes/n1").len(), 3);
    assert!(fake.node("n1")["spec"].get("unschedulable").is_none());
}

#[tokio::test]
async fn a_config_map_write_applied_with_its_answer_lost_returns_the_previous_data() {
    let fake = FakeApi::start().await;
    let kube = fake.backend(FakeApi::fast_options());
    let path = "/api/v1/namespaces/kube-system/configmaps";
    let a: BTreeMap<String, String> = [("k".to_string(), "1".to_string())].into();
    let b: BTreeMap<String, String> = [("k".to_string(), "2".to_string())].into();
    // Create, replace and delete, each applied and its answer lost.
    fake.drop_answer_next("POST", path, 1);
    assert_eq!(
        kube.put_config_map("kube-system", "x", Some(&a))
            .await
            .unwrap(),
        None
    );
    fake.drop_answer_next("PUT", path, 1);
    assert_eq!(
        kube.put_config_map("kube-system", "x", Some(&b))
            .await
            .unwrap(),
        Some(a)
    );
    fake.drop_answer_next("DELETE", path, 1);
    assert_eq!(
        kube.put_config_map("kube-system", "x", None).await.unwrap(),
        Some(b)
    );
    assert!(fake.names("configmaps").is_empty());
    let writes: Vec<String> = fake.writes().iter().map(|r| r.method.clone()).collect();
    assert_eq!(writes, ["POST", "POST", "PUT", "PUT", "DELETE", "DELETE"]);
}

#[tokio::test]
async fn drain_rides_out_an_unavailable_api_server() {
    let (fake, kube) = fake_with_node("n1").await;
    fake.add_pod("default", "web-1", "n1", &[], Some("ReplicaSet"), false);
    fake.add_pod("default", "web-2", "n1", &[], Some("ReplicaSet"), false);
    fake.fail_next("GET", "/api/v1/pods", 504, 1);
    fake.fail_next("POST", "/pods/web-1/eviction", 503, 1);
    // Applied, answer lost: the retry finds the pod gone (404).
    fake.drop_answer_next("POST", "/pods/web-2/eviction", 1);
    let report = kube.drain("n1", &drain_opts(5_000)).await.unwrap();
    assert_eq!(report.evicted, ["default/web-1", "default/web-2"]);
    let lists = fake.requests_of("GET", "/api/v1/pods");
    assert_eq!(lists.len(), 2);
    for l in &lists {
        assert_eq!(
            l.param("fieldSelector").as_deref(),
            Some("spec.nodeName=n1")
        );
    }
    assert_eq!(fake.requests_of("POST", "/pods/web-1/eviction").len(), 2);
    assert_eq!(fake.requests_of("POST", "/pods/web-2/eviction").len(), 2);
    assert!(fake.names("pods").is_empty());
}

#[tokio::test]
async fn permanent_errors_are_returned_at_once() {
    let (fake, kube) = fake_with_node("n1").await;
    fake.fail_next("GET", "/api/v1/nodes/n1", 403, FOREVER);
    let err = kube.cordon("n1").await.unwrap_err();
    assert!(!err.is_transient());
    assert_eq!(
        err.to_string(),
        "cannot read node n1: the Kubernetes API server answered 403 Forbidden: scripted fault: 403 Forbidden; the kubeconfig user lacks the RBAC permission for this, grant it or use a cluster-admin kubeconfig"
    );
    assert_eq!(lines(&fake), ["GET /api/v1/nodes/n1"]);

    // A 500 that is not an etcd leader change or timeout.
    fake.clear_requests();
    fake.fail_next_with(
        "GET",
        "/api/v1/nodes",
        500,
        "InternalError",
        "Internal error occurred: failed calling webhook",
        1,
    );
    let err = kube.nodes().await.unwrap_err();
    assert!(matches!(err, BackendError::Other(_)), "{err}");
    assert_eq!(lines(&fake), ["GET /api/v1/nodes"]);
}

#[tokio::test]
async fn throttling_leader_changes_and_dropped_connections_are_retried() {
    let (fake, kube) = fake_with_node("n1").await;
    fake.fail_next("GET", "/api/v1/nodes", 429, 1);
    fake.fail_next_with(
        "GET",
        "/api/v1/nodes",
        500,
        "InternalError",
        "etcdserver: leader changed",
        1,
    );
    fake.fail_next("GET", "/api/v1/nodes", 502, 1);
    assert_eq!(kube.nodes().await.unwrap().len(), 1);
    assert_eq!(fake.requests_of("GET", "/api/v1/nodes").len(), 4);

    // No answer at all: the connection is closed.
    fake.clear_requests();
    fake.drop_next("GET", "/api/v1/nodes/n1", 2);
    assert_eq!(kube.node("n1").await.unwrap().name, "n1");
    assert_eq!(fake.requests_of("GET", "/api/v1/nodes/n1").len(), 3);
}

#[tokio::test]
async fn an_api_server_that_stays_away_exhausts_the_budget() {
    let fake = FakeApi::start().await;
    fake.add_node("n1", &[]);
    let budget = Duration::from_millis(300);
    let kube = fake.backend(gravity_kube::KubeOptions {
        transient_budget: budget,
        ..FakeApi::fast_options()
    });
    fake.fail_next("GET", "/api/v1/nodes/n1", 503, FOREVER);
    let start = Instant::now();
    let err = kube.cordon("n1").await.unwrap_err();
    let elapsed = start.elapsed();
    assert!(err.is_transient(), "{err}");
    let sent = fake.requests_of("GET", "/api/v1/nodes/n1").len();
    match &err {
        BackendError::ApiUnavailable {
            what,
            attempts,
            waited,
            last,
        } => {
            assert_eq!(what, "cannot read node n1");
            assert_eq!(*attempts as usize, sent);
            assert!(*attempts >= 4, "{attempts}");
            assert!(*waited >= budget, "{waited:?}");
            assert_eq!(
                last,
                "the Kubernetes API server answered 503 ServiceUnavailable: scripted fault: 503 ServiceUnavailable"
            );
        }
        e => panic!("unexpected {e}"),
    }
    assert!(
        elapsed >= budget && elapsed < budget + Duration::from_secs(1),
        "{elapsed:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with("cannot read node n1: the Kubernetes API server was unavailable for ")
            && msg.contains(&format!(
                "({sent} attempts), last error: the Kubernetes API server answered 503"
            ))
            && msg.ends_with("; check that the API server is up, then resume the phase"),
        "{msg}"
    );
    assert!(fake.writes().is_empty());
}

#[tokio::test]
async fn transient_retries_in_a_drain_stop_at_its_deadline() {
    // The budget (2 s) is longer than the drain's deadline (300 ms).
    let (fake, kube) = fake_with_node("n1").await;
    fake.add_pod("default", "web-1", "n1", &[("app", "web")], None, false);
    fake.fail_next("POST", "/pods/web-1/eviction", 503, FOREVER);
    let start = Instant::now();
    let err = kube.drain("n1", &drain_opts(300)).await.unwrap_err();
    let elapsed = start.elapsed();
    match &err {
        BackendError::ApiUnavailable { what, waited, .. } => {
            assert_eq!(what, "error evicting pod default/web-1 from node n1");
            assert!(*waited < Duration::from_millis(1_000), "{waited:?}");
        }
        e => panic!("unexpected {e}"),
    }
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(1_300),
        "{elapsed:?}"
    );
    assert!(fake.requests_of("POST", "/pods/web-1/eviction").len() >= 3);
    assert!(fake.get("pods", Some("default"), "web-1").is_some());

    // Refused until the deadline, and the budgets cannot be listed then:
    // the blocked pod is still reported.
    let (fake, kube) = fake_with_node("n1").await;
    fake.add_pod("default", "web-1", "n1", &[("app", "web")], None, false);
    fake.add_pdb("default", "web-pdb", &[("app", "web")]);
    fake.evict_429("default/web-1", FOREVER);
    fake.fail_next("GET", "/poddisruptionbudgets", 503, FOREVER);
    match kube.drain("n1", &drain_opts(200)).await.unwrap_err() {
        BackendError::EvictionBlocked { pods, budgets, .. } => {
            assert_eq!(pods, "default/web-1");
            assert_eq!(
                budgets,
                "(unknown in namespace default: the Kubernetes API server was unavailable)"
            );
        }
        e => panic!("unexpected {e}"),
    }
    assert_eq!(fake.requests_of("GET", "/poddisruptionbudgets").len(), 1);
}

#[tokio::test]
async fn a_hook_job_created_with_its_answer_lost_is_this_calls_own() {
    let fake = FakeApi::start().await;
    let jobs = Arc::new(MemoryHookJobs::new());
    jobs.insert(
        "telekube",
        Hook::PreUpdate,
        hook_job("telekube-pre", &["hook"]),
    );
    let kube = fake.backend(FakeApi::fast_options()).with_hooks(jobs);
    fake.drop_answer_next("POST", "/jobs", 1);
    fake.fail_next("GET", "/log", 503, 1);
    let app = Locator::parse("gravitational.io/telekube:5.5.50").unwrap();
    let out = kube.run_hook(&app, Hook::PreUpdate).await.unwrap();
    assert!(out.ran);
    assert_eq!(out.logs, ["hook ran"]);
    let posts = fake.requests_of("POST", "/apis/batch/v1/namespaces/kube-system/jobs");
    assert_eq!(posts.len(), 2, "the first applied, the second met it (409)");
    assert_eq!(posts[0].body, posts[1].body);
    assert_eq!(fake.names("jobs").len(), 1);
    assert_eq!(fake.requests_of("GET", "/log").len(), 2);
}
