//! The `system` tables over Flight SQL and HTTP, and storage-node liveness
//! as they show it: a stopped node is marked down within its heartbeat
//! timeout, new shard groups avoid it, and it is up again once restarted.

use std::time::{Duration, Instant};

use strata_storage::{EngineConfig, StorageConfig, StorageNode};

use crate::support::{sql_status, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_tables_describe_the_cluster() {
    let c = TestCluster::start_with(|d| d.catalog_voters = 3).await;
    let (status, body) = c
        .write(
            "sys",
            "s",
            "cpu,host=a v=1 1700000000\ncpu,host=b v=2 1700000000\n",
        )
        .await;
    assert_eq!(status, 204, "{body}");

    let members = c
        .query(
            "sys",
            "SELECT node_id, role, voter FROM system.catalog ORDER BY node_id",
        )
        .await;
    assert_eq!(members.len(), 3, "{members:?}");
    assert_eq!(
        members.iter().filter(|r| r.contains("|leader|")).count(),
        1,
        "{members:?}"
    );
    assert!(members.iter().all(|r| r.ends_with("|true")), "{members:?}");
    let versions = c
        .query(
            "sys",
            "SELECT DISTINCT leader_id, term FROM system.catalog WHERE error IS NULL",
        )
        .await;
    assert_eq!(
        versions.len(),
        1,
        "members agree on leader and term: {versions:?}"
    );

    assert_eq!(
        c.query(
            "sys",
            "SELECT node_id, state, last_heartbeat IS NOT NULL FROM system.nodes ORDER BY node_id"
        )
        .await,
        vec!["1|up|true", "2|up|true", "3|up|true"]
    );
    assert_eq!(
        c.query(
            "sys",
            "SELECT name, replication_factor, table_count, shard_group_count FROM system.databases"
        )
        .await,
        vec!["sys|1|1|1"]
    );
    assert_eq!(
        c.query(
            "sys",
            "SELECT database, start, \"end\", shard_count, expired FROM system.shard_groups"
        )
        .await,
        vec!["sys|2023-11-09T00:00:00|2023-11-16T00:00:00|3|false"]
    );
    let shards = c
        .query(
            "sys",
            "SELECT s.shard_id, s.owners FROM system.shards s JOIN system.shard_groups g ON s.group_id = g.id ORDER BY s.shard_id",
        )
        .await;
    assert_eq!(shards.len(), 3, "{shards:?}");
    // Each node owns one of the three shards.
    assert_eq!(
        c.query(
            "sys",
            "SELECT node_id, shard_count FROM system.nodes ORDER BY node_id"
        )
        .await,
        vec!["1|1", "2|1", "3|1"]
    );

    // Over HTTP, in JSON, lists included; the database named in the query
    // does not matter.
    let (status, body) = sql_status(&c, None, "SELECT shard_id, owners FROM system.shards").await;
    assert_eq!(status, 200, "{body}");
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(rows.as_array().map(|a| a.len()), Some(3), "{body}");
    assert!(rows[0]["owners"].is_array(), "{body}");

    // No database may take the schema's name.
    let (status, body) = sql_status(&c, None, "CREATE DATABASE system").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("reserved"), "{body}");
    let (status, body) = c.write("System", "s", "m v=1 1\n").await;
    assert_eq!(status, 400, "{body}");
    // SHOW DATABASES lists databases, not the system schema.
    let (status, body) = sql_status(&c, None, "SHOW DATABASES").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"sys\"") && !body.contains("\"system\""),
        "{body}"
    );
}

async fn node_state(c: &TestCluster, id: u64) -> String {
    c.query(
        "live",
        &format!("SELECT state FROM system.nodes WHERE node_id = {id}"),
    )
    .await
    .join(",")
}

async fn wait_for_state(c: &TestCluster, id: u64, state: &str) -> Duration {
    let start = Instant::now();
    while node_state(c, id).await != state {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "storage node {id} is not {state} after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_storage_node_is_marked_down_avoided_and_back_up_after_restart() {
    let mut c = TestCluster::start_with(|d| {
        d.heartbeat_interval = Duration::from_millis(200);
        d.heartbeat_timeout = Duration::from_secs(1);
    })
    .await;
    let (status, body) = c.write("live", "s", "m,h=a v=1 1700000000\n").await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(node_state(&c, 2).await, "up");

    // Node 2 stops: no more heartbeats.
    let cluster = c.cluster.as_mut().unwrap();
    let stopped = cluster.storage.remove(1);
    let addr = stopped.addr();
    stopped.shutdown().await;
    let took = wait_for_state(&c, 2, "down").await;
    println!("node 2 marked down {took:?} after it stopped (timeout 1 s)");
    let changed = c
        .query(
            "live",
            "SELECT state_changed IS NOT NULL FROM system.nodes WHERE node_id = 2",
        )
        .await;
    assert_eq!(changed, vec!["true"]);

    // A new window's shard group goes to the nodes that are up. Its rows
    // are written and read back.
    let (status, body) = c
        .write("live", "s", "m,h=a v=2 1800000000\nm,h=b v=3 1800000000\n")
        .await;
    assert_eq!(status, 204, "{body}");
    let owners = c
        .query(
            "live",
            "SELECT s.owners FROM system.shards s JOIN system.shard_groups g ON s.group_id = g.id \
             WHERE g.start > '2026-01-01' ORDER BY s.shard_id",
        )
        .await;
    assert!(!owners.is_empty());
    for o in &owners {
        assert!(
            !o.contains('2'),
            "a new shard was placed on the down node: {owners:?}"
        );
    }
    assert_eq!(
        c.query("live", "SELECT count(*) FROM m WHERE time > '2026-01-01'")
            .await,
        vec!["2"]
    );

    // Restarted (on a new port), it is up again.
    let mut engine = EngineConfig::new(c.data_dir().join("storage-2"));
    engine.flush_rows = 1000;
    let catalog = c.cluster().addrs().catalog;
    let node = StorageNode::start(StorageConfig {
        node_id: 2,
        listen: "127.0.0.1:0".into(),
        advertise: None,
        catalog_addr: catalog,
        engine,
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(1),
        query_memory: strata_storage::memory::QueryMemory::new(Default::default()),
        query_executor: None,
        tls: None,
    })
    .await
    .unwrap();
    assert_ne!(node.addr(), addr);
    c.cluster.as_mut().unwrap().storage.insert(1, node);
    wait_for_state(&c, 2, "up").await;
    let address = c
        .query("live", "SELECT address FROM system.nodes WHERE node_id = 2")
        .await;
    assert_eq!(address, vec![c.cluster().storage[1].addr().to_string()]);

    // A second node started with a live node's id (and its own directory)
    // is refused, naming the node that has it.
    let err = StorageNode::start(StorageConfig {
        node_id: 2,
        listen: "127.0.0.1:0".into(),
        advertise: None,
        catalog_addr: c.cluster().addrs().catalog,
        engine: EngineConfig::new(c.data_dir().join("impostor")),
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_secs(1),
        query_memory: strata_storage::memory::QueryMemory::new(Default::default()),
        query_executor: None,
        tls: None,
    })
    .await
    .err()
    .expect("a duplicate node id is refused");
    let message = err.to_string();
    assert!(
        message.contains("in use by a running node")
            && message.contains(&c.cluster().storage[1].addr().to_string()),
        "{message}"
    );
    assert_eq!(
        c.query("live", "SELECT address FROM system.nodes WHERE node_id = 2")
            .await,
        vec![c.cluster().storage[1].addr().to_string()]
    );
}
