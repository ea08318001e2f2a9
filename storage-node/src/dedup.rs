//! Primary-key deduplication with InfluxDB semantics: rows with the same
//! series (tag set) and time are one point; for each field the newest
//! non-null value wins (a later write that omits a field keeps the older
//! value of that field).
//!
//! "Newer" is write order: batches are given oldest first, and within a
//! batch later rows are newer.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, UInt32Array, UInt64Array};
use arrow::compute::{concat_batches, lexsort_to_indices, take, SortColumn};
use arrow::datatypes::{DataType, SchemaRef};
use arrow::error::ArrowError;
use arrow::row::{RowConverter, SortField};
use strata_catalog::model::TIME_COLUMN;

use crate::flush::adapt_batch;

/// Whether a column is part of the primary key: a tag or the time.
pub fn is_key_column(name: &str, data_type: &DataType) -> bool {
    name == TIME_COLUMN || matches!(data_type, DataType::Dictionary(_, _))
}

/// Indices of the key columns of `schema`: tags in name order, then time.
pub(crate) fn key_columns(schema: &SchemaRef) -> Vec<usize> {
    let mut tags: Vec<usize> = schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() != TIME_COLUMN && is_key_column(f.name(), f.data_type()))
        .map(|(i, _)| i)
        .collect();
    tags.sort_by_key(|i| schema.field(*i).name().clone());
    tags.extend(schema.index_of(TIME_COLUMN).ok());
    tags
}

/// Merges `batches` (oldest first) into one batch sorted by (tags, time)
/// with one row per primary key.
pub fn dedup_sorted(
    batches: &[RecordBatch],
    schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    let aligned: Vec<RecordBatch> = batches
        .iter()
        .map(|b| adapt_batch(b, schema))
        .collect::<Result<_, _>>()?;
    let all = concat_batches(schema, &aligned)?;
    let n = all.num_rows();
    if n == 0 {
        return Ok(all);
    }
    let keys = key_columns(schema);

    // Sort by key, then by write position so that the newest version of a
    // key comes last in its group.
    let position: ArrayRef = Arc::new(UInt64Array::from_iter_values(0..n as u64));
    let mut sort: Vec<SortColumn> = keys
        .iter()
        .map(|i| SortColumn {
            values: all.column(*i).clone(),
            options: None,
        })
        .collect();
    sort.push(SortColumn {
        values: position,
        options: None,
    });
    let order = lexsort_to_indices(&sort, None)?;
    let sorted = arrow::compute::take_record_batch(&all, &order)?;

    // Group equal keys.
    let converter = RowConverter::new(
        keys.iter()
            .map(|i| SortField::new(schema.field(*i).data_type().clone()))
            .collect(),
    )?;
    let key_arrays: Vec<ArrayRef> = keys.iter().map(|i| sorted.column(*i).clone()).collect();
    let rows = converter.convert_columns(&key_arrays)?;
    let mut group_ends = vec![];
    for i in 1..n {
        if rows.row(i) != rows.row(i - 1) {
            group_ends.push(i);
        }
    }
    group_ends.push(n);
    if group_ends.len() == n {
        return Ok(sorted); // no duplicates
    }

    let mut columns = Vec::with_capacity(schema.fields().len());
    for (c, col) in sorted.columns().iter().enumerate() {
        let indices: UInt32Array = if keys.contains(&c) {
            let mut start = 0;
            group_ends
                .iter()
                .map(|end| {
                    let first = start as u32;
                    start = *end;
                    Some(first)
                })
                .collect()
        } else {
            // The newest non-null value of the group, or NULL.
            let mut start = 0;
            group_ends
                .iter()
                .map(|end| {
                    let chosen = (start..*end)
                        .rev()
                        .find(|i| col.is_valid(*i))
                        .map(|i| i as u32);
                    start = *end;
                    chosen
                })
                .collect()
        };
        columns.push(take(col.as_ref(), &indices, None)?);
    }
    RecordBatch::try_new(schema.clone(), columns)
}

#[cfg(test)]
mod tests {
    use arrow::array::{
        Float64Array, Int64Array, StringDictionaryBuilder, TimestampNanosecondArray,
    };
    use arrow::datatypes::{Field, Int32Type, Schema, TimeUnit};
    use arrow::util::pretty::pretty_format_batches;

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new(
                "host",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("a", DataType::Float64, true),
            Field::new("b", DataType::Int64, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]))
    }

    fn batch(rows: &[(&str, Option<f64>, Option<i64>, i64)]) -> RecordBatch {
        let mut host = StringDictionaryBuilder::<Int32Type>::new();
        for r in rows {
            host.append_value(r.0);
        }
        RecordBatch::try_new(
            schema(),
            vec![
                Arc::new(host.finish()),
                Arc::new(rows.iter().map(|r| r.1).collect::<Float64Array>()),
                Arc::new(rows.iter().map(|r| r.2).collect::<Int64Array>()),
                Arc::new(TimestampNanosecondArray::from(
                    rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn newest_non_null_value_wins_per_field() {
        let older = batch(&[("x", Some(1.0), Some(10), 5), ("y", Some(2.0), None, 5)]);
        let newer = batch(&[
            ("x", None, Some(11), 5),
            ("x", Some(3.0), None, 1),
            ("y", Some(4.0), None, 5),
        ]);
        let out = dedup_sorted(&[older, newer], &schema()).unwrap();
        let text = pretty_format_batches(&[out]).unwrap().to_string();
        let expected = "\
+------+-----+----+-------------------------------+
| host | a   | b  | time                          |
+------+-----+----+-------------------------------+
| x    | 3.0 |    | 1970-01-01T00:00:00.000000001 |
| x    | 1.0 | 11 | 1970-01-01T00:00:00.000000005 |
| y    | 4.0 |    | 1970-01-01T00:00:00.000000005 |
+------+-----+----+-------------------------------+";
        assert_eq!(text, expected);
    }

    #[test]
    fn later_rows_of_one_batch_are_newer() {
        let b = batch(&[("x", Some(1.0), None, 5), ("x", Some(2.0), None, 5)]);
        let out = dedup_sorted(&[b], &schema()).unwrap();
        assert_eq!(out.num_rows(), 1);
        let a = out
            .column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(a.value(0), 2.0);
    }

    #[test]
    fn rows_without_duplicates_are_only_sorted() {
        let b = batch(&[
            ("y", Some(1.0), None, 2),
            ("x", Some(2.0), None, 9),
            ("x", None, Some(3), 1),
        ]);
        let out = dedup_sorted(&[b], &schema()).unwrap();
        let t = out
            .column(3)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .unwrap();
        assert_eq!(t.values().to_vec(), vec![1, 9, 2]);
    }
}
