//! strata's TSBS-style benchmark harness. So far: [`load`], which posts
//! line protocol to any InfluxDB-v1-compatible `/write` endpoint (strata or
//! InfluxDB itself) and reports rows/s and metrics/s.

pub mod load;
pub mod tsbs;
