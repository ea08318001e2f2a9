//! Three catalog members on real sockets: members join a bootstrapped one,
//! clients follow the leader when it stops, the cached version never goes
//! back, a stopped member catches up on restart, and the leader can be
//! removed.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use strata_catalog::client::Members;
use strata_catalog::model::DatabaseOptions;
use strata_catalog::{CatalogClient, CatalogConfig, CatalogServer, Command};
use strata_proto::catalog::v1::ChangeMembershipRequest;

async fn start(id: u64, dir: &Path, listen: &str, join: Option<&str>) -> CatalogServer {
    CatalogServer::start(CatalogConfig {
        bootstrap: join.is_none(),
        join: join.map(str::to_string),
        ..CatalogConfig::new(id, dir.join(format!("member-{id}")), listen)
    })
    .await
    .expect("catalog member starts")
}

async fn three(dir: &Path) -> Vec<CatalogServer> {
    let first = start(1, dir, "127.0.0.1:0", None).await;
    let seed = first.addr().to_string();
    let second = start(2, dir, "127.0.0.1:0", Some(&seed)).await;
    let third = start(3, dir, "127.0.0.1:0", Some(&seed)).await;
    vec![first, second, third]
}

fn addrs(servers: &[CatalogServer]) -> String {
    servers
        .iter()
        .map(|s| s.addr().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// The voters as `server` sees the membership.
fn voters(server: &CatalogServer) -> BTreeSet<u64> {
    server
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .voter_ids()
        .collect()
}

fn create(name: &str) -> Command {
    Command::CreateDatabase {
        name: name.to_string(),
        options: DatabaseOptions::default(),
        if_not_exists: false,
    }
}

async fn leader_index(servers: &[Option<CatalogServer>]) -> usize {
    for _ in 0..100 {
        for (i, s) in servers.iter().enumerate() {
            if let Some(s) = s {
                let m = s.raft().metrics().borrow().clone();
                if m.current_leader == Some(m.id) {
                    return i;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no leader within 10 s");
}

async fn wait_for_databases(server: &CatalogServer, names: &BTreeSet<String>) {
    for _ in 0..200 {
        let state = server.state();
        if names.iter().all(|n| state.databases.contains_key(n)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let have: BTreeSet<_> = server.state().databases.keys().cloned().collect();
    let missing: Vec<_> = names.difference(&have).collect();
    panic!("member {} lacks {missing:?}", server.addr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joined_members_are_voters_and_clients_survive_the_leader_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let servers = three(dir.path()).await;
    let list = addrs(&servers);

    let members = Members::parse(&list).unwrap();
    for (addr, status) in members.statuses(Duration::from_secs(2)).await {
        let status = status.unwrap_or_else(|e| panic!("{addr}: {e}"));
        let voters: BTreeSet<u64> = status
            .members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.node_id)
            .collect();
        assert_eq!(voters, BTreeSet::from([1, 2, 3]), "as {addr} sees it");
        assert!(status.leader_id.is_some());
        assert!(["leader", "follower"].contains(&status.role.as_str()));
    }

    let client = CatalogClient::connect(&list, Duration::from_secs(10))
        .await
        .unwrap();
    // Everything the cache shows, in order: it must never go back.
    let mut rx = client.subscribe();
    let seen = Arc::new(std::sync::Mutex::new(vec![rx.borrow().version]));
    let watching = {
        let seen = seen.clone();
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let v = rx.borrow_and_update().version;
                seen.lock().unwrap().push(v);
            }
        })
    };

    let mut servers: Vec<Option<CatalogServer>> = servers.into_iter().map(Some).collect();
    let mut acknowledged = BTreeSet::new();
    for i in 0..10 {
        client
            .execute(create(&format!("before_{i}")))
            .await
            .unwrap();
        acknowledged.insert(format!("before_{i}"));
    }

    // Stop the leader while a stream of DDL runs.
    let stopping = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = client.clone();
        let stopping = stopping.clone();
        tokio::spawn(async move {
            let mut done = vec![];
            let mut i = 0;
            while !stopping.load(Ordering::Relaxed) || i < 20 {
                let name = format!("during_{i}");
                match client.execute(create(&name)).await {
                    Ok(_) => done.push(name),
                    Err(e) => panic!("DDL {name} failed across the leader change: {e}"),
                }
                i += 1;
            }
            done
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let old = leader_index(&servers).await;
    let old_addr = servers[old].as_ref().unwrap().addr().to_string();
    servers[old].take().unwrap().shutdown().await;
    let new = leader_index(&servers).await;
    assert_ne!(new, old);
    stopping.store(true, Ordering::Relaxed);
    acknowledged.extend(writer.await.unwrap());

    for s in servers.iter().flatten() {
        wait_for_databases(s, &acknowledged).await;
    }

    // The stopped member comes back on its address and catches up.
    let back = start(old as u64 + 1, dir.path(), &old_addr, None).await;
    wait_for_databases(&back, &acknowledged).await;
    servers[old] = Some(back);

    // Removing the leader hands leadership to another member.
    let leader = leader_index(&servers).await;
    let leader_id = leader as u64 + 1;
    let mut rpc = members.client(
        &servers[(leader + 1) % 3]
            .as_ref()
            .unwrap()
            .addr()
            .to_string(),
    );
    rpc.change_membership(ChangeMembershipRequest {
        remove_voters: vec![leader_id],
        ..Default::default()
    })
    .await
    .expect("removing the leader");
    let removed = servers[leader].take().unwrap();
    let next = leader_index(&servers).await;
    assert_ne!(next, leader);
    client.execute(create("after_removal")).await.unwrap();
    acknowledged.insert("after_removal".to_string());
    for s in servers.iter().flatten() {
        wait_for_databases(s, &acknowledged).await;
        let voters = voters(s);
        assert!(!voters.contains(&leader_id), "{voters:?}");
        assert_eq!(voters.len(), 2);
    }
    removed.shutdown().await;

    let state = client.state();
    for name in &acknowledged {
        assert!(
            state.databases.contains_key(name),
            "client cache lacks {name}"
        );
    }
    drop(client);
    watching.abort();
    let seen = seen.lock().unwrap().clone();
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "the cached version went back: {seen:?}"
    );
    for s in servers.into_iter().flatten() {
        s.shutdown().await;
    }
}

/// A retried command (same request id) is applied once: a `CREATE DATABASE`
/// whose answer was lost is not reported as "already exists" on retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_request_id_is_answered_not_applied_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(1, dir.path(), "127.0.0.1:0", None).await;
    let once = Command::Once {
        request_id: "client-7".to_string(),
        command: Box::new(create("db")),
    };
    let first = server.raft().client_write(once.clone()).await.unwrap().data;
    let again = server.raft().client_write(once).await.unwrap().data;
    assert_eq!(first.result, again.result);
    assert_eq!(first.version, again.version);
    let other = server
        .raft()
        .client_write(Command::Once {
            request_id: "client-8".to_string(),
            command: Box::new(create("db")),
        })
        .await
        .unwrap()
        .data;
    assert!(
        matches!(
            other.result,
            strata_catalog::CommandResult::Rejected(
                strata_catalog::Rejection::DatabaseExists { .. }
            )
        ),
        "{other:?}"
    );
    server.shutdown().await;
}

/// A member that was down while the others snapshotted and purged the log
/// it lacks comes back through a snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_while_the_log_was_purged_comes_back_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut servers: Vec<Option<CatalogServer>> =
        three(dir.path()).await.into_iter().map(Some).collect();
    let list = servers
        .iter()
        .flatten()
        .map(|s| s.addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let client = CatalogClient::connect(&list, Duration::from_secs(10))
        .await
        .unwrap();
    client.execute(create("before")).await.unwrap();

    // Stop a follower.
    let leader = leader_index(&servers).await;
    let down = (leader + 1) % 3;
    let down_addr = servers[down].as_ref().unwrap().addr().to_string();
    servers[down].take().unwrap().shutdown().await;

    let mut acknowledged = BTreeSet::from(["before".to_string()]);
    for i in 0..50 {
        client
            .execute(create(&format!("while_down_{i}")))
            .await
            .unwrap();
        acknowledged.insert(format!("while_down_{i}"));
    }
    // Snapshot and purge on both running members.
    for s in servers.iter().flatten() {
        let raft = s.raft();
        raft.trigger().snapshot().await.unwrap();
        raft.wait(Some(Duration::from_secs(20)))
            .metrics(
                |m| {
                    m.snapshot.is_some()
                        && m.snapshot.map(|s| s.index) == m.last_applied.map(|l| l.index)
                },
                "snapshot of every applied entry",
            )
            .await
            .unwrap();
        let last = raft.metrics().borrow().snapshot.unwrap().index;
        raft.trigger().purge_log(last).await.unwrap();
        raft.wait(Some(Duration::from_secs(20)))
            .metrics(|m| m.purged.map(|p| p.index) == Some(last), "log purged")
            .await
            .unwrap();
    }

    let back = start(down as u64 + 1, dir.path(), &down_addr, None).await;
    wait_for_databases(&back, &acknowledged).await;
    let m = back.raft().metrics().borrow().clone();
    assert!(
        m.snapshot.is_some(),
        "the member caught up without a snapshot: {m:?}"
    );
    servers[down] = Some(back);
    drop(client);
    for s in servers.into_iter().flatten() {
        s.shutdown().await;
    }
}

/// Members started at the same moment all become voters (a join retries
/// while another membership change commits), and a member cannot be added
/// at an address where nothing answers or that another member has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_all_become_voters_and_bad_additions_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(1, dir.path(), "127.0.0.1:0", None).await;
    let seed = first.addr().to_string();
    let (second, third) = tokio::join!(
        start(2, dir.path(), "127.0.0.1:0", Some(&seed)),
        start(3, dir.path(), "127.0.0.1:0", Some(&seed)),
    );
    assert_eq!(voters(&first), BTreeSet::from([1, 2, 3]));

    let members = Members::parse(&seed).unwrap();
    let mut rpc = members.client(&seed);
    let ghost = rpc
        .add_learner(strata_proto::catalog::v1::AddLearnerRequest {
            node_id: 7,
            addr: "127.0.0.1:1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(ghost.code(), tonic::Code::FailedPrecondition, "{ghost:?}");
    assert!(
        ghost.message().contains("no catalog member answers"),
        "{ghost:?}"
    );
    let taken = rpc
        .add_learner(strata_proto::catalog::v1::AddLearnerRequest {
            node_id: 4,
            addr: second.addr().to_string(),
        })
        .await
        .unwrap_err();
    assert!(
        taken.message().contains("address of catalog member 2"),
        "{taken:?}"
    );
    let nodes = first
        .raft()
        .metrics()
        .borrow()
        .membership_config
        .membership()
        .nodes()
        .count();
    assert_eq!(nodes, 3, "nothing was added");
    for s in [first, second, third] {
        s.shutdown().await;
    }
}
