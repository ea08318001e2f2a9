//! strata's catalog: the cluster's metadata (databases, tables, shard groups,
//! shard owners, storage nodes) kept consistent by Raft (openraft), served
//! over gRPC, and cached by clients through a watch stream.

pub mod client;
pub mod command;
pub mod error;
pub mod fsutil;
pub mod liveness;
pub mod maintenance;
pub mod model;
pub mod raft;
pub mod server;
pub mod service;
pub mod tokens;

pub use client::CatalogClient;
pub use command::{Command, CommandResult, Rejection};
pub use error::{Error, Result};
pub use model::CatalogData;
pub use server::{CatalogConfig, CatalogServer};
