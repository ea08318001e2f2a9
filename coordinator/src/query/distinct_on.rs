//! `DISTINCT ON (keys) ... ORDER BY keys, rest` planned as the first row
//! per key by `row_number()` instead of DataFusion's `first_value` per
//! column.
//!
//! DataFusion turns `DISTINCT ON` into an aggregate with one
//! `first_value(column ORDER BY ...)` per selected column. For the latest
//! row per series with every column (TSBS lastpoint: 21 columns), that is
//! 21 ordered accumulators on every node and on the coordinator, and
//! partial states three times the width of the rows. The same answer is
//! `row_number() OVER (PARTITION BY keys ORDER BY keys, rest) = 1`, which
//! the planner pushes to the nodes as a per-shard top-1
//! (`dist_plan/window_topk.rs`) and answers from the last-value cache
//! when `rest` leads with `time DESC` (`dist_plan/last_value.rs`). Ties
//! in the order pick an arbitrary row either way. Without an ORDER BY the
//! row is arbitrary and the aggregate stays.

use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::functions_window::row_number::row_number_udwf;
use datafusion::logical_expr::expr::WindowFunction;
use datafusion::logical_expr::{
    lit, Distinct, DistinctOn, Expr, ExprFunctionExt, LogicalPlan, LogicalPlanBuilder,
    WindowFunctionDefinition,
};
use datafusion::optimizer::AnalyzerRule;

#[derive(Debug, Default)]
pub struct DistinctOnAsWindow;

impl AnalyzerRule for DistinctOnAsWindow {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up(|p| {
            let LogicalPlan::Distinct(Distinct::On(on)) = &p else {
                return Ok(Transformed::no(p));
            };
            Ok(match as_window(on) {
                Ok(Some(rewritten)) => Transformed::yes(rewritten),
                // Anything unexpected keeps DataFusion's plan.
                _ => Transformed::no(p),
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "strata_distinct_on_as_window"
    }
}

fn as_window(on: &DistinctOn) -> Result<Option<LogicalPlan>> {
    let Some(order) = &on.sort_expr else {
        return Ok(None);
    };
    let row_number = Expr::from(WindowFunction::new(
        WindowFunctionDefinition::WindowUDF(row_number_udwf()),
        vec![],
    ))
    .partition_by(on.on_expr.clone())
    .order_by(order.clone())
    .build()?;
    let number = Expr::Column(Column::from_name(row_number.schema_name().to_string()));
    let plan = LogicalPlanBuilder::from(on.input.as_ref().clone())
        .window(vec![row_number])?
        .filter(number.eq(lit(1u64)))?
        .sort(order.clone())?
        .project(on.select_expr.clone())?
        .build()?;
    // The rewrite must answer with exactly the columns DISTINCT ON does.
    Ok((plan.schema() == &on.schema).then_some(plan))
}
