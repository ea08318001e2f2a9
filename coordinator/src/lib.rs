//! strata coordinator: the front doors (InfluxDB line protocol over HTTP,
//! SQL over Flight SQL and HTTP), the write router that spreads rows over
//! shards, and the distributed query planner.

pub mod auth;
pub mod dist_plan;
pub mod error;
pub use strata_storage::executor;
pub mod flight_sql;
pub mod handoff;
pub mod http;
pub mod http_serve;
pub mod line_protocol;
pub mod node_clients;
pub mod queries;
pub mod query;
pub mod repair;
pub mod server;
pub mod tls;
pub mod write_router;

pub use error::{Error, Result};
pub use server::{Coordinator, CoordinatorConfig};
