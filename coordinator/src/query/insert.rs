//! `INSERT INTO [database.]table [(columns)] VALUES ... | SELECT ...`: rows
//! written through the same path as line protocol (schema on write, dedup,
//! shard routing), answered with the number of rows written.
//!
//! Each named column is `time`, a tag or a field. A column the table
//! already has keeps its kind, and values are cast to its type when that
//! loses nothing (an integer into a float field; never a float into an
//! integer field). A new column takes its kind from its values: strings
//! make a tag, numbers and booleans a field. `time` takes a timestamp, an
//! RFC 3339 string or an integer of nanoseconds, and must be named (rows
//! stamped with one statement time would collapse into one per series,
//! and a retried statement would write them again; `now()` is there for
//! the current time). A NULL tag or field is left out of its row, and
//! every row needs one non-NULL field.
//!
//! Rows are written in batches of 10,000 as the source streams, each
//! checked whole before it is written; when a batch fails the statement
//! says how many rows went in before, and when a write fails part-way
//! that rows of the failing batch may be stored as well (writing it again
//! is harmless: same time and tags replace).

use std::borrow::Cow;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{
    DataType, Float64Type, Int64Type, Schema, TimeUnit, TimestampNanosecondType, UInt64Type,
};
use datafusion::sql::sqlparser::ast::{SetExpr, Statement, TableObject};
use strata_catalog::model::{ColumnKind, FieldType, TIME_COLUMN};
use strata_catalog::CatalogData;

use crate::line_protocol::{check_name, FieldValue, ParsedLine};

/// A parsed INSERT, before its kinds are resolved against the table.
#[derive(Debug, Clone, PartialEq)]
pub struct InsertStatement {
    pub database: String,
    pub table: String,
    /// As named in the statement; empty means the table's own columns.
    pub columns: Vec<String>,
    /// The VALUES list or query giving the rows, as SQL.
    pub source: String,
    /// Whether the source is a VALUES list (it needs no table).
    pub is_values: bool,
    /// The session's database, which the source's unqualified tables are in.
    pub session_database: Option<String>,
}

/// Whether `sql` is an INSERT (strata writes it, not DataFusion).
pub fn is_insert(sql: &str) -> bool {
    super::statement::starts_with(sql, "insert")
}

/// Parses an INSERT; the database must exist (the table need not).
pub fn parse(
    sql: &str,
    default_database: Option<&str>,
    catalog: &CatalogData,
) -> Result<InsertStatement, String> {
    let Statement::Insert(insert) = super::statement::parse_one(sql, "INSERT")? else {
        return Err("expected an INSERT statement".into());
    };
    if insert.overwrite
        || insert.or.is_some()
        || insert.ignore
        || insert.replace_into
        || insert.on.is_some()
        || insert.returning.is_some()
        || insert.partitioned.is_some()
        || !insert.assignments.is_empty()
        || insert.table_alias.is_some()
    {
        return Err(
            "INSERT takes a table, an optional column list and VALUES or a SELECT; OVERWRITE, \
             ON CONFLICT, RETURNING, SET and aliases are not supported (a row with the time and \
             tags of an existing one replaces its fields anyway)"
                .into(),
        );
    }
    let TableObject::TableName(name) = &insert.table else {
        return Err("INSERT INTO needs a table name".into());
    };
    let (database, table) = super::delete::table_name(name, default_database, "INSERT")?;
    if table.is_empty() {
        return Err("INSERT needs a table name".into());
    }
    check_name("table name", &table)?;
    if !catalog.databases.contains_key(&database) {
        return Err(format!("database '{database}' not found"));
    }
    let Some(source) = insert.source else {
        return Err("INSERT needs VALUES or a SELECT".into());
    };
    let mut columns = vec![];
    for c in &insert.columns {
        let [part] = c.0.as_slice() else {
            return Err(format!("column '{c}' must be a plain column name"));
        };
        let Some(ident) = part.as_ident() else {
            return Err(format!("column '{c}' must be a plain column name"));
        };
        let name = super::statement::ident_name(ident);
        if name.is_empty() {
            return Err("a column name cannot be empty".into());
        }
        check_name("column name", &name)?;
        if columns.contains(&name) {
            return Err(format!("column '{name}' is named twice"));
        }
        columns.push(name);
    }
    Ok(InsertStatement {
        database,
        table,
        columns,
        is_values: matches!(*source.body, SetExpr::Values(_)),
        source: source.to_string(),
        session_database: default_database.map(str::to_string),
    })
}

/// One column of the rows as it is written.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub kind: ColumnKind,
}

/// The kind each source column is written as: the table's kind for a
/// column it has, else the one its values suggest. `table` is the table's
/// columns in order (empty when it does not exist yet).
pub fn targets(
    statement: &InsertStatement,
    table: &[(String, ColumnKind)],
    source: &Schema,
) -> Result<Vec<Target>, String> {
    let names: Vec<String> = if statement.columns.is_empty() {
        if table.is_empty() {
            return Err(format!(
                "table '{}' does not exist yet: name the columns, as in INSERT INTO {} (time, \
                 <tags>, <fields>) VALUES ...",
                statement.table, statement.table
            ));
        }
        table.iter().map(|(n, _)| n.clone()).collect()
    } else {
        statement.columns.clone()
    };
    if !names.iter().any(|n| n == TIME_COLUMN) {
        return Err(format!(
            "INSERT needs the '{TIME_COLUMN}' column: name it among the columns and give each \
             row its time (now() for the current time)"
        ));
    }
    if names.len() != source.fields().len() {
        return Err(format!(
            "INSERT names {} column(s) but its {} give(s) {}",
            names.len(),
            if statement.is_values {
                "VALUES"
            } else {
                "query"
            },
            source.fields().len()
        ));
    }
    names
        .into_iter()
        .zip(source.fields())
        .map(|(name, field)| {
            let known = table.iter().find(|(n, _)| *n == name).map(|(_, k)| *k);
            let kind = match known {
                Some(kind) => kind,
                None if name == TIME_COLUMN => ColumnKind::Time,
                None => new_column_kind(&name, field.data_type())?,
            };
            Ok(Target { name, kind })
        })
        .collect()
}

fn is_string(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_string(v),
        _ => false,
    }
}

fn is_signed(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64
    )
}

fn is_unsigned(t: &DataType) -> bool {
    matches!(
        t,
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64
    )
}

fn is_float(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal32(..)
            | DataType::Decimal64(..)
            | DataType::Decimal128(..)
            | DataType::Decimal256(..)
    )
}

fn new_column_kind(name: &str, t: &DataType) -> Result<ColumnKind, String> {
    Ok(match t {
        t if is_string(t) => ColumnKind::Tag,
        t if is_signed(t) => ColumnKind::Field(FieldType::Integer),
        t if is_unsigned(t) => ColumnKind::Field(FieldType::UInteger),
        t if is_float(t) => ColumnKind::Field(FieldType::Float),
        DataType::Boolean => ColumnKind::Field(FieldType::Boolean),
        DataType::Null => {
            return Err(format!(
                "column '{name}' is new and all its values are NULL, so its type is unknown"
            ))
        }
        t => {
            return Err(format!(
                "column '{name}' is new and its values are {t}: a new column takes strings (a \
                 tag), numbers or booleans (a field)"
            ))
        }
    })
}

/// `values` cast to the type `target` is stored as, refusing casts that
/// would lose or invent information.
fn conform(target: &Target, values: &ArrayRef) -> Result<ArrayRef, String> {
    let from = values.data_type();
    let (to, fits) = match target.kind {
        ColumnKind::Time => (
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            matches!(from, DataType::Timestamp(..)) || is_signed(from) || is_string(from),
        ),
        ColumnKind::Tag => (DataType::Utf8, is_string(from)),
        ColumnKind::Field(FieldType::String) => (DataType::Utf8, is_string(from)),
        ColumnKind::Field(FieldType::Boolean) => (DataType::Boolean, *from == DataType::Boolean),
        ColumnKind::Field(FieldType::Float) => (
            DataType::Float64,
            is_float(from) || is_signed(from) || is_unsigned(from),
        ),
        ColumnKind::Field(FieldType::Integer) => {
            (DataType::Int64, is_signed(from) || is_unsigned(from))
        }
        ColumnKind::Field(FieldType::UInteger) => {
            (DataType::UInt64, is_signed(from) || is_unsigned(from))
        }
    };
    if !fits && *from != DataType::Null {
        return Err(format!(
            "column '{}' ({}) cannot take {from} values",
            target.name,
            target.kind.describe()
        ));
    }
    let options = CastOptions {
        safe: false,
        ..Default::default()
    };
    cast_with_options(values, &to, &options)
        .map_err(|e| format!("column '{}' ({}): {e}", target.name, target.kind.describe()))
}

/// Most row problems one refused batch reports.
const MAX_ROW_ERRORS: usize = 10;

/// The rows of `batch` as lines of `table`, numbered from `first_row`
/// (1-based), or every problem found (the first [`MAX_ROW_ERRORS`]).
pub fn to_lines(
    table: &str,
    targets: &[Target],
    batch: &RecordBatch,
    first_row: usize,
) -> Result<Vec<ParsedLine<'static>>, Vec<String>> {
    let columns: Vec<ArrayRef> = targets
        .iter()
        .zip(batch.columns())
        .map(|(t, c)| conform(t, c))
        .collect::<Result<_, _>>()
        .map_err(|e| vec![e])?;
    let mut errors = vec![];
    let mut lines = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let line_number = first_row + row;
        let (mut tags, mut fields, mut timestamp) = (vec![], vec![], None);
        for (target, values) in targets.iter().zip(&columns) {
            if values.is_null(row) {
                if target.kind == ColumnKind::Time {
                    errors.push(format!("row {line_number}: time is NULL"));
                }
                continue;
            }
            let name = Cow::Owned(target.name.clone());
            match target.kind {
                ColumnKind::Time => {
                    timestamp = Some(values.as_primitive::<TimestampNanosecondType>().value(row))
                }
                ColumnKind::Tag => {
                    let v = values.as_string::<i32>().value(row);
                    if !v.is_empty() {
                        tags.push((name, Cow::Owned(v.to_string())));
                    }
                }
                ColumnKind::Field(f) => {
                    let v = match f {
                        FieldType::Float => {
                            FieldValue::Float(values.as_primitive::<Float64Type>().value(row))
                        }
                        FieldType::Integer => {
                            FieldValue::Integer(values.as_primitive::<Int64Type>().value(row))
                        }
                        FieldType::UInteger => {
                            FieldValue::UInteger(values.as_primitive::<UInt64Type>().value(row))
                        }
                        FieldType::String => FieldValue::String(Cow::Owned(
                            values.as_string::<i32>().value(row).to_string(),
                        )),
                        FieldType::Boolean => FieldValue::Boolean(values.as_boolean().value(row)),
                    };
                    fields.push((name, v));
                }
            }
        }
        if fields.is_empty() {
            errors.push(format!(
                "row {line_number} has no field value: every row needs one non-NULL field"
            ));
        }
        if errors.len() >= MAX_ROW_ERRORS {
            break;
        }
        let measurement = Cow::Owned(table.to_string());
        lines.push(ParsedLine::new(
            line_number,
            measurement,
            tags,
            fields,
            timestamp,
        ));
    }
    if errors.is_empty() {
        Ok(lines)
    } else {
        Err(errors)
    }
}

/// The table's columns in order, as [`targets`] takes them.
pub fn table_columns(
    catalog: &CatalogData,
    database: &str,
    table: &str,
) -> Vec<(String, ColumnKind)> {
    catalog
        .databases
        .get(database)
        .and_then(|d| d.tables.get(table))
        .map(|t| t.columns.iter().map(|c| (c.name.clone(), c.kind)).collect())
        .unwrap_or_default()
}

/// The schema of a one-column result holding the row count.
pub fn count_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
        "count",
        DataType::UInt64,
        false,
    )]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::Field;
    use strata_catalog::model::{Database, DatabaseOptions};

    fn catalog() -> CatalogData {
        let mut c = CatalogData::default();
        c.databases.insert(
            "db".into(),
            Database {
                name: "db".into(),
                options: DatabaseOptions::default(),
                tables: Default::default(),
                shard_groups: vec![],
            },
        );
        c
    }

    #[test]
    fn parses_the_table_columns_and_source() {
        let s = parse(
            "INSERT INTO db.cpu (time, host, usage) VALUES ('2024-01-01T00:00:00Z', 'a', 1.5)",
            None,
            &catalog(),
        )
        .unwrap();
        assert_eq!(
            (s.database.as_str(), s.table.as_str()),
            ("db", "cpu"),
            "{s:?}"
        );
        assert_eq!(s.columns, ["time", "host", "usage"]);
        let s = parse("INSERT INTO DB.Cpu (TIME) VALUES (1)", None, &catalog()).unwrap();
        assert_eq!((s.database.as_str(), s.table.as_str()), ("db", "cpu"));
        let s = parse(
            "INSERT INTO Cpu (TIME, Host, \"Usage\") VALUES (1, 'a', 2)",
            Some("db"),
            &catalog(),
        )
        .unwrap();
        assert_eq!(s.table, "cpu");
        assert_eq!(
            s.columns,
            ["time", "host", "Usage"],
            "unquoted names are lowercased"
        );
        assert!(s.is_values);
        assert!(s.source.starts_with("VALUES"), "{}", s.source);
        let s = parse(
            "insert into cpu select * from other",
            Some("db"),
            &catalog(),
        )
        .unwrap();
        assert!(!s.is_values && s.columns.is_empty());
    }

    #[test]
    fn refuses_what_it_does_not_do() {
        let c = catalog();
        for (sql, says) in [
            (
                "INSERT INTO nope.cpu (a) VALUES (1)",
                "database 'nope' not found",
            ),
            ("INSERT INTO cpu (a) VALUES (1)", "database"),
            ("INSERT INTO db.cpu (a, a) VALUES (1, 2)", "named twice"),
            ("INSERT INTO db.cpu (\"\") VALUES (1)", "cannot be empty"),
            ("INSERT INTO db.\"\" (a) VALUES (1)", "table name"),
            ("INSERT INTO db.cpu (a) VALUES (1) RETURNING a", "RETURNING"),
            ("INSERT INTO db.cpu (a) VALUES (1); SELECT 1", "one INSERT"),
            ("INSERT INTO db.cpu (a) VALUES (1", "INSERT:"),
        ] {
            let e = parse(sql, None, &c).unwrap_err();
            assert!(e.contains(says), "{sql}: {e}");
        }
    }

    fn statement(columns: &[&str]) -> InsertStatement {
        InsertStatement {
            database: "db".into(),
            table: "cpu".into(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            source: String::new(),
            is_values: true,
            session_database: None,
        }
    }

    #[test]
    fn new_columns_take_their_kind_from_their_values_and_known_ones_keep_theirs() {
        let source = Schema::new(vec![
            Field::new("c1", DataType::Utf8, true),
            Field::new("c2", DataType::Utf8, true),
            Field::new("c3", DataType::Int64, true),
            Field::new("c4", DataType::Float64, true),
            Field::new("c5", DataType::Boolean, true),
        ]);
        let table = vec![
            ("time".to_string(), ColumnKind::Time),
            ("msg".to_string(), ColumnKind::Field(FieldType::String)),
        ];
        let t = targets(
            &statement(&["time", "msg", "n", "x", "ok"]),
            &table,
            &source,
        )
        .unwrap();
        let kinds: Vec<_> = t.iter().map(|t| t.kind).collect();
        assert_eq!(
            kinds,
            [
                ColumnKind::Time,
                ColumnKind::Field(FieldType::String),
                ColumnKind::Field(FieldType::Integer),
                ColumnKind::Field(FieldType::Float),
                ColumnKind::Field(FieldType::Boolean),
            ]
        );
        let t = targets(&statement(&["time", "host", "n", "x", "ok"]), &[], &source).unwrap();
        assert_eq!(t[0].kind, ColumnKind::Time);
        assert_eq!(t[1].kind, ColumnKind::Tag);
        let e = targets(&statement(&["time", "b"]), &[], &source).unwrap_err();
        assert!(e.contains("2 column(s)") && e.contains("give(s) 5"), "{e}");
        let e = targets(&statement(&["host", "b", "n", "x", "ok"]), &[], &source).unwrap_err();
        assert!(e.contains("needs the 'time' column"), "{e}");
        let e = targets(&statement(&[]), &[], &source).unwrap_err();
        assert!(e.contains("name the columns"), "{e}");
        let nulls = Schema::new(vec![
            Field::new("c1", DataType::Utf8, true),
            Field::new("c2", DataType::Null, true),
        ]);
        let e = targets(&statement(&["time", "v"]), &[], &nulls).unwrap_err();
        assert!(e.contains("NULL"), "{e}");
    }

    #[test]
    fn rows_become_lines_with_values_cast_to_the_column_types() {
        let targets = vec![
            Target {
                name: "time".into(),
                kind: ColumnKind::Time,
            },
            Target {
                name: "host".into(),
                kind: ColumnKind::Tag,
            },
            Target {
                name: "usage".into(),
                kind: ColumnKind::Field(FieldType::Float),
            },
            Target {
                name: "ok".into(),
                kind: ColumnKind::Field(FieldType::Boolean),
            },
        ];
        let batch = RecordBatch::try_from_iter(vec![
            (
                "time",
                Arc::new(StringArray::from(vec![
                    "1970-01-01T00:00:01Z",
                    "1970-01-01T00:00:02Z",
                ])) as ArrayRef,
            ),
            ("host", Arc::new(StringArray::from(vec![Some("a"), None]))),
            ("usage", Arc::new(Int64Array::from(vec![Some(3), None]))),
            ("ok", Arc::new(BooleanArray::from(vec![None, Some(true)]))),
        ])
        .unwrap();
        let lines = to_lines("cpu", &targets, &batch, 1).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].timestamp, Some(1_000_000_000));
        assert_eq!(lines[0].tags(), [("host".into(), "a".into())]);
        assert_eq!(lines[0].fields, [("usage".into(), FieldValue::Float(3.0))]);
        assert!(lines[1].tags().is_empty(), "a NULL tag is left out");
        assert_eq!(lines[1].fields, [("ok".into(), FieldValue::Boolean(true))]);
        assert_eq!(lines[1].line_number, 2);
    }

    #[test]
    fn bad_rows_are_all_reported_and_lossy_casts_refused() {
        let targets = vec![
            Target {
                name: "time".into(),
                kind: ColumnKind::Time,
            },
            Target {
                name: "n".into(),
                kind: ColumnKind::Field(FieldType::Integer),
            },
        ];
        let batch = RecordBatch::try_from_iter(vec![
            (
                "time",
                Arc::new(Int64Array::from(vec![None, Some(5), Some(6)])) as ArrayRef,
            ),
            (
                "n",
                Arc::new(Int64Array::from(vec![Some(1), None, Some(2)])),
            ),
        ])
        .unwrap();
        let errors = to_lines("cpu", &targets, &batch, 11).unwrap_err();
        assert_eq!(
            errors,
            [
                "row 11: time is NULL",
                "row 12 has no field value: every row needs one non-NULL field"
            ]
        );
        let floats = RecordBatch::try_from_iter(vec![
            ("time", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("n", Arc::new(Float64Array::from(vec![1.5]))),
        ])
        .unwrap();
        let errors = to_lines("cpu", &targets, &floats, 1).unwrap_err();
        assert!(
            errors[0].contains("'n' (integer field) cannot take Float64"),
            "{errors:?}"
        );
        let bad_time = RecordBatch::try_from_iter(vec![
            (
                "time",
                Arc::new(StringArray::from(vec!["yesterday"])) as ArrayRef,
            ),
            ("n", Arc::new(Int64Array::from(vec![1]))),
        ])
        .unwrap();
        let errors = to_lines("cpu", &targets, &bad_time, 1).unwrap_err();
        assert!(errors[0].contains("time"), "{errors:?}");
    }
}
