//! The TSBS-style benchmark harness (generate, load, query, compare) and
//! micro-benchmarks. Not built yet: tracked as its own piece of work.
