//! The `system` schema: the cluster described as tables, queryable with
//! the same SQL and clients as data. Computed when scanned:
//! `system.catalog` asks every catalog member, `system.nodes` asks the
//! leader when it last heard from each storage node,
//! `system.hinted_handoff` and `system.queries` show this coordinator's
//! queues and queries, `system.fragments` asks every storage node what
//! plan fragments it runs, the others read the catalog this coordinator
//! holds.

use std::fmt;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, ListBuilder, RecordBatch, StringArray, TimestampNanosecondArray,
    UInt32Array, UInt64Array, UInt64Builder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use async_trait::async_trait;
use datafusion::catalog::{SchemaProvider, Session};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use strata_catalog::client::survey;
use strata_catalog::liveness::now_ms;
use strata_catalog::CatalogClient;

use crate::handoff::Handoff;
use crate::node_clients::NodeClients;
use crate::queries::Queries;

/// The schema name; no database may take it.
pub const SYSTEM_SCHEMA: &str = "system";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Catalog,
    Nodes,
    Databases,
    ShardGroups,
    Shards,
    HintedHandoff,
    ShardReplicas,
    Queries,
    Fragments,
}

const TABLES: [(&str, Kind); 9] = [
    ("catalog", Kind::Catalog),
    ("nodes", Kind::Nodes),
    ("databases", Kind::Databases),
    ("shard_groups", Kind::ShardGroups),
    ("shards", Kind::Shards),
    ("hinted_handoff", Kind::HintedHandoff),
    ("shard_replicas", Kind::ShardReplicas),
    ("queries", Kind::Queries),
    ("fragments", Kind::Fragments),
];

pub struct SystemSchema {
    pub catalog: CatalogClient,
    pub nodes: NodeClients,
    pub handoff: Arc<Handoff>,
    pub queries: Queries,
}

impl fmt::Debug for SystemSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SystemSchema")
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|(n, _)| n.to_string()).collect()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Ok(TABLES.iter().find(|(n, _)| *n == name).map(|(_, kind)| {
            Arc::new(SystemTable {
                kind: *kind,
                catalog: self.catalog.clone(),
                nodes: self.nodes.clone(),
                handoff: self.handoff.clone(),
                queries: self.queries.clone(),
            }) as Arc<dyn TableProvider>
        }))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.iter().any(|(n, _)| *n == name)
    }
}

struct SystemTable {
    kind: Kind,
    catalog: CatalogClient,
    nodes: NodeClients,
    handoff: Arc<Handoff>,
    queries: Queries,
}

impl fmt::Debug for SystemTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SystemTable({:?})", self.kind)
    }
}

fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, None)
}

fn schema(kind: Kind) -> SchemaRef {
    let f = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
    let owners = DataType::List(Arc::new(Field::new_list_field(DataType::UInt64, true)));
    Arc::new(Schema::new(match kind {
        Kind::Catalog => vec![
            f("node_id", DataType::UInt64, true),
            f("address", DataType::Utf8, false),
            f("role", DataType::Utf8, false),
            f("voter", DataType::Boolean, true),
            f("leader_id", DataType::UInt64, true),
            f("term", DataType::UInt64, true),
            f("last_log_index", DataType::UInt64, true),
            f("last_applied", DataType::UInt64, true),
            f("version", DataType::UInt64, true),
            f("error", DataType::Utf8, true),
        ],
        Kind::Nodes => vec![
            f("node_id", DataType::UInt64, false),
            f("address", DataType::Utf8, false),
            f("state", DataType::Utf8, false),
            f("state_changed", ts(), true),
            f("last_heartbeat", ts(), true),
            f("heartbeat_timeout_ms", DataType::UInt64, true),
            f("shard_count", DataType::UInt64, false),
        ],
        Kind::Databases => vec![
            f("name", DataType::Utf8, false),
            f("retention_ns", DataType::UInt64, true),
            f("shard_group_duration_ns", DataType::UInt64, false),
            f("replication_factor", DataType::UInt32, false),
            f("shards_per_group", DataType::UInt32, true),
            f("shard_key", DataType::Utf8, true),
            f("consistency", DataType::Utf8, false),
            f("table_count", DataType::UInt64, false),
            f("shard_group_count", DataType::UInt64, false),
        ],
        Kind::ShardGroups => vec![
            f("database", DataType::Utf8, false),
            f("id", DataType::UInt64, false),
            f("start", ts(), false),
            f("end", ts(), false),
            f("shard_count", DataType::UInt64, false),
            f("expired", DataType::Boolean, false),
        ],
        Kind::Shards => vec![
            f("database", DataType::Utf8, false),
            f("shard_id", DataType::UInt64, false),
            f("group_id", DataType::UInt64, false),
            f("start", ts(), false),
            f("end", ts(), false),
            f("owners", owners, false),
        ],
        Kind::HintedHandoff => vec![
            f("node_id", DataType::UInt64, false),
            f("entries", DataType::UInt64, false),
            f("bytes", DataType::UInt64, false),
            f("oldest", ts(), true),
            f("oldest_age_ms", DataType::UInt64, true),
            f("state", DataType::Utf8, false),
            f("delivered", DataType::UInt64, false),
            f("discarded", DataType::UInt64, false),
            f("refused", DataType::UInt64, false),
            f("last_error", DataType::Utf8, true),
        ],
        Kind::ShardReplicas => vec![
            f("database", DataType::Utf8, false),
            f("shard_id", DataType::UInt64, false),
            f("node_id", DataType::UInt64, false),
            f("rows", DataType::UInt64, true),
            // Hex of the sum of the row hashes: replicas agree when equal.
            f("digest", DataType::Utf8, true),
            f("last_repair", ts(), true),
            f("error", DataType::Utf8, true),
        ],
        Kind::Queries => vec![
            f("query_id", DataType::Utf8, false),
            f("database", DataType::Utf8, true),
            f("query_text", DataType::Utf8, false),
            f("strategy", DataType::Utf8, true),
            f("state", DataType::Utf8, false),
            f("start", ts(), false),
            f("duration_ms", DataType::UInt64, false),
            f("rows", DataType::UInt64, false),
            f("bytes_shipped", DataType::UInt64, false),
            f("error", DataType::Utf8, true),
            f("client", DataType::Utf8, true),
        ],
        Kind::Fragments => vec![
            f("node_id", DataType::UInt64, false),
            f("query_id", DataType::Utf8, true),
            f("tables", DataType::Utf8, true),
            f("shards", DataType::Utf8, true),
            f("start", ts(), true),
            f("error", DataType::Utf8, true),
        ],
    }))
}

fn ms_to_ns(ms: i64) -> i64 {
    ms.saturating_mul(1_000_000)
}

impl SystemTable {
    async fn rows(&self) -> Result<Vec<ArrayRef>> {
        let state = self.catalog.state();
        Ok(match self.kind {
            Kind::Catalog => {
                let rows = survey(self.catalog.members()).await;
                vec![
                    Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.node_id))),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| r.address.as_str()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| r.role.as_str()),
                    )),
                    Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.voter))),
                    Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.leader_id))),
                    Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.term))),
                    Arc::new(UInt64Array::from_iter(
                        rows.iter().map(|r| r.last_log_index),
                    )),
                    Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.last_applied))),
                    Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.version))),
                    Arc::new(StringArray::from_iter(
                        rows.iter().map(|r| r.error.as_deref()),
                    )),
                ]
            }
            Kind::Nodes => {
                // Heartbeats live in the leader's memory only; without a
                // leader the column is empty, the rest still answers.
                let heard = match self.catalog.node_liveness().await {
                    Ok(h) => h,
                    Err(e) => {
                        tracing::debug!(error = %e, "no node liveness from the catalog leader");
                        vec![]
                    }
                };
                let counts = state.shards_per_node();
                let nodes: Vec<_> = state.nodes.values().collect();
                let heard_of = |id: u64| heard.iter().find(|h| h.node_id == id);
                vec![
                    Arc::new(UInt64Array::from_iter_values(nodes.iter().map(|n| n.id))),
                    Arc::new(StringArray::from_iter_values(
                        nodes.iter().map(|n| n.flight_addr.as_str()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        nodes.iter().map(|n| n.state.name()),
                    )),
                    Arc::new(TimestampNanosecondArray::from_iter(nodes.iter().map(|n| {
                        (n.state_changed_ms > 0).then(|| ms_to_ns(n.state_changed_ms))
                    }))),
                    Arc::new(TimestampNanosecondArray::from_iter(
                        nodes
                            .iter()
                            .map(|n| heard_of(n.id).map(|h| ms_to_ns(h.last_heartbeat_ms))),
                    )),
                    Arc::new(UInt64Array::from_iter(
                        nodes.iter().map(|n| heard_of(n.id).map(|h| h.timeout_ms)),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        nodes
                            .iter()
                            .map(|n| counts.get(&n.id).copied().unwrap_or(0) as u64),
                    )),
                ]
            }
            Kind::Databases => {
                let dbs: Vec<_> = state.databases.values().collect();
                vec![
                    Arc::new(StringArray::from_iter_values(
                        dbs.iter().map(|d| d.name.as_str()),
                    )),
                    Arc::new(UInt64Array::from_iter(
                        dbs.iter()
                            .map(|d| d.options.retention_ns.map(|r| r.max(0) as u64)),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        dbs.iter()
                            .map(|d| d.options.shard_group_duration_ns.max(0) as u64),
                    )),
                    Arc::new(UInt32Array::from_iter_values(
                        dbs.iter().map(|d| d.options.replication_factor),
                    )),
                    Arc::new(UInt32Array::from_iter(
                        dbs.iter().map(|d| d.options.shards_per_group),
                    )),
                    Arc::new(StringArray::from_iter(dbs.iter().map(|d| {
                        (!d.options.shard_key.is_empty()).then(|| d.options.shard_key.join(","))
                    }))),
                    Arc::new(StringArray::from_iter_values(
                        dbs.iter().map(|d| d.options.consistency.name()),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        dbs.iter().map(|d| d.tables.len() as u64),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        dbs.iter().map(|d| d.shard_groups.len() as u64),
                    )),
                ]
            }
            Kind::ShardGroups => {
                let now_ns = ms_to_ns(now_ms());
                let groups: Vec<_> = state
                    .databases
                    .values()
                    .flat_map(|d| d.shard_groups.iter().map(move |g| (d, g)))
                    .collect();
                vec![
                    Arc::new(StringArray::from_iter_values(
                        groups.iter().map(|(d, _)| d.name.as_str()),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        groups.iter().map(|(_, g)| g.id),
                    )),
                    Arc::new(TimestampNanosecondArray::from_iter_values(
                        groups.iter().map(|(_, g)| g.start_ns),
                    )),
                    Arc::new(TimestampNanosecondArray::from_iter_values(
                        groups.iter().map(|(_, g)| g.end_ns),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        groups.iter().map(|(_, g)| g.shards.len() as u64),
                    )),
                    Arc::new(BooleanArray::from_iter(
                        groups.iter().map(|(d, g)| Some(d.group_expired(g, now_ns))),
                    )),
                ]
            }
            Kind::Shards => {
                let shards: Vec<_> = state
                    .databases
                    .values()
                    .flat_map(|d| {
                        d.shard_groups
                            .iter()
                            .flat_map(move |g| g.shards.iter().map(move |s| (d, g, s)))
                    })
                    .collect();
                let mut owners = ListBuilder::new(UInt64Builder::new())
                    .with_field(Arc::new(Field::new_list_field(DataType::UInt64, true)));
                for (_, _, s) in &shards {
                    owners.values().append_slice(&s.owners);
                    owners.append(true);
                }
                vec![
                    Arc::new(StringArray::from_iter_values(
                        shards.iter().map(|(d, _, _)| d.name.as_str()),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        shards.iter().map(|(_, _, s)| s.id),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        shards.iter().map(|(_, g, _)| g.id),
                    )),
                    Arc::new(TimestampNanosecondArray::from_iter_values(
                        shards.iter().map(|(_, g, _)| g.start_ns),
                    )),
                    Arc::new(TimestampNanosecondArray::from_iter_values(
                        shards.iter().map(|(_, g, _)| g.end_ns),
                    )),
                    Arc::new(owners.finish()),
                ]
            }
            Kind::ShardReplicas => {
                // Every replica of every shard, asked of its node (one call
                // per node, all nodes at once).
                let mut by_node: std::collections::BTreeMap<u64, Vec<(String, u64)>> =
                    Default::default();
                for db in state.databases.values() {
                    for g in &db.shard_groups {
                        for s in &g.shards {
                            for o in &s.owners {
                                by_node.entry(*o).or_default().push((db.name.clone(), s.id));
                            }
                        }
                    }
                }
                let asks = by_node.into_iter().map(|(node_id, shards)| {
                    let addr = state.nodes.get(&node_id).map(|n| n.flight_addr.clone());
                    let nodes = self.nodes.clone();
                    async move {
                        let ids: Vec<u64> = shards.iter().map(|(_, s)| *s).collect();
                        let answer = match addr {
                            None => Err("node is not registered".to_string()),
                            Some(addr) => tokio::time::timeout(
                                std::time::Duration::from_secs(30),
                                crate::node_clients::shard_digests(
                                    &nodes,
                                    &addr,
                                    &ids,
                                    strata_storage::flight::DEFAULT_DIGEST_BUCKET_NS,
                                ),
                            )
                            .await
                            .unwrap_or_else(|_| Err("no answer within 30 s".into()))
                            .map_err(|e| format!("node {node_id} at {addr}: {e}")),
                        };
                        (node_id, shards, answer)
                    }
                });
                let answers = futures::future::join_all(asks).await;
                #[allow(clippy::type_complexity)]
                let mut rows: Vec<(
                    String,
                    u64,
                    u64,
                    Option<u64>,
                    Option<String>,
                    Option<i64>,
                    Option<String>,
                )> = vec![];
                for (node_id, shards, answer) in answers {
                    for (db, shard_id) in shards {
                        match &answer {
                            Ok(digests) => {
                                let d = digests.iter().find(|d| d.shard_id == shard_id);
                                rows.push((
                                    db,
                                    shard_id,
                                    node_id,
                                    Some(d.map_or(0, |d| d.rows)),
                                    Some(format!("{:016x}", d.map_or(0, |d| d.digest))),
                                    d.and_then(|d| d.last_repair_ms).map(ms_to_ns),
                                    None,
                                ));
                            }
                            Err(e) => rows.push((
                                db,
                                shard_id,
                                node_id,
                                None,
                                None,
                                None,
                                Some(e.clone()),
                            )),
                        }
                    }
                }
                rows.sort_by_key(|r| (r.1, r.2));
                vec![
                    Arc::new(StringArray::from_iter_values(
                        rows.iter().map(|r| r.0.as_str()),
                    )),
                    Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.1))),
                    Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.2))),
                    Arc::new(UInt64Array::from_iter(rows.iter().map(|r| r.3))),
                    Arc::new(StringArray::from_iter(rows.iter().map(|r| r.4.as_deref()))),
                    Arc::new(TimestampNanosecondArray::from_iter(
                        rows.iter().map(|r| r.5),
                    )),
                    Arc::new(StringArray::from_iter(rows.iter().map(|r| r.6.as_deref()))),
                ]
            }
            Kind::Queries => {
                let q = self.queries.list();
                vec![
                    Arc::new(StringArray::from_iter_values(
                        q.iter().map(|r| r.id.as_str()),
                    )),
                    Arc::new(StringArray::from_iter(
                        q.iter().map(|r| r.database.as_deref()),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        q.iter().map(|r| r.text.as_str()),
                    )),
                    Arc::new(StringArray::from_iter(
                        q.iter().map(|r| r.strategy.as_deref()),
                    )),
                    Arc::new(StringArray::from_iter_values(q.iter().map(|r| r.state))),
                    Arc::new(TimestampNanosecondArray::from_iter_values(
                        q.iter().map(|r| ms_to_ns(r.started_ms)),
                    )),
                    Arc::new(UInt64Array::from_iter_values(
                        q.iter().map(|r| r.duration_ms),
                    )),
                    Arc::new(UInt64Array::from_iter_values(q.iter().map(|r| r.rows))),
                    Arc::new(UInt64Array::from_iter_values(
                        q.iter().map(|r| r.bytes_shipped),
                    )),
                    Arc::new(StringArray::from_iter(q.iter().map(|r| r.error.as_deref()))),
                    Arc::new(StringArray::from_iter(
                        q.iter().map(|r| r.client.as_deref()),
                    )),
                ]
            }
            Kind::Fragments => {
                // Every node that is up, asked at once; a node that does
                // not answer is a row with the error.
                let asks = state
                    .nodes
                    .values()
                    .filter(|n| n.state == strata_catalog::model::NodeState::Up)
                    .map(|n| {
                        let (nodes, id, addr) = (self.nodes.clone(), n.id, n.flight_addr.clone());
                        async move {
                            let answer = tokio::time::timeout(
                                std::time::Duration::from_secs(10),
                                crate::node_clients::running_fragments(&nodes, &addr),
                            )
                            .await
                            .unwrap_or_else(|_| Err("no answer within 10 s".into()))
                            .map_err(|e| format!("node {id} at {addr}: {e}"));
                            (id, answer)
                        }
                    });
                let mut rows: Vec<(
                    u64,
                    Option<strata_storage::running::FragmentInfo>,
                    Option<String>,
                )> = vec![];
                for (id, answer) in futures::future::join_all(asks).await {
                    match answer {
                        Ok(list) => rows.extend(list.into_iter().map(|f| (id, Some(f), None))),
                        Err(e) => rows.push((id, None, Some(e))),
                    }
                }
                let joined = |f: &strata_storage::running::FragmentInfo, shards: bool| match shards
                {
                    true => f
                        .shards
                        .iter()
                        .map(|s| s.to_string())
                        .collect::<Vec<_>>()
                        .join(","),
                    false => f.tables.join(","),
                };
                vec![
                    Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.0))),
                    Arc::new(StringArray::from_iter(
                        rows.iter()
                            .map(|r| r.1.as_ref().map(|f| f.query_id.as_str())),
                    )),
                    Arc::new(StringArray::from_iter(
                        rows.iter().map(|r| r.1.as_ref().map(|f| joined(f, false))),
                    )),
                    Arc::new(StringArray::from_iter(
                        rows.iter().map(|r| r.1.as_ref().map(|f| joined(f, true))),
                    )),
                    Arc::new(TimestampNanosecondArray::from_iter(
                        rows.iter()
                            .map(|r| r.1.as_ref().map(|f| ms_to_ns(f.started_ms))),
                    )),
                    Arc::new(StringArray::from_iter(rows.iter().map(|r| r.2.as_deref()))),
                ]
            }
            Kind::HintedHandoff => {
                let queues = self.handoff.stats();
                let now = now_ms();
                let u = |f: &dyn Fn(&crate::handoff::QueueStats) -> u64| {
                    Arc::new(UInt64Array::from_iter_values(queues.iter().map(f))) as ArrayRef
                };
                vec![
                    u(&|q| q.node_id),
                    u(&|q| q.entries),
                    u(&|q| q.bytes),
                    Arc::new(TimestampNanosecondArray::from_iter(
                        queues.iter().map(|q| q.oldest_ms.map(ms_to_ns)),
                    )),
                    Arc::new(UInt64Array::from_iter(queues.iter().map(|q| {
                        q.oldest_ms.map(|t| now.saturating_sub(t).max(0) as u64)
                    }))),
                    Arc::new(StringArray::from_iter_values(
                        queues.iter().map(|q| q.state),
                    )),
                    u(&|q| q.delivered),
                    u(&|q| q.discarded),
                    u(&|q| q.refused),
                    Arc::new(StringArray::from_iter(
                        queues.iter().map(|q| q.last_error.as_deref()),
                    )),
                ]
            }
        })
    }
}

#[async_trait]
impl TableProvider for SystemTable {
    fn schema(&self) -> SchemaRef {
        schema(self.kind)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self.schema();
        let batch = RecordBatch::try_new(schema.clone(), self.rows().await?)
            .map_err(|e| DataFusionError::ArrowError(Box::new(e), None))?;
        let exec: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![batch]], schema, projection.cloned())?;
        Ok(exec)
    }
}
