//! Operating a cluster: queries over their memory limit spill or fail with
//! an error naming the limit while the server stays up; `KILL QUERY`, a
//! statement timeout and a client going away each stop the query's
//! fragments on the storage nodes (watched in `system.fragments`);
//! `system.queries` shows running and finished queries.

use std::time::{Duration, Instant};

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::StreamExt;
use strata_storage::memory::MemoryLimits;
use tonic::transport::Endpoint;

use crate::support::{rows, TestCluster};

/// Rows of the table the tests query, each with a string of [`WIDTH`]
/// bytes: 40 MB, more than the buffers between the nodes and a client
/// that stops reading hold (HTTP/2 windows and send buffers, a few MB a
/// stream), so a query whose client reads one batch keeps running.
const ROWS: usize = 100_000;
const WIDTH: usize = 400;

async fn loaded(adjust: impl FnOnce(&mut strata::dev::DevConfig)) -> TestCluster {
    let c = TestCluster::start_with(adjust).await;
    c.create_database("ops", "").await;
    let base = 1_700_000_000_000_000_000i64;
    let pad = "x".repeat(WIDTH);
    for chunk in 0..(ROWS / 10_000) {
        let body: String = (chunk * 10_000..(chunk + 1) * 10_000)
            .map(|i| {
                format!(
                    "m,host=h{} s=\"{i:08}{pad}\",v={i}i {}\n",
                    i % 50,
                    base + i as i64 * 1_000_000
                )
            })
            .collect();
        let (status, text) = c.write("ops", "ns", &body).await;
        assert_eq!(status, 204, "{text}");
    }
    c
}

/// A Flight SQL client of the coordinator with `database` set, whose
/// errors keep their gRPC status.
async fn raw_client(
    c: &TestCluster,
    database: &str,
) -> FlightSqlServiceClient<tonic::transport::Channel> {
    let addr = c.cluster().coordinator.flight_addr();
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightSqlServiceClient::new(channel);
    client.set_header("database", database);
    client
}

/// Starts `sql` over Flight SQL and reads its first batch; the stream is
/// returned unread beyond that.
async fn start_held(c: &TestCluster, sql: &str) -> FlightRecordBatchStream {
    let mut client = raw_client(c, "ops").await;
    let info = client.execute(sql.to_string(), None).await.unwrap();
    let ticket = info.endpoint[0].ticket.clone().unwrap();
    let mut stream = client.do_get(ticket).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.num_rows() > 0);
    stream
}

/// Reads `held` to its error: the message and the stable code the
/// status carries in `strata-error-code`.
async fn error_of(mut held: FlightRecordBatchStream) -> (String, String) {
    while let Some(item) = held.next().await {
        if let Err(e) = item {
            let code = match &e {
                arrow_flight::error::FlightError::Tonic(s) => s
                    .metadata()
                    .get("strata-error-code")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default(),
                _ => String::new(),
            };
            return (e.to_string(), code);
        }
    }
    panic!("the stream ended without an error");
}

/// The id of the running query whose text is `sql`.
async fn running_id(c: &TestCluster, sql: &str) -> String {
    let q = format!(
        "SELECT query_id FROM system.queries WHERE state = 'running' AND query_text = '{}'",
        sql.replace('\'', "''")
    );
    let ids = c.query("ops", &q).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    ids[0].clone()
}

async fn fragments_of(c: &TestCluster, id: &str) -> usize {
    c.query(
        "ops",
        &format!("SELECT count(*) FROM system.fragments WHERE query_id = '{id}'"),
    )
    .await[0]
        .parse()
        .unwrap()
}

/// Waits until no storage node runs a fragment of `id`; how long it took.
async fn fragments_gone(c: &TestCluster, id: &str) -> Duration {
    let started = Instant::now();
    while fragments_of(c, id).await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "fragments of {id} still run"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// The state and error `system.queries` recorded for `id`.
async fn ended_as(c: &TestCluster, id: &str) -> String {
    let q = format!("SELECT state, error FROM system.queries WHERE query_id = '{id}'");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c.query("ops", &q).await;
        if r.len() == 1 && !r[0].starts_with("running") {
            return r[0].clone();
        }
        assert!(Instant::now() < deadline, "{id} still runs: {r:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_timeout_and_a_client_going_away_stop_the_work_on_the_nodes() {
    let c = loaded(|_| {}).await;

    // KILL QUERY.
    let sql = "SELECT * FROM m";
    let held = start_held(&c, sql).await;
    let id = running_id(&c, sql).await;
    assert!(
        fragments_of(&c, &id).await > 0,
        "the query runs on the nodes"
    );
    let listed = c
        .query(
            "ops",
            &format!("SELECT strategy, rows > 0 FROM system.queries WHERE query_id = '{id}'"),
        )
        .await;
    assert_eq!(listed, vec!["fan-out|true"]);
    c.query("ops", &format!("KILL QUERY '{id}'")).await;
    let took = fragments_gone(&c, &id).await;
    println!("KILL QUERY: fragments gone from the nodes after {took:?}");
    let (error, code) = error_of(held).await;
    assert!(error.contains("killed (KILL QUERY)"), "{error}");
    assert_eq!(code, "query_cancelled");
    let ended = ended_as(&c, &id).await;
    assert!(ended.starts_with("cancelled|"), "{ended}");
    assert!(ended.contains("killed"), "{ended}");

    // A statement timeout, while the client reads nothing.
    let sql = "/*+ strata.statement_timeout = '1s' */ SELECT * FROM m WHERE v >= 0";
    let held = start_held(&c, sql).await;
    let id = running_id(&c, sql).await;
    assert!(fragments_of(&c, &id).await > 0);
    let took = fragments_gone(&c, &id).await;
    println!("timeout of 1s: fragments gone after {took:?} (from the first batch)");
    let (error, code) = error_of(held).await;
    assert!(
        error.contains("timeout of 1s (strata.statement_timeout)"),
        "{error}"
    );
    assert_eq!(code, "query_timeout");

    // The client goes away mid-stream.
    let sql = "SELECT s, v FROM m";
    let held = start_held(&c, sql).await;
    let id = running_id(&c, sql).await;
    assert!(fragments_of(&c, &id).await > 0);
    drop(held);
    let took = fragments_gone(&c, &id).await;
    println!("client gone: fragments gone after {took:?}");
    let ended = ended_as(&c, &id).await;
    assert!(ended.starts_with("cancelled|"), "{ended}");

    // Killing what does not run says so.
    let mut client = c.sql(Some("ops")).await;
    let e = client
        .query("KILL QUERY 'no-such-query'")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("no query 'no-such-query' is running"), "{e}");
    // Finished queries stay listed with their rows.
    let done = c
        .query(
            "ops",
            "SELECT state, rows FROM system.queries WHERE query_text = 'SELECT count(*) FROM m' ",
        )
        .await;
    assert!(done.is_empty(), "{done:?}");
    c.query("ops", "SELECT count(*) FROM m").await;
    let done = c
        .query(
            "ops",
            "SELECT state, rows, strategy FROM system.queries \
             WHERE query_text = 'SELECT count(*) FROM m'",
        )
        .await;
    assert_eq!(done, vec!["finished|1|fan-out-aggregate"]);

    // Errors carry stable codes: in the HTTP JSON body and in gRPC
    // metadata.
    for (q, code, status) in [
        ("SELECT * FROM nope", "table_not_found", 404),
        ("SELEC 1", "invalid_query", 400),
        ("KILL QUERY", "invalid_statement", 400),
    ] {
        let (got, body) = crate::support::sql_status(&c, Some("ops"), q).await;
        let body: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (got, body["code"].as_str().unwrap()),
            (status, code),
            "{q}: {body}"
        );
    }
    let mut raw = raw_client(&c, "nodb").await;
    let e = raw
        .execute("SELECT * FROM m".into(), None)
        .await
        .unwrap_err();
    let arrow_flight::error::FlightError::Tonic(status) = e else {
        panic!("{e:?}")
    };
    assert_eq!(
        status.metadata().get("strata-error-code").unwrap(),
        "database_not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_query_over_its_memory_limit_spills_or_fails_naming_the_limit() {
    let c = loaded(|config| {
        config.query_memory = MemoryLimits {
            per_query: Some(4 << 20),
            total: Some(64 << 20),
        };
    })
    .await;
    // An aggregate that cannot spill: refused, naming the limit.
    let mut client = c.sql(Some("ops")).await;
    let e = client
        .query("SELECT array_agg(s) FROM m")
        .await
        .unwrap_err()
        .to_string();
    println!("array_agg: {e}");
    assert!(e.contains("memory limit of 4.0 MiB"), "{e}");
    // A sort of every row when one batch alone is over the limit: fails
    // naming it.
    let e = client
        .query("SELECT v FROM m ORDER BY s DESC")
        .await
        .unwrap_err()
        .to_string();
    println!("sort: {e}");
    assert!(e.contains("memory limit of 4.0 MiB"), "{e}");
    // Narrow rows, more of them than the limit holds on a node (600,000
    // rows of 48 bytes, 10 MB a node) while a batch is small: the sorts
    // spill to disk and the answer is whole and ordered. (The merge of
    // the nodes' sorted streams on the coordinator holds a batch per
    // stream, and cannot spill: it gets 8 MiB.)
    const NARROW: usize = 600_000;
    let pad = "y".repeat(32);
    for chunk in 0..NARROW / 50_000 {
        let body: String = (chunk * 50_000..(chunk + 1) * 50_000)
            .map(|i| format!("n,host=h{} s=\"{i:08}{pad}\",v={i}i {}\n", i % 50, i + 1))
            .collect();
        assert_eq!(c.write("ops", "s", &body).await.0, 204);
    }
    let hint = "/*+ strata.memory_limit_mib = 8 */";
    let sort = format!("{hint} SELECT v FROM n ORDER BY s DESC");
    let batches = client.query(&sort).await.unwrap();
    let vs = rows(&batches);
    assert_eq!(vs.len(), NARROW);
    assert_eq!(vs[0], (NARROW - 1).to_string());
    assert_eq!(vs[NARROW - 1], "0");
    let plan = rows(
        &client
            .query(&format!(
                "{hint} EXPLAIN ANALYZE SELECT v FROM n ORDER BY s DESC"
            ))
            .await
            .unwrap(),
    )
    .join("\n");
    println!("{plan}");
    assert!(
        plan.contains("spilled_bytes@node"),
        "the nodes spilled: {plan}"
    );
    // A statement may raise its own limit.
    let r = client
        .query("/*+ strata.memory_limit_mib = 512 */ SELECT cardinality(array_agg(s)) FROM m")
        .await
        .unwrap();
    assert_eq!(rows(&r), vec![ROWS.to_string()]);
    // And the server answers as before.
    assert_eq!(
        c.query("ops", "SELECT count(*) FROM m").await,
        vec![ROWS.to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn heavy_queries_do_not_hold_up_heartbeats_or_writes() {
    // Nodes are marked down after 1 s without a heartbeat.
    let c = TestCluster::start_with(|config| {
        config.heartbeat_interval = Duration::from_millis(200);
        config.heartbeat_timeout = Duration::from_secs(1);
    })
    .await;
    c.create_database("ops", "").await;
    let body: String = (0..20_000)
        .map(|i| format!("w,host=h{} v={i}i {}\n", i % 50, i + 1))
        .collect();
    assert_eq!(c.write("ops", "s", &body).await.0, 204);
    let catalog = strata_catalog::CatalogClient::connect(
        &c.cluster().addrs().catalog,
        Duration::from_secs(5),
    )
    .await
    .unwrap();

    // Nested-loop joins of 400 million pairs, more of them than there are
    // query threads, each stopped by its timeout.
    let heavy = "/*+ strata.statement_timeout = '4s' */ \
                 SELECT count(*) FROM w a, w b WHERE a.v + b.v = 7";
    let mut queries = vec![];
    for _ in 0..4 {
        let mut client = c.sql(Some("ops")).await;
        queries.push(tokio::spawn(async move { client.query(heavy).await }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = vec![];
    let started = Instant::now();
    let mut step = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let lines: String = (0..100)
            .map(|i| format!("w2,host=h{i} v={step}i {}\n", step + 1))
            .collect();
        let at = Instant::now();
        let (status, text) = c.write("ops", "s", &lines).await;
        latencies.push(at.elapsed());
        assert_eq!(status, 204, "{text}");
        let state = catalog.state();
        let down: Vec<u64> = state
            .nodes
            .values()
            .filter(|n| n.state != strata_catalog::model::NodeState::Up)
            .map(|n| n.id)
            .collect();
        assert!(down.is_empty(), "nodes {down:?} were marked down");
        step += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The heavy queries ran all along: each ended at its timeout.
    for q in queries {
        let e = q.await.unwrap().unwrap_err().to_string();
        assert!(e.contains("timeout of 4s"), "{e}");
    }
    latencies.sort();
    println!(
        "{} writes while 4 CPU-bound queries ran: median {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    assert_eq!(
        c.query("ops", "SELECT count(*) FROM w2").await,
        vec![(latencies.len() * 100).to_string()]
    );
}

/// The value of the sample `series` (name and labels as rendered).
fn sample(text: &str, series: &str) -> f64 {
    find(text, series).unwrap_or_else(|| panic!("no {series} in:\n{text}"))
}

fn find(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

async fn scrape(http: &reqwest::Client, addr: &str) -> String {
    let resp = http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    resp.text().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_move_after_a_load_and_a_query() {
    let c = TestCluster::start().await;
    c.create_database("met", "").await;
    let addrs = c.cluster().addrs();
    let http = reqwest::Client::new();
    let coordinator = addrs.http.to_string();
    // Storage nodes and catalog members answer on their gRPC port.
    let node = addrs.storage[0].to_string();
    let member = addrs.catalog.split(',').next().unwrap().to_string();

    // Every test of this binary shares the process's registry: counters
    // are compared before and after, never to absolute values.
    let written = "strata_write_lines_total{result=\"written\"}";
    let requests = "strata_write_requests_total{status=\"204\"}";
    let before = scrape(&http, &coordinator).await;
    let body: String = (0..1000)
        .map(|i| format!("cpu,host=h{} v={i} {}\n", i % 10, i + 1))
        .collect();
    assert_eq!(c.write("met", "s", &body).await.0, 204);
    assert_eq!(
        c.query("met", "SELECT count(*) FROM cpu").await,
        vec!["1000"]
    );
    let after = scrape(&http, &coordinator).await;
    // A counter appears with its first count.
    let was = find(&before, written).unwrap_or(0.0);
    assert!(sample(&after, written) >= was + 1000.0);
    assert!(sample(&after, requests) > 0.0);
    assert!(sample(&after, "strata_write_duration_seconds_count") > 0.0);
    let q = "strata_queries_total{strategy=\"fan-out-aggregate\",state=\"finished\"}";
    assert!(sample(&after, q) >= 1.0, "{after}");
    assert!(sample(&after, "strata_query_bytes_shipped_total") > 0.0);
    assert!(after.contains("# TYPE strata_query_duration_seconds histogram"));

    let n = scrape(&http, &node).await;
    assert!(
        sample(&n, "strata_wal_fsync_duration_seconds_count{node=\"1\"}") > 0.0,
        "{n}"
    );
    assert!(sample(&n, "strata_storage_rows_written_total{node=\"1\"}") > 0.0);
    assert!(n.contains("strata_memtable_bytes{node=\"1\"}"));

    let m = scrape(&http, &member).await;
    assert!(sample(&m, "strata_raft_term{member=\"1\"}") >= 1.0, "{m}");
    assert_eq!(sample(&m, "strata_raft_is_leader{member=\"1\"}"), 1.0);
    assert!(sample(&m, "strata_raft_last_applied_index{member=\"1\"}") > 0.0);
}

/// With a storage node down and its shards on no other replica, a query
/// fails by default naming the shards and the node; with
/// `strata.completeness = 'best_effort'` it answers from the other shards
/// and names the missing ones: in the Flight stream's last app_metadata
/// (which `strata sql` prints) and in HTTP headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn best_effort_answers_name_the_missing_shards_and_strict_ones_fail() {
    let mut c = TestCluster::start().await;
    c.create_database("partial", "WITH REPLICATION 1 SHARDS 3")
        .await;
    let body: String = (0..300)
        .map(|i| format!("m,host=h{i} v={i}i 1700000000000000000\n"))
        .collect();
    let (status, text) = c.write("partial", "ns", &body).await;
    assert_eq!(status, 204, "{text}");
    // The shard on node 1.
    let mut sql = c.sql(Some("partial")).await;
    let on_node_1 = rows(
        &sql.query("SELECT shard_id FROM system.shards WHERE database = 'partial' AND array_has(owners, arrow_cast(1, 'UInt64'))")
            .await
            .unwrap(),
    );
    assert_eq!(on_node_1.len(), 1, "{on_node_1:?}");
    let shard = on_node_1[0].clone();
    let node = c.cluster.as_mut().unwrap().storage.remove(0);
    node.shutdown().await;

    let strict = sql.query("SELECT count(*) FROM m").await.unwrap_err().0;
    assert!(
        strict.contains(&format!("no replica of shards [{shard}]")) && strict.contains("node 1"),
        "{strict}"
    );

    let best_effort = "/*+ strata.completeness = 'best_effort' */ SELECT count(*) AS n FROM m";
    let answer = rows(&sql.query(best_effort).await.unwrap());
    let n: usize = answer[0].parse().unwrap();
    assert!(n > 0 && n < 300, "{answer:?}");
    let warning = sql
        .warning()
        .expect("the answer names what it lacks")
        .to_string();
    assert!(
        warning.contains(&format!("left out: {shard}")) && warning.contains("node 1"),
        "{warning}"
    );

    let resp = c
        .http
        .get(c.http_url("/api/v3/query_sql"))
        .query(&[("db", "partial"), ("q", best_effort)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["strata-missing-shards"].to_str().unwrap(),
        shard
    );
    assert!(resp.headers()["strata-warning"]
        .to_str()
        .unwrap()
        .contains("best_effort"));
    let body: serde_json::Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
    assert_eq!(body[0]["n"].as_u64().unwrap() as usize, n);

    // A setting strata does not know is refused.
    let bad = sql
        .query("/*+ strata.completeness = 'most' */ SELECT 1")
        .await
        .unwrap_err()
        .0;
    assert!(bad.contains("best_effort"), "{bad}");
}

/// With `--log-format json`, log lines are JSON objects, and the lines of
/// one query on the coordinator and on the storage nodes carry the same
/// `query_id` (sent to the nodes in gRPC metadata).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_query_id_across_roles() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let addr_file = dir.path().join("addrs.json");
    let log_file = dir.path().join("stderr.log");
    let mut child = std::process::Command::new(crate::support::strata_bin())
        .args(["dev", "--log-format", "json", "--http-addr", "127.0.0.1:0"])
        .args(["--flight-addr", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--addr-file")
        .arg(&addr_file)
        .env(
            "RUST_LOG",
            "info,strata_coordinator=debug,strata_storage=debug",
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log_file).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = BufReader::new(stdout)
        .lines()
        .any(|l| l.unwrap() == "strata is ready");
    assert!(ready);
    let addrs: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&addr_file).unwrap()).unwrap();
    let http = addrs["http"].as_str().unwrap();
    let resp = reqwest::Client::new()
        .post(format!("http://{http}/write?db=logs"))
        .body("m,host=a v=1 1\nm,host=b v=2 2")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let mut sql = strata::sql_client::SqlClient::connect(
        addrs["flight"].as_str().unwrap(),
        Some("logs".into()),
    )
    .await
    .unwrap();
    let counted = rows(
        &sql.query("SELECT count(*) AS counted FROM m")
            .await
            .unwrap(),
    );
    assert_eq!(counted, vec!["2"]);
    let id = rows(
        &sql.query(
            "SELECT query_id FROM system.queries WHERE query_text LIKE '%AS counted%' \
             AND query_text NOT LIKE '%system.queries%'",
        )
        .await
        .unwrap(),
    );
    assert_eq!(id.len(), 1, "{id:?}");
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log_file).unwrap();
    let mut targets = std::collections::BTreeSet::new();
    for line in text.lines() {
        let entry: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}"));
        assert!(entry["timestamp"].is_string() && entry["level"].is_string());
        if entry["span"]["query_id"] == id[0].as_str() {
            let target = entry["target"].as_str().unwrap();
            targets.insert(target.split("::").next().unwrap().to_string());
        }
    }
    assert!(
        targets.contains("strata_coordinator") && targets.contains("strata_storage"),
        "lines with the query id came from {targets:?}"
    );
}

/// A real `strata dev` process with a 32 MiB query limit: an aggregate
/// that would hold 30 million values (240 MB as raw numbers, several times
/// that as DataFusion holds them) fails naming the limit, and the
/// process's peak RSS stays far below what the query would have taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_over_its_limit_leaves_the_process_rss_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "dev",
        "--data-dir",
        data.to_str().unwrap(),
        "--http-addr",
        "127.0.0.1:0",
        "--flight-addr",
        "127.0.0.1:0",
        "--query-memory-limit-mib",
        "32",
    ];
    let (dev, addrs) = crate::support::ServerProcess::start(&args, &dir.path().join("addrs.json"));
    let mut sql = strata::sql_client::SqlClient::connect(addrs["flight"].as_str().unwrap(), None)
        .await
        .unwrap();
    assert_eq!(rows(&sql.query("SELECT 1").await.unwrap()), vec!["1"]);
    dev.reset_peak();
    let before = dev.status_mib("VmRSS");
    let err = sql
        .query("SELECT array_length(array_agg(value)) FROM generate_series(1, 30000000)")
        .await
        .unwrap_err()
        .0;
    assert!(err.contains("memory limit of 32.0 MiB"), "{err}");
    let peak = dev.status_mib("VmHWM");
    println!("array_agg of 30M values at a 32 MiB limit: RSS {before} MiB before, peak {peak} MiB");
    assert!(
        peak < before + 200,
        "peak RSS {peak} MiB, {before} MiB before the query"
    );
    // Still serving.
    assert_eq!(rows(&sql.query("SELECT 2").await.unwrap()), vec!["2"]);
}
