//! Errors of the storage node and their single mapping to gRPC status.

use snafu::Snafu;

use crate::engine::EngineError;

#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum StorageError {
    #[snafu(display("{source}"))]
    Engine { source: EngineError },

    #[snafu(display("{source}"))]
    Query {
        source: datafusion::error::DataFusionError,
    },

    #[snafu(display("cannot listen on {addr}: {source}"))]
    Bind {
        addr: String,
        source: std::io::Error,
    },

    #[snafu(display("cannot register with the catalog: {source}"))]
    Register { source: strata_catalog::Error },

    #[snafu(display("cannot start the query threads: {source}"))]
    QueryRuntime { source: std::io::Error },

    #[snafu(display(
        "refused a write to table '{database}.{table}' in shard {shard_id}: {reason}"
    ))]
    InvalidWrite {
        database: String,
        table: String,
        shard_id: u64,
        reason: String,
    },

    #[snafu(display(
        "node {node_id} does not hold shard {shard_id} of database '{database}': the catalog \
         places no replica of it here"
    ))]
    ShardNotHeld {
        node_id: u64,
        database: String,
        shard_id: u64,
    },
}

/// The one place a storage-node error becomes a gRPC status.
pub fn into_status(e: StorageError) -> tonic::Status {
    use datafusion::error::DataFusionError as D;
    let code = match &e {
        StorageError::Engine {
            source: EngineError::MemoryPressure { .. },
        } => tonic::Code::ResourceExhausted,
        StorageError::Engine {
            source: EngineError::SeriesLimit { .. } | EngineError::ShardDropped { .. },
        } => tonic::Code::FailedPrecondition,
        StorageError::Engine {
            source:
                EngineError::Wal {
                    source: crate::wal::WalError::NameTooLong { .. },
                },
        } => tonic::Code::InvalidArgument,
        StorageError::Engine { .. } => tonic::Code::Internal,
        StorageError::InvalidWrite { .. } => tonic::Code::InvalidArgument,
        StorageError::ShardNotHeld { .. } => tonic::Code::NotFound,
        StorageError::Query { source } => match source.find_root() {
            D::Plan(_) | D::SchemaError(..) | D::NotImplemented(_) => tonic::Code::InvalidArgument,
            D::ResourcesExhausted(_) => tonic::Code::ResourceExhausted,
            D::External(inner) if inner.is::<crate::running::Cancelled>() => tonic::Code::Cancelled,
            _ => tonic::Code::Internal,
        },
        StorageError::Bind { .. }
        | StorageError::Register { .. }
        | StorageError::QueryRuntime { .. } => tonic::Code::Unavailable,
    };
    tonic::Status::new(code, e.to_string())
}
