//! The seed plan's election phases (stepdown, elect, enable) run by the
//! real engine and executors against Gravity's election keys in a real
//! 3-member etcd, with `SimulatedCampaign` moving the leader.

mod support;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use gravity_etcd::WatchEvent;
use gravity_etcd::backend::election::{SimulatedCampaign, election_key, leader_key};
use gravity_plan::PhasePath;
use gravity_upgrade::backend::Election;
use support::*;

fn p(s: &str) -> PhasePath {
    s.parse().unwrap()
}

const IPS: [&str; 3] = ["10.162.0.7", "10.162.0.6", "10.162.0.5"];

fn flags(v: [bool; 3]) -> BTreeMap<String, bool> {
    MASTERS.iter().map(|m| m.to_string()).zip(v).collect()
}

async fn raw_flags(env: &Env) -> Vec<String> {
    let mut out = Vec::new();
    for ip in IPS {
        let kv = env
            .backend
            .client()
            .get(&election_key(CLUSTER, ip))
            .await
            .unwrap()
            .unwrap();
        out.push(kv.value_str());
    }
    out
}

async fn wait_leader(env: &Env, want: &str) {
    eventually(10, &format!("leader {want}"), || async {
        env.election.leader().await.unwrap().as_deref() == Some(want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_phases_move_the_leader_through_etcd_and_roll_back() {
    let t0 = Instant::now();
    let env = Env::start(seed_plan_only(&["/masters"])).await;
    let client = env.backend.client().clone();

    // Every change of the leader key, as etcd reports it.
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut watch = Box::pin(client.watch_prefix(&leader_key(CLUSTER), 0).await.unwrap());
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(ev)) = watch.next().await {
                if let WatchEvent::Put(kv) = ev {
                    seen.lock().unwrap().push(kv.value_str());
                }
            }
        })
    };

    for m in MASTERS {
        assert_eq!(env.election.set_enabled(m, true).await.unwrap(), None);
    }
    let campaign = SimulatedCampaign::start(
        env.election.clone(),
        Duration::from_millis(20),
        Duration::from_millis(150),
    );
    wait_leader(&env, "kevin-test1").await;

    let stepdown = p("/masters/kevin-test1/stepdown-kevin-test1");
    let elect = p("/masters/elect-kevin-test1");
    let enable2 = p("/masters/kevin-test2/enable-kevin-test2");
    let enable3 = p("/masters/kevin-test3/enable-kevin-test3");

    // Step down: the phase waits until etcd names another leader.
    env.engine.execute(&stepdown, true).await.unwrap();
    assert_eq!(raw_flags(&env).await, ["false", "true", "true"]);
    assert_eq!(
        env.election.leader().await.unwrap().as_deref(),
        Some("kevin-test2")
    );

    // Elect: the others are disabled until kevin-test1 leads again.
    env.engine.execute(&elect, true).await.unwrap();
    assert_eq!(
        env.election.status().await.unwrap(),
        flags([true, false, false])
    );
    let leader = client.get(&leader_key(CLUSTER)).await.unwrap().unwrap();
    assert_eq!(leader.value_str(), "10.162.0.7");

    env.engine.execute(&enable2, true).await.unwrap();
    env.engine.execute(&enable3, true).await.unwrap();
    assert_eq!(
        env.election.status().await.unwrap(),
        flags([true, true, true])
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        env.election.leader().await.unwrap().as_deref(),
        Some("kevin-test1"),
        "an enabled leader keeps leading"
    );

    // Rollback, latest first: each phase restores the flags it found.
    env.engine.rollback(&enable3, false).await.unwrap();
    env.engine.rollback(&enable2, false).await.unwrap();
    assert_eq!(
        env.election.status().await.unwrap(),
        flags([true, false, false])
    );
    env.engine.rollback(&elect, true).await.unwrap();
    assert_eq!(
        env.election.status().await.unwrap(),
        flags([false, true, true])
    );
    wait_leader(&env, "kevin-test2").await;
    env.engine.rollback(&stepdown, true).await.unwrap();
    assert_eq!(raw_flags(&env).await, ["true", "true", "true"]);

    campaign.stop().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    watcher.abort();
    let mut changes = seen.lock().unwrap().clone();
    changes.dedup();
    assert_eq!(
        changes,
        ["10.162.0.7", "10.162.0.6", "10.162.0.7", "10.162.0.6"],
        "leader changes observed through etcd"
    );

    // Not a master: refused like the simulated cluster.
    let err = env.election.set_enabled("nobody", true).await.unwrap_err();
    assert!(err.to_string().contains("not a master"), "{err}");
    eprintln!("election: {:?}", t0.elapsed());
}
