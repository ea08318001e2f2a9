//! A runtime of its own for SQL work: parsing, planning and DataFusion
//! execution run on `strata-query` threads, not on the runtime that serves
//! HTTP, Flight and Raft, so that CPU-heavy queries do not stall writes and
//! heartbeats. The threads have large stacks: planning and evaluating an
//! expression recurses once per level, and a client may send expressions
//! thousands of levels deep (the front door bounds how deep, see
//! [`crate::query::limits`]). A panic in SQL work becomes an error of
//! that query instead of ending the process.

use std::future::Future;
use std::sync::Arc;

use arrow::array::RecordBatch;
use datafusion::error::DataFusionError;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use tracing::Instrument;

use crate::running::Cancel;

/// Stack of each query thread. Only the pages a deep plan touches are
/// ever committed.
pub const QUERY_STACK_BYTES: usize = 256 << 20;

/// Batches a query stream runs ahead of its reader.
const STREAM_BUFFER: usize = 2;

/// The query runtime; cheap to clone, shut down when the last clone goes.
#[derive(Clone)]
pub struct QueryExecutor {
    handle: tokio::runtime::Handle,
    _runtime: Arc<OwnedRuntime>,
}

impl std::fmt::Debug for QueryExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueryExecutor")
    }
}

struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        // May run inside another runtime, where a blocking shutdown panics.
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl QueryExecutor {
    /// Starts `threads` query threads (at least one).
    pub fn new(threads: usize) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("strata-query")
            .thread_stack_size(QUERY_STACK_BYTES)
            .enable_all()
            .build()?;
        Ok(Self {
            handle: runtime.handle().clone(),
            _runtime: Arc::new(OwnedRuntime(Some(runtime))),
        })
    }

    /// As many query threads as the machine has cores.
    pub fn with_default_threads() -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self::new(cores)
    }

    /// Runs `work` on a query thread; a panic becomes an error naming it.
    pub async fn run<F>(&self, work: F) -> Result<F::Output, DataFusionError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // The caller's span (a query's id) follows the work.
        self.handle
            .spawn(work.instrument(tracing::Span::current()))
            .await
            .map_err(|e| DataFusionError::Execution(join_message(e)))
    }

    /// Runs the stream that `start` makes on a query thread and hands its
    /// batches over a small channel. Dropping the returned stream stops the
    /// work at the next batch.
    pub fn run_stream<F>(
        &self,
        schema: arrow::datatypes::SchemaRef,
        start: F,
    ) -> SendableRecordBatchStream
    where
        F: Future<Output = Result<SendableRecordBatchStream, DataFusionError>> + Send + 'static,
    {
        self.run_stream_until(schema, start, Cancel::default())
    }

    /// As [`Self::run_stream`], and the work stops as soon as `cancel`
    /// fires, even while nobody reads the stream (a client that went
    /// quiet, a query past its timeout).
    pub fn run_stream_until<F>(
        &self,
        schema: arrow::datatypes::SchemaRef,
        start: F,
        cancel: Cancel,
    ) -> SendableRecordBatchStream
    where
        F: Future<Output = Result<SendableRecordBatchStream, DataFusionError>> + Send + 'static,
    {
        let (tx, rx) =
            tokio::sync::mpsc::channel::<Result<RecordBatch, DataFusionError>>(STREAM_BUFFER);
        let work = async move {
            let mut stream = match start.await {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            };
            while let Some(item) = stream.next().await {
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return; // the reader went away, or the query failed
                }
            }
        };
        let task = self.handle.spawn(
            async move {
                tokio::select! {
                    _ = work => {}
                    // Dropping the work drops its streams, and with them the
                    // streams it reads from other nodes.
                    _ = cancel.cancelled() => {}
                }
            }
            .instrument(tracing::Span::current()),
        );
        // A panic in the task ends the channel; say why instead of
        // ending the stream as if it were complete. Dropping the stream
        // aborts the task (a sort or aggregate may not send for a while).
        let task = AbortOnDrop(Some(task));
        let watchdog = async move {
            let mut task = task;
            let handle = task.0.take().expect("the task is held until awaited");
            match handle.await {
                Ok(()) => None,
                Err(e) => Some(Err(DataFusionError::Execution(join_message(e)))),
            }
        };
        let batches = tokio_stream::wrappers::ReceiverStream::new(rx)
            .chain(futures::stream::once(watchdog).filter_map(futures::future::ready));
        Box::pin(RecordBatchStreamAdapter::new(schema, batches))
    }
}

/// Aborts the task it holds when dropped before the task was awaited.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = self.0.take() {
            t.abort();
        }
    }
}

fn join_message(e: tokio::task::JoinError) -> String {
    match e.try_into_panic() {
        Ok(p) => {
            let what = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            format!("the query failed inside the engine (a bug; please report it): {what}")
        }
        Err(e) => format!("the query was cancelled: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_an_error_of_the_query() {
        let exec = QueryExecutor::new(1).unwrap();
        let err = exec.run(async { panic!("boom") }).await.unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
        // The runtime still serves the next query.
        assert_eq!(exec.run(async { 7 }).await.unwrap(), 7);
    }

    /// Recursion far deeper than a default 2 MiB thread stack allows.
    #[tokio::test]
    async fn query_threads_have_deep_stacks() {
        fn depth(n: u64) -> u64 {
            let pad = std::hint::black_box([0u8; 512]);
            if n == 0 {
                pad[0] as u64
            } else {
                1 + depth(n - 1) + std::hint::black_box(pad[1] as u64)
            }
        }
        let exec = QueryExecutor::new(1).unwrap();
        assert_eq!(exec.run(async { depth(100_000) }).await.unwrap(), 100_000);
    }
}
