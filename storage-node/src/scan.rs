//! Running a scan ticket on this node: the shard data of one table (memtable
//! batches and Parquet files) as a DataFusion table, with the ticket's
//! filters, projection and limit applied.
//!
//! Filters are pushed to the Parquet reader for row-group pruning and
//! evaluated again above it, so results are exact.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{Column, DataFusionError};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::{MemTable, TableProvider, TableType};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{col, Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::Serializeable;
use strata_proto::storage::v1::ScanTicket;

use crate::engine::{Engine, ScanSnapshot};
use crate::flush::adapt_batch;

/// One table's rows on this node, restricted to some shards.
pub struct ShardTable {
    schema: SchemaRef,
    snapshot: ScanSnapshot,
}

impl std::fmt::Debug for ShardTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardTable")
            .field("batches", &self.snapshot.batches.len())
            .field("files", &self.snapshot.files.len())
            .finish()
    }
}

#[async_trait]
impl TableProvider for ShardTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let mut plans: Vec<Arc<dyn ExecutionPlan>> = vec![];
        if !self.snapshot.batches.is_empty() {
            let batches: Vec<RecordBatch> = self
                .snapshot
                .batches
                .iter()
                .map(|b| adapt_batch(b, &self.schema))
                .collect::<Result<_, _>>()?;
            let mem = MemTable::try_new(self.schema.clone(), vec![batches])?;
            plans.push(mem.scan(state, projection, filters, limit).await?);
        }
        if !self.snapshot.files.is_empty() {
            let urls = self
                .snapshot
                .files
                .iter()
                .map(|p| ListingTableUrl::parse(p.to_string_lossy()))
                .collect::<Result<Vec<_>, _>>()?;
            let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                .with_file_extension(".parquet");
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(self.schema.clone());
            let files = ListingTable::try_new(config)?;
            plans.push(files.scan(state, projection, filters, limit).await?);
        }
        if plans.is_empty() {
            let schema = match projection {
                Some(p) => Arc::new(self.schema.project(p)?),
                None => self.schema.clone(),
            };
            return Ok(Arc::new(EmptyExec::new(schema)));
        }
        UnionExec::try_new(plans)
    }
}

/// Decodes the table schema a ticket carries.
pub fn ticket_schema(ticket: &ScanTicket) -> Result<SchemaRef, DataFusionError> {
    let schema = Schema::try_from(arrow_flight::IpcMessage(
        ticket.table_schema_ipc.clone().into(),
    ))
    .map_err(|e| DataFusionError::Plan(format!("scan ticket has a bad schema: {e}")))?;
    Ok(Arc::new(schema))
}

/// Runs a scan ticket against the engine and streams the result.
pub async fn execute_ticket(
    ctx: &SessionContext,
    engine: &Engine,
    ticket: &ScanTicket,
) -> Result<SendableRecordBatchStream, DataFusionError> {
    let schema = ticket_schema(ticket)?;
    let snapshot = engine.snapshot(&ticket.table, &ticket.shard_ids);
    let table = Arc::new(ShardTable { schema, snapshot });
    let mut df = ctx.read_table(table)?;
    let task_ctx = ctx.task_ctx();
    for f in &ticket.filters {
        df = df.filter(Expr::from_bytes_with_ctx(f, &task_ctx)?)?;
    }
    if let Some(p) = &ticket.projection {
        let exprs: Vec<Expr> = p
            .columns
            .iter()
            .map(|c| col(Column::new_unqualified(c)))
            .collect();
        df = df.select(exprs)?;
    }
    if let Some(limit) = ticket.limit {
        df = df.limit(0, Some(limit as usize))?;
    }
    df.execute_stream().await
}
