//! Streaming merge-dedup of sorted sources: the k-way merge that scans and
//! compactions run over Parquet files (and a memtable) whose time ranges
//! overlap.
//!
//! Every source yields rows sorted by the primary key (tags in name order,
//! then time) with at most one row per key, as files and settled memtables
//! do. Sources are given oldest first; where a key is in several, the
//! output row takes each field from the newest source that has a non-null
//! value for it, the same rule as [`crate::dedup::dedup_sorted`].
//!
//! [`MergeDedup`] is push-driven, so the same code serves async scans and
//! the blocking compaction: the caller asks [`MergeDedup::wanted`] which
//! source needs its next batch, pushes it, and pulls merged batches with
//! [`MergeDedup::next_batch`]. Memory stays at about one batch per source
//! plus one output batch. Runs of rows from one source that no other source
//! interleaves are found by binary search, so sources that overlap in time
//! but rarely in key cost little more than concatenation.

use std::cmp::Ordering;

use arrow::array::{Array, RecordBatch};
use arrow::compute::interleave;
use arrow::datatypes::SchemaRef;
use arrow::error::ArrowError;
use arrow::row::{RowConverter, Rows, SortField};

use crate::dedup::key_columns;
use crate::flush::adapt_batch;

/// The next batch of one source, or its end.
struct Cursor {
    /// Index of the batch in [`MergeDedup::held`].
    held: usize,
    rows: Rows,
    pos: usize,
}

enum Source {
    /// Waiting for its next batch.
    Wanted,
    Reading(Cursor),
    Done,
}

/// K-way merge of sorted, per-key-unique sources with field-wise
/// newest-wins deduplication.
pub struct MergeDedup {
    schema: SchemaRef,
    keys: Vec<usize>,
    /// The other columns: fields, merged value by value.
    fields: Vec<usize>,
    converter: RowConverter,
    /// Sources oldest first.
    sources: Vec<Source>,
    /// Batches the pending output refers to, and those cursors read.
    held: Vec<RecordBatch>,
    /// Pending output rows: (held batch, row) of the newest version.
    out: Vec<(usize, usize)>,
    /// Field values taken from an older version because the newest is
    /// NULL: (output row, column, (held batch, row)).
    overrides: Vec<(usize, usize, (usize, usize))>,
    batch_size: usize,
    /// Scratch for the sources holding the smallest key (reused per step).
    min: Vec<usize>,
}

impl MergeDedup {
    /// A merge of `sources` sources whose batches are aligned to `schema`.
    pub fn new(schema: SchemaRef, sources: usize, batch_size: usize) -> Result<Self, ArrowError> {
        let keys = key_columns(&schema);
        let converter = RowConverter::new(
            keys.iter()
                .map(|i| SortField::new(schema.field(*i).data_type().clone()))
                .collect(),
        )?;
        let fields = (0..schema.fields().len())
            .filter(|c| !keys.contains(c))
            .collect();
        Ok(Self {
            schema,
            keys,
            fields,
            converter,
            sources: (0..sources).map(|_| Source::Wanted).collect(),
            held: vec![],
            out: vec![],
            overrides: vec![],
            batch_size: batch_size.max(1),
            min: vec![],
        })
    }

    /// A source the merge cannot go on without: push its next batch.
    pub fn wanted(&self) -> Option<usize> {
        self.sources
            .iter()
            .position(|s| matches!(s, Source::Wanted))
    }

    /// Gives source `i` its next batch, or `None` at its end. Empty batches
    /// are skipped (the source stays wanted).
    pub fn push(&mut self, i: usize, batch: Option<RecordBatch>) -> Result<(), ArrowError> {
        let Some(batch) = batch else {
            self.sources[i] = Source::Done;
            return Ok(());
        };
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let batch = adapt_batch(&batch, &self.schema)?;
        let keys: Vec<_> = self.keys.iter().map(|k| batch.column(*k).clone()).collect();
        let rows = self.converter.convert_columns(&keys)?;
        self.held.push(batch);
        self.sources[i] = Source::Reading(Cursor {
            held: self.held.len() - 1,
            rows,
            pos: 0,
        });
        Ok(())
    }

    /// The next merged batch: `Some` when a full batch is ready, or when
    /// every source has ended and rows are left; `None` when a source is
    /// wanted first (see [`Self::wanted`]) or the merge is over.
    pub fn next_batch(&mut self) -> Result<Option<RecordBatch>, ArrowError> {
        while self.out.len() < self.batch_size {
            if self.wanted().is_some() {
                return Ok(None);
            }
            if !self.step() {
                break; // every source has ended
            }
        }
        if self.out.is_empty() {
            return Ok(None);
        }
        self.emit().map(Some)
    }

    /// Whether every source has ended and every row was returned.
    pub fn is_done(&self) -> bool {
        self.out.is_empty() && self.sources.iter().all(|s| matches!(s, Source::Done))
    }

    fn cursor(&self, i: usize) -> Option<&Cursor> {
        match &self.sources[i] {
            Source::Reading(c) => Some(c),
            _ => None,
        }
    }

    /// Moves the smallest key (or a run of keys only one source has) to
    /// the output. Needs every live source to be reading; false when all
    /// have ended.
    fn step(&mut self) -> bool {
        // The sources holding the smallest current key, oldest first, and
        // the smallest key among the other sources.
        let mut min = std::mem::take(&mut self.min);
        min.clear();
        let mut next: Option<usize> = None;
        for i in 0..self.sources.len() {
            let Some(c) = self.cursor(i) else { continue };
            let row = c.rows.row(c.pos);
            let Some(&m) = min.first() else {
                min.push(i);
                continue;
            };
            let mc = self.cursor(m).expect("reading");
            match row.cmp(&mc.rows.row(mc.pos)) {
                Ordering::Less => {
                    next = Some(m);
                    min.clear();
                    min.push(i);
                }
                Ordering::Equal => min.push(i),
                Ordering::Greater => {
                    let closer = next.is_none_or(|n| {
                        let nc = self.cursor(n).expect("reading");
                        row < nc.rows.row(nc.pos)
                    });
                    if closer {
                        next = Some(i);
                    }
                }
            }
        }
        let more = match min.as_slice() {
            [] => false,
            [only] => {
                self.take_run(*only, next);
                true
            }
            _ => {
                self.take_group(&min);
                true
            }
        };
        self.min = min;
        more
    }

    /// Outputs the rows of source `i` up to (not including) the current
    /// key of source `bound`, at most what fits in the output batch.
    fn take_run(&mut self, i: usize, bound: Option<usize>) {
        let c = self.cursor(i).expect("reading");
        let room = self.batch_size - self.out.len();
        let mut end = c.rows.num_rows().min(c.pos + room);
        if let Some(b) = bound {
            let bc = self.cursor(b).expect("reading");
            let limit = bc.rows.row(bc.pos);
            // First row at or past `limit`; the row at `pos` is below it.
            let (mut lo, mut hi) = (c.pos + 1, end);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if c.rows.row(mid) < limit {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            end = lo;
        }
        let (held, start) = (c.held, c.pos);
        self.out.extend((start..end).map(|r| (held, r)));
        self.advance(i, end);
    }

    /// Outputs one row for a key several sources hold (`members`, oldest
    /// first): the newest version, with NULL fields filled from older ones.
    fn take_group(&mut self, members: &[usize]) {
        let at = |s: &Self, i: usize| {
            let c = s.cursor(i).expect("reading");
            (c.held, c.pos)
        };
        let newest = at(self, *members.last().expect("a group has members"));
        let row = self.out.len();
        self.out.push(newest);
        for &col in &self.fields {
            if self.held[newest.0].column(col).is_valid(newest.1) {
                continue;
            }
            let older = members
                .iter()
                .rev()
                .skip(1)
                .map(|i| at(self, *i))
                .find(|(held, r)| self.held[*held].column(col).is_valid(*r));
            if let Some(from) = older {
                self.overrides.push((row, col, from));
            }
        }
        for i in members {
            let pos = self.cursor(*i).expect("reading").pos;
            self.advance(*i, pos + 1);
        }
    }

    fn advance(&mut self, i: usize, to: usize) {
        if let Source::Reading(c) = &mut self.sources[i] {
            c.pos = to;
            if c.pos == c.rows.num_rows() {
                self.sources[i] = Source::Wanted;
            }
        }
    }

    /// Builds the pending output and drops the batches nothing refers to.
    fn emit(&mut self) -> Result<RecordBatch, ArrowError> {
        let mut columns = Vec::with_capacity(self.schema.fields().len());
        for col in 0..self.schema.fields().len() {
            let arrays: Vec<&dyn Array> =
                self.held.iter().map(|b| b.column(col).as_ref()).collect();
            let mut indices = std::borrow::Cow::Borrowed(&self.out);
            for (row, c, from) in &self.overrides {
                if *c == col {
                    indices.to_mut()[*row] = *from;
                }
            }
            columns.push(interleave(&arrays, &indices)?);
        }
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.out.clear();
        self.overrides.clear();
        // Keep only the batches cursors still read, renumbered.
        let mut kept = vec![];
        for s in &mut self.sources {
            if let Source::Reading(c) = s {
                kept.push(self.held[c.held].clone());
                c.held = kept.len() - 1;
            }
        }
        self.held = kept;
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{
        Float64Array, Int64Array, StringDictionaryBuilder, TimestampNanosecondArray,
    };
    use arrow::datatypes::{DataType, Field, Int32Type, Schema, TimeUnit};
    use arrow::util::pretty::pretty_format_batches;

    use super::*;
    use crate::dedup::dedup_sorted;

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

    type Row = (String, Option<f64>, Option<i64>, i64);

    fn batch(rows: &[Row]) -> RecordBatch {
        let mut host = StringDictionaryBuilder::<Int32Type>::new();
        for r in rows {
            host.append_value(&r.0);
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

    /// Runs the merge over sources given as batches, pushing one batch at
    /// a time as the merge asks.
    fn merge(sources: Vec<Vec<RecordBatch>>, batch_size: usize) -> Vec<RecordBatch> {
        let mut m = MergeDedup::new(schema(), sources.len(), batch_size).unwrap();
        let mut iters: Vec<_> = sources.into_iter().map(|s| s.into_iter()).collect();
        let mut out = vec![];
        loop {
            while let Some(i) = m.wanted() {
                m.push(i, iters[i].next()).unwrap();
            }
            match m.next_batch().unwrap() {
                Some(b) => {
                    assert!(b.num_rows() <= batch_size);
                    out.push(b);
                }
                None if m.is_done() => return out,
                None => assert!(m.wanted().is_some(), "no output and nothing wanted"),
            }
        }
    }

    fn text(batches: &[RecordBatch]) -> String {
        let all = arrow::compute::concat_batches(&schema(), batches).unwrap();
        pretty_format_batches(&[all]).unwrap().to_string()
    }

    /// A seeded linear congruential generator: reproducible cases without
    /// a dependency.
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    #[test]
    fn newest_source_wins_field_by_field() {
        let older = batch(&[
            ("x".into(), Some(1.0), Some(10), 5),
            ("y".into(), Some(2.0), Some(20), 5),
        ]);
        let newer = batch(&[
            ("x".into(), None, Some(11), 5),
            ("x".into(), Some(3.0), None, 7),
        ]);
        let out = merge(vec![vec![older], vec![newer]], 100);
        let expected = "\
+------+-----+----+-------------------------------+
| host | a   | b  | time                          |
+------+-----+----+-------------------------------+
| x    | 1.0 | 11 | 1970-01-01T00:00:00.000000005 |
| x    | 3.0 |    | 1970-01-01T00:00:00.000000007 |
| y    | 2.0 | 20 | 1970-01-01T00:00:00.000000005 |
+------+-----+----+-------------------------------+";
        assert_eq!(text(&out), expected);
    }

    /// Random sorted, per-key-unique sources split into random batches:
    /// the merge equals sorting and deduplicating everything at once.
    #[test]
    fn equals_dedup_of_everything() {
        let mut rng = Lcg(7);
        for case in 0..300 {
            let n_sources = 1 + rng.below(4);
            let mut sources = vec![];
            let mut all = vec![];
            for _ in 0..n_sources {
                let mut rows: Vec<Row> = (0..rng.below(60))
                    .map(|_| {
                        let a = (rng.below(10) < 7).then(|| rng.below(100) as f64);
                        let b = (rng.below(10) < 7).then(|| rng.below(100) as i64);
                        let host = format!("h{}", rng.below(4));
                        (host, a, b, rng.below(30) as i64)
                    })
                    .collect();
                rows.sort_by(|x, y| (&x.0, x.3).cmp(&(&y.0, y.3)));
                rows.dedup_by(|x, y| (&x.0, x.3) == (&y.0, y.3));
                let source = batch(&rows);
                all.push(source.clone());
                let mut batches = vec![];
                let mut at = 0;
                while at < rows.len() {
                    let n = (rng.below(8) as usize).min(rows.len() - at);
                    batches.push(source.slice(at, n));
                    at += n;
                }
                sources.push(batches);
            }
            let batch_size = 1 + rng.below(40) as usize;
            let got = merge(sources, batch_size);
            let want = dedup_sorted(&all, &schema()).unwrap();
            assert_eq!(text(&got), text(&[want]), "case {case}");
        }
    }
}
