//! DataFusion's view of the Raft catalog: one catalog (`strata`) whose
//! schemas are the databases and whose tables scan shards on the storage
//! nodes through [`ShardFragmentExec`].

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, SchemaProvider, Session};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::Column;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::Result;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::bytes::Serializeable;
use strata_catalog::model::ColumnKind;
use strata_catalog::CatalogClient;
use strata_proto::storage::v1::{Projection, ScanTicket};
use strata_storage::fragment::ScanLeafExec;

use crate::dist_plan::{shards_for_key, time_range, Pruning, ShardFragmentExec, Task};
use crate::node_clients::NodeClients;
use crate::query::system_tables::{SystemSchema, SYSTEM_SCHEMA};

/// The DataFusion catalog name under which databases appear.
pub const CATALOG_NAME: &str = "strata";

#[derive(Clone)]
pub struct StrataCatalog {
    pub catalog: CatalogClient,
    pub nodes: NodeClients,
    pub handoff: Arc<crate::handoff::Handoff>,
    pub queries: crate::queries::Queries,
    pub query_id: String,
    /// Who the session runs as: lists only the databases it may read.
    pub access: crate::auth::Access,
}

impl fmt::Debug for StrataCatalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrataCatalog").finish()
    }
}

impl CatalogProvider for StrataCatalog {
    fn schema_names(&self) -> Vec<String> {
        let access = &self.access;
        let mut names: Vec<String> = self
            .catalog
            .state()
            .databases
            .keys()
            .filter(|db| access.allows(Some(db), strata_catalog::tokens::Level::Read))
            .cloned()
            .collect();
        if access.allows(None, strata_catalog::tokens::Level::Admin) {
            names.push(SYSTEM_SCHEMA.to_string());
        }
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        use strata_catalog::tokens::Level;
        // A database the session may not read is refused whether it
        // exists or not, before any of its tables or columns is shown.
        let denied = match name {
            SYSTEM_SCHEMA => !self.access.allows(None, Level::Admin),
            _ => !self.access.allows(Some(name), Level::Read),
        };
        if denied {
            let refused = match name {
                SYSTEM_SCHEMA => self.access.require(None, Level::Admin),
                db => self.access.require(Some(db), Level::Read),
            };
            let reason = refused.err().map(|e| e.to_string()).unwrap_or_default();
            return Some(Arc::new(DeniedSchema { reason }));
        }
        if name == SYSTEM_SCHEMA {
            return Some(Arc::new(SystemSchema {
                catalog: self.catalog.clone(),
                nodes: self.nodes.clone(),
                handoff: self.handoff.clone(),
                queries: self.queries.clone(),
            }));
        }
        self.catalog.state().databases.contains_key(name).then(|| {
            Arc::new(DatabaseSchema {
                inner: self.clone(),
                database: name.to_string(),
            }) as Arc<dyn SchemaProvider>
        })
    }
}

pub struct DatabaseSchema {
    inner: StrataCatalog,
    database: String,
}

impl fmt::Debug for DatabaseSchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSchema")
            .field("database", &self.database)
            .finish()
    }
}

#[async_trait]
impl SchemaProvider for DatabaseSchema {
    fn table_names(&self) -> Vec<String> {
        self.inner
            .catalog
            .state()
            .databases
            .get(&self.database)
            .map(|d| d.tables.keys().cloned().collect())
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        let state = self.inner.catalog.state();
        let Some(table) = state
            .databases
            .get(&self.database)
            .and_then(|d| d.tables.get(name))
        else {
            return Ok(None);
        };
        Ok(Some(Arc::new(StrataTable {
            inner: self.inner.clone(),
            database: self.database.clone(),
            table: name.to_string(),
            schema: table.arrow_schema(),
        })))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.inner
            .catalog
            .state()
            .databases
            .get(&self.database)
            .is_some_and(|d| d.tables.contains_key(name))
    }
}

/// A database the session's token may not read: every table lookup fails
/// with the permission error.
#[derive(Debug)]
struct DeniedSchema {
    reason: String,
}

#[async_trait]
impl SchemaProvider for DeniedSchema {
    fn table_names(&self) -> Vec<String> {
        vec![]
    }

    async fn table(&self, _name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        Err(datafusion::error::DataFusionError::External(Box::new(
            crate::error::Error::PermissionDenied {
                reason: self.reason.clone(),
            },
        )))
    }

    fn table_exist(&self, _name: &str) -> bool {
        false
    }
}

/// A table whose rows live in shards across the storage nodes.
pub struct StrataTable {
    inner: StrataCatalog,
    database: String,
    table: String,
    schema: SchemaRef,
}

impl fmt::Debug for StrataTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StrataTable({}.{})", self.database, self.table)
    }
}

/// Storage nodes resolve columns against their own, unqualified table.
fn unqualified(e: &Expr) -> Result<Expr> {
    e.clone()
        .transform(|e| {
            Ok(match e {
                Expr::Column(c) if c.relation.is_some() => {
                    Transformed::yes(Expr::Column(Column::new_unqualified(c.name)))
                }
                other => Transformed::no(other),
            })
        })
        .map(|t| t.data)
}

#[async_trait]
impl TableProvider for StrataTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Storage nodes use filters to prune and to cut what they send; the
        // coordinator evaluates them again, so they need not be exact.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let state = self.inner.catalog.state();
        let (min, max) = time_range(filters);
        let mut tasks = vec![];
        let mut pruning = Pruning::default();
        if let Some(db) = state.databases.get(&self.database) {
            pruning.groups_total = db.shard_groups.len();
            pruning.shards_total = db.shard_groups.iter().map(|g| g.shards.len()).sum();
            for group in db.shard_groups_overlapping(min, max) {
                pruning.groups_kept += 1;
                let is_tag = |name: &str| {
                    db.tables.get(&self.table).is_some_and(|t| {
                        t.columns
                            .iter()
                            .any(|c| c.name == name && c.kind == ColumnKind::Tag)
                    })
                };
                for i in shards_for_key(group, filters, is_tag) {
                    let shard = &group.shards[i];
                    pruning.shards_kept += 1;
                    tasks.push(Task {
                        shard_ids: vec![shard.id],
                        replicas: read_order(&state, shard, &self.inner.query_id)
                            .map(|n| (n, state.nodes.get(&n).map(|i| i.flight_addr.clone())))
                            .collect(),
                        window: Some((group.start_ns, group.end_ns)),
                    });
                }
            }
        }
        let projected = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => self.schema.clone(),
        };
        let filter_bytes = filters
            .iter()
            .filter_map(|f| {
                // Filters are applied here again (they are inexact), so one
                // that is too deep for a node to decode, or that cannot be
                // serialized, is only applied here.
                if expr_depth(f) > MAX_PUSHED_FILTER_DEPTH {
                    return None;
                }
                let e = unqualified(f).ok()?;
                e.to_bytes().ok().map(|b| b.to_vec())
            })
            .collect();
        let schema_ipc = strata_storage::flight::schema_to_ipc(&self.schema)?;
        let ticket = ScanTicket {
            database: self.database.clone(),
            table: self.table.clone(),
            shard_ids: vec![],
            table_schema_ipc: schema_ipc,
            projection: projection.map(|_| Projection {
                columns: projected
                    .fields()
                    .iter()
                    .map(|f| f.name().clone())
                    .collect(),
            }),
            filters: filter_bytes,
            limit: limit.map(|l| l as u64),
            query_id: self.inner.query_id.clone(),
            latest_per_series: false,
        };
        Ok(Arc::new(ShardFragmentExec::scan(
            ScanLeafExec::new(ticket, projected),
            tasks,
            pruning,
            self.inner.nodes.clone(),
            self.inner.query_id.clone(),
        )))
    }
}

/// Deepest filter sent to storage nodes: protobuf decoding refuses
/// messages nested deeper than 100 levels, and an expression level takes
/// more than one.
const MAX_PUSHED_FILTER_DEPTH: usize = 32;

/// How deep an expression tree is (a leaf is 1).
fn expr_depth(e: &Expr) -> usize {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion, TreeNodeVisitor};
    #[derive(Default)]
    struct Depth {
        now: usize,
        deepest: usize,
    }
    impl<'n> TreeNodeVisitor<'n> for Depth {
        type Node = Expr;
        fn f_down(&mut self, _: &'n Expr) -> Result<TreeNodeRecursion> {
            self.now += 1;
            self.deepest = self.deepest.max(self.now);
            Ok(TreeNodeRecursion::Continue)
        }
        fn f_up(&mut self, _: &'n Expr) -> Result<TreeNodeRecursion> {
            self.now -= 1;
            Ok(TreeNodeRecursion::Continue)
        }
    }
    let mut v = Depth::default();
    let _ = e.visit(&mut v);
    v.deepest
}

/// The order a query tries a shard's replicas in: those on nodes the
/// catalog counts as up, starting at one picked by the query and shard so
/// that reads spread over the replicas; then replicas still being filled
/// after a node's removal; then those on nodes marked down.
fn read_order(
    state: &strata_catalog::CatalogData,
    shard: &strata_catalog::model::Shard,
    query_id: &str,
) -> impl Iterator<Item = u64> {
    use std::hash::BuildHasher;
    let mut ready = vec![];
    let mut filling = vec![];
    let mut down = vec![];
    for n in &shard.owners {
        if !state.node_is_up(*n) {
            down.push(*n);
        } else if shard.filling.contains(n) {
            filling.push(*n);
        } else {
            ready.push(*n);
        }
    }
    if ready.len() > 1 {
        let h = foldhash::fast::FixedState::with_seed(0).hash_one((query_id, shard.id));
        let start = (h % ready.len() as u64) as usize;
        ready.rotate_left(start);
    }
    ready.into_iter().chain(filling).chain(down)
}
