//! The Raft machinery behind the catalog: type configuration, durable log
//! store, state machine with snapshots, and the gRPC network between voters.

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult};

/// What applying one log entry answers: the result and the catalog version
/// it produced, so a client can wait until its cache holds that version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub version: u64,
    pub result: CommandResult,
}

openraft::declare_raft_types!(
    /// openraft type configuration of the catalog.
    pub TypeConfig:
        D = Command,
        R = Applied,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

fn io_err(e: impl std::error::Error + 'static) -> openraft::AnyError {
    openraft::AnyError::new(&e)
}
