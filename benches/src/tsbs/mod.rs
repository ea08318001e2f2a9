//! The TSBS `cpu-only` workload: data generation faithful to
//! `tsbs_generate_data` (down to Go's random number stream), its outputs,
//! and the query types of `tsbs_generate_queries`.

pub mod chart;
pub mod cpu_only;
pub mod gorand;
mod gorand_tables;
pub mod output;
pub mod queries;
pub mod run;
pub mod verify;
