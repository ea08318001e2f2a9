//! The series a node holds per database, so that a write that would take a
//! database over its series limit is refused with an error naming both,
//! instead of growing memory without bound (InfluxDB's
//! `max-series-per-database`, enforced per node as there).
//!
//! A series is a table and its non-null tags; the registry keeps a 64-bit
//! hash of each (8 bytes and a hash-set slot per series: about 1 MiB per
//! 40,000 series). It is rebuilt when the engine opens, from the replayed
//! memtables and the tag columns of the Parquet files. Deleting rows does
//! not forget their series, as in InfluxDB.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};

use arrow::array::RecordBatch;
use arrow::error::ArrowError;

use crate::last_value::SeriesKeys;

/// The series of each database.
#[derive(Debug, Default)]
pub struct SeriesRegistry {
    databases: HashMap<String, HashSet<u64>>,
}

/// A write that would take a database over its limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverLimit {
    pub held: usize,
    pub new: usize,
}

/// A fixed hasher: the same series hashes alike in every batch.
#[derive(Clone, Copy, Default)]
struct Fixed;

impl BuildHasher for Fixed {
    type Hasher = std::collections::hash_map::DefaultHasher;
    fn build_hasher(&self) -> Self::Hasher {
        std::collections::hash_map::DefaultHasher::new()
    }
}

/// The hash of a series: its table and its key (`SeriesKeys`).
pub fn series_hash(table: &str, key: &[u8]) -> u64 {
    let mut hasher = Fixed.build_hasher();
    hasher.write(table.as_bytes());
    hasher.write_u8(0xff);
    hasher.write(key);
    hasher.finish()
}

/// The distinct series hashes of the tag columns of a Parquet file of
/// `table`.
pub fn file_series(path: &std::path::Path, table: &str) -> Result<HashSet<u64>, String> {
    let Some(batches) = crate::series::read_tag_columns(path)? else {
        return Ok(HashSet::from([series_hash(table, &[])]));
    };
    let mut out = HashSet::new();
    for batch in &batches {
        out.extend(series_of(table, batch).map_err(|e| e.to_string())?);
    }
    Ok(out)
}

/// The distinct series hashes of `batch`, a write to `table`.
pub fn series_of(table: &str, batch: &RecordBatch) -> Result<HashSet<u64>, ArrowError> {
    let keys = SeriesKeys::new(batch)?;
    let mut out = HashSet::new();
    let mut key = vec![];
    let mut last: Option<(Vec<u8>, u64)> = None;
    for i in 0..batch.num_rows() {
        keys.key(i, &mut key);
        // Rows of one series often come together.
        if let Some((k, h)) = &last {
            if *k == key {
                out.insert(*h);
                continue;
            }
        }
        let h = series_hash(table, &key);
        out.insert(h);
        last = Some((key.clone(), h));
    }
    Ok(out)
}

impl SeriesRegistry {
    /// Series held for `database`.
    pub fn count(&self, database: &str) -> usize {
        self.databases.get(database).map_or(0, |s| s.len())
    }

    /// Records `series` as held, without a limit (what the node has).
    pub fn add(&mut self, database: &str, series: impl IntoIterator<Item = u64>) {
        self.databases
            .entry(database.to_string())
            .or_default()
            .extend(series);
    }

    /// Replaces what `database` holds (after data was dropped).
    pub fn replace(&mut self, database: &str, series: HashSet<u64>) {
        if series.is_empty() {
            self.databases.remove(database);
        } else {
            self.databases
                .insert(database.to_string(), series.into_iter().collect());
        }
    }

    /// Records `series` for a write, unless the new ones would take
    /// `database` over `limit` (0: no limit); then nothing is recorded.
    pub fn admit(
        &mut self,
        database: &str,
        series: &HashSet<u64>,
        limit: usize,
    ) -> Result<(), OverLimit> {
        let held = self.databases.entry(database.to_string()).or_default();
        let new = series.iter().filter(|s| !held.contains(s)).count();
        if limit > 0 && new > 0 && held.len() + new > limit {
            return Err(OverLimit {
                held: held.len(),
                new,
            });
        }
        held.extend(series);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, StringDictionaryBuilder, TimestampNanosecondArray};
    use arrow::datatypes::{DataType, Field, Int32Type, Schema, TimeUnit};

    use super::*;

    fn batch(hosts: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "host",
                DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
                true,
            ),
            Field::new("v", DataType::Float64, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
        ]));
        let mut host = StringDictionaryBuilder::<Int32Type>::new();
        hosts.iter().for_each(|h| host.append_option(*h));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(host.finish()),
                Arc::new(Float64Array::from(vec![1.0; hosts.len()])),
                Arc::new(TimestampNanosecondArray::from_iter_values(
                    (0..hosts.len()).map(|i| i as i64),
                )),
            ],
        )
        .unwrap()
    }

    #[test]
    fn series_are_counted_once_per_table_and_tag_set() {
        let b = batch(&[Some("a"), Some("a"), Some("b"), None, Some("a")]);
        assert_eq!(series_of("cpu", &b).unwrap().len(), 3);
        let cpu = series_of("cpu", &batch(&[Some("a")])).unwrap();
        let mem = series_of("mem", &batch(&[Some("a")])).unwrap();
        assert_ne!(cpu, mem, "the table is part of the series");
    }

    /// Through the engine: refused before it is logged, and counted again
    /// from files and the WAL after a restart.
    #[tokio::test]
    async fn the_engine_refuses_series_over_the_limit_across_restarts() {
        use crate::engine::{Engine, EngineConfig, EngineError};
        let dir = tempfile::tempdir().unwrap();
        let config = || EngineConfig {
            max_series_per_database: 3,
            ..EngineConfig::new(dir.path())
        };
        let engine = Engine::open(config()).unwrap();
        engine
            .write("db", "cpu", 1, batch(&[Some("a"), Some("b")]))
            .await
            .unwrap();
        engine.flush().await.unwrap();
        engine
            .write("db", "cpu", 2, batch(&[Some("c")]))
            .await
            .unwrap();
        let refused = engine
            .write("db", "cpu", 2, batch(&[Some("a"), Some("d")]))
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused,
                EngineError::SeriesLimit {
                    held: 3,
                    new: 1,
                    limit: 3,
                    ..
                }
            ),
            "{refused}"
        );
        let message = refused.to_string();
        assert!(
            message.contains("'db'") && message.contains("limit of 3"),
            "{message}"
        );
        engine
            .write("db", "cpu", 2, batch(&[Some("a")]))
            .await
            .unwrap();
        drop(engine);

        let engine = Engine::open(config()).unwrap();
        assert_eq!(engine.series_count("db"), 3);
        assert!(engine
            .write("db", "cpu", 1, batch(&[Some("d")]))
            .await
            .is_err());
        engine
            .write("other", "cpu", 3, batch(&[Some("d")]))
            .await
            .unwrap();
        // The refused write left nothing behind.
        let snap = engine.snapshot("cpu", &[2]);
        let rows: usize = snap.batches.iter().map(|b| b.batch.num_rows()).sum();
        assert_eq!(rows, 2, "c and the second a");
    }

    #[test]
    fn a_write_over_the_limit_is_refused_whole_and_known_series_still_pass() {
        let mut r = SeriesRegistry::default();
        let first = series_of("cpu", &batch(&[Some("a"), Some("b")])).unwrap();
        r.admit("db", &first, 3).unwrap();
        let more = series_of("cpu", &batch(&[Some("c"), Some("d")])).unwrap();
        assert_eq!(r.admit("db", &more, 3), Err(OverLimit { held: 2, new: 2 }));
        assert_eq!(r.count("db"), 2, "nothing of a refused write is recorded");
        // Known series are always writable; other databases have their own.
        r.admit("db", &first, 3).unwrap();
        r.admit("other", &more, 3).unwrap();
        let one = series_of("cpu", &batch(&[Some("c")])).unwrap();
        r.admit("db", &one, 3).unwrap();
        assert_eq!(r.count("db"), 3);
        assert!(r.admit("db", &more, 0).is_ok(), "0 is no limit");
    }
}
