//! Answers "latest row per series" fragments from the storage nodes'
//! last-value caches.
//!
//! A fragment operator whose answer depends only on the newest row of each
//! series it reads can read just those rows (`ScanTicket.latest_per_series`,
//! one row per series and shard, from the node's cache) instead of every
//! row. That holds for:
//!
//! - an aggregate grouped by tags (or by nothing) whose every aggregate is
//!   `max(time)`, `first_value(.. ORDER BY time DESC)` or
//!   `last_value(.. ORDER BY time)` (the ordering may lead with group
//!   columns): `DISTINCT ON (tags) .. ORDER BY tags, time DESC` and
//!   `last_value(x ORDER BY time) .. GROUP BY tags` are planned as such,
//!   and so is the aggregate side of a self-join on `max(time)`;
//! - a `row_number()` or `rank()` window partitioned by tags, ordered by
//!   `time DESC` (after partition columns), kept at `<= 1`: the window form
//!   of "latest per series" and the row side of that self-join;
//! - a sort keeping one row (`ORDER BY [tags,] time DESC LIMIT 1`).
//!
//! In each, a group's answer is made of its rows at the group's largest
//! time, and each such row is the newest row of its series. The rows below
//! may be filtered only by predicates that keep, with any row of a series,
//! every newer row of it too: conditions on tags alone, lower bounds on
//! time (`time > / >= constant`), and ANDs and ORs of them. Then a series
//! with a row that passes has its newest row pass, so the largest time
//! that passes, per series, is the same over its newest row as over all of
//! its rows. Anything else (a field condition, an upper bound on time, a
//! limit below) keeps the plain scan.
//!
//! `/*+ strata.last_value_cache = false */` turns the rule off for a
//! statement.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, Operator};
use datafusion::physical_expr::expressions::{BinaryExpr, Column};
use datafusion::physical_expr::utils::collect_columns;
use datafusion::physical_expr::{PhysicalExpr, PhysicalSortExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::windows::BoundedWindowAggExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::bytes::Serializeable;
use strata_catalog::model::TIME_COLUMN;
use strata_proto::storage::v1::ScanTicket;
use strata_storage::dedup::tag_columns;
use strata_storage::fragment::ScanLeafExec;
use strata_storage::scan::ticket_schema;

use super::shard_fragment::ShardFragmentExec;
use super::window_topk::{bound, ranking_window};

datafusion::common::extensions_options! {
    /// strata's settings of a statement (`strata.*`).
    pub struct StrataOptions {
        /// Answer "latest row per series" queries from the storage nodes'
        /// last-value caches.
        pub last_value_cache: bool, default = true
        /// Memory this query may hold on the coordinator, in MiB (0: the
        /// coordinator's `--query-memory-limit-mib`).
        pub memory_limit_mib: u64, default = 0
        /// How long the query may run, e.g. `30s` (empty: the
        /// coordinator's `--query-timeout`).
        pub statement_timeout: String, default = String::new()
        /// `strict` (fail when a shard has no readable replica) or
        /// `best_effort` (answer without it, naming it).
        pub completeness: String, default = String::new()
    }
}

impl datafusion::common::config::ConfigExtension for StrataOptions {
    const PREFIX: &'static str = "strata";
}

/// Marks the scans of every fragment operator that needs only the newest
/// row of each series.
pub fn rewrite(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|p| {
        let Some(f) = p.downcast_ref::<ShardFragmentExec>() else {
            return Ok(Transformed::no(p));
        };
        let fragment = f.fragment().clone().transform_down(|op| {
            Ok(match needs_only_latest(&op) {
                // Everything below `op` is one chain down to its scan.
                true => Transformed::new(mark(op)?, true, TreeNodeRecursion::Jump),
                false => Transformed::no(op),
            })
        })?;
        Ok(match fragment.transformed {
            true => Transformed::yes(Arc::new(f.with_fragment(fragment.data, f.strategy()))),
            false => Transformed::no(p),
        })
    })
    .map(|t| t.data)
}

/// Whether `op` needs only the newest row of each series below it.
fn needs_only_latest(op: &Arc<dyn ExecutionPlan>) -> bool {
    if let Some(agg) = op.downcast_ref::<AggregateExec>() {
        latest_aggregate(agg).is_some()
    } else if let Some(filter) = op.downcast_ref::<FilterExec>() {
        latest_window(filter).is_some()
    } else if let Some(sort) = op.downcast_ref::<SortExec>() {
        latest_sort(sort).is_some()
    } else {
        false
    }
}

/// What a column of an operator's input is: the name of the scanned column
/// it passes through unchanged, if it does.
type Names = Vec<Option<String>>;

/// The scan below `plan`, through operators that keep every newer row of
/// a series with any row they keep, and the scanned column each column of
/// `plan` is.
fn trace(plan: &Arc<dyn ExecutionPlan>) -> Option<(ScanTicket, Names)> {
    if let Some(leaf) = plan.downcast_ref::<ScanLeafExec>() {
        let ticket = leaf.ticket();
        if ticket.limit.is_some() || ticket.latest_per_series {
            return None;
        }
        let tags = ticket_tags(ticket)?;
        for f in &ticket.filters {
            let e = Expr::from_bytes(f).ok()?;
            if !upward_closed_logical(&e, &tags) {
                return None;
            }
        }
        let names = leaf
            .schema()
            .fields()
            .iter()
            .map(|f| Some(f.name().clone()))
            .collect();
        return Some((ticket.clone(), names));
    }
    let [child] = plan.children()[..] else {
        return None;
    };
    let (ticket, below) = trace(child)?;
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        let names = p
            .expr()
            .iter()
            .map(|e| column(&e.expr).and_then(|i| below.get(i).cloned().flatten()))
            .collect();
        return Some((ticket, names));
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        let tags = ticket_tags(&ticket)?;
        if !upward_closed(f.predicate(), &below, &tags) {
            return None;
        }
        let names = match f.projection() {
            Some(p) => p.iter().map(|i| below.get(*i).cloned().flatten()).collect(),
            None => below,
        };
        return Some((ticket, names));
    }
    let keeps_rows = plan.is::<RepartitionExec>()
        || plan.is::<CoalescePartitionsExec>()
        || plan.is::<CooperativeExec>()
        || plan
            .downcast_ref::<SortExec>()
            .is_some_and(|s| s.fetch().is_none());
    keeps_rows.then_some((ticket, below))
}

/// The tag columns of the table a ticket scans.
fn ticket_tags(ticket: &ScanTicket) -> Option<BTreeSet<String>> {
    let schema = ticket_schema(ticket).ok()?;
    Some(tag_names(&schema))
}

/// The names of the tag columns of `schema`.
pub(crate) fn tag_names(schema: &SchemaRef) -> BTreeSet<String> {
    tag_columns(schema)
        .into_iter()
        .map(|i| schema.field(i).name().clone())
        .collect()
}

fn column(e: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    e.downcast_ref::<Column>().map(|c| c.index())
}

/// The scanned column `e` is, when it is a column passed through.
fn name_of<'a>(e: &Arc<dyn PhysicalExpr>, names: &'a Names) -> Option<&'a str> {
    names.get(column(e)?)?.as_deref()
}

/// Whether `e` keeps every newer row of a series with any row it keeps.
fn upward_closed(e: &Arc<dyn PhysicalExpr>, names: &Names, tags: &BTreeSet<String>) -> bool {
    if let Some(b) = e.downcast_ref::<BinaryExpr>() {
        let is_time = |e: &Arc<dyn PhysicalExpr>| name_of(e, names) == Some(TIME_COLUMN);
        let constant = |e: &Arc<dyn PhysicalExpr>| collect_columns(e).is_empty();
        match b.op() {
            Operator::And | Operator::Or => {
                return upward_closed(b.left(), names, tags)
                    && upward_closed(b.right(), names, tags)
            }
            Operator::Gt | Operator::GtEq if is_time(b.left()) && constant(b.right()) => {
                return true
            }
            Operator::Lt | Operator::LtEq if constant(b.left()) && is_time(b.right()) => {
                return true
            }
            _ => {}
        }
    }
    collect_columns(e).iter().all(|c| {
        names
            .get(c.index())
            .cloned()
            .flatten()
            .is_some_and(|n| tags.contains(&n))
    })
}

/// [`upward_closed`] for a scan ticket's (logical) filters.
pub(crate) fn upward_closed_logical(e: &Expr, tags: &BTreeSet<String>) -> bool {
    if let Expr::BinaryExpr(b) = e {
        let is_time = |e: &Expr| matches!(e, Expr::Column(c) if c.name == TIME_COLUMN);
        let constant = |e: &Expr| e.column_refs().is_empty();
        match b.op {
            Operator::And | Operator::Or => {
                return upward_closed_logical(&b.left, tags)
                    && upward_closed_logical(&b.right, tags)
            }
            Operator::Gt | Operator::GtEq if is_time(&b.left) && constant(&b.right) => return true,
            Operator::Lt | Operator::LtEq if constant(&b.left) && is_time(&b.right) => return true,
            _ => {}
        }
    }
    e.column_refs().iter().all(|c| tags.contains(&c.name))
}

/// Whether `order` sorts by columns of `leading` (tags) first and then by
/// time, newest first when `descending`.
fn leads_with_time(
    order: &[PhysicalSortExpr],
    names: &Names,
    leading: &BTreeSet<String>,
    descending: bool,
) -> bool {
    for s in order {
        match name_of(&s.expr, names) {
            Some(n) if n == TIME_COLUMN => return s.options.descending == descending,
            Some(n) if leading.contains(n) => continue,
            _ => return false,
        }
    }
    false
}

/// An aggregate grouped by tags whose every aggregate reads only the rows
/// at its group's largest time.
fn latest_aggregate(agg: &AggregateExec) -> Option<&Arc<dyn ExecutionPlan>> {
    if !matches!(
        agg.mode(),
        AggregateMode::Partial | AggregateMode::Single | AggregateMode::SinglePartitioned
    ) {
        return None;
    }
    let (ticket, names) = trace(agg.input())?;
    let tags = ticket_tags(&ticket)?;
    let group = agg.group_expr();
    if group.has_grouping_set() {
        return None;
    }
    let groups = group
        .expr()
        .iter()
        .map(|(e, _)| {
            name_of(e, &names)
                .filter(|n| tags.contains(*n))
                .map(str::to_string)
        })
        .collect::<Option<BTreeSet<String>>>()?;
    if agg.aggr_expr().is_empty() && group.expr().is_empty() {
        return None;
    }
    for (a, filter) in agg.aggr_expr().iter().zip(agg.filter_expr()) {
        if filter.is_some() || a.is_distinct() || a.ignore_nulls() {
            return None;
        }
        let ok = match a.fun().name() {
            "max" => matches!(&a.expressions()[..], [e] if name_of(e, &names) == Some(TIME_COLUMN)),
            "first_value" => leads_with_time(a.order_bys(), &names, &groups, true),
            "last_value" => leads_with_time(a.order_bys(), &names, &groups, false),
            _ => false,
        };
        if !ok {
            return None;
        }
    }
    Some(agg.input())
}

/// `rn <= 1` over a `row_number()` or `rank()` window partitioned by tags
/// and ordered by time, newest first.
fn latest_window(filter: &FilterExec) -> Option<&Arc<dyn ExecutionPlan>> {
    let window = filter.input().downcast_ref::<BoundedWindowAggExec>()?;
    let [w] = window.window_expr() else {
        return None;
    };
    ranking_window(w)?;
    let number = window.input().schema().fields().len();
    if bound(filter.predicate(), number)? != 1 {
        return None;
    }
    let (ticket, names) = trace(window.input())?;
    let tags = ticket_tags(&ticket)?;
    let partitions = w
        .partition_by()
        .iter()
        .map(|e| {
            name_of(e, &names)
                .filter(|n| tags.contains(*n))
                .map(str::to_string)
        })
        .collect::<Option<BTreeSet<String>>>()?;
    leads_with_time(w.order_by(), &names, &partitions, true).then_some(window.input())
}

/// A sort keeping one row, by tags and then time, newest first.
fn latest_sort(sort: &SortExec) -> Option<&Arc<dyn ExecutionPlan>> {
    if sort.fetch() != Some(1) {
        return None;
    }
    let (ticket, names) = trace(sort.input())?;
    let tags = ticket_tags(&ticket)?;
    leads_with_time(sort.expr(), &names, &tags, true).then_some(sort.input())
}

/// `plan` with its scan reading the newest row per series.
fn mark(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|p| {
        Ok(match p.downcast_ref::<ScanLeafExec>() {
            Some(leaf) => Transformed::yes(Arc::new(leaf.latest_per_series()) as _),
            None => Transformed::no(p),
        })
    })
    .map(|t| t.data)
}
