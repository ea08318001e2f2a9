//! Distributed planning: which shards a table scan needs (shard groups
//! pruned by the query's time range) and the plan node that pulls each
//! shard's rows from one of its replicas.
//!
//! At this stage every scan is a fan-out: storage nodes scan, filter,
//! project and limit; joins, aggregates and sorts run on the coordinator.

pub mod pruning;
pub mod shard_fragment;

pub use pruning::time_range;
pub use shard_fragment::{ShardFragmentExec, ShardTarget};
