//! sqllogictest support for strata: a [`StrataDb`] connection that runs
//! each record through Flight SQL against a live cluster (or, for
//! `WRITE LINES`, through the HTTP line-protocol endpoint), and formats
//! results the way the `.slt` files expect.
//!
//! Record conventions:
//! - `statement ok` / `statement error <regex>` / `query <types>` as usual;
//!   types are `I` (integers), `R` (floats), `T` (everything else).
//! - A statement starting with `WRITE LINES` posts the lines after it to
//!   `/write?db=<the file's database>&precision=ns`; a partial write is an
//!   error whose text names the rejected lines.
//! - NULL prints as `NULL`, an empty string as `(empty)`, timestamps as
//!   `2016-01-01T00:00:00`.

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use async_trait::async_trait;
use sqllogictest::{DBOutput, DefaultColumnType};
use strata::sql_client::SqlClient;

/// A failed record, with the text `statement error <regex>` matches.
#[derive(Debug)]
pub struct SltError(pub String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

pub struct StrataDb {
    pub sql: SqlClient,
    pub http: reqwest::Client,
    /// `http://host:port` of the coordinator.
    pub http_base: String,
    pub database: String,
}

const WRITE_LINES: &str = "WRITE LINES";

fn column_type(t: &DataType) -> DefaultColumnType {
    match t {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() => DefaultColumnType::FloatingPoint,
        DataType::Decimal128(..) | DataType::Decimal256(..) => DefaultColumnType::FloatingPoint,
        _ => DefaultColumnType::Text,
    }
}

/// Catalog ids in a plan (`shards=[12]`, `nodes=[1, 3]`) depend on the
/// order in which the files' databases made their shard groups, as files
/// run at once: each shard id becomes `#` (so the count still shows) and
/// the node list `..`.
fn mask_ids(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(at) = ["shards=[", "nodes=["]
        .iter()
        .filter_map(|p| rest.find(p).map(|i| (i, p.len())))
        .min()
    {
        let (i, n) = at;
        out.push_str(&rest[..i + n]);
        rest = &rest[i + n..];
        let end = rest.find(']').unwrap_or(rest.len());
        if n == "nodes=[".len() {
            // Which nodes, and so how many, follows placement.
            out.push_str("..");
        } else {
            let masked: Vec<&str> = rest[..end]
                .split(", ")
                .map(|id| if id.is_empty() { "" } else { "#" })
                .collect();
            out.push_str(&masked.join(", "));
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// A row whose cells hold several lines (EXPLAIN plans) becomes one row
/// per line, so the `.slt` file shows the plan as it prints.
fn split_lines(row: Vec<String>) -> Vec<Vec<String>> {
    if !row.iter().any(|c| c.contains('\n')) {
        return vec![row];
    }
    let row: Vec<String> = row.iter().map(|c| mask_ids(c)).collect();
    let lines: Vec<Vec<&str>> = row.iter().map(|c| c.trim_end().lines().collect()).collect();
    let height = lines.iter().map(Vec::len).max().unwrap_or(0);
    (0..height)
        .map(|i| {
            lines
                .iter()
                .filter_map(|l| l.get(i).map(|s| s.to_string()))
                .collect()
        })
        .collect()
}

/// Rows of `batches` as sqllogictest cells.
pub fn cells(batches: &[RecordBatch]) -> Result<Vec<Vec<String>>, SltError> {
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows = vec![];
    for b in batches {
        let fmts = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SltError(format!("cannot format result: {e}")))?;
        for r in 0..b.num_rows() {
            let row: Vec<String> = fmts
                .iter()
                .map(|f| match f.value(r).to_string() {
                    s if s.is_empty() => "(empty)".to_string(),
                    s => s,
                })
                .collect();
            rows.extend(split_lines(row));
        }
    }
    Ok(rows)
}

impl StrataDb {
    async fn write_lines(&self, lines: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let url = format!("{}/write?db={}&precision=ns", self.http_base, self.database);
        let resp = self
            .http
            .post(url)
            .body(lines.to_string())
            .send()
            .await
            .map_err(|e| SltError(format!("write request failed: {e}")))?;
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        if status.as_u16() == 204 {
            let n = lines.lines().filter(|l| !l.trim().is_empty()).count();
            return Ok(DBOutput::StatementComplete(n as u64));
        }
        Err(SltError(format!("write failed ({status}): {body}")))
    }
}

#[async_trait]
impl sqllogictest::AsyncDB for StrataDb {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let trimmed = sql.trim_start();
        if trimmed.len() >= WRITE_LINES.len()
            && trimmed[..WRITE_LINES.len()].eq_ignore_ascii_case(WRITE_LINES)
        {
            // Line numbers count from the first line after `WRITE LINES`.
            let body = &trimmed[WRITE_LINES.len()..];
            let body = body
                .strip_prefix("\r\n")
                .or_else(|| body.strip_prefix('\n'))
                .unwrap_or(body);
            return self.write_lines(body).await;
        }
        let (schema, batches) = self
            .sql
            .query_with_schema(sql)
            .await
            .map_err(|e| SltError(e.to_string()))?;
        if schema.fields().is_empty() {
            return Ok(DBOutput::StatementComplete(0));
        }
        let types = schema
            .fields()
            .iter()
            .map(|f| column_type(f.data_type()))
            .collect();
        Ok(DBOutput::Rows {
            types,
            rows: cells(&batches)?,
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "strata"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await;
    }
}
