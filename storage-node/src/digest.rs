//! Digests of a shard's rows, so that replicas can tell whether they hold
//! the same data without sending it: per table and per time bucket, the
//! row count and the wrapping sum of one hash per row.
//!
//! A row's hash covers its non-null cells, by column name in name order,
//! over the deduplicated rows a scan answers (deletes applied). Nulls and
//! column order do not count, so replicas whose tables gained columns in a
//! different order, or that never saw a column some rows lack, still
//! agree; a sum does not depend on the order rows are read in.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{
    DataType, Float64Type, Int64Type, TimeUnit, TimestampNanosecondType, UInt64Type,
};
use datafusion::error::DataFusionError;
use datafusion::prelude::{col, lit, SessionContext};
use datafusion::scalar::ScalarValue;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::scan::ShardTable;

/// The time column every table has.
const TIME: &str = "time";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketDigest {
    pub start_ns: i64,
    pub rows: u64,
    pub digest: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableDigest {
    pub table: String,
    pub buckets: Vec<BucketDigest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDigest {
    pub shard_id: u64,
    pub rows: u64,
    /// The sum of every bucket's digest.
    pub digest: u64,
    pub tables: Vec<TableDigest>,
    /// When a repair last compared this replica with the others
    /// (milliseconds since the epoch).
    #[serde(default)]
    pub last_repair_ms: Option<i64>,
}

/// When each shard was last repaired on this node, kept in
/// `repairs.json` in the data directory.
pub struct RepairLog {
    path: std::path::PathBuf,
    times: parking_lot::Mutex<BTreeMap<u64, i64>>,
}

impl RepairLog {
    pub fn open(data_dir: &std::path::Path) -> Self {
        let path = data_dir.join("repairs.json");
        let times = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Self {
            path,
            times: parking_lot::Mutex::new(times),
        }
    }

    pub fn get(&self, shard_id: u64) -> Option<i64> {
        self.times.lock().get(&shard_id).copied()
    }

    /// Records the repair of the shards; best effort (a lost time only
    /// shows as an older repair).
    pub fn record(&self, shard_ids: &[u64], at_ms: i64) {
        let bytes = {
            let mut times = self.times.lock();
            for s in shard_ids {
                times.insert(*s, at_ms);
            }
            serde_json::to_vec(&*times).expect("times serialize")
        };
        if let Err(e) = strata_catalog::fsutil::write_atomic(&self.path, &bytes) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot record repair times");
        }
    }
}

/// The rows of one table of one shard as a scan answers them:
/// deduplicated, deletes applied; only those in `[start, end)` of time
/// when a range is given.
pub async fn table_rows(
    ctx: &SessionContext,
    engine: &Engine,
    table: &str,
    shard_id: u64,
    range: Option<(i64, i64)>,
) -> Result<Vec<RecordBatch>, DataFusionError> {
    let snapshot = engine.snapshot(table, &[shard_id]);
    let Some(schema) = snapshot.schema() else {
        return Ok(vec![]);
    };
    let provider = Arc::new(ShardTable::new(schema, snapshot));
    let mut df = ctx.read_table(provider)?;
    if let Some((start, end)) = range {
        let ts = |t: i64| lit(ScalarValue::TimestampNanosecond(Some(t), None));
        df = df.filter(col(TIME).gt_eq(ts(start)).and(col(TIME).lt(ts(end))))?;
    }
    df.execute_stream().await?.try_collect().await
}

/// The digest of everything this node holds of a shard, bucketed by
/// `bucket_ns` of time.
pub async fn shard_digest(
    ctx: &SessionContext,
    engine: &Engine,
    shard_id: u64,
    bucket_ns: i64,
) -> Result<ShardDigest, DataFusionError> {
    let bucket_ns = bucket_ns.max(1);
    let tables: Vec<String> = engine
        .tables()
        .into_iter()
        .filter(|(_, k)| k.shard_id == shard_id)
        .map(|(_, k)| k.table)
        .collect();
    let mut out = ShardDigest {
        shard_id,
        rows: 0,
        digest: 0,
        tables: vec![],
        last_repair_ms: None,
    };
    for table in tables {
        let mut buckets: BTreeMap<i64, (u64, u64)> = BTreeMap::new();
        for batch in table_rows(ctx, engine, &table, shard_id, None).await? {
            let hashes = row_hashes(&batch)?;
            let times = batch
                .column_by_name(TIME)
                .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
                .ok_or_else(|| {
                    DataFusionError::Internal(format!("table {table} has no time column"))
                })?;
            for (row, hash) in hashes.into_iter().enumerate() {
                let start = times.value(row).div_euclid(bucket_ns) * bucket_ns;
                let b = buckets.entry(start).or_default();
                b.0 += 1;
                b.1 = b.1.wrapping_add(hash);
            }
        }
        if buckets.is_empty() {
            continue;
        }
        let buckets: Vec<BucketDigest> = buckets
            .into_iter()
            .map(|(start_ns, (rows, digest))| BucketDigest {
                start_ns,
                rows,
                digest,
            })
            .collect();
        for b in &buckets {
            out.rows += b.rows;
            out.digest = out.digest.wrapping_add(b.digest);
        }
        out.tables.push(TableDigest { table, buckets });
    }
    Ok(out)
}

/// Which of `parts` series ranges each row falls in: its series hash
/// (over the tag columns named in `tags`) modulo `parts`.
pub fn series_parts(
    batch: &RecordBatch,
    tags: &[String],
    parts: u32,
) -> Result<Vec<u32>, DataFusionError> {
    let indices: Vec<usize> = batch
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| tags.iter().any(|t| t == f.name()))
        .map(|(i, _)| i)
        .collect();
    let series = batch.project(&indices)?;
    let parts = parts.max(1) as u64;
    Ok(row_hashes_of(&series, batch.num_rows())?
        .into_iter()
        .map(|h| (h % parts) as u32)
        .collect())
}

/// Row count and digest of each of `parts` series ranges of the rows.
pub fn parts_digest(
    batches: &[RecordBatch],
    tags: &[String],
    parts: u32,
) -> Result<Vec<(u64, u64)>, DataFusionError> {
    let mut out = vec![(0u64, 0u64); parts.max(1) as usize];
    for b in batches {
        let part = series_parts(b, tags, parts)?;
        for (p, h) in part.into_iter().zip(row_hashes(b)?) {
            let d = &mut out[p as usize];
            d.0 += 1;
            d.1 = d.1.wrapping_add(h);
        }
    }
    Ok(out)
}

/// The rows of the batches in the series ranges `wanted` of `parts`.
pub fn keep_parts(
    batches: Vec<RecordBatch>,
    tags: &[String],
    parts: u32,
    wanted: &[u32],
) -> Result<Vec<RecordBatch>, DataFusionError> {
    batches
        .into_iter()
        .map(|b| {
            let mask: arrow::array::BooleanArray = series_parts(&b, tags, parts)?
                .into_iter()
                .map(|p| Some(wanted.contains(&p)))
                .collect();
            Ok(arrow::compute::filter_record_batch(&b, &mask)?)
        })
        .collect()
}

/// FNV-1a, 64 bits: stable across processes and versions, unlike the
/// standard library's hashers.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    /// Spreads the bits, so that sums of similar rows do not cancel out.
    fn finish(self) -> u64 {
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// One hash per row of the batch, over its non-null cells by column name.
pub fn row_hashes(batch: &RecordBatch) -> Result<Vec<u64>, DataFusionError> {
    row_hashes_of(batch, batch.num_rows())
}

/// As [`row_hashes`], for `rows` rows (a batch of no columns has rows).
fn row_hashes_of(batch: &RecordBatch, rows: usize) -> Result<Vec<u64>, DataFusionError> {
    let schema = batch.schema();
    let mut columns: Vec<(&str, ArrayRef)> = schema
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| (f.name().as_str(), c.clone()))
        .collect();
    columns.sort_by(|a, b| a.0.cmp(b.0));
    let mut hashes = vec![Fnv::new(); rows];
    for (name, column) in columns {
        let column = match column.data_type() {
            DataType::Dictionary(_, _) => arrow::compute::cast(&column, &DataType::Utf8)?,
            _ => column,
        };
        let cell = |h: &mut Fnv, kind: u8, bytes: &[u8]| {
            h.write(&(name.len() as u32).to_le_bytes());
            h.write(name.as_bytes());
            h.write(&[kind]);
            h.write(&(bytes.len() as u32).to_le_bytes());
            h.write(bytes);
        };
        let each = |hashes: &mut [Fnv], f: &dyn Fn(usize, &mut Fnv)| {
            for (row, h) in hashes.iter_mut().enumerate() {
                if column.is_valid(row) {
                    f(row, h);
                }
            }
        };
        match column.data_type() {
            DataType::Utf8 => {
                let a = column.as_string::<i32>();
                each(&mut hashes, &|r, h| cell(h, 1, a.value(r).as_bytes()));
            }
            DataType::LargeUtf8 => {
                let a = column.as_string::<i64>();
                each(&mut hashes, &|r, h| cell(h, 1, a.value(r).as_bytes()));
            }
            DataType::Float64 => {
                let a = column.as_primitive::<Float64Type>();
                each(&mut hashes, &|r, h| {
                    cell(h, 2, &a.value(r).to_bits().to_le_bytes())
                });
            }
            DataType::Int64 => {
                let a = column.as_primitive::<Int64Type>();
                each(&mut hashes, &|r, h| cell(h, 3, &a.value(r).to_le_bytes()));
            }
            DataType::UInt64 => {
                let a = column.as_primitive::<UInt64Type>();
                each(&mut hashes, &|r, h| cell(h, 4, &a.value(r).to_le_bytes()));
            }
            DataType::Boolean => {
                let a = column.as_boolean();
                each(&mut hashes, &|r, h| cell(h, 5, &[a.value(r) as u8]));
            }
            DataType::Timestamp(TimeUnit::Nanosecond, _) => {
                let a = column.as_primitive::<TimestampNanosecondType>();
                each(&mut hashes, &|r, h| cell(h, 6, &a.value(r).to_le_bytes()));
            }
            other => {
                return Err(DataFusionError::NotImplemented(format!(
                    "digest of a {other} column ({name})"
                )))
            }
        }
    }
    Ok(hashes.into_iter().map(Fnv::finish).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_ranges_split_rows_by_series_and_add_up_to_the_whole() {
        let hosts: Vec<String> = (0..200).map(|i| format!("h{}", i % 40)).collect();
        let b = batch(vec![
            (
                "host",
                Arc::new(arrow::array::StringArray::from_iter_values(hosts.iter())) as ArrayRef,
            ),
            (
                "usage",
                Arc::new(Float64Array::from_iter_values((0..200).map(|v| v as f64))) as ArrayRef,
            ),
            (
                "time",
                Arc::new(TimestampNanosecondArray::from_iter_values(0..200)) as ArrayRef,
            ),
        ]);
        let tags = vec!["host".to_string()];
        let parts = parts_digest(std::slice::from_ref(&b), &tags, 8).unwrap();
        let total: u64 = parts.iter().map(|p| p.0).sum();
        let sum = parts.iter().fold(0u64, |a, p| a.wrapping_add(p.1));
        let whole = row_hashes(&b)
            .unwrap()
            .into_iter()
            .fold(0u64, u64::wrapping_add);
        assert_eq!((total, sum), (200, whole));
        assert!(parts.iter().filter(|p| p.0 > 0).count() > 1, "{parts:?}");
        // A series lies in one range: keeping a range keeps whole series.
        let kept = keep_parts(vec![b.clone()], &tags, 8, &[3]).unwrap();
        let n: usize = kept.iter().map(|k| k.num_rows()).sum();
        assert_eq!(n as u64, parts[3].0);
        assert_eq!(n % 5, 0, "each host has 5 rows");
    }
    use arrow::array::{DictionaryArray, Float64Array, TimestampNanosecondArray};
    use arrow::datatypes::Int32Type;
    use arrow::datatypes::{Field, Schema};

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
            .collect();
        RecordBatch::try_new(
            Arc::new(Schema::new(fields)),
            columns.into_iter().map(|(_, c)| c).collect(),
        )
        .unwrap()
    }

    #[test]
    fn hashes_ignore_column_order_nulls_and_dictionary_encoding() {
        let host: ArrayRef = Arc::new(DictionaryArray::<Int32Type>::from_iter(["a", "b"]));
        let plain_host: ArrayRef = Arc::new(arrow::array::StringArray::from(vec!["a", "b"]));
        let usage: ArrayRef = Arc::new(Float64Array::from(vec![1.0, 2.0]));
        let time: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![10, 20]));
        let nothing: ArrayRef = Arc::new(Float64Array::from(vec![None, None]));
        let a = batch(vec![
            ("host", host),
            ("usage", usage.clone()),
            ("time", time.clone()),
        ]);
        let b = batch(vec![
            ("time", time.clone()),
            ("idle", nothing),
            ("usage", usage),
            ("host", plain_host),
        ]);
        assert_eq!(row_hashes(&a).unwrap(), row_hashes(&b).unwrap());

        // A different value, or the value under another column, differs.
        let other = batch(vec![
            (
                "host",
                Arc::new(arrow::array::StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            (
                "usage",
                Arc::new(Float64Array::from(vec![1.0, 2.5])) as ArrayRef,
            ),
            ("time", time.clone()),
        ]);
        let moved = batch(vec![
            (
                "host",
                Arc::new(arrow::array::StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            (
                "idle",
                Arc::new(Float64Array::from(vec![1.0, 2.0])) as ArrayRef,
            ),
            ("time", time),
        ]);
        let h = row_hashes(&a).unwrap();
        assert_eq!(h[0], row_hashes(&other).unwrap()[0]);
        assert_ne!(h[1], row_hashes(&other).unwrap()[1]);
        assert_ne!(h[0], row_hashes(&moved).unwrap()[0]);
    }
}
