//! `ShardFragmentExec`: one output partition per shard, each pulled from a
//! replica's Flight `DoGet`. If a replica fails before sending its first
//! batch, the next replica is tried; after that the query fails with the
//! shard and node named.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow_flight::Ticket;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use strata_proto::storage::v1::ScanTicket;

use crate::node_clients::NodeClients;

/// A shard to read and the replicas that hold it, in preference order.
#[derive(Debug, Clone)]
pub struct ShardTarget {
    pub shard_id: u64,
    /// (node id, Flight address); an unregistered node has no address.
    pub replicas: Vec<(u64, Option<String>)>,
}

pub struct ShardFragmentExec {
    schema: SchemaRef,
    /// The scan every shard runs; `shard_ids` is filled per partition.
    ticket: ScanTicket,
    shards: Vec<ShardTarget>,
    nodes: NodeClients,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ShardFragmentExec {
    pub fn new(
        schema: SchemaRef,
        ticket: ScanTicket,
        shards: Vec<ShardTarget>,
        nodes: NodeClients,
    ) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(shards.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            schema,
            ticket,
            shards,
            nodes,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl fmt::Debug for ShardFragmentExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardFragmentExec")
            .field("table", &self.ticket.table)
            .field("shards", &self.shards)
            .finish()
    }
}

impl DisplayAs for ShardFragmentExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "ShardFragmentExec: table={}.{}, shards={}, filters={}",
            self.ticket.database,
            self.ticket.table,
            self.shards.len(),
            self.ticket.filters.len()
        )?;
        if let Some(limit) = self.ticket.limit {
            write!(f, ", limit={limit}")?;
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

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "ShardFragmentExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let schema = self.schema.clone();
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let Some(target) = self.shards.get(partition).cloned() else {
            // No shard to read: an empty partition.
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                schema,
                futures::stream::empty(),
            )));
        };
        let mut ticket = self.ticket.clone();
        ticket.shard_ids = vec![target.shard_id];
        let nodes = self.nodes.clone();
        let stream =
            futures::stream::once(async move { open_replica(&nodes, &ticket, &target).await })
                .try_flatten()
                .inspect_ok(move |b| baseline.record_output(b.num_rows()));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

type BatchStream = futures::stream::BoxStream<'static, Result<arrow::array::RecordBatch>>;

/// Opens the scan on the first replica that answers with data (or a clean
/// end of stream), returning the rest of its stream.
async fn open_replica(
    nodes: &NodeClients,
    ticket: &ScanTicket,
    target: &ShardTarget,
) -> Result<BatchStream> {
    let bytes = ticket.encode_to_vec();
    let mut failures = vec![];
    for (node_id, addr) in &target.replicas {
        let Some(addr) = addr else {
            failures.push(format!("node {node_id} is not registered"));
            continue;
        };
        let attempt = async {
            let mut client = nodes.flight(addr).map_err(|s| s.message().to_string())?;
            let mut stream = client
                .do_get(Ticket::new(bytes.clone()))
                .await
                .map_err(|e| e.to_string())?;
            // Read the first batch here so that a replica failing up front
            // can still be replaced by another.
            let first = stream.next().await.transpose().map_err(|e| e.to_string())?;
            Ok::<_, String>((first, stream))
        };
        match attempt.await {
            Ok((first, rest)) => {
                let shard_id = target.shard_id;
                let node_id = *node_id;
                let addr = addr.clone();
                let rest = rest.map_err(move |e| {
                    DataFusionError::External(Box::new(tonic::Status::unavailable(format!(
                        "reading shard {shard_id} from node {node_id} at {addr} failed: {e}"
                    ))))
                });
                let head = futures::stream::iter(first.map(Ok));
                return Ok(head.chain(rest).boxed());
            }
            Err(e) => {
                tracing::warn!(shard = target.shard_id, node = node_id, %addr, error = %e, "replica failed, trying the next");
                failures.push(format!("node {node_id} at {addr}: {e}"));
            }
        }
    }
    Err(DataFusionError::External(Box::new(
        tonic::Status::unavailable(format!(
            "no replica of shard {} of table '{}.{}' could be read: {}",
            target.shard_id,
            ticket.database,
            ticket.table,
            failures.join("; ")
        )),
    )))
}
