//! Storage nodes follow the catalog's drops: shards the catalog no longer
//! has (expired by retention, or gone with their database) and tables
//! dropped with `DROP TABLE` are deleted here, memtables, files and WAL
//! replay included, on every catalog change and after a restart.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use strata_catalog::{CatalogClient, CatalogData};

use crate::engine::{Engine, EngineError};

pub struct Dropper {
    engine: Arc<Engine>,
    /// One pass at a time: the follower's and a write's.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Dropper {
    pub fn new(engine: Arc<Engine>) -> Self {
        Self {
            engine,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether `state` dropped a table this node has not yet applied; cheap
    /// enough for every write, which must not land before such a drop and
    /// be deleted by it.
    pub fn table_drop_pending(&self, state: &CatalogData) -> bool {
        let applied = self.engine.table_drops_applied();
        state.dropped_tables.iter().any(|d| d.version > applied)
    }

    /// Deletes what `state` dropped that this node still holds.
    pub async fn apply(&self, state: &CatalogData) -> Result<(), EngineError> {
        let _one = self.one_at_a_time.lock().await;
        let held = self.engine.shard_ids();
        let existing: HashSet<u64> = state
            .databases
            .values()
            .flat_map(|d| d.shard_groups.iter())
            .flat_map(|g| g.shards.iter().map(|s| s.id))
            .collect();
        // Ids are handed out once: one below `next_id` that no group holds
        // was dropped. A state that never knew the shard says nothing.
        let gone: BTreeSet<u64> = held
            .iter()
            .copied()
            .filter(|id| *id < state.next_id && !existing.contains(id))
            .collect();
        if !gone.is_empty() {
            self.engine.drop_data(&gone, None).await?;
        }
        let applied = self.engine.table_drops_applied();
        let mut newest = applied;
        for d in state.dropped_tables.iter().filter(|d| d.version > applied) {
            let shards: BTreeSet<u64> = d
                .shard_ids
                .iter()
                .copied()
                .filter(|id| held.contains(id))
                .collect();
            if !shards.is_empty() {
                self.engine.drop_data(&shards, Some(&d.table)).await?;
            }
            newest = newest.max(d.version);
        }
        self.engine.set_table_drops_applied(newest).await
    }
}

/// Applies the catalog's drops now and after every change, for as long as
/// the node runs.
pub async fn follow(dropper: Arc<Dropper>, catalog: CatalogClient) {
    let mut rx = catalog.subscribe();
    loop {
        let state = rx.borrow_and_update().clone();
        if let Err(e) = dropper.apply(&state).await {
            tracing::error!(error = %e, "could not delete data the catalog dropped; retrying on the next change");
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}
