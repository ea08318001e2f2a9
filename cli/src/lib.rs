//! The `strata` binary's library side: the embedded dev cluster, the role
//! runners, the SQL client and the benchmark commands, so that integration tests drive the same
//! code as users.

pub mod admin;
pub mod bench;
pub mod cluster_auth;
pub mod config;
pub mod dev;
pub mod failover_bench;
pub mod sql_client;
