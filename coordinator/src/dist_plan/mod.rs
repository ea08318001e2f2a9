//! Distributed planning: which shards a table scan needs (shard groups
//! pruned by the query's time range), how the physical plan is cut between
//! the storage nodes and the coordinator ([`rule`]), and the plan nodes
//! that run fragments on the nodes ([`shard_fragment`]) and read shard
//! groups in time order ([`time_ordered`]), the per-shard first rows of a
//! `row_number()` filter ([`window_topk`]) or of a self-join on `max(time)`
//! ([`self_join`]), the "latest row per series" fragments that read the
//! nodes' last-value caches ([`last_value`]), and what the nodes report
//! having done ([`reported`]).

pub mod completeness;
pub mod last_value;
pub mod pruning;
pub mod reported;
pub mod rule;
pub mod self_join;
pub mod shard_fragment;
pub mod time_ordered;
pub mod window_topk;

pub use last_value::StrataOptions;
pub use pruning::{shards_for_key, time_range};
pub use rule::DistributePlan;
pub use shard_fragment::{Binding, Pruning, ShardFragmentExec, Strategy, Task};
pub use time_ordered::TimeOrderedExec;
