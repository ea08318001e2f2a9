//! Catalog members on real sockets: a member that joins after the log it
//! would need was purged is brought up to date by a snapshot, whatever the
//! size of the catalog.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::BasicNode;
use strata_catalog::model::{Column, ColumnKind, FieldType};
use strata_catalog::{CatalogClient, CatalogConfig, CatalogServer, Command};

async fn start(id: u64, dir: &std::path::Path, bootstrap: bool) -> CatalogServer {
    CatalogServer::start(CatalogConfig {
        bootstrap,
        join: None,
        ..CatalogConfig::new(id, dir.join(format!("member-{id}")), "127.0.0.1:0")
    })
    .await
    .expect("catalog member starts")
}

/// A catalog of several MiB (tables of thousands of columns) reaches a
/// member that joins after the log was purged: the snapshot that carries
/// it is larger than gRPC's default 4 MiB message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joining_after_the_log_was_purged_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(1, dir.path(), true).await;
    let client = CatalogClient::connect(&first.addr().to_string(), Duration::from_secs(10))
        .await
        .unwrap();
    for t in 0..16 {
        let columns = (0..2_000)
            .map(|c| Column {
                name: format!("a_field_with_a_rather_long_name_{t:02}_{c:05}"),
                kind: ColumnKind::Field(FieldType::Float),
            })
            .collect();
        client
            .execute(Command::AddColumns {
                database: "db".to_string(),
                table: format!("t{t}"),
                columns,
            })
            .await
            .unwrap();
    }
    let state = first.state();
    let bytes = serde_json::to_vec(state.as_ref()).unwrap().len();
    assert!(bytes > 2 << 20, "the catalog holds {bytes} bytes");

    // Snapshot everything and purge the log the newcomer would need.
    let raft = first.raft();
    raft.trigger().snapshot().await.unwrap();
    raft.wait(Some(Duration::from_secs(20)))
        .metrics(
            |m| m.snapshot.map(|s| s.index) == m.last_applied.map(|l| l.index),
            "snapshot of every applied entry",
        )
        .await
        .unwrap();
    let last = raft.metrics().borrow().last_applied.unwrap().index;
    raft.trigger().purge_log(last).await.unwrap();
    raft.wait(Some(Duration::from_secs(20)))
        .metrics(
            |m| m.purged.map(|p| p.index) == Some(last),
            "log purged up to the snapshot",
        )
        .await
        .unwrap();

    let second = start(2, dir.path(), false).await;
    tokio::time::timeout(
        Duration::from_secs(60),
        raft.add_learner(2, BasicNode::new(second.addr().to_string()), true),
    )
    .await
    .expect("the learner catches up in time")
    .expect("the learner is added");
    tokio::time::timeout(
        Duration::from_secs(30),
        raft.change_membership(BTreeSet::from([1, 2]), false),
    )
    .await
    .expect("the learner becomes a voter in time")
    .unwrap();
    assert_eq!(second.state().version, first.state().version);
    assert_eq!(second.state().as_ref(), first.state().as_ref());

    // The new voter goes on receiving entries as a member.
    client
        .execute(Command::CreateDatabase {
            name: "after".to_string(),
            options: Default::default(),
            if_not_exists: false,
        })
        .await
        .unwrap();
    let want = first.state().version;
    second
        .raft()
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| {
                m.last_applied.map(|l| l.index)
                    >= first
                        .raft()
                        .metrics()
                        .borrow()
                        .last_applied
                        .map(|l| l.index)
            },
            "the second member applies the new entry",
        )
        .await
        .unwrap();
    assert_eq!(second.state().version, want);
    assert!(second.state().databases.contains_key("after"));

    // A client of the follower reads the whole state through it (its
    // linearizable read goes to the leader and back).
    let via_follower = CatalogClient::connect(&second.addr().to_string(), Duration::from_secs(10))
        .await
        .expect("a client connects through the follower");
    assert_eq!(via_follower.state().version, want);
    // Graceful shutdown waits for open connections, watches included.
    drop(via_follower);
    drop(client);
    second.shutdown().await;
    first.shutdown().await;
}
