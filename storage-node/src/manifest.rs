//! The node's manifest: which Parquet files are live and up to which WAL
//! sequence number their rows reach. Replaced atomically, so a crash during
//! a flush leaves either the old set of files or the new one visible; files
//! on disk that the manifest does not list are orphans, removed on start.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use snafu::{ResultExt, Snafu};
use strata_catalog::fsutil::write_atomic;

use crate::delete::{DeletePredicate, Tombstone};

const MANIFEST_FILE: &str = "manifest.json";

#[derive(Debug, Snafu)]
pub enum ManifestError {
    #[snafu(display("manifest {}: {source}", path.display()))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[snafu(display("manifest {} is unreadable: {source}", path.display()))]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Manifest {
    /// Every WAL record with `seq <= flushed_seq` is in the files below.
    pub flushed_seq: u64,
    pub files: Vec<ParquetFileMeta>,
    /// Next number for a file name.
    pub next_file_id: u64,
    /// Deletes not yet applied to every file they cover.
    #[serde(default)]
    pub tombstones: Vec<Tombstone>,
    /// Data dropped (shards by retention or with their database, tables by
    /// `DROP TABLE`) whose WAL records may still be replayed: a record of
    /// a dropped (shard, table) with `seq` below the drop's is skipped.
    /// Forgotten once a flush has retired those records.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drops: Vec<DroppedData>,
    /// Shards dropped here; writes to them are refused.
    #[serde(default, skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub dropped_shards: std::collections::BTreeSet<u64>,
    /// The catalog version up to which `DROP TABLE`s have been applied.
    #[serde(default)]
    pub table_drops_applied: u64,
}

/// A drop, as the manifest remembers it for WAL replay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedData {
    /// WAL records with a lower sequence number predate the drop.
    pub seq: u64,
    pub shard_ids: Vec<u64>,
    /// `None`: every table of the shards.
    pub table: Option<String>,
}

impl DroppedData {
    pub fn covers(&self, seq: u64, shard_id: u64, table: &str) -> bool {
        seq < self.seq
            && self.shard_ids.contains(&shard_id)
            && self.table.as_deref().is_none_or(|t| t == table)
    }
}

impl Manifest {
    /// Records a delete against the files of `(shard_id, table)` that may
    /// hold rows it matches; replaces an earlier record of the same delete
    /// (replay after a crash). Files written later are not covered.
    pub fn add_tombstone(
        &mut self,
        seq: u64,
        shard_id: u64,
        table: &str,
        predicate: &DeletePredicate,
    ) {
        self.tombstones.retain(|t| t.seq != seq);
        let file_ids: Vec<u64> = self
            .files
            .iter()
            .filter(|f| {
                f.shard_id == shard_id
                    && f.table == table
                    && predicate.overlaps(f.min_time, f.max_time)
            })
            .map(|f| f.id)
            .collect();
        if !file_ids.is_empty() {
            self.tombstones.push(Tombstone {
                seq,
                shard_id,
                table: table.to_string(),
                predicate: predicate.clone(),
                file_ids,
            });
        }
    }

    /// The deletes covering file `id`, oldest first.
    pub fn deletes_for(&self, id: u64) -> Vec<&DeletePredicate> {
        self.tombstones
            .iter()
            .filter(|t| t.file_ids.contains(&id))
            .map(|t| &t.predicate)
            .collect()
    }

    /// Forgets files that are gone (compacted with their deletes applied);
    /// drops tombstones that cover nothing any more.
    pub fn retire_files(&mut self, ids: &[u64]) {
        for t in &mut self.tombstones {
            t.file_ids.retain(|id| !ids.contains(id));
        }
        self.tombstones.retain(|t| !t.file_ids.is_empty());
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParquetFileMeta {
    pub id: u64,
    /// Age of the file's rows relative to the other files of its table and
    /// shard: a higher order holds newer writes. A flushed file's order is
    /// its id; a compacted file takes the highest order of its inputs.
    #[serde(default)]
    pub order: u64,
    pub shard_id: u64,
    pub database: String,
    pub table: String,
    /// Relative to the node's data directory.
    pub path: String,
    pub rows: u64,
    pub min_time: i64,
    pub max_time: i64,
    pub size_bytes: u64,
}

impl Manifest {
    pub fn load(dir: &Path) -> Result<Self, ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).context(ParseSnafu { path }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(ManifestError::Io { path, source: e }),
        }
    }

    pub fn store(&self, dir: &Path) -> Result<(), ManifestError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        write_atomic(&path, &bytes).context(IoSnafu { path })
    }
}
