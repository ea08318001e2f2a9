//! `ShardFragmentExec`: the coordinator's end of a plan fragment. Its one
//! child is the fragment (the plan that runs on storage nodes, with
//! [`ScanLeafExec`] leaves); it is never executed here, only shown by
//! EXPLAIN. Each output partition is one [`Task`]: the fragment over some
//! shards, sent as a `DoGet` ticket to one replica holding them all. If a
//! replica fails before sending its first batch, the next one is tried;
//! after that the query fails with the shards and node named.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::Ticket;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{
    BaselineMetrics, Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet, Time,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use strata_proto::storage::v1::FragmentMetrics;
use strata_storage::fragment::{encode_fragment_limited, ScanLeafExec};

use super::reported::{self, Reports};
use crate::node_clients::NodeClients;

/// How a query was cut between the storage nodes and the coordinator
/// (docs/architecture.md, "Distributed planning").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// The whole plan runs on one node; the coordinator forwards it.
    Direct,
    /// Scan, filter, projection and limit per shard; union here.
    FanOut,
    /// Partial aggregates per shard; the final aggregate here.
    FanOutAggregate,
    /// Sorted (top-k) per shard; a sort-preserving merge here.
    MergeSort,
    /// Like merge-sort on time, reading shard groups in time order and
    /// stopping once the limit is met.
    TimeOrdered,
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::Direct => "direct",
            Strategy::FanOut => "fan-out",
            Strategy::FanOutAggregate => "fan-out-aggregate",
            Strategy::MergeSort => "merge-sort",
            Strategy::TimeOrdered => "time-ordered",
        })
    }
}

/// A replica: (node id, Flight address); an unregistered node has none.
pub type Replica = (u64, Option<String>);

/// One output partition: the shards it reads and the nodes that hold all
/// of them, in preference order.
#[derive(Debug, Clone)]
pub struct Task {
    pub shard_ids: Vec<u64>,
    pub replicas: Vec<Replica>,
    /// The time range of the shard group the shards belong to
    /// (`[start, end)`, nanoseconds); `None` when they span groups.
    pub window: Option<(i64, i64)>,
}

/// How many shard groups and shards a scan kept of those the table has.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruning {
    pub groups_kept: usize,
    pub groups_total: usize,
    pub shards_kept: usize,
    pub shards_total: usize,
}

impl std::ops::AddAssign for Pruning {
    fn add_assign(&mut self, o: Self) {
        self.groups_kept += o.groups_kept;
        self.groups_total += o.groups_total;
        self.shards_kept += o.shards_kept;
        self.shards_total += o.shards_total;
    }
}

/// Whether the fragment's leaves take each task's shards (one leaf, one
/// task per shard or per node), or keep the shards they were planned
/// with (a direct plan: one task, any number of leaves).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    PerTask,
    AsPlanned,
}

pub struct ShardFragmentExec {
    fragment: Arc<dyn ExecutionPlan>,
    /// Whether the fragment is shown as this node's child. Not until the
    /// distribution rule has placed it: DataFusion's own optimizers must
    /// not rewrite what runs on the nodes (they would, say, repartition
    /// below it).
    placed: bool,
    tasks: Vec<Task>,
    binding: Binding,
    strategy: Strategy,
    pruning: Pruning,
    nodes: NodeClients,
    query_id: String,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
    /// The fragment as shown, with what the nodes reported.
    shown: Arc<dyn ExecutionPlan>,
    reports: Arc<Reports>,
}

impl ShardFragmentExec {
    /// A fan-out of a table scan: one task per shard.
    pub fn scan(
        leaf: ScanLeafExec,
        tasks: Vec<Task>,
        pruning: Pruning,
        nodes: NodeClients,
        query_id: String,
    ) -> Self {
        let leaf = leaf.with_shards(vec![]);
        Self {
            placed: false,
            ..Self::new(
                Arc::new(leaf),
                tasks,
                Binding::PerTask,
                Strategy::FanOut,
                pruning,
                nodes,
                query_id,
            )
        }
    }

    pub fn new(
        fragment: Arc<dyn ExecutionPlan>,
        tasks: Vec<Task>,
        binding: Binding,
        strategy: Strategy,
        pruning: Pruning,
        nodes: NodeClients,
        query_id: String,
    ) -> Self {
        // A task's fragment answers in one stream (a node coalesces more
        // partitions), so only a one-partition fragment keeps its order.
        let eq = if fragment.output_partitioning().partition_count() == 1 {
            fragment.equivalence_properties().clone()
        } else {
            EquivalenceProperties::new(fragment.schema())
        };
        let properties = Arc::new(PlanProperties::new(
            eq,
            Partitioning::UnknownPartitioning(tasks.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        let (shown, reports) = reported::mirror(&fragment);
        Self {
            shown,
            reports,
            fragment,
            placed: true,
            tasks,
            binding,
            strategy,
            pruning,
            nodes,
            query_id,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    pub fn fragment(&self) -> &Arc<dyn ExecutionPlan> {
        &self.fragment
    }

    pub fn tasks(&self) -> &[Task] {
        &self.tasks
    }

    pub fn binding(&self) -> Binding {
        self.binding
    }

    pub fn strategy(&self) -> Strategy {
        self.strategy
    }

    pub fn pruning(&self) -> Pruning {
        self.pruning
    }

    pub fn nodes(&self) -> &NodeClients {
        &self.nodes
    }

    pub fn query_id(&self) -> &str {
        &self.query_id
    }

    /// The same tasks running another fragment (the old one with more of
    /// the plan on top) under another strategy.
    pub fn with_fragment(&self, fragment: Arc<dyn ExecutionPlan>, strategy: Strategy) -> Self {
        Self::new(
            fragment,
            self.tasks.clone(),
            self.binding,
            strategy,
            self.pruning,
            self.nodes.clone(),
            self.query_id.clone(),
        )
    }

    /// The same fragment over some of the tasks, recording into the same
    /// metrics.
    pub fn with_tasks(&self, tasks: Vec<Task>) -> Self {
        let this = Self::new(
            self.fragment.clone(),
            tasks,
            self.binding,
            self.strategy,
            self.pruning,
            self.nodes.clone(),
            self.query_id.clone(),
        );
        Self {
            metrics: self.metrics.clone(),
            shown: self.shown.clone(),
            reports: self.reports.clone(),
            ..this
        }
    }

    /// The ticket that runs the fragment for `task`.
    pub fn ticket(&self, task: &Task, memory_limit: Option<usize>) -> Result<Vec<u8>> {
        let plan = match self.binding {
            Binding::AsPlanned => self.fragment.clone(),
            Binding::PerTask => {
                self.fragment
                    .clone()
                    .transform_up(|p| match p.downcast_ref::<ScanLeafExec>() {
                        Some(leaf) => Ok(Transformed::yes(Arc::new(
                            leaf.with_shards(task.shard_ids.clone()),
                        )
                            as Arc<dyn ExecutionPlan>)),
                        None => Ok(Transformed::no(p)),
                    })?
                    .data
            }
        };
        encode_fragment_limited(plan, &self.query_id, true, memory_limit)
    }

    /// The first replica of each task, in node order: where the plan runs
    /// when every node answers.
    fn preferred_nodes(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .tasks
            .iter()
            .filter_map(|t| t.replicas.first().map(|r| r.0))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

impl fmt::Debug for ShardFragmentExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardFragmentExec")
            .field("strategy", &self.strategy)
            .field("tasks", &self.tasks)
            .finish()
    }
}

impl DisplayAs for ShardFragmentExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let p = &self.pruning;
        write!(
            f,
            "ShardFragmentExec: strategy={}, tasks={}, shard_groups={}/{}, shards={}/{}, nodes={:?}",
            self.strategy,
            self.tasks.len(),
            p.groups_kept,
            p.groups_total,
            p.shards_kept,
            p.shards_total,
            self.preferred_nodes(),
        )?;
        if matches!(t, DisplayFormatType::Verbose) {
            let tasks: Vec<String> = self
                .tasks
                .iter()
                .map(|t| {
                    let nodes: Vec<u64> = t.replicas.iter().map(|r| r.0).collect();
                    format!("shards {:?} on nodes {:?}", t.shard_ids, nodes)
                })
                .collect();
            write!(f, ", task_list=[{}]", tasks.join("; "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ShardFragmentExec {
    fn name(&self) -> &str {
        "ShardFragmentExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    /// The fragment once placed, so that EXPLAIN shows it (as mirrored,
    /// with the nodes' metrics); it runs on the nodes.
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        match self.placed {
            true => vec![&self.shown],
            false => vec![],
        }
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (None, _) if !self.placed => Ok(self),
            (Some(shown), true) if self.placed && Arc::ptr_eq(&shown, &self.shown) => Ok(self),
            (Some(fragment), true) if self.placed => Ok(Arc::new(
                self.with_fragment(reported::unmirror(&fragment), self.strategy),
            )),
            _ => Err(DataFusionError::Internal(
                "ShardFragmentExec has one child, its fragment".into(),
            )),
        }
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.schema();
        let Some(task) = self.tasks.get(partition).cloned() else {
            // No shard to read: an empty partition.
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            )));
        };
        let metrics = TaskMetrics::new(&self.metrics, partition, self.reports.clone());
        // The query's own memory limit goes with it to the nodes.
        let options = ctx
            .session_config()
            .options()
            .extensions
            .get::<super::StrataOptions>()
            .cloned()
            .unwrap_or_default();
        let memory_limit = options.memory_limit_mib;
        // Best effort: a task with no readable replica is noted in the
        // query's list of missing shards and reads as empty.
        let missing = match super::completeness::parse(&options.completeness) {
            Ok(true) => ctx
                .session_config()
                .get_extension::<super::completeness::MissingShards>(),
            Ok(false) => None,
            Err(e) => return Err(DataFusionError::Plan(e)),
        };
        let memory_limit = (memory_limit > 0).then_some((memory_limit as usize) << 20);
        let ticket = self.ticket(&task, memory_limit)?;
        let nodes = self.nodes.clone();
        let query_id = self.query_id.clone();
        let out_schema = schema.clone();
        let stream = futures::stream::once(async move {
            open_replica(
                &nodes, ticket, &query_id, &task, out_schema, metrics, missing,
            )
            .await
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        let mut set = self.metrics.clone_inner();
        self.reports.push_node_metrics(&mut set);
        Some(set)
    }
}

/// What a task records: rows out, Arrow IPC bytes received, time until
/// the first batch and until the end.
#[derive(Clone)]
struct TaskMetrics {
    baseline: BaselineMetrics,
    bytes_received: Count,
    time_to_first_batch: Time,
    elapsed: Time,
    /// Where the node's own report goes.
    reports: Arc<Reports>,
}

impl TaskMetrics {
    fn new(set: &ExecutionPlanMetricsSet, partition: usize, reports: Arc<Reports>) -> Self {
        Self {
            reports,
            baseline: BaselineMetrics::new(set, partition),
            bytes_received: MetricBuilder::new(set).counter("bytes_received", partition),
            time_to_first_batch: MetricBuilder::new(set)
                .subset_time("time_to_first_batch", partition),
            elapsed: MetricBuilder::new(set).subset_time("elapsed", partition),
        }
    }
}

type BatchStream = futures::stream::BoxStream<'static, Result<RecordBatch>>;

/// Opens the task on the first replica that answers with data (or a clean
/// end of stream), returning the rest of its stream.
async fn open_replica(
    nodes: &NodeClients,
    ticket: Vec<u8>,
    query_id: &str,
    task: &Task,
    schema: SchemaRef,
    metrics: TaskMetrics,
    missing: Option<Arc<super::completeness::MissingShards>>,
) -> Result<BatchStream> {
    let started = Instant::now();
    let ticket = bytes::Bytes::from(ticket);
    let mut failures = vec![];
    for (node_id, addr) in &task.replicas {
        let Some(addr) = addr else {
            failures.push(format!("node {node_id} is not registered"));
            continue;
        };
        let received = metrics.bytes_received.clone();
        let reports = metrics.reports.clone();
        let mut bytes = 0u64;
        let attempt = async {
            let client = nodes.flight(addr).map_err(status_parts)?;
            let mut inner = client.into_inner();
            let mut request = crate::node_clients::cluster_request(Ticket::new(ticket.clone()));
            if let Ok(id) = query_id.parse() {
                request
                    .metadata_mut()
                    .insert(strata_proto::QUERY_ID_HEADER, id);
            }
            let response = inner.do_get(request).await.map_err(status_parts)?;
            let data = response
                .into_inner()
                .map_err(|s| FlightError::Tonic(Box::new(s)))
                .try_filter_map(move |d| {
                    // The node's report ends the stream: no header, no body.
                    if d.data_header.is_empty() && !d.app_metadata.is_empty() {
                        match FragmentMetrics::decode(d.app_metadata.as_ref()) {
                            Ok(report) => reports.add(&report, bytes),
                            Err(e) => tracing::debug!(error = %e, "unreadable fragment report"),
                        }
                        return futures::future::ready(Ok(None));
                    }
                    let n = d.data_header.len() + d.data_body.len();
                    bytes += n as u64;
                    received.add(n);
                    futures::future::ready(Ok(Some(d)))
                });
            let mut stream = FlightRecordBatchStream::new_from_flight_data(data);
            // Read the first batch here so that a replica failing up front
            // can still be replaced by another.
            let first = stream.next().await.transpose().map_err(flight_parts)?;
            Ok::<_, (tonic::Code, String)>((first, stream))
        };
        match attempt.await {
            Ok((first, rest)) => {
                metrics.time_to_first_batch.add_duration(started.elapsed());
                let shards = task.shard_ids.clone();
                let node_id = *node_id;
                let addr = addr.clone();
                let rest = rest.map_err(move |e| {
                    let (code, e) = flight_parts(e);
                    if code == tonic::Code::ResourceExhausted {
                        return out_of_memory(node_id, &e);
                    }
                    if code == tonic::Code::Cancelled {
                        return DataFusionError::External(Box::new(tonic::Status::cancelled(
                            format!("on storage node {node_id}: {e}"),
                        )));
                    }
                    DataFusionError::External(Box::new(tonic::Status::unavailable(format!(
                        "reading shards {shards:?} from node {node_id} at {addr} failed: {e}"
                    ))))
                });
                let head = futures::stream::iter(first.map(Ok));
                let TaskMetrics {
                    baseline, elapsed, ..
                } = metrics;
                let done = futures::stream::once(async move {
                    elapsed.add_duration(started.elapsed());
                })
                .filter_map(|()| futures::future::ready(None::<Result<RecordBatch>>));
                let stream = head
                    .chain(rest)
                    .map(move |b| {
                        let b = b.and_then(|b| conform(b, &schema))?;
                        baseline.record_output(b.num_rows());
                        Ok(b)
                    })
                    .chain(done);
                return Ok(stream.boxed());
            }
            // Over the query's memory limit: the query's own doing, which
            // another replica would only repeat.
            Err((tonic::Code::ResourceExhausted, e)) => return Err(out_of_memory(*node_id, &e)),
            // Cancelled there (KILL QUERY from another coordinator): not a
            // replica to replace.
            Err((tonic::Code::Cancelled, e)) => {
                return Err(DataFusionError::External(Box::new(
                    tonic::Status::cancelled(format!("on storage node {node_id}: {e}")),
                )))
            }
            Err((_, e)) => {
                tracing::warn!(shards = ?task.shard_ids, node = node_id, %addr, error = %e, "replica failed, trying the next");
                failures.push(format!("node {node_id} at {addr}: {e}"));
            }
        }
    }
    if let Some(missing) = missing {
        tracing::warn!(shards = ?task.shard_ids, "no replica could be read; answering without them (best effort)");
        missing.note(&task.shard_ids, failures.join("; "));
        return Ok(futures::stream::empty().boxed());
    }
    Err(DataFusionError::External(Box::new(
        tonic::Status::unavailable(format!(
            "no replica of shards {:?} could be read: {}",
            task.shard_ids,
            failures.join("; ")
        )),
    )))
}

fn status_parts(s: tonic::Status) -> (tonic::Code, String) {
    (s.code(), s.message().to_string())
}

fn flight_parts(e: FlightError) -> (tonic::Code, String) {
    match e {
        FlightError::Tonic(s) => status_parts(*s),
        e => (tonic::Code::Unknown, e.to_string()),
    }
}

/// A node refused the query memory: the error names the node and keeps
/// the node's account of the limit.
fn out_of_memory(node_id: u64, message: &str) -> DataFusionError {
    let message = message
        .strip_prefix("Resources exhausted: ")
        .unwrap_or(message);
    DataFusionError::ResourcesExhausted(format!("on storage node {node_id}: {message}"))
}

/// A node's batch under the schema the coordinator planned with: the same
/// columns, possibly with other field metadata.
fn conform(batch: RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    if batch.schema_ref() == schema {
        return Ok(batch);
    }
    RecordBatch::try_new(schema.clone(), batch.columns().to_vec()).map_err(|e| {
        DataFusionError::Internal(format!(
            "a storage node answered with another schema than planned: {e}"
        ))
    })
}
