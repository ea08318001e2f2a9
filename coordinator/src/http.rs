//! The HTTP front door: InfluxDB line-protocol writes (`/write` v1,
//! `/api/v2/write` v2), SQL over HTTP (`/api/v3/query_sql`), the v1
//! `/query` endpoint for database management, `/ping` and `/health`.

use std::io::Read;

use arrow::array::RecordBatch;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Extension, Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use snafu::ResultExt;
use tracing::Instrument;

use crate::auth::{credential_from_header, Access, Auth};
use crate::error::Error;
use crate::queries::RunInfo;
use crate::query::ddl::{self, OwnStatement};
use crate::query::QueryEngine;
use crate::write_router::{Consistency, Precision, WriteOutcome, WriteRouter};
use strata_catalog::tokens::Level;

/// Largest request body accepted (after decompression for gzip).
pub const MAX_BODY_BYTES: usize = 256 << 20;

/// Memory that in-flight writes may hold by default (see [`WriteBudget`]).
pub const DEFAULT_WRITE_MEMORY_BYTES: usize = 1 << 30;

/// Line protocol is parsed and routed this many bytes at a time (cut at a
/// line end), so a large body's parsed form never exists whole.
const WRITE_CHUNK_BYTES: usize = 8 << 20;

/// Parsed rows and their Arrow batches take about this many times the
/// bytes of the text they come from, plus [`PARSED_LINE_BYTES`] a line
/// (its parsed form and routing entries).
const PARSED_OVERHEAD: usize = 4;
const PARSED_LINE_BYTES: usize = 256;

/// Line errors a write answer lists (the count covers them all).
const MAX_REPORTED_LINE_ERRORS: usize = 1_000;

/// Rows `format=pretty` renders; larger results should use csv or jsonl,
/// which stream.
pub const MAX_PRETTY_ROWS: usize = 10_000;

#[derive(Clone)]
pub struct HttpState {
    pub writer: WriteRouter,
    pub engine: QueryEngine,
    pub write_budget: WriteBudget,
    pub auth: Auth,
}

/// Admission control for writes: the bytes that in-flight write requests
/// hold (their body, its decompressed text, the parsed rows) are reserved
/// here before they are allocated. A request that would pass the budget is
/// answered 503 with `Retry-After` at once, before it decodes more.
#[derive(Clone)]
pub struct WriteBudget {
    permits: std::sync::Arc<tokio::sync::Semaphore>,
    limit_bytes: usize,
}

/// One permit is this many bytes.
const PERMIT_BYTES: usize = 1024;

impl WriteBudget {
    pub fn new(limit_bytes: usize) -> Self {
        let permits = (limit_bytes / PERMIT_BYTES).clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            permits: std::sync::Arc::new(tokio::sync::Semaphore::new(permits)),
            limit_bytes,
        }
    }

    /// Grows `held` by `bytes`, or refuses without waiting.
    fn reserve(
        &self,
        held: &mut Option<tokio::sync::OwnedSemaphorePermit>,
        bytes: usize,
    ) -> Result<(), Error> {
        let total = bytes + held.as_ref().map_or(0, |h| h.num_permits() * PERMIT_BYTES);
        if total > self.limit_bytes {
            // More than the whole budget: retrying cannot help.
            return Err(Error::BodyTooLarge {
                limit_bytes: self.limit_bytes,
            });
        }
        let n = bytes.div_ceil(PERMIT_BYTES) as u32;
        if n == 0 {
            return Ok(());
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Error::Overloaded {
                what: "write",
                limit_bytes: self.limit_bytes,
            })?;
        match held {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }
}

/// `/ping`, `/health` and `/metrics` answer anyone; every other route
/// needs a token when authentication is on.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/write", post(write_v1))
        .route("/api/v2/write", post(write_v2))
        .route("/api/v2/delete", post(delete_v2))
        .route("/api/v3/query_sql", get(query_sql_get).post(query_sql_post))
        .route("/query", get(query_v1).post(query_v1))
        .route_layer(middleware::from_fn_with_state(
            state.auth.clone(),
            authenticate,
        ))
        .route("/ping", get(ping).head(ping))
        .route("/health", get(health))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
        .merge(strata_metrics::router())
}

/// Finds the token (`Authorization` header; the v1 `p` query parameter)
/// and passes on who presents it, or answers 401.
async fn authenticate(
    State(auth): State<Auth>,
    mut request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let credential = match request_credential(&request) {
        Ok(c) => c,
        Err(e) => return error_response(e),
    };
    match auth.authenticate(credential.as_deref()) {
        Ok(access) => {
            request.extensions_mut().insert(access);
            next.run(request).await
        }
        Err(e) => error_response(e),
    }
}

fn request_credential(request: &axum::extract::Request) -> Result<Option<String>, Error> {
    if let Some(value) = request.headers().get(http::header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| Error::Unauthenticated {
            reason: "the Authorization header is not readable text".into(),
        })?;
        return credential_from_header(value).map(Some);
    }
    // InfluxDB 1: ?u=user&p=password, the token as password.
    let Some(query) = request.uri().query() else {
        return Ok(None);
    };
    let password = form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == "p")
        .map(|(_, v)| v.into_owned());
    Ok(password)
}

fn error_response(e: Error) -> Response {
    let status = e.http_status();
    let msg = e.to_string();
    let mut resp = (
        status,
        Json(json!({ "code": e.error_code(), "error": msg, "message": msg })),
    )
        .into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert("Retry-After", http::HeaderValue::from_static("1"));
    }
    resp
}

/// Query-string parameters. A malformed query string (a repeated
/// parameter, a bad escape) is a bad parameter like any other, answered
/// with the JSON error body rather than axum's plain text.
struct Params<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Params<T> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Response> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(p)) => Ok(Params(p)),
            Err(e) => Err(error_response(Error::BadParameter {
                name: "query string",
                reason: e.body_text(),
            })),
        }
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
    /// Not an InfluxDB 2 parameter; accepted as on `/write`.
    consistency: Option<String>,
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
    Extension(access): Extension<Access>,
    Params(p): Params<V2DeleteParams>,
    body: Bytes,
) -> Response {
    let Some(bucket) = p.bucket else {
        return error_response(Error::BadParameter {
            name: "bucket",
            reason: "name the bucket (database) to delete from".into(),
        });
    };
    let db = bucket.split('/').next().unwrap_or_default().to_string();
    if let Err(e) = access.require(Some(&db), Level::Write) {
        return error_response(e);
    }
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
    Extension(access): Extension<Access>,
    Params(p): Params<V1WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    write(
        &state,
        &access,
        p.db,
        p.precision,
        p.consistency,
        &headers,
        body,
    )
    .await
}

async fn write_v2(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    Params(p): Params<V2WriteParams>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A v2 bucket may be "database/retention_policy"; the database is first.
    let db = p
        .bucket
        .map(|b| b.split('/').next().unwrap_or_default().to_string());
    write(
        &state,
        &access,
        db,
        p.precision,
        p.consistency,
        &headers,
        body,
    )
    .await
}

async fn write(
    state: &HttpState,
    access: &Access,
    db: Option<String>,
    precision: Option<String>,
    consistency: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    let started = std::time::Instant::now();
    let response = match write_inner(state, access, db, precision, consistency, headers, body).await
    {
        Ok(resp) => resp,
        Err(e) => error_response(e),
    };
    let registry = strata_metrics::global();
    let status = response.status().as_u16().to_string();
    registry
        .counter(
            "strata_write_requests_total",
            "Line protocol write requests (/write, /api/v2/write), by HTTP status.",
            &[("status", &status)],
        )
        .inc();
    registry
        .histogram(
            "strata_write_duration_seconds",
            "Time to answer a line protocol write request.",
            &[],
            strata_metrics::LATENCY_BUCKETS,
        )
        .observe_duration(started.elapsed());
    response
}

async fn write_inner(
    state: &HttpState,
    access: &Access,
    db: Option<String>,
    precision: Option<String>,
    consistency: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, Error> {
    let db = db.filter(|d| !d.is_empty()).ok_or(Error::BadParameter {
        name: "db",
        reason: "name the database to write to (?db= for /write, ?bucket= for /api/v2/write)"
            .into(),
    })?;
    ddl::validate_name(&db).map_err(|reason| Error::BadParameter { name: "db", reason })?;
    access.require(Some(&db), Level::Write)?;
    let precision = match precision.as_deref() {
        None => Precision::Nanoseconds,
        Some(p) => Precision::parse(p).ok_or_else(|| Error::BadParameter {
            name: "precision",
            reason: format!("'{p}' is not one of ns, us, ms, s"),
        })?,
    };
    // None: the database's own level.
    let consistency = match consistency.as_deref().filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => Some(Consistency::parse(c).ok_or_else(|| Error::BadParameter {
            name: "consistency",
            reason: format!("'{c}' is not one of any, one, quorum, all"),
        })?),
    };
    let encoding = Encoding::of(headers)?;
    let mut held = None;
    let raw = read_body(headers, body, &state.write_budget, &mut held).await?;
    let body = decode_body(
        encoding,
        raw,
        MAX_BODY_BYTES,
        &state.write_budget,
        &mut held,
    )?;
    let text = std::str::from_utf8(&body).map_err(|e| Error::BadBody {
        what: "UTF-8",
        reason: e.to_string(),
    })?;
    let now_ns = chrono::Utc::now()
        .timestamp_nanos_opt()
        .expect("the clock is within the nanosecond range");
    let mut outcome = WriteOutcome::default();
    let mut rejected = 0;
    let mut first_line = 0;
    for chunk in line_chunks(text, WRITE_CHUNK_BYTES) {
        let lines = chunk.bytes().filter(|b| *b == b'\n').count() + 1;
        // What the chunk's parsed rows and batches take, held while the
        // chunk is routed.
        let mut parsing = None;
        state.write_budget.reserve(
            &mut parsing,
            PARSED_OVERHEAD * chunk.len() + PARSED_LINE_BYTES * lines,
        )?;
        let part = state
            .writer
            .write(&db, chunk, precision, consistency, now_ns)
            .await?;
        drop(parsing);
        outcome.lines_written += part.lines_written;
        rejected += part.lines_rejected;
        let room = MAX_REPORTED_LINE_ERRORS.saturating_sub(outcome.errors.len());
        outcome
            .errors
            .extend(part.errors.into_iter().take(room).map(|mut e| {
                e.line_number += first_line;
                e
            }));
        first_line += lines - 1;
    }
    drop(held);
    let registry = strata_metrics::global();
    let lines = |result: &str| {
        registry.counter(
            "strata_write_lines_total",
            "Lines of line protocol received, by result (written, rejected).",
            &[("result", result)],
        )
    };
    lines("written").inc_by(outcome.lines_written as u64);
    lines("rejected").inc_by(rejected as u64);
    registry
        .counter(
            "strata_write_bytes_total",
            "Bytes of line protocol received (after decompression).",
            &[],
        )
        .inc_by(text.len() as u64);
    if rejected == 0 {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let first = &outcome.errors[0];
    let message = format!(
        "partial write: {rejected} line(s) rejected, {} written; first error at {first}",
        outcome.lines_written
    );
    // The first errors only: a body of millions of bad lines must not
    // answer with millions of messages.
    let line_errors: Vec<_> = outcome
        .errors
        .iter()
        .map(|e| json!({ "line": e.line_number, "error": e.message }))
        .collect();
    Ok((
        StatusCode::BAD_REQUEST,
        Json(json!({
            "code": "lines_rejected",
            "error": message,
            "message": message,
            "lines_written": outcome.lines_written,
            "lines_rejected": rejected,
            "line_errors": line_errors,
        })),
    )
        .into_response())
}

/// A request body's `Content-Encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Identity,
    Gzip,
    /// HTTP's "deflate" is zlib-wrapped deflate.
    Deflate,
}

impl Encoding {
    fn of(headers: &HeaderMap) -> Result<Self, Error> {
        let Some(v) = headers.get(http::header::CONTENT_ENCODING) else {
            return Ok(Self::Identity);
        };
        let v = v.to_str().unwrap_or("").trim().to_ascii_lowercase();
        match v.as_str() {
            "" | "identity" => Ok(Self::Identity),
            "gzip" | "x-gzip" => Ok(Self::Gzip),
            "deflate" => Ok(Self::Deflate),
            other => Err(Error::UnsupportedEncoding {
                encoding: other.to_string(),
            }),
        }
    }
}

/// Reads a body of at most [`MAX_BODY_BYTES`], reserving its bytes in the
/// budget as they arrive; a `Content-Length` over the limit is refused
/// before anything is read.
async fn read_body(
    headers: &HeaderMap,
    body: Body,
    budget: &WriteBudget,
    held: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Bytes, Error> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(Error::BodyTooLarge {
            limit_bytes: MAX_BODY_BYTES,
        });
    }
    if declared.is_some_and(|n| n as usize > budget.limit_bytes) {
        return Err(Error::BodyTooLarge {
            limit_bytes: budget.limit_bytes,
        });
    }
    // Bytes are reserved as they arrive, so a client that declares a large
    // body and sends it slowly holds no more than it sent.
    let mut stream = body.into_data_stream();
    let mut out: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0).min(1 << 20) as usize);
    budget.reserve(held, out.capacity())?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| Error::BadBody {
            what: "request body",
            reason: e.to_string(),
        })?;
        if out.len() + chunk.len() > MAX_BODY_BYTES {
            return Err(Error::BodyTooLarge {
                limit_bytes: MAX_BODY_BYTES,
            });
        }
        // Growing the buffer may double it: reserve what it will hold.
        let needed = out.len() + chunk.len();
        if needed > out.capacity() {
            let grown = needed.max(2 * out.capacity());
            budget.reserve(held, grown - out.capacity())?;
            out.reserve_exact(grown - out.len());
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

/// Decompresses a body a block at a time, reserving each block in the
/// budget first, up to `limit` bytes of text.
fn decode_body(
    encoding: Encoding,
    body: Bytes,
    limit: usize,
    budget: &WriteBudget,
    held: &mut Option<tokio::sync::OwnedSemaphorePermit>,
) -> Result<Bytes, Error> {
    let (what, mut reader): (&'static str, Box<dyn Read + '_>) = match encoding {
        Encoding::Identity => return Ok(body),
        Encoding::Gzip => (
            "gzip",
            Box::new(flate2::read::MultiGzDecoder::new(&body[..])),
        ),
        Encoding::Deflate => (
            "deflate",
            Box::new(flate2::read::ZlibDecoder::new(&body[..])),
        ),
    };
    const BLOCK: usize = 1 << 20;
    let mut out: Vec<u8> = Vec::new();
    loop {
        if out.len() > limit {
            return Err(Error::BodyTooLarge { limit_bytes: limit });
        }
        budget.reserve(held, BLOCK)?;
        let start = out.len();
        // Exactly one more block, not a doubling the budget did not see.
        out.reserve_exact(BLOCK);
        out.resize(start + BLOCK, 0);
        let mut filled = start;
        while filled < out.len() {
            match reader.read(&mut out[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::BadBody {
                        what,
                        reason: e.to_string(),
                    })
                }
            }
        }
        out.truncate(filled);
        if filled < start + BLOCK {
            break;
        }
    }
    if out.len() > limit {
        return Err(Error::BodyTooLarge { limit_bytes: limit });
    }
    Ok(out.into())
}

/// Cuts `text` into pieces of about `size` bytes that end at a line end.
fn line_chunks(text: &str, size: usize) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = if rest.len() <= size {
            rest.len()
        } else {
            rest.as_bytes()[size..]
                .iter()
                .position(|b| *b == b'\n')
                .map_or(rest.len(), |p| size + p + 1)
        };
        let (piece, more) = rest.split_at(cut);
        rest = more;
        Some(piece)
    })
}

#[derive(Debug, Deserialize)]
struct SqlParams {
    db: Option<String>,
    q: Option<String>,
    format: Option<String>,
}

async fn query_sql_get(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    Params(p): Params<SqlParams>,
) -> Response {
    query_sql(&state, &access, p).await
}

async fn query_sql_post(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    Params(mut p): Params<SqlParams>,
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
    query_sql(&state, &access, p).await
}

async fn query_sql(state: &HttpState, access: &Access, p: SqlParams) -> Response {
    let Some(q) = p.q else {
        return error_response(Error::BadParameter {
            name: "q",
            reason: "give the SQL to run as ?q=".into(),
        });
    };
    let format = match ResultFormat::parse(p.format.as_deref().unwrap_or("json")) {
        Ok(f) => f,
        Err(e) => return error_response(e),
    };
    match query_response(state, access, &q, p.db.as_deref(), format).await {
        Ok(r) => r,
        Err(e) => error_response(e),
    }
}

/// How `/api/v3/query_sql` writes a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResultFormat {
    Json,
    JsonLines,
    Csv,
    Pretty,
}

impl ResultFormat {
    fn parse(s: &str) -> Result<Self, Error> {
        match s {
            "json" => Ok(Self::Json),
            "jsonl" => Ok(Self::JsonLines),
            "csv" => Ok(Self::Csv),
            "pretty" => Ok(Self::Pretty),
            other => Err(Error::BadParameter {
                name: "format",
                reason: format!("'{other}' is not one of json, jsonl, csv, pretty"),
            }),
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::JsonLines => "application/jsonl",
            Self::Csv => "text/csv",
            Self::Pretty => "text/plain; charset=utf-8",
        }
    }
}

/// Response header of a best-effort query answered without some shards:
/// their ids, comma-separated.
pub const MISSING_SHARDS_HEADER: &str = "strata-missing-shards";
/// Response header saying why an answer is incomplete.
pub const WARNING_HEADER: &str = "strata-warning";

/// Runs a query and streams its result batch by batch (json, jsonl, csv),
/// so memory stays at about one batch whatever the result's size. The
/// first batch is awaited before the answer starts, so that an error in
/// planning or at the start of execution gets its status code; a failure
/// later cuts the body short. `pretty` renders at most
/// [`MAX_PRETTY_ROWS`] rows and refuses a larger result.
async fn query_response(
    state: &HttpState,
    access: &Access,
    q: &str,
    db: Option<&str>,
    format: ResultFormat,
) -> Result<Response, Error> {
    let info = RunInfo::new(q, db).with_access(access);
    let span = tracing::info_span!("query", query_id = %info.query_id, database = ?db);
    let (planned, mut stream) = async {
        let planned = state.engine.plan(q, db, &info.query_id, access).await?;
        let (best_effort, missing) = (planned.best_effort(), planned.missing_shards());
        let stream = state.engine.execute(planned, &info).await?;
        Ok::<_, Error>(((best_effort, missing), stream))
    }
    .instrument(span)
    .await?;
    let (best_effort, missing) = planned;
    let content_type = [(http::header::CONTENT_TYPE, format.content_type())];
    if best_effort {
        // The missing shards are known once every shard was tried: the
        // answer is read whole, so that its headers can name them.
        let mut encoder = ResultEncoder::new(format);
        let mut body = vec![];
        let mut batches = vec![];
        while let Some(b) = stream.next().await {
            let b = b.context(crate::error::QuerySnafu)?;
            match format {
                ResultFormat::Pretty => batches.push(b),
                _ => body.extend(encoder.batch(&b)?),
            }
        }
        match format {
            ResultFormat::Pretty => {
                let text = arrow::util::pretty::pretty_format_batches(&batches)
                    .map_err(|source| Error::Arrow { source })?;
                body = format!("{text}\n").into_bytes();
            }
            _ => body.extend(encoder.finish()),
        }
        let mut response = (content_type, body).into_response();
        if let Some(m) = missing.filter(|m| !m.shard_ids().is_empty()) {
            let ids = m
                .shard_ids()
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",");
            let warning: String = m
                .warning()
                .unwrap_or_default()
                .chars()
                .map(|c| {
                    if c.is_ascii_graphic() || c == ' ' {
                        c
                    } else {
                        '?'
                    }
                })
                .collect();
            let headers = response.headers_mut();
            for (name, value) in [(MISSING_SHARDS_HEADER, ids), (WARNING_HEADER, warning)] {
                if let Ok(v) = http::HeaderValue::from_str(&value) {
                    headers.insert(name, v);
                }
            }
        }
        return Ok(response);
    }
    if format == ResultFormat::Pretty {
        let mut batches = vec![];
        let mut rows = 0;
        while let Some(b) = stream.next().await {
            let b = b.context(crate::error::QuerySnafu)?;
            rows += b.num_rows();
            if rows > MAX_PRETTY_ROWS {
                return Err(Error::BadParameter {
                    name: "format",
                    reason: format!(
                        "the result has more than {MAX_PRETTY_ROWS} rows, too many for \
                         format=pretty; use format=csv or format=jsonl, which stream"
                    ),
                });
            }
            batches.push(b);
        }
        let text = arrow::util::pretty::pretty_format_batches(&batches)
            .map_err(|source| Error::Arrow { source })?;
        return Ok((content_type, format!("{text}\n")).into_response());
    }
    let first = match stream.next().await {
        Some(b) => Some(b.context(crate::error::QuerySnafu)?),
        None => None,
    };
    let mut encoder = ResultEncoder::new(format);
    let head = match &first {
        Some(b) => encoder.batch(b)?,
        None => vec![],
    };
    let body = futures::stream::once(futures::future::ready(Ok::<_, Error>(head)))
        .chain(futures::stream::unfold(
            (stream, encoder, false),
            |(mut stream, mut encoder, done)| async move {
                if done {
                    return None;
                }
                match stream.next().await {
                    Some(Ok(b)) => {
                        let bytes = encoder.batch(&b);
                        Some((bytes, (stream, encoder, false)))
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "query failed while its result was sent");
                        Some((Err(Error::Query { source: e }), (stream, encoder, true)))
                    }
                    None => Some((Ok(encoder.finish()), (stream, encoder, true))),
                }
            },
        ))
        .map(|r| {
            r.map(Bytes::from)
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
    Ok((content_type, Body::from_stream(body)).into_response())
}

/// Turns batches into the bytes of one result format, one batch at a time.
struct ResultEncoder {
    format: ResultFormat,
    /// Whether something was written (a header for csv, a row for json).
    started: bool,
}

impl ResultEncoder {
    fn new(format: ResultFormat) -> Self {
        Self {
            format,
            started: false,
        }
    }

    fn batch(&mut self, b: &RecordBatch) -> Result<Vec<u8>, Error> {
        let arrow_err = |source| Error::Arrow { source };
        match self.format {
            ResultFormat::JsonLines => {
                let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
                w.write(b).map_err(arrow_err)?;
                w.finish().map_err(arrow_err)?;
                Ok(w.into_inner())
            }
            ResultFormat::Json => {
                // One JSON object per line, never a raw newline inside one:
                // the lines joined by commas are the array's elements.
                let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
                w.write(b).map_err(arrow_err)?;
                w.finish().map_err(arrow_err)?;
                let lines = w.into_inner();
                let mut out = Vec::with_capacity(lines.len() + 1);
                for line in lines.split(|c| *c == b'\n').filter(|l| !l.is_empty()) {
                    out.push(if self.started { b',' } else { b'[' });
                    self.started = true;
                    out.extend_from_slice(line);
                }
                Ok(out)
            }
            ResultFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(!self.started)
                    .build(Vec::new());
                w.write(b).map_err(arrow_err)?;
                self.started = true;
                Ok(w.into_inner())
            }
            ResultFormat::Pretty => unreachable!("pretty is rendered whole"),
        }
    }

    fn finish(&mut self) -> Vec<u8> {
        match self.format {
            ResultFormat::Json if self.started => b"]".to_vec(),
            ResultFormat::Json => b"[]".to_vec(),
            _ => vec![],
        }
    }
}

#[derive(Debug, Deserialize)]
struct V1QueryParams {
    q: Option<String>,
    db: Option<String>,
}

/// InfluxDB v1 `/query`: database management statements, which v1 client
/// libraries send (`CREATE DATABASE`, `DROP DATABASE`, `SHOW DATABASES`),
/// and `DROP MEASUREMENT m` and `DELETE FROM measurement WHERE ...` in `db`.
async fn query_v1(
    State(state): State<HttpState>,
    Extension(access): Extension<Access>,
    Params(p): Params<V1QueryParams>,
) -> Response {
    let Some(q) = p.q else {
        return error_response(Error::BadParameter {
            name: "q",
            reason: "give the statement to run as ?q=".into(),
        });
    };
    if crate::query::delete::is_delete(&q) {
        return match state.engine.query(&q, p.db.as_deref(), &access).await {
            Ok(_) => Json(json!({ "results": [{ "statement_id": 0 }] })).into_response(),
            Err(e) => error_response(e),
        };
    }
    match ddl::parse_drop_table(&q, p.db.as_deref()) {
        Ok(Some(_)) => {
            return match state.engine.query(&q, p.db.as_deref(), &access).await {
                Ok(_) => Json(json!({ "results": [{ "statement_id": 0 }] })).into_response(),
                Err(e) => error_response(e),
            }
        }
        Ok(None) => {}
        Err(reason) => return error_response(Error::BadStatement { reason }),
    }
    let own = match ddl::parse(&q) {
        Ok(Some(own)) => own,
        Ok(None) => {
            return error_response(Error::BadStatement {
                reason:
                    "the v1 /query endpoint runs CREATE DATABASE, DROP DATABASE, SHOW \
                         DATABASES, DROP MEASUREMENT and DELETE; run SQL queries over Flight SQL or /api/v3/query_sql"
                        .into(),
            })
        }
        Err(reason) => return error_response(Error::BadStatement { reason }),
    };
    let show = own == OwnStatement::ShowDatabases;
    let batches = match state.engine.query(&q, None, &access).await {
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

/// The coordinator is up; each storage node is asked how its flushes go
/// (2 s each). A node that does not answer, or whose flushes keep
/// failing, makes the answer 503 `fail`, naming it and the cause.
async fn health(State(state): State<HttpState>) -> Response {
    let catalog = state.engine.catalog().state();
    let checks = catalog.nodes.iter().map(|(id, node)| {
        let nodes = state.engine.nodes().clone();
        let (id, addr) = (*id, node.flight_addr.clone());
        async move {
            let ask = async {
                let mut client = nodes.flight(&addr).map_err(|e| e.message().to_string())?;
                let mut results = client
                    .do_action(arrow_flight::Action::new(strata_proto::HEALTH_ACTION, ""))
                    .await
                    .map_err(|e| e.to_string())?;
                let first = results
                    .next()
                    .await
                    .ok_or("no answer")?
                    .map_err(|e| e.to_string())?;
                serde_json::from_slice::<serde_json::Value>(&first).map_err(|e| e.to_string())
            };
            let answer = tokio::time::timeout(std::time::Duration::from_secs(2), ask)
                .await
                .unwrap_or_else(|_| Err("no answer within 2 s".into()));
            match answer {
                Ok(v) if v["flush_failures"].as_u64().unwrap_or(0) == 0 => {
                    json!({ "node_id": id, "address": addr, "status": "pass" })
                }
                Ok(v) => json!({
                    "node_id": id, "address": addr, "status": "fail",
                    "message": format!(
                        "{} flushes in a row failed: {}",
                        v["flush_failures"], v["last_flush_error"].as_str().unwrap_or("")
                    ),
                }),
                Err(e) => json!({ "node_id": id, "address": addr, "status": "fail", "message": e }),
            }
        }
    });
    let nodes: Vec<serde_json::Value> = futures::future::join_all(checks).await;
    let ok = nodes.iter().all(|n| n["status"] == "pass");
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "name": "strata",
        "status": if ok { "pass" } else { "fail" },
        "version": env!("CARGO_PKG_VERSION"),
        "checks": nodes,
    });
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn gzip(data: &[u8]) -> Bytes {
        let mut z = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
        z.write_all(data).unwrap();
        z.finish().unwrap().into()
    }

    /// A small gzip body that inflates past the limit is refused as too
    /// large, having decoded no more than the limit and a block.
    #[test]
    fn a_gzip_bomb_is_refused_at_the_limit() {
        let budget = WriteBudget::new(1 << 30);
        let bomb = gzip(&vec![b'a'; 5 << 20]);
        assert!(bomb.len() < 64 << 10);
        let mut held = None;
        let e = decode_body(Encoding::Gzip, bomb, 2 << 20, &budget, &mut held).unwrap_err();
        assert!(matches!(e, Error::BodyTooLarge { .. }), "{e}");
        assert_eq!(e.http_status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// Decoding reserves its blocks: past the budget it stops with a 503,
    /// and a finished request gives its reservation back.
    #[test]
    fn decoding_stays_within_the_write_budget() {
        let budget = WriteBudget::new(8 << 20);
        // Another request holds most of the budget: this one must wait.
        let mut other = None;
        budget.reserve(&mut other, 6 << 20).unwrap();
        let body = gzip(&vec![b'a'; 4 << 20]);
        let mut held = None;
        let e =
            decode_body(Encoding::Gzip, body.clone(), 64 << 20, &budget, &mut held).unwrap_err();
        assert!(matches!(e, Error::Overloaded { .. }), "{e}");
        assert_eq!(e.http_status(), StatusCode::SERVICE_UNAVAILABLE);
        drop(held);
        drop(other);
        // Once it is free the same body decodes; one larger than the whole
        // budget never can, and is told so (413, not "retry").
        let mut held = None;
        assert_eq!(
            decode_body(Encoding::Gzip, body, 64 << 20, &budget, &mut held)
                .unwrap()
                .len(),
            4 << 20
        );
        drop(held);
        let mut held = None;
        let e = decode_body(
            Encoding::Gzip,
            gzip(&vec![b'a'; 9 << 20]),
            64 << 20,
            &budget,
            &mut held,
        )
        .unwrap_err();
        assert_eq!(e.http_status(), StatusCode::PAYLOAD_TOO_LARGE, "{e}");
        drop(held);
        let mut held = None;
        let text = decode_body(
            Encoding::Gzip,
            gzip(b"m v=1 1\n"),
            64 << 20,
            &budget,
            &mut held,
        )
        .unwrap();
        assert_eq!(&text[..], b"m v=1 1\n");
        let mut z = flate2::write::ZlibEncoder::new(vec![], flate2::Compression::fast());
        z.write_all(b"m v=2 2\n").unwrap();
        let text = decode_body(
            Encoding::Deflate,
            z.finish().unwrap().into(),
            64 << 20,
            &budget,
            &mut held,
        )
        .unwrap();
        assert_eq!(&text[..], b"m v=2 2\n");
    }

    #[test]
    fn line_chunks_end_at_line_ends_and_cover_the_text() {
        let text: String = (0..1000).map(|i| format!("m v={i} {i}\n")).collect();
        let chunks: Vec<&str> = line_chunks(&text, 100).collect();
        assert!(chunks.len() > 10);
        assert!(chunks.iter().all(|c| c.ends_with('\n')));
        assert_eq!(chunks.concat(), text);
        assert_eq!(line_chunks("no newline at all", 4).count(), 1);
    }

    #[test]
    fn encodings_other_than_gzip_and_deflate_are_415() {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_ENCODING, "br".parse().unwrap());
        let e = Encoding::of(&h).unwrap_err();
        assert_eq!(e.http_status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        h.insert(http::header::CONTENT_ENCODING, "GZIP".parse().unwrap());
        assert_eq!(Encoding::of(&h).unwrap(), Encoding::Gzip);
    }
}
