//! The write-ahead log: segmented files of CRC-checked records, appended by
//! one writer task that commits everything queued since its last fsync in a
//! single fsync (group commit).
//!
//! Record layout: `len: u32 LE | crc32(payload): u32 LE | payload`, where the
//! payload is `seq: u64 LE | shard_id: u64 LE | db_len: u16 | db |
//! table_len: u16 | table | Arrow IPC stream (schema + batches)`.
//!
//! On replay a partial or damaged record at the very end of the last segment
//! is a torn write that was never acknowledged: it is cut off with a warning.
//! Damage anywhere else is corruption and stops the node with the file and
//! offset, unless recovery was asked to skip it.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;

use crate::delete::DeletePredicate;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use snafu::{ResultExt, Snafu};
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::oneshot;

use strata_catalog::fsutil::{open_append, sync_dir};

const SEGMENT_SUFFIX: &str = "wal";
const HEADER_LEN: usize = 8;
/// A record larger than this cannot be real; treat its header as damage.
const MAX_RECORD: usize = 1 << 30;

#[derive(Debug, Snafu)]
pub enum WalError {
    #[snafu(display("WAL I/O on {}: {source}", path.display()))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[snafu(display(
        "WAL segment {} is corrupt at byte offset {offset}: {reason}. Start with \
         --wal-recovery=skip-corrupt to skip the rest of this segment (its rows are lost)",
        path.display()
    ))]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[snafu(display("encoding a WAL record: {source}"))]
    Encode { source: arrow::error::ArrowError },
    #[snafu(display("the WAL writer has stopped"))]
    Closed,
    #[snafu(display(
        "a {what} name of {len} bytes does not fit a WAL record (at most {} bytes)",
        u16::MAX
    ))]
    NameTooLong { what: &'static str, len: usize },
}

/// What to do with damage in the middle of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Refuse to start (the default): nothing is skipped silently.
    #[default]
    Strict,
    /// Log the damage loudly and skip the rest of the damaged segment.
    SkipCorrupt,
}

/// When a write is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SyncPolicy {
    /// fsync before acknowledging (group-committed).
    #[default]
    Always,
    /// Acknowledge once the write reaches the OS and fsync at most this
    /// long afterwards: a machine crash (not a process crash) can lose the
    /// last interval of acknowledged writes.
    Interval(std::time::Duration),
}

/// One logged write: a batch for one table of one shard.
#[derive(Debug, Clone)]
pub struct WalEntry {
    pub seq: u64,
    pub shard_id: u64,
    pub database: String,
    pub table: String,
    pub batch: RecordBatch,
}

/// A logged delete, replayed in sequence with the writes around it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteEntry {
    pub seq: u64,
    pub shard_id: u64,
    pub database: String,
    pub table: String,
    pub predicate: DeletePredicate,
}

/// What follows a record's names: an Arrow IPC stream (a write) or a JSON
/// delete predicate. Records written before deletes existed start the IPC
/// stream right away, with its 0xFF continuation marker.
const KIND_WRITE: u8 = 0;
const KIND_DELETE: u8 = 1;
const IPC_CONTINUATION: u8 = 0xFF;

/// The names are stored with a 16-bit length: a longer name is an error,
/// never a silently truncated length that makes the record unreadable.
fn record_head(
    seq: u64,
    shard_id: u64,
    database: &str,
    table: &str,
    kind: u8,
) -> Result<Vec<u8>, WalError> {
    let mut payload = Vec::with_capacity(64);
    payload.extend_from_slice(&seq.to_le_bytes());
    payload.extend_from_slice(&shard_id.to_le_bytes());
    for (what, s) in [("database", database), ("table", table)] {
        let len =
            u16::try_from(s.len()).map_err(|_| WalError::NameTooLong { what, len: s.len() })?;
        payload.extend_from_slice(&len.to_le_bytes());
        payload.extend_from_slice(s.as_bytes());
    }
    payload.push(kind);
    Ok(payload)
}

pub fn encode_entry(e: &WalEntry) -> Result<Vec<u8>, WalError> {
    let mut payload = record_head(e.seq, e.shard_id, &e.database, &e.table, KIND_WRITE)?;
    payload.reserve(e.batch.get_array_memory_size());
    {
        let mut w = StreamWriter::try_new(&mut payload, &e.batch.schema()).context(EncodeSnafu)?;
        w.write(&e.batch).context(EncodeSnafu)?;
        w.finish().context(EncodeSnafu)?;
    }
    Ok(frame(payload))
}

pub fn encode_delete(d: &DeleteEntry) -> Result<Vec<u8>, WalError> {
    let mut payload = record_head(d.seq, d.shard_id, &d.database, &d.table, KIND_DELETE)?;
    payload.extend(serde_json::to_vec(&d.predicate).expect("a predicate serializes"));
    Ok(frame(payload))
}

/// Length, CRC, payload.
fn frame(payload: Vec<u8>) -> Vec<u8> {
    let mut rec = Vec::with_capacity(HEADER_LEN + payload.len());
    rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    rec.extend_from_slice(&payload);
    rec
}

/// One replayed record.
#[derive(Debug)]
pub enum WalRecord {
    Write(WalEntry),
    Delete(DeleteEntry),
}

impl WalRecord {
    pub fn seq(&self) -> u64 {
        match self {
            WalRecord::Write(e) => e.seq,
            WalRecord::Delete(d) => d.seq,
        }
    }
}

fn decode_payload(p: &[u8]) -> Result<WalRecord, String> {
    let take = |p: &mut &[u8], n: usize| -> Result<Vec<u8>, String> {
        if p.len() < n {
            return Err("record shorter than its fields".into());
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Ok(a.to_vec())
    };
    let mut p = p;
    let seq = u64::from_le_bytes(take(&mut p, 8)?.try_into().expect("8 bytes"));
    let shard_id = u64::from_le_bytes(take(&mut p, 8)?.try_into().expect("8 bytes"));
    let mut strings = vec![];
    for _ in 0..2 {
        let n = u16::from_le_bytes(take(&mut p, 2)?.try_into().expect("2 bytes")) as usize;
        strings.push(String::from_utf8(take(&mut p, n)?).map_err(|e| e.to_string())?);
    }
    let table = strings.pop().expect("two strings");
    let database = strings.pop().expect("two strings");
    let kind = *p.first().ok_or("record ends before its content")?;
    if kind == KIND_DELETE {
        let predicate = serde_json::from_slice(&p[1..])
            .map_err(|e| format!("unreadable delete record: {e}"))?;
        return Ok(WalRecord::Delete(DeleteEntry {
            seq,
            shard_id,
            database,
            table,
            predicate,
        }));
    }
    let ipc = match kind {
        KIND_WRITE => &p[1..],
        IPC_CONTINUATION => p,
        other => return Err(format!("unknown record kind {other}")),
    };
    check_ipc_framing(ipc)?;
    let batch = crate::validate::guard_decode(|| {
        let mut reader = StreamReader::try_new(ipc, None).map_err(|e| e.to_string())?;
        reader
            .next()
            .ok_or("record holds no batch")?
            .map_err(|e| e.to_string())
    })?;
    Ok(WalRecord::Write(WalEntry {
        seq,
        shard_id,
        database,
        table,
        batch,
    }))
}

/// Walks the messages of an Arrow IPC stream and checks that each one's
/// declared lengths fit in the bytes there are, and that no body is
/// compressed (the WAL never writes one), before the IPC reader, which
/// allocates what the lengths declare, sees them.
fn check_ipc_framing(ipc: &[u8]) -> Result<(), String> {
    let word = |at: usize| -> Result<u32, String> {
        ipc.get(at..at + 4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
            .ok_or_else(|| "the record's Arrow data is cut short".to_string())
    };
    let mut at = 0;
    loop {
        let mut len = word(at)?;
        at += 4;
        if len == u32::MAX {
            len = word(at)?;
            at += 4;
        }
        if len == 0 {
            return Ok(()); // end of stream
        }
        let meta = ipc
            .get(at..at + len as usize)
            .ok_or("an Arrow message is longer than its record")?;
        let message = arrow::ipc::root_as_message(meta)
            .map_err(|e| format!("an Arrow message is unreadable: {e}"))?;
        let body = usize::try_from(message.bodyLength()).map_err(|_| "a negative body length")?;
        let compressed = message
            .header_as_record_batch()
            .is_some_and(|b| b.compression().is_some())
            || message
                .header_as_dictionary_batch()
                .and_then(|d| d.data())
                .is_some_and(|b| b.compression().is_some());
        if compressed {
            return Err("an Arrow message in the WAL is compressed".into());
        }
        at += len as usize;
        if body > ipc.len() - at {
            return Err("an Arrow message body is longer than its record".into());
        }
        at += body;
    }
}

/// Segment files in `dir`, ordered by their first sequence number.
fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = vec![];
    for ent in fs::read_dir(dir).context(IoSnafu { path: dir })? {
        let ent = ent.context(IoSnafu { path: dir })?;
        let path = ent.path();
        if path.extension().and_then(|e| e.to_str()) != Some(SEGMENT_SUFFIX) {
            continue;
        }
        if let Some(first) = path
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((first, path));
        }
    }
    out.sort();
    Ok(out)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.{SEGMENT_SUFFIX}"))
}

/// What replay found.
pub struct Replayed {
    pub entries: Vec<WalEntry>,
    /// Deletes, to apply in sequence with `entries`.
    pub deletes: Vec<DeleteEntry>,
    /// The highest sequence number seen (0 when the log is empty).
    pub last_seq: u64,
}

/// Reads every segment in `dir` and returns the entries with
/// `seq > after_seq`, repairing a torn tail.
pub fn replay(dir: &Path, after_seq: u64, recovery: Recovery) -> Result<Replayed, WalError> {
    fs::create_dir_all(dir).context(IoSnafu { path: dir })?;
    let segs = segments(dir)?;
    let mut entries = vec![];
    let mut deletes = vec![];
    let mut last_seq = after_seq;
    for (i, (_, path)) in segs.iter().enumerate() {
        let is_last = i + 1 == segs.len();
        let mut bytes = vec![];
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .context(IoSnafu { path })?;
        let mut off = 0usize;
        while off < bytes.len() {
            let record = read_record(&bytes[off..])
                .and_then(|(payload, n)| decode_payload(payload).map(|e| (e, n)));
            match record {
                Ok((record, n)) => {
                    last_seq = last_seq.max(record.seq());
                    if record.seq() > after_seq {
                        match record {
                            WalRecord::Write(e) => entries.push(e),
                            WalRecord::Delete(d) => deletes.push(d),
                        }
                    }
                    off += n;
                }
                Err(reason) => {
                    let rest_is_tail = is_last && is_torn_tail(&bytes[off..]);
                    if rest_is_tail {
                        tracing::warn!(
                            path = %path.display(), offset = off, %reason,
                            "truncating a torn record at the end of the WAL (never acknowledged)"
                        );
                        truncate(path, off as u64)?;
                        break;
                    }
                    let err = WalError::Corrupt {
                        path: path.clone(),
                        offset: off as u64,
                        reason,
                    };
                    match recovery {
                        Recovery::Strict => return Err(err),
                        Recovery::SkipCorrupt => {
                            tracing::error!(error = %err, "skipping the rest of a corrupt WAL segment");
                            break;
                        }
                    }
                }
            }
        }
    }
    Ok(Replayed {
        entries,
        deletes,
        last_seq,
    })
}

/// A record that is cut short, or whose checksum fails with nothing valid
/// after it, is what a crash in the middle of an append leaves behind.
fn is_torn_tail(rest: &[u8]) -> bool {
    // A crash can leave the file longer than what reached the disk, padded
    // with zeros.
    if rest.len() < HEADER_LEN || rest.iter().all(|b| *b == 0) {
        return true;
    }
    let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
    len > rest.len() - HEADER_LEN || len > MAX_RECORD || rest.len() - HEADER_LEN == len
}

fn read_record(b: &[u8]) -> Result<(&[u8], usize), String> {
    if b.len() < HEADER_LEN {
        return Err(format!(
            "{} trailing bytes are too few for a record header",
            b.len()
        ));
    }
    let len = u32::from_le_bytes(b[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(b[4..8].try_into().expect("4 bytes"));
    if len > MAX_RECORD {
        return Err(format!("record length {len} is implausible"));
    }
    if b.len() < HEADER_LEN + len {
        return Err(format!(
            "record of {len} bytes but only {} remain",
            b.len() - HEADER_LEN
        ));
    }
    let payload = &b[HEADER_LEN..HEADER_LEN + len];
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    Ok((payload, HEADER_LEN + len))
}

fn truncate(path: &Path, len: u64) -> Result<(), WalError> {
    let f = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .context(IoSnafu { path })?;
    f.set_len(len).context(IoSnafu { path })?;
    f.sync_all().context(IoSnafu { path })
}

enum Request {
    Append {
        record: Vec<u8>,
        done: oneshot::Sender<Result<(), String>>,
    },
    /// Closes the current segment and starts a new one.
    Rotate {
        done: oneshot::Sender<Result<(), String>>,
    },
}

/// Handle to the WAL writer task.
#[derive(Clone)]
pub struct Wal {
    dir: PathBuf,
    tx: mpsc::Sender<Request>,
    next_seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl Wal {
    /// Starts the writer on a new segment after `last_seq`.
    pub fn start(dir: &Path, last_seq: u64, sync: SyncPolicy) -> Result<Self, WalError> {
        Self::start_measured(dir, last_seq, sync, None)
    }

    /// As [`Wal::start`], recording fsync latency and bytes appended.
    pub fn start_measured(
        dir: &Path,
        last_seq: u64,
        sync: SyncPolicy,
        metrics: Option<WalMetrics>,
    ) -> Result<Self, WalError> {
        fs::create_dir_all(dir).context(IoSnafu { path: dir })?;
        let next_seq = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(last_seq + 1));
        let path = segment_path(dir, last_seq + 1);
        let file = open_append(&path).context(IoSnafu { path: &path })?;
        // Unbounded: writers never block here; the engine's memory budget
        // bounds what can be queued.
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_path_buf(),
            file,
            path,
            sync,
            next_seq: next_seq.clone(),
            unsynced_since: None,
            metrics,
        };
        std::thread::Builder::new()
            .name("strata-wal".into())
            .spawn(move || writer.run(rx))
            .context(IoSnafu { path: dir })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            tx,
            next_seq,
        })
    }

    /// Takes the next sequence number.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    }

    /// The highest sequence number handed out so far.
    pub fn last_seq(&self) -> u64 {
        self.next_seq.load(std::sync::atomic::Ordering::SeqCst) - 1
    }

    /// Appends `entry` and returns once it is durable (per the sync policy).
    pub async fn append(&self, entry: &WalEntry) -> Result<(), WalError> {
        self.append_all(std::slice::from_ref(entry)).await
    }

    /// Appends `entries` in order and returns once all are durable; they
    /// are queued together, so one group commit usually covers them.
    pub async fn append_all(&self, entries: &[WalEntry]) -> Result<(), WalError> {
        let records: Vec<Vec<u8>> = entries.iter().map(encode_entry).collect::<Result<_, _>>()?;
        let mut pending = Vec::with_capacity(records.len());
        for record in records {
            let (done, rx) = oneshot::channel();
            self.tx
                .send(Request::Append { record, done })
                .map_err(|_| WalError::Closed)?;
            pending.push(rx);
        }
        for rx in pending {
            self.written(rx).await?;
        }
        Ok(())
    }

    /// Appends a delete and returns once it is durable.
    pub async fn append_delete(&self, delete: &DeleteEntry) -> Result<(), WalError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Request::Append {
                record: encode_delete(delete)?,
                done,
            })
            .map_err(|_| WalError::Closed)?;
        self.written(rx).await
    }

    async fn written(&self, rx: oneshot::Receiver<Result<(), String>>) -> Result<(), WalError> {
        rx.await
            .map_err(|_| WalError::Closed)?
            .map_err(|e| WalError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })
    }

    /// Starts a new segment; every record appended before this call is in
    /// an older segment.
    pub async fn rotate(&self) -> Result<(), WalError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Request::Rotate { done })
            .map_err(|_| WalError::Closed)?;
        rx.await
            .map_err(|_| WalError::Closed)?
            .map_err(|e| WalError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other(e),
            })
    }

    /// Deletes segments that hold only records with `seq <= upto` (their
    /// rows are in Parquet files now). The newest segment is kept.
    pub fn remove_flushed(&self, upto: u64) -> Result<(), WalError> {
        let segs = segments(&self.dir)?;
        for w in segs.windows(2) {
            let (_, path) = &w[0];
            let (next_first, _) = w[1];
            if next_first <= upto + 1 {
                fs::remove_file(path).context(IoSnafu { path })?;
            }
        }
        sync_dir(&self.dir).context(IoSnafu { path: &self.dir })
    }
}

struct Writer {
    dir: PathBuf,
    file: File,
    path: PathBuf,
    sync: SyncPolicy,
    next_seq: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// When written bytes were first left without an fsync.
    unsynced_since: Option<Instant>,
    metrics: Option<WalMetrics>,
}

/// What the WAL writer measures.
#[derive(Clone, Debug)]
pub struct WalMetrics {
    pub fsync_seconds: strata_metrics::Histogram,
    pub bytes: strata_metrics::Counter,
}

impl Writer {
    /// Waits for the next request; with unsynced bytes, no longer than
    /// their deadline, syncing when it passes.
    fn next(&mut self, rx: &mpsc::Receiver<Request>) -> Option<Request> {
        loop {
            let deadline = match (self.sync, self.unsynced_since) {
                (SyncPolicy::Interval(d), Some(since)) => since + d,
                _ => return rx.recv().ok(),
            };
            let wait = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(wait) {
                Ok(req) => return Some(req),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Err(e) = self.sync_now() {
                        tracing::error!(error = %e, "periodic WAL fsync failed");
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = self.sync_now();
                    return None;
                }
            }
        }
    }

    fn sync_now(&mut self) -> Result<(), String> {
        self.unsynced_since = None;
        let started = Instant::now();
        let r = self
            .file
            .sync_data()
            .map_err(|e| format!("{}: {e}", self.path.display()));
        if let Some(m) = &self.metrics {
            m.fsync_seconds.observe_duration(started.elapsed());
        }
        r
    }

    fn run(mut self, rx: mpsc::Receiver<Request>) {
        while let Some(first) = self.next(&rx) {
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
            }
            let mut waiting = vec![];
            let mut buf = Vec::new();
            for req in batch {
                match req {
                    Request::Append { record, done } => {
                        buf.extend_from_slice(&record);
                        waiting.push(done);
                    }
                    Request::Rotate { done } => {
                        let r = self.commit(&buf).and_then(|_| self.rotate());
                        buf.clear();
                        answer(waiting.drain(..), &r);
                        let _ = done.send(r);
                    }
                }
            }
            if !waiting.is_empty() {
                let r = self.commit(&buf);
                answer(waiting.drain(..), &r);
            }
        }
    }

    fn commit(&mut self, buf: &[u8]) -> Result<(), String> {
        if buf.is_empty() {
            return Ok(());
        }
        self.file
            .write_all(buf)
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        if let Some(m) = &self.metrics {
            m.bytes.inc_by(buf.len() as u64);
        }
        match self.sync {
            SyncPolicy::Always => self.sync_now(),
            SyncPolicy::Interval(d) => {
                let since = *self.unsynced_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= d {
                    self.sync_now()?;
                }
                Ok(())
            }
        }
    }

    fn rotate(&mut self) -> Result<(), String> {
        self.unsynced_since = None;
        self.file
            .sync_all()
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        let first = self.next_seq.load(std::sync::atomic::Ordering::SeqCst);
        let path = segment_path(&self.dir, first);
        self.file = open_append(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        self.path = path;
        Ok(())
    }
}

fn answer(
    waiting: impl Iterator<Item = oneshot::Sender<Result<(), String>>>,
    r: &Result<(), String>,
) {
    for w in waiting {
        let _ = w.send(r.clone());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use std::time::Duration;

    use arrow::array::Int64Array;
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn entry(seq: u64) -> WalEntry {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let batch =
            RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![seq as i64]))])
                .unwrap();
        WalEntry {
            seq,
            shard_id: 7,
            database: "db".into(),
            table: "cpu".into(),
            batch,
        }
    }

    async fn write(dir: &Path, seqs: std::ops::RangeInclusive<u64>) {
        let wal = Wal::start(dir, seqs.start() - 1, SyncPolicy::Always).unwrap();
        for s in seqs {
            let seq = wal.next_seq();
            assert_eq!(seq, s);
            wal.append(&entry(seq)).await.unwrap();
        }
    }

    #[tokio::test]
    async fn replays_what_was_appended() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 1..=5).await;
        let r = replay(dir.path(), 2, Recovery::Strict).unwrap();
        let seqs: Vec<u64> = r.entries.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![3, 4, 5]);
        assert_eq!(r.last_seq, 5);
        assert_eq!(r.entries[0].table, "cpu");
        assert_eq!(r.entries[0].batch.num_rows(), 1);
    }

    #[tokio::test]
    async fn interval_policy_acknowledges_and_replays() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(
            dir.path(),
            0,
            SyncPolicy::Interval(Duration::from_millis(5)),
        )
        .unwrap();
        for _ in 0..3 {
            let seq = wal.next_seq();
            wal.append(&entry(seq)).await.unwrap();
        }
        drop(wal);
        let r = replay(dir.path(), 0, Recovery::Strict).unwrap();
        assert_eq!(r.entries.len(), 3);
    }

    #[tokio::test]
    async fn torn_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 1..=3).await;
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let len = fs::metadata(&path).unwrap().len();
        let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        let r = replay(dir.path(), 0, Recovery::Strict).unwrap();
        assert_eq!(r.entries.len(), 2);
        // the file was repaired: a second replay sees the same and no damage
        let r = replay(dir.path(), 0, Recovery::Strict).unwrap();
        assert_eq!(r.entries.len(), 2);
    }

    #[tokio::test]
    async fn zero_length_segments_are_harmless() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 1..=2).await;
        // A crash right after a rotation leaves an empty newest segment; an
        // empty one in the middle (rotation, then nothing) is fine too.
        fs::write(segment_path(dir.path(), 3), b"").unwrap();
        fs::write(segment_path(dir.path(), 2), b"").unwrap();
        let r = replay(dir.path(), 0, Recovery::Strict).unwrap();
        assert_eq!(
            r.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(r.last_seq, 2);
    }

    #[tokio::test]
    async fn zero_filled_tail_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 1..=2).await;
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice(&[0u8; 4096]);
        fs::write(&path, &bytes).unwrap();
        let r = replay(dir.path(), 0, Recovery::Strict).unwrap();
        assert_eq!(r.entries.len(), 2);
        assert_eq!(fs::metadata(&path).unwrap().len() as usize, good);
    }

    #[tokio::test]
    async fn corruption_in_the_middle_is_an_error_naming_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 1..=3).await;
        let (_, path) = segments(dir.path()).unwrap().pop().unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes[HEADER_LEN + 2] ^= 0xff; // inside the first record's payload
        fs::write(&path, &bytes).unwrap();
        let err = replay(dir.path(), 0, Recovery::Strict).err().unwrap();
        let msg = err.to_string();
        assert!(
            msg.contains("offset 0") && msg.contains("checksum"),
            "{msg}"
        );
        let r = replay(dir.path(), 0, Recovery::SkipCorrupt).unwrap();
        assert!(r.entries.is_empty());
    }

    #[tokio::test]
    async fn flushed_segments_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 0, SyncPolicy::Always).unwrap();
        for _ in 0..3 {
            let seq = wal.next_seq();
            wal.append(&entry(seq)).await.unwrap();
        }
        wal.rotate().await.unwrap();
        let seq = wal.next_seq();
        wal.append(&entry(seq)).await.unwrap();
        wal.remove_flushed(3).unwrap();
        assert_eq!(segments(dir.path()).unwrap().len(), 1);
        let r = replay(dir.path(), 3, Recovery::Strict).unwrap();
        assert_eq!(r.entries.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![4]);
    }

    /// A name whose length does not fit the record's 16-bit field is an
    /// error before anything is written; the log stays readable.
    #[tokio::test]
    async fn names_too_long_for_a_record_are_refused_not_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::start(dir.path(), 0, SyncPolicy::Always).unwrap();
        wal.append(&entry(wal.next_seq())).await.unwrap();
        let mut long = entry(wal.next_seq());
        long.table = "t".repeat(64 * 1024);
        let e = wal.append(&long).await.unwrap_err();
        assert!(
            matches!(
                e,
                WalError::NameTooLong {
                    what: "table",
                    len: 65536
                }
            ),
            "{e}"
        );
        let mut delete_long = DeleteEntry {
            seq: wal.next_seq(),
            shard_id: 1,
            database: "d".repeat(70_000),
            table: "cpu".into(),
            predicate: DeletePredicate {
                min_time: 0,
                max_time: 1,
                tags: vec![],
            },
        };
        assert!(wal.append_delete(&delete_long).await.is_err());
        delete_long.database = "db".into();
        wal.append_delete(&delete_long).await.unwrap();
        drop(wal);
        let r = replay(dir.path(), 0, Recovery::Strict).unwrap();
        assert_eq!(r.entries.len(), 1);
        assert_eq!(r.deletes.len(), 1);
        let max = "t".repeat(u16::MAX as usize);
        assert!(encode_entry(&WalEntry {
            table: max,
            ..entry(9)
        })
        .is_ok());
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::super::*;
        use super::entry;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1_000))]

            /// Any payload, random or a real record with bytes flipped or
            /// cut anywhere, decodes to a record or an error: never a
            /// panic, nor an allocation of what a damaged length declares.
            #[test]
            fn any_payload_decodes_or_errs(
                random in proptest::collection::vec(any::<u8>(), 0..300),
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..6),
                cut in any::<usize>(),
            ) {
                let _ = decode_payload(&random);
                let framed = encode_entry(&entry(3)).unwrap();
                let mut payload = framed[HEADER_LEN..].to_vec();
                for (at, b) in &flips {
                    let n = payload.len();
                    payload[at % n] ^= b;
                }
                let _ = decode_payload(&payload);
                payload.truncate(cut % (payload.len() + 1));
                let _ = decode_payload(&payload);
            }

        }

        proptest! {
            // Each case truncates and fsyncs a file.
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// A segment of random bytes after good records is damage that
            /// replay reports (strict) or skips, never a panic.
            #[test]
            fn a_damaged_segment_replays_or_errs(tail in proptest::collection::vec(any::<u8>(), 1..200)) {
                let dir = tempfile::tempdir().unwrap();
                let path = segment_path(dir.path(), 1);
                let mut bytes = encode_entry(&entry(1)).unwrap();
                bytes.extend_from_slice(&tail);
                std::fs::write(&path, &bytes).unwrap();
                let _ = replay(dir.path(), 0, Recovery::Strict);
                if let Ok(r) = replay(dir.path(), 0, Recovery::SkipCorrupt) {
                    prop_assert!(!r.entries.is_empty());
                }
            }
        }
    }
}
