//! Differential test of the distributed planner: every query of the corpus
//! (`differential/queries.sql` and the aggregate × grouping grid below)
//! runs on a cluster of three storage nodes and on one local DataFusion
//! context holding the same rows, and the answers must agree (floats within
//! a relative 1e-9; in order where the query's outermost ORDER BY is
//! total). The rows span twelve one-hour shard groups of three shards,
//! with duplicates, out-of-order writes, a delete, NULL fields and rows in
//! memtables beside flushed files. The same rows also go to a database of
//! 6-hour groups with one shard each, where one-group queries run direct.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::support::{rows, TestCluster};

/// 2026-11-30T00:00:00Z.
const BASE_NS: i64 = 1_795_996_800_000_000_000;
const STEP_NS: i64 = 600_000_000_000; // ten minutes
const HOSTS: usize = 10;
const STEPS: usize = 72; // twelve hours

/// One cpu line; `rewrite` changes a field so duplicates must be merged.
fn cpu_line(host: usize, step: usize, rewrite: bool) -> String {
    let mut fields = vec![];
    if !(host + step).is_multiple_of(11) {
        fields.push(format!(
            "usage_user={}",
            ((host * 7 + step * 13) % 100) as f64 + 0.5
        ));
    }
    let system = ((host * 3 + step * 5) % 50) as f64 / 4.0 + if rewrite { 1000.0 } else { 0.0 };
    fields.push(format!("usage_system={system}"));
    fields.push(format!("reqs={}i", host * 100 + step));
    fields.push(format!("ok={}", step.is_multiple_of(2)));
    let status = ["ok", "warn", "crit"][(step + host) % 3];
    fields.push(format!("status=\"{status}\""));
    format!(
        "cpu,host=h{host},region=r{} {} {}\n",
        host % 3,
        fields.join(","),
        BASE_NS + step as i64 * STEP_NS
    )
}

async fn load(c: &TestCluster, db: &str, options: &str) {
    c.create_database(db, options).await;
    let write = |body: String| async move {
        let (status, text) = c.write(db, "ns", &body).await;
        assert_eq!(status, 204, "{text}");
    };
    // First half, even hosts newest first; then flush every node.
    for host in 0..HOSTS {
        let steps: Vec<usize> = match host % 2 {
            0 => (0..48).rev().collect(),
            _ => (0..48).collect(),
        };
        write(steps.iter().map(|s| cpu_line(host, *s, false)).collect()).await;
    }
    for node in &c.cluster().storage {
        node.engine().flush().await.expect("flush");
    }
    // Second half overlaps the first: steps 36..48 are rewritten, so
    // memtable rows replace flushed ones.
    for host in 0..HOSTS {
        let body: String = (36..STEPS)
            .map(|s| cpu_line(host, s, s < 48 && host % 3 == 0))
            .collect();
        write(body).await;
    }
    let mem: String = (0..HOSTS)
        .flat_map(|h| {
            (0..12).map(move |hour| {
                format!(
                    "mem,host=h{h} used={} {}\n",
                    (h * 13 + hour * 7) % 90,
                    BASE_NS + hour as i64 * 6 * STEP_NS
                )
            })
        })
        .collect();
    write(mem).await;
    c.sql(Some(db))
        .await
        .query(
            "DELETE FROM cpu WHERE host = 'h3' AND time >= '2026-11-30T02:00:00Z' \
             AND time < '2026-11-30T07:00:00Z'",
        )
        .await
        .expect("delete");
}

/// The corpus: the file's statements, then every aggregate under every
/// grouping.
fn corpus() -> Vec<String> {
    let text = include_str!("differential/queries.sql");
    let mut out = vec![];
    let mut current = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("--") || line.trim().is_empty() {
            continue;
        }
        current.push_str(line);
        current.push(' ');
        if line.trim_end().ends_with(';') {
            out.push(current.trim().trim_end_matches(';').to_string());
            current.clear();
        }
    }
    let aggregates = [
        "count(usage_user)",
        "sum(usage_system)",
        "avg(usage_user)",
        "min(usage_user), max(usage_system)",
        "stddev(usage_system)",
        "count(DISTINCT status)",
        "last_value(usage_user ORDER BY time, host)",
        "var_pop(usage_user), sum(reqs)",
    ];
    let groupings = [
        ("", ""),
        ("host, ", "GROUP BY host"),
        ("region, ", "GROUP BY region"),
        (
            "host, date_bin(INTERVAL '1 hour', time) AS t, ",
            "GROUP BY host, t",
        ),
        ("date_trunc('hour', time) AS t, ", "GROUP BY t"),
        (
            "region, date_bin(INTERVAL '30 minutes', time) AS t, ",
            "GROUP BY region, t",
        ),
    ];
    let filters = [
        "",
        "WHERE time >= '2026-11-30T03:00:00Z' AND time < '2026-11-30T09:00:00Z'",
        "WHERE host IN ('h1', 'h3', 'h8')",
        "WHERE usage_system > 5",
    ];
    for (i, agg) in aggregates.iter().enumerate() {
        for (j, (select, group)) in groupings.iter().enumerate() {
            let filter = filters[(i + j) % filters.len()];
            out.push(format!("SELECT {select}{agg} FROM cpu {filter} {group}"));
        }
    }
    out
}

/// Whether the outermost ORDER BY decides the order of the answer.
fn ordered(sql: &str) -> bool {
    let tail = &sql[sql.rfind(')').unwrap_or(0)..];
    tail.contains("ORDER BY")
}

fn cells_agree(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let (a, b) = (a.split('|'), b.split('|'));
    let (a, b): (Vec<&str>, Vec<&str>) = (a.collect(), b.collect());
    a.len() == b.len()
        && a.iter().zip(&b).all(|(x, y)| {
            x == y
                || match (x.parse::<f64>(), y.parse::<f64>()) {
                    (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()),
                    _ => false,
                }
        })
}

fn answers_agree(sql: &str, mut cluster: Vec<String>, mut local: Vec<String>) -> bool {
    if !ordered(sql) {
        cluster.sort();
        local.sort();
    }
    cluster.len() == local.len() && cluster.iter().zip(&local).all(|(a, b)| cells_agree(a, b))
}

/// A local context with the rows the cluster holds, read back in full.
async fn local_context(c: &TestCluster, db: &str) -> SessionContext {
    let ctx = SessionContext::new();
    let mut client = c.sql(Some(db)).await;
    for table in ["cpu", "mem"] {
        let (schema, batches): (_, Vec<RecordBatch>) = client
            .query_with_schema(&format!("SELECT * FROM {table}"))
            .await
            .expect("full scan");
        let mem = MemTable::try_new(schema, vec![batches]).expect("memtable");
        ctx.register_table(table, Arc::new(mem)).expect("register");
    }
    ctx
}

/// The strategy names in an EXPLAIN answer.
fn strategies(plan: &[String]) -> Vec<String> {
    plan.iter()
        .flat_map(|l| l.split("strategy=").skip(1))
        .map(|s| s.split(',').next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn distributed_answers_match_one_local_engine() {
    let c = TestCluster::start().await;
    let databases = [
        (
            "diff_hourly",
            "WITH SHARD DURATION 1h SHARDS 3 REPLICATION 2",
        ),
        ("diff_direct", "WITH SHARD DURATION 6h SHARDS 1"),
    ];
    let queries = corpus();
    assert!(queries.len() >= 150, "{} queries", queries.len());
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut failures = vec![];
    for (db, options) in databases {
        load(&c, db, options).await;
        let local = local_context(&c, db).await;
        let mut client = c.sql(Some(db)).await;
        for sql in &queries {
            let cluster = match client.query(sql).await {
                Ok(b) => rows(&b),
                Err(e) => {
                    failures.push(format!("[{db}] {sql}\n  cluster failed: {e}"));
                    continue;
                }
            };
            let expected = match local.sql(sql).await {
                Ok(df) => rows(&df.collect().await.expect("local query runs")),
                Err(e) => panic!("the local engine refuses {sql}: {e}"),
            };
            if !answers_agree(sql, cluster.clone(), expected.clone()) {
                failures.push(format!(
                    "[{db}] {sql}\n  cluster: {cluster:?}\n  local:   {expected:?}"
                ));
            }
            let plan = rows(
                &client
                    .query(&format!("EXPLAIN {sql}"))
                    .await
                    .expect("explain"),
            );
            for s in strategies(&plan) {
                *seen.entry(s).or_default() += 1;
            }
        }
    }
    println!("strategies over the corpus: {seen:?}");
    assert!(
        failures.is_empty(),
        "{} of {} answers differ:\n{}",
        failures.len(),
        queries.len() * 2,
        failures.join("\n")
    );
    for s in [
        "direct",
        "fan-out",
        "fan-out-aggregate",
        "merge-sort",
        "time-ordered",
    ] {
        assert!(seen.contains_key(s), "no query ran {s}: {seen:?}");
    }
}
