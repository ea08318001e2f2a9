//! The storage node's Arrow Flight service. Each (database, table, shard)
//! the node holds is a Flight, with descriptor path `[database, table,
//! shard_id]`. `DoPut` with such a descriptor writes the batches durably;
//! `DoGet` runs a plan fragment ([`crate::fragment`]) and streams the result.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, IpcMessage, PollInfo, PutResult, SchemaAsIpc,
    SchemaResult, Ticket,
};
use datafusion::prelude::SessionContext;
use futures::{stream, FutureExt, Stream, StreamExt, TryStreamExt};
use prost::Message;
use strata_proto::storage::v1::{DeleteRequest, ScanTicket, WriteAck};
use strata_proto::CATALOG_VERSION_HEADER;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::engine::{Engine, TableKey};
use crate::error::{into_status, StorageError};
use crate::fragment::{metrics_message, operator_metrics, scan_ticket_bytes, Fragment};
use crate::running::{hold, until_cancelled, FragmentInfo};
use crate::validate::{Invalid, TableCheck};
use strata_catalog::CatalogClient;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct StorageFlightService {
    pub node_id: u64,
    pub engine: Arc<Engine>,
    pub ctx: SessionContext,
    /// What batches are checked against, and which shards this node owns.
    pub catalog: CatalogClient,
    /// When the catalog was last refreshed for an unknown name.
    pub last_refresh: tokio::sync::Mutex<Option<std::time::Instant>>,
    /// Applies the catalog's drops; a write first waits for any pending.
    pub drops: Arc<crate::drops::Dropper>,
    /// When each shard was last repaired here.
    pub repairs: crate::digest::RepairLog,
    /// Where fragments run: not on the runtime serving gRPC.
    pub executor: crate::executor::QueryExecutor,
    /// Each fragment's memory pool.
    pub memory: crate::memory::QueryMemory,
    /// The fragments running now.
    pub fragments: crate::running::Fragments,
}

/// Parses a descriptor path `[database, table, shard_id]`.
fn parse_path(desc: &FlightDescriptor) -> Result<(String, String, u64), Status> {
    let bad = || {
        Status::invalid_argument(format!(
            "a storage node flight is named by the path [database, table, shard_id]; got {:?}",
            desc.path
        ))
    };
    if desc.r#type != DescriptorType::Path as i32 || desc.path.len() != 3 {
        return Err(bad());
    }
    let shard_id = desc.path[2].parse::<u64>().map_err(|_| bad())?;
    Ok((desc.path[0].clone(), desc.path[1].clone(), shard_id))
}

/// An Arrow schema as the IPC message Flight carries it in.
pub fn schema_to_ipc(schema: &Schema) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let opts = arrow::ipc::writer::IpcWriteOptions::default();
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &opts).try_into()?;
    Ok(bytes.to_vec())
}

fn schema_ipc(schema: &SchemaRef) -> Result<Vec<u8>, Status> {
    schema_to_ipc(schema).map_err(|e| Status::internal(e.to_string()))
}

impl StorageFlightService {
    fn flight_info(&self, database: &str, key: &TableKey) -> Result<Option<FlightInfo>, Status> {
        let Some(schema) = self.engine.table_schema(key) else {
            return Ok(None);
        };
        let ticket = ScanTicket {
            database: database.to_string(),
            table: key.table.clone(),
            shard_ids: vec![key.shard_id],
            table_schema_ipc: schema_ipc(&schema)?,
            ..Default::default()
        };
        let ticket = scan_ticket_bytes(ticket).map_err(|e| Status::internal(e.to_string()))?;
        let desc = FlightDescriptor::new_path(vec![
            database.to_string(),
            key.table.clone(),
            key.shard_id.to_string(),
        ]);
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_descriptor(desc)
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)));
        Ok(Some(info))
    }
}

impl StorageFlightService {
    /// The tag columns of a table, as the catalog knows them.
    fn tags_of(&self, database: &str, table: &str) -> Vec<String> {
        self.catalog
            .state()
            .databases
            .get(database)
            .and_then(|d| d.tables.get(table))
            .map(|t| t.tag_names().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Brings this node's copy of the catalog up to `version` (the
    /// sender's) when it is older; without a version, refreshes it, at
    /// most once per [`REFRESH_INTERVAL`] however many requests ask, so a
    /// flood of requests naming unknown things cannot flood the catalog.
    async fn catch_up(&self, version: Option<u64>) -> Result<(), Status> {
        let unavailable = |e: strata_catalog::Error| {
            Status::unavailable(format!(
                "node {} cannot read the catalog: {e}",
                self.node_id
            ))
        };
        match version {
            Some(v) if v <= self.catalog.state().version => Ok(()),
            Some(v) => self.catalog.wait_for_version(v).await.map_err(unavailable),
            None => {
                let mut last = self.last_refresh.lock().await;
                if last.is_some_and(|t| t.elapsed() < REFRESH_INTERVAL) {
                    return Ok(());
                }
                let result = self.catalog.refresh().await.map_err(unavailable);
                *last = Some(std::time::Instant::now());
                result
            }
        }
    }

    /// Refuses a request for a shard that the catalog does not place on
    /// this node in `database`, once this node's copy of the catalog has
    /// caught up with the sender's.
    ///
    /// A read (`reading`) may name shards the catalog has dropped since the
    /// sender planned it (retention, DROP DATABASE): they hold nothing any
    /// more, and reading them answers no rows, as a query planned a moment
    /// later would.
    async fn check_owned(
        &self,
        database: &str,
        shard_ids: &[u64],
        version: Option<u64>,
        reading: bool,
    ) -> Result<(), Status> {
        let missing = |state: &strata_catalog::CatalogData| {
            let db = state.databases.get(database);
            shard_ids.iter().copied().find(|id| {
                if reading && state.shard_dropped(*id) {
                    return false;
                }
                !db.is_some_and(|d| {
                    d.shard_groups.iter().any(|g| {
                        g.shards
                            .iter()
                            .any(|s| s.id == *id && s.owners.contains(&self.node_id))
                    })
                })
            })
        };
        // With the sender's version, catching up costs nothing once this
        // copy has it; without one, only a miss asks the catalog.
        if version.is_some() || missing(&self.catalog.state()).is_some() {
            self.catch_up(version).await?;
        }
        match missing(&self.catalog.state()) {
            None => Ok(()),
            Some(shard_id) => Err(into_status(StorageError::ShardNotHeld {
                node_id: self.node_id,
                database: database.to_string(),
                shard_id,
            })),
        }
    }

    /// Checks every batch against the table's columns in the catalog (as
    /// new as the sender's, see [`Self::check_owned`]).
    fn check_batches(
        &self,
        database: &str,
        table: &str,
        batches: &[RecordBatch],
    ) -> Result<(), Invalid> {
        let state = self.catalog.state();
        let t = TableCheck::new(&state, database, table)?;
        batches.iter().try_for_each(|b| t.check(b))
    }
}

/// What the `shard_digest` action asks for (JSON).
#[derive(serde::Deserialize)]
struct DigestRequest {
    shard_ids: Vec<u64>,
    /// Width of a time bucket, in nanoseconds.
    bucket_ns: Option<i64>,
}

/// What the `shard_rows` action asks for (JSON).
#[derive(serde::Deserialize)]
struct RowsRequest {
    table: String,
    shard_id: u64,
    start_ns: i64,
    end_ns: i64,
    /// Only the rows of these series ranges.
    #[serde(default)]
    series: Option<SeriesRanges>,
}

/// Series ranges `wanted` of `parts` (by series hash) of a table.
#[derive(serde::Deserialize)]
struct SeriesRanges {
    database: String,
    parts: u32,
    wanted: Vec<u32>,
}

/// What the `shard_parts` action asks for (JSON): the digest of each of
/// `parts` series ranges of one table of one shard in a time range.
#[derive(serde::Deserialize)]
struct PartsRequest {
    database: String,
    table: String,
    shard_id: u64,
    start_ns: i64,
    end_ns: i64,
    parts: u32,
}

/// What the `repaired` action records (JSON).
#[derive(serde::Deserialize)]
struct RepairedRequest {
    shard_ids: Vec<u64>,
    at_ms: i64,
}

/// Time bucket of a shard digest unless the request names one: an hour.
pub const DEFAULT_DIGEST_BUCKET_NS: i64 = 3_600_000_000_000;

/// How often a node refreshes its catalog for requests that name what it
/// does not know and carry no catalog version.
const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(200);

/// Most Arrow bytes one `DoPut` may carry; the write router sends far less
/// (a request body is at most 256 MiB of text, cut into 8 MiB chunks).
pub const MAX_PUT_BYTES: usize = 256 << 20;

/// Refuses a message whose Arrow body is compressed: writers send plain
/// IPC, and decompressing allocates the size a compressed body declares,
/// which a hostile client could make any size at all.
fn refuse_compressed(fd: FlightData) -> Result<FlightData, FlightError> {
    if fd.data_header.is_empty() {
        return Ok(fd);
    }
    let compressed = match arrow::ipc::root_as_message(&fd.data_header) {
        Ok(m) => {
            m.header_as_record_batch()
                .is_some_and(|b| b.compression().is_some())
                || m.header_as_dictionary_batch()
                    .and_then(|d| d.data())
                    .is_some_and(|b| b.compression().is_some())
        }
        // The decoder reports what is wrong with it.
        Err(_) => false,
    };
    if compressed {
        return Err(FlightError::ProtocolError(
            "compressed Arrow IPC bodies are not accepted; send them uncompressed".into(),
        ));
    }
    Ok(fd)
}

/// The catalog version a request carries, if any.
fn request_version(metadata: &tonic::metadata::MetadataMap) -> Option<u64> {
    metadata
        .get(CATALOG_VERSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

#[tonic::async_trait]
impl FlightService for StorageFlightService {
    type HandshakeStream = BoxStream<HandshakeResponse>;
    type ListFlightsStream = BoxStream<FlightInfo>;
    type DoGetStream = BoxStream<FlightData>;
    type DoPutStream = BoxStream<PutResult>;
    type DoExchangeStream = BoxStream<FlightData>;
    type DoActionStream = BoxStream<arrow_flight::Result>;
    type ListActionsStream = BoxStream<ActionType>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Ok(Response::new(Box::pin(stream::empty())))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let mut infos = vec![];
        for (db, key) in self.engine.tables() {
            if let Some(info) = self.flight_info(&db, &key)? {
                infos.push(Ok(info));
            }
        }
        Ok(Response::new(Box::pin(stream::iter(infos))))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (db, table, shard_id) = parse_path(request.get_ref())?;
        let key = TableKey { shard_id, table };
        self.flight_info(&db, &key)?
            .map(Response::new)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "node {} holds no data for table '{db}.{}' in shard {shard_id}",
                    self.node_id, key.table
                ))
            })
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "storage nodes answer GetFlightInfo directly",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let (db, table, shard_id) = parse_path(request.get_ref())?;
        let key = TableKey { shard_id, table };
        let schema = self.engine.table_schema(&key).ok_or_else(|| {
            Status::not_found(format!(
                "node {} holds no data for table '{db}.{}' in shard {shard_id}",
                self.node_id, key.table
            ))
        })?;
        Ok(Response::new(SchemaResult {
            schema: schema_ipc(&schema)?.into(),
        }))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let started = std::time::Instant::now();
        // The coordinator's query id, for the log lines of this fragment
        // (the ticket carries it too).
        let sent_id = request
            .metadata()
            .get(strata_proto::QUERY_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let fragment = Fragment::decode(&request.into_inner().ticket, &self.ctx.task_ctx())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (sent, report_metrics) = (fragment.plan.clone(), fragment.report_metrics);
        let memory_limit = fragment.memory_limit;
        let leaves = fragment.leaves();
        for leaf in &leaves {
            self.check_owned(&leaf.database, &leaf.shard_ids, None, true)
                .await?;
        }
        let span = tracing::info_span!(
            "fragment",
            query_id = %sent_id.as_deref().unwrap_or(&fragment.query_id),
            tables = ?leaves.iter().map(|l| l.table.as_str()).collect::<Vec<_>>(),
            shards = ?leaves.iter().flat_map(|l| l.shard_ids.iter()).collect::<Vec<_>>()
        );
        let query_id = fragment.query_id.clone();
        let plan = fragment
            .bind(&self.ctx, &self.engine)
            .instrument(span.clone())
            .await
            .map_err(|e| into_status(StorageError::Query { source: e }))?;
        span.in_scope(|| tracing::debug!("fragment started"));
        // Listed while it runs, cancellable by query id; its operators draw
        // on a memory pool of its own and run on the query threads.
        let (guard, cancel) = self.fragments.register(FragmentInfo {
            query_id,
            tables: leaves.iter().map(|l| l.table.clone()).collect(),
            shards: leaves
                .iter()
                .flat_map(|l| l.shard_ids.iter().copied())
                .collect(),
            started_ms: strata_catalog::liveness::now_ms(),
        });
        let spill_reserve =
            crate::memory::sort_spill_reservation(self.memory.per_query(memory_limit));
        let task_ctx = Arc::new(
            datafusion::execution::TaskContext::from(&self.ctx)
                .with_session_config(
                    self.ctx
                        .copied_config()
                        .with_sort_spill_reservation_bytes(spill_reserve),
                )
                .with_runtime(self.memory.runtime(memory_limit)),
        );
        let run = {
            let plan = plan.clone();
            async move { datafusion::physical_plan::execute_stream(plan, task_ctx) }
                .instrument(span)
        };
        let batches = self
            .executor
            .run_stream_until(plan.schema(), run, cancel.clone());
        let batches = hold(until_cancelled(batches, cancel), guard);
        // The schema goes first even when no batch follows.
        let schema = batches.schema();
        let flight = FlightDataEncoderBuilder::new()
            .with_dictionary_handling(DictionaryHandling::Resend)
            .with_schema(schema)
            .build(batches.map_err(|e| {
                FlightError::Tonic(Box::new(into_status(StorageError::Query { source: e })))
            }))
            .map_err(Status::from);
        if !report_metrics {
            return Ok(Response::new(Box::pin(flight)));
        }
        // Measured once the last batch has gone, so every count is final.
        let node_id = self.node_id;
        let report = stream::once(async move {
            let message =
                metrics_message(node_id, started.elapsed(), operator_metrics(&sent, &plan));
            Ok(FlightData {
                app_metadata: message.into(),
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(flight.chain(report))))
    }

    #[tracing::instrument(skip_all, fields(node = self.node_id))]
    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let catalog_version = request_version(request.metadata());
        let mut input = request.into_inner();
        let first = input
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("DoPut carried no data"))?;
        let desc = first.flight_descriptor.clone().ok_or_else(|| {
            Status::invalid_argument(
                "DoPut needs a descriptor with path [database, table, shard_id]",
            )
        })?;
        let (db, table, shard_id) = parse_path(&desc)?;
        // Everything that can be refused before the data is read is.
        self.check_owned(&db, &[shard_id], catalog_version, false)
            .await?;
        let invalid = |reason: String| {
            into_status(StorageError::InvalidWrite {
                database: db.clone(),
                table: table.clone(),
                shard_id,
                reason,
            })
        };
        let state = self.catalog.state();
        TableCheck::new(&state, &db, &table).map_err(|e| invalid(e.to_string()))?;
        drop(state);
        self.engine
            .check_memory()
            .map_err(|e| into_status(StorageError::Engine { source: e }))?;
        let mut bytes = 0usize;
        let data = stream::once(async { Ok(first) })
            .chain(input.map_err(FlightError::from))
            .and_then(move |fd| {
                bytes += fd.data_header.len() + fd.data_body.len();
                let checked = if bytes > MAX_PUT_BYTES {
                    Err(FlightError::ProtocolError(format!(
                        "a DoPut may carry at most {MAX_PUT_BYTES} bytes"
                    )))
                } else {
                    refuse_compressed(fd)
                };
                futures::future::ready(checked)
            });
        // A write may carry batches of different columns, each after its
        // own schema message. Arrow's decoder panics on some malformed
        // messages: that is a bad request too.
        let decoded: Vec<arrow_flight::decode::DecodedFlightData> = std::panic::AssertUnwindSafe(
            arrow_flight::decode::FlightDataDecoder::new(data).try_collect::<Vec<_>>(),
        )
        .catch_unwind()
        .await
        .map_err(|_| Status::invalid_argument("bad Arrow data in DoPut: malformed IPC message"))?
        .map_err(|e| Status::invalid_argument(format!("bad Arrow data in DoPut: {e}")))?;
        let batches: Vec<RecordBatch> = decoded
            .into_iter()
            .filter_map(|d| match d.payload {
                arrow_flight::decode::DecodedPayload::RecordBatch(b) => Some(b),
                _ => None,
            })
            .collect();
        self.check_batches(&db, &table, &batches)
            .map_err(|e| invalid(e.to_string()))?;
        let rows = batches.iter().map(|b| b.num_rows() as u64).sum();
        // A table dropped and written again: the drop goes first, or it
        // would take the new rows with it.
        let state = self.catalog.state();
        if self.drops.table_drop_pending(&state) {
            self.drops
                .apply(&state)
                .await
                .map_err(|e| into_status(StorageError::Engine { source: e }))?;
        }
        let node = self.node_id.to_string();
        let written = self
            .engine
            .write_batches(&db, &table, shard_id, batches)
            .await;
        let registry = strata_metrics::global();
        if let Err(e) = written {
            registry
                .counter(
                    "strata_storage_write_errors_total",
                    "Writes (DoPut) a storage node refused or failed.",
                    &[("node", &node)],
                )
                .inc();
            return Err(into_status(StorageError::Engine { source: e }));
        }
        registry
            .counter(
                "strata_storage_rows_written_total",
                "Rows written to a storage node (each replica counts).",
                &[("node", &node)],
            )
            .inc_by(rows);
        let ack = PutResult {
            app_metadata: WriteAck { rows }.encode_to_vec().into(),
        };
        Ok(Response::new(Box::pin(stream::iter([Ok(ack)]))))
    }

    async fn do_exchange(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        Err(Status::unimplemented(
            "storage nodes do not support DoExchange",
        ))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        match request.get_ref().r#type.as_str() {
            strata_proto::HEALTH_ACTION => {
                let h = self.engine.flush_health();
                let body = serde_json::json!({
                    "node_id": self.node_id,
                    "flush_failures": h.consecutive_failures,
                    "last_flush_error": h.last_error,
                });
                let result = arrow_flight::Result {
                    body: body.to_string().into(),
                };
                Ok(Response::new(Box::pin(stream::iter([Ok(result)]))))
            }
            "flush" => {
                self.engine
                    .flush()
                    .await
                    .map_err(|e| into_status(StorageError::Engine { source: e }))?;
                Ok(Response::new(Box::pin(stream::empty())))
            }
            "compact" => {
                self.engine
                    .compact(2)
                    .await
                    .map_err(|e| into_status(StorageError::Engine { source: e }))?;
                Ok(Response::new(Box::pin(stream::empty())))
            }
            "delete" => {
                let req = DeleteRequest::decode(request.get_ref().body.as_ref()).map_err(|e| {
                    Status::invalid_argument(format!("the delete action's body is unreadable: {e}"))
                })?;
                let predicate = req.predicate.ok_or_else(|| {
                    Status::invalid_argument("the delete action needs a predicate")
                })?;
                let removed = self
                    .engine
                    .delete(&req.database, &req.table, req.shard_id, predicate.into())
                    .await
                    .map_err(|e| into_status(StorageError::Engine { source: e }))?;
                tracing::info!(
                    database = %req.database, table = %req.table, shard = req.shard_id,
                    rows_in_memory = removed, "deleted"
                );
                Ok(Response::new(Box::pin(stream::empty())))
            }
            strata_proto::RUNNING_FRAGMENTS_ACTION => {
                let body = serde_json::to_vec(&self.fragments.list())
                    .map_err(|e| Status::internal(e.to_string()))?;
                let result = arrow_flight::Result { body: body.into() };
                Ok(Response::new(Box::pin(stream::iter([Ok(result)]))))
            }
            strata_proto::CANCEL_QUERY_ACTION => {
                #[derive(serde::Deserialize)]
                struct Body {
                    query_id: String,
                    #[serde(default)]
                    reason: String,
                }
                let b: Body = serde_json::from_slice(&request.get_ref().body).map_err(|e| {
                    Status::invalid_argument(format!(
                        "cancel_query wants {{\"query_id\", \"reason\"}}: {e}"
                    ))
                })?;
                let reason = match b.reason.is_empty() {
                    true => format!("query {} was cancelled", b.query_id),
                    false => b.reason,
                };
                let n = self.fragments.cancel_query(&b.query_id, &reason);
                if n > 0 {
                    tracing::info!(query_id = %b.query_id, fragments = n, %reason, "cancelled");
                }
                let body = serde_json::json!({ "cancelled": n }).to_string();
                let result = arrow_flight::Result { body: body.into() };
                Ok(Response::new(Box::pin(stream::iter([Ok(result)]))))
            }
            strata_proto::SHARD_DIGEST_ACTION => {
                let req: DigestRequest =
                    serde_json::from_slice(&request.get_ref().body).map_err(|e| {
                        Status::invalid_argument(format!(
                            "the shard_digest action's body is unreadable: {e}"
                        ))
                    })?;
                if req.shard_ids.len() > 100_000 {
                    return Err(Status::invalid_argument(
                        "shard_digest takes at most 100000 shards at a time",
                    ));
                }
                // A bucket per row would make the answer as large as the data.
                if req.bucket_ns.is_some_and(|b| b < 1_000_000_000) {
                    return Err(Status::invalid_argument(
                        "shard_digest buckets are at least 1 s wide",
                    ));
                }
                let mut digests = Vec::with_capacity(req.shard_ids.len());
                for shard_id in req.shard_ids {
                    let d = crate::digest::shard_digest(
                        &self.ctx,
                        &self.engine,
                        shard_id,
                        req.bucket_ns.unwrap_or(DEFAULT_DIGEST_BUCKET_NS),
                    )
                    .await
                    .map_err(|e| into_status(StorageError::Query { source: e }))?;
                    digests.push(crate::digest::ShardDigest {
                        last_repair_ms: self.repairs.get(shard_id),
                        ..d
                    });
                }
                let body = serde_json::to_vec(&digests).expect("digests serialize");
                let result = arrow_flight::Result { body: body.into() };
                Ok(Response::new(Box::pin(stream::iter([Ok(result)]))))
            }
            strata_proto::SHARD_ROWS_ACTION => {
                let req: RowsRequest =
                    serde_json::from_slice(&request.get_ref().body).map_err(|e| {
                        Status::invalid_argument(format!(
                            "the shard_rows action's body is unreadable: {e}"
                        ))
                    })?;
                let batches = crate::digest::table_rows(
                    &self.ctx,
                    &self.engine,
                    &req.table,
                    req.shard_id,
                    Some((req.start_ns, req.end_ns)),
                )
                .await
                .map_err(|e| into_status(StorageError::Query { source: e }))?;
                let batches = match &req.series {
                    None => batches,
                    Some(r) => {
                        let tags = self.tags_of(&r.database, &req.table);
                        crate::digest::keep_parts(batches, &tags, r.parts, &r.wanted)
                            .map_err(|e| into_status(StorageError::Query { source: e }))?
                    }
                };
                // One Arrow IPC stream per answer, of at most 8,192 rows.
                let mut answers = vec![];
                for b in batches {
                    let mut offset = 0;
                    while offset < b.num_rows() {
                        let part = b.slice(offset, 8192.min(b.num_rows() - offset));
                        offset += part.num_rows();
                        let mut ipc = vec![];
                        let mut w =
                            arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &part.schema())
                                .map_err(|e| Status::internal(e.to_string()))?;
                        w.write(&part)
                            .map_err(|e| Status::internal(e.to_string()))?;
                        w.finish().map_err(|e| Status::internal(e.to_string()))?;
                        drop(w);
                        answers.push(Ok(arrow_flight::Result { body: ipc.into() }));
                    }
                }
                Ok(Response::new(Box::pin(stream::iter(answers))))
            }
            strata_proto::SHARD_PARTS_ACTION => {
                let req: PartsRequest =
                    serde_json::from_slice(&request.get_ref().body).map_err(|e| {
                        Status::invalid_argument(format!(
                            "the shard_parts action's body is unreadable: {e}"
                        ))
                    })?;
                if !(1..=4096).contains(&req.parts) {
                    return Err(Status::invalid_argument(
                        "shard_parts splits into 1 to 4096 series ranges",
                    ));
                }
                let batches = crate::digest::table_rows(
                    &self.ctx,
                    &self.engine,
                    &req.table,
                    req.shard_id,
                    Some((req.start_ns, req.end_ns)),
                )
                .await
                .map_err(|e| into_status(StorageError::Query { source: e }))?;
                let tags = self.tags_of(&req.database, &req.table);
                let parts = crate::digest::parts_digest(&batches, &tags, req.parts)
                    .map_err(|e| into_status(StorageError::Query { source: e }))?;
                let body = serde_json::to_vec(&parts).expect("digests serialize");
                let result = arrow_flight::Result { body: body.into() };
                Ok(Response::new(Box::pin(stream::iter([Ok(result)]))))
            }
            strata_proto::REPAIRED_ACTION => {
                let req: RepairedRequest = serde_json::from_slice(&request.get_ref().body)
                    .map_err(|e| {
                        Status::invalid_argument(format!(
                            "the repaired action's body is unreadable: {e}"
                        ))
                    })?;
                self.repairs.record(&req.shard_ids, req.at_ms);
                Ok(Response::new(Box::pin(stream::empty())))
            }
            other => Err(Status::invalid_argument(format!(
                "unknown action '{other}'; storage nodes know: health, flush, compact, delete, \
                 shard_digest, shard_parts, shard_rows, repaired"
            ))),
        }
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let flush = ActionType {
            r#type: "flush".into(),
            description: "write all in-memory rows to Parquet".into(),
        };
        let compact = ActionType {
            r#type: "compact".into(),
            description: "merge each shard table's Parquet files into one".into(),
        };
        let delete = ActionType {
            r#type: "delete".into(),
            description: "delete the rows of a shard's table that match a DeleteRequest".into(),
        };
        Ok(Response::new(Box::pin(stream::iter([
            Ok(flush),
            Ok(compact),
            Ok(delete),
        ]))))
    }
}
