//! The `strata` binary's library side: the embedded dev cluster, the role
//! runners and the SQL client, so that integration tests drive the same
//! code as users.

pub mod config;
pub mod dev;
pub mod sql_client;
