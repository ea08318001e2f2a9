//! A durable Raft log for the catalog.
//!
//! Catalog changes are rare and small, so the log is kept in memory and in
//! one append-only file of JSON lines (`raft-log.jsonl`), fsynced before an
//! append is reported flushed. Truncation and purging rewrite the file
//! atomically. The vote and the committed log id live in their own small
//! files, replaced atomically. A torn last line (a crash mid-append, never
//! acknowledged) is dropped on open; a bad line anywhere else is an error.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, RaftLogId, RaftLogReader, StorageIOError, Vote};
use serde::{Deserialize, Serialize};

use super::{io_err, Entry, LogId, NodeId, StorageError, TypeConfig};
use crate::fsutil::{open_append, write_atomic};

const LOG_FILE: &str = "raft-log.jsonl";
const VOTE_FILE: &str = "raft-vote.json";
const COMMITTED_FILE: &str = "raft-committed.json";
const PURGED_FILE: &str = "raft-purged.json";

#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    dir: PathBuf,
    file: File,
    entries: BTreeMap<u64, Entry>,
    last_purged: Option<LogId>,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId>,
}

#[derive(Serialize, Deserialize)]
struct Persisted<T>(T);

impl LogStore {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path) -> Result<Self, Box<StorageError>> {
        Self::open_inner(dir).map_err(|e| Box::new(e.into()))
    }

    #[allow(clippy::result_large_err)] // openraft's error type; boxed by `open`
    fn open_inner(dir: &Path) -> Result<Self, StorageIOError<NodeId>> {
        std::fs::create_dir_all(dir).map_err(|e| StorageIOError::read_logs(io_err(e)))?;
        let vote = read_json(&dir.join(VOTE_FILE)).map_err(StorageIOError::read_vote)?;
        let committed = read_json(&dir.join(COMMITTED_FILE)).map_err(StorageIOError::read_logs)?;
        let last_purged: Option<LogId> =
            read_json(&dir.join(PURGED_FILE)).map_err(StorageIOError::read_logs)?;
        let log_path = dir.join(LOG_FILE);
        let (mut entries, torn) = read_log(&log_path).map_err(StorageIOError::read_logs)?;
        if let Some(p) = &last_purged {
            entries = entries.split_off(&(p.index + 1));
        }
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            file: open_append(&log_path).map_err(|e| StorageIOError::read_logs(io_err(e)))?,
            entries,
            last_purged,
            vote,
            committed,
        };
        if torn {
            tracing::warn!(path = %log_path.display(), "dropped a torn last record of the catalog log");
            inner.rewrite().map_err(StorageIOError::write_logs)?;
        }
        Ok(Self {
            inner: Arc::new(Mutex::new(inner)),
        })
    }

    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Runs file work on the blocking pool so Raft's task is never stalled by
    /// an fsync.
    async fn blocking<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> R + Send + 'static,
    ) -> R {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.with(f))
            .await
            .expect("catalog log task panicked")
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, openraft::AnyError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let Persisted(v) = serde_json::from_slice(&bytes).map_err(io_err)?;
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(e)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), openraft::AnyError> {
    let bytes = serde_json::to_vec(&Persisted(value)).map_err(io_err)?;
    write_atomic(path, &bytes).map_err(io_err)
}

/// Reads the log file; returns the entries and whether a torn last line was
/// dropped.
fn read_log(path: &Path) -> Result<(BTreeMap<u64, Entry>, bool), openraft::AnyError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((BTreeMap::new(), false)),
        Err(e) => return Err(io_err(e)),
    };
    let lines: Vec<String> = BufReader::new(file)
        .split(b'\n')
        .map(|l| l.map(|b| String::from_utf8_lossy(&b).into_owned()))
        .collect::<Result<_, _>>()
        .map_err(io_err)?;
    let mut entries = BTreeMap::new();
    let mut torn = false;
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Entry>(line) {
            Ok(e) => {
                entries.insert(e.log_id.index, e);
            }
            Err(_) if i + 1 == lines.len() => torn = true,
            Err(e) => {
                return Err(openraft::AnyError::error(format!(
                    "catalog log {} is corrupt at line {}: {e}",
                    path.display(),
                    i + 1
                )))
            }
        }
    }
    Ok((entries, torn))
}

impl Inner {
    /// Rewrites the log file from memory, atomically.
    fn rewrite(&mut self) -> Result<(), openraft::AnyError> {
        let mut buf = Vec::new();
        for e in self.entries.values() {
            serde_json::to_writer(&mut buf, e).map_err(io_err)?;
            buf.push(b'\n');
        }
        let path = self.dir.join(LOG_FILE);
        write_atomic(&path, &buf).map_err(io_err)?;
        self.file = open_append(&path).map_err(io_err)?;
        Ok(())
    }

    fn append(&mut self, entries: Vec<Entry>) -> Result<(), std::io::Error> {
        let mut buf = Vec::new();
        for e in &entries {
            serde_json::to_writer(&mut buf, e)?;
            buf.push(b'\n');
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        for e in entries {
            self.entries.insert(e.log_id.index, e);
        }
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        Ok(self.with(|i| i.entries.range(range).map(|(_, e)| e.clone()).collect()))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        Ok(self.with(|i| {
            let last = i
                .entries
                .values()
                .next_back()
                .map(|e| *e.get_log_id())
                .or(i.last_purged);
            LogState {
                last_purged_log_id: i.last_purged,
                last_log_id: last,
            }
        }))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let vote = *vote;
        self.blocking(move |i| {
            write_json(&i.dir.join(VOTE_FILE), &Some(vote))?;
            i.vote = Some(vote);
            Ok::<_, openraft::AnyError>(())
        })
        .await
        .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        Ok(self.with(|i| i.vote))
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        self.blocking(move |i| {
            write_json(&i.dir.join(COMMITTED_FILE), &committed)?;
            i.committed = committed;
            Ok::<_, openraft::AnyError>(())
        })
        .await
        .map_err(|e| StorageIOError::write(e).into())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.with(|i| i.committed))
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let result = self.blocking(move |i| i.append(entries)).await;
        match result {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let msg = e.to_string();
                callback.log_io_completed(Err(std::io::Error::other(msg)));
                Err(StorageIOError::write_logs(io_err(e)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |i| {
            i.entries.split_off(&log_id.index);
            i.rewrite()
        })
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.blocking(move |i| {
            // Record the purge point first: entries at or below it are
            // ignored on open even if the rewrite below does not happen.
            write_json(&i.dir.join(PURGED_FILE), &Some(log_id))?;
            i.last_purged = Some(log_id);
            i.entries = i.entries.split_off(&(log_id.index + 1));
            i.rewrite()
        })
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }
}
