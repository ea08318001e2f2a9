//! `DELETE FROM [database.]table [WHERE <conditions>]`: removes rows by time
//! range and tags, as InfluxDB's delete does. Conditions are joined by AND
//! and each is one of
//!
//! - `time` compared with `>=`, `>`, `<=`, `<`, `=` or `BETWEEN`, against an
//!   RFC 3339 string (`'2024-01-01T00:00:00Z'`, `'2024-01-01 10:00:00'`,
//!   `'2024-01-01'`, all UTC) or an integer of nanoseconds;
//! - a tag compared with `=`, `!=`/`<>`, `IN (...)` or `NOT IN (...)`
//!   against strings (a row without the tag has the empty string).
//!
//! Without WHERE every row of the table goes. The delete is sent to every
//! replica of every shard whose time window overlaps the range; a replica
//! that cannot take it now gets it through hinted handoff, in order with
//! its writes. When no replica of a shard applied it the statement fails
//! naming the shards and nodes (running it again is harmless).

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, Expr as SqlExpr, FromTable, ObjectName, Statement, TableFactor, UnaryOperator,
    Value,
};
use strata_catalog::model::{ColumnKind, TIME_COLUMN};
use strata_catalog::CatalogData;
use strata_proto::storage::v1 as pb;

/// A parsed, checked DELETE.
#[derive(Debug, Clone, PartialEq)]
pub struct DeleteStatement {
    pub database: String,
    pub table: String,
    pub predicate: pb::DeletePredicate,
}

/// Whether `sql` is a DELETE (strata handles it, not DataFusion).
pub fn is_delete(sql: &str) -> bool {
    super::statement::starts_with(sql, "delete")
}

/// Parses a DELETE and checks it against the catalog: the table exists and
/// every condition is on `time` or a tag.
pub fn parse(
    sql: &str,
    default_database: Option<&str>,
    catalog: &CatalogData,
) -> Result<DeleteStatement, String> {
    let Statement::Delete(delete) = super::statement::parse_one(sql, "DELETE")? else {
        return Err("expected a DELETE statement".into());
    };
    if delete.using.is_some()
        || delete.returning.is_some()
        || !delete.order_by.is_empty()
        || delete.limit.is_some()
        || !delete.tables.is_empty()
    {
        return Err(
            "DELETE takes one table and a WHERE clause; USING, RETURNING, ORDER BY and LIMIT \
             are not supported"
                .into(),
        );
    }
    let (FromTable::WithFromKeyword(from) | FromTable::WithoutKeyword(from)) = &delete.from;
    let [from] = from.as_slice() else {
        return Err("DELETE takes exactly one table".into());
    };
    let TableFactor::Table { name, .. } = &from.relation else {
        return Err("DELETE FROM needs a table name".into());
    };
    if !from.joins.is_empty() {
        return Err("DELETE cannot join tables".into());
    }
    let (database, table) = table_name(name, default_database, "DELETE")?;
    let db = catalog
        .databases
        .get(&database)
        .ok_or_else(|| format!("database '{database}' not found"))?;
    let t = db
        .tables
        .get(&table)
        .ok_or_else(|| format!("table '{table}' not found in database '{database}'"))?;
    let mut predicate = pb::DeletePredicate {
        min_time: i64::MIN,
        max_time: i64::MAX,
        tags: vec![],
    };
    if let Some(selection) = &delete.selection {
        let mut conditions = vec![];
        conjuncts(selection, &mut conditions)?;
        for c in conditions {
            add_condition(c, &mut predicate, |column| {
                match t.column(column).map(|c| c.kind) {
                    Some(ColumnKind::Tag) => Ok(()),
                    Some(ColumnKind::Field(_)) => Err(format!(
                        "DELETE can filter on time and tags; '{column}' is a field of '{table}'"
                    )),
                    Some(ColumnKind::Time) => Ok(()),
                    None => Err(format!("table '{table}' has no column '{column}'")),
                }
            })?;
        }
    }
    Ok(DeleteStatement {
        database,
        table,
        predicate,
    })
}

/// InfluxDB 2's delete (`/api/v2/delete`): rows of `database` with time in
/// `[start, stop]` (RFC 3339, both inclusive) matching `predicate`, e.g.
/// `_measurement="cpu" AND host="a"` (conditions `key="value"` or
/// `key!="value"` joined by AND; without `_measurement`, every table).
/// Returns one statement per table to delete from.
pub fn parse_v2(
    catalog: &CatalogData,
    database: &str,
    start: &str,
    stop: &str,
    predicate: &str,
) -> Result<Vec<DeleteStatement>, String> {
    let db = catalog
        .databases
        .get(database)
        .ok_or_else(|| format!("bucket '{database}' not found"))?;
    let min_time = parse_timestamp(start).map_err(|e| format!("start: {e}"))?;
    let max_time = parse_timestamp(stop).map_err(|e| format!("stop: {e}"))?;
    let mut measurement = None;
    let mut tags = vec![];
    for part in split_and(predicate) {
        let (key, negated, value) = match part.split_once("!=") {
            Some((k, v)) => (k, true, v),
            None => match part.split_once('=') {
                Some((k, v)) => (k, false, v),
                None => {
                    return Err(format!(
                        "predicate condition '{part}' is not key=\"value\" or key!=\"value\""
                    ))
                }
            },
        };
        let key = unquote(key.trim());
        let value = unquote(value.trim());
        if key == "_measurement" && !negated {
            measurement = Some(value);
        } else if key.starts_with('_') {
            return Err(format!(
                "predicate key '{key}' is not supported; use _measurement=\"...\" and tags"
            ));
        } else {
            tags.push(pb::TagCondition {
                tag: key,
                values: vec![value],
                negated,
            });
        }
    }
    let tables: Vec<&String> = match &measurement {
        Some(m) => db.tables.keys().filter(|t| *t == m).collect(),
        None => db.tables.keys().collect(),
    };
    let mut out = vec![];
    for table in tables {
        let t = &db.tables[table];
        for c in &tags {
            if let Some(ColumnKind::Field(_)) = t.column(&c.tag).map(|c| c.kind) {
                if measurement.is_some() {
                    return Err(format!(
                        "delete predicates filter on tags; '{}' is a field of '{table}'",
                        c.tag
                    ));
                }
            }
        }
        out.push(DeleteStatement {
            database: database.to_string(),
            table: table.clone(),
            predicate: pb::DeletePredicate {
                min_time,
                max_time,
                tags: tags.clone(),
            },
        });
    }
    Ok(out)
}

/// Splits on AND outside quotes; empty input gives no parts.
fn split_and(s: &str) -> Vec<String> {
    let mut parts = vec![];
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let words: Vec<&str> = s.split_inclusive(char::is_whitespace).collect();
    for w in words {
        for c in w.chars() {
            match quote {
                Some(q) if c == q => quote = None,
                None if c == '"' || c == '\'' => quote = Some(c),
                _ => {}
            }
        }
        if quote.is_none() && w.trim().eq_ignore_ascii_case("and") {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push_str(w);
        }
    }
    parts.push(current);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn unquote(s: &str) -> String {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

/// `[database.]table` as (database, table), the database defaulting to the
/// session's; `verb` names the statement in the error.
pub(super) fn table_name(
    name: &ObjectName,
    default: Option<&str>,
    verb: &str,
) -> Result<(String, String), String> {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| {
            p.as_ident()
                .map(super::statement::ident_name)
                .ok_or_else(|| format!("'{name}' is not a table name"))
        })
        .collect::<Result<_, _>>()?;
    match parts.as_slice() {
        [table] => {
            let db = default.ok_or_else(|| {
                format!(
                    "{verb} needs a database: write database.{table} or choose one \
                     (the `database` header, or `db` in the URL)"
                )
            })?;
            Ok((db.to_string(), table.clone()))
        }
        [db, table] => Ok((db.clone(), table.clone())),
        _ => Err(format!(
            "'{name}' is not a table name; use table or database.table"
        )),
    }
}

fn conjuncts<'a>(e: &'a SqlExpr, out: &mut Vec<&'a SqlExpr>) -> Result<(), String> {
    match e {
        SqlExpr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out)?;
            conjuncts(right, out)
        }
        SqlExpr::Nested(inner) => conjuncts(inner, out),
        SqlExpr::BinaryOp {
            op: BinaryOperator::Or,
            ..
        } => Err("DELETE conditions can only be joined with AND, not OR".into()),
        other => {
            out.push(other);
            Ok(())
        }
    }
}

fn column_name(e: &SqlExpr) -> Option<String> {
    match e {
        SqlExpr::Identifier(i) => Some(super::statement::ident_name(i)),
        SqlExpr::CompoundIdentifier(parts) => parts.last().map(super::statement::ident_name),
        SqlExpr::Nested(inner) => column_name(inner),
        _ => None,
    }
}

fn string_value(e: &SqlExpr) -> Option<String> {
    match e {
        SqlExpr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => Some(s.clone()),
            _ => None,
        },
        SqlExpr::Nested(inner) => string_value(inner),
        _ => None,
    }
}

/// A time bound: nanoseconds, or a timestamp string in UTC.
fn time_value(e: &SqlExpr) -> Result<i64, String> {
    match e {
        SqlExpr::Value(v) => match &v.value {
            Value::Number(n, _) => n
                .parse::<i64>()
                .map_err(|_| format!("time bound {n} is not a whole number of nanoseconds")),
            Value::SingleQuotedString(s) => parse_timestamp(s),
            other => Err(format!("{other} is not a time")),
        },
        SqlExpr::UnaryOp {
            op: UnaryOperator::Minus,
            expr,
        } => time_value(expr).map(|v| -v),
        SqlExpr::TypedString(t) => match &t.value.value {
            Value::SingleQuotedString(s) => parse_timestamp(s),
            other => Err(format!("{other} is not a time")),
        },
        SqlExpr::Nested(inner) => time_value(inner),
        other => Err(format!(
            "'{other}' is not a time; use a string like '2024-01-01T00:00:00Z' or nanoseconds"
        )),
    }
}

fn parse_timestamp(s: &str) -> Result<i64, String> {
    use chrono::{DateTime, NaiveDate, NaiveDateTime};
    let utc = DateTime::parse_from_rfc3339(s)
        .map(|t| t.naive_utc())
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .or_else(|_| {
            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight exists"))
        })
        .map_err(|_| {
            format!("'{s}' is not a timestamp; use RFC 3339 like '2024-01-01T00:00:00Z'")
        })?;
    utc.and_utc()
        .timestamp_nanos_opt()
        .ok_or_else(|| format!("'{s}' is outside the nanosecond range (1677–2262)"))
}

/// Narrows `p` by one condition; `check` validates a tag column.
fn add_condition(
    c: &SqlExpr,
    p: &mut pb::DeletePredicate,
    check: impl Fn(&str) -> Result<(), String>,
) -> Result<(), String> {
    let unsupported = || {
        format!(
            "DELETE supports time comparisons and tag =, !=, IN, NOT IN conditions joined by \
             AND; '{c}' is not one"
        )
    };
    match c {
        SqlExpr::BinaryOp { left, op, right } => {
            let (column, value, op) = match (column_name(left), column_name(right)) {
                (Some(col), _) => (col, right.as_ref(), op.clone()),
                (None, Some(col)) => (col, left.as_ref(), flip(op).ok_or_else(unsupported)?),
                (None, None) => return Err(unsupported()),
            };
            check(&column)?;
            if column == TIME_COLUMN {
                let t = time_value(value)?;
                match op {
                    BinaryOperator::GtEq => p.min_time = p.min_time.max(t),
                    BinaryOperator::Gt => p.min_time = p.min_time.max(t.saturating_add(1)),
                    BinaryOperator::LtEq => p.max_time = p.max_time.min(t),
                    BinaryOperator::Lt => p.max_time = p.max_time.min(t.saturating_sub(1)),
                    BinaryOperator::Eq => {
                        p.min_time = p.min_time.max(t);
                        p.max_time = p.max_time.min(t);
                    }
                    _ => return Err(unsupported()),
                }
                return Ok(());
            }
            let v = string_value(value).ok_or_else(|| {
                format!("tag '{column}' is compared with '{value}'; tags take strings")
            })?;
            let negated = match op {
                BinaryOperator::Eq => false,
                BinaryOperator::NotEq => true,
                _ => return Err(unsupported()),
            };
            p.tags.push(pb::TagCondition {
                tag: column,
                values: vec![v],
                negated,
            });
            Ok(())
        }
        SqlExpr::InList {
            expr,
            list,
            negated,
        } => {
            let column = column_name(expr).ok_or_else(unsupported)?;
            check(&column)?;
            if column == TIME_COLUMN {
                return Err(unsupported());
            }
            let values = list
                .iter()
                .map(|v| {
                    string_value(v).ok_or_else(|| {
                        format!("tag '{column}' is compared with '{v}'; tags take strings")
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            p.tags.push(pb::TagCondition {
                tag: column,
                values,
                negated: *negated,
            });
            Ok(())
        }
        SqlExpr::Between {
            expr,
            negated: false,
            low,
            high,
        } if column_name(expr).as_deref() == Some(TIME_COLUMN) => {
            p.min_time = p.min_time.max(time_value(low)?);
            p.max_time = p.max_time.min(time_value(high)?);
            Ok(())
        }
        SqlExpr::Nested(inner) => add_condition(inner, p, check),
        _ => Err(unsupported()),
    }
}

/// `value op column` as `column op' value`.
fn flip(op: &BinaryOperator) -> Option<BinaryOperator> {
    Some(match op {
        BinaryOperator::Gt => BinaryOperator::Lt,
        BinaryOperator::GtEq => BinaryOperator::LtEq,
        BinaryOperator::Lt => BinaryOperator::Gt,
        BinaryOperator::LtEq => BinaryOperator::GtEq,
        BinaryOperator::Eq => BinaryOperator::Eq,
        BinaryOperator::NotEq => BinaryOperator::NotEq,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use strata_catalog::model::{Column, Database, DatabaseOptions, FieldType, Table};

    use super::*;

    fn catalog() -> CatalogData {
        let mut table = Table::new("cpu");
        for (name, kind) in [
            ("host", ColumnKind::Tag),
            ("region", ColumnKind::Tag),
            ("usage", ColumnKind::Field(FieldType::Float)),
        ] {
            table.columns.push(Column {
                name: name.into(),
                kind,
            });
        }
        let mut state = CatalogData::default();
        for name in ["metrics", "other"] {
            state.databases.insert(
                name.into(),
                Database {
                    name: name.into(),
                    options: DatabaseOptions::default(),
                    tables: BTreeMap::from([("cpu".to_string(), table.clone())]),
                    shard_groups: vec![],
                },
            );
        }
        state
    }

    fn parse_ok(sql: &str) -> DeleteStatement {
        parse(sql, Some("metrics"), &catalog()).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    fn parse_err(sql: &str) -> String {
        parse(sql, Some("metrics"), &catalog()).unwrap_err()
    }

    #[test]
    fn time_ranges_and_tags() {
        let d = parse_ok(
            "DELETE FROM cpu WHERE time >= '2024-01-01T00:00:00Z' AND time < '2024-01-02' \
             AND host = 'a' AND region IN ('eu', 'us') AND host <> 'b'",
        );
        assert_eq!(d.database, "metrics");
        assert_eq!(d.table, "cpu");
        assert_eq!(d.predicate.min_time, 1_704_067_200_000_000_000);
        assert_eq!(d.predicate.max_time, 1_704_153_600_000_000_000 - 1);
        assert_eq!(
            d.predicate.tags,
            vec![
                pb::TagCondition {
                    tag: "host".into(),
                    values: vec!["a".into()],
                    negated: false
                },
                pb::TagCondition {
                    tag: "region".into(),
                    values: vec!["eu".into(), "us".into()],
                    negated: false
                },
                pb::TagCondition {
                    tag: "host".into(),
                    values: vec!["b".into()],
                    negated: true
                },
            ]
        );
        let d = parse_ok("delete from other.cpu where 100 < time and time <= 200");
        assert_eq!(d.database, "other");
        assert_eq!((d.predicate.min_time, d.predicate.max_time), (101, 200));
        let d = parse_ok("DELETE FROM cpu WHERE time BETWEEN 5 AND 9 AND region NOT IN ('x')");
        assert_eq!((d.predicate.min_time, d.predicate.max_time), (5, 9));
        assert!(d.predicate.tags[0].negated);
        let d = parse_ok("DELETE FROM cpu");
        assert_eq!(
            (d.predicate.min_time, d.predicate.max_time),
            (i64::MIN, i64::MAX)
        );
        assert!(is_delete("  delete from cpu") && !is_delete("SELECT 1"));
    }

    #[test]
    fn influxdb_2_predicates() {
        let d = parse_v2(
            &catalog(),
            "metrics",
            "2024-01-01T00:00:00Z",
            "2024-01-02T00:00:00Z",
            "_measurement=\"cpu\" AND host=\"a b\" and region != 'eu'",
        )
        .unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].table, "cpu");
        assert_eq!(d[0].predicate.max_time, 1_704_153_600_000_000_000);
        assert_eq!(d[0].predicate.tags[0].values, vec!["a b"]);
        assert!(d[0].predicate.tags[1].negated);
        let all = parse_v2(
            &catalog(),
            "metrics",
            "1970-01-01T00:00:00Z",
            "2100-01-01T00:00:00Z",
            "",
        )
        .unwrap();
        assert_eq!(all.len(), 1, "every table of the bucket");
        let none = parse_v2(
            &catalog(),
            "metrics",
            "1970-01-01T00:00:00Z",
            "1970-01-02T00:00:00Z",
            "_measurement=\"mem\"",
        )
        .unwrap();
        assert!(none.is_empty());
        let e = parse_v2(
            &catalog(),
            "metrics",
            "1970-01-01T00:00:00Z",
            "1970-01-02T00:00:00Z",
            "_measurement=\"cpu\" AND usage=\"1\"",
        )
        .unwrap_err();
        assert!(e.contains("'usage' is a field"), "{e}");
        let e = parse_v2(&catalog(), "metrics", "now", "1970-01-02T00:00:00Z", "").unwrap_err();
        assert!(e.starts_with("start:"), "{e}");
    }

    #[test]
    fn clear_errors() {
        assert!(parse_err("DELETE FROM cpu WHERE usage > 1").contains("'usage' is a field"));
        assert!(parse_err("DELETE FROM cpu WHERE rack = 'a'").contains("no column 'rack'"));
        assert!(parse_err("DELETE FROM mem").contains("table 'mem' not found"));
        assert!(parse_err("DELETE FROM nope.cpu").contains("database 'nope' not found"));
        assert!(parse_err("DELETE FROM cpu WHERE host = 'a' OR host = 'b'")
            .contains("only be joined with AND"));
        assert!(parse_err("DELETE FROM cpu WHERE host = 1").contains("tags take strings"));
        assert!(parse_err("DELETE FROM cpu WHERE time > 'yesterday'").contains("not a timestamp"));
        assert!(parse_err("DELETE FROM cpu WHERE host LIKE 'a%'").contains("is not one"));
        let e = parse("DELETE FROM cpu", None, &catalog()).unwrap_err();
        assert!(e.contains("DELETE needs a database"), "{e}");
    }
}
