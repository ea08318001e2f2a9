//! What the storage nodes measured running a fragment, and how EXPLAIN
//! ANALYZE shows it.
//!
//! A node ends a fragment's stream with a `FragmentMetrics` message: its
//! elapsed time and, per operator of the fragment in pre-order, the rows it
//! output and its compute time. [`Reports`] sums them over the tasks of a
//! [`super::ShardFragmentExec`], per operator and per node. The fragment
//! is shown below the `ShardFragmentExec` through [`ReportedExec`]: a
//! mirror of each operator that displays as the operator does, with the
//! metrics the nodes reported in place of its own (never executed here).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, Metric, MetricBuilder, MetricValue, MetricsSet, Time,
};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use parking_lot::Mutex;
use strata_proto::storage::v1::FragmentMetrics;

/// Totals of what one node reported over the tasks it ran.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeTotals {
    pub tasks: u64,
    pub output_rows: u64,
    /// Arrow IPC bytes the coordinator received from it.
    pub bytes: u64,
    pub elapsed_ns: u64,
    /// Bytes its operators spilled to disk.
    pub spilled_bytes: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// Pre-order names of the fragment, to check a report against.
    names: Vec<String>,
    /// Per operator: rows and compute nanoseconds, summed over tasks.
    operators: Vec<Option<(u64, u64)>>,
    nodes: BTreeMap<u64, NodeTotals>,
}

/// The reports of the tasks of one fragment, shared by its mirrors.
#[derive(Debug, Default)]
pub struct Reports(Mutex<Inner>);

impl Reports {
    fn new(names: Vec<String>) -> Self {
        let operators = vec![None; names.len()];
        Self(Mutex::new(Inner {
            names,
            operators,
            nodes: BTreeMap::new(),
        }))
    }

    /// Adds one task's report, which came with `bytes` of data.
    pub fn add(&self, report: &FragmentMetrics, bytes: u64) {
        let mut inner = self.0.lock();
        let rows = report.operators.first().map_or(0, |o| o.output_rows);
        let node = inner.nodes.entry(report.node_id).or_default();
        node.tasks += 1;
        node.output_rows += rows;
        node.bytes += bytes;
        node.elapsed_ns += report.elapsed_ns;
        node.spilled_bytes += report
            .operators
            .iter()
            .map(|o| o.spilled_bytes)
            .sum::<u64>();
        // A node of another version may cut the plan differently: its
        // operators are counted only when they are the ones planned.
        let same_shape = report.operators.len() == inner.names.len()
            && report
                .operators
                .iter()
                .zip(&inner.names)
                .all(|(o, n)| o.name == *n);
        if !same_shape {
            tracing::debug!(node = report.node_id, "fragment report of another shape");
            return;
        }
        for (slot, o) in inner.operators.iter_mut().zip(&report.operators) {
            let (r, c) = slot.get_or_insert((0, 0));
            *r += o.output_rows;
            *c += o.elapsed_compute_ns;
        }
    }

    pub fn nodes(&self) -> BTreeMap<u64, NodeTotals> {
        self.0.lock().nodes.clone()
    }

    fn operator(&self, index: usize) -> Option<(u64, u64)> {
        self.0.lock().operators.get(index).copied().flatten()
    }

    /// Per-node metrics, named by node: `rows@node1`, `bytes@node1`,
    /// `elapsed@node1`.
    pub fn push_node_metrics(&self, set: &mut MetricsSet) {
        for (id, n) in self.nodes() {
            let count = |name: String, v: u64| {
                let c = Count::new();
                c.add(v as usize);
                Arc::new(Metric::new(
                    MetricValue::Count {
                        name: name.into(),
                        count: c,
                    },
                    None,
                ))
            };
            set.push(count(format!("rows@node{id}"), n.output_rows));
            set.push(count(format!("bytes@node{id}"), n.bytes));
            if n.spilled_bytes > 0 {
                set.push(count(format!("spilled_bytes@node{id}"), n.spilled_bytes));
            }
            let time = Time::new();
            time.add_duration(Duration::from_nanos(n.elapsed_ns));
            set.push(Arc::new(Metric::new(
                MetricValue::Time {
                    name: format!("elapsed@node{id}").into(),
                    time,
                },
                None,
            )));
        }
    }
}

/// A mirror of `plan` whose operators show what the nodes reported, and
/// the reports they read from.
pub fn mirror(plan: &Arc<dyn ExecutionPlan>) -> (Arc<dyn ExecutionPlan>, Arc<Reports>) {
    fn names(p: &Arc<dyn ExecutionPlan>, out: &mut Vec<String>) {
        out.push(p.name().to_string());
        for c in p.children() {
            names(c, out);
        }
    }
    fn build(
        p: &Arc<dyn ExecutionPlan>,
        next: &mut usize,
        reports: &Arc<Reports>,
    ) -> Arc<dyn ExecutionPlan> {
        let index = *next;
        *next += 1;
        let children = p
            .children()
            .into_iter()
            .map(|c| build(c, next, reports))
            .collect();
        Arc::new(ReportedExec {
            inner: p.clone(),
            children,
            index,
            reports: reports.clone(),
        })
    }
    let mut all = vec![];
    names(plan, &mut all);
    let reports = Arc::new(Reports::new(all));
    (build(plan, &mut 0, &reports), reports)
}

/// The operator a mirror stands for (the plan itself when it is none).
pub fn unmirror(plan: &Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    match plan.downcast_ref::<ReportedExec>() {
        Some(m) => m.inner.clone(),
        None => plan.clone(),
    }
}

/// An operator of a fragment as EXPLAIN shows it below its
/// `ShardFragmentExec`; it runs on the nodes, never here.
pub struct ReportedExec {
    inner: Arc<dyn ExecutionPlan>,
    children: Vec<Arc<dyn ExecutionPlan>>,
    /// Its place in the fragment, in pre-order.
    index: usize,
    reports: Arc<Reports>,
}

impl fmt::Debug for ReportedExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReportedExec")
            .field("operator", &self.inner.name())
            .field("index", &self.index)
            .finish()
    }
}

impl DisplayAs for ReportedExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        self.inner.fmt_as(t, f)
    }
}

impl ExecutionPlan for ReportedExec {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.children.iter().collect()
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        self.inner.apply_expressions(f)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // A rewrite reaching inside a fragment rebuilds the operator; the
        // fragment's owner mirrors it again.
        let children = children.iter().map(unmirror).collect();
        self.inner.clone().replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        _partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(format!(
            "{} belongs to a plan fragment and runs on the storage nodes",
            self.inner.name()
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        let Some((rows, compute_ns)) = self.reports.operator(self.index) else {
            return self.inner.metrics();
        };
        let set = ExecutionPlanMetricsSet::new();
        MetricBuilder::new(&set).output_rows(0).add(rows as usize);
        MetricBuilder::new(&set)
            .elapsed_compute(0)
            .add_duration(Duration::from_nanos(compute_ns));
        Some(set.clone_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::physical_plan::displayable;
    use datafusion::prelude::SessionContext;
    use strata_proto::storage::v1::OperatorMetrics;

    async fn plan() -> Arc<dyn ExecutionPlan> {
        let ctx = SessionContext::new();
        ctx.sql("SELECT a FROM (VALUES (1), (2)) t(a) WHERE a > 1")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap()
    }

    fn report(node_id: u64, names: &[String], rows: u64) -> FragmentMetrics {
        FragmentMetrics {
            node_id,
            elapsed_ns: 1_000,
            operators: names
                .iter()
                .map(|n| OperatorMetrics {
                    name: n.clone(),
                    output_rows: rows,
                    elapsed_compute_ns: 10,
                    spilled_bytes: 0,
                })
                .collect(),
        }
    }

    #[tokio::test]
    async fn a_mirror_shows_as_the_plan_with_the_reported_metrics() {
        let plan = plan().await;
        let (shown, reports) = mirror(&plan);
        assert_eq!(
            displayable(shown.as_ref()).indent(true).to_string(),
            displayable(plan.as_ref()).indent(true).to_string()
        );
        let names = reports.0.lock().names.clone();
        reports.add(&report(1, &names, 3), 100);
        reports.add(&report(2, &names, 4), 50);
        let root = shown.metrics().unwrap();
        assert_eq!(root.output_rows(), Some(7));
        assert_eq!(root.elapsed_compute(), Some(20));
        let nodes = reports.nodes();
        assert_eq!(nodes[&1].bytes, 100);
        assert_eq!(nodes[&2].output_rows, 4);
        let mut set = MetricsSet::new();
        reports.push_node_metrics(&mut set);
        let text = set.to_string();
        assert!(
            text.contains("rows@node1=3") && text.contains("bytes@node2=50"),
            "{text}"
        );
        assert!(shown.execute(0, SessionContext::new().task_ctx()).is_err());
        assert!(Arc::ptr_eq(&unmirror(&shown), &plan));
    }

    #[tokio::test]
    async fn a_report_of_another_shape_counts_only_for_its_node() {
        let plan = plan().await;
        let (shown, reports) = mirror(&plan);
        reports.add(&report(1, &["Other".to_string()], 3), 10);
        assert_eq!(reports.nodes()[&1].output_rows, 3);
        assert_eq!(shown.metrics().and_then(|m| m.output_rows()), None);
    }
}
