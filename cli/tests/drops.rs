//! Dropped data leaves the storage nodes for good: shard groups past their
//! retention, `DROP TABLE` / `DROP MEASUREMENT` and `DROP DATABASE` remove
//! memtable rows and Parquet files, and a restart (WAL replay included)
//! brings none of it back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use strata_catalog::liveness::now_ms;
use strata_catalog::{CatalogClient, Command};

use crate::support::{walk, TestCluster};

/// Parquet files under the data directory of shard `id` on any node.
fn shard_files(dir: &Path, shard_ids: &[u64]) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .filter(|p| {
            shard_ids.iter().any(|id| {
                p.parent()
                    .and_then(|d| d.file_name())
                    .is_some_and(|n| n.to_string_lossy() == id.to_string())
            })
        })
        .collect()
}

async fn flush_all(c: &TestCluster) {
    for s in &c.cluster().storage {
        s.engine().flush().await.unwrap();
    }
}

fn shard_ids(c: &TestCluster, db: &str) -> Vec<u64> {
    c.cluster().catalog[0]
        .state()
        .databases
        .get(db)
        .map(|d| {
            d.shard_groups
                .iter()
                .flat_map(|g| g.shards.iter().map(|s| s.id))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until no Parquet file of `shards` is left on disk.
async fn wait_gone(c: &TestCluster, shards: &[u64]) {
    let start = Instant::now();
    loop {
        let left = shard_files(c.data_dir(), shards);
        if left.is_empty() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "dropped files still on disk: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `sql` until it answers `want` (the coordinator and the nodes
/// follow the catalog a moment after a change).
async fn eventually(c: &TestCluster, db: &str, sql: &str, want: &[&str]) {
    let start = Instant::now();
    loop {
        let got = c.query(db, sql).await;
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{sql}: {got:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn lines(table: &str, from_s: i64, n: i64) -> String {
    (0..n)
        .map(|i| format!("{table},host=h{} v={i} {}\n", i % 7, from_s + i))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_shard_groups_leave_catalog_and_disk_and_stay_gone_after_restart() {
    let mut c = TestCluster::start().await;
    c.create_database("ret", "WITH RETENTION 1h SHARD DURATION 1h")
        .await;
    let now_s = now_ms() / 1000;
    // Flushed rows, then rows that stay in memtables and the WAL.
    let (status, body) = c.write("ret", "s", &lines("m", now_s - 1800, 100)).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = c.write("keep", "s", &lines("m", now_s - 1800, 100)).await;
    assert_eq!(status, 204, "{body}");
    flush_all(&c).await;
    let (status, body) = c.write("ret", "s", &lines("m", now_s - 1700, 50)).await;
    assert_eq!(status, 204, "{body}");
    let shards = shard_ids(&c, "ret");
    assert!(!shards.is_empty());
    assert!(!shard_files(c.data_dir(), &shards).is_empty());
    assert_eq!(c.query("ret", "SELECT count(*) FROM m").await, vec!["150"]);

    // Three hours on, the leader's retention check drops the groups; the
    // check is what runs every --retention-check-interval, with the clock
    // moved forward.
    let catalog = CatalogClient::connect(&c.cluster().addrs().catalog, Duration::from_secs(5))
        .await
        .unwrap();
    catalog
        .execute(Command::ExpireShardGroups {
            now_ms: now_ms() + 3 * 3_600_000,
        })
        .await
        .unwrap();
    eventually(
        &c,
        "ret",
        "SELECT count(*) FROM system.shard_groups WHERE database = 'ret'",
        &["0"],
    )
    .await;
    wait_gone(&c, &shards).await;
    assert_eq!(c.query("ret", "SELECT count(*) FROM m").await, vec!["0"]);
    assert_eq!(c.query("keep", "SELECT count(*) FROM m").await, vec!["100"]);
    drop(catalog);

    // A restart replays the WAL: the dropped rows stay dropped.
    c.restart().await;
    assert_eq!(c.query("ret", "SELECT count(*) FROM m").await, vec!["0"]);
    assert!(shard_files(c.data_dir(), &shards).is_empty());
    assert_eq!(c.query("keep", "SELECT count(*) FROM m").await, vec!["100"]);
    // New writes in the retention period open a new group and count.
    let (status, body) = c.write("ret", "s", &lines("m", now_s - 60, 10)).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(c.query("ret", "SELECT count(*) FROM m").await, vec!["10"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_table_and_drop_database_delete_the_data_on_the_nodes() {
    let mut c = TestCluster::start().await;
    let t = 1_700_000_000;
    for table in ["a", "b"] {
        let (status, body) = c.write("dt", "s", &lines(table, t, 100)).await;
        assert_eq!(status, 204, "{body}");
    }
    flush_all(&c).await;
    for table in ["a", "b"] {
        let (status, body) = c.write("dt", "s", &lines(table, t + 1000, 20)).await;
        assert_eq!(status, 204, "{body}");
    }
    let files_of = |c: &TestCluster, table: &str| -> usize {
        // Each flushed file holds one table; read its name from the manifest.
        c.cluster()
            .storage
            .iter()
            .map(|s| {
                let m: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(s.engine().data_dir().join("manifest.json")).unwrap(),
                )
                .unwrap();
                m["files"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|f| f["table"] == table)
                    .filter(|f| {
                        s.engine()
                            .data_dir()
                            .join(f["path"].as_str().unwrap())
                            .exists()
                    })
                    .count()
            })
            .sum()
    };
    assert!(files_of(&c, "a") > 0);

    c.sql(Some("dt")).await.query("DROP TABLE a").await.unwrap();
    let err = c
        .sql(Some("dt"))
        .await
        .query("SELECT count(*) FROM a")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    let start = Instant::now();
    while files_of(&c, "a") > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "files of a remain"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.query("dt", "SELECT count(*) FROM b").await, vec!["120"]);
    let err = c
        .sql(Some("dt"))
        .await
        .query("DROP TABLE a")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
    c.sql(Some("dt"))
        .await
        .query("DROP TABLE IF EXISTS a")
        .await
        .unwrap();

    // Written again, the table holds only the new rows, also after a
    // restart replays the WAL that still holds the old ones.
    let (status, body) = c.write("dt", "s", &lines("a", t + 5000, 5)).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(c.query("dt", "SELECT count(*) FROM a").await, vec!["5"]);
    c.restart().await;
    assert_eq!(c.query("dt", "SELECT count(*) FROM a").await, vec!["5"]);
    assert_eq!(c.query("dt", "SELECT count(*) FROM b").await, vec!["120"]);

    // InfluxQL's DROP MEASUREMENT over v1 /query.
    let resp = c
        .http
        .post(c.http_url("/query?db=dt&q=DROP%20MEASUREMENT%20b"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    eventually(
        &c,
        "dt",
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'dt'",
        &["a"],
    )
    .await;

    // DROP DATABASE: every shard's files go; a database of the same name
    // starts empty, also after a restart.
    let shards = shard_ids(&c, "dt");
    flush_all(&c).await;
    assert!(!shard_files(c.data_dir(), &shards).is_empty());
    c.sql(None).await.query("DROP DATABASE dt").await.unwrap();
    wait_gone(&c, &shards).await;
    c.restart().await;
    assert!(shard_files(c.data_dir(), &shards).is_empty());
    let (status, body) = c.write("dt", "s", &lines("a", t, 3)).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(c.query("dt", "SELECT count(*) FROM a").await, vec!["3"]);
}

/// A `strata dev` process killed with rows of a dropped table still in its
/// WAL: the replay after the restart skips them, and keeps the rows the
/// table got after it was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_dropped_before_a_crash_stays_dropped_after_wal_replay() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let start = || {
        crate::support::ServerProcess::start(
            &[
                "dev",
                "--http-addr",
                "127.0.0.1:0",
                "--flight-addr",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
            ],
            &dir.path().join("addrs.json"),
        )
    };
    let http = reqwest::Client::new();
    let (process, addrs) = start();
    let url = format!(
        "http://{}/write?db=crash&precision=s",
        addrs["http"].as_str().unwrap()
    );
    let flight = addrs["flight"].as_str().unwrap().to_string();
    let t = 1_700_000_000;
    let (status, body) =
        crate::support::post(&http, &url, lines("a", t, 100).into_bytes(), None).await;
    assert_eq!(status, 204, "{body}");
    let mut sql = strata::sql_client::SqlClient::connect(&flight, Some("crash".into()))
        .await
        .unwrap();
    sql.query("DROP TABLE a").await.unwrap();
    // The nodes apply the drop as they follow the catalog; a write waits
    // for it, so this one is not taken with the old rows.
    let (status, body) =
        crate::support::post(&http, &url, lines("a", t + 500, 7).into_bytes(), None).await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(
        crate::support::rows(&sql.query("SELECT count(*) FROM a").await.unwrap()),
        vec!["7"]
    );
    process.kill9();

    let (_process, addrs) = start();
    let mut sql = strata::sql_client::SqlClient::connect(
        addrs["flight"].as_str().unwrap(),
        Some("crash".into()),
    )
    .await
    .unwrap();
    assert_eq!(
        crate::support::rows(&sql.query("SELECT count(*) FROM a").await.unwrap()),
        vec!["7"]
    );
}

/// The leader's own retention check, on its timer: a database with a
/// 2-second window and retention (made through the catalog directly; SQL
/// asks for at least a minute) loses its groups and files within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_retention_check_drops_expired_groups_on_its_own() {
    let c = TestCluster::start_with(|d| {
        d.retention_check_interval = Duration::from_millis(500);
    })
    .await;
    let catalog = CatalogClient::connect(&c.cluster().addrs().catalog, Duration::from_secs(5))
        .await
        .unwrap();
    catalog
        .execute(Command::CreateDatabase {
            name: "short".into(),
            options: strata_catalog::model::DatabaseOptions {
                retention_ns: Some(2_000_000_000),
                shard_group_duration_ns: 2_000_000_000,
                ..Default::default()
            },
            if_not_exists: false,
        })
        .await
        .unwrap();
    let now = now_ms();
    let body: String = (0..20)
        .map(|i| format!("m,host=h{i} v={i} {}\n", (now - 500) * 1_000_000))
        .collect();
    let (status, text) = c.write("short", "ns", &body).await;
    assert_eq!(status, 204, "{text}");
    flush_all(&c).await;
    let shards = shard_ids(&c, "short");
    assert!(!shard_files(c.data_dir(), &shards).is_empty());
    eventually(&c, "short", "SELECT count(*) FROM m", &["0"]).await;
    wait_gone(&c, &shards).await;
    let state = catalog.state();
    assert!(
        state.databases["short"]
            .shard_groups
            .iter()
            .all(|g| !shards.contains(&g.shards[0].id)),
        "expired groups are gone from the catalog"
    );
    drop(catalog);
}
