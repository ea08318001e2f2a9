//! Work that can be cancelled: a [`Cancel`] token a query's stream ends
//! on, and the plan fragments running on this storage node, listed (the
//! `running_fragments` action) and cancelled by query id (the
//! `cancel_query` action).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Cancels a query: every stream made [`until_cancelled`] with a clone of
/// it ends with an error giving the reason. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Cancel(Arc<watch::Sender<Option<Cancelled>>>);

/// Why a query stopped early, as the error its stream ends with.
#[derive(Clone, Debug, PartialEq)]
pub struct Cancelled {
    pub reason: String,
    /// Ended by its timeout rather than by someone.
    pub timed_out: bool,
}

impl std::fmt::Display for Cancelled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Cancelled {}

impl Cancelled {
    /// The cancellation inside `e`, if that is what ended a query.
    pub fn find(e: &DataFusionError) -> Option<&Cancelled> {
        match e {
            DataFusionError::External(inner) => inner.downcast_ref::<Cancelled>(),
            DataFusionError::Context(_, inner) => Self::find(inner),
            DataFusionError::Shared(inner) => Self::find(inner),
            _ => None,
        }
    }
}

impl Default for Cancel {
    fn default() -> Self {
        Self(Arc::new(watch::channel(None).0))
    }
}

impl Cancel {
    /// Cancels, unless cancelled already (the first reason stays).
    pub fn cancel(&self, reason: impl Into<String>) {
        self.set(reason.into(), false);
    }

    /// Cancels because the query ran past its timeout.
    pub fn time_out(&self, reason: impl Into<String>) {
        self.set(reason.into(), true);
    }

    fn set(&self, reason: String, timed_out: bool) {
        self.0.send_if_modified(|r| {
            if r.is_some() {
                return false;
            }
            *r = Some(Cancelled { reason, timed_out });
            true
        });
    }

    /// Why it was cancelled, if it was.
    pub fn reason(&self) -> Option<String> {
        self.0.borrow().as_ref().map(|c| c.reason.clone())
    }

    /// The cancellation, if it was cancelled.
    pub fn cancelled_as(&self) -> Option<Cancelled> {
        self.0.borrow().clone()
    }

    /// Resolves with the reason once cancelled.
    pub async fn cancelled(&self) -> String {
        let mut rx = self.0.subscribe();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(r) => r.as_ref().map(|c| c.reason.clone()).unwrap_or_default(),
            // The sender lives in `self`: it cannot be gone.
            Err(_) => String::new(),
        };
        reason
    }
}

/// `stream`, ending with an error saying why as soon as `cancel` fires.
/// The stream is dropped then, which stops the work that feeds it.
pub fn until_cancelled(
    stream: SendableRecordBatchStream,
    cancel: Cancel,
) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let stopped = cancel.clone();
    let batches = stream
        .take_until(async move { cancel.cancelled().await })
        .chain(
            futures::stream::once(async move {
                stopped
                    .cancelled_as()
                    .map(|c| Err(DataFusionError::External(Box::new(c))))
            })
            .filter_map(futures::future::ready),
        );
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

/// A running fragment as `running_fragments` lists it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FragmentInfo {
    pub query_id: String,
    pub tables: Vec<String>,
    pub shards: Vec<u64>,
    /// Milliseconds since the epoch.
    pub started_ms: i64,
}

/// The fragments running on this node.
#[derive(Clone, Default)]
pub struct Fragments {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    next: AtomicU64,
    running: Mutex<BTreeMap<u64, (FragmentInfo, Cancel)>>,
}

/// Holds a fragment in the list; dropping it (the fragment's stream ends
/// or is dropped) takes it out.
pub struct FragmentGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for FragmentGuard {
    fn drop(&mut self) {
        self.inner.running.lock().remove(&self.id);
    }
}

impl Fragments {
    /// Lists a fragment until the guard is dropped; its cancel token.
    pub fn register(&self, info: FragmentInfo) -> (FragmentGuard, Cancel) {
        let id = self.inner.next.fetch_add(1, Ordering::Relaxed);
        let cancel = Cancel::default();
        self.inner.running.lock().insert(id, (info, cancel.clone()));
        let guard = FragmentGuard {
            inner: self.inner.clone(),
            id,
        };
        (guard, cancel)
    }

    pub fn list(&self) -> Vec<FragmentInfo> {
        self.inner
            .running
            .lock()
            .values()
            .map(|(i, _)| i.clone())
            .collect()
    }

    /// Cancels every fragment of `query_id`; how many there were.
    pub fn cancel_query(&self, query_id: &str, reason: &str) -> usize {
        let running = self.inner.running.lock();
        let mut n = 0;
        for (info, cancel) in running.values() {
            if info.query_id == query_id {
                cancel.cancel(reason);
                n += 1;
            }
        }
        n
    }
}

/// Keeps `guard` alive as long as `stream` is.
pub fn hold(stream: SendableRecordBatchStream, guard: FragmentGuard) -> SendableRecordBatchStream {
    let schema = stream.schema();
    let batches = stream.map(move |b| {
        let _ = &guard;
        b
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::Schema;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    fn endless() -> SendableRecordBatchStream {
        let schema = Arc::new(Schema::empty());
        let batches = futures::stream::pending();
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }

    #[tokio::test]
    async fn a_cancelled_stream_ends_with_the_reason_and_leaves_the_list() {
        let fragments = Fragments::default();
        let info = FragmentInfo {
            query_id: "q1".into(),
            tables: vec!["cpu".into()],
            shards: vec![3],
            started_ms: 1,
        };
        let (guard, cancel) = fragments.register(info.clone());
        let mut stream = hold(until_cancelled(endless(), cancel), guard);
        assert_eq!(fragments.list(), vec![info]);
        assert_eq!(fragments.cancel_query("other", "no"), 0);
        assert_eq!(fragments.cancel_query("q1", "killed by KILL QUERY"), 1);
        let item = stream.next().await.unwrap();
        assert!(item
            .unwrap_err()
            .to_string()
            .contains("killed by KILL QUERY"));
        assert!(stream.next().await.is_none());
        drop(stream);
        assert!(fragments.list().is_empty());
    }
}
