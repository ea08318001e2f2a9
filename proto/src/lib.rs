//! strata's gRPC services and messages, generated from `protos/` at build time.
//!
//! Client-facing services (`catalog`) are kept apart from peer-only ones
//! (`raft`).

#![allow(clippy::all)]

pub mod catalog {
    pub mod v1 {
        tonic::include_proto!("strata.catalog.v1");
    }
}

pub mod raft {
    pub mod v1 {
        tonic::include_proto!("strata.raft.v1");
    }
}

pub mod storage {
    pub mod v1 {
        tonic::include_proto!("strata.storage.v1");
    }
}
