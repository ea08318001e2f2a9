//! Test support: a dev cluster on port 0 in a temporary directory, an HTTP
//! client for writes and a Flight SQL client for queries.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use arrow::array::RecordBatch;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use strata::dev::{DevCluster, DevConfig};
use strata::sql_client::SqlClient;

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub cluster: Option<DevCluster>,
    pub http: reqwest::Client,
}

impl TestCluster {
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// A cluster whose configuration `adjust` changed first.
    pub async fn start_with(adjust: impl FnOnce(&mut DevConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = DevConfig::ephemeral(dir.path());
        adjust(&mut config);
        let cluster = DevCluster::start(config).await.expect("dev cluster starts");
        Self {
            dir,
            cluster: Some(cluster),
            http: reqwest::Client::new(),
        }
    }

    pub fn cluster(&self) -> &DevCluster {
        self.cluster.as_ref().expect("cluster running")
    }

    /// Stops the cluster cleanly and starts it again on the same directory.
    pub async fn restart(&mut self) {
        self.cluster
            .take()
            .expect("cluster running")
            .shutdown()
            .await;
        let cluster = DevCluster::start(DevConfig::ephemeral(self.dir.path()))
            .await
            .expect("dev cluster restarts");
        self.cluster = Some(cluster);
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.cluster().coordinator.http_addr())
    }

    /// POSTs line protocol to `/write`; returns the status and body.
    pub async fn write(&self, db: &str, precision: &str, body: &str) -> (u16, String) {
        let url = self.http_url(&format!("/write?db={db}&precision={precision}"));
        post(&self.http, &url, body.as_bytes().to_vec(), None).await
    }

    pub async fn sql(&self, database: Option<&str>) -> SqlClient {
        let addr = self.cluster().coordinator.flight_addr().to_string();
        SqlClient::connect(&addr, database.map(str::to_string))
            .await
            .expect("flight sql connects")
    }

    /// `CREATE DATABASE <db> <options>`, which must succeed.
    pub async fn create_database(&self, db: &str, options: &str) {
        self.sql(None)
            .await
            .query(&format!("CREATE DATABASE {db} {options}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {db} {options}: {e}"));
    }

    /// Runs `sql` in `db` and returns rows as `a|b|c` strings.
    pub async fn query(&self, db: &str, sql: &str) -> Vec<String> {
        let mut c = self.sql(Some(db)).await;
        let batches = c
            .query(sql)
            .await
            .unwrap_or_else(|e| panic!("query failed: {sql}: {e}"));
        rows(&batches)
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs `q` over HTTP (`/api/v3/query_sql`, JSON body); returns the status
/// and body.
pub async fn sql_status(c: &TestCluster, db: Option<&str>, q: &str) -> (u16, String) {
    let mut body = serde_json::json!({ "q": q });
    if let Some(db) = db {
        body["db"] = db.into();
    }
    let resp = c
        .http
        .post(c.http_url("/api/v3/query_sql"))
        .header("Content-Type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("HTTP");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

pub async fn post(
    client: &reqwest::Client,
    url: &str,
    body: Vec<u8>,
    encoding: Option<&str>,
) -> (u16, String) {
    let mut req = client.post(url).body(body);
    if let Some(e) = encoding {
        req = req.header("Content-Encoding", e);
    }
    let resp = req.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Rows of `batches` as `|`-joined display strings.
pub fn rows(batches: &[RecordBatch]) -> Vec<String> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut out = vec![];
    for b in batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).expect("formatter"))
            .collect();
        for r in 0..b.num_rows() {
            out.push(
                fmts.iter()
                    .map(|f| f.value(r).to_string())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    out
}

/// TSBS-like cpu rows with values derived from (host, step) so tests can
/// compute the expected answers.
pub struct CpuData {
    pub hosts: usize,
    pub start_s: i64,
    pub interval_s: i64,
    pub steps: usize,
}

impl CpuData {
    pub fn usage_user(host: usize, step: usize) -> i64 {
        ((host * 37 + step * 11) % 100) as i64
    }

    pub fn usage_system(host: usize, step: usize) -> i64 {
        ((host * 13 + step * 7) % 50) as i64
    }

    pub fn time_s(&self, step: usize) -> i64 {
        self.start_s + step as i64 * self.interval_s
    }

    /// Line protocol for steps `range`, all hosts, seconds precision.
    pub fn lines(&self, range: std::ops::Range<usize>) -> String {
        let mut s = String::new();
        for step in range {
            for h in 0..self.hosts {
                s.push_str(&format!(
                    "cpu,hostname=host_{h},region=region_{},datacenter=dc_{} usage_user={}i,usage_system={}i,usage_idle={}.5 {}\n",
                    h % 3,
                    h % 5,
                    Self::usage_user(h, step),
                    Self::usage_system(h, step),
                    100 - Self::usage_user(h, step),
                    self.time_s(step)
                ));
            }
        }
        s
    }
}

/// Path of the `strata` binary built for these tests.
/// The cluster secret of the clusters tests start from separate
/// processes (their coordinators run `--without-auth`: open to clients,
/// while calls between roles carry the secret).
pub const TEST_CLUSTER_SECRET: &str = "test-cluster-secret-0123456789";

pub fn strata_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_strata"))
}

/// A `strata` server child process, killed on drop.
pub struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Runs `strata ARGS --addr-file FILE`, waits for its ready line and
    /// returns the addresses it wrote.
    pub fn start(args: &[&str], addr_file: &Path) -> (Self, serde_json::Value) {
        let _ = std::fs::remove_file(addr_file);
        let mut child = Command::new(strata_bin())
            .args(args)
            .env("STRATA_CLUSTER_SECRET", TEST_CLUSTER_SECRET)
            .arg("--addr-file")
            .arg(addr_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn strata");
        let stdout = child.stdout.take().expect("stdout");
        let ready = BufReader::new(stdout)
            .lines()
            .any(|l| l.expect("read stdout") == "strata is ready");
        assert!(ready, "strata {args:?} exited before it was ready");
        let addrs = serde_json::from_slice(&std::fs::read(addr_file).expect("addr file"))
            .expect("addr file is JSON");
        (Self { child }, addrs)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A line of `/proc/PID/status` in MiB (`VmHWM`: peak RSS, `VmRSS`).
    pub fn status_mib(&self, key: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the process is running");
        status
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib / 1024)
            .expect("the status line is there")
    }

    /// Resets the peak RSS (`VmHWM`) to the current RSS.
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").expect("clear_refs");
    }

    pub fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir` (none if it does not exist).
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// The line numbers of a partial write's `line_errors`.
pub fn error_lines(answer: &serde_json::Value) -> Vec<u64> {
    answer["line_errors"]
        .as_array()
        .expect("line_errors is a list")
        .iter()
        .map(|e| e["line"].as_u64().expect("a line number"))
        .collect()
}
