//! The shard engine of one storage node: every write goes to the WAL
//! (durable before it is acknowledged) and then to the memtable; a background
//! flush turns memtables into sorted Parquet files and retires the WAL
//! segments they cover.
//!
//! Visibility: a scan takes one snapshot of active memtables, memtables
//! being flushed, and the manifest's files, under one lock. A flushed
//! memtable leaves the snapshot set in the same step its files join it, so
//! no row is seen twice or missed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use parking_lot::Mutex;
use snafu::{ResultExt, Snafu};
use tokio::sync::{Notify, RwLock};

use crate::compaction::{self, CompactionError};
use crate::dedup::dedup_sorted;
use crate::delete::DeletePredicate;
use crate::flush::{merged_schema, write_parquet, FlushError, Written};
use crate::last_value::{CacheState, LastLookup, LastRows};
use crate::manifest::{DroppedData, Manifest, ManifestError, ParquetFileMeta};
use crate::series::{FileSeries, SeriesIndex};
use crate::series_limit::{file_series, series_of, SeriesRegistry};
use crate::wal::{self, DeleteEntry, Recovery, SyncPolicy, Wal, WalEntry, WalError};

#[derive(Debug, Snafu)]
pub enum EngineError {
    #[snafu(display("{source}"))]
    Wal { source: WalError },
    #[snafu(display("{source}"))]
    Manifest { source: ManifestError },
    #[snafu(display("{source}"))]
    Flush { source: FlushError },
    #[snafu(display(
        "storage node memory is over budget ({used_bytes} of {limit_bytes} bytes buffered \
         while flushing to disk); slow down and retry shortly"
    ))]
    MemoryPressure {
        used_bytes: usize,
        limit_bytes: usize,
    },
    #[snafu(display(
        "database '{database}' would exceed its limit of {limit} series on this node: it \
         holds {held} and the write adds {new} new series (max-series-per-database); write to \
         existing series, drop data or raise the limit"
    ))]
    SeriesLimit {
        database: String,
        limit: usize,
        held: usize,
        new: usize,
    },
    #[snafu(display(
        "shard {shard_id} was dropped (retention, DROP DATABASE) and takes no more writes; \
         the writer's catalog is out of date"
    ))]
    ShardDropped { shard_id: u64 },
    #[snafu(display("deleting from shard {shard_id} table '{table}': {source}"))]
    Delete {
        shard_id: u64,
        table: String,
        source: arrow::error::ArrowError,
    },
    #[snafu(display("compaction: {source}"))]
    Compaction { source: CompactionError },
    #[snafu(display("{what} panicked: {message}"))]
    Panicked { what: &'static str, message: String },
    #[snafu(display("flushing table '{table}' of shard {shard_id}: {source}"))]
    FlushTable {
        shard_id: u64,
        table: String,
        source: Box<EngineError>,
    },
    #[snafu(display("storage I/O on {}: {source}", path.display()))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub data_dir: PathBuf,
    pub sync: SyncPolicy,
    pub recovery: Recovery,
    /// Flush when the memtables hold this many rows.
    pub flush_rows: usize,
    /// Flush rows that have waited this long in memory.
    pub flush_age: Duration,
    /// Writes are refused while memtables (active and being flushed) hold
    /// more than this, instead of growing without bound.
    pub memory_limit_bytes: usize,
    /// The last-value caches of all shards hold at most this many bytes.
    pub last_cache_limit_bytes: usize,
    /// A write that would give one database more series than this on this
    /// node is refused (0: no limit). 1,000,000 by default, as InfluxDB's
    /// `max-series-per-database`.
    pub max_series_per_database: usize,
    /// The `node` label of this engine's metrics (its storage node id).
    pub metrics_node: String,
}

impl EngineConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            sync: SyncPolicy::Always,
            recovery: Recovery::Strict,
            flush_rows: 1_000_000,
            flush_age: Duration::from_secs(60),
            memory_limit_bytes: 1 << 30,
            last_cache_limit_bytes: 64 << 20,
            max_series_per_database: 1_000_000,
            metrics_node: String::new(),
        }
    }
}

/// A (shard, table) with this many Parquet files is compacted after a flush.
pub const COMPACT_MIN_FILES: usize = 4;

/// Identifies the data of one table in one shard.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TableKey {
    pub shard_id: u64,
    pub table: String,
}

#[derive(Debug, Default, Clone)]
struct MemTable {
    database: String,
    /// Oldest first. When `first_settled`, `batches[0]` is sorted by key
    /// with one row per key, and the rest are writes since.
    batches: Vec<RecordBatch>,
    first_settled: bool,
    /// The series index of `batches[0]` when it is settled; dropped by a
    /// delete and built again by the next settle.
    series: Option<Arc<SeriesIndex>>,
    /// Bumped by every change other than an append, so that a merge
    /// computed outside the lock is only swapped in over what it read.
    generation: u64,
}

impl MemTable {
    /// Needs no deduplication: nothing, or one settled batch.
    fn is_settled(&self) -> bool {
        self.batches.is_empty() || (self.batches.len() == 1 && self.first_settled)
    }

    /// Settled, with the series index of its one batch.
    fn is_indexed(&self) -> bool {
        self.batches.is_empty() || (self.is_settled() && self.series.is_some())
    }

    /// Its batches, each with its series index when it has one.
    fn batches(&self) -> impl Iterator<Item = MemBatch> + '_ {
        self.batches.iter().enumerate().map(|(i, b)| MemBatch {
            batch: b.clone(),
            series: match (i, self.first_settled) {
                (0, true) => self.series.clone(),
                _ => None,
            },
        })
    }

    fn series_bytes(&self) -> usize {
        self.series.as_ref().map_or(0, |s| s.bytes())
    }
}

/// Memtables that are being written to Parquet; still readable.
struct Frozen {
    tables: BTreeMap<TableKey, MemTable>,
    bytes: usize,
}

struct State {
    active: BTreeMap<TableKey, MemTable>,
    active_rows: usize,
    active_bytes: usize,
    oldest_active: Option<Instant>,
    frozen: Vec<Arc<Frozen>>,
    manifest: Manifest,
    /// One guard per file the manifest lists, by file id.
    guards: HashMap<u64, Arc<FileGuard>>,
    /// Last-value caches, per shard and table that a query asked for.
    last: HashMap<TableKey, CacheState>,
    /// What `last` holds, and what it may.
    last_bytes: usize,
    last_limit: usize,
    next_last_build: u64,
}

pub struct Engine {
    config: EngineConfig,
    wal: Wal,
    /// Held shared by writers across "WAL append + memtable insert" and
    /// exclusively by a flush while it rotates the WAL and freezes the
    /// memtables, so that a frozen memtable holds every record of the WAL
    /// segments it retires.
    write_gate: RwLock<()>,
    flush_lock: tokio::sync::Mutex<()>,
    compaction_lock: tokio::sync::Mutex<()>,
    /// Serializes manifest changes (flush and compaction both make them).
    manifest_lock: tokio::sync::Mutex<()>,
    /// Next Parquet file id; ids are never reused.
    next_file_id: AtomicU64,
    state: Mutex<State>,
    /// The series of each database, for the series limit.
    series: Mutex<SeriesRegistry>,
    flush_wanted: Arc<Notify>,
    flush_health: Mutex<FlushHealth>,
}

/// What an engine holds, as its metrics show it.
#[derive(Debug, Clone, Copy, Default)]
pub struct EngineStats {
    /// Bytes of the active and frozen memtables.
    pub memtable_bytes: usize,
    pub memtable_rows: usize,
    pub parquet_files: usize,
    pub parquet_bytes: u64,
    /// Files of the (shard, table) with the most.
    pub max_files_per_table: usize,
    pub last_cache_bytes: usize,
}

/// A memtable batch, with the series index of a settled one.
#[derive(Debug, Clone)]
pub struct MemBatch {
    pub batch: RecordBatch,
    pub series: Option<Arc<SeriesIndex>>,
}

/// What a scan reads: in-memory batches and Parquet files of one table.
pub struct ScanSnapshot {
    /// Memtable batches, oldest first.
    pub batches: Vec<MemBatch>,
    /// The memtable batches hold one row per key already (each is a
    /// settled memtable of its own shard), so a scan need not merge them.
    pub memtable_deduplicated: bool,
    /// Parquet files, oldest first; each holds one row per primary key.
    pub files: Vec<FileSource>,
}

impl ScanSnapshot {
    /// The schema of everything the snapshot holds (`None` when it holds
    /// nothing, or its parts disagree on a column's type).
    pub fn schema(&self) -> Option<SchemaRef> {
        let mut schemas: Vec<arrow::datatypes::Schema> = self
            .batches
            .iter()
            .map(|b| b.batch.schema().as_ref().clone())
            .collect();
        for f in &self.files {
            if let Ok(file) = std::fs::File::open(f.guard.path()) {
                if let Ok(b) =
                    parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                {
                    schemas.push(b.schema().as_ref().clone());
                }
            }
        }
        if schemas.is_empty() {
            return None;
        }
        arrow::datatypes::Schema::try_merge(schemas)
            .ok()
            .map(Arc::new)
    }
}

/// Deletes a file that compaction replaced once the last reader that may
/// still read it lets go.
#[derive(Debug)]
pub struct FileGuard {
    path: PathBuf,
    obsolete: AtomicBool,
    /// The file's series index, read the first time a scan pins tags.
    series: std::sync::OnceLock<Option<Arc<FileSeries>>>,
}

impl FileGuard {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn new(path: PathBuf) -> Arc<Self> {
        Arc::new(Self {
            path,
            obsolete: AtomicBool::new(false),
            series: std::sync::OnceLock::new(),
        })
    }

    /// The file's series index (read from the file once; blocking), or
    /// `None` when it has none or cannot be read.
    pub fn series(&self) -> Option<Arc<FileSeries>> {
        self.series
            .get_or_init(|| match FileSeries::read(&self.path) {
                Ok(s) => s.map(Arc::new),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot index the series of a file");
                    None
                }
            })
            .clone()
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        if self.obsolete.load(Ordering::SeqCst) {
            if let Err(e) = std::fs::remove_file(&self.path) {
                // Left behind, it is an orphan and goes on the next start.
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove a compacted file");
            }
        }
    }
}

/// A Parquet file to scan and the time range of its rows.
#[derive(Debug, Clone)]
pub struct FileSource {
    pub min_time: i64,
    pub max_time: i64,
    /// Names the file and keeps it on disk while this snapshot may read it.
    pub guard: Arc<FileGuard>,
    /// Deletes made after the file was written: its rows they match are
    /// not part of the table any more.
    pub deletes: Vec<Arc<DeletePredicate>>,
}

impl Engine {
    /// Opens the engine: loads the manifest, removes orphan files, replays
    /// the WAL past the manifest's flushed sequence into memtables.
    pub fn open(config: EngineConfig) -> Result<Arc<Self>, EngineError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).context(IoSnafu { path: dir })?;
        let mut manifest = Manifest::load(dir).context(ManifestSnafu)?;
        // A file the manifest lists but the disk lost (deleted, a failed
        // disk restored from an old copy): its rows are gone from this
        // replica. The node starts without it, says so, and anti-entropy
        // (`strata admin repair`) copies them back from another replica.
        let lost: Vec<String> = manifest
            .files
            .iter()
            .filter(|f| !dir.join(&f.path).exists())
            .map(|f| f.path.clone())
            .collect();
        if !lost.is_empty() {
            for path in &lost {
                tracing::error!(file = %path, "a Parquet file of this node is missing; its rows are gone from this replica until a repair (strata admin repair) copies them from another");
            }
            manifest.files.retain(|f| !lost.contains(&f.path));
            manifest.store(dir).context(ManifestSnafu)?;
        }
        remove_orphans(dir, &manifest)?;
        let next_file_id = manifest.next_file_id;
        let wal_dir = dir.join("wal");
        let replayed =
            wal::replay(&wal_dir, manifest.flushed_seq, config.recovery).context(WalSnafu)?;
        // A drop takes a sequence number it never writes to the WAL; new
        // records must number above it, or a later replay would take them
        // for rows written before the drop.
        let last_seq = manifest
            .drops
            .iter()
            .map(|d| d.seq)
            .fold(replayed.last_seq, u64::max);
        let node = [("node", config.metrics_node.as_str())];
        let registry = strata_metrics::global();
        let metrics = crate::wal::WalMetrics {
            fsync_seconds: registry.histogram(
                "strata_wal_fsync_duration_seconds",
                "Time the WAL writer spent in each fsync.",
                &node,
                strata_metrics::LATENCY_BUCKETS,
            ),
            bytes: registry.counter(
                "strata_wal_bytes_total",
                "Bytes appended to the write-ahead log.",
                &node,
            ),
        };
        let wal = Wal::start_measured(&wal_dir, last_seq, config.sync, Some(metrics))
            .context(WalSnafu)?;
        let mut state = State {
            active: BTreeMap::new(),
            active_rows: 0,
            active_bytes: 0,
            oldest_active: None,
            frozen: vec![],
            guards: manifest
                .files
                .iter()
                .map(|f| (f.id, FileGuard::new(dir.join(&f.path))))
                .collect(),
            manifest,
            last: HashMap::new(),
            last_bytes: 0,
            last_limit: config.last_cache_limit_bytes,
            next_last_build: 0,
        };
        let n = replayed.entries.len() + replayed.deletes.len();
        let mut deletes = replayed.deletes.into_iter().peekable();
        let mut tombstones_changed = false;
        let mut apply = |st: &mut State, d: DeleteEntry| -> Result<(), EngineError> {
            delete_from_memtables(st, &d)?;
            // A delete that crashed before its tombstone was stored: no
            // flush can have followed it (it would have retired this
            // record), so every file now listed predates it.
            st.manifest
                .add_tombstone(d.seq, d.shard_id, &d.table, &d.predicate);
            tombstones_changed = true;
            Ok(())
        };
        let mut series = SeriesRegistry::default();
        for f in &state.manifest.files {
            match file_series(&dir.join(&f.path), &f.table) {
                Ok(s) => series.add(&f.database, s),
                Err(e) => {
                    tracing::warn!(file = %f.path, error = %e, "cannot count the series of a file")
                }
            }
        }
        let drops = state.manifest.drops.clone();
        let dropped = |seq: u64, shard_id: u64, table: &str| {
            drops.iter().any(|d| d.covers(seq, shard_id, table))
        };
        for e in replayed.entries {
            while let Some(d) = deletes.next_if(|d| d.seq < e.seq) {
                apply(&mut state, d)?;
            }
            if dropped(e.seq, e.shard_id, &e.table) {
                continue;
            }
            if let Ok(s) = series_of(&e.table, &e.batch) {
                series.add(&e.database, s);
            }
            insert(&mut state, e);
        }
        for d in deletes {
            apply(&mut state, d)?;
        }
        if tombstones_changed {
            state.manifest.store(dir).context(ManifestSnafu)?;
        }
        if n > 0 {
            tracing::info!(records = n, rows = state.active_rows, "replayed WAL");
        }
        Ok(Arc::new(Self {
            config,
            wal,
            write_gate: RwLock::new(()),
            flush_lock: tokio::sync::Mutex::new(()),
            compaction_lock: tokio::sync::Mutex::new(()),
            manifest_lock: tokio::sync::Mutex::new(()),
            next_file_id: AtomicU64::new(next_file_id),
            state: Mutex::new(state),
            series: Mutex::new(series),
            flush_wanted: Arc::new(Notify::new()),
            flush_health: Mutex::new(FlushHealth::default()),
        }))
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    /// Writes one batch to a table of a shard; returns once it is durable.
    pub async fn write(
        &self,
        database: &str,
        table: &str,
        shard_id: u64,
        batch: RecordBatch,
    ) -> Result<(), EngineError> {
        self.write_batches(database, table, shard_id, vec![batch])
            .await
    }

    /// Writes batches (each with the columns it has) to a table of a shard,
    /// one WAL record each; returns once all are durable.
    pub async fn write_batches(
        &self,
        database: &str,
        table: &str,
        shard_id: u64,
        batches: Vec<RecordBatch>,
    ) -> Result<(), EngineError> {
        let batches: Vec<RecordBatch> = batches.into_iter().filter(|b| b.num_rows() > 0).collect();
        if batches.is_empty() {
            return Ok(());
        }
        self.check_memory()?;
        self.admit_series(database, table, &batches)?;
        let _gate = self.write_gate.read().await;
        if self
            .state
            .lock()
            .manifest
            .dropped_shards
            .contains(&shard_id)
        {
            return Err(EngineError::ShardDropped { shard_id });
        }
        let entries: Vec<WalEntry> = batches
            .into_iter()
            .map(|batch| WalEntry {
                seq: self.wal.next_seq(),
                shard_id,
                database: database.to_string(),
                table: table.to_string(),
                batch,
            })
            .collect();
        self.wal.append_all(&entries).await.context(WalSnafu)?;
        let over = {
            let mut st = self.state.lock();
            for entry in entries {
                insert(&mut st, entry);
            }
            st.active_rows >= self.config.flush_rows
        };
        if over {
            self.flush_wanted.notify_one();
        }
        Ok(())
    }

    /// Deletes the rows of `table` in `shard_id` that `predicate` matches,
    /// as of now: durable in the WAL, applied to the memtables at once and
    /// to Parquet files through a tombstone. No flush or compaction runs
    /// meanwhile, and writes wait, so "as of now" is exact. Returns how
    /// many rows left memory (file rows are removed as they are read).
    pub async fn delete(
        &self,
        database: &str,
        table: &str,
        shard_id: u64,
        predicate: DeletePredicate,
    ) -> Result<u64, EngineError> {
        let _no_flush = self.flush_lock.lock().await;
        let _no_compaction = self.compaction_lock.lock().await;
        let _gate = self.write_gate.write().await;
        let entry = DeleteEntry {
            seq: self.wal.next_seq(),
            shard_id,
            database: database.to_string(),
            table: table.to_string(),
            predicate,
        };
        self.wal.append_delete(&entry).await.context(WalSnafu)?;
        let removed = delete_from_memtables(&mut self.state.lock(), &entry)?;
        self.update_manifest(
            |m| m.add_tombstone(entry.seq, shard_id, table, &entry.predicate),
            |_| {},
        )
        .await?;
        Ok(removed)
    }

    /// Removes data for good: every table of `shard_ids` (`table` is
    /// `None`) or one table in them, as of now. Memtables go at once; files
    /// leave the manifest (and the disk once no scan reads them); the
    /// manifest remembers the drop so that replaying the WAL does not bring
    /// the rows back, and refuses later writes to dropped shards. No flush
    /// or compaction runs meanwhile, and writes wait. Returns the rows and
    /// files removed.
    pub async fn drop_data(
        &self,
        shard_ids: &BTreeSet<u64>,
        table: Option<&str>,
    ) -> Result<(u64, usize), EngineError> {
        let _no_flush = self.flush_lock.lock().await;
        let _no_compaction = self.compaction_lock.lock().await;
        let _gate = self.write_gate.write().await;
        let seq = self.wal.next_seq();
        let hit = |shard_id: u64, t: &str| {
            shard_ids.contains(&shard_id) && table.is_none_or(|want| want == t)
        };
        let databases: BTreeSet<String> = self
            .tables()
            .into_iter()
            .filter(|(_, k)| hit(k.shard_id, &k.table))
            .map(|(db, _)| db)
            .collect();
        let rows = {
            let mut st = self.state.lock();
            let keys: Vec<TableKey> = st
                .active
                .keys()
                .filter(|k| hit(k.shard_id, &k.table))
                .cloned()
                .collect();
            let mut rows = 0u64;
            for k in &keys {
                drop_last(&mut st, k);
                if let Some(m) = st.active.remove(k) {
                    let n: usize = m.batches.iter().map(|b| b.num_rows()).sum();
                    let bytes: usize =
                        m.batches.iter().map(batch_bytes).sum::<usize>() + m.series_bytes();
                    st.active_rows = st.active_rows.saturating_sub(n);
                    st.active_bytes = st.active_bytes.saturating_sub(bytes);
                    rows += n as u64;
                }
            }
            // A flush holds the lock taken above while anything is frozen,
            // so nothing is; these keys only lose their cached last values.
            let cached: Vec<TableKey> = st
                .last
                .keys()
                .filter(|k| hit(k.shard_id, &k.table))
                .cloned()
                .collect();
            for k in &cached {
                drop_last(&mut st, k);
            }
            rows
        };
        let mut files = 0;
        let mut file_rows = 0u64;
        self.update_manifest(
            |m| {
                let gone: Vec<u64> = m
                    .files
                    .iter()
                    .filter(|f| hit(f.shard_id, &f.table))
                    .map(|f| f.id)
                    .collect();
                files = gone.len();
                file_rows = m
                    .files
                    .iter()
                    .filter(|f| gone.contains(&f.id))
                    .map(|f| f.rows)
                    .sum();
                m.files.retain(|f| !gone.contains(&f.id));
                m.retire_files(&gone);
                m.drops.push(DroppedData {
                    seq,
                    shard_ids: shard_ids.iter().copied().collect(),
                    table: table.map(str::to_string),
                });
                if table.is_none() {
                    m.dropped_shards.extend(shard_ids.iter().copied());
                }
            },
            |_| {},
        )
        .await?;
        // Series only in the dropped data no longer count against the limit.
        for database in &databases {
            self.recount_series(database).await?;
        }
        tracing::info!(
            shards = ?shard_ids,
            table = table.unwrap_or("(all)"),
            rows = rows + file_rows,
            files,
            "dropped data"
        );
        Ok((rows + file_rows, files))
    }

    /// Counts the series `database` holds from what is left of it. Called
    /// with writes held off.
    async fn recount_series(&self, database: &str) -> Result<(), EngineError> {
        let (files, batches) = {
            let st = self.state.lock();
            let files: Vec<(PathBuf, String)> = st
                .manifest
                .files
                .iter()
                .filter(|f| f.database == database)
                .map(|f| (self.config.data_dir.join(&f.path), f.table.clone()))
                .collect();
            let batches: Vec<(String, RecordBatch)> = st
                .active
                .iter()
                .filter(|(_, m)| m.database == database)
                .flat_map(|(k, m)| m.batches.iter().map(|b| (k.table.clone(), b.clone())))
                .collect();
            (files, batches)
        };
        let series = tokio::task::spawn_blocking(move || {
            let mut all = std::collections::HashSet::new();
            for (path, table) in files {
                match file_series(&path, &table) {
                    Ok(s) => all.extend(s),
                    Err(e) => tracing::warn!(file = %path.display(), error = %e, "cannot count the series of a file"),
                }
            }
            for (table, batch) in batches {
                if let Ok(s) = series_of(&table, &batch) {
                    all.extend(s);
                }
            }
            all
        })
        .await
        .map_err(|e| panicked("counting series", e))?;
        self.series.lock().replace(database, series);
        Ok(())
    }

    /// The catalog version up to which table drops are applied here.
    pub fn table_drops_applied(&self) -> u64 {
        self.state.lock().manifest.table_drops_applied
    }

    /// Records that table drops up to `version` are applied.
    pub async fn set_table_drops_applied(&self, version: u64) -> Result<(), EngineError> {
        if self.table_drops_applied() >= version {
            return Ok(());
        }
        self.update_manifest(|m| m.table_drops_applied = version, |_| {})
            .await
    }

    /// Shards this node holds anything of.
    pub fn shard_ids(&self) -> BTreeSet<u64> {
        self.tables().into_iter().map(|(_, k)| k.shard_id).collect()
    }

    /// Records the series a write brings, or refuses it (before anything is
    /// logged) when they would take the database over its series limit.
    fn admit_series(
        &self,
        database: &str,
        table: &str,
        batches: &[RecordBatch],
    ) -> Result<(), EngineError> {
        let mut series = std::collections::HashSet::new();
        for b in batches {
            // A batch whose tags cannot be read is refused by validation
            // further on; it brings no series here.
            if let Ok(s) = series_of(table, b) {
                series.extend(s);
            }
        }
        let limit = self.config.max_series_per_database;
        self.series
            .lock()
            .admit(database, &series, limit)
            .map_err(|over| EngineError::SeriesLimit {
                database: database.to_string(),
                limit,
                held: over.held,
                new: over.new,
            })
    }

    /// Series this node holds for `database`.
    pub fn series_count(&self, database: &str) -> usize {
        self.series.lock().count(database)
    }

    /// What the engine holds now, for metrics.
    pub fn stats(&self) -> EngineStats {
        let st = self.state.lock();
        let mut per_table: HashMap<(u64, &str), usize> = HashMap::new();
        for f in &st.manifest.files {
            *per_table.entry((f.shard_id, f.table.as_str())).or_default() += 1;
        }
        EngineStats {
            memtable_bytes: st.active_bytes + st.frozen.iter().map(|f| f.bytes).sum::<usize>(),
            memtable_rows: st.active_rows,
            parquet_files: st.manifest.files.len(),
            parquet_bytes: st.manifest.files.iter().map(|f| f.size_bytes).sum(),
            max_files_per_table: per_table.values().copied().max().unwrap_or(0),
            last_cache_bytes: st.last_bytes,
        }
    }

    /// Refuses a write, before anything is logged, while memtables are over
    /// budget; asks for a flush so that the pressure goes away.
    pub fn check_memory(&self) -> Result<(), EngineError> {
        let used_bytes = {
            let st = self.state.lock();
            st.active_bytes + st.frozen.iter().map(|f| f.bytes).sum::<usize>()
        };
        if used_bytes <= self.config.memory_limit_bytes {
            return Ok(());
        }
        self.flush_wanted.notify_one();
        Err(EngineError::MemoryPressure {
            used_bytes,
            limit_bytes: self.config.memory_limit_bytes,
        })
    }

    /// The rows of `table` in `shard_ids` as of now.
    pub fn snapshot(&self, table: &str, shard_ids: &[u64]) -> ScanSnapshot {
        let wanted = |k: &TableKey| k.table == table && shard_ids.contains(&k.shard_id);
        self.settle_memtables(&wanted);
        let st = self.state.lock();
        let mut batches = vec![];
        let mut memtable_deduplicated = true;
        for frozen in &st.frozen {
            for (k, m) in &frozen.tables {
                if wanted(k) {
                    batches.extend(m.batches());
                    memtable_deduplicated &= m.is_settled();
                }
            }
        }
        for (k, m) in &st.active {
            if wanted(k) {
                batches.extend(m.batches());
                memtable_deduplicated &= m.is_settled();
            }
        }
        let mut listed: Vec<&ParquetFileMeta> = st
            .manifest
            .files
            .iter()
            .filter(|f| f.table == table && shard_ids.contains(&f.shard_id))
            .collect();
        listed.sort_by_key(|f| (f.order, f.id));
        let files = listed
            .into_iter()
            .map(|f| FileSource {
                min_time: f.min_time,
                max_time: f.max_time,
                guard: st.guards[&f.id].clone(),
                deletes: st
                    .manifest
                    .deletes_for(f.id)
                    .into_iter()
                    .map(|d| Arc::new(d.clone()))
                    .collect(),
            })
            .collect();
        ScanSnapshot {
            batches,
            memtable_deduplicated,
            files,
        }
    }

    /// Replaces the batches of each wanted active memtable by their sorted,
    /// deduplicated merge and indexes its series, so that scans stop
    /// redoing it: the first scan after writes merges, later ones read the
    /// result and look series up in it. The merge runs outside the state
    /// lock (writes go on) and is swapped in only if the memtable has only
    /// grown meanwhile; the newer batches stay after it.
    fn settle_memtables(&self, wanted: &dyn Fn(&TableKey) -> bool) {
        let work: Vec<(TableKey, u64, Vec<RecordBatch>, bool)> = {
            let st = self.state.lock();
            st.active
                .iter()
                .filter(|(k, m)| wanted(k) && !m.is_indexed())
                .map(|(k, m)| (k.clone(), m.generation, m.batches.clone(), m.is_settled()))
                .collect()
        };
        for (key, generation, batches, settled) in work {
            let merged = if settled {
                // Settled, its index dropped by a delete: index it again.
                Ok(batches[0].clone())
            } else {
                let schema = match merged_schema(&batches) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(table = %key.table, shard = key.shard_id, error = %e, "cannot settle a memtable");
                        continue;
                    }
                };
                // Sparse batches of a wide table would be widened to every
                // column: leave them as they are, scans merge what they read.
                let cells: usize = batches.iter().map(|b| b.num_rows() * b.num_columns()).sum();
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                if rows * schema.fields().len() > 2 * cells + 4096 {
                    continue;
                }
                dedup_sorted(&batches, &schema)
            };
            let indexed = merged.and_then(|m| {
                let series = SeriesIndex::build(&m)?;
                Ok((m, series))
            });
            let (merged, series) = match indexed {
                Ok(m) => m,
                Err(e) => {
                    // Scans merge for themselves meanwhile.
                    tracing::warn!(table = %key.table, shard = key.shard_id, error = %e, "cannot settle a memtable");
                    continue;
                }
            };
            let mut st = self.state.lock();
            let st = &mut *st;
            let Some(m) = st.active.get_mut(&key) else {
                continue;
            };
            if m.generation != generation || m.batches.len() < batches.len() {
                continue;
            }
            let old_bytes: usize = m.batches[..batches.len()]
                .iter()
                .map(batch_bytes)
                .sum::<usize>()
                + m.series_bytes();
            let old_rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            st.active_bytes =
                (st.active_bytes + batch_bytes(&merged) + series.bytes()).saturating_sub(old_bytes);
            st.active_rows = (st.active_rows + merged.num_rows()).saturating_sub(old_rows);
            m.batches.splice(..batches.len(), [merged]);
            m.first_settled = true;
            m.series = Some(Arc::new(series));
            m.generation += 1;
        }
    }

    /// The newest row of each series of `table` in `shard_id`, from the
    /// last-value cache when it holds them; otherwise whether the caller
    /// is to build the cache ([`Engine::last_built`]) or just scan.
    pub fn last_lookup(&self, table: &str, shard_id: u64, schema: &SchemaRef) -> LastLookup {
        let key = TableKey {
            shard_id,
            table: table.to_string(),
        };
        let mut st = self.state.lock();
        match st.last.get(&key) {
            Some(CacheState::Built(rows)) => {
                let rows = rows.clone();
                drop(st);
                match rows.to_batch(schema) {
                    Ok(b) => LastLookup::Hit(b),
                    Err(e) => {
                        tracing::warn!(table, shard = shard_id, error = %e, "cannot read a last-value cache");
                        LastLookup::Scan
                    }
                }
            }
            Some(CacheState::Building { .. }) => LastLookup::Scan,
            None => {
                st.next_last_build += 1;
                let id = st.next_last_build;
                st.last.insert(
                    key,
                    CacheState::Building {
                        id,
                        pending: vec![],
                    },
                );
                LastLookup::Build(id)
            }
        }
    }

    /// Hands in the cache built for `table` in `shard_id` from a scan that
    /// started after [`Engine::last_lookup`] returned `Build(id)`: the
    /// writes since are applied to it and it is kept if it fits (and no
    /// delete dropped it meanwhile). Returns its rows as a batch of
    /// `schema`.
    pub fn last_built(
        &self,
        table: &str,
        shard_id: u64,
        id: u64,
        mut rows: LastRows,
        schema: &SchemaRef,
    ) -> Result<RecordBatch, arrow::error::ArrowError> {
        let key = TableKey {
            shard_id,
            table: table.to_string(),
        };
        let mut guard = self.state.lock();
        let st = &mut *guard;
        let ours =
            matches!(st.last.get(&key), Some(CacheState::Building { id: i, .. }) if *i == id);
        if !ours {
            // A delete dropped it: the scan is still a true answer as of
            // its snapshot.
            drop(guard);
            return rows.to_batch(schema);
        }
        let Some(CacheState::Building { pending, .. }) = st.last.remove(&key) else {
            unreachable!("checked above");
        };
        st.last_bytes = st
            .last_bytes
            .saturating_sub(pending.iter().map(|b| b.get_array_memory_size()).sum());
        for b in &pending {
            rows.apply(b)?;
        }
        let rows = Arc::new(rows);
        if st.last_bytes + rows.bytes() <= st.last_limit {
            st.last_bytes += rows.bytes();
            st.last.insert(key, CacheState::Built(rows.clone()));
        } else {
            tracing::debug!(
                table,
                shard = shard_id,
                bytes = rows.bytes(),
                "a last-value cache does not fit"
            );
        }
        drop(guard);
        rows.to_batch(schema)
    }

    /// Gives up the build of a cache that [`Engine::last_lookup`] handed
    /// out as `Build(id)` (its scan failed or was dropped).
    pub fn last_abandoned(&self, table: &str, shard_id: u64, id: u64) {
        let key = TableKey {
            shard_id,
            table: table.to_string(),
        };
        let mut st = self.state.lock();
        if matches!(st.last.get(&key), Some(CacheState::Building { id: i, .. }) if *i == id) {
            drop_last(&mut st, &key);
        }
    }

    /// Every (shard, table) this node holds data for, with its database.
    pub fn tables(&self) -> Vec<(String, TableKey)> {
        let st = self.state.lock();
        let mut out: BTreeMap<TableKey, String> = BTreeMap::new();
        for f in &st.manifest.files {
            out.insert(
                TableKey {
                    shard_id: f.shard_id,
                    table: f.table.clone(),
                },
                f.database.clone(),
            );
        }
        for frozen in &st.frozen {
            for (k, m) in &frozen.tables {
                out.insert(k.clone(), m.database.clone());
            }
        }
        for (k, m) in &st.active {
            out.insert(k.clone(), m.database.clone());
        }
        out.into_iter().map(|(k, db)| (db, k)).collect()
    }

    /// Schema of the data held for one table of one shard (the union of what
    /// was written), if any.
    pub fn table_schema(&self, key: &TableKey) -> Option<SchemaRef> {
        self.snapshot(&key.table, &[key.shard_id]).schema()
    }

    /// Writes all memtables to Parquet and retires the WAL they came from.
    /// Its outcome, whoever asked for it, goes into [`Engine::flush_health`].
    pub async fn flush(&self) -> Result<(), EngineError> {
        let outcome = self.flush_once().await;
        let node = [("node", self.config.metrics_node.as_str())];
        let result = if outcome.is_ok() { "ok" } else { "failed" };
        strata_metrics::global()
            .counter(
                "strata_flushes_total",
                "Flushes of memtables to Parquet, by outcome.",
                &[node[0], ("result", result)],
            )
            .inc();
        self.record_flush(outcome.as_ref().map(|_| ()).map_err(|e| e.to_string()));
        outcome
    }

    async fn flush_once(&self) -> Result<(), EngineError> {
        let _one_at_a_time = self.flush_lock.lock().await;
        let upto = {
            let _gate = self.write_gate.write().await;
            self.wal.rotate().await.context(WalSnafu)?;
            let mut st = self.state.lock();
            if !st.active.is_empty() {
                let tables = std::mem::take(&mut st.active);
                let bytes = std::mem::take(&mut st.active_bytes);
                st.frozen.push(Arc::new(Frozen { tables, bytes }));
            }
            st.active_rows = 0;
            st.oldest_active = None;
            self.wal.last_seq()
        };
        let (frozen, flushed_seq) = {
            let st = self.state.lock();
            (st.frozen.clone(), st.manifest.flushed_seq)
        };
        if frozen.is_empty() && flushed_seq >= upto {
            return Ok(());
        }
        let dir = self.config.data_dir.clone();
        let frozen_for_write = frozen.clone();
        let ids = self.file_ids(frozen.iter().map(|f| f.tables.len()).sum());
        let written =
            tokio::task::spawn_blocking(move || write_frozen(&dir, &frozen_for_write, ids))
                .await
                .map_err(|e| panicked("flush", e))?;
        // A table whose file could not be written stays frozen (readable,
        // retried by the next flush) while the others' files are kept. The
        // WAL is retired only once every table is in a file: until then a
        // restart replays the flushed tables' records too, which dedup
        // merges with their files.
        let complete = written.failed.is_empty();
        let still_frozen: Option<Arc<Frozen>> = (!complete).then(|| {
            let mut tables: BTreeMap<TableKey, MemTable> = BTreeMap::new();
            for f in &frozen {
                for (k, m) in &f.tables {
                    if written.failed.iter().any(|(key, _)| key == k) {
                        let t = tables.entry(k.clone()).or_insert_with(|| MemTable {
                            database: m.database.clone(),
                            ..Default::default()
                        });
                        t.batches.extend(m.batches.iter().cloned());
                    }
                }
            }
            let bytes = tables
                .values()
                .flat_map(|m| m.batches.iter())
                .map(batch_bytes)
                .sum();
            Arc::new(Frozen { tables, bytes })
        });
        let files = written.files;
        self.update_manifest(
            |m| {
                m.files.extend(files);
                if complete {
                    m.flushed_seq = upto;
                    // Replay starts after `upto`: drops before it have
                    // nothing left to hide.
                    m.drops.retain(|d| d.seq > upto);
                }
            },
            // The flushed memtables leave the read snapshot in the same step
            // their files join it.
            |st| {
                st.frozen
                    .retain(|f| !frozen.iter().any(|g| Arc::ptr_eq(f, g)));
                st.frozen.extend(still_frozen);
            },
        )
        .await?;
        if let Some((key, e)) = written.failed.into_iter().next() {
            return Err(EngineError::FlushTable {
                shard_id: key.shard_id,
                table: key.table,
                source: Box::new(e),
            });
        }
        self.wal.remove_flushed(upto).context(WalSnafu)?;
        Ok(())
    }

    /// Reserves `n` file ids.
    fn file_ids(&self, n: usize) -> std::ops::Range<u64> {
        let first = self.next_file_id.fetch_add(n as u64, Ordering::SeqCst);
        first..first + n as u64
    }

    /// Changes the manifest: applies `change` to a copy, stores it
    /// atomically, then swaps it in together with `on_swap` under the state
    /// lock, so readers see the old or the new set of files, never a mix.
    async fn update_manifest(
        &self,
        change: impl FnOnce(&mut Manifest),
        on_swap: impl FnOnce(&mut State),
    ) -> Result<(), EngineError> {
        let _one_at_a_time = self.manifest_lock.lock().await;
        let mut manifest = self.state.lock().manifest.clone();
        change(&mut manifest);
        manifest.next_file_id = self.next_file_id.load(Ordering::SeqCst);
        let dir = self.config.data_dir.clone();
        let to_store = manifest.clone();
        tokio::task::spawn_blocking(move || to_store.store(&dir))
            .await
            .map_err(|e| panicked("storing the manifest", e))?
            .context(ManifestSnafu)?;
        let mut st = self.state.lock();
        let listed: std::collections::HashSet<u64> = manifest.files.iter().map(|f| f.id).collect();
        st.guards.retain(|id, guard| {
            let keep = listed.contains(id);
            if !keep {
                // Deleted once no snapshot holds it any more.
                guard.obsolete.store(true, Ordering::SeqCst);
            }
            keep
        });
        for f in &manifest.files {
            st.guards
                .entry(f.id)
                .or_insert_with(|| FileGuard::new(self.config.data_dir.join(&f.path)));
        }
        st.manifest = manifest;
        on_swap(&mut st);
        Ok(())
    }

    /// Merges the Parquet files of every (shard, table) that has at least
    /// `min_files` of them into one, deduplicated, file. A crash at any
    /// point leaves either the inputs or the output listed, never both:
    /// the manifest switch is atomic and unlisted files are removed on
    /// start. Inputs are deleted when the last scan reading them ends.
    /// Returns how many (shard, table) pairs were compacted.
    pub async fn compact(&self, min_files: usize) -> Result<usize, EngineError> {
        let _one_at_a_time = self.compaction_lock.lock().await;
        let mut groups: BTreeMap<TableKey, Vec<ParquetFileMeta>> = BTreeMap::new();
        for f in &self.state.lock().manifest.files {
            let key = TableKey {
                shard_id: f.shard_id,
                table: f.table.clone(),
            };
            groups.entry(key).or_default().push(f.clone());
        }
        let mut compacted = 0;
        for (key, mut inputs) in groups {
            if inputs.len() < min_files.max(2) {
                continue;
            }
            inputs.sort_by_key(|f| f.order);
            let id = self.file_ids(1).start;
            let dir = self.config.data_dir.clone();
            let job_inputs: Vec<(ParquetFileMeta, Vec<DeletePredicate>)> = {
                let st = self.state.lock();
                inputs
                    .iter()
                    .map(|f| {
                        let deletes = st.manifest.deletes_for(f.id).into_iter().cloned().collect();
                        (f.clone(), deletes)
                    })
                    .collect()
            };
            let output =
                tokio::task::spawn_blocking(move || compact_files(&dir, &key, &job_inputs, id))
                    .await
                    .map_err(|e| panicked("compaction", e))??;
            let input_ids: Vec<u64> = inputs.iter().map(|f| f.id).collect();
            self.update_manifest(
                |m| {
                    m.files.retain(|f| !input_ids.contains(&f.id));
                    // Deletes only run while no compaction does, so the
                    // output applied every delete covering its inputs.
                    m.retire_files(&input_ids);
                    if let Some(output) = output {
                        m.files.push(output);
                    }
                },
                |_| {},
            )
            .await?;
            compacted += 1;
        }
        strata_metrics::global()
            .counter(
                "strata_compactions_total",
                "Compactions of a shard table's Parquet files into one.",
                &[("node", self.config.metrics_node.as_str())],
            )
            .inc_by(compacted as u64);
        Ok(compacted)
    }

    /// How background flushes are going, for health checks.
    pub fn flush_health(&self) -> FlushHealth {
        self.flush_health.lock().clone()
    }

    /// Runs flushes in the background until the engine is dropped: when the
    /// memtables are over their row budget or their oldest rows are older
    /// than the flush age. A failed flush (an error or a panic) is logged
    /// with its cause, recorded in [`Engine::flush_health`] and retried
    /// with exponential backoff; the flusher itself never stops.
    pub fn spawn_flusher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        use futures::FutureExt;
        let weak = Arc::downgrade(self);
        let age = self.config.flush_age;
        let flush_wanted = self.flush_wanted.clone();
        tokio::spawn(async move {
            loop {
                let Some(engine) = weak.upgrade() else { return };
                let due = {
                    let st = engine.state.lock();
                    st.oldest_active.is_some_and(|t| t.elapsed() >= age)
                        || st.active_rows >= engine.config.flush_rows
                        || st.active_bytes >= engine.config.memory_limit_bytes / 2
                        || !st.frozen.is_empty()
                };
                let mut backoff = None;
                if due {
                    let flushed = match std::panic::AssertUnwindSafe(engine.flush())
                        .catch_unwind()
                        .await
                    {
                        Ok(outcome) => outcome.is_ok(),
                        Err(p) => {
                            let e = EngineError::Panicked {
                                what: "flush",
                                message: panic_message(p.as_ref()),
                            };
                            engine.record_flush(Err(e.to_string()));
                            false
                        }
                    };
                    backoff = Engine::flush_backoff(engine.flush_health().consecutive_failures);
                    if flushed {
                        let compaction =
                            std::panic::AssertUnwindSafe(engine.compact(COMPACT_MIN_FILES))
                                .catch_unwind()
                                .await;
                        match compaction {
                            Ok(Ok(_)) => {}
                            Ok(Err(e)) => {
                                tracing::error!(error = %e, "compaction failed; the input files stay")
                            }
                            Err(p) => tracing::error!(
                                panic = %panic_message(p.as_ref()),
                                "compaction panicked; the input files stay"
                            ),
                        }
                    }
                }
                drop(engine);
                let wait = backoff.unwrap_or(Duration::from_secs(1).min(age));
                if backoff.is_some() {
                    // While failing, retry on the backoff clock only.
                    tokio::time::sleep(wait).await;
                } else {
                    let wanted = flush_wanted.notified();
                    let _ = tokio::time::timeout(wait, wanted).await;
                }
            }
        })
    }

    /// Records a flush's outcome (an error's text) in the flush health.
    fn record_flush(&self, outcome: Result<(), String>) {
        let mut health = self.flush_health.lock();
        match outcome {
            Ok(()) => {
                if health.consecutive_failures > 0 {
                    tracing::info!(
                        failures = health.consecutive_failures,
                        "flush succeeded again"
                    );
                }
                health.consecutive_failures = 0;
                health.last_error = None;
            }
            Err(e) => {
                health.consecutive_failures += 1;
                tracing::error!(
                    error = %e,
                    failures = health.consecutive_failures,
                    "flush failed; rows stay in the WAL and memory"
                );
                health.last_error = Some(e);
            }
        }
    }

    /// How long the flusher waits before retrying after `failures` failed
    /// flushes in a row: none after a success, then doubling.
    fn flush_backoff(failures: u64) -> Option<Duration> {
        if failures == 0 {
            return None;
        }
        let doublings = (failures - 1).min(16) as u32;
        Some((FLUSH_RETRY_MIN * 2u32.pow(doublings)).min(FLUSH_RETRY_MAX))
    }
}

/// First and longest wait before a failed background flush is retried.
const FLUSH_RETRY_MIN: Duration = Duration::from_millis(500);
const FLUSH_RETRY_MAX: Duration = Duration::from_secs(30);

/// How background flushes are going.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlushHealth {
    /// Failed attempts since the last success.
    pub consecutive_failures: u64,
    /// Why the last attempt failed, while failing.
    pub last_error: Option<String>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

fn panicked(what: &'static str, e: tokio::task::JoinError) -> EngineError {
    let message = match e.try_into_panic() {
        Ok(p) => panic_message(p.as_ref()),
        Err(e) => e.to_string(),
    };
    EngineError::Panicked { what, message }
}

fn insert(st: &mut State, e: WalEntry) {
    let key = TableKey {
        shard_id: e.shard_id,
        table: e.table,
    };
    st.active_rows += e.batch.num_rows();
    st.active_bytes += batch_bytes(&e.batch);
    st.oldest_active.get_or_insert_with(Instant::now);
    update_last(st, &key, &e.batch);
    let m = st.active.entry(key).or_insert_with(|| MemTable {
        database: e.database,
        ..Default::default()
    });
    m.batches.push(e.batch);
}

/// Takes a written batch into its shard's last-value cache, if it has one.
fn update_last(st: &mut State, key: &TableKey, batch: &RecordBatch) {
    let Some(cache) = st.last.get_mut(key) else {
        return;
    };
    let before = cache.bytes();
    let outcome = match cache {
        CacheState::Building { pending, .. } => {
            pending.push(batch.clone());
            Ok(())
        }
        CacheState::Built(rows) => Arc::make_mut(rows).apply(batch),
    };
    let after = cache.bytes();
    st.last_bytes = (st.last_bytes + after).saturating_sub(before);
    let dropped = match outcome {
        Err(e) => {
            tracing::warn!(table = %key.table, shard = key.shard_id, error = %e, "dropping a last-value cache");
            true
        }
        Ok(()) => st.last_bytes > st.last_limit,
    };
    if dropped {
        drop_last(st, key);
    }
}

/// Drops a shard's last-value cache, and its bytes from the count.
fn drop_last(st: &mut State, key: &TableKey) {
    if let Some(c) = st.last.remove(key) {
        st.last_bytes = st.last_bytes.saturating_sub(c.bytes());
    }
}

/// The bytes a batch's rows take. Batches decoded from Flight or the WAL
/// are zero-copy slices of one message buffer, and
/// `get_array_memory_size` would count that whole buffer once per column.
fn batch_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|c| {
            let data = c.to_data();
            data.get_slice_memory_size()
                .unwrap_or_else(|_| c.get_array_memory_size())
        })
        .sum()
}

/// Removes the rows `d` matches from the memtables (active and frozen) of
/// its shard and table; returns how many.
fn delete_from_memtables(st: &mut State, d: &DeleteEntry) -> Result<u64, EngineError> {
    let key = TableKey {
        shard_id: d.shard_id,
        table: d.table.clone(),
    };
    let filter = |batches: &[RecordBatch]| -> Result<(Vec<RecordBatch>, u64), EngineError> {
        let mut kept = Vec::with_capacity(batches.len());
        let mut removed = 0u64;
        for b in batches {
            let k = d.predicate.retain(b).context(DeleteSnafu {
                shard_id: d.shard_id,
                table: &d.table,
            })?;
            removed += (b.num_rows() - k.num_rows()) as u64;
            if k.num_rows() > 0 {
                kept.push(k);
            }
        }
        Ok((kept, removed))
    };
    // Its rows may be the newest of their series: built again on demand.
    drop_last(st, &key);
    let mut removed = 0;
    if let Some(m) = st.active.get_mut(&key) {
        let (kept, n) = filter(&m.batches)?;
        // Removing rows keeps a settled batch sorted and unique, but if a
        // batch was emptied and dropped the first one may not be settled.
        if kept.len() != m.batches.len() {
            m.first_settled = false;
        }
        if n > 0 {
            st.active_bytes = st.active_bytes.saturating_sub(m.series_bytes());
            m.series = None;
        }
        m.batches = kept;
        m.generation += 1;
        removed += n;
        st.active_rows = st.active_rows.saturating_sub(n as usize);
    }
    for frozen in &mut st.frozen {
        let Some(m) = frozen.tables.get(&key) else {
            continue;
        };
        let (kept, n) = filter(&m.batches)?;
        if n > 0 {
            let mut tables = frozen.tables.clone();
            if let Some(t) = tables.get_mut(&key) {
                if kept.len() != t.batches.len() {
                    t.first_settled = false;
                }
                t.series = None;
                t.batches = kept;
            }
            *frozen = Arc::new(Frozen {
                tables,
                bytes: frozen.bytes,
            });
            removed += n;
        }
    }
    Ok(removed)
}

/// What a flush wrote: a file per table, or why a table's failed.
struct WrittenTables {
    files: Vec<ParquetFileMeta>,
    failed: Vec<(TableKey, EngineError)>,
}

/// Writes one file per table of the frozen memtables; a table that fails
/// leaves no file behind and does not stop the others.
fn write_frozen(
    dir: &Path,
    frozen: &[Arc<Frozen>],
    mut ids: std::ops::Range<u64>,
) -> WrittenTables {
    // Merge the memtables of one table across frozen sets into one file.
    let mut merged: BTreeMap<TableKey, (String, Vec<RecordBatch>)> = BTreeMap::new();
    for f in frozen {
        for (k, m) in &f.tables {
            let e = merged
                .entry(k.clone())
                .or_insert_with(|| (m.database.clone(), vec![]));
            e.1.extend(m.batches.iter().cloned());
        }
    }
    let mut out = WrittenTables {
        files: vec![],
        failed: vec![],
    };
    for (key, (database, batches)) in merged {
        let id = ids.next().expect("an id was reserved per table");
        // A delete can empty a memtable: an empty file would have no
        // columns at all, which scans cannot read.
        if batches.iter().all(|b| b.num_rows() == 0) {
            continue;
        }
        // A panic in one table's file is that table's failure.
        let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_file(dir, &key, database, &batches, id, id)
        }))
        .unwrap_or_else(|p| {
            Err(EngineError::Panicked {
                what: "writing a Parquet file",
                message: panic_message(p.as_ref()),
            })
        });
        match attempt {
            Ok(f) => out.files.push(f),
            Err(e) => {
                // No manifest lists it: remove it now, not at the next
                // start, so that retries do not pile files up.
                let path = dir.join(file_path(&key, id));
                if let Err(err) = std::fs::remove_file(&path) {
                    if err.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %path.display(), error = %err, "cannot remove a file of a failed flush");
                    }
                }
                tracing::error!(table = %key.table, shard = key.shard_id, error = %e, "cannot flush a table; its rows stay in memory and the WAL");
                out.failed.push((key, e));
            }
        }
    }
    out
}

/// Writes one deduplicated Parquet file of a shard's table.
fn write_file(
    dir: &Path,
    key: &TableKey,
    database: String,
    batches: &[RecordBatch],
    id: u64,
    order: u64,
) -> Result<ParquetFileMeta, EngineError> {
    let rel = file_path(key, id);
    let written = write_parquet(&dir.join(&rel), batches).context(FlushSnafu)?;
    Ok(file_meta(key, database, rel, id, order, written))
}

/// Where file `id` of a shard lives, relative to the data dir. Files are
/// named by ids only: a table's name, however long or odd, never reaches
/// the file system (the manifest maps ids to tables).
fn file_path(key: &TableKey, id: u64) -> String {
    format!("shards/{}/{:020}.parquet", key.shard_id, id)
}

fn file_meta(
    key: &TableKey,
    database: String,
    path: String,
    id: u64,
    order: u64,
    written: Written,
) -> ParquetFileMeta {
    ParquetFileMeta {
        id,
        order,
        shard_id: key.shard_id,
        database,
        table: key.table.clone(),
        path,
        rows: written.rows,
        min_time: written.min_time,
        max_time: written.max_time,
        size_bytes: written.size_bytes,
    }
}

/// Merges `inputs` (oldest first), without the rows their deletes match,
/// into file `id`; `None` when no row is left. The output takes the place
/// of the newest input in write order.
fn compact_files(
    dir: &Path,
    key: &TableKey,
    inputs: &[(ParquetFileMeta, Vec<DeletePredicate>)],
    id: u64,
) -> Result<Option<ParquetFileMeta>, EngineError> {
    let sources: Vec<compaction::Input> = inputs
        .iter()
        .map(|(f, deletes)| compaction::Input {
            path: dir.join(&f.path),
            deletes: deletes.iter().cloned().map(Arc::new).collect(),
        })
        .collect();
    let rel = file_path(key, id);
    let Some(written) =
        compaction::merge_files(&sources, &dir.join(&rel)).context(CompactionSnafu)?
    else {
        return Ok(None);
    };
    let database = inputs
        .first()
        .map(|(f, _)| f.database.clone())
        .unwrap_or_default();
    let order = inputs.iter().map(|(f, _)| f.order).max().unwrap_or(id);
    Ok(Some(file_meta(key, database, rel, id, order, written)))
}

/// Deletes Parquet files that no manifest lists: leftovers of a flush that
/// crashed before its manifest was stored.
fn remove_orphans(dir: &Path, manifest: &Manifest) -> Result<(), EngineError> {
    let shards = dir.join("shards");
    let Ok(rd) = std::fs::read_dir(&shards) else {
        return Ok(());
    };
    let live: std::collections::HashSet<PathBuf> =
        manifest.files.iter().map(|f| dir.join(&f.path)).collect();
    for shard_dir in rd.flatten() {
        let Ok(files) = std::fs::read_dir(shard_dir.path()) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if !live.contains(&p) {
                tracing::info!(path = %p.display(), "removing orphan file");
                std::fs::remove_file(&p).context(IoSnafu { path: &p })?;
            }
        }
        // The directory of a dropped shard goes once it is empty.
        let dropped = shard_dir
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok())
            .is_some_and(|id| manifest.dropped_shards.contains(&id));
        if dropped {
            let _ = std::fs::remove_dir(shard_dir.path());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;

    fn batch(times: &[i64], values: &[f64]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("v", DataType::Float64, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(values.to_vec())),
                Arc::new(TimestampNanosecondArray::from(times.to_vec())),
            ],
        )
        .unwrap()
    }

    /// A batch decoded from IPC shares one buffer among its columns; it is
    /// counted once, not once per column.
    #[test]
    fn decoded_batches_are_counted_by_their_rows_bytes() {
        let b = batch(&(0..10_000).collect::<Vec<_>>(), &vec![1.0; 10_000]);
        let mut ipc = vec![];
        {
            let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &b.schema()).unwrap();
            w.write(&b).unwrap();
            w.finish().unwrap();
        }
        let decoded = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        let logical = 10_000 * (8 + 8);
        assert!(batch_bytes(&b) >= logical && batch_bytes(&b) < 2 * logical);
        assert!(batch_bytes(&decoded) >= logical && batch_bytes(&decoded) < 2 * logical);
    }

    fn rows(snap: &ScanSnapshot) -> usize {
        let mem: usize = snap.batches.iter().map(|b| b.batch.num_rows()).sum();
        let files: usize = snap
            .files
            .iter()
            .map(|f| {
                let file = std::fs::File::open(f.guard.path()).unwrap();
                parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
                    .unwrap()
                    .build()
                    .unwrap()
                    .map(|b| b.unwrap().num_rows())
                    .sum::<usize>()
            })
            .sum();
        mem + files
    }

    #[tokio::test]
    async fn rows_survive_flush_and_reopen_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
            e.write("db", "cpu", 1, batch(&[3, 1], &[3.0, 1.0]))
                .await
                .unwrap();
            e.flush().await.unwrap();
            e.write("db", "cpu", 1, batch(&[2], &[2.0])).await.unwrap();
            e.write("db", "cpu", 2, batch(&[9], &[9.0])).await.unwrap();
            assert_eq!(rows(&e.snapshot("cpu", &[1])), 3);
        }
        let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
        assert_eq!(rows(&e.snapshot("cpu", &[1])), 3);
        assert_eq!(rows(&e.snapshot("cpu", &[1, 2])), 4);
        e.flush().await.unwrap();
        drop(e);
        let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
        let snap = e.snapshot("cpu", &[1, 2]);
        assert!(snap.batches.is_empty(), "everything was flushed");
        assert_eq!(rows(&snap), 4);
    }

    /// Drops survive a crash (no flush): the dropped rows stay out of the
    /// replay, rows written after the drops stay in, also when the drops
    /// were the last things numbered before the crash, and a dropped shard
    /// takes no more writes.
    #[tokio::test]
    async fn drops_hold_across_crashes_and_later_writes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let shard = |id: u64| BTreeSet::from([id]);
        {
            let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
            e.write("db", "a", 1, batch(&[1, 2], &[1.0, 2.0]))
                .await
                .unwrap();
            e.write("db", "b", 1, batch(&[1], &[1.0])).await.unwrap();
            e.write("db", "a", 2, batch(&[1], &[1.0])).await.unwrap();
            e.flush().await.unwrap();
            e.write("db", "a", 1, batch(&[3], &[3.0])).await.unwrap();
            e.write("db", "b", 1, batch(&[2], &[2.0])).await.unwrap();
            let (gone, _) = e.drop_data(&shard(1), Some("a")).await.unwrap();
            assert_eq!(gone, 3);
            e.drop_data(&shard(1), Some("b")).await.unwrap();
            e.drop_data(&shard(2), None).await.unwrap();
            assert_eq!(rows(&e.snapshot("a", &[1, 2])), 0);
            // Crash: no flush.
        }
        {
            let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
            assert_eq!(rows(&e.snapshot("a", &[1, 2])), 0);
            assert_eq!(rows(&e.snapshot("b", &[1])), 0);
            e.write("db", "b", 1, batch(&[7], &[7.0])).await.unwrap();
            e.write("db", "a", 1, batch(&[8], &[8.0])).await.unwrap();
            let refused = e.write("db", "a", 2, batch(&[9], &[9.0])).await;
            assert!(
                matches!(refused, Err(EngineError::ShardDropped { shard_id: 2 })),
                "{refused:?}"
            );
            // Crash again before a flush.
        }
        let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
        assert_eq!(rows(&e.snapshot("b", &[1])), 1, "the write after the drop");
        assert_eq!(rows(&e.snapshot("a", &[1])), 1, "the write after the drop");
        assert_eq!(rows(&e.snapshot("a", &[2])), 0);
        e.flush().await.unwrap();
        drop(e);
        let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
        assert_eq!(
            rows(&e.snapshot("a", &[1])) + rows(&e.snapshot("b", &[1])),
            2
        );
    }

    #[tokio::test]
    async fn writes_over_the_memory_budget_are_refused_until_a_flush() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path());
        config.memory_limit_bytes = 1;
        let e = Engine::open(config).unwrap();
        // The budget is checked before a write: the first fits, the next not.
        e.write("db", "cpu", 1, batch(&[1], &[1.0])).await.unwrap();
        let err = e
            .write("db", "cpu", 1, batch(&[2], &[2.0]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("slow down"), "{err}");
        assert_eq!(
            rows(&e.snapshot("cpu", &[1])),
            1,
            "the refused write left nothing"
        );
        e.flush().await.unwrap();
        e.write("db", "cpu", 1, batch(&[2], &[2.0])).await.unwrap();
        assert_eq!(rows(&e.snapshot("cpu", &[1])), 2);
    }

    #[tokio::test]
    async fn orphan_files_are_removed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
            e.write("db", "cpu", 1, batch(&[1], &[1.0])).await.unwrap();
            e.flush().await.unwrap();
        }
        let orphan = dir.path().join("shards/1/orphan.parquet");
        std::fs::write(&orphan, b"half a file").unwrap();
        let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
        assert!(!orphan.exists());
        assert_eq!(rows(&e.snapshot("cpu", &[1])), 1);
    }

    /// Waits (bounded) until `done` holds for the engine's flush health.
    async fn until(e: &Engine, done: impl Fn(&FlushHealth) -> bool) -> FlushHealth {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let h = e.flush_health();
            if done(&h) {
                return h;
            }
            assert!(Instant::now() < deadline, "flush health stayed {h:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A flush that fails (here: its shard directory cannot be made) is
    /// recorded with its cause and retried until it succeeds; the flusher
    /// never stops, and writes meanwhile stay readable.
    #[tokio::test]
    async fn a_failing_flush_is_recorded_and_retried_until_it_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = EngineConfig::new(dir.path());
        config.flush_age = Duration::from_millis(50);
        let e = Engine::open(config).unwrap();
        let blocker = dir.path().join("shards/1");
        std::fs::create_dir_all(dir.path().join("shards")).unwrap();
        std::fs::write(&blocker, b"not a directory").unwrap();
        let _flusher = e.spawn_flusher();
        e.write("db", "cpu", 1, batch(&[1], &[1.0])).await.unwrap();
        let failing = until(&e, |h| h.consecutive_failures >= 2).await;
        assert!(
            failing
                .last_error
                .as_deref()
                .is_some_and(|m| m.contains("shards/1")),
            "{failing:?}"
        );
        e.write("db", "cpu", 1, batch(&[2], &[2.0])).await.unwrap();
        assert_eq!(rows(&e.snapshot("cpu", &[1])), 2);
        std::fs::remove_file(&blocker).unwrap();
        until(&e, |h| {
            h.consecutive_failures == 0 && h.last_error.is_none()
        })
        .await;
        let snap = e.snapshot("cpu", &[1]);
        assert!(snap.batches.is_empty(), "everything was flushed");
        assert_eq!(rows(&snap), 2);
    }

    /// A table that cannot be flushed does not hold back the others: their
    /// files are written and their memory freed, while its rows stay in
    /// memory and the WAL. A restart then replays both (the flushed one's
    /// rows merge with its file) and nothing is lost or doubled.
    #[tokio::test]
    async fn one_table_failing_to_flush_does_not_stop_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("shards/2");
        {
            let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
            e.write("db", "cpu", 1, batch(&[1, 2], &[1.0, 2.0]))
                .await
                .unwrap();
            e.write("db", "mem", 2, batch(&[1], &[9.0])).await.unwrap();
            std::fs::create_dir_all(dir.path().join("shards")).unwrap();
            std::fs::write(&blocker, b"not a directory").unwrap();
            let err = e.flush().await.unwrap_err().to_string();
            assert!(err.contains("table 'mem' of shard 2"), "{err}");
            let cpu = e.snapshot("cpu", &[1]);
            assert!(
                cpu.batches.is_empty() && cpu.files.len() == 1,
                "cpu was flushed"
            );
            let mem = e.snapshot("mem", &[2]);
            assert_eq!(
                (mem.batches.len(), mem.files.len()),
                (1, 0),
                "mem stays in memory"
            );
            assert_eq!(e.flush_health().consecutive_failures, 1);
        }
        // Restart while mem is still unflushed: both come back.
        std::fs::remove_file(&blocker).unwrap();
        let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
        assert_eq!(rows(&e.snapshot("mem", &[2])), 1);
        e.flush().await.unwrap();
        e.compact(2).await.unwrap();
        assert_eq!(
            rows(&e.snapshot("cpu", &[1])),
            2,
            "replayed rows merged, not doubled"
        );
        assert_eq!(rows(&e.snapshot("mem", &[2])), 1);
        assert_eq!(e.flush_health(), FlushHealth::default());
        drop(e);
        let e = Engine::open(EngineConfig::new(dir.path())).unwrap();
        assert!(
            e.snapshot("cpu", &[1, 2]).batches.is_empty(),
            "the WAL was retired"
        );
    }
}
