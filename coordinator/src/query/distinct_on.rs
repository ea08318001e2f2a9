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
//! in the order pick an arbitrary row either way.
//!
//! Only where the cache answers it: the keys are tags, `rest` leads with
//! `time DESC`, and the rows are filtered only on tags and lower bounds
//! of time. Over every row (the cache off, a field filter) the window
//! sorts each shard, which costs more than the aggregate's hash table.

use std::collections::BTreeSet;

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
use strata_catalog::model::TIME_COLUMN;

use crate::dist_plan::last_value::{tag_names, upward_closed_logical};
use crate::dist_plan::StrataOptions;

#[derive(Debug, Default)]
pub struct DistinctOnAsWindow;

impl AnalyzerRule for DistinctOnAsWindow {
    fn analyze(&self, plan: LogicalPlan, config: &ConfigOptions) -> Result<LogicalPlan> {
        let cache = config
            .extensions
            .get::<StrataOptions>()
            .is_none_or(|o| o.last_value_cache);
        if !cache {
            return Ok(plan);
        }
        plan.transform_up(|p| {
            let LogicalPlan::Distinct(Distinct::On(on)) = &p else {
                return Ok(Transformed::no(p));
            };
            if !cache_answers(on) {
                return Ok(Transformed::no(p));
            }
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

/// Whether the last-value cache can answer `on` once it is a window:
/// keys that are tags, an order that leads (after the keys) with `time
/// DESC`, and a scan filtered only on tags and lower bounds of time.
fn cache_answers(on: &DistinctOn) -> bool {
    let Some(order) = &on.sort_expr else {
        return false;
    };
    let Some(tags) = scan_tags(&on.input) else {
        return false;
    };
    let keys: Vec<&str> = on
        .on_expr
        .iter()
        .filter_map(|e| match e {
            Expr::Column(c) if tags.contains(&c.name) => Some(c.name.as_str()),
            _ => None,
        })
        .collect();
    if keys.len() != on.on_expr.len() {
        return false;
    }
    for s in order {
        match &s.expr {
            Expr::Column(c) if c.name == TIME_COLUMN => return !s.asc,
            Expr::Column(c) if keys.contains(&c.name.as_str()) => continue,
            _ => return false,
        }
    }
    false
}

/// The tag columns of the table below `plan`, when only projections of
/// columns, aliases and filters the cache can answer stand between.
fn scan_tags(plan: &LogicalPlan) -> Option<BTreeSet<String>> {
    match plan {
        LogicalPlan::TableScan(scan) => {
            let tags = tag_names(&scan.source.schema());
            let ok = scan.fetch.is_none()
                && scan.filters.iter().all(|f| upward_closed_logical(f, &tags));
            ok.then_some(tags)
        }
        LogicalPlan::Filter(f) => {
            let tags = scan_tags(&f.input)?;
            upward_closed_logical(&f.predicate, &tags).then_some(tags)
        }
        LogicalPlan::SubqueryAlias(a) => scan_tags(&a.input),
        LogicalPlan::Projection(p) => {
            let plain = p.expr.iter().all(|e| matches!(e, Expr::Column(_)));
            plain.then(|| scan_tags(&p.input)).flatten()
        }
        _ => None,
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
