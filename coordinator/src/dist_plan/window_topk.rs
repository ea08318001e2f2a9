//! The first rows per series, written with a window function:
//!
//! ```sql
//! SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY host ORDER BY time DESC) AS rn
//!                FROM cpu) WHERE rn = 1
//! ```
//!
//! DataFusion runs the window over every row, so a plain fan-out ships the
//! whole table to the coordinator. The rows numbered `<= k` overall are
//! among the rows numbered `<= k` on their own shard (a row's predecessors
//! overall include its predecessors on its shard), and keeping only those
//! changes no kept row's number and gives no dropped row a number `<= k`.
//! So each shard's fragment sorts, numbers and keeps its first `k` rows per
//! partition key, and the coordinator's window and filter run as planned
//! over at most `k` rows per key and shard.

use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::ScalarValue;
use datafusion::error::Result;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::window::StandardWindowExpr;
use datafusion::physical_expr::{LexOrdering, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowUDFExpr};
use datafusion::physical_plan::{ExecutionPlan, InputOrderMode, WindowExpr};
use strata_storage::fragment::check_sendable;

use super::shard_fragment::{Binding, ShardFragmentExec, Strategy};

/// Largest `k` pushed: beyond it a shard's first rows are most of its rows.
const MAX_K: u64 = 10_000;

/// Puts the per-shard pre-reduction into every fragment below a
/// `rn <= k` filter over a `row_number()` window.
pub fn rewrite(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_down(|p| {
        let Some(reduced) = reduce(&p)? else {
            return Ok(Transformed::no(p));
        };
        Ok(Transformed::new(reduced, true, TreeNodeRecursion::Jump))
    })
    .map(|t| t.data)
}

/// `plan` with its window's input reduced, when it is a filter bounding a
/// `row_number()` window over a fan-out.
fn reduce(plan: &Arc<dyn ExecutionPlan>) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let Some(filter) = plan.downcast_ref::<FilterExec>() else {
        return Ok(None);
    };
    let window_plan = filter.input();
    let Some(window) = window_plan.downcast_ref::<BoundedWindowAggExec>() else {
        return Ok(None);
    };
    let [w] = window.window_expr() else {
        return Ok(None);
    };
    if !is_row_number(w) {
        return Ok(None);
    }
    let number = window.input().schema().fields().len();
    let Some(k) = bound(filter.predicate(), number) else {
        return Ok(None);
    };
    if k == 0 || k > MAX_K {
        return Ok(None);
    }
    let Some(input) = reduce_below(window.input(), w, k, None)? else {
        return Ok(None);
    };
    let window_plan = window_plan
        .clone()
        .replace_children(vec![input], recompute())?;
    Ok(Some(
        plan.clone()
            .replace_children(vec![window_plan], recompute())?,
    ))
}

fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

fn is_row_number(w: &Arc<dyn WindowExpr>) -> bool {
    ranking_window(w) == Some("row_number")
}

/// `row_number` or `rank`, when `w` is one of them.
pub(super) fn ranking_window(w: &Arc<dyn WindowExpr>) -> Option<&'static str> {
    let name = w
        .as_any()
        .downcast_ref::<StandardWindowExpr>()
        .and_then(|s| {
            s.get_standard_func_expr()
                .as_any()
                .downcast_ref::<WindowUDFExpr>()
        })?
        .fun()
        .name()
        .to_string();
    ["row_number", "rank"].into_iter().find(|n| *n == name)
}

/// The largest row number a conjunct of `predicate` lets through, when one
/// compares the number (column `number`) with a constant.
pub(super) fn bound(predicate: &Arc<dyn PhysicalExpr>, number: usize) -> Option<u64> {
    let b = predicate.downcast_ref::<BinaryExpr>()?;
    if *b.op() == Operator::And {
        return match (bound(b.left(), number), bound(b.right(), number)) {
            (Some(l), Some(r)) => Some(l.min(r)),
            (l, r) => l.or(r),
        };
    }
    let is_number = |e: &Arc<dyn PhysicalExpr>| {
        e.downcast_ref::<Column>()
            .is_some_and(|c| c.index() == number)
    };
    let constant = |e: &Arc<dyn PhysicalExpr>| -> Option<u64> {
        match e.downcast_ref::<Literal>()?.value() {
            ScalarValue::UInt64(Some(v)) => Some(*v),
            ScalarValue::Int64(Some(v)) => u64::try_from(*v).ok(),
            _ => None,
        }
    };
    // As `number <op> constant`.
    let (op, k) = if is_number(b.left()) {
        (*b.op(), constant(b.right())?)
    } else if is_number(b.right()) {
        (b.op().swap()?, constant(b.left())?)
    } else {
        return None;
    };
    match op {
        Operator::Eq | Operator::LtEq => Some(k),
        Operator::Lt => k.checked_sub(1),
        _ => None,
    }
}

/// The window's input with the fan-out below it reduced: through the
/// sorts, repartitions and merges between them (which keep the schema),
/// the last sort's order being the one each shard numbers its rows in.
fn reduce_below(
    plan: &Arc<dyn ExecutionPlan>,
    w: &Arc<dyn WindowExpr>,
    k: u64,
    order: Option<&LexOrdering>,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    if let Some(f) = plan.downcast_ref::<ShardFragmentExec>() {
        let Some(order) = order else {
            return Ok(None);
        };
        if f.binding() != Binding::PerTask || f.strategy() != Strategy::FanOut {
            return Ok(None);
        }
        return first_rows(f, order, w.clone(), k);
    }
    let order = match plan.downcast_ref::<SortExec>() {
        Some(sort) if order.is_none() => Some(sort.expr()),
        Some(_) => order,
        None if plan.is::<RepartitionExec>() || plan.is::<CoalescePartitionsExec>() => order,
        None => return Ok(None),
    };
    let [child] = plan.children()[..] else {
        return Ok(None);
    };
    let Some(child) = reduce_below(child, w, k, order)? else {
        return Ok(None);
    };
    Ok(Some(
        plan.clone().replace_children(vec![child], recompute())?,
    ))
}

/// `f` with each of its shards keeping only the rows `w` (a ranking
/// window over `order`, which sorts by its partition keys first) numbers
/// `<= k`; `None` when the fragment could not be sent so.
pub(super) fn first_rows(
    f: &ShardFragmentExec,
    order: &LexOrdering,
    w: Arc<dyn WindowExpr>,
    k: u64,
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let fragment = f.fragment().clone();
    let columns = fragment.schema().fields().len();
    let sorted = Arc::new(SortExec::new(order.clone(), fragment).with_preserve_partitioning(true));
    let numbered = Arc::new(BoundedWindowAggExec::try_new(
        vec![w],
        sorted,
        InputOrderMode::Sorted,
        false,
    )?);
    let name = numbered.schema().field(columns).name().clone();
    let kept: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
        Arc::new(Column::new(&name, columns)),
        Operator::LtEq,
        Arc::new(Literal::new(ScalarValue::UInt64(Some(k)))),
    ));
    let reduced = FilterExecBuilder::new(kept, numbered)
        .apply_projection(Some((0..columns).collect()))?
        .build()?;
    let reduced: Arc<dyn ExecutionPlan> = Arc::new(reduced);
    if let Err(e) = check_sendable(reduced.clone()) {
        tracing::debug!(error = %e, "first-rows pre-reduction stays off the nodes");
        return Ok(None);
    }
    Ok(Some(Arc::new(f.with_fragment(reduced, Strategy::FanOut))))
}
