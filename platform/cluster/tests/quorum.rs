//! The controller quorum with real TCP between nodes and real files: election, forwarding,
//! fencing, leader loss and restart from disk.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_cluster::{BrokerRegistration, Command, Controller, ControllerConfig, Metadata, NodeId, Outcome};

const SESSION: Duration = Duration::from_millis(1500);
const HEARTBEAT: Duration = Duration::from_millis(200);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn config(id: NodeId, voters: &BTreeMap<NodeId, String>, root: &Path) -> ControllerConfig {
    ControllerConfig {
        voters: voters.clone(),
        session_timeout: SESSION,
        heartbeat_interval: HEARTBEAT,
        ..ControllerConfig::single(id, root.join(format!("node-{id}")))
    }
}

fn registration(id: i32, incarnation: u128) -> BrokerRegistration {
    BrokerRegistration { broker_id: id, incarnation, host: "127.0.0.1".into(), port: 9000 + id as u16, rack: None, cluster_id: None }
}

/// Polls `check` on `controller`'s metadata until it holds or `within` passes.
async fn eventually(controller: &Controller, within: Duration, what: &str, check: impl Fn(&Metadata) -> bool) {
    let deadline = Instant::now() + within;
    loop {
        if check(&controller.metadata()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "node {}: {what} did not happen within {within:?}: {:?}",
            controller.node_id(),
            controller.metadata()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn live(meta: &Metadata) -> Vec<i32> {
    meta.live_brokers().map(|b| b.registration.broker_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_voters_elect_forward_fence_and_recover() {
    let root = tempfile::tempdir().unwrap();
    let voters: BTreeMap<NodeId, String> = (1..=3).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    let mut nodes: BTreeMap<NodeId, Arc<Controller>> = BTreeMap::new();
    for &id in voters.keys() {
        nodes.insert(id, Controller::start(config(id, &voters, root.path())).await.unwrap());
    }
    let leader = nodes[&1].wait_for_leader(Duration::from_secs(15)).await.expect("a leader is elected");
    for (&id, node) in &nodes {
        node.run_broker(registration(id as i32, 100 + u128::from(id)));
    }
    for node in nodes.values() {
        eventually(node, Duration::from_secs(10), "three live brokers", |m| live(m) == vec![1, 2, 3]).await;
    }

    // A write through a follower is forwarded to the leader.
    let follower = *nodes.keys().find(|&&id| id != leader).unwrap();
    let outcome = nodes[&follower].write(Command::RegisterBroker(registration(7, 1))).await.unwrap();
    assert!(matches!(outcome, Outcome::Registered { .. }), "{outcome:?}");

    // Broker 7 never heartbeats: the active controller fences it after the session timeout.
    eventually(&nodes[&leader], SESSION * 4, "broker 7 fenced", |m| m.brokers.get(&7).is_some_and(|b| b.fenced)).await;

    // The leader goes away: the other two elect a new one, which fences the lost node's broker.
    let old = nodes.remove(&leader).unwrap();
    old.shutdown().await;
    drop(old);
    let survivor = nodes.values().next().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    let new_leader = loop {
        let status = survivor.status();
        if let Some(id) = status.leader_id.filter(|&id| id != leader) {
            break id;
        }
        assert!(Instant::now() < deadline, "no new leader: {status:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(new_leader, leader);
    let lost = leader as i32;
    eventually(&survivor, SESSION * 6, "the lost node's broker fenced", |m| m.brokers[&lost].fenced).await;
    let outcome = survivor.write(Command::RegisterBroker(registration(8, 1))).await.unwrap();
    assert!(matches!(outcome, Outcome::Registered { .. }), "{outcome:?}");

    // The lost node restarts from its files: it rejoins, catches up, and its broker (a new
    // incarnation) registers with a new epoch and is live again.
    let epoch_before = survivor.metadata().brokers[&lost].epoch;
    let back = Controller::start(config(leader, &voters, root.path())).await.unwrap();
    back.run_broker(registration(lost, 999));
    for node in nodes.values().chain([&back]) {
        eventually(node, Duration::from_secs(15), "the restarted broker live with a new epoch", |m| {
            m.brokers.get(&lost).is_some_and(|b| !b.fenced && b.epoch > epoch_before) && m.brokers.contains_key(&8)
        })
        .await;
    }
    for node in nodes.values().chain([&back]) {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_keeps_its_metadata_across_restarts() {
    let root = tempfile::tempdir().unwrap();
    let single =
        ControllerConfig { session_timeout: SESSION, heartbeat_interval: HEARTBEAT, ..ControllerConfig::single(1, root.path().join("c")) };
    let node = Controller::start(single.clone()).await.unwrap();
    let Outcome::Registered { epoch } = node.write(Command::RegisterBroker(registration(1, 5))).await.unwrap() else {
        panic!("not registered")
    };
    node.shutdown().await;
    drop(node);

    let node = Controller::start(single).await.unwrap();
    eventually(&node, Duration::from_secs(10), "the registration replayed from the log", |m| {
        m.brokers.get(&1).is_some_and(|b| b.epoch == epoch)
    })
    .await;
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_with_a_live_brokers_id_is_refused_until_its_session_expires() {
    let root = tempfile::tempdir().unwrap();
    let single =
        ControllerConfig { session_timeout: SESSION, heartbeat_interval: HEARTBEAT, ..ControllerConfig::single(1, root.path().join("c")) };
    let node = Controller::start(single).await.unwrap();
    let Outcome::Registered { epoch } = node.write(Command::RegisterBroker(registration(5, 1))).await.unwrap() else {
        panic!("not registered")
    };
    node.heartbeat(5, epoch).await.unwrap();
    // Another incarnation of broker 5 while the first heartbeats: refused, and the first keeps its epoch.
    let outcome = node.write(Command::RegisterBroker(registration(5, 2))).await.unwrap();
    assert!(matches!(&outcome, Outcome::Rejected(reason) if reason.contains("used twice")), "{outcome:?}");
    assert_eq!(node.metadata().brokers[&5].epoch, epoch);
    // The same process asking again is not a duplicate.
    assert_eq!(node.write(Command::RegisterBroker(registration(5, 1))).await.unwrap(), Outcome::Registered { epoch });
    // Once the first stops heartbeating and is fenced, the newcomer (a restart) is taken.
    eventually(&node, SESSION * 4, "broker 5 fenced", |m| m.brokers[&5].fenced).await;
    let outcome = node.write(Command::RegisterBroker(registration(5, 2))).await.unwrap();
    assert!(matches!(outcome, Outcome::Registered { epoch: newer } if newer > epoch), "{outcome:?}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_outside_the_voters_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let voters = BTreeMap::from([(1, "127.0.0.1:1".to_string()), (2, "127.0.0.1:2".to_string())]);
    let error = Controller::start(config(3, &voters, root.path())).await.err().expect("refused");
    assert!(error.to_string().contains("not among the controller voters"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_voters_on_an_existing_quorum_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let single =
        ControllerConfig { session_timeout: SESSION, heartbeat_interval: HEARTBEAT, ..ControllerConfig::single(1, root.path().join("c")) };
    let node = Controller::start(single.clone()).await.unwrap();
    node.wait_for_leader(Duration::from_secs(10)).await.expect("leads itself");
    node.shutdown().await;
    drop(node);

    // The same directory told it is one of three voters: two quorums could form, so it must not start.
    let voters = BTreeMap::from([(1, format!("127.0.0.1:{}", free_port())), (2, "127.0.0.1:2".into()), (3, "127.0.0.1:3".into())]);
    let error = Controller::start(ControllerConfig { voters, ..single.clone() }).await.err().expect("refused");
    assert!(error.to_string().contains("not supported yet"), "{error}");
    // With the stored voters it starts again.
    let node = Controller::start(single).await.unwrap();
    node.wait_for_leader(Duration::from_secs(10)).await.expect("leads itself again");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_purged_entries_catches_up_by_snapshot() {
    let root = tempfile::tempdir().unwrap();
    let voters: BTreeMap<NodeId, String> = (1..=3).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
    // Snapshots every 10 entries, keeping 2: a node away for 60 writes can only catch up by snapshot.
    let small = |id| ControllerConfig { snapshot_every_entries: 10, log_kept_after_snapshot: 2, ..config(id, &voters, root.path()) };
    let mut nodes = BTreeMap::new();
    for &id in voters.keys() {
        nodes.insert(id, Controller::start(small(id)).await.unwrap());
    }
    nodes[&1].wait_for_leader(Duration::from_secs(15)).await.expect("a leader is elected");
    let away = nodes.remove(&3).unwrap();
    away.shutdown().await;
    drop(away);
    for broker in 100..160 {
        let outcome = nodes[&1].write(Command::RegisterBroker(registration(broker, 1))).await.unwrap();
        assert!(matches!(outcome, Outcome::Registered { .. }), "{outcome:?}");
    }
    let back = Controller::start(small(3)).await.unwrap();
    eventually(&back, Duration::from_secs(20), "all 60 registrations, by snapshot", |m| m.brokers.len() == 60).await;
    assert!(root.path().join("node-3").join("snapshot").exists(), "the installed snapshot is on disk");
    // And it survives a restart from its own files.
    back.shutdown().await;
    drop(back);
    let again = Controller::start(small(3)).await.unwrap();
    eventually(&again, Duration::from_secs(20), "the snapshot reloaded", |m| m.brokers.len() == 60).await;
    again.shutdown().await;
    for node in nodes.values() {
        node.shutdown().await;
    }
}
