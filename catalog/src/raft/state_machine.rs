//! The catalog state machine: applies commands to [`CatalogData`],
//! publishes every new state to watchers, and builds and installs snapshots.
//!
//! The state is rebuilt on start from the last snapshot (saved atomically
//! with the log id it covers) plus the committed log entries after it, which
//! openraft re-applies because the committed log id is persisted.

use std::collections::VecDeque;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, EntryPayload, RaftSnapshotBuilder, SnapshotMeta, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{io_err, Applied, Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::command::{Command, CommandResult};
use crate::fsutil::write_atomic;
use crate::model::CatalogData;

const SNAPSHOT_FILE: &str = "raft-snapshot.json";

#[derive(Clone)]
pub struct StateMachineStore {
    inner: Arc<Mutex<Inner>>,
    published: watch::Sender<Arc<CatalogData>>,
    dir: PathBuf,
}

struct Inner {
    data: CatalogData,
    requests: RecentRequests,
    last_applied: Option<LogId>,
    last_membership: StoredMembership<NodeId, BasicNode>,
    snapshot: Option<StoredSnapshot>,
}

#[derive(Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: CatalogData,
    #[serde(default)]
    requests: RecentRequests,
}

/// What a snapshot carries to another member.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    data: CatalogData,
    requests: RecentRequests,
}

impl SnapshotBody {
    fn decode(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes).or_else(|e| {
            // Snapshots from before request ids held the state alone.
            serde_json::from_slice::<CatalogData>(bytes)
                .map(|data| SnapshotBody {
                    data,
                    requests: RecentRequests::default(),
                })
                .map_err(|_| e)
        })
    }
}

/// Results of the last [`RECENT_REQUESTS`] tagged commands
/// ([`Command::Once`]), so that a client's retry is answered instead of
/// applied twice. Part of the replicated state: snapshots carry it.
#[derive(Clone, Default, Serialize, Deserialize)]
struct RecentRequests(VecDeque<(String, Applied)>);

/// How many tagged commands are remembered. A client retries within
/// seconds; this covers thousands of other commands in between.
const RECENT_REQUESTS: usize = 4096;

impl RecentRequests {
    fn get(&self, id: &str) -> Option<&Applied> {
        self.0.iter().rev().find(|(r, _)| r == id).map(|(_, a)| a)
    }

    fn remember(&mut self, id: String, applied: Applied) {
        if self.0.len() == RECENT_REQUESTS {
            self.0.pop_front();
        }
        self.0.push_back((id, applied));
    }
}

/// Applies one command, answering a repeated request id from memory.
fn apply_command(data: &mut CatalogData, requests: &mut RecentRequests, cmd: &Command) -> Applied {
    if let Command::Once {
        request_id,
        command,
    } = cmd
    {
        if let Some(first) = requests.get(request_id) {
            return Applied {
                version: data.version.max(first.version),
                result: first.result.clone(),
            };
        }
        let applied = apply_command(data, requests, command);
        requests.remember(request_id.clone(), applied.clone());
        return applied;
    }
    let result = data.apply(cmd);
    Applied {
        version: data.version,
        result,
    }
}

impl StoredSnapshot {
    fn body(&self) -> Result<Vec<u8>, serde_json::Error> {
        #[derive(Serialize)]
        struct Body<'a> {
            data: &'a CatalogData,
            requests: &'a RecentRequests,
        }
        serde_json::to_vec(&Body {
            data: &self.data,
            requests: &self.requests,
        })
    }
}

impl StateMachineStore {
    pub fn open(dir: &Path) -> Result<Self, Box<StorageError>> {
        let path = dir.join(SNAPSHOT_FILE);
        let snapshot: Option<StoredSnapshot> = match std::fs::read(&path) {
            Ok(b) => Some(
                serde_json::from_slice(&b)
                    .map_err(|e| Box::new(StorageIOError::read_snapshot(None, io_err(e)).into()))?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(Box::new(
                    StorageIOError::read_snapshot(None, io_err(e)).into(),
                ))
            }
        };
        let inner = match &snapshot {
            Some(s) => Inner {
                data: s.data.clone(),
                requests: s.requests.clone(),
                last_applied: s.meta.last_log_id,
                last_membership: s.meta.last_membership.clone(),
                snapshot: snapshot.clone(),
            },
            None => Inner {
                data: CatalogData::default(),
                requests: RecentRequests::default(),
                last_applied: None,
                last_membership: StoredMembership::default(),
                snapshot: None,
            },
        };
        let (published, _) = watch::channel(Arc::new(inner.data.clone()));
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
            published,
            dir: dir.to_path_buf(),
        })
    }

    /// A receiver that always holds the newest applied catalog state.
    pub fn subscribe(&self) -> watch::Receiver<Arc<CatalogData>> {
        self.published.subscribe()
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    fn publish(&self, data: &CatalogData) {
        if self.published.borrow().version != data.version {
            self.published.send_replace(Arc::new(data.clone()));
        }
    }

    /// Saves a snapshot on the blocking pool, so Raft's task never waits on
    /// an fsync.
    async fn persist_off_runtime(&self, snapshot: &StoredSnapshot) -> Result<(), StorageError> {
        let this = self.clone();
        let s = snapshot.clone();
        tokio::task::spawn_blocking(move || this.persist(&s))
            .await
            .expect("snapshot task panicked")
            .map_err(|e| StorageIOError::write_snapshot(None, e).into())
    }

    fn persist(&self, snapshot: &StoredSnapshot) -> Result<(), openraft::AnyError> {
        let bytes = serde_json::to_vec(snapshot).map_err(io_err)?;
        write_atomic(&self.dir.join(SNAPSHOT_FILE), &bytes).map_err(io_err)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachineStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let stored = self.with(|i| {
            let id = match i.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, i.data.version),
                None => format!("empty-{}", i.data.version),
            };
            StoredSnapshot {
                meta: SnapshotMeta {
                    last_log_id: i.last_applied,
                    last_membership: i.last_membership.clone(),
                    snapshot_id: id,
                },
                data: i.data.clone(),
                requests: i.requests.clone(),
            }
        });
        self.persist_off_runtime(&stored).await?;
        let bytes = stored
            .body()
            .map_err(|e| StorageIOError::write_snapshot(None, io_err(e)))?;
        let meta = stored.meta.clone();
        self.with(|i| i.snapshot = Some(stored));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembership<NodeId, BasicNode>), StorageError> {
        Ok(self.with(|i| (i.last_applied, i.last_membership.clone())))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let (results, data) = self.with(|i| {
            let mut results = vec![];
            for entry in entries {
                i.last_applied = Some(entry.log_id);
                let applied = match entry.payload {
                    EntryPayload::Normal(cmd) => apply_command(&mut i.data, &mut i.requests, &cmd),
                    EntryPayload::Blank => Applied {
                        version: i.data.version,
                        result: CommandResult::Done,
                    },
                    EntryPayload::Membership(m) => {
                        i.last_membership = StoredMembership::new(Some(entry.log_id), m);
                        Applied {
                            version: i.data.version,
                            result: CommandResult::Done,
                        }
                    }
                };
                results.push(applied);
            }
            (results, i.data.clone())
        });
        self.publish(&data);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let SnapshotBody { data, requests } = SnapshotBody::decode(snapshot.get_ref())
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), io_err(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
            requests: requests.clone(),
        };
        self.persist_off_runtime(&stored).await?;
        self.with(|i| {
            i.data = data.clone();
            i.requests = requests;
            i.last_applied = meta.last_log_id;
            i.last_membership = meta.last_membership.clone();
            i.snapshot = Some(stored);
        });
        self.publish(&data);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        let Some(s) = self.with(|i| i.snapshot.clone()) else {
            return Ok(None);
        };
        let bytes = s
            .body()
            .map_err(|e| StorageIOError::read_snapshot(None, io_err(e)))?;
        Ok(Some(Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
