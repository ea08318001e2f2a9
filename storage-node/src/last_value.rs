//! The last-value cache: per table and shard, the newest row of every
//! series (its deduplicated row at the largest time), so that "latest row
//! per series" queries read one row per series instead of every row.
//!
//! A shard's cache is built the first time such a query reads it, from a
//! deduplicated scan of the shard (so also after a restart, from what the
//! node holds), and is then kept up to date by every write to the shard:
//! a row with a newer time replaces the series' row, a row at the same
//! time merges into it (its non-null fields win, as deduplication does),
//! an older row is ignored. A delete drops the shard's cache; the next
//! query builds it again. Writes that land while a cache is being built
//! are queued and applied once the build is done, in write order.
//!
//! The caches of a node are bounded in bytes (`EngineConfig::
//! last_cache_limit_bytes`); a shard whose cache would not fit is answered
//! from a scan each time instead.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, TimestampNanosecondArray};
use arrow::datatypes::{DataType, Int32Type, Int64Type, SchemaRef};
use arrow::error::ArrowError;
use datafusion::common::ScalarValue;
use strata_catalog::model::TIME_COLUMN;

use crate::dedup::tag_columns;

/// Bytes counted per cached row besides its key and values.
const ROW_OVERHEAD: usize = 64;

/// The newest row of each series of one table in one shard.
#[derive(Debug, Default, Clone)]
pub struct LastRows {
    /// By series key: the non-null tags by name, each as
    /// `len(name) name len(value) value`.
    rows: HashMap<Box<[u8]>, LastRow>,
    bytes: usize,
}

#[derive(Debug, Clone)]
struct LastRow {
    time: i64,
    /// The row's non-null values, tags included, by column name.
    values: Vec<(Arc<str>, ScalarValue)>,
}

impl LastRow {
    fn bytes(&self) -> usize {
        ROW_OVERHEAD
            + self
                .values
                .iter()
                .map(|(n, v)| n.len() + v.size())
                .sum::<usize>()
    }

    /// Sets the non-null values of row `i` of `batch` (except the time).
    fn merge(
        &mut self,
        batch: &RecordBatch,
        names: &[Arc<str>],
        i: usize,
    ) -> Result<(), ArrowError> {
        for (c, name) in batch.columns().iter().zip(names) {
            if c.is_null(i) || name.as_ref() == TIME_COLUMN {
                continue;
            }
            let v = ScalarValue::try_from_array(c, i)
                .map_err(|e| ArrowError::ComputeError(e.to_string()))?;
            match self.values.iter_mut().find(|(n, _)| n == name) {
                Some(slot) => slot.1 = v,
                None => self.values.push((name.clone(), v)),
            }
        }
        Ok(())
    }

    fn get(&self, name: &str) -> Option<&ScalarValue> {
        self.values
            .iter()
            .find(|(n, _)| n.as_ref() == name)
            .map(|(_, v)| v)
    }
}

impl LastRows {
    /// Bytes held, as counted against the cache limit.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Series held.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Takes in the rows of `batch`, which are newer than every row given
    /// before (later rows of the batch newer still).
    pub fn apply(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let schema = batch.schema();
        let Ok(time_index) = schema.index_of(TIME_COLUMN) else {
            return Ok(());
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let times = arrow::compute::cast(batch.column(time_index), &DataType::Int64)?;
        let times = times.as_primitive::<Int64Type>();
        let keys = SeriesKeys::new(batch)?;
        // The newest rows of each series in this batch: its largest time,
        // and every row at it in write order.
        let mut newest: HashMap<Box<[u8]>, (i64, Vec<usize>)> = HashMap::new();
        let mut key = vec![];
        for i in 0..batch.num_rows() {
            if times.is_null(i) {
                continue;
            }
            let t = times.value(i);
            keys.key(i, &mut key);
            match newest.get_mut(key.as_slice()) {
                Some((best, rows)) if t > *best => {
                    *best = t;
                    rows.clear();
                    rows.push(i);
                }
                Some((best, rows)) if t == *best => rows.push(i),
                Some(_) => {}
                None => {
                    newest.insert(key.clone().into_boxed_slice(), (t, vec![i]));
                }
            }
        }
        let names: Vec<Arc<str>> = schema
            .fields()
            .iter()
            .map(|f| Arc::from(f.name().as_str()))
            .collect();
        for (key, (time, rows)) in newest {
            let before = self.rows.get(&key).map(|r| (r.time, r.bytes()));
            let mut row = match before {
                Some((cached, _)) if cached > time => continue,
                Some((cached, _)) if cached == time => self.rows.remove(&key).expect("present"),
                _ => LastRow {
                    time,
                    values: vec![],
                },
            };
            for i in rows {
                row.merge(batch, &names, i)?;
            }
            let added = row.bytes() + key.len();
            let removed = before.map_or(0, |(_, b)| b + key.len());
            self.bytes = (self.bytes + added).saturating_sub(removed);
            self.rows.insert(key, row);
        }
        Ok(())
    }

    /// The cached rows as a batch of `schema` (columns the rows lack are
    /// NULL), in no particular order.
    pub fn to_batch(&self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        if self.rows.is_empty() {
            return Ok(RecordBatch::new_empty(schema.clone()));
        }
        let error = |e: datafusion::error::DataFusionError| ArrowError::ComputeError(e.to_string());
        let rows: Vec<&LastRow> = self.rows.values().collect();
        let columns = schema
            .fields()
            .iter()
            .map(|f| -> Result<ArrayRef, ArrowError> {
                if f.name() == TIME_COLUMN {
                    let times =
                        TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.time));
                    return arrow::compute::cast(&times, f.data_type());
                }
                let null = ScalarValue::try_from(f.data_type()).map_err(error)?;
                let values = rows
                    .iter()
                    .map(|r| match r.get(f.name()) {
                        Some(v) if v.data_type() == *f.data_type() => Ok(v.clone()),
                        Some(v) => v.cast_to(f.data_type()),
                        None => Ok(null.clone()),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(error)?;
                ScalarValue::iter_to_array(values).map_err(error)
            })
            .collect::<Result<Vec<_>, _>>()?;
        RecordBatch::try_new(schema.clone(), columns)
    }
}

/// Builds the series key of each row of a batch from its tag columns.
pub(crate) struct SeriesKeys {
    /// Per tag column (by name): the row's dictionary key, and per
    /// dictionary value its encoded `name=value` part.
    tags: Vec<(ArrayRef, Vec<Vec<u8>>)>,
}

impl SeriesKeys {
    pub(crate) fn new(batch: &RecordBatch) -> Result<Self, ArrowError> {
        let schema = batch.schema();
        let mut columns = tag_columns(&schema);
        columns.sort_by_key(|i| schema.field(*i).name().clone());
        let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let tags = columns
            .into_iter()
            .map(|i| {
                let name = schema.field(i).name().as_bytes();
                let column = arrow::compute::cast(batch.column(i), &dictionary)?;
                let values = column.as_dictionary::<Int32Type>().values().clone();
                let values = arrow::compute::cast(&values, &DataType::Utf8)?;
                let parts = values
                    .as_string::<i32>()
                    .iter()
                    .map(|v| {
                        let v = v.unwrap_or_default().as_bytes();
                        let mut part = Vec::with_capacity(8 + name.len() + v.len());
                        part.extend((name.len() as u32).to_le_bytes());
                        part.extend(name);
                        part.extend((v.len() as u32).to_le_bytes());
                        part.extend(v);
                        part
                    })
                    .collect();
                Ok((column, parts))
            })
            .collect::<Result<Vec<_>, ArrowError>>()?;
        Ok(Self { tags })
    }

    /// The key of row `i` into `out`.
    pub(crate) fn key(&self, i: usize, out: &mut Vec<u8>) {
        out.clear();
        for (column, parts) in &self.tags {
            let d = column.as_dictionary::<Int32Type>();
            if d.is_valid(i) {
                out.extend(&parts[d.keys().value(i) as usize]);
            }
        }
    }
}

/// A shard's cache, as the engine keeps it.
#[derive(Debug)]
pub(crate) enum CacheState {
    /// A query is building it from a scan; writes meanwhile wait here.
    Building { id: u64, pending: Vec<RecordBatch> },
    /// Shared with the queries reading it, which turn it into a batch
    /// outside the engine's lock; a write clones it only if one still is.
    Built(Arc<LastRows>),
}

impl CacheState {
    pub(crate) fn bytes(&self) -> usize {
        match self {
            CacheState::Building { pending, .. } => {
                pending.iter().map(|b| b.get_array_memory_size()).sum()
            }
            CacheState::Built(rows) => rows.bytes(),
        }
    }
}

/// What a query finds for a shard's newest rows.
#[derive(Debug)]
pub enum LastLookup {
    /// The cached rows, as a batch of the asked schema.
    Hit(RecordBatch),
    /// No cache: build it from a scan and hand it in with this id.
    Build(u64),
    /// Another query is building it (or it does not fit): read a scan.
    Scan,
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, StringDictionaryBuilder};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use arrow::util::pretty::pretty_format_batches;

    use super::*;

    fn schema(tags: &[&str], fields: &[&str]) -> SchemaRef {
        let mut f: Vec<Field> = tags
            .iter()
            .map(|t| {
                Field::new(
                    *t,
                    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                    true,
                )
            })
            .collect();
        f.extend(
            fields
                .iter()
                .map(|n| Field::new(*n, DataType::Float64, true)),
        );
        f.push(Field::new(
            TIME_COLUMN,
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ));
        Arc::new(Schema::new(f))
    }

    /// host, a, b, time.
    type Row<'a> = (Option<&'a str>, Option<f64>, Option<f64>, i64);

    /// Rows of one tag `host` and fields `a`, `b`.
    fn batch(rows: &[Row]) -> RecordBatch {
        let mut host = StringDictionaryBuilder::<Int32Type>::new();
        rows.iter().for_each(|r| host.append_option(r.0));
        RecordBatch::try_new(
            schema(&["host"], &["a", "b"]),
            vec![
                Arc::new(host.finish()),
                Arc::new(rows.iter().map(|r| r.1).collect::<Float64Array>()),
                Arc::new(rows.iter().map(|r| r.2).collect::<Float64Array>()),
                Arc::new(TimestampNanosecondArray::from_iter_values(
                    rows.iter().map(|r| r.3),
                )),
            ],
        )
        .unwrap()
    }

    fn sorted(rows: &LastRows, schema: &SchemaRef) -> String {
        let b = rows.to_batch(schema).unwrap();
        let mut lines: Vec<String> = pretty_format_batches(&[b])
            .unwrap()
            .to_string()
            .lines()
            .filter(|l| l.starts_with("| "))
            .map(str::to_string)
            .collect();
        let header = lines.remove(0);
        lines.sort();
        std::iter::once(header)
            .chain(lines)
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn newer_rows_replace_equal_times_merge_older_rows_are_ignored() {
        let mut rows = LastRows::default();
        rows.apply(&batch(&[
            (Some("x"), Some(1.0), Some(10.0), 5),
            (Some("y"), Some(2.0), None, 7),
            (Some("x"), Some(3.0), None, 9),
            (Some("x"), None, Some(30.0), 9),
            (None, Some(4.0), None, 1),
        ]))
        .unwrap();
        // Late for x, same time for y (merges b), newer for the tagless
        // series.
        rows.apply(&batch(&[
            (Some("x"), Some(8.0), Some(80.0), 8),
            (Some("y"), None, Some(20.0), 7),
            (None, Some(5.0), None, 2),
        ]))
        .unwrap();
        let s = schema(&["host"], &["a", "b"]);
        assert_eq!(
            sorted(&rows, &s),
            "| host | a   | b    | time                          |\n\
             |      | 5.0 |      | 1970-01-01T00:00:00.000000002 |\n\
             | x    | 3.0 | 30.0 | 1970-01-01T00:00:00.000000009 |\n\
             | y    | 2.0 | 20.0 | 1970-01-01T00:00:00.000000007 |"
        );
        assert_eq!(rows.len(), 3);
        assert!(rows.bytes() > 0);
    }

    #[test]
    fn a_newer_row_drops_the_fields_of_the_older_one() {
        let mut rows = LastRows::default();
        rows.apply(&batch(&[(Some("x"), Some(1.0), Some(10.0), 5)]))
            .unwrap();
        rows.apply(&batch(&[(Some("x"), None, Some(11.0), 6)]))
            .unwrap();
        let s = schema(&["host"], &["a", "b"]);
        assert_eq!(
            sorted(&rows, &s),
            "| host | a | b    | time                          |\n\
             | x    |   | 11.0 | 1970-01-01T00:00:00.000000006 |"
        );
    }

    #[test]
    fn a_missing_tag_column_is_the_same_series_as_a_null_tag() {
        let mut rows = LastRows::default();
        rows.apply(&batch(&[(None, Some(1.0), None, 5)])).unwrap();
        // The same series written without the host column, and a new column.
        let s = schema(&[], &["a", "c"]);
        let b = RecordBatch::try_new(
            s,
            vec![
                Arc::new(Float64Array::from(vec![Some(2.0)])),
                Arc::new(Float64Array::from(vec![Some(3.0)])),
                Arc::new(TimestampNanosecondArray::from_iter_values([6])),
            ],
        )
        .unwrap();
        rows.apply(&b).unwrap();
        assert_eq!(rows.len(), 1);
        let wide = schema(&["host", "zone"], &["a", "b", "c"]);
        assert_eq!(
            sorted(&rows, &wide),
            "| host | zone | a   | b | c   | time                          |\n\
             |      |      | 2.0 |   | 3.0 | 1970-01-01T00:00:00.000000006 |"
        );
    }

    #[test]
    fn tag_values_that_concatenate_alike_are_different_series() {
        let s = schema(&["p", "q"], &["a"]);
        let dict = |v: &[Option<&str>]| {
            let mut b = StringDictionaryBuilder::<Int32Type>::new();
            v.iter().for_each(|x| b.append_option(*x));
            Arc::new(b.finish()) as ArrayRef
        };
        let b = RecordBatch::try_new(
            s.clone(),
            vec![
                dict(&[Some("ab"), Some("a")]),
                dict(&[Some("c"), Some("bc")]),
                Arc::new(Float64Array::from(vec![1.0, 2.0])),
                Arc::new(TimestampNanosecondArray::from_iter_values([1, 1])),
            ],
        )
        .unwrap();
        let mut rows = LastRows::default();
        rows.apply(&b).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows.to_batch(&s).unwrap().num_rows(), 2);
    }

    #[test]
    fn an_empty_cache_is_an_empty_batch() {
        let s = schema(&["host"], &["a"]);
        assert_eq!(LastRows::default().to_batch(&s).unwrap().num_rows(), 0);
    }
}
