//! Hinted handoff: the writes an owner of a shard could not take, kept on
//! the coordinator that routed them until the owner can.
//!
//! One queue per target storage node under `<dir>/<node id>/`, each an
//! ordered list of entries in segment files named by the sequence number
//! of their first entry. An entry is one `DoPut` — database, table, shard
//! and the Arrow batches — framed as `len u32 | crc32 u32 | body`, and is
//! fsynced before the write it belongs to counts it. A replayer per queue
//! sends the entries in order once the node answers; deletes that missed
//! a node queue the same way, in order with the writes around them; the sequence number of
//! the last one it delivered is kept in `<dir>/<node id>/delivered` (written
//! and fsynced before the entry leaves the queue), so a restart neither
//! loses an entry nor sends a delivered one again ahead of newer writes.
//!
//! While a node has entries queued its new writes join the queue behind
//! them, so the node sees a series' writes in the order they were routed.
//! A queue is bounded by bytes and by the age of its oldest entry; past a
//! bound a new entry is refused (and counted), never an old one dropped.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use parking_lot::Mutex;
use snafu::{ResultExt, Snafu};
use strata_catalog::liveness::now_ms;
use strata_catalog::model::NodeState;
use strata_catalog::CatalogClient;
use tokio::sync::{watch, Notify};

use crate::node_clients::{delete_on, put_shard, NodeClients};

#[derive(Debug, Snafu)]
pub enum HandoffError {
    #[snafu(display("hinted handoff at {}: {source}", path.display()))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[snafu(display(
        "the hinted-handoff queue for node {node_id} is full ({bytes} bytes queued, \
         limit {limit} bytes; see --hinted-handoff-max-mib)"
    ))]
    Full {
        node_id: u64,
        bytes: u64,
        limit: u64,
    },
    #[snafu(display(
        "the hinted-handoff queue for node {node_id} holds an entry {age_s} s old, past \
         its limit of {limit_s} s (see --hinted-handoff-max-age); the node has not taken \
         writes for that long"
    ))]
    TooOld {
        node_id: u64,
        age_s: u64,
        limit_s: u64,
    },
    #[snafu(display(
        "{} is in use by another coordinator; give each its own --data-dir",
        dir.display()
    ))]
    InUse { dir: PathBuf },
    #[snafu(display("cannot encode a hint: {source}"))]
    Encode { source: arrow::error::ArrowError },
}

type Result<T, E = HandoffError> = std::result::Result<T, E>;

#[derive(Debug, Clone)]
pub struct HandoffConfig {
    pub dir: PathBuf,
    /// Bytes one node's queue may hold.
    pub max_bytes: u64,
    /// Age of a queue's oldest entry past which new entries are refused.
    pub max_age: Duration,
    /// A queue starts a new segment file past this size.
    pub segment_bytes: u64,
}

impl HandoffConfig {
    pub const DEFAULT_MAX_BYTES: u64 = 10 << 30;
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: Self::DEFAULT_MAX_BYTES,
            max_age: Self::DEFAULT_MAX_AGE,
            segment_bytes: 64 << 20,
        }
    }
}

/// One write (or delete) for one shard, as queued for an owner.
#[derive(Debug, Clone)]
pub struct Hint {
    pub database: String,
    pub table: String,
    pub shard_id: u64,
    pub batches: Vec<RecordBatch>,
    /// A delete instead of a write: the encoded `DeleteRequest`.
    pub delete: Option<Vec<u8>>,
}

/// What `system.hinted_handoff` shows of one queue.
#[derive(Debug, Clone)]
pub struct QueueStats {
    pub node_id: u64,
    pub entries: u64,
    pub bytes: u64,
    /// Milliseconds since the epoch when the oldest queued entry was made.
    pub oldest_ms: Option<i64>,
    /// `idle`, `waiting` (node down or not answering) or `replaying`.
    pub state: &'static str,
    pub delivered: u64,
    /// Entries the node refused for good (its shard gone, the rows invalid
    /// for it): logged and counted, then passed over.
    pub discarded: u64,
    /// New entries refused because the queue was past a bound.
    pub refused: u64,
    pub last_error: Option<String>,
}

/// Where one entry sits.
#[derive(Debug, Clone, Copy)]
struct EntryMeta {
    seq: u64,
    created_ms: i64,
    segment: u64,
    offset: u64,
    /// Framed length.
    len: u64,
}

struct Segments {
    /// Open segment for appends: its first sequence number and file.
    active: Option<(u64, File, u64)>,
    /// Every segment file with undelivered entries, by first sequence.
    files: BTreeMap<u64, PathBuf>,
}

struct QueueState {
    entries: VecDeque<EntryMeta>,
    bytes: u64,
    next_seq: u64,
    delivered_seq: u64,
    delivered: u64,
    discarded: u64,
    refused: u64,
    replaying: bool,
    last_error: Option<String>,
}

struct Queue {
    node_id: u64,
    dir: PathBuf,
    state: Mutex<QueueState>,
    /// Appends hold it across the write and fsync.
    segments: Mutex<Segments>,
    wake: Notify,
    /// The sequence number of the last entry delivered.
    delivered_tx: watch::Sender<u64>,
}

pub struct Handoff {
    config: HandoffConfig,
    queues: Mutex<BTreeMap<u64, Arc<Queue>>>,
    nodes: NodeClients,
    catalog: CatalogClient,
    /// Each owner call's timeout, replays included.
    timeout: Duration,
    shutdown: watch::Sender<bool>,
    /// Held locked while the queues are this process's.
    _lock: File,
}

/// Most entries, and bytes, a replayer sends in one call.
const REPLAY_RUN_ENTRIES: usize = 256;
const REPLAY_RUN_BYTES: u64 = 8 << 20;

/// How long a replayer waits between tries at a node that does not answer
/// or is marked down, growing from the first to the second.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

impl Handoff {
    /// Opens every queue under the directory and starts their replayers.
    pub fn open(
        config: HandoffConfig,
        nodes: NodeClients,
        catalog: CatalogClient,
        timeout: Duration,
    ) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&config.dir).context(IoSnafu {
            path: config.dir.clone(),
        })?;
        let lock_path = config.dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .context(IoSnafu { path: lock_path })?;
        if lock.try_lock().is_err() {
            return InUseSnafu {
                dir: config.dir.clone(),
            }
            .fail();
        }
        let (shutdown, _) = watch::channel(false);
        let handoff = Arc::new(Self {
            config: config.clone(),
            queues: Mutex::new(BTreeMap::new()),
            nodes,
            catalog,
            timeout,
            shutdown,
            _lock: lock,
        });
        let listing = std::fs::read_dir(&config.dir).context(IoSnafu {
            path: config.dir.clone(),
        })?;
        for entry in listing {
            let entry = entry.context(IoSnafu {
                path: config.dir.clone(),
            })?;
            let Some(node_id) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            let queue = Arc::new(Queue::open(node_id, entry.path())?);
            let (entries, bytes) = {
                let st = queue.state.lock();
                (st.entries.len(), st.bytes)
            };
            if entries > 0 {
                tracing::info!(node = node_id, entries, bytes, "hinted handoff queue found");
            }
            handoff.queues.lock().insert(node_id, queue.clone());
            handoff.start(queue);
        }
        Ok(handoff)
    }

    /// Runs the queue's replayer (the queue is in `queues` already).
    fn start(self: &Arc<Self>, queue: Arc<Queue>) {
        let me = Arc::downgrade(self);
        let mut stop = self.shutdown.subscribe();
        tokio::spawn(async move {
            tokio::select! {
                _ = replay(me, queue) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
        });
    }

    fn queue(self: &Arc<Self>, node_id: u64) -> Result<Arc<Queue>> {
        let mut queues = self.queues.lock();
        if let Some(q) = queues.get(&node_id) {
            return Ok(q.clone());
        }
        let queue = Arc::new(Queue::open(
            node_id,
            self.config.dir.join(node_id.to_string()),
        )?);
        queues.insert(node_id, queue.clone());
        drop(queues);
        self.start(queue.clone());
        Ok(queue)
    }

    /// Whether writes for the node must queue behind earlier ones.
    pub fn pending(&self, node_id: u64) -> bool {
        self.queues
            .lock()
            .get(&node_id)
            .is_some_and(|q| !q.state.lock().entries.is_empty())
    }

    /// Queues a write for the node, durably; returns its sequence number.
    pub async fn enqueue(self: &Arc<Self>, node_id: u64, hint: &Hint) -> Result<u64> {
        let queue = self.queue(node_id)?;
        let body = encode(hint)?;
        {
            let mut st = queue.state.lock();
            let framed = body.len() as u64 + 8;
            if st.bytes + framed > self.config.max_bytes {
                st.refused += 1;
                return FullSnafu {
                    node_id,
                    bytes: st.bytes,
                    limit: self.config.max_bytes,
                }
                .fail();
            }
            if let Some(oldest) = st.entries.front() {
                let age = Duration::from_millis(now_ms().saturating_sub(oldest.created_ms) as u64);
                if age > self.config.max_age {
                    st.refused += 1;
                    return TooOldSnafu {
                        node_id,
                        age_s: age.as_secs(),
                        limit_s: self.config.max_age.as_secs(),
                    }
                    .fail();
                }
            }
        }
        let segment_bytes = self.config.segment_bytes;
        let q = queue.clone();
        let seq = tokio::task::spawn_blocking(move || q.append(&body, segment_bytes))
            .await
            .expect("hint append does not panic")?;
        queue.wake.notify_one();
        Ok(seq)
    }

    /// Waits until the entry is delivered, at most `timeout`; whether it was.
    pub async fn wait_delivered(&self, node_id: u64, seq: u64, timeout: Duration) -> bool {
        let Some(queue) = self.queues.lock().get(&node_id).cloned() else {
            return false;
        };
        let mut rx = queue.delivered_tx.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|d| *d >= seq))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    pub fn stats(&self) -> Vec<QueueStats> {
        let queues: Vec<Arc<Queue>> = self.queues.lock().values().cloned().collect();
        queues
            .iter()
            .map(|q| {
                let st = q.state.lock();
                QueueStats {
                    node_id: q.node_id,
                    entries: st.entries.len() as u64,
                    bytes: st.bytes,
                    oldest_ms: st.entries.front().map(|e| e.created_ms),
                    state: match (st.entries.is_empty(), st.replaying) {
                        (true, _) => "idle",
                        (false, true) => "replaying",
                        (false, false) => "waiting",
                    },
                    delivered: st.delivered,
                    discarded: st.discarded,
                    refused: st.refused,
                    last_error: st.last_error.clone(),
                }
            })
            .collect()
    }

    /// Stops the replayers (queued entries stay on disk).
    pub fn shutdown(&self) {
        let _ = self.shutdown.send(true);
    }
}

impl Drop for Handoff {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

/// Sends a queue's entries in order whenever it has any.
async fn replay(handoff: std::sync::Weak<Handoff>, queue: Arc<Queue>) {
    let mut backoff = BACKOFF.0;
    let mut last_probe_of_down = None::<tokio::time::Instant>;
    loop {
        let head = queue.state.lock().entries.front().copied();
        let Some(head) = head else {
            queue.state.lock().replaying = false;
            queue.wake.notified().await;
            continue;
        };
        let Some(h) = handoff.upgrade() else { return };
        let state = h.catalog.state();
        let removed = state.removed_nodes.contains(&queue.node_id);
        let node = state.nodes.get(&queue.node_id).cloned();
        // A node the catalog marks down is still probed now and then: the
        // catalog learns of a return only with the next heartbeat.
        let down = !removed && node.as_ref().is_none_or(|n| n.state == NodeState::Down);
        if down && last_probe_of_down.is_some_and(|t| t.elapsed() < BACKOFF.1) {
            drop(h);
            queue.state.lock().replaying = false;
            tokio::time::sleep(BACKOFF.0.max(Duration::from_millis(250))).await;
            continue;
        }
        if down {
            last_probe_of_down = Some(tokio::time::Instant::now());
        }
        if node.is_none() && !removed {
            queue.state.lock().last_error = Some("node is not registered".into());
            drop(h);
            tokio::time::sleep(BACKOFF.1).await;
            continue;
        }
        let read = {
            let q = queue.clone();
            tokio::task::spawn_blocking(move || q.read_run(&head))
                .await
                .expect("hint read does not panic")
        };
        let (hint, last, count) = match read {
            Ok(run) => run,
            Err(e) => {
                // Unreadable after it was fsynced: the disk failed. Passed
                // over so the queue is not stuck behind it, loudly.
                tracing::error!(node = queue.node_id, seq = head.seq, error = %e, "hinted handoff entry unreadable; passed over");
                queue.state.lock().discarded += 1;
                let _ = finish(&queue, &head).await;
                continue;
            }
        };
        // Writes for a node removed from the cluster go to the shard's
        // owners now (an `any` write may have no other copy); a write they
        // hold already is the same rows again.
        let targets: Vec<String> = match &node {
            Some(n) => vec![n.flight_addr.clone()],
            None => state
                .databases
                .get(&hint.database)
                .and_then(|d| {
                    d.shard_groups
                        .iter()
                        .flat_map(|g| g.shards.iter())
                        .find(|s| s.id == hint.shard_id)
                })
                .map(|s| {
                    s.owners
                        .iter()
                        .filter_map(|o| state.nodes.get(o).map(|n| n.flight_addr.clone()))
                        .collect()
                })
                .unwrap_or_default(),
        };
        queue.state.lock().replaying = true;
        let send = async {
            for addr in &targets {
                match hint.delete.clone() {
                    Some(request) => delete_on(&h.nodes, addr, request).await?,
                    None => {
                        put_shard(
                            &h.nodes,
                            addr,
                            state.version,
                            &hint.database,
                            &hint.table,
                            hint.shard_id,
                            hint.batches.clone(),
                        )
                        .await?
                    }
                }
            }
            // No owner left (the shard was dropped): nothing to deliver.
            Ok(())
        };
        let sent = tokio::time::timeout(h.timeout, send).await;
        drop(h);
        let outcome = match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err((permanent(&e), e.to_string())),
            Err(_) => Err((false, "timed out".to_string())),
        };
        match outcome {
            Ok(()) => {
                backoff = BACKOFF.0;
                last_probe_of_down = None;
                if let Err(e) = finish(&queue, &last).await {
                    tracing::error!(node = queue.node_id, error = %e, "cannot record a delivered hint");
                    tokio::time::sleep(BACKOFF.1).await;
                    continue;
                }
                let mut st = queue.state.lock();
                st.delivered += count;
                st.last_error = None;
                if st.entries.is_empty() {
                    tracing::info!(
                        node = queue.node_id,
                        delivered = st.delivered,
                        "hinted handoff queue drained"
                    );
                }
            }
            Err((true, message)) => {
                tracing::warn!(node = queue.node_id, seq = head.seq, database = %hint.database, table = %hint.table, shard = hint.shard_id, error = %message, "node refused a hinted write for good; passed over");
                {
                    let mut st = queue.state.lock();
                    st.discarded += count;
                    st.last_error = Some(message);
                }
                let _ = finish(&queue, &last).await;
            }
            Err((false, message)) => {
                {
                    let mut st = queue.state.lock();
                    st.replaying = false;
                    if st.last_error.as_deref() != Some(message.as_str()) {
                        tracing::info!(node = queue.node_id, entries = st.entries.len(), error = %message, "hinted handoff waiting for node");
                    }
                    st.last_error = Some(message);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
}

/// Whether a node's answer means the entry can never be taken: its shard
/// is no longer the node's (dropped, moved), or the rows are invalid for
/// it (a series limit, a schema it refuses).
fn permanent(e: &arrow_flight::error::FlightError) -> bool {
    use tonic::Code;
    matches!(e, arrow_flight::error::FlightError::Tonic(s)
        if matches!(s.code(), Code::NotFound | Code::FailedPrecondition | Code::InvalidArgument))
}

/// Records the entries up to `head` as delivered and takes them off the
/// queue.
async fn finish(queue: &Arc<Queue>, head: &EntryMeta) -> Result<()> {
    let q = queue.clone();
    let head = *head;
    tokio::task::spawn_blocking(move || q.delivered(&head))
        .await
        .expect("hint bookkeeping does not panic")
}

impl Queue {
    /// Loads the queue's entries, truncating a torn last entry (its write
    /// was never acknowledged).
    fn open(node_id: u64, dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir).context(IoSnafu { path: dir.clone() })?;
        let delivered_seq = read_delivered(&dir.join("delivered"))?;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(&dir).context(IoSnafu { path: dir.clone() })? {
            let entry = entry.context(IoSnafu { path: dir.clone() })?;
            let name = entry.file_name();
            let Some(first) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".hints"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            files.insert(first, entry.path());
        }
        let mut entries = VecDeque::new();
        let mut bytes = 0;
        let mut next_seq = delivered_seq + 1;
        let mut emptied = vec![];
        for (first, path) in &files {
            let scanned = scan_segment(path, *first)?;
            let mut kept = 0;
            for e in scanned {
                next_seq = next_seq.max(e.seq + 1);
                if e.seq > delivered_seq {
                    bytes += e.len;
                    entries.push_back(e);
                    kept += 1;
                }
            }
            if kept == 0 {
                emptied.push(*first);
            }
        }
        for first in emptied {
            if let Some(path) = files.remove(&first) {
                std::fs::remove_file(&path).context(IoSnafu { path })?;
            }
        }
        let (delivered_tx, _) = watch::channel(next_seq - 1);
        Ok(Self {
            node_id,
            dir,
            state: Mutex::new(QueueState {
                entries,
                bytes,
                next_seq,
                delivered_seq,
                delivered: 0,
                discarded: 0,
                refused: 0,
                replaying: false,
                last_error: None,
            }),
            segments: Mutex::new(Segments {
                active: None,
                files,
            }),
            wake: Notify::new(),
            delivered_tx,
        })
    }

    /// Appends and fsyncs one entry.
    fn append(&self, body: &[u8], segment_bytes: u64) -> Result<u64> {
        let mut segs = self.segments.lock();
        let seq = self.state.lock().next_seq;
        let roll = segs
            .active
            .as_ref()
            .is_none_or(|(_, _, size)| *size >= segment_bytes);
        if roll {
            let path = self.dir.join(format!("{seq:020}.hints"));
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .context(IoSnafu { path: path.clone() })?;
            // The new file's name must survive a crash too.
            fsync_dir(&self.dir)?;
            segs.files.insert(seq, path);
            segs.active = Some((seq, file, 0));
        }
        let (segment, file, size) = segs.active.as_mut().expect("a segment is open");
        let mut framed = Vec::with_capacity(body.len() + 16);
        framed.extend_from_slice(&(body.len() as u32 + 8).to_le_bytes());
        let mut crc = crc32fast::Hasher::new();
        crc.update(&seq.to_le_bytes());
        crc.update(body);
        framed.extend_from_slice(&crc.finalize().to_le_bytes());
        framed.extend_from_slice(&seq.to_le_bytes());
        framed.extend_from_slice(body);
        let path = self.dir.join(format!("{segment:020}.hints"));
        file.write_all(&framed)
            .and_then(|_| file.sync_data())
            .context(IoSnafu { path })?;
        let meta = EntryMeta {
            seq,
            created_ms: now_ms(),
            segment: *segment,
            offset: *size,
            len: framed.len() as u64,
        };
        *size += framed.len() as u64;
        let mut st = self.state.lock();
        st.next_seq = seq + 1;
        st.bytes += meta.len;
        st.entries.push_back(meta);
        Ok(seq)
    }

    /// The head entry, and when it is a write, the writes to the same
    /// shard and table right behind it, as one (they go in one `DoPut`);
    /// with the last entry taken and how many.
    fn read_run(&self, head: &EntryMeta) -> Result<(Hint, EntryMeta, u64)> {
        let mut hint = self.read(head)?;
        let (mut last, mut count) = (*head, 1);
        if hint.delete.is_some() {
            return Ok((hint, last, count));
        }
        let behind: Vec<EntryMeta> = self
            .state
            .lock()
            .entries
            .iter()
            .skip(1)
            .take(REPLAY_RUN_ENTRIES - 1)
            .copied()
            .collect();
        let mut bytes = head.len;
        for meta in behind {
            if bytes + meta.len > REPLAY_RUN_BYTES {
                break;
            }
            let next = self.read(&meta)?;
            let same = next.delete.is_none()
                && next.shard_id == hint.shard_id
                && next.table == hint.table
                && next.database == hint.database;
            if !same {
                break;
            }
            hint.batches.extend(next.batches);
            bytes += meta.len;
            last = meta;
            count += 1;
        }
        Ok((hint, last, count))
    }

    fn read(&self, meta: &EntryMeta) -> Result<Hint> {
        let path = self.dir.join(format!("{:020}.hints", meta.segment));
        let io = |source| HandoffError::Io {
            path: path.clone(),
            source,
        };
        let mut file = File::open(&path).map_err(io)?;
        file.seek(SeekFrom::Start(meta.offset)).map_err(io)?;
        let mut framed = vec![0u8; meta.len as usize];
        file.read_exact(&mut framed).map_err(io)?;
        let invalid = |why: String| io(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
        let (_, body) = unframe(&framed).ok_or_else(|| invalid("bad frame".into()))?;
        decode(body).map_err(invalid)
    }

    /// Records every entry up to `head` as delivered, takes them off the
    /// queue and deletes the segment files left with nothing to deliver.
    fn delivered(&self, head: &EntryMeta) -> Result<()> {
        write_delivered(&self.dir.join("delivered"), head.seq)?;
        let mut segs = self.segments.lock();
        let (empty, first_left) = {
            let mut st = self.state.lock();
            while let Some(e) = st.entries.front().copied().filter(|e| e.seq <= head.seq) {
                st.entries.pop_front();
                st.bytes = st.bytes.saturating_sub(e.len);
            }
            st.delivered_seq = head.seq;
            (st.entries.is_empty(), st.entries.front().map(|e| e.segment))
        };
        let active = segs.active.as_ref().map(|(s, _, _)| *s);
        let done: Vec<u64> = segs
            .files
            .keys()
            .copied()
            .filter(|s| match first_left {
                Some(left) => *s < left,
                None => true,
            })
            .filter(|s| empty || Some(*s) != active)
            .collect();
        if empty {
            segs.active = None;
        }
        for s in done {
            if let Some(path) = segs.files.remove(&s) {
                std::fs::remove_file(&path).context(IoSnafu { path })?;
            }
        }
        drop(segs);
        self.delivered_tx.send_replace(head.seq);
        Ok(())
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).context(IoSnafu {
        path: dir.to_path_buf(),
    })
}

fn read_delivered(path: &Path) -> Result<u64> {
    match std::fs::read(path) {
        Ok(b) if b.len() == 12 => {
            let seq = u64::from_le_bytes(b[..8].try_into().expect("8 bytes"));
            let crc = u32::from_le_bytes(b[8..].try_into().expect("4 bytes"));
            if crc32fast::hash(&b[..8]) == crc {
                return Ok(seq);
            }
            // Torn: the entries after the last good record go again (a
            // node takes a repeated write as the same rows).
            tracing::warn!(path = %path.display(), "hinted handoff position unreadable; replaying the queue from its start");
            Ok(0)
        }
        Ok(_) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(HandoffError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn write_delivered(path: &Path, seq: u64) -> Result<()> {
    let mut b = seq.to_le_bytes().to_vec();
    b.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
    OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(false)
        .open(path)
        .and_then(|mut f| {
            f.write_all(&b)?;
            f.sync_data()
        })
        .context(IoSnafu {
            path: path.to_path_buf(),
        })
}

/// `(seq, body)` of a framed entry whose checksum holds.
fn unframe(framed: &[u8]) -> Option<(u64, &[u8])> {
    let len = u32::from_le_bytes(framed.get(..4)?.try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(framed.get(4..8)?.try_into().ok()?);
    let rest = framed.get(8..8 + len)?;
    (crc32fast::hash(rest) == crc).then_some(())?;
    let seq = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
    Some((seq, &rest[8..]))
}

/// The entries of a segment file; a torn or corrupt tail is cut off.
fn scan_segment(path: &Path, first: u64) -> Result<Vec<EntryMeta>> {
    let data = std::fs::read(path).context(IoSnafu {
        path: path.to_path_buf(),
    })?;
    let modified_ms = std::fs::metadata(path)
        .ok()
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or_else(now_ms, |d| d.as_millis() as i64);
    let mut entries = vec![];
    let mut offset = 0usize;
    while offset < data.len() {
        let Some((seq, body)) = unframe(&data[offset..]) else {
            tracing::warn!(path = %path.display(), offset, "hinted handoff segment ends in a torn entry; cut off");
            OpenOptions::new()
                .write(true)
                .open(path)
                .and_then(|f| {
                    f.set_len(offset as u64)?;
                    f.sync_data()
                })
                .context(IoSnafu {
                    path: path.to_path_buf(),
                })?;
            break;
        };
        let len = body.len() + 16;
        entries.push(EntryMeta {
            seq,
            // Entries do not carry their time: a restarted coordinator
            // dates them by their file.
            created_ms: modified_ms,
            segment: first,
            offset: offset as u64,
            len: len as u64,
        });
        offset += len;
    }
    Ok(entries)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// `kind u8 | database | table | shard u64 | ...`: a write (kind 0)
/// continues `batch count u32 | (len u32 | Arrow IPC stream)...`, each
/// batch its own stream (batches differ in columns); a delete (kind 1)
/// `len u32 | DeleteRequest`.
fn encode(hint: &Hint) -> Result<Vec<u8>> {
    let mut out = vec![hint.delete.is_some() as u8];
    put_str(&mut out, &hint.database);
    put_str(&mut out, &hint.table);
    out.extend_from_slice(&hint.shard_id.to_le_bytes());
    if let Some(request) = &hint.delete {
        out.extend_from_slice(&(request.len() as u32).to_le_bytes());
        out.extend_from_slice(request);
        return Ok(out);
    }
    out.extend_from_slice(&(hint.batches.len() as u32).to_le_bytes());
    for b in &hint.batches {
        let mut ipc = vec![];
        let mut w = StreamWriter::try_new(&mut ipc, &b.schema()).context(EncodeSnafu)?;
        w.write(b).context(EncodeSnafu)?;
        w.finish().context(EncodeSnafu)?;
        drop(w);
        out.extend_from_slice(&(ipc.len() as u32).to_le_bytes());
        out.extend_from_slice(&ipc);
    }
    Ok(out)
}

fn decode(mut body: &[u8]) -> Result<Hint, String> {
    fn take<'a>(body: &mut &'a [u8], n: usize) -> Result<&'a [u8], String> {
        if body.len() < n {
            return Err("hint is cut short".into());
        }
        let (head, rest) = body.split_at(n);
        *body = rest;
        Ok(head)
    }
    fn u32_of(body: &mut &[u8]) -> Result<u32, String> {
        Ok(u32::from_le_bytes(take(body, 4)?.try_into().expect("4")))
    }
    fn str_of(body: &mut &[u8]) -> Result<String, String> {
        let n = u32_of(body)? as usize;
        String::from_utf8(take(body, n)?.to_vec()).map_err(|e| e.to_string())
    }
    let kind = take(&mut body, 1)?[0];
    let database = str_of(&mut body)?;
    let table = str_of(&mut body)?;
    let shard_id = u64::from_le_bytes(take(&mut body, 8)?.try_into().expect("8"));
    if kind == 1 {
        let n = u32_of(&mut body)? as usize;
        return Ok(Hint {
            database,
            table,
            shard_id,
            batches: vec![],
            delete: Some(take(&mut body, n)?.to_vec()),
        });
    }
    let count = u32_of(&mut body)?;
    let mut batches = vec![];
    for _ in 0..count {
        let n = u32_of(&mut body)? as usize;
        let ipc = take(&mut body, n)?;
        let reader = StreamReader::try_new(ipc, None).map_err(|e| e.to_string())?;
        for b in reader {
            batches.push(b.map_err(|e| e.to_string())?);
        }
    }
    Ok(Hint {
        database,
        table,
        shard_id,
        batches,
        delete: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    fn hint(v: f64) -> Hint {
        let schema = Arc::new(Schema::new(vec![
            Field::new("usage", DataType::Float64, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Float64Array::from(vec![v])),
                Arc::new(TimestampNanosecondArray::from(vec![1])),
            ],
        )
        .unwrap();
        Hint {
            database: "db".into(),
            table: "cpu".into(),
            shard_id: 7,
            batches: vec![batch],
            delete: None,
        }
    }

    fn value(h: &Hint) -> f64 {
        h.batches[0]
            .column(0)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .value(0)
    }

    #[test]
    fn entries_survive_a_reopen_in_order_and_delivered_ones_stay_gone() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(3, dir.path().join("3")).unwrap();
        for v in 0..5 {
            // A small segment size: every entry starts a new file.
            q.append(&encode(&hint(v as f64)).unwrap(), 1).unwrap();
        }
        let head = *q.state.lock().entries.front().unwrap();
        assert_eq!(value(&q.read(&head).unwrap()), 0.0);
        q.delivered(&head).unwrap();
        let head = *q.state.lock().entries.front().unwrap();
        q.delivered(&head).unwrap();
        drop(q);

        let q = Queue::open(3, dir.path().join("3")).unwrap();
        let entries: Vec<EntryMeta> = q.state.lock().entries.iter().copied().collect();
        let values: Vec<f64> = entries.iter().map(|e| value(&q.read(e).unwrap())).collect();
        assert_eq!(values, vec![2.0, 3.0, 4.0]);
        // Delivered entries' files are gone.
        let files = std::fs::read_dir(dir.path().join("3"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "hints")
            })
            .count();
        assert_eq!(files, 3);
        // New entries number after the old ones.
        let seq = q.append(&encode(&hint(5.0)).unwrap(), 1 << 20).unwrap();
        assert_eq!(seq, 6);
    }

    #[test]
    fn writes_to_one_shard_in_a_row_replay_as_one_and_a_delete_alone() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(2, dir.path().join("2")).unwrap();
        for v in 0..3 {
            q.append(&encode(&hint(v as f64)).unwrap(), 1 << 20)
                .unwrap();
        }
        let delete = Hint {
            delete: Some(vec![1, 2, 3]),
            batches: vec![],
            ..hint(0.0)
        };
        q.append(&encode(&delete).unwrap(), 1 << 20).unwrap();
        q.append(&encode(&hint(9.0)).unwrap(), 1 << 20).unwrap();
        let head = *q.state.lock().entries.front().unwrap();
        let (run, last, count) = q.read_run(&head).unwrap();
        assert_eq!((count, last.seq, run.batches.len()), (3, 3, 3));
        q.delivered(&last).unwrap();
        let head = *q.state.lock().entries.front().unwrap();
        let (run, _, count) = q.read_run(&head).unwrap();
        assert_eq!((count, run.delete), (1, Some(vec![1, 2, 3])));
        assert_eq!(q.state.lock().entries.len(), 2);
    }

    #[test]
    fn a_torn_last_entry_is_cut_off_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let q = Queue::open(1, dir.path().join("1")).unwrap();
        for v in 0..3 {
            q.append(&encode(&hint(v as f64)).unwrap(), 1 << 20)
                .unwrap();
        }
        drop(q);
        let path = dir.path().join("1").join(format!("{:020}.hints", 1));
        let len = std::fs::metadata(&path).unwrap().len();
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 5).unwrap();
        drop(f);
        let q = Queue::open(1, dir.path().join("1")).unwrap();
        assert_eq!(q.state.lock().entries.len(), 2);
        // Appends go on after the cut.
        let seq = q.append(&encode(&hint(9.0)).unwrap(), 1 << 20).unwrap();
        assert_eq!(seq, 3);
        let entries: Vec<EntryMeta> = q.state.lock().entries.iter().copied().collect();
        let values: Vec<f64> = entries.iter().map(|e| value(&q.read(e).unwrap())).collect();
        assert_eq!(values, vec![0.0, 1.0, 9.0]);
    }
}
