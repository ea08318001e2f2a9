//! strata storage node: keeps the shards assigned to it (WAL, memtable,
//! Parquet files) and serves them as Arrow Flight tables.

pub mod compaction;
pub mod dedup;
pub mod delete;
pub mod digest;
pub mod drops;
pub mod engine;
pub mod error;
pub mod executor;
pub mod flight;
pub mod flush;
pub mod fragment;
pub mod last_value;
pub mod manifest;
pub mod memory;
pub mod merge;
pub mod predicate;
pub mod running;
pub mod scan;
pub mod series;
pub mod series_limit;
pub mod server;
pub mod validate;
pub mod wal;

pub use engine::{Engine, EngineConfig};
pub use error::StorageError;
pub use server::{StorageConfig, StorageNode};
