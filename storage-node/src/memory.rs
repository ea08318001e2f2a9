//! Memory accounting of queries. Every query on the coordinator, and every
//! plan fragment on a storage node, gets a DataFusion memory pool of its
//! own, limited to the per-query limit, drawing on a budget the whole
//! process shares among its queries. An operator that can spill (sort,
//! grouped aggregate, join) spills to disk when its pool refuses it more;
//! one that cannot fails the query with a "resources exhausted" error that
//! names the limit reached. The process is never the one to run out.
//!
//! What the pools count is what DataFusion's operators reserve: the
//! buffers of sorts, aggregates, joins and repartitions. Batches in flight
//! between operators and over the network are not counted; they are
//! bounded by the batch size and the streams' small buffers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool, MemoryReservation};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};

const MIB: usize = 1 << 20;

/// The limits of one process.
#[derive(Clone, Copy, Debug)]
pub struct MemoryLimits {
    /// Bytes one query (one fragment, on a node) may hold; `None`: only
    /// the shared budget bounds it.
    pub per_query: Option<usize>,
    /// Bytes all running queries together may hold; `None`: unbounded.
    pub total: Option<usize>,
}

impl MemoryLimits {
    /// Per query, by default: 1 GiB.
    pub const DEFAULT_PER_QUERY: usize = 1024 * MIB;

    /// Unbounded: every query may take what it asks for.
    pub fn unbounded() -> Self {
        Self {
            per_query: None,
            total: None,
        }
    }
}

impl Default for MemoryLimits {
    /// A gigabyte a query; all queries together at most half of the
    /// machine's memory.
    fn default() -> Self {
        Self {
            per_query: Some(Self::DEFAULT_PER_QUERY),
            total: machine_memory().map(|m| m / 2),
        }
    }
}

/// What a sort keeps back for merging its spilled runs: DataFusion's
/// 10 MiB, or a quarter of a smaller per-query limit (a sort reserving
/// more than its query may hold could never spill).
pub fn sort_spill_reservation(per_query: Option<usize>) -> usize {
    let default = 10 * MIB;
    per_query.map_or(default, |l| default.min(l / 4))
}

/// The machine's memory in bytes, from `/proc/meminfo`.
pub fn machine_memory() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Hands out each query's runtime (its memory pool, the shared spill
/// directory). Cheap to clone.
#[derive(Clone)]
pub struct QueryMemory {
    limits: MemoryLimits,
    shared: Arc<Shared>,
    base: Arc<RuntimeEnv>,
}

struct Shared {
    used: AtomicUsize,
    /// Queries that failed for want of memory.
    refused: AtomicUsize,
}

impl std::fmt::Debug for QueryMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryMemory")
            .field("limits", &self.limits)
            .field("in_use", &self.in_use())
            .finish()
    }
}

impl QueryMemory {
    pub fn new(limits: MemoryLimits) -> Self {
        let base = RuntimeEnvBuilder::new()
            .build_arc()
            .expect("the default runtime environment builds");
        Self {
            limits,
            shared: Arc::new(Shared {
                used: AtomicUsize::new(0),
                refused: AtomicUsize::new(0),
            }),
            base,
        }
    }

    pub fn limits(&self) -> MemoryLimits {
        self.limits
    }

    /// The per-query limit a query gets: `per_query` when given (a
    /// session setting), else the process's.
    pub fn per_query(&self, per_query: Option<usize>) -> Option<usize> {
        per_query.or(self.limits.per_query)
    }

    /// Bytes the running queries hold now.
    pub fn in_use(&self) -> usize {
        self.shared.used.load(Ordering::Relaxed)
    }

    /// Reservations refused since start (each failed or spilled a query
    /// operator).
    pub fn refusals(&self) -> usize {
        self.shared.refused.load(Ordering::Relaxed)
    }

    /// A runtime for one query, limited to `per_query` bytes when given
    /// (a session setting), else to the process's per-query limit.
    pub fn runtime(&self, per_query: Option<usize>) -> Arc<RuntimeEnv> {
        let pool = QueryPool {
            limit: per_query.or(self.limits.per_query),
            total: self.limits.total,
            used: AtomicUsize::new(0),
            shared: self.shared.clone(),
        };
        Arc::new(RuntimeEnv {
            memory_pool: Arc::new(pool),
            disk_manager: self.base.disk_manager.clone(),
            cache_manager: self.base.cache_manager.clone(),
            object_store_registry: self.base.object_store_registry.clone(),
        })
    }
}

/// One query's pool.
#[derive(Debug)]
struct QueryPool {
    limit: Option<usize>,
    total: Option<usize>,
    used: AtomicUsize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} bytes in use", self.used.load(Ordering::Relaxed))
    }
}

impl std::fmt::Display for QueryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "query pool: {} in use", human(self.reserved()))
    }
}

impl QueryPool {
    fn refuse(
        &self,
        reservation: &MemoryReservation,
        additional: usize,
        why: String,
    ) -> Result<()> {
        self.shared.refused.fetch_add(1, Ordering::Relaxed);
        Err(DataFusionError::ResourcesExhausted(format!(
            "{why}; {} asked for {} more (it holds {})",
            reservation.consumer().name(),
            human(additional),
            human(reservation.size()),
        )))
    }
}

impl MemoryPool for QueryPool {
    fn name(&self) -> &str {
        "strata query pool"
    }

    fn grow(&self, _reservation: &MemoryReservation, additional: usize) {
        self.used.fetch_add(additional, Ordering::Relaxed);
        self.shared.used.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, _reservation: &MemoryReservation, shrink: usize) {
        self.used.fetch_sub(shrink, Ordering::Relaxed);
        self.shared.used.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        if let Some(limit) = self.limit {
            let grown = self
                .used
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                    used.checked_add(additional).filter(|n| *n <= limit)
                });
            if let Err(used) = grown {
                return self.refuse(
                    reservation,
                    additional,
                    format!(
                        "the query reached its memory limit of {} with {} in use \
                         (--query-memory-limit-mib, or the strata.memory_limit_mib setting)",
                        human(limit),
                        human(used)
                    ),
                );
            }
        } else {
            self.used.fetch_add(additional, Ordering::Relaxed);
        }
        if let Some(total) = self.total {
            let grown =
                self.shared
                    .used
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                        used.checked_add(additional).filter(|n| *n <= total)
                    });
            if let Err(used) = grown {
                self.used.fetch_sub(additional, Ordering::Relaxed);
                return self.refuse(
                    reservation,
                    additional,
                    format!(
                        "the queries running here reached their shared memory limit of {} \
                         with {} in use (--query-memory-total-mib)",
                        human(total),
                        human(used)
                    ),
                );
            }
        } else {
            self.shared.used.fetch_add(additional, Ordering::Relaxed);
        }
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        match self.limit {
            Some(l) => MemoryLimit::Finite(l),
            None => MemoryLimit::Infinite,
        }
    }
}

impl Drop for QueryPool {
    fn drop(&mut self) {
        // Reservations give back what they hold when dropped, before the
        // pool they hold goes; whatever is left is not lost to the budget.
        let left = self.used.swap(0, Ordering::Relaxed);
        if left > 0 {
            self.shared.used.fetch_sub(left, Ordering::Relaxed);
        }
    }
}

/// Bytes for a message: `512 KiB`, `64.0 MiB`.
fn human(bytes: usize) -> String {
    if bytes < MIB {
        format!("{} KiB", bytes.div_ceil(1024))
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::MemoryConsumer;

    #[test]
    fn a_query_is_refused_past_its_own_limit_and_all_past_the_total() {
        let memory = QueryMemory::new(MemoryLimits {
            per_query: Some(10 * MIB),
            total: Some(15 * MIB),
        });
        let a = memory.runtime(None);
        let b = memory.runtime(None);
        let ra = MemoryConsumer::new("SortA").register(&a.memory_pool);
        let rb = MemoryConsumer::new("SortB").register(&b.memory_pool);
        ra.try_grow(8 * MIB).unwrap();
        let e = ra.try_grow(3 * MIB).unwrap_err().to_string();
        assert!(e.contains("memory limit of 10.0 MiB"), "{e}");
        assert!(e.contains("SortA asked for 3.0 MiB more"), "{e}");
        // B is within its own limit but the two together are not.
        rb.try_grow(5 * MIB).unwrap();
        let e = rb.try_grow(4 * MIB).unwrap_err().to_string();
        assert!(e.contains("shared memory limit of 15.0 MiB"), "{e}");
        assert_eq!(memory.in_use(), 13 * MIB);
        assert_eq!(memory.refusals(), 2);
        // What a query gives back is free for the others.
        drop(ra);
        rb.try_grow(4 * MIB).unwrap();
        assert_eq!(memory.in_use(), 9 * MIB);
        drop(rb);
        drop(b);
        assert_eq!(memory.in_use(), 0);
    }

    #[test]
    fn a_session_limit_replaces_the_default() {
        let memory = QueryMemory::new(MemoryLimits {
            per_query: Some(10 * MIB),
            total: None,
        });
        let small = memory.runtime(Some(MIB));
        let r = MemoryConsumer::new("Agg").register(&small.memory_pool);
        assert!(r.try_grow(2 * MIB).is_err());
        let big = memory.runtime(Some(100 * MIB));
        let r = MemoryConsumer::new("Agg").register(&big.memory_pool);
        r.try_grow(50 * MIB).unwrap();
    }
}
