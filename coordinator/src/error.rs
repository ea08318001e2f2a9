//! Errors of the coordinator and their single mappings to HTTP and gRPC.

use snafu::Snafu;
use strata_catalog::command::Rejection;

#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum Error {
    #[snafu(display("catalog: {source}"))]
    Catalog { source: strata_catalog::Error },

    #[snafu(display("database '{database}' not found"))]
    DatabaseNotFound { database: String },

    #[snafu(display(
        "{}: shard {shard_id} is stored on {stored} of its {owners} owners, and consistency \
         '{consistency}' needs {required}{}{}",
        if *stored == 0 { "write failed" } else { "partial write" },
        if *hinted > 0 {
            format!("; {hinted} will receive it through hinted handoff")
        } else {
            String::new()
        },
        if failures.is_empty() {
            String::new()
        } else {
            format!("; {failures}")
        }
    ))]
    Consistency {
        shard_id: u64,
        consistency: String,
        owners: usize,
        stored: usize,
        hinted: usize,
        required: usize,
        failures: String,
    },

    #[snafu(display(
        "DELETE from '{table}' was applied by no replica of some shards, so their rows \
         remain for now: {failures}; run it again once the nodes are back (deleting twice \
         is harmless)"
    ))]
    DeleteIncomplete { table: String, failures: String },
    #[snafu(display("request body is not valid {what}: {reason}"))]
    BadBody { what: &'static str, reason: String },

    #[snafu(display("invalid parameter '{name}': {reason}"))]
    BadParameter { name: &'static str, reason: String },

    #[snafu(display("{}", query_message(source)))]
    Query {
        source: datafusion::error::DataFusionError,
    },

    #[snafu(display("building a result: {source}"))]
    Arrow { source: arrow::error::ArrowError },

    #[snafu(display("invalid statement: {reason}"))]
    BadStatement { reason: String },

    #[snafu(display("cannot listen on {addr}: {source}"))]
    Bind {
        addr: String,
        source: std::io::Error,
    },

    #[snafu(display("cannot start the query runtime: {source}"))]
    Runtime { source: std::io::Error },

    #[snafu(display("cannot open the hinted-handoff queues: {source}"))]
    Handoff {
        source: crate::handoff::HandoffError,
    },

    #[snafu(display(
        "the request body is larger than {limit_bytes} bytes (after decompression); split it \
         into smaller writes"
    ))]
    BodyTooLarge { limit_bytes: usize },

    #[snafu(display(
        "Content-Encoding '{encoding}' is not supported; send gzip, deflate or an uncompressed body"
    ))]
    UnsupportedEncoding { encoding: String },

    #[snafu(display(
        "the coordinator is at its memory budget for in-flight {what}s ({limit_bytes} bytes); \
         retry shortly"
    ))]
    Overloaded {
        what: &'static str,
        limit_bytes: usize,
    },

    #[snafu(display("{message}"))]
    TableNotFound { message: String },

    #[snafu(display(
        "no query '{query_id}' is running here or on a storage node (see system.queries)"
    ))]
    QueryNotFound { query_id: String },

    #[snafu(display("partial write: rows of shard {shard_id} were refused: {failures}"))]
    WriteRefused { shard_id: u64, failures: String },

    #[snafu(display(
        "INSERT stopped after writing {written} row(s), which stay written: {source}"
    ))]
    InsertIncomplete { written: usize, source: Box<Error> },

    #[snafu(display(
        "INSERT failed while writing after {written} row(s) were written; rows of the batch \
         being written may be stored on some shards (running the INSERT again is harmless: \
         rows with the same time and tags replace each other): {source}"
    ))]
    InsertInterrupted { written: usize, source: Box<Error> },

    #[snafu(display("{reason}"))]
    Unauthenticated { reason: String },

    #[snafu(display("TLS: {reason}"))]
    Tls { reason: String },

    #[snafu(display("{reason}"))]
    PermissionDenied { reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn http_status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            Error::InsertIncomplete { source, .. } | Error::InsertInterrupted { source, .. } => {
                source.http_status()
            }
            Error::Catalog { source } => match source {
                strata_catalog::Error::Rejected {
                    rejection: Rejection::DatabaseNotFound { .. },
                } => S::NOT_FOUND,
                strata_catalog::Error::Rejected { .. } => S::BAD_REQUEST,
                _ => S::SERVICE_UNAVAILABLE,
            },
            Error::DatabaseNotFound { .. }
            | Error::TableNotFound { .. }
            | Error::QueryNotFound { .. } => S::NOT_FOUND,
            Error::Unauthenticated { .. } => S::UNAUTHORIZED,
            Error::PermissionDenied { .. } => S::FORBIDDEN,
            Error::BodyTooLarge { .. } => S::PAYLOAD_TOO_LARGE,
            Error::UnsupportedEncoding { .. } => S::UNSUPPORTED_MEDIA_TYPE,
            Error::Overloaded { .. } => S::SERVICE_UNAVAILABLE,
            // As InfluxDB Enterprise: some owners have it ("partial
            // write"), or none could take it.
            Error::Consistency { stored, .. } if *stored > 0 => S::INTERNAL_SERVER_ERROR,
            Error::Consistency { .. } | Error::DeleteIncomplete { .. } => S::SERVICE_UNAVAILABLE,
            // As InfluxDB answers a write over max-series-per-database.
            Error::WriteRefused { .. } => S::BAD_REQUEST,
            Error::BadBody { .. } | Error::BadParameter { .. } | Error::BadStatement { .. } => {
                S::BAD_REQUEST
            }
            Error::Query { source } => match query_code(source) {
                tonic::Code::InvalidArgument | tonic::Code::NotFound => S::BAD_REQUEST,
                tonic::Code::Unavailable => S::SERVICE_UNAVAILABLE,
                tonic::Code::DeadlineExceeded => S::REQUEST_TIMEOUT,
                _ => S::INTERNAL_SERVER_ERROR,
            },
            Error::Bind { .. }
            | Error::Arrow { .. }
            | Error::Runtime { .. }
            | Error::Tls { .. }
            | Error::Handoff { .. } => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// The one place a coordinator error becomes a gRPC status; its stable
    /// code goes in the `strata-error-code` metadata.
    pub fn into_status(self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code(), self.to_string());
        status.metadata_mut().insert(
            ERROR_CODE_HEADER,
            tonic::metadata::MetadataValue::from_static(self.error_code()),
        );
        status
    }

    /// The stable code of this error, as clients see it in the HTTP JSON
    /// body (`code`) and in gRPC metadata (`strata-error-code`); listed in
    /// `docs/error-codes.md`. Messages may change, codes do not.
    pub fn error_code(&self) -> &'static str {
        match self {
            Error::InsertIncomplete { .. } => "insert_incomplete",
            Error::InsertInterrupted { .. } => "insert_interrupted",
            Error::Catalog { source } => match source {
                strata_catalog::Error::Rejected { rejection } => match rejection {
                    Rejection::DatabaseNotFound { .. } => "database_not_found",
                    Rejection::DatabaseExists { .. } => "database_exists",
                    _ => "catalog_rejected",
                },
                _ => "catalog_unavailable",
            },
            Error::DatabaseNotFound { .. } => "database_not_found",
            Error::TableNotFound { .. } => "table_not_found",
            Error::QueryNotFound { .. } => "query_not_found",
            Error::Consistency { stored, .. } if *stored > 0 => "partial_write",
            Error::Consistency { .. } => "write_failed",
            Error::DeleteIncomplete { .. } => "delete_incomplete",
            Error::BadBody { .. } => "invalid_body",
            Error::BadParameter { .. } => "invalid_parameter",
            Error::BadStatement { .. } => "invalid_statement",
            Error::BodyTooLarge { .. } => "body_too_large",
            Error::Unauthenticated { .. } => "unauthenticated",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::UnsupportedEncoding { .. } => "unsupported_encoding",
            Error::Overloaded { .. } => "overloaded",
            Error::WriteRefused { .. } => "write_refused",
            Error::Query { source } => query_error_code(source),
            Error::Bind { .. }
            | Error::Arrow { .. }
            | Error::Runtime { .. }
            | Error::Tls { .. }
            | Error::Handoff { .. } => "internal",
        }
    }

    /// The gRPC code of this error.
    pub fn code(&self) -> tonic::Code {
        match self {
            Error::InsertIncomplete { source, .. } | Error::InsertInterrupted { source, .. } => {
                source.code()
            }
            Error::Catalog { source } => match source {
                strata_catalog::Error::Rejected {
                    rejection: Rejection::DatabaseNotFound { .. },
                } => tonic::Code::NotFound,
                strata_catalog::Error::Rejected { .. } => tonic::Code::InvalidArgument,
                _ => tonic::Code::Unavailable,
            },
            Error::DatabaseNotFound { .. }
            | Error::TableNotFound { .. }
            | Error::QueryNotFound { .. } => tonic::Code::NotFound,
            Error::BodyTooLarge { .. } | Error::UnsupportedEncoding { .. } => {
                tonic::Code::InvalidArgument
            }
            Error::Overloaded { .. } => tonic::Code::ResourceExhausted,
            Error::Unauthenticated { .. } => tonic::Code::Unauthenticated,
            Error::PermissionDenied { .. } => tonic::Code::PermissionDenied,
            Error::Consistency { .. } | Error::DeleteIncomplete { .. } => tonic::Code::Unavailable,
            Error::WriteRefused { .. } => tonic::Code::FailedPrecondition,
            Error::BadBody { .. } | Error::BadParameter { .. } | Error::BadStatement { .. } => {
                tonic::Code::InvalidArgument
            }
            Error::Query { source } => query_code(source),
            Error::Bind { .. }
            | Error::Arrow { .. }
            | Error::Runtime { .. }
            | Error::Tls { .. }
            | Error::Handoff { .. } => tonic::Code::Internal,
        }
    }
}

/// A query error as the client reads it: a cancellation or a storage
/// node's status by its own words, without DataFusion's "External error"
/// wrapping.
fn query_message(e: &datafusion::error::DataFusionError) -> String {
    use datafusion::error::DataFusionError as D;
    if let Some(c) = strata_storage::running::Cancelled::find(e) {
        return c.reason.clone();
    }
    match e {
        D::External(inner) => match inner.downcast_ref::<tonic::Status>() {
            Some(s) => s.message().to_string(),
            None => inner.to_string(),
        },
        e => e.to_string(),
    }
}

/// gRPC metadata key of an error's stable code.
pub const ERROR_CODE_HEADER: &str = "strata-error-code";

fn query_error_code(e: &datafusion::error::DataFusionError) -> &'static str {
    use datafusion::error::DataFusionError as D;
    if let Some(c) = strata_storage::running::Cancelled::find(e) {
        return match c.timed_out {
            true => "query_timeout",
            false => "query_cancelled",
        };
    }
    match e {
        D::SQL(..) | D::Plan(_) | D::SchemaError(..) => "invalid_query",
        D::NotImplemented(_) => "not_implemented",
        D::ResourcesExhausted(_) => "resources_exhausted",
        D::Context(_, inner) => query_error_code(inner),
        D::Shared(inner) => query_error_code(inner),
        D::External(inner) => match inner.downcast_ref::<tonic::Status>() {
            Some(s) => match s.code() {
                tonic::Code::Unavailable => "unavailable",
                tonic::Code::ResourceExhausted => "resources_exhausted",
                tonic::Code::Cancelled => "query_cancelled",
                tonic::Code::InvalidArgument => "invalid_query",
                _ => "internal",
            },
            None => match inner.downcast_ref::<D>() {
                Some(df) => query_error_code(df),
                None => "internal",
            },
        },
        _ => "internal",
    }
}

fn query_code(e: &datafusion::error::DataFusionError) -> tonic::Code {
    use datafusion::error::DataFusionError as D;
    if let Some(c) = strata_storage::running::Cancelled::find(e) {
        return match c.timed_out {
            true => tonic::Code::DeadlineExceeded,
            false => tonic::Code::Cancelled,
        };
    }
    match e {
        D::SQL(..) | D::Plan(_) | D::SchemaError(..) | D::NotImplemented(_) => {
            tonic::Code::InvalidArgument
        }
        D::ResourcesExhausted(_) => tonic::Code::ResourceExhausted,
        D::External(inner) => match inner.downcast_ref::<tonic::Status>() {
            Some(s) => s.code(),
            None => tonic::Code::Internal,
        },
        D::Context(_, inner) => query_code(inner),
        D::Execution(_) => tonic::Code::Internal,
        _ => tonic::Code::Internal,
    }
}
