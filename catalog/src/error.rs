//! Errors of the catalog crate.

use std::path::PathBuf;

use snafu::Snafu;

use crate::command::Rejection;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum Error {
    #[snafu(display("cannot open catalog storage in {}: {source}", dir.display()))]
    OpenStorage {
        dir: PathBuf,
        source: Box<openraft::StorageError<u64>>,
    },

    #[snafu(display("cannot start the catalog's Raft node: {source}"))]
    StartRaft {
        source: Box<openraft::error::Fatal<u64>>,
    },

    #[snafu(display("cannot initialize the catalog cluster: {message}"))]
    Bootstrap { message: String },

    #[snafu(display("cannot join the catalog cluster: {message}"))]
    Join { message: String },

    #[snafu(display("cannot listen on {addr}: {source}"))]
    Bind {
        addr: String,
        source: std::io::Error,
    },

    #[snafu(display("catalog at {addr} is unreachable: {source}"))]
    Unreachable {
        addr: String,
        source: tonic::transport::Error,
    },

    #[snafu(display("catalog request to {addr} failed ({:?}): {}", source.code(), source.message()))]
    Rpc { addr: String, source: tonic::Status },

    #[snafu(display(
        "the catalog did not take {what} within {} s (asked {members}: none answered, or none could reach a leader); last error: {last}",
        waited.as_secs_f64().round()
    ))]
    NoMember {
        what: &'static str,
        members: String,
        waited: std::time::Duration,
        last: String,
    },

    #[snafu(display("bad catalog address list '{addrs}': {message}"))]
    BadAddress { addrs: String, message: String },

    #[snafu(display("catalog sent an undecodable {what}: {source}"))]
    Decode {
        what: &'static str,
        source: serde_json::Error,
    },

    #[snafu(display("{rejection}"))]
    Rejected { rejection: Rejection },
}
