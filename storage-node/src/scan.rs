//! Running a scan ticket on this node: the shard data of one table (memtable
//! batches and Parquet files) as a DataFusion table, with the ticket's
//! filters, projection and limit applied.
//!
//! Rows are deduplicated on the primary key ([`ShardScanExec`]). Filters on
//! key columns (tags, time) are applied to each Parquet file below the
//! merge, the only place where that is safe, as a `FilterExec` right above
//! the file scan: DataFusion's physical filter pushdown makes it the Parquet
//! predicate, so row groups and pages are pruned. Every filter is evaluated
//! again above the scan, so results are exact.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::compute::SortOptions;
use arrow::datatypes::{Schema, SchemaRef};
use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{Column, DFSchema, DataFusionError};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::datasource::physical_plan::parquet::ParquetRowSelection;
use datafusion::datasource::physical_plan::ParquetSource;
use datafusion::datasource::physical_plan::{FileScanConfigBuilder, FileSource as DataFileSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{col, Expr, SortExpr, TableProviderFilterPushDown};
use datafusion::object_store::ObjectMeta;
use datafusion::physical_expr::expressions::Column as PhysicalColumn;
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, LexOrdering, OrderingRequirements, PhysicalExpr,
    PhysicalSortExpr,
};
use datafusion::physical_plan::distribution_requirements::InputDistributionRequirements;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::Serializeable;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use parquet::arrow::arrow_reader::RowSelection;
use strata_proto::storage::v1::ScanTicket;

use crate::dedup::{
    dedup_sorted, dedup_sorted_chunks, is_key_column, key_columns, split_owned, tag_columns,
};
use crate::delete::{retain_all, DeletePredicate};
use crate::engine::{Engine, FileSource, MemBatch, ScanSnapshot};
use crate::flush::{adapt_batch, widen_time_range};
use crate::last_value::{LastLookup, LastRows};
use crate::merge::MergeDedup;
use crate::predicate::{tag_values, time_range};
use crate::series::{rows_in, SeriesFilter};
use datafusion::execution::memory_pool::MemoryLimit;

/// One table's rows on this node, restricted to some shards.
pub struct ShardTable {
    schema: SchemaRef,
    snapshot: ScanSnapshot,
}

impl ShardTable {
    pub fn new(schema: SchemaRef, snapshot: ScanSnapshot) -> Self {
        Self { schema, snapshot }
    }
}

impl std::fmt::Debug for ShardTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardTable")
            .field("batches", &self.snapshot.batches.len())
            .field("files", &self.snapshot.files.len())
            .finish()
    }
}

/// Whether every column `e` refers to is part of the primary key, so that
/// filtering on it before deduplication cannot change the result.
fn only_key_columns(e: &Expr, schema: &SchemaRef) -> bool {
    e.column_refs().iter().all(|c| {
        schema
            .field_with_name(&c.name)
            .is_ok_and(|f| is_key_column(f.name(), f.data_type()))
    })
}

/// Whether any two of the time ranges overlap (then a key may be in both).
fn any_overlap(mut ranges: Vec<(i64, i64)>) -> bool {
    ranges.sort();
    ranges.windows(2).any(|w| w[1].0 <= w[0].1)
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
        // Deduplication needs the key columns whatever the query asked for.
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let mut read: Vec<usize> = wanted.clone();
        for (i, f) in self.schema.fields().iter().enumerate() {
            if is_key_column(f.name(), f.data_type()) && !read.contains(&i) {
                read.push(i);
            }
        }
        read.sort_unstable();
        let read_schema = Arc::new(self.schema.project(&read)?);
        let output: Vec<usize> = wanted
            .iter()
            .map(|w| {
                read.iter()
                    .position(|r| r == w)
                    .expect("wanted columns are read")
            })
            .collect();

        // Only key-column filters may prune below deduplication: a field
        // filter could drop the newest version of a point and resurrect an
        // older one.
        let key_filters: Vec<Expr> = filters
            .iter()
            .filter(|f| only_key_columns(f, &self.schema))
            .cloned()
            .collect();
        let key_predicate = match conjunction(key_filters.clone()) {
            Some(e) => {
                let df_schema = DFSchema::try_from(read_schema.as_ref().clone())?;
                Some(state.create_physical_expr(e, &df_schema)?)
            }
            None => None,
        };
        // The same key filters cut the memtable before it is merged; a
        // settled batch gives the rows of the series and time range they
        // pin without the filter running over all of it.
        let series = series_filter(&key_filters, &self.schema);
        let mut memtable = Vec::with_capacity(self.snapshot.batches.len());
        for b in &self.snapshot.batches {
            let b = match b.series.as_ref().and_then(|s| s.select(&b.batch, &series)) {
                Some(ranges) => rows_in(&b.batch, &ranges)?,
                None => b.batch.clone(),
            };
            if b.num_rows() == 0 {
                continue;
            }
            let b = adapt_batch(&b, &read_schema)?;
            let b = match &key_predicate {
                Some(p) => {
                    let keep = p.evaluate(&b)?.into_array(b.num_rows())?;
                    filter_record_batch(&b, keep.as_boolean())?
                }
                None => b,
            };
            if b.num_rows() > 0 {
                memtable.push(b);
            }
        }
        // The files that hold a series the filters pin, and the rows of
        // each that do (from the file's series index).
        let mut kept: Vec<(FileSource, Option<FileRows>)> = vec![];
        for f in &self.snapshot.files {
            let rows = match series.tags.is_empty() {
                true => None,
                false => {
                    let guard = f.guard.clone();
                    let index = tokio::task::spawn_blocking(move || guard.series())
                        .await
                        .map_err(|e| DataFusionError::External(Box::new(e)))?;
                    index.and_then(|index| {
                        let ranges = index.select(&series)?;
                        let selected: usize = ranges.iter().map(|r| r.len()).sum();
                        (selected < index.rows).then_some(FileRows {
                            ranges,
                            total: index.rows,
                        })
                    })
                }
            };
            match rows {
                Some(r) if r.ranges.is_empty() => continue,
                rows => kept.push((f.clone(), rows)),
            }
        }
        let mut ranges: Vec<(i64, i64)> =
            kept.iter().map(|(f, _)| (f.min_time, f.max_time)).collect();
        ranges.extend(widen_time_range(None, &memtable));
        // Sources that overlap in time are merged, which needs each file
        // read in its (key) order: declared to DataFusion so that it keeps
        // each file one ordered stream.
        let merge = any_overlap(ranges);
        let table_order = merge
            .then(|| key_order(&self.schema))
            .transpose()?
            .map(|(_, physical)| physical);
        let key_order = merge.then(|| key_order(&read_schema)).transpose()?;
        let mut files = Vec::with_capacity(kept.len());
        for (f, rows) in &kept {
            let file = match rows {
                Some(rows) => file_rows_scan(f, &self.schema, &read, rows, table_order.clone())?,
                None => {
                    let url = ListingTableUrl::parse(f.guard.path().to_string_lossy())?;
                    let mut options = ListingOptions::new(Arc::new(ParquetFormat::default()))
                        .with_file_extension(".parquet");
                    if let Some((logical, _)) = &key_order {
                        options = options.with_file_sort_order(vec![logical.clone()]);
                    }
                    let config = ListingTableConfig::new(url)
                        .with_listing_options(options)
                        .with_schema(self.schema.clone());
                    let table = ListingTable::try_new(config)?;
                    table.scan(state, Some(&read), &[], None).await?
                }
            };
            // A filter right above the file scan: DataFusion's physical
            // filter pushdown turns it into the Parquet predicate that
            // prunes row groups and pages.
            files.push(match &key_predicate {
                Some(p) => Arc::new(FilterExec::try_new(p.clone(), file)?),
                None => file,
            });
        }
        let sources: Vec<FileSource> = kept.into_iter().map(|(f, _)| f).collect();
        Ok(Arc::new(ShardScanExec::new(
            read_schema,
            output,
            files,
            MemtableRows {
                batches: memtable,
                deduplicated: self.snapshot.memtable_deduplicated,
            },
            key_order.map(|(_, physical)| physical),
            sources,
            limit,
        )))
    }
}

/// Some rows of a Parquet file, by file row number, of the `total` it has.
struct FileRows {
    ranges: Vec<Range<usize>>,
    total: usize,
}

/// A scan of some rows of one Parquet file: the columns `read` of
/// `schema`, in `order` when given (over `schema`).
fn file_rows_scan(
    f: &FileSource,
    schema: &SchemaRef,
    read: &[usize],
    rows: &FileRows,
    order: Option<LexOrdering>,
) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
    let path = f.guard.path();
    let size = std::fs::metadata(path)
        .map_err(|e| DataFusionError::External(Box::new(e)))?
        .len();
    let selection = RowSelection::from_consecutive_ranges(rows.ranges.iter().cloned(), rows.total);
    let url = ListingTableUrl::parse(path.to_string_lossy())?;
    let file = PartitionedFile::new_from_meta(ObjectMeta {
        location: url.prefix().clone(),
        last_modified: Default::default(),
        size,
        e_tag: None,
        version: None,
    })
    .with_extension(ParquetRowSelection::new(selection));
    let source: Arc<dyn DataFileSource> = Arc::new(ParquetSource::new(schema.clone()));
    let mut config = FileScanConfigBuilder::new(ObjectStoreUrl::local_filesystem(), source)
        .with_file(file)
        .with_projection_indices(Some(read.to_vec()))?;
    if let Some(order) = order {
        config = config.with_output_ordering(vec![order]);
    }
    Ok(DataSourceExec::from_data_source(config.build()))
}

/// What `filters` (on key columns) pin of the series and time range, for
/// a memtable lookup.
fn series_filter(filters: &[Expr], schema: &SchemaRef) -> SeriesFilter {
    let tags = tag_columns(schema)
        .into_iter()
        .map(|i| schema.field(i).name())
        .filter_map(|name| Some((name.clone(), tag_values(filters, name)?)))
        .collect();
    let time = Some(time_range(filters)).filter(|r| *r != (i64::MIN, i64::MAX));
    SeriesFilter { tags, time }
}

/// The primary-key order files are written in (tags by name, then time;
/// ascending, NULLs first), as DataFusion sort expressions over `schema`:
/// logical for the file scans, physical for [`ShardScanExec`]'s inputs.
fn key_order(schema: &SchemaRef) -> Result<(Vec<SortExpr>, LexOrdering), DataFusionError> {
    let keys = key_columns(schema);
    let logical = keys
        .iter()
        .map(|i| col(Column::new_unqualified(schema.field(*i).name())).sort(true, true))
        .collect();
    let physical = LexOrdering::new(keys.iter().map(|i| {
        PhysicalSortExpr::new(
            Arc::new(PhysicalColumn::new(schema.field(*i).name(), *i)),
            SortOptions {
                descending: false,
                nulls_first: true,
            },
        )
    }))
    .ok_or_else(|| DataFusionError::Plan("the table schema has no time or tag column".into()))?;
    Ok((logical, physical))
}

/// Memtable batches, oldest first, and whether they hold one row per key
/// already (settled memtables) or still need merging.
#[derive(Debug, Clone)]
struct MemtableRows {
    batches: Vec<RecordBatch>,
    deduplicated: bool,
}

/// Reads a table's Parquet files and memtable rows and deduplicates them on
/// the primary key (newest non-null value per field wins). Files hold one
/// row per key already; when no two sources overlap in time, file rows
/// stream through untouched and only the memtable is deduplicated.
/// Otherwise every source streams, sorted, into a k-way [`MergeDedup`], so
/// memory stays at about a batch per source whatever the data size.
pub struct ShardScanExec {
    /// Schema of what sources produce: the wanted columns plus key columns.
    read_schema: SchemaRef,
    /// Columns of `read_schema` to output.
    output: Vec<usize>,
    /// One plan per Parquet file, oldest first.
    files: Vec<Arc<dyn ExecutionPlan>>,
    /// Memtable rows (newer than every file).
    memtable: MemtableRows,
    /// Set when sources overlap in time, so keys may repeat across them:
    /// the key order every file must arrive in for the merge.
    key_order: Option<LexOrdering>,
    /// The files behind `files`, in the same order: they stay on disk until
    /// the scan is done with them, and carry the deletes that cover them.
    sources: Vec<FileSource>,
    limit: Option<usize>,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl ShardScanExec {
    fn new(
        read_schema: SchemaRef,
        output: Vec<usize>,
        files: Vec<Arc<dyn ExecutionPlan>>,
        memtable: MemtableRows,
        key_order: Option<LexOrdering>,
        sources: Vec<FileSource>,
        limit: Option<usize>,
    ) -> Self {
        let schema = Arc::new(read_schema.project(&output).expect("output columns exist"));
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Self {
            read_schema,
            output,
            files,
            memtable,
            key_order,
            sources,
            limit,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }
}

impl std::fmt::Debug for ShardScanExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardScanExec")
            .field("files", &self.files.len())
            .field("memtable_batches", &self.memtable.batches.len())
            .finish()
    }
}

impl DisplayAs for ShardScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(
            f,
            "ShardScanExec: files={}, memtable_batches={}, merge={}",
            self.files.len(),
            self.memtable.batches.len(),
            if self.key_order.is_some() {
                "sorted"
            } else {
                "memtable"
            }
        )?;
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for ShardScanExec {
    fn name(&self) -> &str {
        "ShardScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        self.files.iter().collect()
    }

    /// Each file is read as one stream (the sources are merged or
    /// concatenated here, not by partition).
    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        InputDistributionRequirements::new(vec![Distribution::SinglePartition; self.files.len()])
    }

    /// The merge needs every file in key order.
    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        let order = self.key_order.clone().map(OrderingRequirements::from);
        vec![order; self.files.len()]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(ShardScanExec::new(
            self.read_schema.clone(),
            self.output.clone(),
            children,
            self.memtable.clone(),
            self.key_order.clone(),
            self.sources.clone(),
            self.limit,
        )))
    }

    fn execute(
        &self,
        partition: usize,
        ctx: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "ShardScanExec has one partition, asked for {partition}"
            )));
        }
        let schema = self.properties.eq_properties.schema().clone();
        let read_schema = self.read_schema.clone();
        let output = self.output.clone();
        let files = self.files.clone();
        let memtable = self.memtable.clone();
        let merge_all = self.key_order.is_some();
        let memtable_deduplicated = memtable.deduplicated;
        let memtable = memtable.batches;
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let sources = self.sources.clone();
        let deletes: Vec<Vec<Arc<DeletePredicate>>> =
            self.sources.iter().map(|s| s.deletes.clone()).collect();
        let project = move |b: RecordBatch| b.project(&output).map_err(DataFusionError::from);

        let stream: BoxStream<'static, datafusion::error::Result<RecordBatch>> = if merge_all {
            // One sorted, per-key-unique input per file and per settled
            // memtable (or one for the whole memtable, merged here), oldest
            // first, merged as they stream.
            let mut inputs: Vec<BoxStream<'static, datafusion::error::Result<RecordBatch>>> =
                vec![];
            for (f, deletes) in files.into_iter().zip(deletes) {
                let stream = datafusion::physical_plan::execute_stream(f, ctx.clone())?;
                inputs.push(
                    stream
                        .map(move |b| {
                            b.and_then(|b| retain_all(&deletes, b).map_err(DataFusionError::from))
                        })
                        .boxed(),
                );
            }
            if memtable_deduplicated {
                inputs.extend(
                    memtable
                        .into_iter()
                        .map(|b| futures::stream::once(futures::future::ready(Ok(b))).boxed()),
                );
            } else if !memtable.is_empty() {
                let read_schema = read_schema.clone();
                inputs.push(
                    futures::stream::once(async move {
                        Ok::<_, DataFusionError>(dedup_sorted(&memtable, &read_schema)?)
                    })
                    .boxed(),
                );
            }
            let merge = MergeDedup::new(
                read_schema.clone(),
                inputs.len(),
                ctx.session_config().batch_size(),
            )?;
            merged_stream(merge, inputs)
        } else {
            // A memtable batch larger than a sixteenth of the query's
            // memory limit is cut into batches of the session's batch size
            // with buffers of their own (a slice would count the whole
            // batch against the limit); smaller ones go as they are, at no
            // copy.
            let rows = ctx.session_config().batch_size();
            let max_bytes = match ctx.memory_pool().memory_limit() {
                MemoryLimit::Finite(limit) => limit / 16,
                _ => usize::MAX,
            };
            let file_streams = futures::stream::iter(files.into_iter().zip(deletes))
                .then(move |(f, deletes)| {
                    let ctx = ctx.clone();
                    async move {
                        let stream = datafusion::physical_plan::execute_stream(f, ctx)?;
                        Ok::<_, DataFusionError>(stream.map(move |b| {
                            b.and_then(|b| retain_all(&deletes, b).map_err(DataFusionError::from))
                        }))
                    }
                })
                .try_flatten();
            let mem: BoxStream<'static, datafusion::error::Result<RecordBatch>> =
                if memtable_deduplicated {
                    futures::stream::iter(memtable)
                        .map(move |b| match b.get_array_memory_size() > max_bytes {
                            true => split_owned(b, rows).map_err(DataFusionError::from),
                            false => Ok(vec![b]),
                        })
                        .map_ok(|bs| futures::stream::iter(bs.into_iter().map(Ok)))
                        .try_flatten()
                        .boxed()
                } else {
                    let width = read_schema.fields().len().max(1);
                    futures::stream::once(async move {
                        let mut out = vec![];
                        dedup_sorted_chunks(&memtable, &read_schema, rows * width, |b| {
                            out.push(b);
                            Ok(())
                        })?;
                        Ok::<_, DataFusionError>(futures::stream::iter(out.into_iter().map(Ok)))
                    })
                    .try_flatten()
                    .boxed()
                };
            file_streams.chain(mem).boxed()
        };
        let stream = stream
            .try_filter(|b| futures::future::ready(b.num_rows() > 0))
            .map(move |b| b.and_then(&project))
            // Stop reading sources once the limit is reached.
            .scan(self.limit.unwrap_or(usize::MAX), |left, b| {
                if *left == 0 {
                    return futures::future::ready(None);
                }
                let b = b.map(|b| {
                    let n = b.num_rows().min(*left);
                    *left -= n;
                    b.slice(0, n)
                });
                futures::future::ready(Some(b))
            })
            .inspect_ok(move |b| {
                let _keep_files = &sources;
                baseline.record_output(b.num_rows());
            });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// Drives a [`MergeDedup`] over async inputs, reading each input only when
/// the merge needs its next batch.
fn merged_stream(
    merge: MergeDedup,
    inputs: Vec<BoxStream<'static, datafusion::error::Result<RecordBatch>>>,
) -> BoxStream<'static, datafusion::error::Result<RecordBatch>> {
    futures::stream::try_unfold((merge, inputs), |(mut merge, mut inputs)| async move {
        loop {
            while let Some(i) = merge.wanted() {
                let next = inputs[i].next().await.transpose()?;
                merge.push(i, next)?;
            }
            if let Some(b) = merge.next_batch()? {
                return Ok(Some((b, (merge, inputs))));
            }
            if merge.is_done() {
                return Ok(None);
            }
        }
    })
    .boxed()
}

/// Decodes the table schema a ticket carries.
pub fn ticket_schema(ticket: &ScanTicket) -> Result<SchemaRef, DataFusionError> {
    let schema = crate::validate::guard_decode(|| {
        Schema::try_from(arrow_flight::IpcMessage(
            ticket.table_schema_ipc.clone().into(),
        ))
        .map_err(|e| e.to_string())
    })
    .map_err(|e| DataFusionError::Plan(format!("scan ticket has a bad schema: {e}")))?;
    Ok(Arc::new(schema))
}

/// Runs a scan ticket against the engine and streams the result.
pub async fn execute_ticket(
    ctx: &SessionContext,
    engine: &Engine,
    ticket: &ScanTicket,
) -> Result<SendableRecordBatchStream, DataFusionError> {
    let plan = ticket_plan(ctx, engine, ticket).await?;
    datafusion::physical_plan::execute_stream(plan, ctx.task_ctx())
}

/// The physical plan of a scan ticket against the engine's current data.
pub async fn ticket_plan(
    ctx: &SessionContext,
    engine: &Engine,
    ticket: &ScanTicket,
) -> Result<Arc<dyn ExecutionPlan>, DataFusionError> {
    let schema = ticket_schema(ticket)?;
    let snapshot = if ticket.latest_per_series {
        // The newest rows read as a settled memtable would be, so the scan
        // (and what it counts) is the same.
        let mut batches = vec![];
        for shard in &ticket.shard_ids {
            let batch = latest_rows(ctx, engine, &ticket.table, *shard, &schema).await?;
            batches.push(MemBatch {
                batch,
                series: None,
            });
        }
        ScanSnapshot {
            batches,
            memtable_deduplicated: true,
            files: vec![],
        }
    } else {
        engine.snapshot(&ticket.table, &ticket.shard_ids)
    };
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
    df.create_physical_plan().await
}

/// The newest row of each series of `table` in one shard, as a batch of
/// `schema`: from the last-value cache, or from a deduplicated scan of
/// the shard, which then becomes the cache.
pub async fn latest_rows(
    ctx: &SessionContext,
    engine: &Engine,
    table: &str,
    shard_id: u64,
    schema: &SchemaRef,
) -> Result<RecordBatch, DataFusionError> {
    /// Gives the build up unless it was handed in.
    struct Building<'a> {
        engine: &'a Engine,
        table: &'a str,
        shard_id: u64,
        id: Option<u64>,
    }
    impl Drop for Building<'_> {
        fn drop(&mut self) {
            if let Some(id) = self.id {
                self.engine.last_abandoned(self.table, self.shard_id, id);
            }
        }
    }
    let mut building = Building {
        engine,
        table,
        shard_id,
        id: match engine.last_lookup(table, shard_id, schema) {
            LastLookup::Hit(rows) => return Ok(rows),
            LastLookup::Build(id) => Some(id),
            LastLookup::Scan => None,
        },
    };
    // Built over every column the shard holds, not only those the query's
    // schema knows, so that later queries find them.
    let snapshot = engine.snapshot(table, &[shard_id]);
    let Some(full_schema) = snapshot.schema() else {
        return Ok(RecordBatch::new_empty(schema.clone()));
    };
    let scan = Arc::new(ShardTable {
        schema: full_schema,
        snapshot,
    });
    let plan = ctx.read_table(scan)?.create_physical_plan().await?;
    let mut stream = datafusion::physical_plan::execute_stream(plan, ctx.task_ctx())?;
    let mut rows = LastRows::default();
    while let Some(b) = stream.next().await {
        rows.apply(&b?)?;
    }
    Ok(match building.id.take() {
        Some(id) => engine.last_built(table, shard_id, id, rows, schema)?,
        None => rows.to_batch(schema)?,
    })
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, StringDictionaryBuilder, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Int32Type, TimeUnit};
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::logical_expr::lit;
    use strata_proto::storage::v1::ScanTicket;

    use super::*;
    use crate::engine::EngineConfig;
    use crate::flight::schema_to_ipc;
    use crate::manifest::Manifest;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "host",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("a", DataType::Float64, true),
            Field::new("b", DataType::Float64, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]))
    }

    fn batch(rows: &[(&str, Option<f64>, Option<f64>, i64)]) -> RecordBatch {
        let mut host = StringDictionaryBuilder::<Int32Type>::new();
        rows.iter().for_each(|r| host.append_value(r.0));
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(host.finish()),
                Arc::new(rows.iter().map(|r| r.1).collect::<Float64Array>()),
                Arc::new(rows.iter().map(|r| r.2).collect::<Float64Array>()),
                Arc::new(TimestampNanosecondArray::from(
                    rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    async fn scan(engine: &Engine, filters: Vec<Expr>, projection: Option<Vec<&str>>) -> String {
        let ticket = ScanTicket {
            database: "db".into(),
            table: "cpu".into(),
            shard_ids: vec![1],
            table_schema_ipc: schema_to_ipc(&schema()).unwrap(),
            projection: projection.map(|p| strata_proto::storage::v1::Projection {
                columns: p.into_iter().map(str::to_string).collect(),
            }),
            filters: filters
                .iter()
                .map(|f| f.to_bytes().unwrap().to_vec())
                .collect(),
            limit: None,
            query_id: "test".into(),
            latest_per_series: false,
        };
        let ctx = SessionContext::new();
        let stream = execute_ticket(&ctx, engine, &ticket).await.unwrap();
        let batches = datafusion::physical_plan::common::collect(stream)
            .await
            .unwrap();
        // Rows in a stable order (sources may interleave), duplicates kept.
        let text = pretty_format_batches(&batches).unwrap().to_string();
        let lines: Vec<&str> = text.lines().collect();
        if lines.len() <= 4 {
            return text;
        }
        let mut body = lines[3..lines.len() - 1].to_vec();
        body.sort();
        [&lines[..3], &body[..], &lines[lines.len() - 1..]]
            .concat()
            .join("\n")
    }

    /// The same points written again, across memtable and files, read back
    /// once with the newest value of each field; a filter on a field sees
    /// only the newest value.
    /// A file whose columns are in another order than the table schema
    /// (a flush keeps the order columns first appeared in).
    #[tokio::test]
    async fn files_with_columns_in_another_order_are_read_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        let rows = [
            ("x", Some(1.0), Some(10.0), 5),
            ("y", Some(2.0), Some(20.0), 6),
        ];
        let only_a = batch(&rows).project(&[0, 1, 3]).unwrap();
        let only_b = batch(&rows).project(&[0, 2, 3]).unwrap();
        engine.write("db", "cpu", 1, only_a).await.unwrap();
        engine.write("db", "cpu", 1, only_b).await.unwrap();
        engine.flush().await.unwrap();
        engine
            .write("db", "cpu", 1, batch(&[("x", Some(3.0), Some(30.0), 5)]))
            .await
            .unwrap();
        engine.flush().await.unwrap();
        let got = scan(
            &engine,
            vec![col("b").lt_eq(lit(25.0))],
            Some(vec!["b", "time"]),
        )
        .await;
        assert_eq!(
            got,
            "+------+-------------------------------+\n\
             | b    | time                          |\n\
             +------+-------------------------------+\n\
             | 20.0 | 1970-01-01T00:00:00.000000006 |\n\
             +------+-------------------------------+"
        );
    }

    /// A scan pinning tags reads a file only if it holds one of the series,
    /// and then only that series' rows.
    #[tokio::test]
    async fn files_without_the_pinned_series_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        let rows: Vec<(String, Option<f64>, Option<f64>, i64)> = (0..1000)
            .map(|i| (format!("h{}", i % 10), Some(i as f64), None, i as i64))
            .collect();
        let rows: Vec<(&str, Option<f64>, Option<f64>, i64)> =
            rows.iter().map(|r| (r.0.as_str(), r.1, r.2, r.3)).collect();
        engine.write("db", "cpu", 1, batch(&rows)).await.unwrap();
        engine.flush().await.unwrap();
        engine
            .write("db", "cpu", 1, batch(&[("other", Some(1.0), None, 5000)]))
            .await
            .unwrap();
        engine.flush().await.unwrap();
        let plan = |filter: Expr| {
            let engine = &engine;
            async move {
                let ticket = ScanTicket {
                    database: "db".into(),
                    table: "cpu".into(),
                    shard_ids: vec![1],
                    table_schema_ipc: schema_to_ipc(&schema()).unwrap(),
                    filters: vec![filter.to_bytes().unwrap().to_vec()],
                    ..Default::default()
                };
                let plan = ticket_plan(&SessionContext::new(), engine, &ticket)
                    .await
                    .unwrap();
                let shown = datafusion::physical_plan::displayable(plan.as_ref())
                    .indent(true)
                    .to_string();
                shown
            }
        };
        let shown = plan(col("host").eq(lit("h3"))).await;
        assert!(shown.contains("ShardScanExec: files=1,"), "{shown}");
        let shown = plan(col("host").eq(lit("nowhere"))).await;
        assert!(shown.contains("ShardScanExec: files=0,"), "{shown}");
        let shown = plan(col("a").gt(lit(1.0))).await;
        assert!(shown.contains("ShardScanExec: files=2,"), "{shown}");

        let got = scan(&engine, vec![col("host").eq(lit("h3"))], Some(vec!["a"])).await;
        let want: Vec<String> = (0..100)
            .map(|i| format!("{:.1}", (i * 10 + 3) as f64))
            .collect();
        for w in &want {
            assert!(got.contains(&format!("| {w} ")), "{w} missing in {got}");
        }
        assert_eq!(got.lines().count(), 100 + 4, "{got}");
        let got = scan(
            &engine,
            vec![col("host").in_list(vec![lit("h1"), lit("other")], false)],
            Some(vec!["host"]),
        )
        .await;
        assert_eq!(got.lines().filter(|l| l.contains("| h1 ")).count(), 100);
        assert_eq!(got.lines().filter(|l| l.contains("| other ")).count(), 1);
    }

    /// A delete that empties a memtable leaves nothing for the flush to
    /// write: no file without columns that scans could not read.
    #[tokio::test]
    async fn a_flush_after_a_delete_emptied_the_memtable_writes_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        engine
            .write("db", "cpu", 1, batch(&[("x", Some(1.0), None, 5)]))
            .await
            .unwrap();
        engine.flush().await.unwrap();
        engine
            .write("db", "cpu", 1, batch(&[("y", Some(2.0), None, 7)]))
            .await
            .unwrap();
        let everything = DeletePredicate {
            min_time: 6,
            max_time: 8,
            tags: vec![],
        };
        engine.delete("db", "cpu", 1, everything).await.unwrap();
        engine.flush().await.unwrap();
        assert_eq!(engine.snapshot("cpu", &[1]).files.len(), 1);
        let got = scan(
            &engine,
            vec![col("a").lt_eq(lit(5.0))],
            Some(vec!["a", "time"]),
        )
        .await;
        assert!(
            got.contains("| 1.0 | 1970-01-01T00:00:00.000000005 |"),
            "{got}"
        );
    }

    #[tokio::test]
    async fn scans_merge_duplicates_across_files_and_memtable() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        engine
            .write(
                "db",
                "cpu",
                1,
                batch(&[("x", Some(1.0), Some(10.0), 5), ("y", Some(2.0), None, 5)]),
            )
            .await
            .unwrap();
        engine.flush().await.unwrap();
        engine
            .write("db", "cpu", 1, batch(&[("x", Some(3.0), None, 5)]))
            .await
            .unwrap();
        engine.flush().await.unwrap();
        engine
            .write(
                "db",
                "cpu",
                1,
                batch(&[("y", None, Some(7.0), 5), ("z", Some(9.0), None, 6)]),
            )
            .await
            .unwrap();

        let expected = "\
+------+-----+------+-------------------------------+
| host | a   | b    | time                          |
+------+-----+------+-------------------------------+
| x    | 3.0 | 10.0 | 1970-01-01T00:00:00.000000005 |
| y    | 2.0 | 7.0  | 1970-01-01T00:00:00.000000005 |
| z    | 9.0 |      | 1970-01-01T00:00:00.000000006 |
+------+-----+------+-------------------------------+";
        assert_eq!(scan(&engine, vec![], None).await, expected);

        // x's a was 1.0 once, but 3.0 now: a field filter must not see 1.0.
        let got = scan(
            &engine,
            vec![col("a").eq(lit(1.0))],
            Some(vec!["host", "a"]),
        )
        .await;
        assert_eq!(got, "++\n++", "{got}");
        let got = scan(&engine, vec![col("a").eq(lit(3.0))], Some(vec!["a"])).await;
        assert_eq!(got, "+-----+\n| a   |\n+-----+\n| 3.0 |\n+-----+");

        // The same after every row is flushed, and after a restart.
        engine.flush().await.unwrap();
        assert_eq!(scan(&engine, vec![], None).await, expected);
        drop(engine);
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        assert_eq!(scan(&engine, vec![], None).await, expected);
    }

    fn delete_host(host: &str, min_time: i64, max_time: i64) -> crate::delete::DeletePredicate {
        crate::delete::DeletePredicate {
            min_time,
            max_time,
            tags: vec![crate::delete::TagCondition {
                tag: "host".into(),
                values: vec![host.into()],
                negated: false,
            }],
        }
    }

    /// A delete removes matching rows from files and memtable at once;
    /// a point written after it is visible; compaction applies and retires
    /// the tombstone; the answer survives a restart.
    #[tokio::test]
    async fn delete_covers_files_and_memtable_but_not_later_writes() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        let rows = |host, times: &[i64]| -> Vec<(&str, Option<f64>, Option<f64>, i64)> {
            times
                .iter()
                .map(|t| (host, Some(*t as f64), None, *t))
                .collect()
        };
        engine
            .write("db", "cpu", 1, batch(&rows("x", &[1, 2, 3])))
            .await
            .unwrap();
        engine
            .write("db", "cpu", 1, batch(&rows("y", &[1, 2, 3])))
            .await
            .unwrap();
        engine.flush().await.unwrap();
        engine
            .write("db", "cpu", 1, batch(&rows("x", &[4, 5])))
            .await
            .unwrap();

        let removed = engine
            .delete("db", "cpu", 1, delete_host("x", 2, 4))
            .await
            .unwrap();
        assert_eq!(removed, 1, "x@4 was in memory");
        let expected = "\
+------+-----+
| host | a   |
+------+-----+
| x    | 1.0 |
| x    | 5.0 |
| y    | 1.0 |
| y    | 2.0 |
| y    | 3.0 |
+------+-----+";
        assert_eq!(
            scan(&engine, vec![], Some(vec!["host", "a"])).await,
            expected
        );

        // Written again after the delete: there again, with its new value.
        engine
            .write("db", "cpu", 1, batch(&[("x", Some(30.0), None, 3)]))
            .await
            .unwrap();
        engine.flush().await.unwrap();
        let expected = "\
+------+------+
| host | a    |
+------+------+
| x    | 1.0  |
| x    | 30.0 |
| x    | 5.0  |
| y    | 1.0  |
| y    | 2.0  |
| y    | 3.0  |
+------+------+";
        assert_eq!(
            scan(&engine, vec![], Some(vec!["host", "a"])).await,
            expected
        );

        // Compaction applies the delete for good and drops the tombstone.
        assert_eq!(engine.compact(2).await.unwrap(), 1);
        assert!(Manifest::load(dir.path()).unwrap().tombstones.is_empty());
        assert_eq!(
            scan(&engine, vec![], Some(vec!["host", "a"])).await,
            expected
        );
        drop(engine);
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        assert_eq!(
            scan(&engine, vec![], Some(vec!["host", "a"])).await,
            expected
        );
    }

    /// A crash after the delete reached the WAL but before its tombstone
    /// reached the manifest: replay restores the tombstone.
    #[tokio::test]
    async fn replay_restores_a_tombstone_the_manifest_missed() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        engine
            .write(
                "db",
                "cpu",
                1,
                batch(&[("x", Some(1.0), None, 1), ("y", Some(2.0), None, 1)]),
            )
            .await
            .unwrap();
        engine.flush().await.unwrap();
        engine
            .write("db", "cpu", 1, batch(&[("x", Some(3.0), None, 2)]))
            .await
            .unwrap();
        engine
            .delete("db", "cpu", 1, delete_host("x", 0, 10))
            .await
            .unwrap();
        drop(engine);
        let mut m = Manifest::load(dir.path()).unwrap();
        assert_eq!(m.tombstones.len(), 1);
        m.tombstones.clear();
        m.store(dir.path()).unwrap();

        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        let got = scan(&engine, vec![], Some(vec!["host", "a"])).await;
        assert_eq!(
            got,
            "+------+-----+\n| host | a   |\n+------+-----+\n| y    | 2.0 |\n+------+-----+"
        );
        assert_eq!(Manifest::load(dir.path()).unwrap().tombstones.len(), 1);
    }

    /// Compaction merges files into one without changing any answer, and
    /// keeps newer files (flushed after the compacted ones) newer.
    #[tokio::test]
    async fn compaction_keeps_every_answer() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        for round in 0..5 {
            let v = round as f64;
            engine
                .write(
                    "db",
                    "cpu",
                    1,
                    batch(&[("x", Some(v), None, 5), ("y", None, Some(v), round)]),
                )
                .await
                .unwrap();
            engine.flush().await.unwrap();
        }
        let queries = [
            (vec![], None),
            (vec![col("a").gt(lit(2.0))], Some(vec!["host", "a"])),
            (vec![col("host").eq(lit("y"))], Some(vec!["b", "time"])),
        ];
        let mut before = vec![];
        for (f, p) in &queries {
            before.push(scan(&engine, f.clone(), p.clone()).await);
        }
        assert_eq!(engine.compact(2).await.unwrap(), 1);
        assert_eq!(engine.snapshot("cpu", &[1]).files.len(), 1);
        for ((f, p), b) in queries.iter().zip(&before) {
            assert_eq!(&scan(&engine, f.clone(), p.clone()).await, b);
        }
        // A newer write still wins over the compacted file.
        engine
            .write("db", "cpu", 1, batch(&[("x", Some(42.0), None, 5)]))
            .await
            .unwrap();
        engine.flush().await.unwrap();
        let got = scan(&engine, vec![col("host").eq(lit("x"))], Some(vec!["a"])).await;
        assert_eq!(got, "+------+\n| a    |\n+------+\n| 42.0 |\n+------+");
        drop(engine);
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        let got = scan(&engine, vec![col("host").eq(lit("x"))], Some(vec!["a"])).await;
        assert_eq!(got, "+------+\n| a    |\n+------+\n| 42.0 |\n+------+");
        let files: Vec<_> = std::fs::read_dir(dir.path().join("shards/1"))
            .unwrap()
            .collect();
        assert_eq!(files.len(), 2, "the compacted inputs are gone");
    }

    /// A scan that started before a compaction still reads the replaced
    /// files; they are deleted when it ends.
    #[tokio::test]
    async fn compaction_waits_for_running_scans_before_deleting() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        for t in 0..3 {
            engine
                .write("db", "cpu", 1, batch(&[("x", Some(t as f64), None, t)]))
                .await
                .unwrap();
            engine.flush().await.unwrap();
        }
        let ticket = ScanTicket {
            database: "db".into(),
            table: "cpu".into(),
            shard_ids: vec![1],
            table_schema_ipc: schema_to_ipc(&schema()).unwrap(),
            ..Default::default()
        };
        let ctx = SessionContext::new();
        let stream = execute_ticket(&ctx, &engine, &ticket).await.unwrap();
        assert_eq!(engine.compact(2).await.unwrap(), 1);
        let count = |d: &std::path::Path| std::fs::read_dir(d.join("shards/1")).unwrap().count();
        assert_eq!(count(dir.path()), 4, "inputs stay while the scan runs");
        let batches = datafusion::physical_plan::common::collect(stream)
            .await
            .unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 3);
        drop(batches);
        assert_eq!(
            count(dir.path()),
            1,
            "inputs are deleted once the scan is done"
        );
    }

    /// Files that overlap in time stream through the k-way merge: each file
    /// stays one ordered partition even when DataFusion would split file
    /// scans, and every point comes back once, from the newest file.
    #[tokio::test]
    async fn overlapping_files_merge_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        // File k holds times [100k, 100k + 300) for ten hosts, value k.
        for k in 0..3i64 {
            let mut rows = vec![];
            let hosts: Vec<String> = (0..10).map(|h| format!("h{h}")).collect();
            for h in &hosts {
                for t in 100 * k..100 * k + 300 {
                    rows.push((h.as_str(), Some(k as f64), None, t));
                }
            }
            engine.write("db", "cpu", 1, batch(&rows)).await.unwrap();
            engine.flush().await.unwrap();
        }
        let ticket = ScanTicket {
            database: "db".into(),
            table: "cpu".into(),
            shard_ids: vec![1],
            table_schema_ipc: schema_to_ipc(&schema()).unwrap(),
            ..Default::default()
        };
        let mut config = datafusion::prelude::SessionConfig::new()
            .with_target_partitions(4)
            .with_batch_size(100);
        config.options_mut().optimizer.repartition_file_min_size = 0;
        let ctx = SessionContext::new_with_config(config);
        let plan = ticket_plan(&ctx, &engine, &ticket).await.unwrap();
        let text = datafusion::physical_plan::displayable(plan.as_ref())
            .indent(false)
            .to_string();
        let below = &text[text.find("ShardScanExec").unwrap()..];
        assert!(below.contains("merge=sorted"), "{text}");
        for splitting in ["RepartitionExec", "CoalescePartitionsExec", "SortExec"] {
            assert!(!below.contains(splitting), "{text}");
        }
        let batches = datafusion::physical_plan::collect(plan, ctx.task_ctx())
            .await
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        for b in &batches {
            let host = b.column(0).as_dictionary::<Int32Type>();
            let hosts = host.values().as_string::<i32>();
            let a = b.column(1).as_primitive::<arrow::datatypes::Float64Type>();
            let t = b
                .column(3)
                .as_primitive::<arrow::datatypes::TimestampNanosecondType>();
            for i in 0..b.num_rows() {
                let name = hosts.value(host.keys().value(i) as usize).to_string();
                let newest = (t.value(i) / 100).min(2) as f64;
                assert_eq!(a.value(i), newest, "{name} at {}", t.value(i));
                assert!(seen.insert((name, t.value(i))), "a point came back twice");
            }
        }
        assert_eq!(seen.len(), 10 * 500);
    }

    /// Key-column filters reach the Parquet reader as a pruning predicate;
    /// field filters do not (they would be unsafe below the merge).
    #[tokio::test]
    async fn key_filters_become_the_parquet_pruning_predicate() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        engine
            .write(
                "db",
                "cpu",
                1,
                batch(&[("x", Some(3.0), None, 5), ("z", Some(4.0), None, 5)]),
            )
            .await
            .unwrap();
        engine.flush().await.unwrap();
        let plan_for = |filter: Expr| {
            let table = Arc::new(ShardTable {
                schema: schema(),
                snapshot: engine.snapshot("cpu", &[1]),
            });
            async move {
                let ctx = SessionContext::new();
                let plan = ctx
                    .read_table(table)
                    .unwrap()
                    .filter(filter)
                    .unwrap()
                    .create_physical_plan()
                    .await
                    .unwrap();
                let text = datafusion::physical_plan::displayable(plan.as_ref())
                    .indent(true)
                    .to_string();
                text
            }
        };
        // Read through the file's series index (a row selection), still
        // pruned by the predicate.
        let plan = plan_for(col("host").eq(lit("x"))).await;
        assert!(plan.contains("pruning_predicate=host_null_count"), "{plan}");
        // Read whole.
        let plan = plan_for(col("host").not_eq(lit("y"))).await;
        assert!(plan.contains("pruning_predicate=host_null_count"), "{plan}");
        let plan = plan_for(col("a").eq(lit(1.0))).await;
        assert!(!plan.contains("pruning_predicate"), "{plan}");
    }

    mod fuzz {
        use proptest::prelude::*;
        use prost::Message;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(300))]

            /// Any ticket a client sends straight to a node, random bytes
            /// or a real ticket with bytes flipped, plans and runs or is an
            /// error, never a panic.
            #[test]
            fn any_ticket_runs_or_errs(
                random in proptest::collection::vec(any::<u8>(), 0..200),
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
            ) {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    let dir = tempfile::tempdir().unwrap();
                    let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
                    engine.write("db", "cpu", 1, batch(&[("x", Some(1.0), None, 5)])).await.unwrap();
                    let good = ScanTicket {
                        database: "db".into(),
                        table: "cpu".into(),
                        shard_ids: vec![1],
                        table_schema_ipc: schema_to_ipc(&schema()).unwrap(),
                        projection: Some(strata_proto::storage::v1::Projection {
                            columns: vec!["host".into(), "a".into()],
                        }),
                        filters: vec![lit(1.0).lt(col("a")).to_bytes().unwrap().to_vec()],
                        limit: Some(3),
                        query_id: "fuzz".into(),
                        latest_per_series: false,
                    };
                    let mut bytes = good.encode_to_vec();
                    for (at, b) in &flips {
                        let n = bytes.len();
                        bytes[at % n] ^= b;
                    }
                    let ctx = SessionContext::new();
                    for candidate in [random.clone(), bytes] {
                        if let Ok(ticket) = ScanTicket::decode(&candidate[..]) {
                            if let Ok(stream) = execute_ticket(&ctx, &engine, &ticket).await {
                                let _ = datafusion::physical_plan::common::collect(stream).await;
                            }
                        }
                    }
                });
            }
        }
    }
}
