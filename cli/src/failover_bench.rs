//! `strata bench catalog-failover`: starts three catalog members, a storage
//! node and a coordinator as processes of this binary, runs `CREATE
//! DATABASE` in a loop over Flight SQL, kills the catalog leader (SIGKILL)
//! and prints the time from the kill to the next acknowledged DDL and how
//! many acknowledged DDL any member lacks afterwards (must be 0). Each round
//! restarts the member killed in the one before.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use strata_catalog::client::Members;
use strata_catalog::CatalogData;
use strata_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use strata_proto::catalog::v1::WatchRequest;

use crate::sql_client::SqlClient;

#[derive(Args)]
pub struct FailoverArgs {
    /// Leader kills to measure.
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// DDL time before each kill, in seconds.
    #[arg(long, default_value_t = 2.0)]
    before_s: f64,
    /// DDL time after the next acknowledged DDL, in seconds.
    #[arg(long, default_value_t = 1.0)]
    after_s: f64,
    /// Where the processes keep their data (default: a new temporary
    /// directory, removed afterwards).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

struct Process {
    child: Child,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `exe ARGS --addr-file FILE`, waits for its ready line and returns
/// the addresses it wrote.
fn spawn(
    exe: &Path,
    args: &[&str],
    addr_file: &Path,
) -> Result<(Process, serde_json::Value), String> {
    let _ = std::fs::remove_file(addr_file);
    let mut child = Command::new(exe)
        .args(args)
        .arg("--addr-file")
        .arg(addr_file)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start strata {args:?}: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let ready = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|l| l == "strata is ready");
    let process = Process { child };
    if !ready {
        return Err(format!("strata {args:?} exited before it was ready"));
    }
    let addrs = std::fs::read(addr_file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("strata {args:?} wrote no address file"))?;
    Ok((process, addrs))
}

/// A free port on localhost: a restarted member must come back on the
/// address the others know it by.
fn free_addr() -> Result<String, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.to_string())
}

/// A catalog member run as a process of `exe` (`strata`).
pub struct Member {
    pub id: u64,
    pub addr: String,
    exe: PathBuf,
    dir: PathBuf,
    join: Option<String>,
    process: Option<Process>,
}

impl Member {
    /// Starts (or restarts) the member on its address and data directory.
    pub fn start(&mut self) -> Result<(), String> {
        let data = self.dir.join(format!("catalog-{}", self.id));
        let id = self.id.to_string();
        let mut args = vec![
            "catalog",
            "--without-auth",
            "--node-id",
            &id,
            "--listen",
            &self.addr,
            "--data-dir",
            data.to_str().ok_or("the data directory is not UTF-8")?,
        ];
        match &self.join {
            Some(j) => args.extend(["--join", j.as_str()]),
            None => args.push("--bootstrap"),
        }
        let file = self.dir.join(format!("catalog-{}.json", self.id));
        let (p, _) = spawn(&self.exe, &args, &file)?;
        self.process = Some(p);
        Ok(())
    }

    /// SIGKILL, and waits for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.child.id())
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }
}

/// Three catalog members of `exe` on free ports under `dir`, started: the
/// first bootstraps, the others join it.
pub fn start_three(exe: &Path, dir: &Path) -> Result<Vec<Member>, String> {
    let seed = free_addr()?;
    let mut list = vec![];
    for id in 1..=3u64 {
        let mut m = Member {
            id,
            addr: if id == 1 { seed.clone() } else { free_addr()? },
            exe: exe.to_path_buf(),
            dir: dir.to_path_buf(),
            join: (id > 1).then(|| seed.clone()),
            process: None,
        };
        m.start()?;
        list.push(m);
    }
    Ok(list)
}

/// The members' addresses as `--catalog` takes them.
pub fn addr_list(list: &[Member]) -> String {
    list.iter()
        .map(|m| m.addr.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// The state a member applied (the first message of a watch on it), not
/// a read forwarded to the leader; `None` when it does not answer in 2 s.
pub async fn local_state(addr: &str) -> Option<CatalogData> {
    let mut c = CatalogServiceClient::connect(format!("http://{addr}"))
        .await
        .ok()?
        .max_decoding_message_size(256 << 20);
    let mut stream = tokio::time::timeout(
        Duration::from_secs(2),
        c.watch(WatchRequest { known_version: 0 }),
    )
    .await
    .ok()?
    .ok()?
    .into_inner();
    let state = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .ok()?
        .ok()??;
    serde_json::from_slice(&state.state_json).ok()
}

/// The index of the member that leads in the highest term, once one does
/// (within 30 s).
pub async fn leader(list: &[Member]) -> Option<usize> {
    let members = Members::parse(&addr_list(list)).ok()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let best = members
            .statuses(Duration::from_millis(500))
            .await
            .into_iter()
            .filter_map(|(addr, s)| s.ok().map(|s| (addr, s)))
            .filter(|(_, s)| s.role == "leader")
            .max_by_key(|(_, s)| s.term);
        if let Some(i) = best.and_then(|(addr, _)| list.iter().position(|m| m.addr == addr)) {
            return Some(i);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Acknowledged DDL any running member still lacks after up to 10 s.
async fn lost(list: &[Member], acknowledged: &BTreeSet<String>) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut missing = BTreeSet::new();
        for m in list.iter().filter(|m| m.is_running()) {
            let state = local_state(&m.addr).await.unwrap_or_default();
            missing.extend(
                acknowledged
                    .iter()
                    .filter(|n| !state.databases.contains_key(*n))
                    .cloned(),
            );
        }
        if missing.is_empty() || Instant::now() > deadline {
            return missing.len();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn run(a: FailoverArgs) -> Result<(), String> {
    let tmp;
    let dir = match &a.data_dir {
        Some(d) => {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile_dir()?;
            tmp.0.clone()
        }
    };
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let mut list = start_three(&exe, &dir)?;
    let addrs = addr_list(&list);
    let storage_dir = dir.join("storage");
    let (_storage, _) = spawn(
        &exe,
        &[
            "storage",
            "--without-auth",
            "--node-id",
            "1",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            storage_dir
                .to_str()
                .ok_or("the data directory is not UTF-8")?,
            "--catalog",
            &addrs,
        ],
        &dir.join("storage.json"),
    )?;
    let coordinator_dir = dir.join("coordinator");
    let (_coordinator, c) = spawn(
        &exe,
        &[
            "coordinator",
            "--without-auth",
            "--data-dir",
            coordinator_dir
                .to_str()
                .ok_or("data directory is not UTF-8")?,
            "--http-addr",
            "127.0.0.1:0",
            "--flight-addr",
            "127.0.0.1:0",
            "--catalog",
            &addrs,
        ],
        &dir.join("coordinator.json"),
    )?;
    let flight = c["flight"].as_str().ok_or("no Flight address")?.to_string();
    println!("catalog {addrs}; coordinator Flight SQL {flight}");
    println!("round  killed  next_ddl_ms  acknowledged  failed  lost");

    let mut gaps = vec![];
    let mut total_lost = 0;
    let mut killed: Option<usize> = None;
    for round in 1..=a.rounds {
        if let Some(k) = killed.take() {
            list[k].start()?;
        }
        let acknowledged = Arc::new(Mutex::new(Vec::<(String, Instant, Instant)>::new()));
        let failed = Arc::new(Mutex::new(Vec::<String>::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut sql = SqlClient::connect(&flight, None)
            .await
            .map_err(|e| e.to_string())?;
        let task = {
            let (acknowledged, failed, stop) = (acknowledged.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("r{round}_{i}");
                    let sent = Instant::now();
                    match sql.query(&format!("CREATE DATABASE {name}")).await {
                        Ok(_) => acknowledged
                            .lock()
                            .unwrap()
                            .push((name, sent, Instant::now())),
                        Err(e) => failed.lock().unwrap().push(format!("{name}: {e}")),
                    }
                    i += 1;
                }
            })
        };
        tokio::time::sleep(Duration::from_secs_f64(a.before_s)).await;
        let victim = leader(&list).await.ok_or("no catalog leader within 30 s")?;
        let killed_at = Instant::now();
        list[victim].kill9();
        killed = Some(victim);
        let gap = loop {
            let next = acknowledged
                .lock()
                .unwrap()
                .iter()
                // The first DDL sent after the kill: one in flight may
                // have been committed just before it.
                .find(|(_, sent, _)| *sent > killed_at)
                .map(|(_, _, at)| *at - killed_at);
            if let Some(g) = next {
                break Some(g);
            }
            if killed_at.elapsed() > Duration::from_secs(60) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        tokio::time::sleep(Duration::from_secs_f64(a.after_s)).await;
        stop.store(true, Ordering::Relaxed);
        let _ = task.await;
        let names: BTreeSet<String> = acknowledged
            .lock()
            .unwrap()
            .iter()
            .map(|(n, _, _)| n.clone())
            .collect();
        let lost_now = lost(&list, &names).await;
        total_lost += lost_now;
        let failed = failed.lock().unwrap().clone();
        println!(
            "{round:>5}  {:>6}  {:>11}  {:>12}  {:>6}  {lost_now:>4}",
            list[victim].id,
            gap.map(|g| format!("{:.0}", g.as_secs_f64() * 1e3))
                .unwrap_or_else(|| "none".into()),
            names.len(),
            failed.len(),
        );
        for f in failed.iter().take(3) {
            println!("       failed: {f}");
        }
        if let Some(g) = gap {
            gaps.push(g);
        }
    }
    gaps.sort();
    if !gaps.is_empty() {
        println!(
            "kill to next acknowledged DDL: median {:.0} ms, max {:.0} ms over {} kills; acknowledged DDL lost: {total_lost}",
            gaps[gaps.len() / 2].as_secs_f64() * 1e3,
            gaps[gaps.len() - 1].as_secs_f64() * 1e3,
            gaps.len()
        );
    }
    if total_lost > 0 {
        return Err(format!("{total_lost} acknowledged DDL lost"));
    }
    Ok(())
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<TempDir, String> {
    let dir = std::env::temp_dir().join(format!(
        "strata-failover-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    ));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(TempDir(dir))
}
