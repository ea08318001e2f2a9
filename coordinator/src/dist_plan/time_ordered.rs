//! Time-ordered early stop: a query ordered first by `time`, or by a time
//! bucket (`date_trunc`, `date_bin` of `time`), with a LIMIT reads shard
//! groups one at a time, newest first (oldest first when ascending), and
//! stops once `k` rows are out.
//!
//! Shard groups cover disjoint time windows. When every value the leading
//! key takes in one group sorts before every value it takes in the next
//! (always true of `time`; true of a bucket whose edges fall on the groups'
//! edges, checked at plan time by evaluating the bucket at the windows'
//! ends), running the coordinator's part of the plan over one group at a
//! time and concatenating the answers gives the global order. That holds
//! for the operators that work row by row (filter, projection), for sorts,
//! repartitions and coalesces, and for aggregates grouped by that key: a
//! bucket's rows all lie in one group, so its aggregate is complete there.
//! Groups after the k-th row are never read.

use std::cmp::Ordering;
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, TimestampNanosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, ScalarFunctionExpr};
use datafusion::physical_plan::aggregates::AggregateExec;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
};
use futures::StreamExt;
use strata_catalog::model::TIME_COLUMN;
use strata_storage::fragment::ScanLeafExec;

use super::shard_fragment::{Binding, ShardFragmentExec, Strategy, Task};

/// Replaces a limited sort whose leading key is `time` or a time bucket,
/// over a fan-out whose tasks are shard groups, by a [`TimeOrderedExec`].
pub fn rewrite(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_down(|p| {
        if p.is::<ShardFragmentExec>() {
            return Ok(Transformed::new(p, false, TreeNodeRecursion::Jump));
        }
        match time_ordered(&p)? {
            Some(t) => Ok(Transformed::new(
                Arc::new(t) as Arc<dyn ExecutionPlan>,
                true,
                TreeNodeRecursion::Jump,
            )),
            None => Ok(Transformed::no(p)),
        }
    })
    .map(|t| t.data)
}

/// The operator that merges the input's partitions in order and cuts at the
/// limit: a sort-preserving merge, or a sort of a single partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Merge {
    SortPreserving,
    Sort,
}

/// `p` as a [`TimeOrderedExec`], when it is a limited sort that can read
/// shard groups one at a time.
fn time_ordered(p: &Arc<dyn ExecutionPlan>) -> Result<Option<TimeOrderedExec>> {
    let (ordering, fetch, merge, input) =
        if let Some(spm) = p.downcast_ref::<SortPreservingMergeExec>() {
            let Some(fetch) = spm.fetch() else {
                return Ok(None);
            };
            (
                spm.expr().clone(),
                fetch,
                Merge::SortPreserving,
                spm.input(),
            )
        } else if let Some(sort) = p.downcast_ref::<SortExec>() {
            match sort.fetch() {
                Some(fetch) if !sort.preserve_partitioning() => {
                    (sort.expr().clone(), fetch, Merge::Sort, sort.input())
                }
                _ => return Ok(None),
            }
        } else {
            return Ok(None);
        };
    let first = ordering.first();
    let Some(column) = first.expr.downcast_ref::<Column>() else {
        return Ok(None);
    };
    let Some(key) = time_key(input, column.index()) else {
        return Ok(None);
    };
    let limited = Limited {
        ordering: &ordering,
        fetch,
        key: &key,
    };
    let Some(f) = separable_chain(input, &limited) else {
        return Ok(None);
    };
    if f.binding() != Binding::PerTask || f.tasks().iter().any(|t| t.window.is_none()) {
        return Ok(None);
    }
    let windows: Vec<(i64, i64)> = groups(f, false).iter().map(|g| window(g)).collect();
    // A bucket that cannot be evaluated at a window edge keeps the plain plan.
    if windows.len() < 2 || !key.separates(&windows).unwrap_or(false) {
        return Ok(None);
    }
    let input = input
        .clone()
        .transform_down(|p| match p.downcast_ref::<ShardFragmentExec>() {
            Some(f) => Ok(Transformed::new(
                Arc::new(f.with_fragment(f.fragment().clone(), Strategy::TimeOrdered))
                    as Arc<dyn ExecutionPlan>,
                true,
                TreeNodeRecursion::Jump,
            )),
            None => Ok(Transformed::no(p)),
        })?
        .data;
    Ok(Some(TimeOrderedExec::new(
        input,
        ordering.clone(),
        fetch,
        first.options.descending,
        merge,
    )))
}

/// The sort a time-ordered read stands for: its order, its limit and
/// what its leading key is in terms of `time`.
struct Limited<'a> {
    ordering: &'a LexOrdering,
    fetch: usize,
    key: &'a TimeKey,
}

/// The fragment at the bottom of `plan`, when every operator above it on
/// the coordinator gives, run over the shard groups one at a time, the
/// answers it gives over all of them (given a leading key that separates
/// the groups, checked apart): one input each, and row by row, or grouped
/// by that key (which [`time_key`] requires of every aggregate it passes),
/// or a top-k in the limited sort's own order (pushed below a projection,
/// so with its expressions rewritten): it keeps each group's first rows,
/// which is all the sort above takes from that group.
fn separable_chain<'a>(
    plan: &'a Arc<dyn ExecutionPlan>,
    limited: &Limited,
) -> Option<&'a ShardFragmentExec> {
    if let Some(f) = plan.downcast_ref::<ShardFragmentExec>() {
        return Some(f);
    }
    let same_top_k = |s: &SortExec| {
        let first = s.expr().first();
        s.fetch().is_some_and(|f| f >= limited.fetch)
            && s.expr().len() == limited.ordering.len()
            && s.expr()
                .iter()
                .zip(limited.ordering.iter())
                .all(|(a, b)| a.options == b.options)
            && first
                .expr
                .downcast_ref::<Column>()
                .and_then(|c| time_key(s.input(), c.index()))
                .is_some_and(|k| k.same_as(limited.key))
    };
    let separable = plan.is::<ProjectionExec>()
        || plan.is::<FilterExec>()
        || plan.is::<RepartitionExec>()
        || plan.is::<CoalescePartitionsExec>()
        || plan
            .downcast_ref::<AggregateExec>()
            .is_some_and(|a| !a.group_expr().has_grouping_set() && a.limit_options().is_none())
        || plan
            .downcast_ref::<SortExec>()
            .is_some_and(|s| s.fetch().is_none() || same_top_k(s));
    let children = plan.children();
    match (separable, children.as_slice()) {
        (true, [child]) => separable_chain(child, limited),
        _ => None,
    }
}

/// The fragment at the bottom of a chain of one-input operators.
fn chain_fragment(plan: &Arc<dyn ExecutionPlan>) -> Option<&ShardFragmentExec> {
    if let Some(f) = plan.downcast_ref::<ShardFragmentExec>() {
        return Some(f);
    }
    match plan.children().as_slice() {
        [child] => chain_fragment(child),
        _ => None,
    }
}

/// What a sort key is in terms of the table's `time` column.
#[derive(Debug, Clone)]
enum TimeKey {
    Time,
    /// A bucket of `time`: the expression over a one-column input holding
    /// `time` at index 0.
    Bucket(Arc<dyn PhysicalExpr>),
}

impl TimeKey {
    /// Whether both are the same function of `time`.
    fn same_as(&self, other: &TimeKey) -> bool {
        match (self, other) {
            (TimeKey::Time, TimeKey::Time) => true,
            (TimeKey::Bucket(a), TimeKey::Bucket(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }

    /// The key's value for rows at time `t` (nanoseconds).
    fn at(&self, t: i64) -> Result<ScalarValue> {
        let bucket = match self {
            TimeKey::Time => return Ok(ScalarValue::TimestampNanosecond(Some(t), None)),
            TimeKey::Bucket(b) => b,
        };
        let schema = Arc::new(Schema::new(vec![Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        )]));
        let times: Arc<dyn Array> = Arc::new(TimestampNanosecondArray::from(vec![t]));
        let batch = RecordBatch::try_new(schema, vec![times])?;
        let value = bucket.evaluate(&batch)?.into_array(1)?;
        ScalarValue::try_from_array(&value, 0)
    }

    /// Whether every row of each window (`[start, end)`, in time order)
    /// has a key below every row of the next window's: the key is
    /// monotonic in `time`, so comparing the last instant of one window
    /// with the first of the next decides it.
    fn separates(&self, windows: &[(i64, i64)]) -> Result<bool> {
        for pair in windows.windows(2) {
            let (last, next) = (self.at(pair[0].1 - 1)?, self.at(pair[1].0)?);
            if last.is_null() || last.partial_cmp(&next) != Some(Ordering::Less) {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// Whether output column `index` of `plan` is the table's `time` column or
/// a bucket of it, passed up unchanged through the operators of a
/// fragment and of the coordinator's part above it. An aggregate passes
/// it up only as one of its group columns.
fn time_key(plan: &Arc<dyn ExecutionPlan>, index: usize) -> Option<TimeKey> {
    let any = plan;
    if let Some(f) = any.downcast_ref::<ShardFragmentExec>() {
        return time_key(f.fragment(), index);
    }
    if let Some(leaf) = any.downcast_ref::<ScanLeafExec>() {
        return (leaf.schema().field(index).name() == TIME_COLUMN).then_some(TimeKey::Time);
    }
    if let Some(p) = any.downcast_ref::<ProjectionExec>() {
        return expr_key(&p.expr().get(index)?.expr, p.input());
    }
    if let Some(f) = any.downcast_ref::<FilterExec>() {
        let index = match f.projection() {
            Some(p) => *p.get(index)?,
            None => index,
        };
        return time_key(f.input(), index);
    }
    if let Some(a) = any.downcast_ref::<AggregateExec>() {
        let group_by = a.group_expr();
        if group_by.has_grouping_set() {
            return None;
        }
        return expr_key(&group_by.expr().get(index)?.0, a.input());
    }
    if any.is::<SortExec>()
        || any.is::<LocalLimitExec>()
        || any.is::<RepartitionExec>()
        || any.is::<CoalescePartitionsExec>()
    {
        return time_key(plan.children()[0], index);
    }
    None
}

/// What `expr`, over `input`'s output, is in terms of `time`: a column
/// that is (a key of) `time`, or `date_trunc` / `date_bin` of `time` with
/// constant other arguments, both monotonic in time.
fn expr_key(expr: &Arc<dyn PhysicalExpr>, input: &Arc<dyn ExecutionPlan>) -> Option<TimeKey> {
    if let Some(c) = expr.downcast_ref::<Column>() {
        return time_key(input, c.index());
    }
    let f = expr.downcast_ref::<ScalarFunctionExpr>()?;
    if !matches!(f.name(), "date_trunc" | "date_bin") {
        return None;
    }
    let mut args = Vec::with_capacity(f.args().len());
    let mut time_args = 0;
    for a in f.args() {
        if a.is::<Literal>() {
            args.push(a.clone());
        } else if matches!(expr_key(a, input), Some(TimeKey::Time)) {
            time_args += 1;
            args.push(Arc::new(Column::new(TIME_COLUMN, 0)) as Arc<dyn PhysicalExpr>);
        } else {
            return None;
        }
    }
    if time_args != 1 {
        return None;
    }
    Some(TimeKey::Bucket(expr.clone().with_new_children(args).ok()?))
}

/// A fragment's tasks by shard group, oldest first (newest first when
/// `descending`).
fn groups(f: &ShardFragmentExec, descending: bool) -> Vec<Vec<Task>> {
    let mut by_window: BTreeMap<(i64, i64), Vec<Task>> = BTreeMap::new();
    for t in f.tasks() {
        by_window
            .entry(t.window.expect("checked by the rule"))
            .or_default()
            .push(t.clone());
    }
    let mut groups: Vec<Vec<Task>> = by_window.into_values().collect();
    if descending {
        groups.reverse();
    }
    groups
}

fn window(group: &[Task]) -> (i64, i64) {
    group[0].window.expect("checked by the rule")
}

/// Runs its input (the coordinator's part of the plan, down to one
/// fragment) over one shard group at a time, in time order, each merged and
/// cut at the rows still wanted, until the limit is met.
pub struct TimeOrderedExec {
    input: Arc<dyn ExecutionPlan>,
    ordering: LexOrdering,
    fetch: usize,
    descending: bool,
    merge: Merge,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl TimeOrderedExec {
    fn new(
        input: Arc<dyn ExecutionPlan>,
        ordering: LexOrdering,
        fetch: usize,
        descending: bool,
        merge: Merge,
    ) -> Self {
        let properties = merged(merge, &ordering, fetch, input.clone())
            .properties()
            .clone();
        Self {
            input,
            ordering,
            fetch,
            descending,
            merge,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    fn fragment(&self) -> &ShardFragmentExec {
        chain_fragment(&self.input).expect("the input ends in a fragment")
    }

    /// The input with its fragment reading only `tasks`.
    fn over(&self, tasks: Vec<Task>) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = self
            .input
            .clone()
            .transform_down(|p| match p.downcast_ref::<ShardFragmentExec>() {
                Some(f) => Ok(Transformed::new(
                    Arc::new(f.with_tasks(tasks.clone())) as Arc<dyn ExecutionPlan>,
                    true,
                    TreeNodeRecursion::Jump,
                )),
                None => Ok(Transformed::no(p)),
            })?
            .data;
        Ok(merged(self.merge, &self.ordering, self.fetch, plan))
    }
}

/// `input`'s partitions merged in `ordering`, cut at `fetch` rows.
fn merged(
    merge: Merge,
    ordering: &LexOrdering,
    fetch: usize,
    input: Arc<dyn ExecutionPlan>,
) -> Arc<dyn ExecutionPlan> {
    match merge {
        Merge::SortPreserving => {
            Arc::new(SortPreservingMergeExec::new(ordering.clone(), input).with_fetch(Some(fetch)))
        }
        Merge::Sort if input.output_partitioning().partition_count() > 1 => {
            let sorted = SortExec::new(ordering.clone(), input)
                .with_fetch(Some(fetch))
                .with_preserve_partitioning(true);
            Arc::new(
                SortPreservingMergeExec::new(ordering.clone(), Arc::new(sorted))
                    .with_fetch(Some(fetch)),
            )
        }
        Merge::Sort => Arc::new(SortExec::new(ordering.clone(), input).with_fetch(Some(fetch))),
    }
}

/// Where a time-ordered read is: rows still wanted, the shard groups not
/// yet opened, and the answer of the one being read.
struct Walk {
    left: usize,
    groups: VecDeque<Arc<dyn ExecutionPlan>>,
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
            groups(self.fragment(), self.descending).len()
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
            Some(input) if children.is_empty() && chain_fragment(&input).is_some() => {
                Ok(Arc::new(Self::new(
                    input,
                    self.ordering.clone(),
                    self.fetch,
                    self.descending,
                    self.merge,
                )))
            }
            _ => Err(DataFusionError::Internal(
                "TimeOrderedExec reads one chain of operators down to a fragment".into(),
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
            groups: groups(self.fragment(), self.descending)
                .into_iter()
                .map(|tasks| self.over(tasks))
                .collect::<Result<_>>()?,
            current: None,
        };
        let stream = futures::stream::try_unfold(state, move |mut walk| {
            let ctx = ctx.clone();
            let (baseline, groups_read) = (baseline.clone(), groups_read.clone());
            async move {
                loop {
                    if walk.left == 0 {
                        return Ok(None);
                    }
                    if walk.current.is_none() {
                        let Some(group) = walk.groups.pop_front() else {
                            return Ok(None);
                        };
                        groups_read.add(1);
                        walk.current = Some(group.execute(0, ctx.clone())?);
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
