//! Integration tests of the storage engine through its public API.

mod million;
mod model;
