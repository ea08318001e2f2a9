//! Running SQL: strata's own statements (see [`ddl`]) go to the catalog;
//! everything else is planned by DataFusion over [`catalog_provider`] and
//! executed across the storage nodes.

pub mod catalog_provider;
pub mod ddl;
pub mod delete;
pub mod distinct_on;
pub mod hints;
pub mod insert;
pub mod limits;
pub mod statement;
pub mod system_tables;

use std::sync::Arc;
use std::time::Duration;

use arrow::array::{ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use snafu::ResultExt;
use strata_catalog::{CatalogClient, Command};
use strata_storage::memory::{MemoryLimits, QueryMemory};
use strata_storage::running::until_cancelled;

use strata_catalog::tokens::Level;

use crate::auth::Access;
use crate::dist_plan::completeness::{self, MissingShards};
use crate::dist_plan::{DistributePlan, StrataOptions};
use crate::error::{CatalogSnafu, Error, QuerySnafu, Result};
use crate::executor::QueryExecutor;
use crate::node_clients::NodeClients;
use crate::queries::{Queries, QueryHandle, RunInfo};
use crate::write_router::WriteRouter;
use catalog_provider::{StrataCatalog, CATALOG_NAME};
use ddl::{format_duration, OwnStatement};

/// Rows of an INSERT written per call to the write path.
const INSERT_CHUNK_ROWS: usize = 10_000;

/// Schema name used when a request names no database.
pub const DEFAULT_SCHEMA: &str = "public";

#[derive(Clone)]
pub struct QueryEngine {
    catalog: CatalogClient,
    nodes: NodeClients,
    /// Where parsing, planning and execution run.
    executor: QueryExecutor,
    /// Where `INSERT` rows go.
    writer: WriteRouter,
    /// Each query's memory pool, within the process's budget.
    memory: QueryMemory,
    /// Running and recent queries.
    queries: Queries,
    /// How long a query may run unless it sets its own limit.
    timeout: Option<Duration>,
}

/// A statement planned far enough to know its result schema.
pub enum Planned {
    Sql(Box<DataFrame>),
    Own(OwnStatement),
}

fn show_databases_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("name", DataType::Utf8, false),
        Field::new("retention", DataType::Utf8, true),
        Field::new("shard_group_duration", DataType::Utf8, false),
        Field::new("replication_factor", DataType::UInt32, false),
        // NULL: one shard per storage node when a group is created.
        Field::new("shards", DataType::UInt32, true),
        // NULL: rows are placed by series.
        Field::new("shard_key", DataType::Utf8, true),
        // Of writes that do not name one.
        Field::new("consistency", DataType::Utf8, false),
    ]))
}

/// The permission error a database the token may not read raised while
/// the statement was planned (see `catalog_provider::DeniedSchema`).
fn permission_denied(e: &datafusion::error::DataFusionError) -> Option<String> {
    use datafusion::error::DataFusionError as D;
    match e {
        D::External(inner) => match inner.downcast_ref::<Error>() {
            Some(Error::PermissionDenied { reason }) => Some(reason.clone()),
            _ => None,
        },
        D::Context(_, inner) => permission_denied(inner),
        D::Shared(inner) => permission_denied(inner),
        D::Diagnostic(_, inner) => permission_denied(inner),
        _ => None,
    }
}

impl Planned {
    /// Whether the statement set `strata.completeness = 'best_effort'`.
    pub fn best_effort(&self) -> bool {
        match self {
            Planned::Sql(df) => df
                .task_ctx()
                .session_config()
                .options()
                .extensions
                .get::<StrataOptions>()
                .is_some_and(|o| completeness::parse(&o.completeness).unwrap_or(false)),
            Planned::Own(_) => false,
        }
    }

    /// Where a best-effort query notes the shards it answers without.
    pub fn missing_shards(&self) -> Option<Arc<MissingShards>> {
        match self {
            Planned::Sql(df) => df
                .task_ctx()
                .session_config()
                .get_extension::<MissingShards>(),
            Planned::Own(_) => None,
        }
    }

    pub fn schema(&self) -> SchemaRef {
        match self {
            Planned::Sql(df) => Arc::new(df.schema().as_arrow().clone()),
            Planned::Own(OwnStatement::ShowDatabases) => show_databases_schema(),
            Planned::Own(OwnStatement::Insert(_)) => insert::count_schema(),
            Planned::Own(_) => Arc::new(Schema::empty()),
        }
    }
}

impl QueryEngine {
    pub fn new(
        catalog: CatalogClient,
        nodes: NodeClients,
        executor: QueryExecutor,
        writer: WriteRouter,
    ) -> Self {
        Self {
            writer,
            catalog,
            nodes,
            executor,
            memory: QueryMemory::new(MemoryLimits::unbounded()),
            queries: Queries::default(),
            timeout: None,
        }
    }

    /// Limits every query to `memory`'s pools and to `timeout` (unless a
    /// statement sets its own).
    pub fn with_limits(mut self, memory: QueryMemory, timeout: Option<Duration>) -> Self {
        self.memory = memory;
        self.timeout = timeout;
        self
    }

    pub fn queries(&self) -> &Queries {
        &self.queries
    }

    pub fn catalog(&self) -> &CatalogClient {
        &self.catalog
    }

    pub fn nodes(&self) -> &NodeClients {
        &self.nodes
    }

    /// A session whose default schema is `database` (when given), its
    /// memory limited to `memory_limit` bytes when given (else to the
    /// coordinator's per-query limit).
    pub fn session(
        &self,
        database: Option<&str>,
        query_id: &str,
        memory_limit: Option<usize>,
        access: &Access,
    ) -> SessionContext {
        let config = SessionConfig::new()
            .with_create_default_catalog_and_schema(false)
            .with_default_catalog_and_schema(CATALOG_NAME, database.unwrap_or(DEFAULT_SCHEMA))
            .with_information_schema(true)
            .with_target_partitions(4)
            .with_sort_spill_reservation_bytes(strata_storage::memory::sort_spill_reservation(
                self.memory.per_query(memory_limit),
            ))
            .with_option_extension(StrataOptions::default())
            .with_extension(Arc::new(MissingShards::default()));
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_runtime_env(self.memory.runtime(memory_limit))
            .with_default_features()
            .with_analyzer_rule(Arc::new(distinct_on::DistinctOnAsWindow))
            .with_physical_optimizer_rule(Arc::new(DistributePlan))
            .build();
        let ctx = SessionContext::new_with_state(state);
        ctx.register_catalog(
            CATALOG_NAME,
            Arc::new(StrataCatalog {
                catalog: self.catalog.clone(),
                nodes: self.nodes.clone(),
                handoff: self.writer.handoff().clone(),
                queries: self.queries.clone(),
                query_id: query_id.to_string(),
                access: access.clone(),
            }),
        );
        ctx
    }

    /// Parses and plans `sql` on a query thread, once its size is checked.
    /// Fails with a 403 unless `access` may run the statement.
    pub async fn plan(
        &self,
        sql: &str,
        database: Option<&str>,
        query_id: &str,
        access: &Access,
    ) -> Result<Planned> {
        // KILL is parsed here, not on the query threads: it must get
        // through while runaway queries hold all of them.
        if sql.len() <= 64 << 10 {
            if let Ok(Some(kill @ OwnStatement::KillQuery { .. })) =
                ddl::parse(ddl::strip_leading_comments(sql))
            {
                access.require(None, Level::Admin)?;
                return Ok(Planned::Own(kill));
            }
        }
        let this = self.clone();
        let (sql, database, query_id, access) = (
            sql.to_string(),
            database.map(str::to_string),
            query_id.to_string(),
            access.clone(),
        );
        self.executor
            .run(async move {
                let planned = this
                    .plan_here(&sql, database.as_deref(), &query_id, &access)
                    .await?;
                this.authorize(&planned, database.as_deref(), &query_id, &access)
                    .await?;
                Ok(planned)
            })
            .await
            .context(QuerySnafu)?
    }

    /// Whether `access` may run `planned`: read on what a query scans,
    /// write for INSERT and DELETE (and read on an INSERT's source), admin
    /// on the database for DDL, admin on `*` for KILL QUERY and the
    /// system tables.
    async fn authorize(
        &self,
        planned: &Planned,
        database: Option<&str>,
        query_id: &str,
        access: &Access,
    ) -> Result<()> {
        if matches!(access, Access::Open) {
            return Ok(());
        }
        match planned {
            Planned::Sql(df) => access.require_reads(df.logical_plan(), database),
            Planned::Own(own) => match own {
                OwnStatement::CreateDatabase { name, .. }
                | OwnStatement::DropDatabase { name, .. }
                | OwnStatement::AlterDatabase { name, .. }
                | OwnStatement::SetConsistency { name, .. } => {
                    access.require(Some(name), Level::Admin)
                }
                OwnStatement::DropTable { database, .. } => {
                    access.require(Some(database), Level::Admin)
                }
                // Lists the databases the token may read.
                OwnStatement::ShowDatabases => Ok(()),
                OwnStatement::Delete(d) => access.require(Some(&d.database), Level::Write),
                OwnStatement::Insert(i) => {
                    access.require(Some(&i.database), Level::Write)?;
                    if !i.is_values {
                        let source = self
                            .plan_query(&i.source, i.session_database.as_deref(), query_id, access)
                            .await?;
                        access
                            .require_reads(source.logical_plan(), i.session_database.as_deref())?;
                    }
                    Ok(())
                }
                OwnStatement::KillQuery { .. } => access.require(None, Level::Admin),
            },
        }
    }

    async fn plan_here(
        &self,
        sql: &str,
        database: Option<&str>,
        query_id: &str,
        access: &Access,
    ) -> Result<Planned> {
        limits::check_sql(sql).map_err(|reason| Error::BadStatement { reason })?;
        // strata's own statements, whatever comments or hint come first.
        let own_sql = ddl::strip_leading_comments(sql);
        if let Some(own) = ddl::parse(own_sql).map_err(|reason| Error::BadStatement { reason })? {
            return Ok(Planned::Own(own));
        }
        if let Some(own) = ddl::parse_drop_table(own_sql, database)
            .map_err(|reason| Error::BadStatement { reason })?
        {
            return Ok(Planned::Own(own));
        }
        if delete::is_delete(own_sql) {
            let d = delete::parse(own_sql, database, &self.catalog.state())
                .map_err(|reason| Error::BadStatement { reason })?;
            return Ok(Planned::Own(OwnStatement::Delete(d)));
        }
        if insert::is_insert(own_sql) {
            let i = insert::parse(own_sql, database, &self.catalog.state())
                .map_err(|reason| Error::BadStatement { reason })?;
            return Ok(Planned::Own(OwnStatement::Insert(i)));
        }
        let df = self.plan_query(sql, database, query_id, access).await?;
        Ok(Planned::Sql(Box::new(df)))
    }

    /// Plans a query (no DDL, no DML) with DataFusion.
    async fn plan_query(
        &self,
        sql: &str,
        database: Option<&str>,
        query_id: &str,
        access: &Access,
    ) -> Result<DataFrame> {
        let hints = hints::settings(sql).map_err(|reason| Error::BadStatement { reason })?;
        let mut memory_limit = None;
        // A statement may lower the operator's limits; raising them is an
        // admin's call.
        let may_raise_limits = access.allows(None, Level::Admin);
        for (key, value) in &hints {
            if key == "strata.memory_limit_mib" {
                let mib = value
                    .parse::<usize>()
                    .ok()
                    .filter(|m| (1..=1 << 30).contains(m))
                    .ok_or_else(|| Error::BadStatement {
                        reason: format!(
                            "hint `strata.memory_limit_mib = {value}`: a whole number of MiB, at \
                             least 1"
                        ),
                    })?;
                let over = self.memory.per_query(None).is_some_and(|l| mib << 20 > l);
                if over && !may_raise_limits {
                    return Err(Error::PermissionDenied {
                        reason: format!(
                            "strata.memory_limit_mib = {mib} is above the coordinator's \
                             --query-memory-limit-mib; raising it needs admin permission on *"
                        ),
                    });
                }
                memory_limit = Some(mib << 20);
            }
            if key == "strata.statement_timeout" {
                let asked = parse_timeout(value)?;
                let over = self
                    .timeout
                    .is_some_and(|max| asked.is_none_or(|t| t > max));
                if over && !may_raise_limits {
                    return Err(Error::PermissionDenied {
                        reason: format!(
                            "strata.statement_timeout = '{value}' is beyond the coordinator's \
                             --query-timeout; raising it needs admin permission on *"
                        ),
                    });
                }
            }
            if key == "strata.completeness" {
                completeness::parse(value).map_err(|reason| Error::BadStatement { reason })?;
            }
        }
        let ctx = self.session(database, query_id, memory_limit, access);
        if !hints.is_empty() {
            let state = ctx.state_ref();
            let mut state = state.write();
            for (key, value) in hints {
                state
                    .config_mut()
                    .options_mut()
                    .set(&key, &value)
                    .map_err(|e| Error::BadStatement {
                        reason: format!("hint `{key} = {value}`: {e}"),
                    })?;
            }
        }
        let options = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(true);
        ctx.sql_with_options(sql, options)
            .await
            .map_err(|e| match permission_denied(&e) {
                Some(reason) => Error::PermissionDenied { reason },
                None => self.not_found(explain_missing_database(e, database), database),
            })
    }

    /// Runs a planned statement; SQL runs on the query threads. The query
    /// is listed in `system.queries` until its stream ends or is dropped,
    /// and ends early, with an error saying why, when it is killed or
    /// runs past its timeout.
    pub async fn execute(
        &self,
        planned: Planned,
        info: &RunInfo,
    ) -> Result<SendableRecordBatchStream> {
        let mut handle = self.queries.start(info);
        match planned {
            Planned::Sql(df) => {
                let options = df
                    .task_ctx()
                    .session_config()
                    .options()
                    .extensions
                    .get::<StrataOptions>()
                    .cloned()
                    .unwrap_or_default();
                let timeout = match options.statement_timeout.as_str() {
                    "" => self.timeout.map(|t| (t, "--query-timeout")),
                    t => parse_timeout(t)?.map(|t| (t, "strata.statement_timeout")),
                };
                if let Some((t, source)) = timeout {
                    handle.set_timeout(t, source);
                }
                let schema = Arc::new(df.schema().as_arrow().clone());
                let (queries, id) = (self.queries.clone(), info.query_id.clone());
                let start = async move {
                    let task_ctx = Arc::new(df.task_ctx());
                    let plan = df.create_physical_plan().await?;
                    queries.set_plan(&id, plan.clone());
                    datafusion::physical_plan::execute_stream(plan, task_ctx)
                };
                let stream = self
                    .executor
                    .run_stream_until(schema, start, handle.cancel_token());
                Ok(track(
                    until_cancelled(stream, handle.cancel_token()),
                    handle,
                ))
            }
            Planned::Own(own) => {
                let schema = Planned::Own(own.clone()).schema();
                match self.run_own(own, schema.clone(), &info.access).await {
                    Ok(batches) => {
                        let stream =
                            MemoryStream::try_new(batches, schema, None).context(QuerySnafu)?;
                        Ok(track(Box::pin(stream), handle))
                    }
                    Err(e) => {
                        handle.finish(Some(e.to_string()));
                        Err(e)
                    }
                }
            }
        }
    }

    /// Plans and runs `sql`, collecting the result.
    pub async fn query(
        &self,
        sql: &str,
        database: Option<&str>,
        access: &Access,
    ) -> Result<Vec<RecordBatch>> {
        let info = RunInfo::new(sql, database).with_access(access);
        let planned = self.plan(sql, database, &info.query_id, access).await?;
        let stream = self.execute(planned, &info).await?;
        datafusion::physical_plan::common::collect(stream)
            .await
            .context(QuerySnafu)
    }

    /// Runs an INSERT on a query thread: its source is planned and run, and
    /// its rows written as they stream. Returns the rows written.
    pub async fn insert(&self, statement: insert::InsertStatement) -> Result<usize> {
        let this = self.clone();
        self.executor
            .run(async move { this.insert_here(statement).await })
            .await
            .context(QuerySnafu)?
    }

    async fn insert_here(&self, s: insert::InsertStatement) -> Result<usize> {
        use futures::StreamExt;
        let query_id = uuid::Uuid::new_v4().to_string();
        // Its read permissions were checked when it was planned.
        let df = self
            .plan_query(
                &s.source,
                s.session_database.as_deref(),
                &query_id,
                &Access::Open,
            )
            .await?;
        let columns = insert::table_columns(&self.catalog.state(), &s.database, &s.table);
        let targets = insert::targets(&s, &columns, df.schema().as_arrow())
            .map_err(|reason| Error::BadStatement { reason })?;
        let now_ns = chrono::Utc::now()
            .timestamp_nanos_opt()
            .expect("the clock is within the nanosecond range");
        let mut stream = df.execute_stream().await.context(QuerySnafu)?;
        let mut written = 0;
        let mut first_row = 1;
        let stopped = |written: usize, e: Error| match written {
            0 => e,
            _ => Error::InsertIncomplete {
                written,
                source: Box::new(e),
            },
        };
        while let Some(batch) = stream.next().await {
            let batch = batch.context(QuerySnafu).map_err(|e| stopped(written, e))?;
            let mut offset = 0;
            while offset < batch.num_rows() {
                let chunk = batch.slice(offset, INSERT_CHUNK_ROWS.min(batch.num_rows() - offset));
                let lines =
                    insert::to_lines(&s.table, &targets, &chunk, first_row).map_err(|reasons| {
                        let reason = reasons.join("; ");
                        stopped(written, Error::BadStatement { reason })
                    })?;
                let outcome = self
                    .writer
                    .write_lines(&s.database, lines, None, now_ns)
                    .await
                    .map_err(|e| Error::InsertInterrupted {
                        written,
                        source: Box::new(e),
                    })?;
                written += outcome.lines_written;
                if outcome.lines_rejected > 0 {
                    let reason = outcome
                        .errors
                        .iter()
                        .take(10)
                        .map(|e| format!("row {}: {}", e.line_number, e.message))
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Err(stopped(written, Error::BadStatement { reason }));
                }
                first_row += chunk.num_rows();
                offset += chunk.num_rows();
            }
        }
        Ok(written)
    }

    /// Sends a DELETE to every replica of every shard whose window overlaps
    /// its time range. A replica that cannot apply it now gets it through
    /// hinted handoff, in order with its writes; the DELETE fails when a
    /// shard has no replica that applied it (it is still queued for them).
    pub async fn delete(&self, d: delete::DeleteStatement) -> Result<()> {
        use prost::Message;
        let state = self.catalog.state();
        let db = state
            .databases
            .get(&d.database)
            .ok_or_else(|| Error::DatabaseNotFound {
                database: d.database.clone(),
            })?;
        let mut sends = vec![];
        for group in &db.shard_groups {
            if group.end_ns <= d.predicate.min_time || group.start_ns > d.predicate.max_time {
                continue;
            }
            for shard in &group.shards {
                let body = strata_proto::storage::v1::DeleteRequest {
                    database: d.database.clone(),
                    table: d.table.clone(),
                    shard_id: shard.id,
                    predicate: Some(d.predicate.clone()),
                }
                .encode_to_vec();
                let (state, shard_id, d) = (&state, shard.id, &d);
                sends.push(async move {
                    let (applied, notes) = self
                        .writer
                        .delete_shard(state, &d.database, &d.table, shard_id, &shard.owners, body)
                        .await;
                    (shard_id, applied, notes)
                });
            }
        }
        let failures: Vec<String> = futures::future::join_all(sends)
            .await
            .into_iter()
            .filter(|(_, applied, _)| !applied)
            .map(|(shard, _, notes)| format!("shard {shard}: {}", notes.join("; ")))
            .collect();
        if !failures.is_empty() {
            return Err(Error::DeleteIncomplete {
                table: d.table,
                failures: failures.join("; "),
            });
        }
        Ok(())
    }

    /// Cancels a query: this coordinator's, and its fragments on every
    /// storage node that is up (a query of another coordinator loses its
    /// fragments and fails there). Not found anywhere is an error.
    pub async fn kill(&self, query_id: &str) -> Result<()> {
        let reason = format!("query {query_id} was killed (KILL QUERY)");
        let here = self.queries.cancel(query_id, &reason);
        let state = self.catalog.state();
        let asks = state
            .nodes
            .values()
            .filter(|n| n.state == strata_catalog::model::NodeState::Up)
            .map(|n| {
                let (nodes, addr, reason) = (self.nodes.clone(), n.flight_addr.clone(), &reason);
                async move {
                    tokio::time::timeout(
                        Duration::from_secs(5),
                        crate::node_clients::cancel_fragments(&nodes, &addr, query_id, reason),
                    )
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or(0)
                }
            });
        let fragments: usize = futures::future::join_all(asks).await.into_iter().sum();
        if !here && fragments == 0 {
            return Err(Error::QueryNotFound {
                query_id: query_id.to_string(),
            });
        }
        tracing::info!(query_id, on_nodes = fragments, "query killed");
        Ok(())
    }

    /// An unknown table is NOT_FOUND (404), not a bad statement; when the
    /// session's database does not exist, that is what is reported.
    fn not_found(&self, e: datafusion::error::DataFusionError, database: Option<&str>) -> Error {
        let msg = e.message().to_string();
        let table_missing = matches!(e.find_root(), datafusion::error::DataFusionError::Plan(_))
            && msg.contains("table '")
            && msg.contains("not found");
        if !table_missing {
            return Error::Query { source: e };
        }
        match database {
            Some(db) if !self.catalog.state().databases.contains_key(db) => {
                Error::DatabaseNotFound {
                    database: db.to_string(),
                }
            }
            _ => Error::TableNotFound { message: msg },
        }
    }

    async fn run_own(
        &self,
        own: OwnStatement,
        schema: SchemaRef,
        access: &Access,
    ) -> Result<Vec<RecordBatch>> {
        match own {
            OwnStatement::CreateDatabase {
                name,
                options,
                if_not_exists,
            } => {
                let state = self.catalog.state();
                let nodes = state.nodes.len();
                let exists = state.databases.contains_key(&name);
                if !(exists && if_not_exists) && options.replication_factor as usize > nodes {
                    return Err(Error::BadStatement {
                        reason: format!(
                            "REPLICATION {} is more than the {nodes} storage node(s) of this \
                             cluster: each replica of a shard needs a node of its own",
                            options.replication_factor
                        ),
                    });
                }
                self.catalog
                    .execute(Command::CreateDatabase {
                        name,
                        options,
                        if_not_exists,
                    })
                    .await
                    .context(CatalogSnafu)?;
                Ok(vec![])
            }
            OwnStatement::AlterDatabase { name, shard_key } => {
                self.catalog
                    .execute(Command::SetShardKey {
                        database: name,
                        shard_key,
                    })
                    .await
                    .context(CatalogSnafu)?;
                Ok(vec![])
            }
            OwnStatement::SetConsistency { name, consistency } => {
                self.catalog
                    .execute(Command::SetWriteConsistency {
                        database: name,
                        consistency,
                    })
                    .await
                    .context(CatalogSnafu)?;
                Ok(vec![])
            }
            OwnStatement::DropDatabase { name, if_exists } => {
                self.catalog
                    .execute(Command::DropDatabase { name, if_exists })
                    .await
                    .context(CatalogSnafu)?;
                Ok(vec![])
            }
            OwnStatement::DropTable {
                database,
                table,
                if_exists,
            } => {
                self.catalog
                    .execute(Command::DropTable {
                        database,
                        table,
                        if_exists,
                        at_ms: strata_catalog::liveness::now_ms(),
                    })
                    .await
                    .context(CatalogSnafu)?;
                Ok(vec![])
            }
            OwnStatement::Delete(d) => {
                self.delete(d).await?;
                Ok(vec![])
            }
            OwnStatement::KillQuery { query_id } => {
                self.kill(&query_id).await?;
                Ok(vec![])
            }
            OwnStatement::Insert(i) => {
                let written = self.insert(i).await?;
                let count = arrow::array::UInt64Array::from(vec![written as u64]);
                Ok(vec![RecordBatch::try_new(schema, vec![Arc::new(count)])
                    .context(crate::error::ArrowSnafu)?])
            }
            OwnStatement::ShowDatabases => {
                let state = self.catalog.state();
                let dbs: Vec<_> = state
                    .databases
                    .values()
                    .filter(|d| access.allows(Some(&d.name), Level::Read))
                    .collect();
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from_iter_values(
                        dbs.iter().map(|d| d.name.as_str()),
                    )),
                    Arc::new(StringArray::from_iter(
                        dbs.iter()
                            .map(|d| d.options.retention_ns.map(format_duration)),
                    )),
                    Arc::new(StringArray::from_iter_values(
                        dbs.iter()
                            .map(|d| format_duration(d.options.shard_group_duration_ns)),
                    )),
                    Arc::new(UInt32Array::from_iter_values(
                        dbs.iter().map(|d| d.options.replication_factor),
                    )),
                    Arc::new(UInt32Array::from_iter(
                        dbs.iter().map(|d| d.options.shards_per_group),
                    )),
                    Arc::new(StringArray::from_iter(dbs.iter().map(|d| {
                        let key = &d.options.shard_key;
                        (!key.is_empty()).then(|| key.join(", "))
                    }))),
                    Arc::new(StringArray::from_iter_values(
                        dbs.iter().map(|d| d.options.consistency.name()),
                    )),
                ];
                Ok(vec![
                    RecordBatch::try_new(schema, columns).context(crate::error::ArrowSnafu)?
                ])
            }
        }
    }
}

/// DataFusion reports an unknown table; when the cause is an unknown or
/// missing database say so, since that is what the user has to fix.
fn explain_missing_database(
    e: datafusion::error::DataFusionError,
    database: Option<&str>,
) -> datafusion::error::DataFusionError {
    let msg = e.message().to_string();
    if msg.contains("table") && msg.contains("not found") && database.is_none() {
        return datafusion::error::DataFusionError::Plan(format!(
            "{msg}. No database was selected: qualify the table as database.table, or send the \
             'database' header (strata sql --database NAME)"
        ));
    }
    e
}

/// A statement timeout: a duration such as `30s`; `0` or `off`: none.
fn parse_timeout(value: &str) -> Result<Option<Duration>> {
    match value.trim() {
        "0" | "off" => return Ok(None),
        _ => {}
    }
    match ddl::parse_duration(value.trim()) {
        Ok(0) => Ok(None),
        Ok(ns) if ns > 0 => Ok(Some(Duration::from_nanos(ns as u64))),
        _ => Err(Error::BadStatement {
            reason: format!(
                "statement_timeout must be a duration such as '30s' or '500ms' (or 'off'), not \
                 '{value}'"
            ),
        }),
    }
}

/// `stream`, counting its rows into the query's record and recording how
/// it ended; dropped before its end, the query is recorded as cancelled.
fn track(stream: SendableRecordBatchStream, handle: QueryHandle) -> SendableRecordBatchStream {
    struct Tracked {
        inner: SendableRecordBatchStream,
        handle: Option<QueryHandle>,
    }
    impl futures::Stream for Tracked {
        type Item = datafusion::error::Result<RecordBatch>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            let item = futures::ready!(self.inner.as_mut().poll_next(cx));
            match &item {
                Some(Ok(b)) => {
                    if let Some(h) = &self.handle {
                        h.add_rows(b.num_rows());
                    }
                }
                Some(Err(e)) => {
                    if let Some(h) = self.handle.take() {
                        h.finish(Some(e.to_string()));
                    }
                }
                None => {
                    if let Some(h) = self.handle.take() {
                        h.finish(None);
                    }
                }
            }
            std::task::Poll::Ready(item)
        }
    }
    impl datafusion::execution::RecordBatchStream for Tracked {
        fn schema(&self) -> SchemaRef {
            self.inner.schema()
        }
    }
    Box::pin(Tracked {
        inner: stream,
        handle: Some(handle),
    })
}
