//! The Raft machinery behind the catalog: type configuration, durable log
//! store, state machine with snapshots, and the gRPC network between voters.

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult};

/// What applying one log entry answers: the result and the catalog version
/// it produced, so a client can wait until its cache holds that version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Applied {
    pub version: u64,
    pub result: CommandResult,
}

openraft::declare_raft_types!(
    /// openraft type configuration of the catalog.
    pub TypeConfig:
        D = Command,
        R = Applied,
);

pub type NodeId = u64;
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

fn io_err(e: impl std::error::Error + 'static) -> openraft::AnyError {
    openraft::AnyError::new(&e)
}

#[cfg(test)]
mod tests {
    use openraft::testing::{StoreBuilder, Suite};

    use super::log_store::LogStore;
    use super::state_machine::StateMachineStore;
    use super::{StorageError, TypeConfig};

    struct FileStoreBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for FileStoreBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = LogStore::open(dir.path()).map_err(|e| *e)?;
            let sm = StateMachineStore::open(dir.path()).map_err(|e| *e)?;
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite against the file-backed log and
    /// state machine.
    #[test]
    fn storage_passes_openraft_conformance_suite() {
        Suite::test_all(FileStoreBuilder).expect("conformance");
    }

    /// What was appended and voted survives reopening.
    #[tokio::test]
    async fn log_and_vote_survive_reopen() {
        use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
        use openraft::{CommittedLeaderId, EntryPayload, LogId, RaftLogReader, Vote};

        let dir = tempfile::tempdir().unwrap();
        let entry = |i: u64| super::Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), i),
            payload: EntryPayload::Blank,
        };
        {
            let mut log = LogStore::open(dir.path()).unwrap();
            log.save_vote(&Vote::new(3, 1)).await.unwrap();
            log.blocking_append([entry(1), entry(2), entry(3)])
                .await
                .unwrap();
            log.purge(LogId::new(CommittedLeaderId::new(1, 1), 1))
                .await
                .unwrap();
        }
        let mut log = LogStore::open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(Vote::new(3, 1)));
        let entries = log.try_get_log_entries(0..10).await.unwrap();
        let idx: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
        assert_eq!(idx, vec![2, 3]);
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(1));
    }
}
