//! The queries of this coordinator, running and recently finished, as
//! `system.queries` lists them. Each running query holds a [`Cancel`]
//! token: `KILL QUERY`, its timeout and a client going away all end it
//! through the same path, which drops its stream and with it the streams
//! from the storage nodes (they stop their fragments when the stream is
//! reset, and on the `cancel_query` action the coordinator also sends).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::physical_plan::ExecutionPlan;
use parking_lot::Mutex;
use strata_storage::running::Cancel;

use crate::dist_plan::ShardFragmentExec;

/// Finished queries kept for `system.queries`.
pub const FINISHED_KEPT: usize = 200;

/// What a front door knows of a statement it runs.
#[derive(Clone, Debug)]
pub struct RunInfo {
    pub query_id: String,
    pub sql: String,
    pub database: Option<String>,
    /// The client's address, when the front door knows it.
    pub client: Option<String>,
    /// Who runs it.
    pub access: crate::auth::Access,
}

impl RunInfo {
    /// A statement with a new query id.
    pub fn new(sql: &str, database: Option<&str>) -> Self {
        Self {
            query_id: uuid::Uuid::new_v4().to_string(),
            sql: sql.to_string(),
            database: database.map(str::to_string),
            client: None,
            access: crate::auth::Access::Open,
        }
    }

    pub fn with_access(mut self, access: &crate::auth::Access) -> Self {
        self.access = access.clone();
        self
    }

    pub fn with_client(mut self, client: Option<std::net::SocketAddr>) -> Self {
        self.client = client.map(|a| a.to_string());
        self
    }
}

/// One row of `system.queries`.
#[derive(Clone, Debug, PartialEq)]
pub struct QueryRecord {
    pub id: String,
    pub database: Option<String>,
    pub text: String,
    /// How the plan is spread: the strategies of its fragments, or
    /// `local` when no storage node takes part.
    pub strategy: Option<String>,
    /// `running`, `finished`, `failed` or `cancelled`.
    pub state: &'static str,
    pub started_ms: i64,
    pub duration_ms: u64,
    pub rows: u64,
    /// Arrow IPC bytes received from storage nodes.
    pub bytes_shipped: u64,
    pub error: Option<String>,
    pub client: Option<String>,
}

struct Running {
    record: QueryRecord,
    started: Instant,
    cancel: Cancel,
    rows: Arc<AtomicU64>,
    plan: Option<Arc<dyn ExecutionPlan>>,
}

impl Running {
    /// The record as of now.
    fn now(&self) -> QueryRecord {
        let mut r = self.record.clone();
        r.duration_ms = self.started.elapsed().as_millis() as u64;
        r.rows = self.rows.load(Ordering::Relaxed);
        r.bytes_shipped = self.plan.as_ref().map_or(0, bytes_shipped);
        r
    }
}

#[derive(Default)]
struct State {
    running: BTreeMap<String, Running>,
    finished: VecDeque<QueryRecord>,
}

/// The registry; cheap to clone.
#[derive(Clone, Default)]
pub struct Queries {
    state: Arc<Mutex<State>>,
}

impl Queries {
    /// Lists a query as running until the handle is finished or dropped.
    pub fn start(&self, info: &RunInfo) -> QueryHandle {
        let cancel = Cancel::default();
        let rows = Arc::new(AtomicU64::new(0));
        let record = QueryRecord {
            id: info.query_id.clone(),
            database: info.database.clone(),
            text: info.sql.clone(),
            strategy: None,
            state: "running",
            started_ms: strata_catalog::liveness::now_ms(),
            duration_ms: 0,
            rows: 0,
            bytes_shipped: 0,
            error: None,
            client: info.client.clone(),
        };
        self.state.lock().running.insert(
            info.query_id.clone(),
            Running {
                record,
                started: Instant::now(),
                cancel: cancel.clone(),
                rows: rows.clone(),
                plan: None,
            },
        );
        QueryHandle {
            queries: self.clone(),
            id: info.query_id.clone(),
            cancel,
            rows,
            timer: None,
            done: false,
        }
    }

    /// Running queries (as of now), then finished ones, newest first.
    pub fn list(&self) -> Vec<QueryRecord> {
        let state = self.state.lock();
        let mut out: Vec<QueryRecord> = state.running.values().map(Running::now).collect();
        out.sort_by_key(|r| std::cmp::Reverse(r.started_ms));
        out.extend(state.finished.iter().rev().cloned());
        out
    }

    /// How many queries run now.
    pub fn running(&self) -> usize {
        self.state.lock().running.len()
    }

    /// Cancels a running query; false when no query by that id runs here.
    pub fn cancel(&self, id: &str, reason: &str) -> bool {
        match self.state.lock().running.get(id) {
            Some(r) => {
                r.cancel.cancel(reason);
                true
            }
            None => false,
        }
    }

    /// Shows a query's physical plan: its strategy, and the bytes its
    /// fragments received as it runs.
    pub fn set_plan(&self, id: &str, plan: Arc<dyn ExecutionPlan>) {
        if let Some(r) = self.state.lock().running.get_mut(id) {
            r.record.strategy = Some(strategies(&plan));
            r.plan = Some(plan);
        }
    }

    fn finish(&self, id: &str, state: &'static str, error: Option<String>) {
        let mut s = self.state.lock();
        let Some(running) = s.running.remove(id) else {
            return;
        };
        let mut record = running.now();
        record.state = state;
        record.error = error;
        if s.finished.len() >= FINISHED_KEPT {
            s.finished.pop_front();
        }
        s.finished.push_back(record.clone());
        // Metrics after the lock: a scrape reads this registry's lock while
        // holding the metrics registry's.
        drop(s);
        let registry = strata_metrics::global();
        let strategy = record.strategy.as_deref().unwrap_or("statement");
        registry
            .counter(
                "strata_queries_total",
                "Statements run, by strategy and how they ended (finished, failed, cancelled).",
                &[("strategy", strategy), ("state", state)],
            )
            .inc();
        registry
            .histogram(
                "strata_query_duration_seconds",
                "Time from a statement's start to its end, by strategy.",
                &[("strategy", strategy)],
                strata_metrics::LATENCY_BUCKETS,
            )
            .observe_duration(running.started.elapsed());
        registry
            .counter(
                "strata_query_bytes_shipped_total",
                "Arrow IPC bytes the coordinator received from storage nodes for queries.",
                &[],
            )
            .inc_by(record.bytes_shipped);
    }
}

/// A running query's place in the registry. Finishing it records how it
/// ended; dropping it unfinished records it as cancelled.
pub struct QueryHandle {
    queries: Queries,
    id: String,
    cancel: Cancel,
    rows: Arc<AtomicU64>,
    timer: Option<tokio::task::JoinHandle<()>>,
    done: bool,
}

impl QueryHandle {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn cancel_token(&self) -> Cancel {
        self.cancel.clone()
    }

    /// Counts rows returned to the client.
    pub fn add_rows(&self, n: usize) {
        self.rows.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Cancels the query once `timeout` has passed, naming where the
    /// limit was set.
    pub fn set_timeout(&mut self, timeout: Duration, source: &str) {
        let cancel = self.cancel.clone();
        let source = source.to_string();
        self.timer = Some(tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            cancel.time_out(format!(
                "the query ran longer than its timeout of {} ({source})",
                crate::query::ddl::format_duration(timeout.as_nanos() as i64)
            ));
        }));
    }

    /// Records the end of the query: finished, or failed with `error`
    /// (cancelled when it was).
    pub fn finish(mut self, error: Option<String>) {
        self.done = true;
        let state = match (&error, self.cancel.reason()) {
            (None, _) => "finished",
            (Some(_), Some(_)) => "cancelled",
            (Some(_), None) => "failed",
        };
        self.queries.finish(&self.id, state, error);
    }
}

impl Drop for QueryHandle {
    fn drop(&mut self) {
        if let Some(t) = self.timer.take() {
            t.abort();
        }
        if !self.done {
            let reason = self
                .cancel
                .reason()
                .unwrap_or_else(|| "the client went away before the last row".into());
            // Whatever still runs for it stops too.
            self.cancel.cancel(reason.clone());
            self.queries.finish(&self.id, "cancelled", Some(reason));
        }
    }
}

/// The strategies of a plan's fragments, e.g. `fan-out-aggregate`, or
/// `local` when it has none.
fn strategies(plan: &Arc<dyn ExecutionPlan>) -> String {
    let mut found = std::collections::BTreeSet::new();
    visit(plan, &mut |p| {
        if let Some(f) = p.downcast_ref::<ShardFragmentExec>() {
            found.insert(f.strategy().to_string());
        }
    });
    if found.is_empty() {
        return "local".into();
    }
    found.into_iter().collect::<Vec<_>>().join(", ")
}

/// Bytes the plan's fragments have received so far.
fn bytes_shipped(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    let mut bytes = 0;
    visit(plan, &mut |p| {
        if p.downcast_ref::<ShardFragmentExec>().is_some() {
            if let Some(m) = p.metrics() {
                bytes += m.sum_by_name("bytes_received").map_or(0, |v| v.as_usize()) as u64;
            }
        }
    });
    bytes
}

fn visit(plan: &Arc<dyn ExecutionPlan>, f: &mut dyn FnMut(&Arc<dyn ExecutionPlan>)) {
    f(plan);
    for c in plan.children() {
        visit(c, f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_query_is_listed_while_it_runs_then_kept_as_it_ended() {
        let queries = Queries::default();
        let a = queries.start(&RunInfo::new("SELECT 1", Some("db")));
        let b = queries.start(&RunInfo::new("SELECT 2", None));
        let c = queries.start(&RunInfo::new("SELECT 3", None));
        a.add_rows(5);
        let listed = queries.list();
        assert_eq!(listed.len(), 3);
        assert!(listed.iter().all(|r| r.state == "running"));
        assert!(queries.cancel(b.id(), "killed by KILL QUERY"));
        assert!(!queries.cancel("no-such-query", "x"));
        let (a_id, b_id) = (a.id().to_string(), b.id().to_string());
        a.finish(None);
        b.finish(Some("killed by KILL QUERY".into()));
        drop(c);
        let listed = queries.list();
        let state = |id: &str| listed.iter().find(|r| r.id == id).unwrap().clone();
        assert_eq!(state(&a_id).state, "finished");
        assert_eq!(state(&a_id).rows, 5);
        assert_eq!(state(&b_id).state, "cancelled");
        let dropped = listed.iter().find(|r| r.text == "SELECT 3").unwrap();
        assert_eq!(dropped.state, "cancelled");
        assert!(dropped
            .error
            .as_deref()
            .unwrap()
            .contains("client went away"));
    }

    #[tokio::test]
    async fn a_timeout_cancels_with_its_source() {
        let queries = Queries::default();
        let mut q = queries.start(&RunInfo::new("SELECT 1", None));
        q.set_timeout(Duration::from_millis(10), "--query-timeout");
        let reason = q.cancel_token().cancelled().await;
        assert!(
            reason.contains("timeout of 10ms (--query-timeout)"),
            "{reason}"
        );
    }

    #[test]
    fn only_the_newest_finished_queries_are_kept() {
        let queries = Queries::default();
        for i in 0..FINISHED_KEPT + 10 {
            queries
                .start(&RunInfo::new(&format!("SELECT {i}"), None))
                .finish(None);
        }
        let listed = queries.list();
        assert_eq!(listed.len(), FINISHED_KEPT);
        assert_eq!(listed[0].text, format!("SELECT {}", FINISHED_KEPT + 9));
    }
}
