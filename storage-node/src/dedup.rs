//! Primary-key deduplication with InfluxDB semantics: rows with the same
//! series (tag set) and time are one point; for each field the newest
//! non-null value wins (a later write that omits a field keeps the older
//! value of that field).
//!
//! "Newer" is write order: batches are given oldest first, and within a
//! batch later rows are newer.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{concat_batches, take};
use arrow::datatypes::{DataType, Int64Type, SchemaRef};
use arrow::error::ArrowError;
use strata_catalog::model::TIME_COLUMN;

use crate::flush::adapt_batch;

/// Whether a column is part of the primary key: a tag or the time.
pub fn is_key_column(name: &str, data_type: &DataType) -> bool {
    name == TIME_COLUMN || matches!(data_type, DataType::Dictionary(_, _))
}

/// Indices of the tag columns of `schema`, in schema order.
pub fn tag_columns(schema: &SchemaRef) -> Vec<usize> {
    schema
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| f.name() != TIME_COLUMN && is_key_column(f.name(), f.data_type()))
        .map(|(i, _)| i)
        .collect()
}

/// Indices of the key columns of `schema`: tags in name order, then time.
pub(crate) fn key_columns(schema: &SchemaRef) -> Vec<usize> {
    let mut tags = tag_columns(schema);
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
    let mut out = vec![];
    dedup_sorted_chunks(batches, schema, usize::MAX, |b| {
        out.push(b);
        Ok(())
    })?;
    match out.len() {
        1 => Ok(out.pop().expect("one batch")),
        _ => concat_batches(schema, &out),
    }
}

/// `batch` in batches of at most `rows` rows, each with buffers of its
/// own when it had to be cut: a slice would report (and keep) the whole
/// batch's memory to a query's memory pool.
pub fn split_owned(batch: RecordBatch, rows: usize) -> Result<Vec<RecordBatch>, ArrowError> {
    let rows = rows.max(1);
    if batch.num_rows() <= rows {
        return Ok(vec![batch]);
    }
    (0..batch.num_rows())
        .step_by(rows)
        .map(|o| {
            let len = rows.min(batch.num_rows() - o);
            let indices = UInt32Array::from_iter_values(o as u32..(o + len) as u32);
            arrow::compute::take_record_batch(&batch, &indices)
        })
        .collect()
}

/// Like [`dedup_sorted`], but hands the result to `emit` in batches of at
/// most `max_cells` cells (rows × columns of `schema`, at least one row).
///
/// Memory follows the data, not the width of `schema`: only the key
/// columns of all rows are gathered (to sort them); field values are
/// copied straight from the input batches into each output batch. Sparse
/// batches of a table with thousands of columns, each carrying a few of
/// them, are never widened to the full schema.
pub fn dedup_sorted_chunks(
    batches: &[RecordBatch],
    schema: &SchemaRef,
    max_cells: usize,
    mut emit: impl FnMut(RecordBatch) -> Result<(), ArrowError>,
) -> Result<(), ArrowError> {
    let index: HashMap<&str, usize> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name().as_str(), i))
        .collect();
    // A column whose type differs from the merged one (a NULL-typed
    // column, say) is cast, as `adapt_batch` does for the dense case.
    let cast: Vec<RecordBatch> = batches
        .iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| cast_to(b, schema, &index))
        .collect::<Result<_, _>>()?;
    let batches: Vec<&RecordBatch> = cast.iter().collect();
    let n: usize = batches.iter().map(|b| b.num_rows()).sum();
    if n == 0 {
        return emit(RecordBatch::new_empty(schema.clone()));
    }
    let keys = key_columns(schema);
    let width = schema.fields().len();
    let rows_per_batch = (max_cells / width.max(1)).max(1);
    if batches.iter().all(|b| b.num_columns() == width) {
        for b in dedup_dense(&batches, schema, rows_per_batch)? {
            emit(b)?;
        }
        return Ok(());
    }

    // Where each batch keeps each column of `schema`: (schema column,
    // batch column) pairs, as many as the batch has columns.
    let mut columns_of: Vec<Vec<(usize, usize)>> = Vec::with_capacity(batches.len());
    for b in &batches {
        let mut cols = Vec::with_capacity(b.num_columns());
        for (j, f) in b.schema().fields().iter().enumerate() {
            if let Some(&i) = index.get(f.name().as_str()) {
                cols.push((i, j));
            }
        }
        cols.sort_unstable();
        columns_of.push(cols);
    }
    // The key columns of all rows, in write order.
    let key_arrays: Vec<ArrayRef> = keys
        .iter()
        .map(|k| {
            let field = schema.field(*k);
            let parts: Vec<ArrayRef> = batches
                .iter()
                .map(|b| match b.column_by_name(field.name()) {
                    Some(c) => c.clone(),
                    None => new_null_array(field.data_type(), b.num_rows()),
                })
                .collect();
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            arrow::compute::concat(&refs)
        })
        .collect::<Result<_, _>>()?;
    // Where each batch starts in write order.
    let starts: Vec<usize> = batches
        .iter()
        .scan(0, |at, b| {
            let start = *at;
            *at += b.num_rows();
            Some(start)
        })
        .collect();
    let locate = |row: usize| -> (usize, usize) {
        let b = starts.partition_point(|s| *s <= row) - 1;
        (b, row - starts[b])
    };

    // Sorted by key, the newest version of a key last in its group.
    let (order, group_ends) = key_order(&key_arrays)?;

    let groups_per_batch = rows_per_batch;
    // For the groups of one output batch: which (input batch, row) gives
    // each cell, or NONE (NULL).
    const NONE: (u32, u32) = (u32::MAX, u32::MAX);
    let mut chosen: Vec<(u32, u32)> = vec![];
    // Scratch of `gather_column`: each input batch's slot among a column's
    // sources.
    let mut slot_of = vec![usize::MAX; batches.len()];
    let mut first = 0;
    for chunk in group_ends.chunks(groups_per_batch) {
        let g_count = chunk.len();
        chosen.clear();
        chosen.resize(g_count * width, NONE);
        let mut key_rows = Vec::with_capacity(g_count);
        let mut start = first;
        for (g, end) in chunk.iter().enumerate() {
            key_rows.push(order.value(start));
            // Newest first: a cell takes the first non-null value it meets.
            for p in (start..*end).rev() {
                let (b, r) = locate(order.value(p) as usize);
                let batch = batches[b];
                for (i, j) in &columns_of[b] {
                    let cell = &mut chosen[g * width + i];
                    if *cell == NONE && batch.column(*j).is_valid(r) {
                        *cell = (b as u32, r as u32);
                    }
                }
            }
            start = *end;
        }
        first = start;

        let key_rows = UInt32Array::from(key_rows);
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(width);
        for (i, field) in schema.fields().iter().enumerate() {
            if let Some(k) = keys.iter().position(|k| *k == i) {
                columns.push(take(key_arrays[k].as_ref(), &key_rows, None)?);
                continue;
            }
            let cells = (0..g_count).map(|g| chosen[g * width + i]);
            let source = |b: u32| {
                let cols = &columns_of[b as usize];
                let at = cols
                    .binary_search_by_key(&i, |(i, _)| *i)
                    .expect("a chosen cell's batch has the column");
                batches[b as usize].column(cols[at].1).clone()
            };
            columns.push(gather_column(
                field.data_type(),
                cells,
                NONE,
                source,
                &mut slot_of,
            )?);
        }
        emit(RecordBatch::try_new(schema.clone(), columns)?)?;
    }
    Ok(())
}

/// The dense case: every batch has every column, so the rows are
/// concatenated, sorted and deduplicated column by column.
/// The deduplicated rows in batches of at most `rows_per_batch` rows,
/// each with buffers of its own: a slice of one large batch would report
/// (and hold) the whole batch's memory to the query's memory pool.
fn dedup_dense(
    batches: &[&RecordBatch],
    schema: &SchemaRef,
    rows_per_batch: usize,
) -> Result<Vec<RecordBatch>, ArrowError> {
    let aligned: Vec<RecordBatch> = batches
        .iter()
        .map(|b| adapt_batch(b, schema))
        .collect::<Result<_, _>>()?;
    let all = concat_batches(schema, &aligned)?;
    let n = all.num_rows();
    if n == 0 {
        return Ok(vec![]);
    }
    let keys = key_columns(schema);
    let chunks = |rows: usize| {
        (0..rows)
            .step_by(rows_per_batch)
            .map(move |o| (o, rows_per_batch.min(rows - o)))
    };

    // Sorted by key, the newest version of a key last in its group.
    let key_arrays: Vec<ArrayRef> = keys.iter().map(|i| all.column(*i).clone()).collect();
    let (order, group_ends) = key_order(&key_arrays)?;
    if group_ends.len() == n {
        // No duplicates.
        return chunks(n)
            .map(|(o, len)| arrow::compute::take_record_batch(&all, &order.slice(o, len)))
            .collect();
    }
    let sorted = arrow::compute::take_record_batch(&all, &order)?;

    let mut picks: Vec<UInt32Array> = Vec::with_capacity(schema.fields().len());
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
        picks.push(indices);
    }
    chunks(group_ends.len())
        .map(|(o, len)| {
            let columns = sorted
                .columns()
                .iter()
                .zip(&picks)
                .map(|(col, p)| take(col.as_ref(), &p.slice(o, len), None))
                .collect::<Result<Vec<_>, _>>()?;
            RecordBatch::try_new(schema.clone(), columns)
        })
        .collect()
}

/// The order that sorts rows by their key (`keys`: tag columns, then the
/// time column), rows of one key in write order, and the end of each run
/// of equal keys in that order (one past its last position).
///
/// Comparing rows column by column costs a string comparison per tag at
/// every step of the sort, and rows of one series are equal on every tag.
/// Instead each row's tags become one number that sorts as they do: a
/// dictionary's values are ranked once, and a row's ranks are folded into
/// a `u64` (re-ranked whenever the next column would overflow it). Rows
/// then sort as (series number, time, position) triples.
fn key_order(keys: &[ArrayRef]) -> Result<(UInt32Array, Vec<usize>), ArrowError> {
    let n = keys.first().map_or(0, |k| k.len());
    let mut series = vec![0u64; n];
    // `series` values are below `bound`.
    let mut bound: u64 = 1;
    let mut time: Option<Vec<Option<i64>>> = None;
    for key in keys {
        if matches!(key.data_type(), DataType::Timestamp(_, _)) {
            let t = arrow::compute::cast(key, &DataType::Int64)?;
            time = Some(t.as_primitive::<Int64Type>().iter().collect());
            continue;
        }
        let (ranks, width) = tag_ranks(key.as_ref())?;
        let width = width as u64;
        if bound.checked_mul(width).is_none() {
            bound = rerank(&mut series);
        }
        bound = bound
            .checked_mul(width)
            .ok_or_else(|| ArrowError::ComputeError("too many rows to order by key".to_string()))?;
        for (s, r) in series.iter_mut().zip(ranks) {
            *s = *s * width + r as u64;
        }
    }
    let mut rows: Vec<(u64, Option<i64>, u32)> = (0..n)
        .map(|i| (series[i], time.as_ref().and_then(|t| t[i]), i as u32))
        .collect();
    drop(series);
    rows.sort_unstable();
    let mut group_ends = Vec::with_capacity(n);
    for i in 1..n {
        if (rows[i].0, rows[i].1) != (rows[i - 1].0, rows[i - 1].1) {
            group_ends.push(i);
        }
    }
    if n > 0 {
        group_ends.push(n);
    }
    let order = UInt32Array::from_iter_values(rows.into_iter().map(|r| r.2));
    Ok((order, group_ends))
}

/// Each row's rank among the distinct values of a tag column (0 for
/// NULL, which sorts first), and how many ranks there are.
fn tag_ranks(column: &dyn Array) -> Result<(Vec<u32>, u32), ArrowError> {
    let Some(dict) = column.as_any_dictionary_opt() else {
        // Not a dictionary: rank the rows themselves.
        return value_ranks(column);
    };
    let (of_value, width) = value_ranks(dict.values().as_ref())?;
    let keys = dict.normalized_keys();
    let ranks = match column.logical_nulls() {
        None => keys.iter().map(|k| of_value[*k]).collect(),
        Some(nulls) => keys
            .iter()
            .enumerate()
            .map(|(i, k)| if nulls.is_valid(i) { of_value[*k] } else { 0 })
            .collect(),
    };
    Ok((ranks, width))
}

/// Dense ranks of `values` from 1 in sort order, 0 for NULL, and one more
/// than the largest.
fn value_ranks(values: &dyn Array) -> Result<(Vec<u32>, u32), ArrowError> {
    let order = arrow::compute::sort_to_indices(values, None, None)?;
    let same = arrow::array::make_comparator(values, values, Default::default())?;
    let mut ranks = vec![0u32; values.len()];
    let mut rank = 0u32;
    let mut previous: Option<usize> = None;
    for i in order.values().iter().map(|i| *i as usize) {
        if values.is_null(i) {
            continue;
        }
        if previous.is_none_or(|p| same(p, i) != std::cmp::Ordering::Equal) {
            rank += 1;
        }
        ranks[i] = rank;
        previous = Some(i);
    }
    Ok((ranks, rank + 1))
}

/// Replaces each value by its rank among the distinct values; returns how
/// many there are.
fn rerank(values: &mut [u64]) -> u64 {
    let mut distinct = values.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    for v in values.iter_mut() {
        *v = distinct
            .binary_search(v)
            .expect("a value is among the distinct ones") as u64;
    }
    distinct.len() as u64
}

/// `batch` with each column of `schema` it has cast to the schema's type
/// (columns stay where they are; `schema` need not list them all).
fn cast_to(
    batch: &RecordBatch,
    schema: &SchemaRef,
    index: &HashMap<&str, usize>,
) -> Result<RecordBatch, ArrowError> {
    let bs = batch.schema();
    let merged = |name: &str| index.get(name).map(|i| schema.field(*i));
    let wrong = bs
        .fields()
        .iter()
        .any(|f| merged(f.name()).is_some_and(|m| m.data_type() != f.data_type()));
    if !wrong {
        return Ok(batch.clone());
    }
    let mut fields = Vec::with_capacity(bs.fields().len());
    let mut columns = Vec::with_capacity(bs.fields().len());
    for (f, c) in bs.fields().iter().zip(batch.columns()) {
        match merged(f.name()) {
            Some(m) if m.data_type() != f.data_type() => {
                columns.push(arrow::compute::cast(c, m.data_type())?);
                fields.push(f.as_ref().clone().with_data_type(m.data_type().clone()));
            }
            _ => {
                columns.push(c.clone());
                fields.push(f.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(arrow::datatypes::Schema::new(fields)), columns)
}

/// One output column from the (batch, row) of each cell, NULL where
/// `none`; `source(b)` is batch `b`'s array of the column. `slot_of` is
/// scratch, one entry per input batch, all `usize::MAX` between calls.
fn gather_column(
    data_type: &DataType,
    cells: impl Iterator<Item = (u32, u32)>,
    none: (u32, u32),
    source: impl Fn(u32) -> ArrayRef,
    slot_of: &mut [usize],
) -> Result<ArrayRef, ArrowError> {
    let mut sources: Vec<ArrayRef> = vec![new_null_array(data_type, 1)];
    let mut used: Vec<u32> = vec![];
    let mut indices = Vec::new();
    for cell in cells {
        if cell == none {
            indices.push((0, 0));
            continue;
        }
        let slot = &mut slot_of[cell.0 as usize];
        if *slot == usize::MAX {
            sources.push(source(cell.0));
            used.push(cell.0);
            *slot = sources.len() - 1;
        }
        indices.push((*slot, cell.1 as usize));
    }
    for b in used {
        slot_of[b as usize] = usize::MAX;
    }
    if sources.len() == 1 {
        return Ok(new_null_array(data_type, indices.len()));
    }
    let refs: Vec<&dyn Array> = sources.iter().map(|a| a.as_ref()).collect();
    arrow::compute::interleave(&refs, &indices)
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

    /// A seeded stream of numbers below the bound asked for each time.
    fn numbers(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        }
    }

    /// Batches that each carry some of the fields give, chunk by chunk and
    /// at any chunk size, exactly what their widened, dense merge gives.
    #[test]
    fn sparse_batches_merge_like_their_dense_form_at_any_chunk_size() {
        let mut next = numbers(7);
        let mut batches = vec![];
        for _ in 0..30 {
            let rows: Vec<(&str, Option<f64>, Option<i64>, i64)> = (0..1 + next(8))
                .map(|_| {
                    let host = ["x", "y", "z"][next(3) as usize];
                    let a = (next(3) > 0).then(|| next(100) as f64);
                    let b = (next(3) > 0).then(|| next(100) as i64);
                    (host, a, b, next(10) as i64)
                })
                .collect();
            let full = batch(&rows);
            batches.push(match next(3) {
                0 => full.project(&[0, 1, 3]).unwrap(),
                1 => full.project(&[0, 2, 3]).unwrap(),
                _ => full,
            });
        }
        let schema = schema();
        let widened: Vec<RecordBatch> = batches
            .iter()
            .map(|b| adapt_batch(b, &schema).unwrap())
            .collect();
        let refs: Vec<&RecordBatch> = widened.iter().collect();
        let want = concat_batches(&schema, &dedup_dense(&refs, &schema, 7).unwrap()).unwrap();
        for max_cells in [1, 4, 9, 40, usize::MAX] {
            let mut got = vec![];
            dedup_sorted_chunks(&batches, &schema, max_cells, |b| {
                assert!(b.num_rows() * b.num_columns() <= max_cells.max(4));
                got.push(b);
                Ok(())
            })
            .unwrap();
            let got = concat_batches(&schema, &got).unwrap();
            assert_eq!(got, want, "max_cells {max_cells}");
        }
    }

    /// Rows ordered by folded tag ranks come out exactly as a column-by-
    /// column sort orders them: NULL tags first, dictionaries with repeated
    /// and unused values, and enough distinct values per column that the
    /// folded number is re-ranked on the way.
    #[test]
    fn key_order_matches_a_column_by_column_sort() {
        use arrow::compute::{lexsort_to_indices, SortColumn};
        let mut next = numbers(11);
        let n = 20_000;
        for (columns, distinct) in [(1, 3), (3, 50), (5, 12_000)] {
            let mut keys: Vec<ArrayRef> = vec![];
            for _ in 0..columns {
                let mut b = StringDictionaryBuilder::<Int32Type>::new();
                for _ in 0..n {
                    match next(distinct + 1) {
                        0 => b.append_null(),
                        v => b.append_value(format!("v{v}")),
                    }
                }
                let dict = b.finish();
                // The same values again under other keys, some unused.
                let (keys_array, values) = (dict.keys().clone(), dict.values().clone());
                let doubled = arrow::compute::concat(&[values.as_ref(), values.as_ref()]).unwrap();
                let shifted: arrow::array::Int32Array = keys_array
                    .iter()
                    .map(|k| k.map(|k| k + values.len() as i32 * (next(2) as i32)))
                    .collect();
                keys.push(Arc::new(
                    arrow::array::DictionaryArray::<Int32Type>::try_new(shifted, doubled).unwrap(),
                ));
            }
            keys.push(Arc::new(TimestampNanosecondArray::from_iter_values(
                (0..n).map(|_| next(4) as i64),
            )));
            let mut sort: Vec<SortColumn> = keys
                .iter()
                .map(|k| SortColumn {
                    values: k.clone(),
                    options: None,
                })
                .collect();
            sort.push(SortColumn {
                values: Arc::new(arrow::array::UInt64Array::from_iter_values(0..n)),
                options: None,
            });
            let want = lexsort_to_indices(&sort, None).unwrap();
            let (got, ends) = key_order(&keys).unwrap();
            assert_eq!(got, want, "{columns} columns of {distinct} values");
            let sorted: Vec<ArrayRef> = keys.iter().map(|k| take(k, &got, None).unwrap()).collect();
            let converter = arrow::row::RowConverter::new(
                sorted
                    .iter()
                    .map(|k| arrow::row::SortField::new(k.data_type().clone()))
                    .collect(),
            )
            .unwrap();
            let rows = converter.convert_columns(&sorted).unwrap();
            let want_ends: Vec<usize> = (1..n as usize)
                .filter(|i| rows.row(*i) != rows.row(i - 1))
                .chain([n as usize])
                .collect();
            assert_eq!(ends, want_ends, "{columns} columns of {distinct} values");
        }
    }
}
