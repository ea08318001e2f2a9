//! The last-value cache as a user meets it: "latest row per series" queries
//! in their common forms read the storage nodes' caches (EXPLAIN shows
//! `latest_per_series`) and answer exactly what the same query answers
//! with the cache turned off (`/*+ strata.last_value_cache = false */`,
//! which reads every row), through late and out-of-order rows, rows that
//! merge into the newest point, a series whose newest row is in a Parquet
//! file and its older rows in the memtable, a delete of newest rows, and a
//! restart, on three storage nodes.

use crate::support::TestCluster;

/// 2026-11-30T00:00:00Z.
const BASE_NS: i64 = 1_795_996_800_000_000_000;
const MINUTE_NS: i64 = 60_000_000_000;
const HOSTS: usize = 8;

const OFF: &str = "/*+ strata.last_value_cache = false */ ";

/// The forms the cache answers, each with an ORDER BY that decides the
/// answer's order.
const CACHED: [&str; 7] = [
    "SELECT DISTINCT ON (host) host, region, time, usage, load FROM cpu ORDER BY host, time DESC",
    "SELECT host, last_value(usage ORDER BY time) AS u, max(time) AS t FROM cpu GROUP BY host \
     ORDER BY host",
    "SELECT c.host, c.time, c.usage, c.load FROM cpu c JOIN (SELECT host, max(time) AS t FROM cpu \
     GROUP BY host) m ON c.host = m.host AND c.time = m.t ORDER BY c.host",
    "SELECT host, time, usage FROM (SELECT host, time, usage, row_number() OVER (PARTITION BY \
     host ORDER BY time DESC) AS rn FROM cpu) WHERE rn = 1 ORDER BY host",
    "SELECT host, time, usage, load FROM cpu WHERE host = 'h2' ORDER BY time DESC LIMIT 1",
    "SELECT DISTINCT ON (region) region, host, time, load FROM cpu \
     WHERE time >= '2026-11-30T01:00:00Z' ORDER BY region, time DESC, host",
    "SELECT region, max(time) AS t FROM cpu WHERE host IN ('h1', 'h5') OR time > \
     '2026-11-30T02:00:00Z' GROUP BY region ORDER BY region",
];

/// Forms whose answer depends on more than the newest rows: they must
/// read every row.
const NOT_CACHED: [&str; 4] = [
    "SELECT DISTINCT ON (host) host, time, usage FROM cpu WHERE usage > 50 ORDER BY host, time DESC",
    "SELECT DISTINCT ON (host) host, time, usage FROM cpu WHERE time < '2026-11-30T02:00:00Z' \
     ORDER BY host, time DESC",
    "SELECT host, last_value(usage ORDER BY time), count(*) FROM cpu GROUP BY host ORDER BY host",
    "SELECT host, time FROM cpu ORDER BY time DESC LIMIT 2",
];

fn line(host: usize, minute: i64, usage: Option<f64>, load: Option<f64>) -> String {
    let mut fields = vec![];
    if let Some(u) = usage {
        fields.push(format!("usage={u}"));
    }
    if let Some(l) = load {
        fields.push(format!("load={l}"));
    }
    format!(
        "cpu,host=h{host},region=r{} {} {}\n",
        host % 3,
        fields.join(","),
        BASE_NS + minute * MINUTE_NS
    )
}

async fn write(c: &TestCluster, body: String) {
    let (status, text) = c.write("lv", "ns", &body).await;
    assert_eq!(status, 204, "{text}");
}

async fn flush(c: &TestCluster) {
    for node in &c.cluster().storage {
        node.engine().flush().await.expect("flush");
    }
}

/// Every form agrees with the cache off; the cached forms read the cache
/// and the others do not.
async fn check(c: &TestCluster, stage: &str) {
    for sql in CACHED.iter().chain(&NOT_CACHED) {
        let cached = CACHED.contains(sql);
        let with_cache = c.query("lv", sql).await;
        let without = c.query("lv", &format!("{OFF}{sql}")).await;
        assert_eq!(with_cache, without, "{stage}: {sql}");
        assert!(!with_cache.is_empty(), "{stage}: {sql}");
        let plan = c.query("lv", &format!("EXPLAIN {sql}")).await.join("\n");
        assert_eq!(
            plan.contains("latest_per_series"),
            cached,
            "{stage}: {sql}\n{plan}"
        );
        let off_plan = c
            .query("lv", &format!("{OFF}EXPLAIN {sql}"))
            .await
            .join("\n");
        assert!(!off_plan.contains("latest_per_series"), "{off_plan}");
    }
}

/// The row of `host` in the DISTINCT ON answer.
async fn newest(c: &TestCluster, host: usize) -> String {
    let answer = c.query("lv", CACHED[0]).await;
    answer
        .into_iter()
        .find(|r| r.starts_with(&format!("h{host}|")))
        .unwrap_or_else(|| panic!("no row for h{host}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn latest_rows_come_from_the_cache_and_match_a_full_scan() {
    let mut c = TestCluster::start().await;
    c.create_database("lv", "WITH SHARD DURATION 1h SHARDS 3")
        .await;
    // Three hours of a point a minute per host, written newest first for
    // odd hosts; h7's newest point has no usage.
    let mut body = String::new();
    for host in 0..HOSTS {
        let minutes: Vec<i64> = match host % 2 {
            0 => (0..180).collect(),
            _ => (0..180).rev().collect(),
        };
        for m in minutes {
            let usage = (host != 7 || m != 179).then_some(((host as i64 * 7 + m) % 100) as f64);
            body.push_str(&line(host, m, usage, Some(m as f64)));
        }
    }
    write(&c, body).await;
    check(&c, "memtables").await;
    assert!(
        newest(&c, 7).await.ends_with("|179.0"),
        "h7's newest row has no usage"
    );

    flush(&c).await;
    check(&c, "files").await;

    // Late rows do not replace the newest; a row at the newest time merges
    // into it; a newer row replaces it.
    write(
        &c,
        [
            line(1, 10, Some(1.0), Some(1.0)),
            line(1, 179, None, Some(999.0)),
            line(2, 200, Some(42.0), None),
        ]
        .concat(),
    )
    .await;
    check(&c, "late rows").await;
    let h1 = newest(&c, 1).await;
    assert!(h1.ends_with("|999.0"), "{h1}");
    assert!(!h1.contains("|1.0|"), "{h1}");
    let h2 = newest(&c, 2).await;
    assert!(h2.contains("03:20:00") && h2.contains("|42.0|"), "{h2}");

    // h3's newest row in a file, older rows in the memtable.
    write(&c, line(3, 230, Some(3.0), Some(3.0))).await;
    flush(&c).await;
    write(
        &c,
        (100..120).map(|m| line(3, m, Some(0.5), None)).collect(),
    )
    .await;
    check(&c, "newest in a file").await;
    assert!(newest(&c, 3).await.contains("03:50:00"));

    // Deleting h4's last hour makes an older row its newest.
    c.query(
        "lv",
        "DELETE FROM cpu WHERE host = 'h4' AND time >= '2026-11-30T02:00:00Z'",
    )
    .await;
    check(&c, "delete").await;
    assert!(newest(&c, 4).await.contains("01:59:00"));

    // The cache is built again from what the nodes hold.
    c.restart().await;
    check(&c, "restart").await;
    assert!(newest(&c, 4).await.contains("01:59:00"));
    assert!(newest(&c, 1).await.ends_with("|999.0"));

    // Nodes read one row per series and shard, not every row.
    let plan = c
        .query("lv", &format!("EXPLAIN ANALYZE {}", CACHED[0]))
        .await
        .join("\n");
    let leaf = plan
        .lines()
        .find(|l| l.contains("ScanLeafExec") && l.contains("latest_per_series"))
        .unwrap_or_else(|| panic!("{plan}"));
    let rows_read: u64 = leaf
        .split("output_rows=")
        .nth(1)
        .and_then(|v| v.split(|ch: char| !ch.is_ascii_digit()).next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{leaf}"));
    // One row per host and hour it has rows in: hours 0 and 1 all 8 hosts,
    // hour 2 all but h4 (deleted), hour 3 h2 and h3.
    assert_eq!(rows_read, 8 + 8 + 7 + 2, "{plan}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_hint_names_the_problem() {
    let c = TestCluster::start().await;
    c.create_database("lv", "").await;
    write(&c, line(0, 0, Some(1.0), None)).await;
    let mut client = c.sql(Some("lv")).await;
    let err = client
        .query("/*+ strata.no_such_option = 1 */ SELECT * FROM cpu")
        .await
        .expect_err("an unknown option is refused");
    assert!(err.to_string().contains("no_such_option"), "{err}");
    let err = client
        .query("/*+ strata.last_value_cache */ SELECT * FROM cpu")
        .await
        .expect_err("a hint without a value is refused");
    assert!(err.to_string().contains("key = value"), "{err}");
}
