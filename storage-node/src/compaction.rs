//! Compaction's data path: merging a shard table's Parquet files into one.
//!
//! Inputs are read batch by batch, the rows their tombstones match are
//! dropped, and the rest stream through the k-way [`MergeDedup`] into the
//! output file, so memory stays at about a batch per input however large
//! the files are. Choosing inputs and switching the manifest is the
//! engine's part ([`crate::Engine::compact`]).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use snafu::{ResultExt, Snafu};

use crate::delete::{retain_all, DeletePredicate};
use crate::flush::{merge_schemas, FlushError, ParquetSink, Written};
use crate::merge::MergeDedup;

/// Rows per batch read from inputs and written to the output.
const BATCH_ROWS: usize = 8192;

#[derive(Debug, Snafu)]
pub enum CompactionError {
    #[snafu(display("opening {}: {source}", path.display()))]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[snafu(display("reading {}: {source}", path.display()))]
    Read {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[snafu(display("merging rows of {}: {source}", path.display()))]
    Merge {
        path: PathBuf,
        source: arrow::error::ArrowError,
    },
    #[snafu(display("{source}"))]
    Write { source: FlushError },
}

/// One input file and the deletes that cover it.
pub struct Input {
    pub path: PathBuf,
    pub deletes: Vec<Arc<DeletePredicate>>,
}

/// Merges `inputs` (oldest first; each sorted by key with one row per key)
/// into a new file at `output`, deduplicated, without the rows their
/// deletes match. Returns `None`, and leaves no file, when no row is left.
pub fn merge_files(inputs: &[Input], output: &Path) -> Result<Option<Written>, CompactionError> {
    let mut readers = Vec::with_capacity(inputs.len());
    let mut schemas = Vec::with_capacity(inputs.len());
    for input in inputs {
        let path = &input.path;
        let file = File::open(path).context(OpenSnafu { path })?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file).context(ReadSnafu { path })?;
        schemas.push(builder.schema().as_ref().clone());
        let reader = builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .context(ReadSnafu { path })?;
        readers.push(reader);
    }
    let schema = merge_schemas(schemas).context(MergeSnafu { path: output })?;
    let mut merge = MergeDedup::new(schema.clone(), inputs.len(), BATCH_ROWS)
        .context(MergeSnafu { path: output })?;

    let mut sink: Option<ParquetSink> = None;
    loop {
        while let Some(i) = merge.wanted() {
            let batch = next_batch(&mut readers[i], &inputs[i])?;
            merge.push(i, batch).context(MergeSnafu {
                path: &inputs[i].path,
            })?;
        }
        match merge.next_batch().context(MergeSnafu { path: output })? {
            Some(batch) => {
                let sink = match &mut sink {
                    Some(s) => s,
                    None => sink
                        .insert(ParquetSink::create(output, schema.clone()).context(WriteSnafu)?),
                };
                sink.write(&batch).context(WriteSnafu)?;
            }
            None if merge.is_done() => break,
            None => {}
        }
    }
    match sink {
        Some(s) => s.finish().context(WriteSnafu).map(Some),
        None => Ok(None),
    }
}

/// The next batch of an input with its deleted rows dropped, or `None` at
/// its end.
fn next_batch(
    reader: &mut ParquetRecordBatchReader,
    input: &Input,
) -> Result<Option<arrow::array::RecordBatch>, CompactionError> {
    let path = &input.path;
    match reader.next() {
        None => Ok(None),
        Some(batch) => {
            let batch = batch.context(MergeSnafu { path })?;
            retain_all(&input.deletes, batch)
                .map(Some)
                .context(MergeSnafu { path })
        }
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Float64Array, RecordBatch, StringDictionaryBuilder};
    use arrow::array::{Int64Array, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Int32Type, Schema, TimeUnit};
    use arrow::util::pretty::pretty_format_batches;

    use super::*;
    use crate::dedup::dedup_sorted;
    use crate::delete::TagCondition;
    use crate::flush::{merged_schema, write_parquet};

    fn tag() -> DataType {
        DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
    }

    fn time() -> Field {
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        )
    }

    /// `n` points per host of (host, a, time) with `a = base + t`.
    fn host_rows(hosts: &[&str], times: std::ops::Range<i64>, base: f64) -> RecordBatch {
        let mut host = StringDictionaryBuilder::<Int32Type>::new();
        let (mut a, mut t) = (vec![], vec![]);
        for h in hosts {
            for i in times.clone() {
                host.append_value(h);
                a.push(base + i as f64);
                t.push(i);
            }
        }
        let schema = Schema::new(vec![
            Field::new("host", tag(), true),
            Field::new("a", DataType::Float64, true),
            time(),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(host.finish()),
                Arc::new(Float64Array::from(a)),
                Arc::new(TimestampNanosecondArray::from(t)),
            ],
        )
        .unwrap()
    }

    /// Rows with a tag and a field the older file does not have.
    fn region_rows(times: std::ops::Range<i64>) -> RecordBatch {
        let mut host = StringDictionaryBuilder::<Int32Type>::new();
        let mut region = StringDictionaryBuilder::<Int32Type>::new();
        for _ in times.clone() {
            host.append_value("h1");
            region.append_value("eu");
        }
        let schema = Schema::new(vec![
            Field::new("host", tag(), true),
            Field::new("region", tag(), true),
            Field::new("b", DataType::Int64, true),
            time(),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(host.finish()),
                Arc::new(region.finish()),
                Arc::new(Int64Array::from_iter_values(times.clone())),
                Arc::new(TimestampNanosecondArray::from_iter_values(times)),
            ],
        )
        .unwrap()
    }

    fn read_all(path: &Path) -> Vec<RecordBatch> {
        let file = File::open(path).unwrap();
        ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn text(batches: &[RecordBatch]) -> String {
        pretty_format_batches(batches).unwrap().to_string()
    }

    /// Files larger than a batch, overlapping in time, with differing
    /// columns and a delete: the streamed merge equals deduplicating every
    /// surviving row at once.
    #[test]
    fn streamed_merge_equals_merging_everything() {
        let dir = tempfile::tempdir().unwrap();
        let hosts = ["h0", "h1", "h2"];
        let writes = [
            host_rows(&hosts, 0..6000, 0.0),
            host_rows(&hosts, 4000..12000, 0.5),
            region_rows(0..3000),
        ];
        let mut inputs = vec![];
        for (i, w) in writes.iter().enumerate() {
            let path = dir.path().join(format!("in-{i}.parquet"));
            write_parquet(&path, std::slice::from_ref(w)).unwrap();
            inputs.push(Input {
                path,
                deletes: vec![],
            });
        }
        let delete = DeletePredicate {
            min_time: 5000,
            max_time: 7000,
            tags: vec![TagCondition {
                tag: "host".into(),
                values: vec!["h2".into()],
                negated: false,
            }],
        };
        inputs[0].deletes.push(Arc::new(delete.clone()));
        inputs[1].deletes.push(Arc::new(delete.clone()));

        let output = dir.path().join("out.parquet");
        let written = merge_files(&inputs, &output).unwrap().unwrap();
        let got = read_all(&output);
        assert!(got.len() > 1, "the output was written in batches");

        let schema = merged_schema(&writes).unwrap();
        let survivors: Vec<RecordBatch> = writes[..2]
            .iter()
            .map(|w| delete.retain(w).unwrap())
            .chain([writes[2].clone()])
            .collect();
        let want = dedup_sorted(&survivors, &schema).unwrap();
        assert_eq!(written.rows, want.num_rows() as u64);
        assert_eq!((written.min_time, written.max_time), (0, 11999));
        let got = arrow::compute::concat_batches(&got[0].schema(), &got).unwrap();
        let got = crate::flush::adapt_batch(&got, &schema).unwrap();
        assert_eq!(text(&[got]), text(&[want]));
    }

    /// When deletes leave nothing, no file is written.
    #[test]
    fn nothing_left_writes_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.parquet");
        write_parquet(&path, &[host_rows(&["h0"], 0..10, 0.0)]).unwrap();
        let everything = DeletePredicate {
            min_time: i64::MIN,
            max_time: i64::MAX,
            tags: vec![],
        };
        let inputs = [Input {
            path,
            deletes: vec![Arc::new(everything)],
        }];
        let output = dir.path().join("out.parquet");
        assert!(merge_files(&inputs, &output).unwrap().is_none());
        assert!(!output.exists());
    }
}
