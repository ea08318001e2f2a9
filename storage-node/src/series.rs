//! The series index of a settled memtable batch: which rows hold each
//! series, so that a scan pinning tags (`=`, `IN`) and a time range reads
//! those rows without evaluating its filter over the whole memtable.
//!
//! A settled batch is sorted by its key (tags by name, then time) with one
//! row per key, so each series (tag set) is one run of rows, ordered by
//! time. The index keeps the runs and, per tag, the runs holding each value.
//! A lookup intersects the runs of the pinned values and cuts each run to
//! the time range by binary search: its cost follows the rows it returns,
//! not the rows the memtable holds. It only narrows: the scan applies its
//! whole filter to what the lookup returns.

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;

use arrow::array::{AsArray, RecordBatch, UInt32Array};
use arrow::compute::{cast, concat_batches, partition, take};
use arrow::datatypes::{DataType, TimestampNanosecondType};
use arrow::error::ArrowError;
use strata_catalog::model::TIME_COLUMN;

use crate::dedup::tag_columns;

/// What a scan's filters pin: a finite set of values per tag (a row
/// passes only with one of them) and an inclusive time range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeriesFilter {
    pub tags: Vec<(String, BTreeSet<String>)>,
    pub time: Option<(i64, i64)>,
}

impl SeriesFilter {
    /// Whether the filter narrows anything.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.time.is_none()
    }
}

#[derive(Debug, Default)]
pub struct SeriesIndex {
    /// Row range of each series, in key order.
    runs: Vec<Range<u32>>,
    /// Per tag column (by name), the series holding each value (ascending).
    /// A series without the tag (NULL) is under no value.
    by_tag: HashMap<String, HashMap<String, Vec<u32>>>,
    /// Index of the `time` column in the batch.
    time: Option<usize>,
    bytes: usize,
}

impl SeriesIndex {
    /// Indexes `batch`, which must be sorted by key with one row per key.
    pub fn build(batch: &RecordBatch) -> Result<Self, ArrowError> {
        let schema = batch.schema();
        let tags = tag_columns(&schema);
        let time = schema.index_of(TIME_COLUMN).ok();
        if batch.num_rows() == 0 || u32::try_from(batch.num_rows()).is_err() {
            return Ok(Self {
                time,
                ..Default::default()
            });
        }
        let runs: Vec<Range<u32>> = if tags.is_empty() {
            std::iter::once(0..batch.num_rows() as u32).collect()
        } else {
            let columns: Vec<_> = tags.iter().map(|i| batch.column(*i).clone()).collect();
            partition(&columns)?
                .ranges()
                .into_iter()
                .map(|r| r.start as u32..r.end as u32)
                .collect()
        };
        let starts = UInt32Array::from_iter_values(runs.iter().map(|r| r.start));
        let mut by_tag = HashMap::with_capacity(tags.len());
        let mut bytes = runs.len() * std::mem::size_of::<Range<u32>>();
        for i in tags {
            let firsts = cast(&take(batch.column(i), &starts, None)?, &DataType::Utf8)?;
            let firsts = firsts.as_string::<i32>();
            let mut values: HashMap<String, Vec<u32>> = HashMap::new();
            for (series, v) in firsts.iter().enumerate() {
                if let Some(v) = v {
                    match values.get_mut(v) {
                        Some(list) => list.push(series as u32),
                        None => {
                            bytes += v.len() + 64;
                            values.insert(v.to_string(), vec![series as u32]);
                        }
                    }
                    bytes += 4;
                }
            }
            by_tag.insert(schema.field(i).name().clone(), values);
        }
        Ok(Self {
            runs,
            by_tag,
            time,
            bytes,
        })
    }

    /// Memory the index holds, roughly.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The row ranges of `batch` (the batch this index was built for) that
    /// can pass `filter`, in row order; `None` when the filter narrows
    /// nothing the index can use.
    pub fn select(&self, batch: &RecordBatch, filter: &SeriesFilter) -> Option<Vec<Range<usize>>> {
        if filter.is_empty() {
            return None;
        }
        let mut series: Option<Vec<u32>> = None;
        for (tag, allowed) in &filter.tags {
            // A tag the batch lacks is NULL in every row: no value matches.
            let values = self.by_tag.get(tag);
            let mut ids: Vec<u32> = allowed
                .iter()
                .filter_map(|v| values.and_then(|m| m.get(v)))
                .flatten()
                .copied()
                .collect();
            ids.sort_unstable();
            series = Some(match series {
                None => ids,
                Some(prev) => intersect(&prev, &ids),
            });
        }
        let times = self.time.map(|i| {
            batch
                .column(i)
                .as_primitive::<TimestampNanosecondType>()
                .values()
        });
        let cut = |r: &Range<u32>| -> Range<usize> {
            let r = r.start as usize..r.end as usize;
            match (filter.time, times) {
                (Some((lo, hi)), Some(times)) => {
                    let run = &times[r.clone()];
                    let start = run.partition_point(|t| *t < lo);
                    let end = run.partition_point(|t| *t <= hi);
                    r.start + start..r.start + end.max(start)
                }
                _ => r,
            }
        };
        let ranges = match series {
            Some(ids) => ids
                .iter()
                .map(|s| cut(&self.runs[*s as usize]))
                .filter(|r| !r.is_empty())
                .collect(),
            None => self
                .runs
                .iter()
                .map(cut)
                .filter(|r| !r.is_empty())
                .collect(),
        };
        Some(ranges)
    }
}

/// Files with more series than this are not indexed: the index would take
/// more memory than it saves reading.
pub const MAX_FILE_SERIES: usize = 100_000;

/// The series index of a Parquet file (sorted by key, one row per key, as
/// every file is): the rows each series holds, by file row number, built
/// from the file's tag columns alone. A scan pinning tags reads only those
/// rows (a Parquet row selection) and skips a file that holds none.
#[derive(Debug)]
pub struct FileSeries {
    index: SeriesIndex,
    /// Rows in the file.
    pub rows: usize,
}

impl FileSeries {
    /// Reads the tag columns of the file at `path`; `None` when it has no
    /// tag column or more than [`MAX_FILE_SERIES`] series.
    pub fn read(path: &std::path::Path) -> Result<Option<Self>, String> {
        let Some(batches) = read_tag_columns(path)? else {
            return Ok(None);
        };
        let Some(first) = batches.first() else {
            return Ok(None);
        };
        let all = concat_batches(&first.schema(), &batches).map_err(|e| e.to_string())?;
        let index = SeriesIndex::build(&all).map_err(|e| e.to_string())?;
        if index.runs.len() > MAX_FILE_SERIES {
            return Ok(None);
        }
        Ok(Some(Self {
            index,
            rows: all.num_rows(),
        }))
    }

    /// The file rows of the series `filter`'s tags allow, in row order;
    /// `None` when it pins no tag.
    pub fn select(&self, filter: &SeriesFilter) -> Option<Vec<Range<usize>>> {
        if filter.tags.is_empty() {
            return None;
        }
        let tags_only = SeriesFilter {
            tags: filter.tags.clone(),
            time: None,
        };
        let no_rows =
            RecordBatch::new_empty(std::sync::Arc::new(arrow::datatypes::Schema::empty()));
        self.index.select(&no_rows, &tags_only)
    }

    /// Memory the index holds, roughly.
    pub fn bytes(&self) -> usize {
        self.index.bytes()
    }
}

/// The tag columns of the Parquet file at `path`, in file order; `None`
/// when it has no tag column.
pub(crate) fn read_tag_columns(path: &std::path::Path) -> Result<Option<Vec<RecordBatch>>, String> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| e.to_string())?;
    let tags = tag_columns(builder.schema());
    if tags.is_empty() {
        return Ok(None);
    }
    let mask = ProjectionMask::roots(builder.parquet_schema(), tags);
    let reader = builder
        .with_projection(mask)
        .with_batch_size(64 * 1024)
        .build()
        .map_err(|e| e.to_string())?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    Ok(Some(batches))
}

/// The rows of `batch` in `ranges`, as one batch.
pub fn rows_in(batch: &RecordBatch, ranges: &[Range<usize>]) -> Result<RecordBatch, ArrowError> {
    match ranges {
        [] => Ok(batch.slice(0, 0)),
        [r] => Ok(batch.slice(r.start, r.len())),
        _ => {
            let slices: Vec<RecordBatch> = ranges
                .iter()
                .map(|r| batch.slice(r.start, r.len()))
                .collect();
            concat_batches(&batch.schema(), &slices)
        }
    }
}

/// The ids in both ascending lists.
fn intersect(a: &[u32], b: &[u32]) -> Vec<u32> {
    let (mut i, mut j, mut out) = (0, 0, vec![]);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, DictionaryArray, Float64Array, TimestampNanosecondArray};
    use arrow::datatypes::{Field, Int32Type, Schema};

    use super::*;

    /// Rows sorted by (host, region, time): h1/eu at 1..4, h2/eu at 1..3,
    /// h2/us at 2, a row without host at 5.
    fn batch() -> RecordBatch {
        let rows: &[(Option<&str>, &str, i64)] = &[
            (None, "eu", 5),
            (Some("h1"), "eu", 1),
            (Some("h1"), "eu", 2),
            (Some("h1"), "eu", 3),
            (Some("h1"), "eu", 4),
            (Some("h2"), "eu", 1),
            (Some("h2"), "eu", 3),
            (Some("h2"), "us", 2),
        ];
        let dict = |v: Vec<Option<&str>>| -> Arc<dyn Array> {
            Arc::new(v.into_iter().collect::<DictionaryArray<Int32Type>>())
        };
        let tag = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", tag.clone(), true),
            Field::new("region", tag, true),
            Field::new(
                TIME_COLUMN,
                DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
                false,
            ),
            Field::new("v", DataType::Float64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                dict(rows.iter().map(|r| r.0).collect()),
                dict(rows.iter().map(|r| Some(r.1)).collect()),
                Arc::new(TimestampNanosecondArray::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                )),
                Arc::new(Float64Array::from(
                    (0..rows.len()).map(|i| i as f64).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn filter(tags: &[(&str, &[&str])], time: Option<(i64, i64)>) -> SeriesFilter {
        SeriesFilter {
            tags: tags
                .iter()
                .map(|(t, vs)| (t.to_string(), vs.iter().map(|v| v.to_string()).collect()))
                .collect(),
            time,
        }
    }

    fn values(batch: &RecordBatch, ranges: &[Range<usize>]) -> Vec<f64> {
        let rows = rows_in(batch, ranges).unwrap();
        let v: &Float64Array = rows.column(3).as_primitive();
        v.values().to_vec()
    }

    #[test]
    fn lookups_return_the_rows_of_the_pinned_series_in_the_time_range() {
        let b = batch();
        let index = SeriesIndex::build(&b).unwrap();
        assert_eq!(index.runs.len(), 4);
        let select = |f: SeriesFilter| index.select(&b, &f);
        assert_eq!(select(filter(&[], None)), None);
        let r = select(filter(&[("host", &["h1"])], None)).unwrap();
        assert_eq!(values(&b, &r), [1.0, 2.0, 3.0, 4.0]);
        let r = select(filter(&[("host", &["h1"])], Some((2, 3)))).unwrap();
        assert_eq!(values(&b, &r), [2.0, 3.0]);
        let r = select(filter(&[("host", &["h2", "h1"])], Some((3, 9)))).unwrap();
        assert_eq!(values(&b, &r), [3.0, 4.0, 6.0]);
        let r = select(filter(&[("host", &["h2"]), ("region", &["us"])], None)).unwrap();
        assert_eq!(values(&b, &r), [7.0]);
        let r = select(filter(&[("region", &["eu"])], Some((5, 5)))).unwrap();
        assert_eq!(values(&b, &r), [0.0]);
        // Unknown values and tags, and an empty range, select nothing.
        assert_eq!(select(filter(&[("host", &["h9"])], None)), Some(vec![]));
        assert_eq!(select(filter(&[("rack", &["r1"])], None)), Some(vec![]));
        assert_eq!(select(filter(&[], Some((6, 9)))), Some(vec![]));
        let r = select(filter(&[], Some((2, 2)))).unwrap();
        assert_eq!(values(&b, &r), [2.0, 7.0]);
    }

    #[test]
    fn a_batch_without_tags_is_one_series() {
        let b = batch();
        // h1's rows alone, without the tag columns: times 1..4.
        let b = b.slice(1, 4).project(&[2, 3]).unwrap();
        let index = SeriesIndex::build(&b).unwrap();
        assert_eq!(index.runs.len(), 1);
        let r = index.select(&b, &filter(&[], Some((2, 3)))).unwrap();
        assert_eq!(r, vec![1..3]);
        assert_eq!(
            index.select(&b, &filter(&[("host", &["h1"])], None)),
            Some(vec![])
        );
    }
}
