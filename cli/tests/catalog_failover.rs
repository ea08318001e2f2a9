//! Three catalog processes, a storage node and two coordinators: the
//! catalog leader is killed (`kill -9`) and later paused (`SIGSTOP`) while
//! DDL and writes run; a new leader serves, nothing acknowledged is lost on
//! any member, stopped members catch up, and writers racing to open one
//! time window get exactly one shard group.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata::failover_bench::{self, local_state, Member};
use strata::sql_client::SqlClient;

use crate::support::{post, ServerProcess};

/// Sends `signal` (`-STOP`, `-CONT`) to a running member.
fn signal(member: &Member, signal: &str) {
    let pid = member.pid().expect("running").to_string();
    let ok = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {signal} {pid}");
}

/// Waits until the member at `addr` holds every database in `names`.
async fn wait_for_databases(addr: &str, names: &BTreeSet<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing: Vec<String> = match local_state(addr).await {
            Some(s) => names
                .iter()
                .filter(|n| !s.databases.contains_key(*n))
                .cloned()
                .collect(),
            None => vec!["(no answer)".to_string()],
        };
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "catalog member {addr} lacks acknowledged databases {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The index of the member that leads in the highest term.
async fn leader(members: &[Member]) -> usize {
    failover_bench::leader(members)
        .await
        .expect("a catalog leader within 30 s")
}

/// Runs `CREATE DATABASE` statements one after another until told to stop,
/// recording each acknowledged one with the time it was acknowledged.
struct DdlStream {
    acknowledged: Arc<Mutex<Vec<(String, Instant)>>>,
    failed: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl DdlStream {
    async fn start(flight: &str, prefix: &str) -> Self {
        let mut sql = SqlClient::connect(flight, None).await.unwrap();
        let acknowledged = Arc::new(Mutex::new(vec![]));
        let failed = Arc::new(Mutex::new(vec![]));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (acknowledged, failed, stop) = (acknowledged.clone(), failed.clone(), stop.clone());
            let prefix = prefix.to_string();
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let name = format!("{prefix}_{i}");
                    match sql.query(&format!("CREATE DATABASE {name}")).await {
                        Ok(_) => acknowledged.lock().unwrap().push((name, Instant::now())),
                        Err(e) => failed.lock().unwrap().push(format!("{name}: {e}")),
                    }
                    i += 1;
                }
            })
        };
        Self {
            acknowledged,
            failed,
            stop,
            task,
        }
    }

    /// Waits for the first DDL acknowledged after `t`; returns how long
    /// after `t` it was.
    async fn next_after(&self, t: Instant) -> Duration {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((_, at)) = self
                .acknowledged
                .lock()
                .unwrap()
                .iter()
                .find(|(_, at)| *at > t)
            {
                return *at - t;
            }
            assert!(
                Instant::now() < deadline,
                "no DDL acknowledged within 60 s of the leader's loss; failures: {:?}",
                self.failed.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> (BTreeSet<String>, Vec<String>) {
        // A few more after the change, then stop.
        let n = self.acknowledged.lock().unwrap().len();
        while self.acknowledged.lock().unwrap().len() < n + 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        let names = self
            .acknowledged
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _)| n.clone())
            .collect();
        let failed = self.failed.lock().unwrap().clone();
        (names, failed)
    }
}

fn start_role(dir: &Path, name: &str, args: &[&str]) -> (ServerProcess, serde_json::Value) {
    ServerProcess::start(args, &dir.join(format!("{name}.json")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_catalog_survives_its_leader_killed_or_paused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut members = failover_bench::start_three(&crate::support::strata_bin(), dir).unwrap();
    let list = failover_bench::addr_list(&members);
    let storage_dir = dir.join("storage");
    let (_storage, _) = start_role(
        dir,
        "storage",
        &[
            "storage",
            "--node-id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            storage_dir.to_str().unwrap(),
            "--catalog",
            &list,
        ],
    );
    let coordinator = |name: &str| {
        let data = dir.join(name);
        start_role(
            dir,
            name,
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
                &list,
            ],
        )
    };
    let (_c1, c1) = coordinator("coordinator-1");
    let (_c2, c2) = coordinator("coordinator-2");
    let flight = c1["flight"].as_str().unwrap().to_string();
    let https = [
        c1["http"].as_str().unwrap().to_string(),
        c2["http"].as_str().unwrap().to_string(),
    ];

    // 1. kill -9 the leader in the middle of a stream of DDL.
    let ddl = DdlStream::start(&flight, "killed").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old = leader(&members).await;
    let killed_at = Instant::now();
    members[old].kill9();
    let gap = ddl.next_after(killed_at).await;
    println!("leader killed: next DDL acknowledged after {gap:?}");
    let (acknowledged, failed) = ddl.finish().await;
    println!(
        "{} DDL acknowledged, {} failed: {failed:?}",
        acknowledged.len(),
        failed.len()
    );
    for (i, m) in members.iter().enumerate() {
        if i != old {
            wait_for_databases(&m.addr, &acknowledged).await;
        }
    }
    // The killed member restarts and catches up.
    members[old].start().unwrap();
    wait_for_databases(&members[old].addr, &acknowledged).await;
    let mut all = acknowledged;

    // 2. The same with the leader paused instead: it is cut off with its
    // sockets open, then resumes believing it leads.
    let ddl = DdlStream::start(&flight, "paused").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused = leader(&members).await;
    let paused_at = Instant::now();
    signal(&members[paused], "-STOP");
    let gap = ddl.next_after(paused_at).await;
    println!("leader paused: next DDL acknowledged after {gap:?}");
    let (acknowledged, failed) = ddl.finish().await;
    println!(
        "{} DDL acknowledged, {} failed: {failed:?}",
        acknowledged.len(),
        failed.len()
    );
    signal(&members[paused], "-CONT");
    all.extend(acknowledged);
    for m in &members {
        wait_for_databases(&m.addr, &all).await;
    }
    let now_leading = leader(&members).await;
    assert_ne!(
        now_leading, paused,
        "the paused leader was replaced while it was stopped"
    );

    // 3. Eight writers through two coordinators open the same new time
    // window while the leader is killed: one shard group.
    let http = reqwest::Client::new();
    let (status, body) = post(
        &http,
        &format!("http://{}/write?db=race&precision=s", https[0]),
        b"m,w=setup v=0 1000000000\n".to_vec(),
        None,
    )
    .await;
    assert_eq!(status, 204, "{body}");
    // A window with no group yet (groups of a database without retention
    // are a week wide).
    let window_s = 1_000_000_000i64 + 30 * 86_400;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let url = format!("http://{}/write?db=race&precision=s", https[w % 2]);
            let http = http.clone();
            tokio::spawn(async move {
                let body = format!("m,w=w{w} v={w} {}\n", window_s + w as i64);
                post(&http, &url, body.into_bytes(), None).await
            })
        })
        .collect();
    let victim = leader(&members).await;
    members[victim].kill9();
    for w in writers {
        let (status, body) = w.await.unwrap();
        assert_eq!(status, 204, "a racing write failed: {body}");
    }
    let alive = members.iter().find(|m| m.is_running()).unwrap();
    let state = local_state(&alive.addr).await.expect("a member answers");
    let groups: Vec<_> = state.databases["race"]
        .shard_groups
        .iter()
        .filter(|g| g.start_ns <= window_s * 1_000_000_000 && window_s * 1_000_000_000 < g.end_ns)
        .collect();
    assert_eq!(groups.len(), 1, "shard groups for one window: {groups:?}");
    let mut sql = SqlClient::connect(&flight, Some("race".to_string()))
        .await
        .unwrap();
    let batches = sql
        .query("SELECT count(*) FROM m WHERE w <> 'setup'")
        .await
        .unwrap();
    assert_eq!(crate::support::rows(&batches), vec!["8"]);
}
