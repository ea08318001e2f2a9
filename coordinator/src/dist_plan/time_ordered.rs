//! Time-ordered early stop: `ORDER BY time [DESC] LIMIT k` reads shard
//! groups one at a time, newest first (oldest first when ascending), and
//! stops once `k` rows are out. Shard groups cover disjoint time windows,
//! so every row of a newer group comes before every row of an older one:
//! merging one group's shards at a time and concatenating the groups is
//! the global order, and groups after the k-th row are never read.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use futures::StreamExt;
use strata_catalog::model::TIME_COLUMN;
use strata_storage::fragment::ScanLeafExec;

use super::shard_fragment::{Binding, ShardFragmentExec, Strategy, Task};

/// Replaces a sort-preserving merge with a limit on `time` over a fan-out
/// whose tasks are shard groups by a [`TimeOrderedExec`].
pub fn rewrite(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_down(|p| {
        if p.is::<ShardFragmentExec>() {
            return Ok(Transformed::new(p, false, TreeNodeRecursion::Jump));
        }
        let Some(spm) = p.downcast_ref::<SortPreservingMergeExec>() else {
            return Ok(Transformed::no(p));
        };
        let Some(fetch) = spm.fetch() else {
            return Ok(Transformed::no(p));
        };
        let Some(f) = spm.input().downcast_ref::<ShardFragmentExec>() else {
            return Ok(Transformed::no(p));
        };
        let first = spm.expr().first();
        let descending = first.options.descending;
        let leads_with_time = first
            .expr
            .downcast_ref::<Column>()
            .is_some_and(|c| is_table_time(f.fragment(), c.index()));
        if !leads_with_time
            || f.binding() != Binding::PerTask
            || f.tasks().len() < 2
            || f.tasks().iter().any(|t| t.window.is_none())
        {
            return Ok(Transformed::no(p));
        }
        let input = Arc::new(f.with_fragment(f.fragment().clone(), Strategy::TimeOrdered));
        Ok(Transformed::new(
            Arc::new(TimeOrderedExec::new(
                input,
                spm.expr().clone(),
                fetch,
                descending,
            )) as Arc<dyn ExecutionPlan>,
            true,
            TreeNodeRecursion::Jump,
        ))
    })
    .map(|t| t.data)
}

/// Whether output column `index` of `plan` is the table's `time` column,
/// passed up unchanged through the operators of a fragment.
fn is_table_time(plan: &Arc<dyn ExecutionPlan>, index: usize) -> bool {
    let any = plan;
    if let Some(leaf) = any.downcast_ref::<ScanLeafExec>() {
        return leaf.schema().field(index).name() == TIME_COLUMN;
    }
    if let Some(p) = any.downcast_ref::<ProjectionExec>() {
        return p.expr().get(index).is_some_and(|e| {
            e.expr
                .downcast_ref::<Column>()
                .is_some_and(|c| is_table_time(p.input(), c.index()))
        });
    }
    if let Some(f) = any.downcast_ref::<FilterExec>() {
        let index = match f.projection() {
            Some(p) => match p.get(index) {
                Some(i) => *i,
                None => return false,
            },
            None => index,
        };
        return is_table_time(f.input(), index);
    }
    if any.is::<SortExec>() || any.is::<LocalLimitExec>() {
        return is_table_time(&plan.children()[0].clone(), index);
    }
    false
}

pub struct TimeOrderedExec {
    input: Arc<dyn ExecutionPlan>,
    ordering: LexOrdering,
    fetch: usize,
    descending: bool,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl TimeOrderedExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        ordering: LexOrdering,
        fetch: usize,
        descending: bool,
    ) -> Self {
        let merge = SortPreservingMergeExec::new(ordering.clone(), input.clone());
        let properties = merge.properties().clone();
        Self {
            input,
            ordering,
            fetch,
            descending,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn fragment(&self) -> &ShardFragmentExec {
        self.input
            .downcast_ref::<ShardFragmentExec>()
            .expect("input is a fragment")
    }

    /// The tasks by shard group, in the order they are read.
    fn groups(&self) -> Vec<Vec<Task>> {
        let mut by_window: BTreeMap<(i64, i64), Vec<Task>> = BTreeMap::new();
        for t in self.fragment().tasks() {
            by_window
                .entry(t.window.expect("checked by the rule"))
                .or_default()
                .push(t.clone());
        }
        let mut groups: Vec<Vec<Task>> = by_window.into_values().collect();
        if self.descending {
            groups.reverse();
        }
        groups
    }
}

/// Where a time-ordered read is: rows still wanted, the shard groups not
/// yet opened, and the merge of the one being read.
struct Walk {
    left: usize,
    groups: std::collections::VecDeque<Vec<Task>>,
    current: Option<SendableRecordBatchStream>,
}

impl fmt::Debug for TimeOrderedExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeOrderedExec")
            .field("fetch", &self.fetch)
            .finish()
    }
}

impl DisplayAs for TimeOrderedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "TimeOrderedExec: [{}], fetch={}, shard_groups={}",
            self.ordering,
            self.fetch,
            self.groups().len()
        )
    }
}

impl ExecutionPlan for TimeOrderedExec {
    fn name(&self) -> &str {
        "TimeOrderedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match children.pop() {
            Some(input) if children.is_empty() && input.is::<ShardFragmentExec>() => Ok(Arc::new(
                Self::new(input, self.ordering.clone(), self.fetch, self.descending),
            )),
            _ => Err(DataFusionError::Internal(
                "TimeOrderedExec reads one fragment".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "TimeOrderedExec has one partition, asked for {partition}"
            )));
        }
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let groups_read: Count = MetricBuilder::new(&self.metrics).counter("shard_groups_read", 0);
        let state = Walk {
            left: self.fetch,
            groups: self.groups().into(),
            current: None,
        };
        let (input, ordering) = (self.input.clone(), self.ordering.clone());
        let stream = futures::stream::try_unfold(state, move |mut walk| {
            let (input, ordering, ctx) = (input.clone(), ordering.clone(), ctx.clone());
            let (baseline, groups_read) = (baseline.clone(), groups_read.clone());
            async move {
                loop {
                    if walk.left == 0 {
                        return Ok(None);
                    }
                    if walk.current.is_none() {
                        let Some(tasks) = walk.groups.pop_front() else {
                            return Ok(None);
                        };
                        groups_read.add(1);
                        let f = input
                            .downcast_ref::<ShardFragmentExec>()
                            .expect("input is a fragment");
                        let merge = SortPreservingMergeExec::new(
                            ordering.clone(),
                            Arc::new(f.with_tasks(tasks)),
                        )
                        .with_fetch(Some(walk.left));
                        walk.current = Some(merge.execute(0, ctx.clone())?);
                    }
                    let current = walk.current.as_mut().expect("a group is open");
                    match current.next().await {
                        Some(batch) => {
                            let batch = batch?;
                            let n = batch.num_rows().min(walk.left);
                            walk.left -= n;
                            baseline.record_output(n);
                            return Ok(Some((batch.slice(0, n), walk)));
                        }
                        None => walk.current = None,
                    }
                }
            }
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema(),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}
