//! strata's gRPC services and messages, generated from `protos/` at build time.
//!
//! Client-facing services (`catalog`) are kept apart from peer-only ones
//! (`raft`).

#![allow(clippy::all)]

pub mod cluster;
pub mod incoming;

pub mod catalog {
    pub mod v1 {
        tonic::include_proto!("strata.catalog.v1");
    }
}

pub mod raft {
    pub mod v1 {
        tonic::include_proto!("strata.raft.v1");
    }
}

pub mod storage {
    pub mod v1 {
        tonic::include_proto!("strata.storage.v1");
    }
}

/// gRPC request metadata of a storage-node `DoPut`: the catalog version
/// the writer routed with. A node whose copy of the catalog is older waits
/// for that version before checking the batches against it.
pub const CATALOG_VERSION_HEADER: &str = "strata-catalog-version";

/// gRPC request metadata of a plan fragment's `DoGet`: the id of the
/// query it belongs to, so the node's log lines carry the coordinator's
/// query id.
pub const QUERY_ID_HEADER: &str = "strata-query-id";

/// Storage-node Flight action: how the node is doing, as JSON
/// (`{"node_id", "flush_failures", "last_flush_error"}`).
pub const HEALTH_ACTION: &str = "health";

/// Flight action on a storage node: digests of the shards named in its
/// JSON body (`{"shard_ids": [..], "bucket_ns": n}`), answered as JSON.
pub const SHARD_DIGEST_ACTION: &str = "shard_digest";

/// Flight action on a storage node: the deduplicated rows of one table of
/// one shard in a time range (JSON body `{"table", "shard_id", "start_ns",
/// "end_ns"}`), each answer an Arrow IPC stream.
pub const SHARD_ROWS_ACTION: &str = "shard_rows";

/// Flight action on a storage node: row count and digest of each of
/// `parts` series ranges (series hash modulo `parts`) of one table of one
/// shard in a time range (JSON body `{"database", "table", "shard_id",
/// "start_ns", "end_ns", "parts"}`), answered as a JSON list.
pub const SHARD_PARTS_ACTION: &str = "shard_parts";

/// Flight action on a storage node: records that a repair compared the
/// shards (JSON body `{"shard_ids": [..], "at_ms": n}`).
pub const REPAIRED_ACTION: &str = "repaired";

/// Flight action on a storage node: the plan fragments running there, as a
/// JSON list of `{"query_id", "tables", "shards", "started_ms"}`.
pub const RUNNING_FRAGMENTS_ACTION: &str = "running_fragments";

/// Flight action on a storage node: cancels every fragment of a query
/// (JSON body `{"query_id", "reason"}`), answering `{"cancelled": n}`.
pub const CANCEL_QUERY_ACTION: &str = "cancel_query";
