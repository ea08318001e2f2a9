//! The Flight SQL front door: statements, prepared statements, updates and
//! the metadata commands (catalogs, schemas, tables, table types, SqlInfo)
//! that ADBC, JDBC and pyarrow clients use to browse.
//!
//! The database a query runs in comes from the `database` request header
//! (also accepted: `bucket`, `bucket-name`, `iox-namespace-name`, as
//! InfluxDB 3 clients send); tables may also be named `database.table`.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, Any, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt,
    SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest,
    HandshakeResponse, Ticket,
};
use datafusion::execution::SendableRecordBatchStream;
use futures::{stream, Stream, StreamExt, TryStreamExt};
use parking_lot::Mutex;
use prost::Message;
use serde::{Deserialize, Serialize};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use strata_storage::flight::schema_to_ipc;

use crate::auth::{credential_from_header, Access, Auth};
use crate::queries::RunInfo;
use crate::query::catalog_provider::CATALOG_NAME;
use crate::query::ddl::OwnStatement;
use crate::query::{Planned, QueryEngine};
use strata_catalog::tokens::Level;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// Authenticates every Flight SQL call (the token in `authorization`:
/// `Bearer`, or `Basic` with the token as password as in the handshake) and
/// hands the handlers who it is as a request extension.
#[derive(Clone)]
pub struct FlightAuth(pub Auth);

impl tonic::service::Interceptor for FlightAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let credential = presented_token(request.metadata())?;
        let access = self
            .0
            .authenticate(credential.as_deref())
            .map_err(|e| e.into_status())?;
        request.extensions_mut().insert(access);
        Ok(request)
    }
}

/// The token in a call's `authorization` metadata, if any.
fn presented_token(metadata: &MetadataMap) -> Result<Option<String>, Status> {
    match metadata.get("authorization") {
        None => Ok(None),
        Some(value) => {
            let value = value.to_str().map_err(|_| {
                Status::unauthenticated("the authorization header is not readable text")
            })?;
            credential_from_header(value)
                .map(Some)
                .map_err(|e| e.into_status())
        }
    }
}

/// Who makes the call, as [`FlightAuth`] found.
fn access<T>(request: &Request<T>) -> Result<Access, Status> {
    request
        .extensions()
        .get::<Access>()
        .cloned()
        .ok_or_else(|| Status::internal("the call was not authenticated"))
}

/// Request headers that name the database, in order of preference.
const DATABASE_HEADERS: [&str; 4] = ["database", "bucket", "bucket-name", "iox-namespace-name"];

pub struct StrataFlightSql {
    engine: QueryEngine,
    sql_info: Arc<SqlInfoData>,
    plans: Mutex<PlanCache>,
}

/// What a statement or prepared-statement handle holds: the SQL and the
/// database it was planned in, so that `DoGet` runs the same thing.
#[derive(Serialize, Deserialize)]
struct StatementHandle {
    sql: String,
    database: Option<String>,
    /// The plan `GetFlightInfo` made, kept for the `DoGet` that follows
    /// ([`PlanCache`]); planned again when it is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    plan_id: Option<String>,
}

/// How long a plan made by `GetFlightInfo` waits for its `DoGet`.
const PLAN_TTL: Duration = Duration::from_secs(60);
/// How many such plans wait at most; the oldest go first.
const MAX_WAITING_PLANS: usize = 1024;

/// Statements planned by `GetFlightInfo`, each taken by the first `DoGet`
/// of its ticket, so a statement is planned once. A ticket redeemed again,
/// late, on another coordinator, or after the catalog changed (a new shard
/// group, say) is planned from its SQL.
#[derive(Default)]
struct PlanCache {
    /// id -> (when, catalog version, who planned it, query id, plan).
    waiting: HashMap<String, (Instant, u64, String, String, Planned)>,
    /// Ids in the order they came, for expiry.
    order: VecDeque<String>,
}

impl PlanCache {
    /// Drops expired plans, and the oldest while more than `room` wait.
    fn sweep(&mut self, room: usize) {
        let now = Instant::now();
        while let Some(oldest) = self.order.front() {
            let keep = self
                .waiting
                .get(oldest)
                .is_some_and(|(at, ..)| now.duration_since(*at) <= PLAN_TTL);
            if keep && self.waiting.len() <= room {
                break;
            }
            let oldest = self.order.pop_front().expect("an oldest plan");
            self.waiting.remove(&oldest);
        }
    }

    fn put(&mut self, version: u64, who: &str, query_id: String, planned: Planned) -> String {
        self.sweep(MAX_WAITING_PLANS - 1);
        let id = uuid::Uuid::new_v4().to_string();
        self.waiting.insert(
            id.clone(),
            (Instant::now(), version, who.to_string(), query_id, planned),
        );
        self.order.push_back(id.clone());
        id
    }

    /// The plan waiting under `id`, when it was made with catalog
    /// `version` for the same token (`who`).
    fn take(&mut self, id: &str, version: u64, who: &str) -> Option<(String, Planned)> {
        let taken = self.waiting.remove(id);
        if taken.is_some() {
            self.order.retain(|o| o != id);
        }
        self.sweep(MAX_WAITING_PLANS);
        let (at, planned_at, planned_by, query_id, planned) = taken?;
        (at.elapsed() <= PLAN_TTL && planned_at == version && planned_by == who)
            .then_some((query_id, planned))
    }
}

impl StatementHandle {
    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("handle serializes")
    }

    fn decode(bytes: &[u8]) -> Result<Self, Status> {
        serde_json::from_slice(bytes)
            .map_err(|e| Status::invalid_argument(format!("unknown statement handle: {e}")))
    }
}

fn database_header(metadata: &MetadataMap) -> Option<String> {
    DATABASE_HEADERS.iter().find_map(|h| {
        metadata
            .get(*h)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    })
}

/// The schema clients receive: dictionary-encoded columns are sent as their
/// plain values, which every Flight SQL client reads.
fn wire_schema(schema: &SchemaRef) -> SchemaRef {
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Dictionary(_, value) => {
                f.as_ref().clone().with_data_type(value.as_ref().clone())
            }
            _ => f.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A FlightInfo whose single endpoint's ticket is `ticket`, to be redeemed
/// on this same server.
fn flight_info(
    schema: &Schema,
    ticket: Vec<u8>,
    descriptor: FlightDescriptor,
) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
        .with_descriptor(descriptor))
}

fn encode_stream(schema: SchemaRef, batches: SendableRecordBatchStream) -> DoGetStream {
    let flight = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .build(batches.map_err(|e| FlightError::ExternalError(Box::new(e))))
        .map_err(|e| match e {
            FlightError::Tonic(s) => *s,
            FlightError::ExternalError(inner) => {
                match inner.downcast::<datafusion::error::DataFusionError>() {
                    Ok(df) => crate::error::Error::Query { source: *df }.into_status(),
                    Err(other) => Status::internal(other.to_string()),
                }
            }
            other => Status::internal(other.to_string()),
        });
    Box::pin(flight)
}

/// An empty batch carrying `app_metadata` (a message without a batch or
/// schema is not one every Flight client reads).
fn note_message(schema: &SchemaRef, app_metadata: Vec<u8>) -> Result<FlightData, Status> {
    let empty = arrow::array::RecordBatch::new_empty(schema.clone());
    let mut messages = arrow_flight::utils::batches_to_flight_data(schema, vec![empty])
        .map_err(|e| Status::internal(format!("encoding the answer's note: {e}")))?;
    let mut last = messages
        .pop()
        .ok_or_else(|| Status::internal("encoding the answer's note: no message"))?;
    last.app_metadata = app_metadata.into();
    Ok(last)
}

/// The FlightInfo of a metadata command, whose ticket is the command.
fn command_info(
    cmd: &impl ProstMessageExt,
    schema: &Schema,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    flight_info(schema, cmd.as_any().encode_to_vec(), request.into_inner()).map(Response::new)
}

/// Streams one metadata result batch.
fn batch_response<E: std::fmt::Display>(
    batch: Result<arrow::array::RecordBatch, E>,
) -> Result<Response<DoGetStream>, Status> {
    let batch = batch.map_err(|e| Status::internal(e.to_string()))?;
    let flight = FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(stream::iter([Ok(batch)]))
        .map_err(Status::from);
    Ok(Response::new(Box::pin(flight)))
}

impl StrataFlightSql {
    pub fn new(engine: QueryEngine) -> Self {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "strata");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        info.append(SqlInfo::FlightSqlServerReadOnly, false);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        info.append(SqlInfo::SqlDdlCatalog, false);
        info.append(SqlInfo::SqlDdlSchema, true);
        info.append(SqlInfo::SqlDdlTable, false);
        Self {
            engine,
            sql_info: Arc::new(info.build().expect("static SqlInfo is valid")),
            plans: Mutex::default(),
        }
    }

    /// Plans the statement for its schema and keeps the plan for the
    /// `DoGet` of the ticket returned.
    async fn plan_info(
        &self,
        handle: StatementHandle,
        request: Request<FlightDescriptor>,
    ) -> Result<FlightInfo, Status> {
        let access = access(&request)?;
        let descriptor = request.into_inner();
        let query_id = uuid::Uuid::new_v4().to_string();
        let version = self.engine.catalog().state().version;
        let planned = self
            .engine
            .plan(&handle.sql, handle.database.as_deref(), &query_id, &access)
            .await
            .map_err(|e| e.into_status())?;
        let schema = wire_schema(&planned.schema());
        let plan_id = self
            .plans
            .lock()
            .put(version, access.name(), query_id, planned);
        let handle = StatementHandle {
            plan_id: Some(plan_id),
            ..handle
        };
        let ticket = TicketStatementQuery {
            statement_handle: handle.encode().into(),
        };
        flight_info(&schema, ticket.as_any().encode_to_vec(), descriptor)
    }

    async fn run(
        &self,
        handle: StatementHandle,
        request: Request<Ticket>,
    ) -> Result<DoGetStream, Status> {
        let access = access(&request)?;
        let client = request.remote_addr();
        let waiting = handle.plan_id.as_deref().and_then(|id| {
            let version = self.engine.catalog().state().version;
            self.plans.lock().take(id, version, access.name())
        });
        let (query_id, waiting) = match waiting {
            Some((query_id, planned)) => (query_id, Some(planned)),
            None => (uuid::Uuid::new_v4().to_string(), None),
        };
        let span = tracing::info_span!("query", %query_id, database = ?handle.database);
        async {
            tracing::debug!(sql = %handle.sql, planned = waiting.is_some(), "running");
            let planned = match waiting {
                Some(p) => p,
                None => self
                    .engine
                    .plan(&handle.sql, handle.database.as_deref(), &query_id, &access)
                    .await
                    .map_err(|e| e.into_status())?,
            };
            let schema = wire_schema(&planned.schema());
            let missing = planned.missing_shards();
            let info = RunInfo {
                query_id: query_id.clone(),
                sql: handle.sql.clone(),
                database: handle.database.clone(),
                client: client.map(|a| a.to_string()),
                access: access.clone(),
            };
            let batches = self
                .engine
                .execute(planned, &info)
                .await
                .map_err(|e| e.into_status())?;
            // A best-effort answer without some shards ends with a message
            // whose app_metadata names them.
            let note_schema = schema.clone();
            let note = stream::once(async move {
                let meta = missing.and_then(|m| m.app_metadata())?;
                Some(note_message(&note_schema, meta))
            })
            .filter_map(futures::future::ready);
            Ok(Box::pin(encode_stream(schema, batches).chain(note)) as DoGetStream)
        }
        .instrument(span)
        .await
    }

    /// Runs a statement sent as an update: an INSERT answers the rows it
    /// wrote; any other statement the rows of its result.
    async fn run_update(
        &self,
        sql: String,
        database: Option<String>,
        client: Option<std::net::SocketAddr>,
        access: &Access,
    ) -> Result<i64, Status> {
        let info = RunInfo::new(&sql, database.as_deref())
            .with_client(client)
            .with_access(access);
        let planned = self
            .engine
            .plan(&sql, database.as_deref(), &info.query_id, access)
            .await
            .map_err(|e| e.into_status())?;
        if let Planned::Own(OwnStatement::Insert(insert)) = planned {
            let written = self
                .engine
                .insert(insert)
                .await
                .map_err(|e| e.into_status())?;
            return Ok(written as i64);
        }
        let stream = self
            .engine
            .execute(planned, &info)
            .await
            .map_err(|e| e.into_status())?;
        let batches = datafusion::physical_plan::common::collect(stream)
            .await
            .map_err(|e| crate::error::Error::Query { source: e }.into_status())?;
        Ok(batches.iter().map(|b| b.num_rows() as i64).sum())
    }
}

#[tonic::async_trait]
impl FlightSqlService for StrataFlightSql {
    type FlightService = StrataFlightSql;

    /// Basic credentials (the token as password; [`FlightAuth`] checked
    /// them) are answered with the token as a bearer token in the
    /// `authorization` response header, which clients send from then on.
    async fn do_handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<
        Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>,
        Status,
    > {
        let token = presented_token(request.metadata())?;
        let resp = HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        };
        let mut response = Response::new(Box::pin(stream::iter([Ok(resp)]))
            as Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>);
        if let Some(token) = token {
            let bearer = format!("Bearer {token}")
                .parse()
                .map_err(|_| Status::unauthenticated("the token is not valid header text"))?;
            response.metadata_mut().insert("authorization", bearer);
        }
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = StatementHandle {
            sql: query.query,
            database: database_header(request.metadata()),
            plan_id: None,
        };
        let info = self.plan_info(handle, request).await?;
        Ok(Response::new(info))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = StatementHandle::decode(&ticket.statement_handle)?;
        Ok(Response::new(self.run(handle, request).await?))
    }

    async fn get_flight_info_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let handle = StatementHandle::decode(&cmd.prepared_statement_handle)?;
        let info = self.plan_info(handle, request).await?;
        Ok(Response::new(info))
    }

    async fn do_get_prepared_statement(
        &self,
        cmd: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let handle = StatementHandle::decode(&cmd.prepared_statement_handle)?;
        Ok(Response::new(self.run(handle, request).await?))
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let handle = StatementHandle {
            sql: query.query,
            database: database_header(request.metadata()),
            plan_id: None,
        };
        let query_id = uuid::Uuid::new_v4().to_string();
        let planned = self
            .engine
            .plan(
                &handle.sql,
                handle.database.as_deref(),
                &query_id,
                &access(&request)?,
            )
            .await
            .map_err(|e| e.into_status())?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle.encode().into(),
            dataset_schema: schema_to_ipc(&wire_schema(&planned.schema()))
                .map_err(|e| Status::internal(e.to_string()))?
                .into(),
            parameter_schema: Default::default(),
        })
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        _request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles carry their statement; there is nothing to release.
        Ok(())
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let params: Vec<FlightData> = request.into_inner().try_collect().await?;
        if params.iter().any(|d| !d.data_body.is_empty()) {
            return Err(Status::unimplemented(
                "prepared statement parameters are not supported yet; inline the values in the SQL",
            ));
        }
        Ok(DoPutPreparedStatementResult {
            prepared_statement_handle: Some(query.prepared_statement_handle),
        })
    }

    async fn do_put_statement_update(
        &self,
        cmd: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let database = database_header(request.metadata());
        let access = access(&request)?;
        self.run_update(cmd.query, database, request.remote_addr(), &access)
            .await
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query, &query.into_builder().schema(), request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(CATALOG_NAME);
        batch_response(builder.build())
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query, &query.clone().into_builder().schema(), request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let access = access(&request)?;
        let mut builder = query.into_builder();
        let state = self.engine.catalog().state();
        let readable = state
            .databases
            .keys()
            .filter(|db| access.allows(Some(db), Level::Read));
        for db in readable {
            builder.append(CATALOG_NAME, db);
        }
        builder.append(CATALOG_NAME, "information_schema");
        batch_response(builder.build())
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query, &query.clone().into_builder().schema(), request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let access = access(&request)?;
        let mut builder = query.into_builder();
        let state = self.engine.catalog().state();
        let readable = state
            .databases
            .iter()
            .filter(|(name, _)| access.allows(Some(name), Level::Read));
        for (db_name, db) in readable {
            for (name, table) in &db.tables {
                builder
                    .append(
                        CATALOG_NAME,
                        db_name,
                        name,
                        "TABLE",
                        &wire_schema(&table.arrow_schema()),
                    )
                    .map_err(|e| Status::internal(e.to_string()))?;
            }
        }
        batch_response(builder.build())
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(&query, &query.into_builder().schema(), request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append("TABLE");
        builder.append("VIEW");
        batch_response(builder.build())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        command_info(
            &query,
            &query.clone().into_builder(&self.sql_info).schema(),
            request,
        )
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        batch_response(query.into_builder(&self.sql_info).build())
    }

    async fn do_get_fallback(
        &self,
        _request: Request<Ticket>,
        message: Any,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        Err(Status::unimplemented(format!(
            "strata does not serve this Flight SQL ticket type: {}",
            message.type_url
        )))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::ddl::OwnStatement;

    fn planned() -> Planned {
        Planned::Own(OwnStatement::ShowDatabases)
    }

    #[test]
    fn a_waiting_plan_is_taken_once_and_only_under_its_catalog() {
        let mut cache = PlanCache::default();
        let id = cache.put(7, "reader", "q1".into(), planned());
        let (query_id, _) = cache.take(&id, 7, "reader").expect("the plan waits");
        assert_eq!(query_id, "q1");
        assert!(
            cache.take(&id, 7, "reader").is_none(),
            "taken by the first DoGet"
        );
        assert!(cache.take("unknown", 7, "reader").is_none());
        let id = cache.put(7, "reader", "q3".into(), planned());
        assert!(
            cache.take(&id, 7, "other").is_none(),
            "planned for another token"
        );
        let id = cache.put(7, "reader", "q2".into(), planned());
        assert!(
            cache.take(&id, 8, "reader").is_none(),
            "the catalog changed"
        );
        assert!(cache.waiting.is_empty() && cache.order.is_empty());
    }

    #[test]
    fn the_oldest_plans_go_first_when_full() {
        let mut cache = PlanCache::default();
        let ids: Vec<String> = (0..MAX_WAITING_PLANS + 10)
            .map(|i| cache.put(1, "-", format!("q{i}"), planned()))
            .collect();
        assert_eq!(cache.waiting.len(), MAX_WAITING_PLANS);
        assert_eq!(cache.order.len(), MAX_WAITING_PLANS);
        assert!(cache.take(&ids[0], 1, "-").is_none());
        assert!(cache.take(&ids[9], 1, "-").is_none());
        assert!(cache.take(&ids[10], 1, "-").is_some());
        assert!(cache.take(ids.last().unwrap(), 1, "-").is_some());
        // Taken plans leave no trace that would evict live ones.
        assert_eq!(cache.order.len(), MAX_WAITING_PLANS - 2);
    }
}
