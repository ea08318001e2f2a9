//! The latest row per series written as a self-join on `max(time)`:
//!
//! ```sql
//! SELECT c.* FROM cpu c
//! JOIN (SELECT host, max(time) AS t FROM cpu GROUP BY host) m
//!   ON c.host = m.host AND c.time = m.t
//! ```
//!
//! The aggregate side is a fan-out-aggregate, but the row side is a plain
//! fan-out of the whole table. A row can only match if its `time` is the
//! largest of its group overall, and then it is the largest on its own
//! shard too. So when both sides read the same table with the same
//! filters, each shard's fragment of the row side keeps only the rows
//! whose `time` ranks first in their group there (`rank() = 1`, ties
//! kept); the join runs as planned over them. `min` works the same way.
//! Inner and semi joins only: an outer join keeps the rows that do not
//! match.

use std::sync::Arc;

use arrow::compute::SortOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::JoinType;
use datafusion::error::Result;
use datafusion::functions_window::rank::rank_udwf;
use datafusion::logical_expr::{WindowFrame, WindowFunctionDefinition};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::windows::create_window_expr;
use datafusion::physical_plan::ExecutionPlan;
use strata_proto::storage::v1::ScanTicket;
use strata_storage::fragment::ScanLeafExec;

use super::shard_fragment::{Binding, ShardFragmentExec, Strategy};
use super::window_topk::first_rows;

/// What a column of the aggregate side is, by the names of the table
/// columns it comes from.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    Group(String),
    /// `max` (true) or `min` (false) of a column.
    Extreme(String, bool),
}

/// Reduces the row side of every inner or semi self-join on the `max` (or
/// `min`) of a column per group.
pub fn rewrite(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|p| {
        let Some(join) = p.downcast_ref::<HashJoinExec>() else {
            return Ok(Transformed::no(p));
        };
        if !matches!(
            join.join_type(),
            JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi
        ) {
            return Ok(Transformed::no(p));
        }
        let (left, right) = (join.left().clone(), join.right().clone());
        let on: Vec<(usize, usize)> = join
            .on()
            .iter()
            .filter_map(|(l, r)| Some((column(l)?, column(r)?)))
            .collect();
        if on.len() != join.on().len() {
            return Ok(Transformed::no(p));
        }
        let flipped: Vec<(usize, usize)> = on.iter().map(|(l, r)| (*r, *l)).collect();
        if let Some(reduced) = reduce(&left, &right, &on)? {
            return Ok(Transformed::yes(
                p.clone()
                    .replace_children(vec![reduced, right], recompute())?,
            ));
        }
        if let Some(reduced) = reduce(&right, &left, &flipped)? {
            return Ok(Transformed::yes(
                p.clone()
                    .replace_children(vec![left, reduced], recompute())?,
            ));
        }
        Ok(Transformed::no(p))
    })
    .map(|t| t.data)
}

fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

fn column(e: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    e.downcast_ref::<Column>().map(|c| c.index())
}

/// `rows` (the row side) with its fan-out reduced, when `aggregated` is a
/// grouped `max`/`min` of the same rows and `on` (row column, aggregate
/// column) joins every group column and the extreme.
fn reduce(
    rows: &Arc<dyn ExecutionPlan>,
    aggregated: &Arc<dyn ExecutionPlan>,
    on: &[(usize, usize)],
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some((agg_leaf, groups, extremes)) = aggregate_side(aggregated) else {
        return Ok(None);
    };
    let mut keys = vec![];
    let mut extreme = None;
    for (row_column, agg_column) in on {
        let Some(source) = trace_output(aggregated, *agg_column, &groups, &extremes) else {
            return Ok(None);
        };
        match source {
            Source::Group(name) => keys.push((*row_column, name)),
            Source::Extreme(name, max) if extreme.is_none() => {
                extreme = Some((*row_column, name, max))
            }
            Source::Extreme(..) => return Ok(None),
        }
    }
    let Some(extreme) = extreme else {
        return Ok(None);
    };
    // Every group column joined, each once: a key joined twice must not
    // stand in for a group column left out.
    let joined: std::collections::BTreeSet<&String> = keys.iter().map(|(_, n)| n).collect();
    let grouped: std::collections::BTreeSet<&String> = groups.iter().collect();
    if joined != grouped || keys.len() != groups.len() {
        return Ok(None);
    }
    reduce_rows(rows, &agg_leaf, &keys, &extreme)
}

/// The leaf, group columns and extremes (`max`/`min` of a column, by
/// aggregate position) of an aggregate side: a final aggregate over a
/// fan-out-aggregate whose partial aggregate groups columns of the scan.
#[allow(clippy::type_complexity)]
fn aggregate_side(
    plan: &Arc<dyn ExecutionPlan>,
) -> Option<(ScanTicket, Vec<String>, Vec<Option<(String, bool)>>)> {
    let mut p = plan.clone();
    let final_agg = loop {
        if let Some(a) = p.downcast_ref::<AggregateExec>() {
            break a.clone();
        }
        if !(p.is::<ProjectionExec>()
            || p.is::<RepartitionExec>()
            || p.is::<CoalescePartitionsExec>()
            || p.is::<SortExec>())
        {
            return None;
        }
        let [child] = p.children()[..] else {
            return None;
        };
        p = child.clone();
    };
    if !matches!(
        final_agg.mode(),
        AggregateMode::Final | AggregateMode::FinalPartitioned
    ) {
        return None;
    }
    let mut below = final_agg.input().clone();
    while below.is::<RepartitionExec>() || below.is::<CoalescePartitionsExec>() {
        below = below.children()[0].clone();
    }
    let f = below.downcast_ref::<ShardFragmentExec>()?;
    let partial = f.fragment().downcast_ref::<AggregateExec>()?;
    if *partial.mode() != AggregateMode::Partial
        || partial.filter_expr().iter().any(Option::is_some)
    {
        return None;
    }
    let (leaf, names) = leaf_columns(partial.input())?;
    let group = partial.group_expr();
    if group.has_grouping_set() {
        return None;
    }
    let groups = group
        .expr()
        .iter()
        .map(|(e, _)| column(e).map(|i| names[i].clone()))
        .collect::<Option<Vec<_>>>()?;
    let extremes = partial
        .aggr_expr()
        .iter()
        .map(|a| {
            let max = match a.fun().name() {
                "max" => true,
                "min" => false,
                _ => return None,
            };
            if a.is_distinct() {
                return None;
            }
            let [arg] = &a.expressions()[..] else {
                return None;
            };
            Some((names[column(arg)?].clone(), max))
        })
        .collect();
    Some((leaf, groups, extremes))
}

/// The scan below `plan` (through projections of columns) and, per column
/// of `plan`, the name of the scanned column it is.
fn leaf_columns(plan: &Arc<dyn ExecutionPlan>) -> Option<(ScanTicket, Vec<String>)> {
    if let Some(leaf) = plan.downcast_ref::<ScanLeafExec>() {
        let names = leaf
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        return Some((leaf.ticket().clone(), names));
    }
    let projection = plan.downcast_ref::<ProjectionExec>()?;
    let (leaf, below) = leaf_columns(projection.input())?;
    let names = projection
        .expr()
        .iter()
        .map(|e| column(&e.expr).map(|i| below[i].clone()))
        .collect::<Option<Vec<_>>>()?;
    Some((leaf, names))
}

/// What column `index` of the aggregate side is.
fn trace_output(
    plan: &Arc<dyn ExecutionPlan>,
    index: usize,
    groups: &[String],
    extremes: &[Option<(String, bool)>],
) -> Option<Source> {
    if let Some(a) = plan.downcast_ref::<AggregateExec>() {
        let n = groups.len();
        return match index < n {
            true => Some(Source::Group(groups[index].clone())),
            false => {
                let (name, max) = extremes.get(index - n)?.clone()?;
                Some(Source::Extreme(name, max)).filter(|_| a.aggr_expr().len() == extremes.len())
            }
        };
    }
    let index = match plan.downcast_ref::<ProjectionExec>() {
        Some(p) => column(&p.expr().get(index)?.expr)?,
        None => index,
    };
    trace_output(plan.children().first()?, index, groups, extremes)
}

/// The row side with each shard keeping the rows ranking first by the
/// extreme within their keys, when it is a fan-out of the same scan.
fn reduce_rows(
    plan: &Arc<dyn ExecutionPlan>,
    agg_leaf: &ScanTicket,
    keys: &[(usize, String)],
    extreme: &(usize, String, bool),
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(f) = plan.downcast_ref::<ShardFragmentExec>() else {
        if !(plan.is::<RepartitionExec>() || plan.is::<CoalescePartitionsExec>()) {
            return Ok(None);
        }
        let [child] = plan.children()[..] else {
            return Ok(None);
        };
        return match reduce_rows(child, agg_leaf, keys, extreme)? {
            Some(c) => Ok(Some(plan.clone().replace_children(vec![c], recompute())?)),
            None => Ok(None),
        };
    };
    if f.binding() != Binding::PerTask || f.strategy() != Strategy::FanOut {
        return Ok(None);
    }
    let fragment = f.fragment();
    let Some((leaf, names)) = leaf_columns(fragment) else {
        return Ok(None);
    };
    let same_rows = |t: &ScanTicket| ScanTicket {
        projection: None,
        shard_ids: vec![],
        ..t.clone()
    };
    if same_rows(&leaf) != same_rows(agg_leaf) {
        return Ok(None);
    }
    // The join's columns must be the scanned columns the aggregate used.
    let (extreme_column, extreme_name, max) = extreme;
    if names.get(*extreme_column) != Some(extreme_name)
        || keys.iter().any(|(c, n)| names.get(*c) != Some(n))
    {
        return Ok(None);
    }
    let schema = fragment.schema();
    let col =
        |i: usize| -> Arc<dyn PhysicalExpr> { Arc::new(Column::new(schema.field(i).name(), i)) };
    let partition_by: Vec<Arc<dyn PhysicalExpr>> = keys.iter().map(|(c, _)| col(*c)).collect();
    let by_extreme = PhysicalSortExpr::new(
        col(*extreme_column),
        SortOptions {
            descending: *max,
            nulls_first: false,
        },
    );
    let order = LexOrdering::new(
        partition_by
            .iter()
            .map(|e| PhysicalSortExpr::new(e.clone(), SortOptions::default()))
            .chain([by_extreme.clone()]),
    );
    let Some(order) = order else {
        return Ok(None);
    };
    let rank = create_window_expr(
        &WindowFunctionDefinition::WindowUDF(rank_udwf()),
        "rank".to_string(),
        &[],
        &partition_by,
        &[by_extreme],
        Arc::new(WindowFrame::new(Some(true))),
        schema.clone(),
        false,
        false,
        None,
    )?;
    first_rows(f, &order, rank, 1)
}
