//! Replication as a user of a cluster meets it, every role its own process:
//! storage nodes are killed (`kill -9`) or paused (`SIGSTOP`) under a write
//! load at `quorum`, come back, and every acknowledged point ends on every
//! replica once hinted handoff has drained; `all` does not acknowledge
//! while an owner is down; `any` writes survive the coordinator holding
//! their hints being killed; the last write of a point wins on every
//! replica after replay.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata::sql_client::SqlClient;

use crate::support::{rows, ServerProcess};

/// A cluster of separate processes: one catalog member, storage nodes
/// with fast heartbeats, one coordinator with a short owner timeout.
struct Cluster {
    dir: PathBuf,
    catalog: String,
    _catalog: ServerProcess,
    nodes: Vec<Option<ServerProcess>>,
    /// Each node's Flight address, as last started.
    node_addrs: Vec<String>,
    coordinator: Option<ServerProcess>,
    http: String,
    flight: String,
    client: reqwest::Client,
}

fn strata(args: &[&str], dir: &Path, name: &str) -> (ServerProcess, serde_json::Value) {
    ServerProcess::start(args, &dir.join(format!("{name}.json")))
}

impl Cluster {
    async fn start(dir: &Path, nodes: u64) -> Self {
        let data = dir.join("catalog");
        let (catalog_process, c) = strata(
            &[
                "catalog",
                "--node-id",
                "1",
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
                "--bootstrap",
            ],
            dir,
            "catalog",
        );
        let catalog = c["catalog"].as_str().unwrap().to_string();
        let mut cluster = Self {
            dir: dir.to_path_buf(),
            catalog,
            _catalog: catalog_process,
            nodes: (0..nodes).map(|_| None).collect(),
            node_addrs: vec![String::new(); nodes as usize],
            coordinator: None,
            http: String::new(),
            flight: String::new(),
            client: reqwest::Client::new(),
        };
        for id in 1..=nodes {
            cluster.start_node(id);
        }
        cluster.start_coordinator();
        cluster.wait_nodes_up(nodes as usize).await;
        cluster
    }

    fn start_node(&mut self, id: u64) {
        let data = self.dir.join(format!("storage-{id}"));
        let (p, a) = strata(
            &[
                "storage",
                "--node-id",
                &id.to_string(),
                "--listen",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
                "--catalog",
                &self.catalog,
                "--heartbeat-interval",
                "200ms",
                "--heartbeat-timeout",
                "1s",
            ],
            &self.dir,
            &format!("storage-{id}"),
        );
        self.nodes[id as usize - 1] = Some(p);
        self.node_addrs[id as usize - 1] = a["storage"].as_str().unwrap().to_string();
    }

    /// Has the node write its memtables to Parquet.
    async fn flush_node(&self, id: u64) {
        let addr = &self.node_addrs[id as usize - 1];
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = arrow_flight::FlightClient::new(channel);
        client
            .add_header(
                strata_proto::cluster::CLUSTER_SECRET_HEADER,
                crate::support::TEST_CLUSTER_SECRET,
            )
            .unwrap();
        let results = client
            .do_action(arrow_flight::Action::new("flush", ""))
            .await
            .unwrap();
        let _: Vec<_> = futures::TryStreamExt::try_collect(results).await.unwrap();
    }

    /// Runs `strata admin repair` against the cluster; its output.
    fn admin_repair(&self, args: &[&str]) -> String {
        let out = std::process::Command::new(crate::support::strata_bin())
            .env("STRATA_CLUSTER_SECRET", crate::support::TEST_CLUSTER_SECRET)
            .args(["admin", "repair", "--catalog", &self.catalog])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "admin repair failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    }

    fn kill_node(&mut self, id: u64) {
        self.nodes[id as usize - 1].take().unwrap().kill9();
    }

    fn signal_node(&self, id: u64, signal: &str) {
        let pid = self.nodes[id as usize - 1].as_ref().unwrap().pid();
        let ok = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal} {pid}");
    }

    fn start_coordinator(&mut self) {
        let data = self.dir.join("coordinator");
        let (p, a) = strata(
            &[
                "coordinator",
                "--without-auth",
                "--data-dir",
                data.to_str().unwrap(),
                "--http-addr",
                "127.0.0.1:0",
                "--flight-addr",
                "127.0.0.1:0",
                "--catalog",
                &self.catalog,
                "--write-timeout",
                "1s",
            ],
            &self.dir,
            "coordinator",
        );
        self.http = a["http"].as_str().unwrap().to_string();
        self.flight = a["flight"].as_str().unwrap().to_string();
        self.coordinator = Some(p);
    }

    fn kill_coordinator(&mut self) {
        self.coordinator.take().unwrap().kill9();
    }

    async fn sql(&self, db: Option<&str>, q: &str) -> Vec<String> {
        let mut c = SqlClient::connect(&self.flight, db.map(str::to_string))
            .await
            .unwrap();
        rows(&c.query(q).await.unwrap_or_else(|e| panic!("{q}: {e}")))
    }

    /// Writes line protocol with `/write?db=&consistency=`; the status and
    /// body.
    async fn write(&self, db: &str, consistency: &str, body: String) -> (u16, String) {
        write_to(&self.client, &self.http, db, consistency, body).await
    }

    async fn wait_nodes_up(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let up = self
                .sql(None, "SELECT count(*) FROM system.nodes WHERE state = 'up'")
                .await;
            if up == vec![n.to_string()] {
                return;
            }
            assert!(Instant::now() < deadline, "nodes up: {up:?}, wanted {n}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_node_state(&self, id: u64, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let q = format!("SELECT state FROM system.nodes WHERE node_id = {id}");
        while self.sql(None, &q).await != vec![state.to_string()] {
            assert!(Instant::now() < deadline, "node {id} never {state}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the coordinator's hinted-handoff queues are empty;
    /// returns how long that took.
    async fn wait_drained(&self) -> Duration {
        let started = Instant::now();
        loop {
            let queued = self
                .sql(
                    None,
                    "SELECT coalesce(sum(entries), 0) FROM system.hinted_handoff",
                )
                .await;
            if queued == vec!["0"] {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "hinted handoff never drained: {:?}",
                self.sql(None, "SELECT * FROM system.hinted_handoff").await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `shard_id|node_id|rows|digest` of every replica of the database.
    async fn replicas(&self, db: &str) -> Vec<String> {
        self.sql(
            None,
            &format!(
                "SELECT shard_id, node_id, rows, digest, error FROM system.shard_replicas \
                 WHERE database = '{db}' ORDER BY shard_id, node_id"
            ),
        )
        .await
    }
}

async fn write_to(
    client: &reqwest::Client,
    http: &str,
    db: &str,
    consistency: &str,
    body: String,
) -> (u16, String) {
    let resp = client
        .post(format!(
            "http://{http}/write?db={db}&consistency={consistency}"
        ))
        .timeout(Duration::from_secs(30))
        .body(body)
        .send()
        .await;
    match resp {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// Asserts every replica of every shard answers with the same rows and
/// digest; returns the rows each replica of each shard holds.
fn assert_replicas_agree(replicas: &[String], factor: usize) -> Vec<u64> {
    let mut by_shard: std::collections::BTreeMap<&str, Vec<(&str, &str)>> = Default::default();
    for r in replicas {
        let f: Vec<&str> = r.split('|').collect();
        assert_eq!(f[4], "NULL", "a replica did not answer: {r}");
        by_shard.entry(f[0]).or_default().push((f[2], f[3]));
    }
    assert!(!by_shard.is_empty(), "no replicas");
    by_shard
        .values()
        .map(|reps| {
            assert_eq!(reps.len(), factor, "{replicas:?}");
            assert!(
                reps.iter().all(|r| *r == reps[0]),
                "replicas disagree: {replicas:?}"
            );
            reps[0].0.parse().unwrap()
        })
        .collect()
}

/// Writers sending unique points at `consistency`, one request at a time
/// each, recording which points were acknowledged.
struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    acknowledged: Arc<Mutex<BTreeSet<(usize, i64)>>>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

const BASE_NS: i64 = 1_700_000_000_000_000_000;

impl Load {
    fn start(http: &str, db: &str, consistency: &str, writers: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(vec![]));
        let tasks = (0..writers)
            .map(|w| {
                let (stop, acknowledged, sent, failed) = (
                    stop.clone(),
                    acknowledged.clone(),
                    sent.clone(),
                    failed.clone(),
                );
                let (http, db, consistency) =
                    (http.to_string(), db.to_string(), consistency.to_string());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    let mut n = 0i64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // Ten points a request, each its own time.
                        let points: Vec<i64> = (n..n + 10).collect();
                        n += 10;
                        let body: String = points
                            .iter()
                            .map(|p| format!("m,writer=w{w} seq={p}i {}\n", BASE_NS + p * 1000))
                            .collect();
                        sent.fetch_add(points.len(), std::sync::atomic::Ordering::Relaxed);
                        let (status, text) =
                            write_to(&client, &http, &db, &consistency, body).await;
                        if status == 204 {
                            acknowledged
                                .lock()
                                .unwrap()
                                .extend(points.iter().map(|p| (w, *p)));
                        } else {
                            failed.lock().unwrap().push(format!("{status}: {text}"));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            acknowledged,
            sent,
            failed,
            tasks,
        }
    }

    fn acknowledged_count(&self) -> usize {
        self.acknowledged.lock().unwrap().len()
    }

    async fn finish(self) -> (BTreeSet<(usize, i64)>, usize, Vec<String>) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let acknowledged = self.acknowledged.lock().unwrap().clone();
        let failed = self.failed.lock().unwrap().clone();
        (
            acknowledged,
            self.sent.load(std::sync::atomic::Ordering::Relaxed),
            failed,
        )
    }

    /// Waits until `more` points beyond now are acknowledged.
    async fn progress(&self, more: usize) {
        let target = self.acknowledged_count() + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.acknowledged_count() < target {
            assert!(
                Instant::now() < deadline,
                "writes stalled: {:?}",
                self.failed
                    .lock()
                    .unwrap()
                    .iter()
                    .rev()
                    .take(3)
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Every (writer, seq) point the database holds, read through the
/// coordinator.
async fn stored_points(c: &Cluster, db: &str) -> Vec<(usize, i64)> {
    c.sql(Some(db), "SELECT writer, seq FROM m ORDER BY writer, seq")
        .await
        .iter()
        .map(|r| {
            let (w, s) = r.split_once('|').unwrap();
            (w[1..].parse().unwrap(), s.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_writes_survive_a_node_killed_and_a_node_paused_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 3).await;
    c.sql(None, "CREATE DATABASE rep WITH REPLICATION 3").await;

    // 1. kill -9 one node mid-load, restart it later.
    let load = Load::start(&c.http, "rep", "quorum", 3);
    load.progress(300).await;
    c.kill_node(3);
    let killed = load.acknowledged_count();
    // Acknowledged at quorum while it is dead, before and after the
    // catalog marks it down.
    load.progress(300).await;
    c.wait_node_state(3, "down").await;
    load.progress(300).await;
    println!(
        "node 3 killed at {killed} acknowledged points; {} by its restart",
        load.acknowledged_count()
    );
    c.start_node(3);
    c.wait_node_state(3, "up").await;
    load.progress(300).await;

    // 2. pause another node (a cut, not a crash), resume it.
    c.signal_node(2, "-STOP");
    load.progress(300).await;
    // Writes for it time out and queue, while quorum goes on.
    let deadline = Instant::now() + Duration::from_secs(20);
    while c
        .sql(
            None,
            "SELECT entries FROM system.hinted_handoff WHERE node_id = 2 AND entries > 0",
        )
        .await
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "no write for the paused node was queued"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.progress(300).await;
    c.signal_node(2, "-CONT");
    load.progress(300).await;
    let (acknowledged, sent, failed) = load.finish().await;
    let drained = c.wait_drained().await;
    println!(
        "sent {sent} points, {} acknowledged, {} requests failed; hints drained {drained:?} after the load",
        acknowledged.len(),
        failed.len()
    );
    for f in &failed {
        println!("  failed: {f}");
    }

    // A repair finds nothing to copy: hinted handoff delivered it all.
    let repair = c.admin_repair(&["--database", "rep"]);
    assert!(
        repair.contains("0 with differences, 0 rows written"),
        "{repair}"
    );

    // Every replica holds the same rows; every acknowledged point is
    // among them, once.
    let replicas = c.replicas("rep").await;
    println!("{replicas:#?}");
    let per_shard = assert_replicas_agree(&replicas, 3);
    let stored = stored_points(&c, "rep").await;
    let distinct: BTreeSet<(usize, i64)> = stored.iter().copied().collect();
    assert_eq!(distinct.len(), stored.len(), "a point is stored twice");
    assert_eq!(per_shard.iter().sum::<u64>(), stored.len() as u64);
    let lost: Vec<_> = acknowledged.difference(&distinct).collect();
    assert!(lost.is_empty(), "acknowledged points lost: {lost:?}");
    let handoff = c
        .sql(
            None,
            "SELECT node_id, delivered > 0, discarded, refused FROM system.hinted_handoff \
             ORDER BY node_id",
        )
        .await;
    // Both the killed and the paused node were sent writes through
    // hinted handoff, and nothing was passed over or refused.
    assert_eq!(handoff, vec!["2|true|0|0", "3|true|0|0"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consistency_levels_all_any_and_the_last_write_winning_after_replay() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 2).await;
    c.sql(None, "CREATE DATABASE two WITH REPLICATION 2").await;
    let point = |v: i64| format!("m,writer=w0 seq={v}i {BASE_NS}\n");
    assert_eq!(c.write("two", "all", point(0)).await.0, 204);

    c.kill_node(2);
    // `all` does not acknowledge while an owner is down: a partial write
    // (one owner has it, the other gets it through hinted handoff).
    let (status, body) = c.write("two", "all", point(1)).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("partial write"), "{body}");
    assert!(body.contains("stored on 1 of its 2 owners"), "{body}");
    assert!(
        body.contains("1 will receive it through hinted handoff"),
        "{body}"
    );
    // The same point, v1 then v2 (line protocol v1 and v2 endpoints),
    // while the replica is down.
    assert_eq!(c.write("two", "one", point(2)).await.0, 204);
    let v2 = |consistency: &str| {
        c.client
            .post(format!(
                "http://{}/api/v2/write?bucket=two&consistency={consistency}",
                c.http
            ))
            .body(point(3))
            .send()
    };
    // Quorum of two is both: not met, but stored on one and queued.
    assert_eq!(v2("quorum").await.unwrap().status().as_u16(), 500);
    assert_eq!(v2("one").await.unwrap().status().as_u16(), 204);
    c.start_node(2);
    c.wait_node_state(2, "up").await;
    c.wait_drained().await;
    let replicas = c.replicas("two").await;
    assert_replicas_agree(&replicas, 2);
    assert_eq!(c.sql(Some("two"), "SELECT seq FROM m").await, vec!["3"]);

    // `any`: the only owner is down, the write is acknowledged as a hint;
    // the coordinator holding it is killed, restarted, and delivers it.
    c.sql(None, "CREATE DATABASE single WITH REPLICATION 1 SHARDS 1")
        .await;
    // The first write makes the group; then its owner is killed.
    assert_eq!(c.write("single", "one", point(10)).await.0, 204);
    let owner: u64 = c
        .sql(
            None,
            "SELECT owners[1] FROM system.shards WHERE database = 'single'",
        )
        .await[0]
        .parse()
        .unwrap();
    c.kill_node(owner);
    let (status, body) = c.write("single", "one", point(11)).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("write failed"), "{body}");
    assert_eq!(c.write("single", "any", point(12)).await.0, 204);
    let queued = c
        .sql(
            None,
            &format!("SELECT entries FROM system.hinted_handoff WHERE node_id = {owner}"),
        )
        .await;
    assert_eq!(
        queued,
        vec!["2"],
        "the refused `one` write and the `any` one"
    );
    c.kill_coordinator();
    c.start_coordinator();
    c.start_node(owner);
    c.wait_node_state(owner, "up").await;
    c.wait_drained().await;
    // Hints go in order: 11 (not acknowledged, but queued) then 12.
    assert_eq!(c.sql(Some("single"), "SELECT seq FROM m").await, vec!["12"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repair_restores_a_lost_file_without_bringing_deleted_rows_back() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 2).await;
    c.sql(None, "CREATE DATABASE heal WITH REPLICATION 2").await;
    let second = 1_000_000_000i64;
    let points = |r: std::ops::Range<i64>| -> String {
        r.map(|p| format!("m,writer=w0 seq={p}i {}\n", BASE_NS + p * second))
            .collect()
    };
    assert_eq!(c.write("heal", "all", points(0..200)).await.0, 204);
    c.flush_node(1).await;
    c.flush_node(2).await;

    // A delete while node 2 is down: applied on node 1, queued for node 2
    // behind nothing, delivered when it is back.
    c.kill_node(2);
    c.sql(
        Some("heal"),
        &format!(
            "DELETE FROM m WHERE time >= {} AND time < {}",
            BASE_NS + 50 * second,
            BASE_NS + 100 * second
        ),
    )
    .await;
    c.start_node(2);
    c.wait_node_state(2, "up").await;
    c.wait_drained().await;
    assert_eq!(c.write("heal", "all", points(200..300)).await.0, 204);
    c.flush_node(1).await;
    c.flush_node(2).await;
    let agreed = c.replicas("heal").await;
    assert_eq!(assert_replicas_agree(&agreed, 2), vec![250]);

    // Node 2 loses the Parquet file holding points 0..200.
    c.kill_node(2);
    let mut files: Vec<PathBuf> = crate::support::walk(&tmp.path().join("storage-2/shards"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .collect();
    files.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    assert_eq!(files.len(), 2, "{files:?}");
    std::fs::remove_file(&files[0]).unwrap();
    c.start_node(2);
    c.wait_node_state(2, "up").await;
    let replicas = c.replicas("heal").await;
    let rows: Vec<&str> = replicas
        .iter()
        .map(|r| r.split('|').nth(2).unwrap())
        .collect();
    assert_eq!(rows, vec!["250", "100"], "{replicas:?}");

    // Compared per series range (one series: one range of 64 differs).
    let dry = c.admin_repair(&["--database", "heal", "--dry-run", "--split-rows", "10"]);
    assert!(dry.contains("150 to node 2"), "{dry}");
    assert!(dry.contains("1 of 64 ranges differed"), "{dry}");
    assert_eq!(
        c.replicas("heal").await,
        replicas,
        "a dry run writes nothing"
    );
    let report = c.admin_repair(&["--database", "heal"]);
    println!("{report}");
    assert!(report.contains("150 to node 2"), "{report}");
    assert!(report.contains("150 rows written"), "{report}");
    let repaired = c.replicas("heal").await;
    assert_eq!(assert_replicas_agree(&repaired, 2), vec![250]);
    // The deleted range stays deleted; the rest is back.
    let seqs: Vec<i64> = stored_points(&c, "heal")
        .await
        .iter()
        .map(|p| p.1)
        .collect();
    let expected: Vec<i64> = (0..50).chain(100..300).collect();
    assert_eq!(seqs, expected);
    // Repair times show; a second repair finds nothing to do.
    let times = c
        .sql(
            None,
            "SELECT count(*) FROM system.shard_replicas WHERE database = 'heal' \
             AND last_repair IS NOT NULL",
        )
        .await;
    assert_eq!(times, vec!["2"]);
    let again = c.admin_repair(&["--database", "heal"]);
    assert!(
        again.contains("0 with differences, 0 rows written"),
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removing_a_dead_node_restores_the_replication_factor_and_reads_stay_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = Cluster::start(tmp.path(), 3).await;
    c.sql(None, "CREATE DATABASE moved WITH REPLICATION 2 SHARDS 3")
        .await;
    // 600 points over many series, so every shard holds some.
    let body: String = (0..600)
        .map(|p| format!("m,writer=w{} seq={p}i {}\n", p % 30, BASE_NS + p * 1000))
        .collect();
    assert_eq!(c.write("moved", "all", body).await.0, 204);
    let count = "SELECT count(*) FROM m";
    assert_eq!(c.sql(Some("moved"), count).await, vec!["600"]);

    // A live node is not removed.
    let out = std::process::Command::new(crate::support::strata_bin())
        .env("STRATA_CLUSTER_SECRET", crate::support::TEST_CLUSTER_SECRET)
        .args([
            "admin",
            "node",
            "remove",
            "--catalog",
            &c.catalog,
            "--node-id",
            "3",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage node 3 is up; stop it"), "{err}");

    c.kill_node(3);
    c.wait_node_state(3, "down").await;
    // Queries keep answering every row while the node is removed.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reader = {
        let (flight, stop) = (c.flight.clone(), stop.clone());
        tokio::spawn(async move {
            let mut answers = vec![];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut s = SqlClient::connect(&flight, Some("moved".into()))
                    .await
                    .unwrap();
                answers.push(rows(&s.query(count).await.unwrap()));
            }
            answers
        })
    };
    let out = std::process::Command::new(crate::support::strata_bin())
        .env("STRATA_CLUSTER_SECRET", crate::support::TEST_CLUSTER_SECRET)
        .args([
            "admin",
            "node",
            "remove",
            "--catalog",
            &c.catalog,
            "--node-id",
            "3",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{report}");
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("storage node 3 removed"), "{report}");
    assert!(report.contains("rows copied"), "{report}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = reader.await.unwrap();
    assert!(!answers.is_empty());
    assert!(
        answers.iter().all(|a| a == &vec!["600".to_string()]),
        "{answers:?}"
    );

    // Every shard is back to two replicas, on the live nodes, agreeing.
    let owners = c
        .sql(
            None,
            "SELECT shard_id, owners FROM system.shards WHERE database = 'moved'",
        )
        .await;
    assert_eq!(owners.len(), 3);
    for o in &owners {
        let list = o.split_once('|').unwrap().1;
        assert!(!list.contains('3'), "{owners:?}");
        assert_eq!(list.matches(',').count(), 1, "two owners: {owners:?}");
    }
    let replicas = c.replicas("moved").await;
    let per_shard = assert_replicas_agree(&replicas, 2);
    assert_eq!(per_shard.iter().sum::<u64>(), 600);
    assert!(replicas.iter().all(|r| r.split('|').nth(1) != Some("3")));
    assert_eq!(c.sql(Some("moved"), count).await, vec!["600"]);
    let nodes = c
        .sql(None, "SELECT node_id FROM system.nodes ORDER BY node_id")
        .await;
    assert_eq!(nodes, vec!["1", "2"]);

    // The removed node, started again on its old data, is refused and says
    // why rather than serving unseen.
    let data = c.dir.join("storage-3");
    let mut again = std::process::Command::new(crate::support::strata_bin())
        .env("STRATA_CLUSTER_SECRET", crate::support::TEST_CLUSTER_SECRET)
        .args([
            "storage",
            "--node-id",
            "3",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--catalog",
            &c.catalog,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = again.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = again.kill();
            panic!("a removed node kept running");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut again.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("storage node 3 was removed from the cluster"),
        "{err}"
    );
    assert_eq!(
        c.sql(None, "SELECT node_id FROM system.nodes ORDER BY node_id")
            .await,
        vec!["1", "2"]
    );
}
