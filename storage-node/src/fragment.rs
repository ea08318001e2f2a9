//! Plan fragments: the part of a query's physical plan that runs on a
//! storage node, carried in a Flight `DoGet` ticket ([`FragmentTicket`]).
//!
//! The coordinator serializes the fragment with datafusion-proto. Its
//! leaves are [`ScanLeafExec`]s, strata's one extension node, encoded by
//! [`FragmentCodec`] as the [`ScanTicket`] they stand for. The node decodes
//! the fragment, checks that it holds every shard a leaf names, replaces
//! each leaf by its own scan of those shards (one output partition per
//! shard, as the coordinator planned it) and runs the plan above.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use datafusion::prelude::SessionContext;
use datafusion_proto::physical_plan::{
    AsExecutionPlan, DefaultPhysicalProtoConverter, PhysicalExtensionCodec,
    PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::PhysicalPlanNode;
use prost::Message;
use strata_proto::storage::v1::{FragmentMetrics, FragmentTicket, OperatorMetrics, ScanTicket};

use crate::engine::Engine;
use crate::scan::{ticket_plan, ticket_schema};
use crate::validate::guard_decode;

/// The fragment ticket format this build speaks.
pub const FRAGMENT_TICKET_VERSION: u32 = 1;

/// A leaf of a plan fragment: the rows of one table in some shards, after
/// the ticket's filters, projection and limit. It has one output partition
/// per shard. Only a storage node can run it, once [`bind`] has replaced it
/// by a scan of the node's data; on the coordinator it is what the
/// fragment's plan is built and shown with.
pub struct ScanLeafExec {
    ticket: ScanTicket,
    properties: Arc<PlanProperties>,
}

impl ScanLeafExec {
    /// A leaf scanning `ticket`'s shards; `schema` is what the ticket's
    /// projection produces.
    pub fn new(ticket: ScanTicket, schema: SchemaRef) -> Self {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(ticket.shard_ids.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self { ticket, properties }
    }

    /// The leaf a ticket stands for, its schema derived from the ticket.
    pub fn from_ticket(ticket: ScanTicket) -> Result<Self> {
        let schema = ticket_schema(&ticket)?;
        let schema = match &ticket.projection {
            Some(p) => {
                let indices = p
                    .columns
                    .iter()
                    .map(|c| schema.index_of(c))
                    .collect::<std::result::Result<Vec<_>, _>>()?;
                Arc::new(schema.project(&indices)?)
            }
            None => schema,
        };
        Ok(Self::new(ticket, schema))
    }

    pub fn ticket(&self) -> &ScanTicket {
        &self.ticket
    }

    /// The same scan reading only the newest row of each series (from the
    /// nodes' last-value caches).
    pub fn latest_per_series(&self) -> Self {
        let ticket = ScanTicket {
            latest_per_series: true,
            ..self.ticket.clone()
        };
        Self::new(ticket, self.schema())
    }

    /// The same scan over other shards.
    pub fn with_shards(&self, shard_ids: Vec<u64>) -> Self {
        let ticket = ScanTicket {
            shard_ids,
            ..self.ticket.clone()
        };
        Self::new(ticket, self.schema())
    }
}

impl fmt::Debug for ScanLeafExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScanLeafExec")
            .field("table", &self.ticket.table)
            .field("shards", &self.ticket.shard_ids)
            .finish()
    }
}

impl DisplayAs for ScanLeafExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let t = &self.ticket;
        write!(f, "ScanLeafExec: table={}.{}", t.database, t.table)?;
        if !t.shard_ids.is_empty() {
            write!(f, ", shards={:?}", t.shard_ids)?;
        }
        if let Some(p) = &t.projection {
            write!(f, ", projection=[{}]", p.columns.join(", "))?;
        }
        if !t.filters.is_empty() {
            write!(f, ", filters={}", t.filters.len())?;
        }
        if let Some(l) = t.limit {
            write!(f, ", limit={l}")?;
        }
        if t.latest_per_series {
            write!(f, ", latest_per_series (last-value cache)")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ScanLeafExec {
    fn name(&self) -> &str {
        "ScanLeafExec"
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
                "ScanLeafExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        _partition: usize,
        _ctx: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(format!(
            "the scan of {}.{} runs only on a storage node, inside a plan fragment",
            self.ticket.database, self.ticket.table
        )))
    }
}

/// datafusion-proto codec for strata's extension nodes in a fragment.
#[derive(Debug, Default, Clone, Copy)]
pub struct FragmentCodec;

impl PhysicalExtensionCodec for FragmentCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(DataFusionError::Plan(
                "a scan leaf of a plan fragment has no inputs".into(),
            ));
        }
        let ticket = ScanTicket::decode(buf)
            .map_err(|e| DataFusionError::Plan(format!("bad scan leaf in fragment: {e}")))?;
        Ok(Arc::new(ScanLeafExec::from_ticket(ticket)?))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        match node.downcast_ref::<ScanLeafExec>() {
            Some(leaf) => {
                leaf.ticket
                    .encode(buf)
                    .map_err(|e| DataFusionError::Internal(format!("encoding a scan leaf: {e}")))?;
                Ok(())
            }
            None => Err(DataFusionError::NotImplemented(format!(
                "{} cannot run on a storage node",
                node.name()
            ))),
        }
    }
}

/// The `DoGet` ticket bytes that ask a node to run `plan`, and with
/// `report_metrics` to end the stream with what it measured
/// ([`operator_metrics`]). Fails when a node of the plan cannot be
/// serialized, or when the encoded plan nests deeper than a node would
/// decode.
pub fn encode_fragment(
    plan: Arc<dyn ExecutionPlan>,
    query_id: &str,
    report_metrics: bool,
) -> Result<Vec<u8>> {
    encode_fragment_limited(plan, query_id, report_metrics, None)
}

/// As [`encode_fragment`], the fragment limited to `memory_limit` bytes
/// on the node (`None`: the node's own per-query limit).
pub fn encode_fragment_limited(
    plan: Arc<dyn ExecutionPlan>,
    query_id: &str,
    report_metrics: bool,
    memory_limit: Option<usize>,
) -> Result<Vec<u8>> {
    let node = DefaultPhysicalProtoConverter {}.execution_plan_to_proto(&plan, &FragmentCodec)?;
    let plan = node.encode_to_vec();
    // What the node will do first: protobuf refuses to decode messages
    // nested more than 100 levels deep.
    PhysicalPlanNode::decode(&plan[..]).map_err(|e| {
        DataFusionError::NotImplemented(format!("plan fragment too deep to send: {e}"))
    })?;
    Ok(FragmentTicket {
        version: FRAGMENT_TICKET_VERSION,
        query_id: query_id.to_string(),
        plan,
        report_metrics,
        memory_limit_bytes: memory_limit.unwrap_or(0) as u64,
    }
    .encode_to_vec())
}

/// Whether a storage node could run `plan`: it encodes, and decodes again
/// as a node would (some plans serialize but cannot be rebuilt alone, e.g.
/// an expression that belongs to an operator left out of the fragment).
pub fn check_sendable(plan: Arc<dyn ExecutionPlan>) -> Result<()> {
    static CTX: std::sync::OnceLock<Arc<TaskContext>> = std::sync::OnceLock::new();
    let ctx = CTX.get_or_init(|| SessionContext::new().task_ctx());
    let bytes = encode_fragment(plan, "", false)?;
    Fragment::decode(&bytes, ctx).map(|_| ())
}

/// A ticket that scans one leaf, as a storage node's own `GetFlightInfo`
/// hands out.
pub fn scan_ticket_bytes(ticket: ScanTicket) -> Result<Vec<u8>> {
    let query_id = ticket.query_id.clone();
    encode_fragment(
        Arc::new(ScanLeafExec::from_ticket(ticket)?),
        &query_id,
        false,
    )
}

/// A decoded fragment ticket: its query id and plan (leaves unbound).
pub struct Fragment {
    pub query_id: String,
    pub plan: Arc<dyn ExecutionPlan>,
    /// Whether the sender wants [`FragmentMetrics`] after the last batch.
    pub report_metrics: bool,
    /// The query's own memory limit, when its session set one.
    pub memory_limit: Option<usize>,
}

impl Fragment {
    /// Decodes ticket bytes a client sent; anything malformed is a `Plan`
    /// error, never a panic.
    pub fn decode(bytes: &[u8], ctx: &TaskContext) -> Result<Self> {
        let bad = |e: String| DataFusionError::Plan(format!("bad fragment ticket: {e}"));
        let ticket = FragmentTicket::decode(bytes).map_err(|e| bad(e.to_string()))?;
        if ticket.version != FRAGMENT_TICKET_VERSION {
            return Err(bad(format!(
                "format version {} is not spoken here (this node speaks {FRAGMENT_TICKET_VERSION})",
                ticket.version
            )));
        }
        let plan = guard_decode(|| {
            let node = PhysicalPlanNode::decode(&ticket.plan[..]).map_err(|e| e.to_string())?;
            node.try_into_physical_plan(ctx, &FragmentCodec)
                .map_err(|e| e.to_string())
        })
        .map_err(bad)?;
        check_operators(&plan)?;
        Ok(Self {
            query_id: ticket.query_id,
            plan,
            report_metrics: ticket.report_metrics,
            memory_limit: (ticket.memory_limit_bytes > 0)
                .then(|| usize::try_from(ticket.memory_limit_bytes).unwrap_or(usize::MAX)),
        })
    }

    /// The scans the fragment's leaves ask for.
    pub fn leaves(&self) -> Vec<ScanTicket> {
        let mut out = vec![];
        let _ = self.plan.apply(|p| {
            if let Some(leaf) = p.downcast_ref::<ScanLeafExec>() {
                out.push(leaf.ticket.clone());
            }
            Ok(TreeNodeRecursion::Continue)
        });
        out
    }

    /// The plan with every leaf replaced by this node's scan of its
    /// shards: one partition per shard, each deduplicated on its own.
    pub async fn bind(
        self,
        ctx: &SessionContext,
        engine: &Engine,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut scans = vec![];
        for ticket in self.leaves() {
            let mut parts = vec![];
            for shard in &ticket.shard_ids {
                let one = ScanTicket {
                    shard_ids: vec![*shard],
                    ..ticket.clone()
                };
                let plan = ticket_plan(ctx, engine, &one).await?;
                parts.push(single_partition(plan));
            }
            scans.push(match parts.len() {
                0 => {
                    let empty = ScanTicket {
                        shard_ids: vec![],
                        ..ticket.clone()
                    };
                    single_partition(ticket_plan(ctx, engine, &empty).await?)
                }
                1 => parts.pop().expect("one part"),
                _ => UnionExec::try_new(parts)?,
            });
        }
        let mut scans = scans.into_iter();
        let bound = self.plan.transform_up(|p| {
            if p.is::<ScanLeafExec>() {
                let scan = scans.next().ok_or_else(|| {
                    DataFusionError::Internal("fragment leaves changed while binding".into())
                })?;
                Ok(Transformed::yes(scan))
            } else {
                Ok(Transformed::no(p))
            }
        })?;
        Ok(bound.data)
    }
}

/// What a node measured running `sent` (the fragment as decoded) as
/// `bound` (the same plan with its leaves bound): one entry per operator of
/// `sent` in pre-order, a leaf summing the whole scan it was bound to.
pub fn operator_metrics(
    sent: &Arc<dyn ExecutionPlan>,
    bound: &Arc<dyn ExecutionPlan>,
) -> Vec<OperatorMetrics> {
    fn rows(p: &Arc<dyn ExecutionPlan>) -> u64 {
        match p.metrics().and_then(|m| m.output_rows()) {
            Some(n) => n as u64,
            // An operator that does not count (a union) outputs what its
            // inputs did.
            None => p.children().into_iter().map(rows).sum(),
        }
    }
    fn compute(p: &Arc<dyn ExecutionPlan>) -> u64 {
        p.metrics().and_then(|m| m.elapsed_compute()).unwrap_or(0) as u64
    }
    fn subtree_compute(p: &Arc<dyn ExecutionPlan>) -> u64 {
        compute(p) + p.children().into_iter().map(subtree_compute).sum::<u64>()
    }
    fn walk(
        sent: &Arc<dyn ExecutionPlan>,
        bound: &Arc<dyn ExecutionPlan>,
        out: &mut Vec<OperatorMetrics>,
    ) {
        let leaf = sent.is::<ScanLeafExec>();
        out.push(OperatorMetrics {
            name: sent.name().to_string(),
            output_rows: rows(bound),
            elapsed_compute_ns: match leaf {
                true => subtree_compute(bound),
                false => compute(bound),
            },
            spilled_bytes: bound.metrics().and_then(|m| m.spilled_bytes()).unwrap_or(0) as u64,
        });
        if !leaf {
            for (s, b) in sent.children().into_iter().zip(bound.children()) {
                walk(s, b, out);
            }
        }
    }
    let mut out = vec![];
    walk(sent, bound, &mut out);
    out
}

/// The message a node ends a fragment's stream with, as `app_metadata`.
pub fn metrics_message(
    node_id: u64,
    elapsed: std::time::Duration,
    operators: Vec<OperatorMetrics>,
) -> Vec<u8> {
    FragmentMetrics {
        node_id,
        elapsed_ns: elapsed.as_nanos().min(u64::MAX as u128) as u64,
        operators,
    }
    .encode_to_vec()
}

/// Whether a fragment may hold `p`: what the coordinator sends (the work
/// above strata's own scans) and literal rows (`VALUES`). datafusion-proto
/// decodes much more — file scans and file sinks among them — which would
/// let whoever reaches a node's port read or write its files.
fn allowed_operator(p: &dyn ExecutionPlan) -> bool {
    use datafusion::physical_plan::aggregates::AggregateExec;
    use datafusion::physical_plan::coop::CooperativeExec;
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::physical_plan::filter::FilterExec;
    use datafusion::physical_plan::joins::{
        CrossJoinExec, HashJoinExec, NestedLoopJoinExec, SortMergeJoinExec, SymmetricHashJoinExec,
    };
    use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
    use datafusion::physical_plan::placeholder_row::PlaceholderRowExec;
    use datafusion::physical_plan::projection::ProjectionExec;
    use datafusion::physical_plan::repartition::RepartitionExec;
    use datafusion::physical_plan::sorts::sort::SortExec;
    use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
    use datafusion::physical_plan::union::InterleaveExec;
    use datafusion::physical_plan::unnest::UnnestExec;
    use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec};
    p.is::<ScanLeafExec>()
        || p.is::<FilterExec>()
        || p.is::<ProjectionExec>()
        || p.is::<AggregateExec>()
        || p.is::<SortExec>()
        || p.is::<SortPreservingMergeExec>()
        || p.is::<LocalLimitExec>()
        || p.is::<GlobalLimitExec>()
        || p.is::<CoalescePartitionsExec>()
        || p.is::<RepartitionExec>()
        || p.is::<UnionExec>()
        || p.is::<InterleaveExec>()
        || p.is::<HashJoinExec>()
        || p.is::<SortMergeJoinExec>()
        || p.is::<NestedLoopJoinExec>()
        || p.is::<CrossJoinExec>()
        || p.is::<SymmetricHashJoinExec>()
        || p.is::<BoundedWindowAggExec>()
        || p.is::<WindowAggExec>()
        || p.is::<UnnestExec>()
        || p.is::<CooperativeExec>()
        || p.is::<EmptyExec>()
        || p.is::<PlaceholderRowExec>()
        || p.downcast_ref::<DataSourceExec>()
            .is_some_and(|d| d.data_source().is::<MemorySourceConfig>())
}

/// Refuses a fragment holding an operator strata does not send, or a data
/// source other than literal rows (`VALUES`).
fn check_operators(plan: &Arc<dyn ExecutionPlan>) -> Result<()> {
    let mut refused = None;
    plan.apply(|p| {
        if allowed_operator(p.as_ref()) {
            Ok(TreeNodeRecursion::Continue)
        } else {
            refused = Some(p.name().to_string());
            Ok(TreeNodeRecursion::Stop)
        }
    })?;
    match refused {
        None => Ok(()),
        Some(name) => Err(DataFusionError::Plan(format!(
            "bad fragment ticket: a plan fragment may not hold {name}"
        ))),
    }
}

fn single_partition(plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
    if plan.output_partitioning().partition_count() > 1 {
        Arc::new(CoalescePartitionsExec::new(plan))
    } else {
        plan
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, RecordBatch, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::logical_expr::Operator;
    use datafusion::physical_expr::expressions::{col, lit, BinaryExpr};
    use datafusion::physical_plan::filter::FilterExec;
    use proptest::prelude::*;

    use super::*;
    use crate::engine::EngineConfig;
    use crate::flight::schema_to_ipc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("v", DataType::Float64, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]))
    }

    fn leaf(shards: Vec<u64>) -> ScanLeafExec {
        ScanLeafExec::new(
            ScanTicket {
                database: "db".into(),
                table: "t".into(),
                shard_ids: shards,
                table_schema_ipc: schema_to_ipc(&schema()).unwrap(),
                ..Default::default()
            },
            schema(),
        )
    }

    /// `v > 1` over a scan of `shards`.
    fn fragment(shards: Vec<u64>) -> Arc<dyn ExecutionPlan> {
        let leaf: Arc<dyn ExecutionPlan> = Arc::new(leaf(shards));
        let predicate = Arc::new(BinaryExpr::new(
            col("v", &schema()).unwrap(),
            Operator::Gt,
            lit(1.0),
        ));
        Arc::new(FilterExec::try_new(predicate, leaf).unwrap())
    }

    async fn engine_with_rows(dir: &std::path::Path) -> Arc<Engine> {
        let engine = Engine::open(EngineConfig::new(dir)).unwrap();
        for (shard, values) in [(1u64, vec![0.5, 2.0]), (2, vec![3.0, 4.0])] {
            let batch = RecordBatch::try_new(
                schema(),
                vec![
                    Arc::new(Float64Array::from(values)),
                    Arc::new(TimestampNanosecondArray::from(vec![
                        shard as i64 * 10,
                        shard as i64 * 10 + 1,
                    ])),
                ],
            )
            .unwrap();
            engine.write("db", "t", shard, batch).await.unwrap();
        }
        engine
    }

    #[tokio::test]
    async fn a_fragment_runs_one_partition_per_shard_of_its_leaf() {
        let dir = tempfile::tempdir().unwrap();
        let engine = engine_with_rows(dir.path()).await;
        let ctx = SessionContext::new();
        let bytes = encode_fragment(fragment(vec![1, 2]), "q", true).unwrap();
        let decoded = Fragment::decode(&bytes, &ctx.task_ctx()).unwrap();
        assert_eq!(decoded.query_id, "q");
        assert_eq!(decoded.leaves()[0].shard_ids, vec![1, 2]);
        assert!(decoded.report_metrics);
        let sent = decoded.plan.clone();
        let plan = decoded.bind(&ctx, &engine).await.unwrap();
        assert_eq!(plan.output_partitioning().partition_count(), 2);
        let batches = datafusion::physical_plan::collect(plan.clone(), ctx.task_ctx())
            .await
            .unwrap();
        let mut values: Vec<f64> = batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .unwrap()
                    .values()
                    .to_vec()
            })
            .collect();
        values.sort_by(f64::total_cmp);
        assert_eq!(values, vec![2.0, 3.0, 4.0], "the filter ran on the node");

        // Measured per operator of the fragment as sent: the filter's rows,
        // and the leaf's whole scan of both shards.
        let measured = operator_metrics(&sent, &plan);
        let shape: Vec<(&str, u64)> = measured
            .iter()
            .map(|m| (m.name.as_str(), m.output_rows))
            .collect();
        assert_eq!(shape, [("FilterExec", 3), ("ScanLeafExec", 4)]);
    }

    #[test]
    fn other_versions_are_refused_by_name() {
        let ticket = FragmentTicket {
            version: 2,
            query_id: "q".into(),
            plan: vec![],
            report_metrics: false,
            memory_limit_bytes: 0,
        };
        let ctx = SessionContext::new();
        let e = Fragment::decode(&ticket.encode_to_vec(), &ctx.task_ctx())
            .err()
            .unwrap();
        assert!(e.to_string().contains("format version 2"), "{e}");
        assert!(e.to_string().contains("speaks 1"), "{e}");
    }

    #[tokio::test]
    async fn a_fragment_reading_files_is_refused() {
        let ctx = SessionContext::new();
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("secret.csv");
        std::fs::write(&csv, "a\n1\n").unwrap();
        let plan = ctx
            .read_csv(csv.to_str().unwrap(), Default::default())
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let node = DefaultPhysicalProtoConverter {}
            .execution_plan_to_proto(&plan, &FragmentCodec)
            .unwrap();
        let ticket = FragmentTicket {
            version: FRAGMENT_TICKET_VERSION,
            query_id: "q".into(),
            plan: node.encode_to_vec(),
            report_metrics: false,
            memory_limit_bytes: 0,
        };
        let e = Fragment::decode(&ticket.encode_to_vec(), &ctx.task_ctx())
            .err()
            .expect("refused");
        assert!(e.to_string().contains("may not hold DataSourceExec"), "{e}");
    }

    #[test]
    fn a_leaf_runs_only_on_a_node() {
        let ctx = SessionContext::new();
        let e = leaf(vec![1]).execute(0, ctx.task_ctx()).err().unwrap();
        assert!(e.to_string().contains("runs only on a storage node"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Any ticket a client sends straight to a node, random bytes or a
        /// real fragment with bytes flipped, decodes, binds and runs or is
        /// an error, never a panic.
        #[test]
        fn any_fragment_ticket_runs_or_errs(
            random in proptest::collection::vec(any::<u8>(), 0..300),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let engine = engine_with_rows(dir.path()).await;
                let mut bytes = encode_fragment(fragment(vec![1, 2]), "fuzz", true).unwrap();
                for (at, b) in &flips {
                    let n = bytes.len();
                    bytes[at % n] ^= b;
                }
                let ctx = SessionContext::new();
                for candidate in [random.clone(), bytes] {
                    if let Ok(f) = Fragment::decode(&candidate, &ctx.task_ctx()) {
                        if let Ok(plan) = f.bind(&ctx, &engine).await {
                            let _ = datafusion::physical_plan::collect(plan, ctx.task_ctx()).await;
                        }
                    }
                }
            });
        }
    }
}
