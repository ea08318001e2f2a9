//! The storage node's Arrow Flight service. Each (database, table, shard)
//! the node holds is a Flight, with descriptor path `[database, table,
//! shard_id]`. `DoPut` with such a descriptor writes the batches durably;
//! `DoGet` runs a [`ScanTicket`] and streams the result.

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
use futures::{stream, Stream, StreamExt, TryStreamExt};
use prost::Message;
use strata_proto::storage::v1::{DeleteRequest, ScanTicket, WriteAck};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::engine::{Engine, TableKey};
use crate::error::{into_status, StorageError};
use crate::scan::execute_ticket;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

pub struct StorageFlightService {
    pub node_id: u64,
    pub engine: Arc<Engine>,
    pub ctx: SessionContext,
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
        let desc = FlightDescriptor::new_path(vec![
            database.to_string(),
            key.table.clone(),
            key.shard_id.to_string(),
        ]);
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_descriptor(desc)
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket.encode_to_vec())));
        Ok(Some(info))
    }
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
        let ticket = ScanTicket::decode(request.into_inner().ticket)
            .map_err(|e| Status::invalid_argument(format!("bad scan ticket: {e}")))?;
        let span = tracing::info_span!(
            "scan",
            query_id = %ticket.query_id,
            table = %ticket.table,
            shards = ?ticket.shard_ids
        );
        let batches = execute_ticket(&self.ctx, &self.engine, &ticket)
            .instrument(span)
            .await
            .map_err(|e| into_status(StorageError::Query { source: e }))?;
        let flight = FlightDataEncoderBuilder::new()
            .with_dictionary_handling(DictionaryHandling::Resend)
            .build(batches.map_err(|e| FlightError::ExternalError(Box::new(e))))
            .map_err(Status::from);
        Ok(Response::new(Box::pin(flight)))
    }

    #[tracing::instrument(skip_all, fields(node = self.node_id))]
    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
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
        let data = stream::once(async { Ok(first) }).chain(input.map_err(FlightError::from));
        let batches: Vec<RecordBatch> =
            arrow_flight::decode::FlightRecordBatchStream::new_from_flight_data(data)
                .try_collect()
                .await
                .map_err(|e| Status::invalid_argument(format!("bad Arrow data in DoPut: {e}")))?;
        let Some(first_batch) = batches.first() else {
            return Ok(Response::new(Box::pin(stream::empty())));
        };
        let batch = arrow::compute::concat_batches(&first_batch.schema(), &batches)
            .map_err(|e| Status::invalid_argument(format!("DoPut batches disagree: {e}")))?;
        let rows = batch.num_rows() as u64;
        self.engine
            .write(&db, &table, shard_id, batch)
            .await
            .map_err(|e| into_status(StorageError::Engine { source: e }))?;
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
            other => Err(Status::invalid_argument(format!(
                "unknown action '{other}'; storage nodes know: flush, compact, delete"
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
