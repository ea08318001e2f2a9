//! The HTTP front door: InfluxDB line-protocol writes (`/write` v1,
//! `/api/v2/write` v2), SQL over HTTP (`/api/v3/query_sql`), the v1
//! `/query` endpoint for database management, `/ping` and `/health`.

use std::io::Read;

use arrow::array::RecordBatch;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use crate::error::Error;
use crate::query::ddl::{self, OwnStatement};
use crate::query::QueryEngine;
use crate::write_router::{Consistency, Precision, WriteRouter};

/// Largest request body accepted (after decompression for gzip).
pub const MAX_BODY_BYTES: usize = 256 << 20;

#[derive(Clone)]
pub struct HttpState {
    pub writer: WriteRouter,
    pub engine: QueryEngine,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/write", post(write_v1))
        .route("/api/v2/write", post(write_v2))
        .route("/api/v2/delete", post(delete_v2))
        .route("/api/v3/query_sql", get(query_sql_get).post(query_sql_post))
        .route("/query", get(query_v1).post(query_v1))
        .route("/ping", get(ping).head(ping))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn error_response(e: Error) -> Response {
    let status = e.http_status();
    let msg = e.to_string();
    let mut resp = (
        status,
        Json(json!({ "code": code_name(status), "error": msg, "message": msg })),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert("Retry-After", http::HeaderValue::from_static("1"));
    }
    resp
}

fn code_name(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid",
        401 => "unauthorized",
        404 => "not found",
        413 => "request too large",
        503 => "unavailable",
        _ => "internal error",
    }
}

#[derive(Debug, Deserialize)]
struct V1WriteParams {
    db: Option<String>,
    precision: Option<String>,
    consistency: Option<String>,
}

#[derive(Debug, Deserialize)]
struct V2WriteParams {
    bucket: Option<String>,
    precision: Option<String>,
}

#[derive(Debug, Deserialize)]
struct V2DeleteParams {
    bucket: Option<String>,
}

#[derive(Debug, Deserialize)]
struct V2DeleteBody {
    start: String,
    stop: String,
    #[serde(default)]
    predicate: String,
}

/// InfluxDB 2's `/api/v2/delete`: a time range and a predicate such as
/// `_measurement="cpu" AND host="a"`; 204 once every replica applied it.
async fn delete_v2(
    State(state): State<HttpState>,
    Query(p): Query<V2DeleteParams>,
    body: Bytes,
) -> Response {
    let Some(bucket) = p.bucket else {
        return error_response(Error::BadParameter {
            name: "bucket",
            reason: "name the bucket (database) to delete from".into(),
        });
    };
    let db = bucket.split('/').next().unwrap_or_default().to_string();
    let req: V2DeleteBody = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error_response(Error::BadBody {
                what: "JSON with start, stop and predicate",
                reason: e.to_string(),
            })
        }
    };
    let catalog = state.engine.catalog().state();
    let statements = match crate::query::delete::parse_v2(
        &catalog,
        &db,
        &req.start,
        &req.stop,
        &req.predicate,
    ) {
        Ok(s) => s,
        Err(reason) => return error_response(Error::BadStatement { reason }),
    };
    for d in statements {
        if let Err(e) = state.engine.delete(d).await {
            return error_response(e);
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

async fn write_v1(
    State(state): State<HttpState>,
    Query(p): Query<V1WriteParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    write(&state, p.db, p.precision, p.consistency, &headers, body).await
}

async fn write_v2(
    State(state): State<HttpState>,
    Query(p): Query<V2WriteParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // A v2 bucket may be "database/retention_policy"; the database is first.
    let db = p
        .bucket
        .map(|b| b.split('/').next().unwrap_or_default().to_string());
    write(&state, db, p.precision, None, &headers, body).await
}

async fn write(
    state: &HttpState,
    db: Option<String>,
    precision: Option<String>,
    consistency: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    match write_inner(state, db, precision, consistency, headers, body).await {
        Ok(resp) => resp,
        Err(e) => error_response(e),
    }
}

async fn write_inner(
    state: &HttpState,
    db: Option<String>,
    precision: Option<String>,
    consistency: Option<String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let db = db.filter(|d| !d.is_empty()).ok_or(Error::BadParameter {
        name: "db",
        reason: "name the database to write to (?db= for /write, ?bucket= for /api/v2/write)"
            .into(),
    })?;
    ddl::validate_name(&db).map_err(|reason| Error::BadParameter { name: "db", reason })?;
    let precision = match precision.as_deref() {
        None => Precision::Nanoseconds,
        Some(p) => Precision::parse(p).ok_or_else(|| Error::BadParameter {
            name: "precision",
            reason: format!("'{p}' is not one of ns, us, ms, s"),
        })?,
    };
    let consistency = match consistency.as_deref() {
        None => Consistency::All,
        Some(c) => Consistency::parse(c).ok_or_else(|| Error::BadParameter {
            name: "consistency",
            reason: format!("'{c}' is not one of any, one, quorum, all"),
        })?,
    };
    let body = decode_body(headers, body)?;
    let text = std::str::from_utf8(&body).map_err(|e| Error::BadBody {
        what: "UTF-8",
        reason: e.to_string(),
    })?;
    let now_ns = chrono::Utc::now()
        .timestamp_nanos_opt()
        .expect("the clock is within the nanosecond range");
    let outcome = state
        .writer
        .write(&db, text, precision, consistency, now_ns)
        .await?;
    if outcome.errors.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let rejected = outcome.errors.len();
    let first = &outcome.errors[0];
    let message = format!(
        "partial write: {rejected} line(s) rejected, {} written; first error at {first}",
        outcome.lines_written
    );
    let line_errors: Vec<_> = outcome
        .errors
        .iter()
        .map(|e| json!({ "line": e.line_number, "error": e.message }))
        .collect();
    Ok((
        StatusCode::BAD_REQUEST,
        Json(json!({
            "code": "invalid",
            "error": message,
            "message": message,
            "lines_written": outcome.lines_written,
            "lines_rejected": rejected,
            "line_errors": line_errors,
        })),
    )
        .into_response())
}

fn decode_body(headers: &HeaderMap, body: Bytes) -> Result<Bytes, Error> {
    let gzip = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    if !gzip {
        return Ok(body);
    }
    let mut out = Vec::with_capacity(body.len() * 4);
    flate2::read::GzDecoder::new(&body[..])
        .take(MAX_BODY_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| Error::BadBody {
            what: "gzip",
            reason: e.to_string(),
        })?;
    if out.len() > MAX_BODY_BYTES {
        return Err(Error::BadBody {
            what: "gzip",
            reason: format!("decompressed body exceeds {MAX_BODY_BYTES} bytes"),
        });
    }
    Ok(out.into())
}

#[derive(Debug, Deserialize)]
struct SqlParams {
    db: Option<String>,
    q: Option<String>,
    format: Option<String>,
}

async fn query_sql_get(State(state): State<HttpState>, Query(p): Query<SqlParams>) -> Response {
    query_sql(&state, p).await
}

async fn query_sql_post(
    State(state): State<HttpState>,
    Query(mut p): Query<SqlParams>,
    body: Bytes,
) -> Response {
    if p.q.is_none() {
        #[derive(Deserialize)]
        struct B {
            db: Option<String>,
            q: Option<String>,
            format: Option<String>,
        }
        if let Ok(b) = serde_json::from_slice::<B>(&body) {
            p = SqlParams {
                db: b.db.or(p.db),
                q: b.q,
                format: b.format.or(p.format),
            };
        }
    }
    query_sql(&state, p).await
}

async fn query_sql(state: &HttpState, p: SqlParams) -> Response {
    let Some(q) = p.q else {
        return error_response(Error::BadParameter {
            name: "q",
            reason: "give the SQL to run as ?q=".into(),
        });
    };
    let batches = match state.engine.query(&q, p.db.as_deref()).await {
        Ok(b) => b,
        Err(e) => return error_response(e),
    };
    match format_batches(&batches, p.format.as_deref().unwrap_or("json")) {
        Ok((content_type, body)) => {
            ([(http::header::CONTENT_TYPE, content_type)], body).into_response()
        }
        Err(e) => error_response(e),
    }
}

fn format_batches(batches: &[RecordBatch], format: &str) -> Result<(&'static str, Vec<u8>), Error> {
    let arrow_err = |source| Error::Arrow { source };
    let refs: Vec<&RecordBatch> = batches.iter().collect();
    match format {
        "json" => {
            let mut w = arrow::json::ArrayWriter::new(Vec::new());
            w.write_batches(&refs).map_err(arrow_err)?;
            w.finish().map_err(arrow_err)?;
            let mut out = w.into_inner();
            if out.is_empty() {
                out = b"[]".to_vec();
            }
            Ok(("application/json", out))
        }
        "jsonl" => {
            let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
            w.write_batches(&refs).map_err(arrow_err)?;
            w.finish().map_err(arrow_err)?;
            Ok(("application/jsonl", w.into_inner()))
        }
        "csv" => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(Vec::new());
            for b in batches {
                w.write(b).map_err(arrow_err)?;
            }
            Ok(("text/csv", w.into_inner()))
        }
        "pretty" => {
            let s = arrow::util::pretty::pretty_format_batches(batches).map_err(arrow_err)?;
            Ok(("text/plain; charset=utf-8", format!("{s}\n").into_bytes()))
        }
        other => Err(Error::BadParameter {
            name: "format",
            reason: format!("'{other}' is not one of json, jsonl, csv, pretty"),
        }),
    }
}

#[derive(Debug, Deserialize)]
struct V1QueryParams {
    q: Option<String>,
    db: Option<String>,
}

/// InfluxDB v1 `/query`: database management statements, which v1 client
/// libraries send (`CREATE DATABASE`, `DROP DATABASE`, `SHOW DATABASES`),
/// and `DELETE FROM measurement WHERE ...` in `db`.
async fn query_v1(State(state): State<HttpState>, Query(p): Query<V1QueryParams>) -> Response {
    let Some(q) = p.q else {
        return error_response(Error::BadParameter {
            name: "q",
            reason: "give the statement to run as ?q=".into(),
        });
    };
    if crate::query::delete::is_delete(&q) {
        return match state.engine.query(&q, p.db.as_deref()).await {
            Ok(_) => Json(json!({ "results": [{ "statement_id": 0 }] })).into_response(),
            Err(e) => error_response(e),
        };
    }
    let own = match ddl::parse(&q) {
        Ok(Some(own)) => own,
        Ok(None) => {
            return error_response(Error::BadStatement {
                reason:
                    "the v1 /query endpoint runs CREATE DATABASE, DROP DATABASE, SHOW \
                         DATABASES and DELETE; run SQL queries over Flight SQL or /api/v3/query_sql"
                        .into(),
            })
        }
        Err(reason) => return error_response(Error::BadStatement { reason }),
    };
    let show = own == OwnStatement::ShowDatabases;
    let batches = match state.engine.query(&q, None).await {
        Ok(b) => b,
        Err(e) => return error_response(e),
    };
    if !show {
        return Json(json!({ "results": [{ "statement_id": 0 }] })).into_response();
    }
    let mut names = vec![];
    for b in &batches {
        let col = b
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .expect("SHOW DATABASES names are strings");
        names.extend(col.iter().flatten().map(|n| json!([n])));
    }
    Json(json!({ "results": [{ "statement_id": 0, "series": [{
        "name": "databases", "columns": ["name"], "values": names
    }]}]}))
    .into_response()
}

async fn ping() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            ("X-Influxdb-Version", "strata-1.8"),
            ("X-Influxdb-Build", "OSS"),
        ],
    )
        .into_response()
}

async fn health() -> Response {
    Json(json!({ "name": "strata", "status": "pass", "version": env!("CARGO_PKG_VERSION") }))
        .into_response()
}
