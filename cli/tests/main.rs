//! Integration tests of the `strata` binary and its dev cluster: real
//! servers on port 0, real files, real Raft.

mod bench;
mod catalog_failover;
mod differential;
mod distributed;
mod drops;
mod durability;
mod end_to_end;
mod hostile;
mod insert;
mod last_value;
mod line_protocol;
mod operations;
mod repl;
mod replication;
mod roles;
mod support;
mod system_tables;
