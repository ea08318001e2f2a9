//! Runs generated queries against an engine with concurrent workers and
//! measures each one as TSBS does: client wall time from sending the query
//! until its last row has arrived. Query types run one after another (as
//! TSBS's per-type query files do); within a type the workers pull queries
//! from a shared queue.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use serde::{Deserialize, Serialize};
use snafu::Snafu;

use super::queries::Query;

/// Something that answers SQL: one connection, owned by one worker.
pub trait QueryExecutor: Send + 'static {
    /// Runs `sql` and returns every batch of its answer.
    fn execute(
        &mut self,
        sql: &str,
    ) -> impl Future<Output = Result<Vec<RecordBatch>, String>> + Send;
}

#[derive(Debug, Snafu)]
pub enum RunError {
    #[snafu(display("{query_type} failed: {message}\n  query: {sql}"))]
    QueryFailed {
        query_type: String,
        sql: String,
        message: String,
    },
    #[snafu(display("a query worker stopped unexpectedly: {message}"))]
    Worker { message: String },
}

/// Latency figures of one query type, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TypeStats {
    pub query_type: String,
    pub count: usize,
    pub min_ms: f64,
    pub median_ms: f64,
    pub mean_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
    /// Rows returned by all queries of the type.
    pub rows: u64,
    /// Wall time of the whole type, all workers together.
    pub wall_seconds: f64,
}

impl TypeStats {
    /// Figures for one type from its latencies (nearest-rank percentiles).
    pub fn from_latencies(
        query_type: &str,
        latencies: &[Duration],
        rows: u64,
        wall: Duration,
    ) -> Self {
        let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let rank = |q: f64| -> f64 {
            if ms.is_empty() {
                return 0.0;
            }
            let i = ((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1;
            ms[i]
        };
        TypeStats {
            query_type: query_type.to_string(),
            count: ms.len(),
            min_ms: ms.first().copied().unwrap_or(0.0),
            median_ms: rank(0.5),
            mean_ms: if ms.is_empty() {
                0.0
            } else {
                ms.iter().sum::<f64>() / ms.len() as f64
            },
            p95_ms: rank(0.95),
            max_ms: ms.last().copied().unwrap_or(0.0),
            rows,
            wall_seconds: wall.as_secs_f64(),
        }
    }
}

/// The outcome of a run: what `--json` writes and charts read.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RunReport {
    /// What was measured, e.g. `strata`; the chart's legend.
    pub engine: String,
    pub workers: usize,
    pub scale: u64,
    pub seed: i64,
    pub types: Vec<TypeStats>,
    /// All queries of all types.
    pub overall: TypeStats,
    pub queries_per_second: f64,
    /// Answers that differed from the reference, when verified.
    pub mismatches: Option<u64>,
    /// The same queries timed on the reference engine (`--compare`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<Vec<TypeStats>>,
}

/// The geometric mean of positive values (0 when there are none).
pub fn geomean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (mut sum, mut n) = (0.0, 0usize);
    for v in values.into_iter().filter(|v| *v > 0.0) {
        sum += v.ln();
        n += 1;
    }
    if n == 0 {
        0.0
    } else {
        (sum / n as f64).exp()
    }
}

/// Runs `queries` (all of one type) on `executors`, one worker each.
/// Returns the figures and the executors, for the next type.
pub async fn run_type<E: QueryExecutor>(
    query_type: &str,
    queries: Vec<Query>,
    executors: Vec<E>,
) -> Result<(TypeStats, Vec<E>, Vec<Duration>), RunError> {
    let queries = Arc::new(queries);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut handles = Vec::with_capacity(executors.len());
    for mut executor in executors {
        let queries = queries.clone();
        let next = next.clone();
        handles.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut rows = 0u64;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(q) = queries.get(i) else { break };
                let t = Instant::now();
                match executor.execute(&q.sql).await {
                    Ok(batches) => {
                        latencies.push(t.elapsed());
                        rows += batches.iter().map(|b| b.num_rows() as u64).sum::<u64>();
                    }
                    Err(message) => {
                        // Stop the other workers too.
                        next.store(usize::MAX / 2, Ordering::Relaxed);
                        return Err(RunError::QueryFailed {
                            query_type: q.query_type.to_string(),
                            sql: q.sql.clone(),
                            message,
                        });
                    }
                }
            }
            Ok((executor, latencies, rows))
        }));
    }
    let mut executors = Vec::with_capacity(handles.len());
    let mut latencies = Vec::new();
    let mut rows = 0;
    let mut first_error = None;
    for h in handles {
        match h.await {
            Ok(Ok((e, l, r))) => {
                executors.push(e);
                latencies.extend(l);
                rows += r;
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(join) => {
                first_error.get_or_insert(RunError::Worker {
                    message: join.to_string(),
                });
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let wall = started.elapsed();
    Ok((
        TypeStats::from_latencies(query_type, &latencies, rows, wall),
        executors,
        latencies,
    ))
}

/// The report's table: one row per query type, then all queries, then the
/// overall rate (and the mismatch count when verified).
pub fn render_table(report: &RunReport) -> String {
    let mut s = format!(
        "{:<24} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}\n",
        "query type", "count", "min ms", "median ms", "mean ms", "p95 ms", "max ms", "rows"
    );
    let row = |t: &TypeStats, label: &str| {
        format!(
            "{:<24} {:>6} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10.2} {:>10}\n",
            label, t.count, t.min_ms, t.median_ms, t.mean_ms, t.p95_ms, t.max_ms, t.rows
        )
    };
    for t in &report.types {
        s.push_str(&row(t, &t.query_type));
    }
    s.push_str(&row(&report.overall, "all queries"));
    s.push_str(&format!(
        "ran {} queries with {} workers in {:.2} s: {:.2} queries/s\n",
        report.overall.count,
        report.workers,
        report.overall.wall_seconds,
        report.queries_per_second
    ));
    if let Some(m) = report.mismatches {
        s.push_str(&format!("mismatches: {m}\n"));
    }
    if let Some(reference) = &report.reference {
        s.push_str(&render_comparison(&report.engine, &report.types, reference));
    }
    s
}

/// Median per type on both engines, their ratio, and the geometric means.
pub fn render_comparison(engine: &str, types: &[TypeStats], reference: &[TypeStats]) -> String {
    let mut s = format!(
        "\n{:<24} {:>12} {:>14} {:>8}\n",
        "query type",
        format!("{engine} ms"),
        "reference ms",
        "ratio"
    );
    let mut pairs = vec![];
    for t in types {
        let Some(r) = reference.iter().find(|r| r.query_type == t.query_type) else {
            continue;
        };
        let ratio = t.median_ms / r.median_ms.max(1e-9);
        pairs.push((t.median_ms, r.median_ms));
        s.push_str(&format!(
            "{:<24} {:>12.2} {:>14.2} {:>8.2}\n",
            t.query_type, t.median_ms, r.median_ms, ratio
        ));
    }
    let (a, b) = (
        geomean(pairs.iter().map(|p| p.0)),
        geomean(pairs.iter().map(|p| p.1)),
    );
    s.push_str(&format!(
        "{:<24} {:>12.2} {:>14.2} {:>8.2}\n",
        "geomean of medians",
        a,
        b,
        a / b.max(1e-9)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::Int64Array;
    use std::sync::Arc as StdArc;

    #[test]
    fn geomean_of_medians() {
        assert!((geomean([1.0, 100.0]) - 10.0).abs() < 1e-9);
        assert_eq!(geomean([]), 0.0);
    }

    #[test]
    fn percentiles_use_nearest_rank() {
        let lat: Vec<Duration> = (1..=20).map(Duration::from_millis).collect();
        let t = TypeStats::from_latencies("x", &lat, 0, Duration::from_secs(1));
        assert_eq!(t.count, 20);
        assert_eq!(t.min_ms, 1.0);
        assert_eq!(t.median_ms, 10.0);
        assert_eq!(t.p95_ms, 19.0);
        assert_eq!(t.max_ms, 20.0);
        assert!((t.mean_ms - 10.5).abs() < 1e-9);
    }

    /// Answers every query with as many rows as the query's length, and
    /// fails on the word FAIL.
    #[derive(Debug)]
    struct Echo;

    impl QueryExecutor for Echo {
        async fn execute(&mut self, sql: &str) -> Result<Vec<RecordBatch>, String> {
            if sql.contains("FAIL") {
                return Err("refused".into());
            }
            let col = Int64Array::from(vec![0; sql.len()]);
            let schema = StdArc::new(arrow::datatypes::Schema::new(vec![
                arrow::datatypes::Field::new("x", arrow::datatypes::DataType::Int64, false),
            ]));
            Ok(vec![
                RecordBatch::try_new(schema, vec![StdArc::new(col)]).unwrap()
            ])
        }
    }

    fn q(sql: &str) -> Query {
        Query {
            query_type: "t",
            sql: sql.to_string(),
        }
    }

    #[tokio::test]
    async fn every_query_runs_once_across_workers() {
        let queries: Vec<Query> = (0..50).map(|i| q(&"x".repeat(i + 1))).collect();
        let (stats, executors, _) = run_type("t", queries, vec![Echo, Echo, Echo])
            .await
            .unwrap();
        assert_eq!(stats.count, 50);
        assert_eq!(stats.rows, (1..=50).sum::<u64>());
        assert_eq!(executors.len(), 3);
    }

    #[tokio::test]
    async fn a_failed_query_names_itself() {
        let queries = vec![q("ok"), q("SELECT FAIL"), q("ok")];
        let err = run_type("t", queries, vec![Echo, Echo]).await.unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("refused") && text.contains("SELECT FAIL"),
            "{text}"
        );
    }
}
