//! The rule that cuts a physical plan between the storage nodes and the
//! coordinator, run after DataFusion's own physical optimizers.
//!
//! Table scans are planned as [`ShardFragmentExec`]s with one partition per
//! shard. Then, in order:
//!
//! 1. **direct**: when every shard the plan reads lives on one node only,
//!    the whole plan becomes one fragment for that node (each leaf scanning
//!    all its shards, one partition per shard as planned), provided every
//!    operator in it can be serialized.
//! 2. Otherwise operators are pulled into the fragment below them, bottom
//!    up, while they work partition by partition — filter, projection,
//!    partial aggregate (**fan-out-aggregate**), per-partition sort with
//!    or without a fetch (**merge-sort**), local limit — so each shard's
//!    task runs them next to its data. A round-robin repartition right
//!    above a fragment is dropped: the shards are the parallelism. Above a
//!    fragment of one task, every operator that keeps its one partition is
//!    pulled in (**direct**). An
//!    operator that cannot be serialized stays on the coordinator, with
//!    everything above it.
//! 3. **time-ordered**: a merge on `time` with a limit over a fragment whose
//!    tasks are shard groups disjoint in time reads the groups in time order
//!    and stops once the limit is met ([`super::time_ordered`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigOptions;
use datafusion::error::Result;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::limit::LocalLimitExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::{
    replace_children_if_necessary, ExecutionPlan, ExecutionPlanProperties, Partitioning,
};
use strata_storage::fragment::{check_sendable, ScanLeafExec};

use super::last_value::{self, StrataOptions};
use super::shard_fragment::{Binding, Pruning, ShardFragmentExec, Strategy, Task};
use super::{self_join, time_ordered, window_topk};

#[derive(Debug, Default)]
pub struct DistributePlan;

impl PhysicalOptimizerRule for DistributePlan {
    fn optimize(
        &self,
        plan: Arc<dyn ExecutionPlan>,
        config: &ConfigOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let plan = distribute(plan)?;
        let cache = config
            .extensions
            .get::<StrataOptions>()
            .is_none_or(|o| o.last_value_cache);
        match cache {
            true => last_value::rewrite(plan),
            false => Ok(plan),
        }
    }

    fn name(&self) -> &str {
        "strata_distribute"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn distribute(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    {
        let fragments = fragments(&plan);
        if fragments.is_empty() {
            return Ok(plan);
        }
        let plan = plan
            .transform_up(|p| {
                if let Some(f) = p.downcast_ref::<ShardFragmentExec>() {
                    // Placed from here on: EXPLAIN shows its fragment.
                    return Ok(Transformed::yes(Arc::new(
                        f.with_fragment(f.fragment().clone(), f.strategy()),
                    )
                        as Arc<dyn ExecutionPlan>));
                }
                // A fragment's stream is network I/O, which yields to the
                // runtime by itself; the wrapper would only hide it.
                let cooperative_fragment = p.is::<CooperativeExec>()
                    && p.children()
                        .first()
                        .is_some_and(|c| c.is::<ShardFragmentExec>());
                Ok(match cooperative_fragment {
                    true => Transformed::yes(p.children()[0].clone()),
                    false => Transformed::no(p),
                })
            })?
            .data;
        if let Some(direct) = direct(&plan, &fragments)? {
            return Ok(direct);
        }
        let plan = push_down(plan)?;
        let plan = window_topk::rewrite(plan)?;
        let plan = self_join::rewrite(plan)?;
        time_ordered::rewrite(plan)
    }
}

/// The fragments of a plan, outermost first (none inside another).
fn fragments(plan: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn ExecutionPlan>> {
    let mut out = vec![];
    let _ = plan.apply(|p| {
        if p.is::<ShardFragmentExec>() {
            out.push(p.clone());
            Ok(TreeNodeRecursion::Jump)
        } else {
            Ok(TreeNodeRecursion::Continue)
        }
    });
    out
}

fn as_fragment(p: &Arc<dyn ExecutionPlan>) -> &ShardFragmentExec {
    p.downcast_ref::<ShardFragmentExec>()
        .expect("a ShardFragmentExec")
}

/// The whole plan as one fragment, when all its shards are held by one
/// node and by no other (so spreading the work would gain nothing), and
/// every operator can be sent.
fn direct(
    plan: &Arc<dyn ExecutionPlan>,
    fragments: &[Arc<dyn ExecutionPlan>],
) -> Result<Option<Arc<dyn ExecutionPlan>>> {
    let mut owners = BTreeSet::new();
    let mut shard_ids = vec![];
    let mut replicas = vec![];
    let mut pruning = Pruning::default();
    for f in fragments {
        let f = as_fragment(f);
        if f.binding() != Binding::PerTask {
            return Ok(None);
        }
        pruning += f.pruning();
        for t in f.tasks() {
            owners.extend(t.replicas.iter().map(|r| r.0));
            shard_ids.extend(t.shard_ids.iter().copied());
            if replicas.is_empty() {
                replicas = t.replicas.clone();
            }
        }
    }
    if owners.len() != 1 || replicas.iter().all(|r| r.1.is_none()) {
        return Ok(None);
    }
    let first = as_fragment(&fragments[0]);
    let (nodes, query_id) = (first.nodes().clone(), first.query_id().to_string());
    let on_node = plan
        .clone()
        .transform_down(|p| {
            let Some(f) = p.downcast_ref::<ShardFragmentExec>() else {
                return Ok(Transformed::no(p));
            };
            let shards = f.tasks().iter().flat_map(|t| t.shard_ids.clone()).collect();
            let leaf = f
                .fragment()
                .downcast_ref::<ScanLeafExec>()
                .expect("a scan's fragment is its leaf")
                .with_shards(shards);
            Ok(Transformed::new(
                Arc::new(leaf) as Arc<dyn ExecutionPlan>,
                true,
                TreeNodeRecursion::Jump,
            ))
        })?
        .data;
    let on_node: Arc<dyn ExecutionPlan> = if on_node.output_partitioning().partition_count() > 1 {
        Arc::new(CoalescePartitionsExec::new(on_node))
    } else {
        on_node
    };
    if check_sendable(on_node.clone()).is_err() {
        return Ok(None);
    }
    let task = Task {
        shard_ids,
        replicas,
        window: None,
    };
    Ok(Some(Arc::new(ShardFragmentExec::new(
        on_node,
        vec![task],
        Binding::AsPlanned,
        Strategy::Direct,
        pruning,
        nodes,
        query_id,
    ))))
}

/// Pulls operators into the fragments below them, bottom up.
fn push_down(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    if plan.is::<ShardFragmentExec>() {
        return Ok(one_task_is_direct(plan));
    }
    let children = plan
        .children()
        .into_iter()
        .map(|c| push_down(c.clone()))
        .collect::<Result<Vec<_>>>()?;
    let plan = replace_children_if_necessary(plan, children)?;
    absorb(plan)
}

/// A fragment of one task runs wholly on one node.
fn one_task_is_direct(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    let f = as_fragment(&plan);
    if f.tasks().len() == 1 && f.strategy() != Strategy::Direct {
        Arc::new(f.with_fragment(f.fragment().clone(), Strategy::Direct))
    } else {
        plan
    }
}

/// What pulling `plan` into the fragment below it makes of the strategy,
/// when it works partition by partition; `None` when it does not.
fn partition_wise(plan: &dyn ExecutionPlan, below: Strategy) -> Option<Strategy> {
    let any = plan;
    if any.is::<FilterExec>() || any.is::<ProjectionExec>() || any.is::<LocalLimitExec>() {
        return Some(below);
    }
    if let Some(agg) = any.downcast_ref::<AggregateExec>() {
        return (*agg.mode() == AggregateMode::Partial).then_some(Strategy::FanOutAggregate);
    }
    if let Some(sort) = any.downcast_ref::<SortExec>() {
        return sort.preserve_partitioning().then_some(match below {
            Strategy::FanOutAggregate => Strategy::FanOutAggregate,
            _ => Strategy::MergeSort,
        });
    }
    None
}

/// `plan` pulled into its child fragment, when it can be.
fn absorb(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let children = plan.children();
    let [child] = children.as_slice() else {
        return Ok(plan);
    };
    let Some(f) = child.downcast_ref::<ShardFragmentExec>() else {
        return Ok(plan);
    };
    if f.binding() != Binding::PerTask {
        return Ok(plan);
    }
    if let Some(r) = plan.downcast_ref::<RepartitionExec>() {
        if matches!(r.partitioning(), Partitioning::RoundRobinBatch(_)) && !r.preserve_order() {
            return Ok((*child).clone());
        }
    }
    let strategy = if f.tasks().len() == 1 {
        Strategy::Direct
    } else {
        match partition_wise(plan.as_ref(), f.strategy()) {
            Some(s) => s,
            None => return Ok(plan),
        }
    };
    let fragment = plan
        .clone()
        .replace_children(vec![f.fragment().clone()], recompute())?;
    // A task answers in one stream: an operator that spreads its one
    // partition over more (a hash repartition) stays here, so that its
    // parent (say, a partitioned join) sees the partitions it was planned
    // with.
    if fragment.output_partitioning().partition_count()
        != f.fragment().output_partitioning().partition_count()
    {
        return Ok(plan);
    }
    if let Err(e) = check_sendable(fragment.clone()) {
        tracing::debug!(operator = plan.name(), error = %e, "stays on the coordinator");
        return Ok(plan);
    }
    Ok(Arc::new(f.with_fragment(fragment, strategy)))
}

fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}
