//! Turning memtable batches into one Parquet file: batches with differing
//! columns are aligned to their merged schema, rows are deduplicated on the
//! primary key and sorted by (tags, time), and the file is written with zstd, dictionary-encoded tags,
//! row-group statistics and a page index, then fsynced.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, RecordBatch, TimestampNanosecondArray};
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use snafu::{ResultExt, Snafu};
use strata_catalog::fsutil::sync_dir;
use strata_catalog::model::TIME_COLUMN;

use crate::dedup::dedup_sorted_chunks;

#[derive(Debug, Snafu)]
pub enum FlushError {
    #[snafu(display("writing {}: {source}", path.display()))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[snafu(display("writing {}: {source}", path.display()))]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[snafu(display("preparing rows for {}: {source}", path.display()))]
    Arrow {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },
}

pub struct Written {
    pub rows: u64,
    pub min_time: i64,
    pub max_time: i64,
    pub size_bytes: u64,
}

/// Aligns `batch` to `schema`: columns in schema order, absent ones NULL.
pub fn adapt_batch(
    batch: &RecordBatch,
    schema: &SchemaRef,
) -> Result<RecordBatch, arrow::error::ArrowError> {
    if batch.schema().as_ref() == schema.as_ref() {
        return Ok(batch.clone());
    }
    let columns: Vec<ArrayRef> = schema
        .fields()
        .iter()
        .map(|f| match batch.column_by_name(f.name()) {
            Some(c) if c.data_type() == f.data_type() => Ok(c.clone()),
            Some(c) => arrow::compute::cast(c, f.data_type()),
            None => Ok(new_null_array(f.data_type(), batch.num_rows())),
        })
        .collect::<Result<_, _>>()?;
    RecordBatch::try_new(schema.clone(), columns)
}

/// The merged schema of some batches, with nullable columns (a column absent
/// from one batch is NULL there).
pub fn merged_schema<'a>(
    batches: impl IntoIterator<Item = &'a RecordBatch>,
) -> Result<SchemaRef, arrow::error::ArrowError> {
    merge_schemas(batches.into_iter().map(|b| b.schema().as_ref().clone()))
}

/// Merges schemas into one with every column, nullable except the time.
pub fn merge_schemas(
    schemas: impl IntoIterator<Item = Schema>,
) -> Result<SchemaRef, arrow::error::ArrowError> {
    let merged = Schema::try_merge(schemas)?;
    let fields: Vec<_> = merged
        .fields()
        .iter()
        .map(|f| {
            let nullable = f.name() != TIME_COLUMN;
            Arc::new(f.as_ref().clone().with_nullable(nullable))
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

/// `range` widened to the `[min, max]` time of `batches` (those with rows).
pub fn widen_time_range<'a>(
    mut range: Option<(i64, i64)>,
    batches: impl IntoIterator<Item = &'a RecordBatch>,
) -> Option<(i64, i64)> {
    for b in batches {
        let Some(t) = b
            .column_by_name(TIME_COLUMN)
            .and_then(|c| c.as_any().downcast_ref::<TimestampNanosecondArray>())
        else {
            continue;
        };
        if let (Some(lo), Some(hi)) = (arrow::compute::min(t), arrow::compute::max(t)) {
            range = Some(match range {
                Some((a, b)) => (a.min(lo), b.max(hi)),
                None => (lo, hi),
            });
        }
    }
    range
}

/// Rows × columns of one batch handed to the Parquet writer by a flush:
/// a table with thousands of sparse columns is written a few hundred rows
/// at a time instead of widened whole.
pub const FLUSH_BATCH_CELLS: usize = 1 << 20;

/// A row group is closed once its encoded, buffered size passes this, so
/// that the writer's buffers stay bounded for wide tables too.
const MAX_ROW_GROUP_BYTES: usize = 64 << 20;

/// Writes memtable batches as one Parquet file, deduplicated and sorted.
pub fn write_parquet(path: &Path, batches: &[RecordBatch]) -> Result<Written, FlushError> {
    let schema = merged_schema(batches).context(ArrowSnafu { path })?;
    let mut sink = ParquetSink::create(path, schema.clone())?;
    // One row per primary key in every file: scans rely on it.
    let mut failed = None;
    dedup_sorted_chunks(batches, &schema, FLUSH_BATCH_CELLS, |b| {
        sink.write(&b).map_err(|e| {
            let message = e.to_string();
            failed = Some(e);
            arrow::error::ArrowError::ExternalError(message.into())
        })
    })
    .or_else(|e| match failed.take() {
        Some(write_error) => Err(write_error),
        None => Err(e).context(ArrowSnafu { path }),
    })?;
    sink.finish()
}

/// A Parquet file being written batch by batch (rows already sorted and
/// deduplicated): zstd, page statistics and index; durable once finished.
pub struct ParquetSink {
    path: PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
    time: Option<(i64, i64)>,
}

impl ParquetSink {
    pub fn create(path: &Path, schema: SchemaRef) -> Result<Self, FlushError> {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(1).expect("valid level"),
            ))
            .set_statistics_enabled(EnabledStatistics::Page)
            .set_max_row_group_row_count(Some(256 * 1024))
            .build();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).context(IoSnafu { path: parent })?;
        }
        let file = File::create(path).context(IoSnafu { path })?;
        let writer =
            ArrowWriter::try_new(file, schema, Some(props)).context(ParquetSnafu { path })?;
        Ok(Self {
            path: path.to_path_buf(),
            writer,
            rows: 0,
            time: None,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), FlushError> {
        let path = &self.path;
        self.time = widen_time_range(self.time, [batch]);
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).context(ParquetSnafu { path })?;
        if self.writer.in_progress_size() > MAX_ROW_GROUP_BYTES {
            self.writer.flush().context(ParquetSnafu { path })?;
        }
        Ok(())
    }

    /// Closes the file and makes it and its directory entry durable.
    pub fn finish(self) -> Result<Written, FlushError> {
        let path = &self.path;
        let file = self.writer.into_inner().context(ParquetSnafu { path })?;
        file.sync_all().context(IoSnafu { path })?;
        let size_bytes = file.metadata().context(IoSnafu { path })?.len();
        if let Some(parent) = path.parent() {
            sync_dir(parent).context(IoSnafu { path: parent })?;
        }
        let (min_time, max_time) = self.time.unwrap_or((0, 0));
        Ok(Written {
            rows: self.rows,
            min_time,
            max_time,
            size_bytes,
        })
    }
}
