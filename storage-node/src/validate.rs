//! Checks a batch that arrives over `DoPut` against the catalog before
//! anything is logged: the table must exist in its database, the batch
//! must have a non-null nanosecond `time` column, and every other column
//! must be a column of the table with the table's type. A node that took
//! a batch without `time`, or a string into a float field, would fail
//! every later flush, scan and compaction of that table.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, RecordBatch};
use strata_catalog::model::{CatalogData, ColumnKind, TIME_COLUMN};

/// Runs a decoder over bytes from a client or from disk. Arrow's IPC
/// reader panics on some malformed input (an unknown timestamp unit, a
/// buffer offset past its end) instead of returning an error; such a panic
/// becomes an error here, so bad bytes never end a request's task or a
/// node's start.
pub fn guard_decode<T>(decode: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(format!("malformed Arrow IPC data: {what}"))
    })
}

/// Why a batch cannot be written; the message names the column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// The catalog (as this node knows it) has no such database or table,
    /// or the table lacks a column: a newer catalog may have it.
    Unknown(String),
    /// The batch contradicts the catalog: no newer catalog helps.
    Mismatch(String),
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Invalid::Unknown(m) | Invalid::Mismatch(m) => f.write_str(m),
        }
    }
}

/// Checks `batch`, destined for `database.table`, against `catalog`.
pub fn check_batch(
    catalog: &CatalogData,
    database: &str,
    table: &str,
    batch: &RecordBatch,
) -> Result<(), Invalid> {
    TableCheck::new(catalog, database, table)?.check(batch)
}

/// The columns of one table, looked up by name, to check many batches.
pub struct TableCheck<'a> {
    table: &'a str,
    kinds: HashMap<&'a str, ColumnKind>,
}

impl<'a> TableCheck<'a> {
    pub fn new(catalog: &'a CatalogData, database: &str, table: &'a str) -> Result<Self, Invalid> {
        let db = catalog
            .databases
            .get(database)
            .ok_or_else(|| Invalid::Unknown(format!("database '{database}' does not exist")))?;
        let t = db.tables.get(table).ok_or_else(|| {
            Invalid::Unknown(format!(
                "table '{table}' does not exist in database '{database}'"
            ))
        })?;
        let kinds = t
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.kind))
            .collect();
        Ok(Self { table, kinds })
    }

    pub fn check(&self, batch: &RecordBatch) -> Result<(), Invalid> {
        let table = self.table;
        let schema = batch.schema();
        let mut seen = HashSet::with_capacity(schema.fields().len());
        let mut time = None;
        for (i, field) in schema.fields().iter().enumerate() {
            let name = field.name().as_str();
            if !seen.insert(name) {
                return Err(Invalid::Mismatch(format!(
                    "the batch has column '{name}' twice"
                )));
            }
            let kind = if name == TIME_COLUMN {
                time = Some(i);
                ColumnKind::Time
            } else {
                *self.kinds.get(name).ok_or_else(|| {
                    Invalid::Unknown(format!("table '{table}' has no column '{name}'"))
                })?
            };
            let expected = kind.data_type();
            if field.data_type() != &expected {
                return Err(Invalid::Mismatch(format!(
                    "column '{name}' of table '{table}' is a {} ({expected}), but the batch \
                     carries {}",
                    kind.describe(),
                    field.data_type()
                )));
            }
        }
        let time = time.ok_or_else(|| {
            Invalid::Mismatch(format!(
                "the batch for table '{table}' has no '{TIME_COLUMN}' column"
            ))
        })?;
        if batch.column(time).null_count() > 0 {
            return Err(Invalid::Mismatch(format!(
                "the '{TIME_COLUMN}' column of a batch for table '{table}' has NULLs"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{Field, Schema};
    use strata_catalog::model::{time_data_type, Column, Database, FieldType, Table};

    use super::*;

    fn catalog() -> CatalogData {
        let mut table = Table::new("cpu");
        table.columns.push(Column {
            name: "v".into(),
            kind: ColumnKind::Field(FieldType::Float),
        });
        let mut db = Database {
            name: "db".into(),
            options: Default::default(),
            tables: Default::default(),
            shard_groups: vec![],
        };
        db.tables.insert("cpu".into(), table);
        let mut c = CatalogData::default();
        c.databases.insert("db".into(), db);
        c
    }

    fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let fields: Vec<Field> = columns
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
            .collect();
        let arrays = columns.into_iter().map(|(_, a)| a).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays).unwrap()
    }

    fn time(values: Vec<Option<i64>>) -> ArrayRef {
        Arc::new(TimestampNanosecondArray::from(values))
    }

    #[test]
    fn a_batch_matching_the_catalog_passes() {
        let b = batch(vec![
            ("v", Arc::new(Float64Array::from(vec![1.0]))),
            ("time", time(vec![Some(1)])),
        ]);
        assert_eq!(check_batch(&catalog(), "db", "cpu", &b), Ok(()));
        assert_eq!(b.schema().field(1).data_type(), &time_data_type());
    }

    #[test]
    fn batches_that_contradict_the_catalog_are_refused() {
        let c = catalog();
        let no_time = batch(vec![("v", Arc::new(Float64Array::from(vec![1.0])))]);
        let wrong_type = batch(vec![
            ("v", Arc::new(StringArray::from(vec!["s"]))),
            ("time", time(vec![Some(1)])),
        ]);
        let null_time = batch(vec![("time", time(vec![None]))]);
        let bad_time_type = batch(vec![("time", Arc::new(Float64Array::from(vec![1.0])))]);
        for (b, says) in [
            (&no_time, "no 'time' column"),
            (&wrong_type, "is a float field"),
            (&null_time, "has NULLs"),
            (&bad_time_type, "column 'time'"),
        ] {
            match check_batch(&c, "db", "cpu", b) {
                Err(Invalid::Mismatch(m)) => assert!(m.contains(says), "{m}"),
                other => panic!("{says}: {other:?}"),
            }
        }
        let unknown_column = batch(vec![
            ("w", Arc::new(Float64Array::from(vec![1.0]))),
            ("time", time(vec![Some(1)])),
        ]);
        assert!(matches!(
            check_batch(&c, "db", "cpu", &unknown_column),
            Err(Invalid::Unknown(_))
        ));
        let ok = batch(vec![("time", time(vec![Some(1)]))]);
        assert!(matches!(
            check_batch(&c, "db", "nope", &ok),
            Err(Invalid::Unknown(_))
        ));
        assert!(matches!(
            check_batch(&c, "nodb", "cpu", &ok),
            Err(Invalid::Unknown(_))
        ));
    }
}
