//! The write path: line protocol in, Arrow batches out to the shard owners.
//!
//! 1. parse every line (a bad line is reported and skipped);
//! 2. check each line's columns against the table schema, adding new tags
//!    and fields through the catalog (a type conflict fails that line only);
//! 3. find or create the shard group of each row's time window;
//! 4. hash each row's series key to a shard of its group;
//! 5. build one Arrow batch per (table, shard) and send it with Flight
//!    `DoPut` to every owner, answering as soon as the consistency level
//!    is met; an owner that is down, behind on queued writes or slower
//!    than the owner timeout gets the rows through hinted handoff
//!    ([`crate::handoff`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{
    ArrayRef, BooleanBuilder, DictionaryArray, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, StringBuilder, TimestampNanosecondBuilder, UInt64Builder,
};
use arrow::datatypes::{Field, Int32Type, Schema};
use arrow_flight::error::FlightError;
use futures::StreamExt;
use snafu::ResultExt;
use strata_catalog::command::{ColumnConflict, CommandResult};
use strata_catalog::model::{
    Column, ColumnKind, Database, FieldType, NodeState, ShardGroup, TIME_COLUMN,
};
use strata_catalog::{CatalogClient, CatalogData, Command};

use crate::error::{CatalogSnafu, Error, Result};
use crate::handoff::{Handoff, Hint};
use crate::line_protocol::{parse_lines_keeping, FieldValue, LineError, ParsedLine, SeriesKey};
use crate::node_clients::{delete_on, put_shard, NodeClients};

/// Timestamp precision of a write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Nanoseconds,
    Microseconds,
    Milliseconds,
    Seconds,
}

impl Precision {
    /// Accepts the spellings of InfluxDB v1 (`n`, `u`, `ms`, `s`) and v2
    /// (`ns`, `us`, `ms`, `s`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ns" | "n" | "" => Some(Self::Nanoseconds),
            "us" | "u" | "µs" => Some(Self::Microseconds),
            "ms" => Some(Self::Milliseconds),
            "s" => Some(Self::Seconds),
            _ => None,
        }
    }

    fn multiplier(self) -> i64 {
        match self {
            Self::Nanoseconds => 1,
            Self::Microseconds => 1_000,
            Self::Milliseconds => 1_000_000,
            Self::Seconds => 1_000_000_000,
        }
    }
}

/// How many owners of each shard must take a write before it is
/// acknowledged.
pub use strata_catalog::model::WriteConsistency as Consistency;

/// What a write did: lines stored, and the lines refused with why.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    pub lines_written: usize,
    /// How many lines were refused.
    pub lines_rejected: usize,
    /// Why, for the first [`MAX_LINE_ERRORS`] of them.
    pub errors: Vec<LineError>,
}

/// Line errors a write keeps (all are counted).
pub const MAX_LINE_ERRORS: usize = 1_000;

/// Most columns a table may have (tags, fields and time). Every column is
/// a catalog entry that every coordinator and node holds; without a bound
/// one body could add a million of them.
pub const MAX_TABLE_COLUMNS: usize = 10_000;

#[derive(Clone)]
pub struct WriteRouter {
    catalog: CatalogClient,
    nodes: NodeClients,
    handoff: Arc<Handoff>,
    /// How long one owner has to take a write before it is queued for it.
    owner_timeout: Duration,
}

/// The default of `--write-timeout`.
pub const DEFAULT_OWNER_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of a write for one owner.
enum Delivery {
    /// The owner has it durably.
    Stored,
    /// Queued for the owner on this coordinator, durably.
    Hinted,
    /// Neither; `refused` when the owner refused the rows for good.
    Failed { refused: bool, message: String },
}

/// A line that passed parsing, with its time in nanoseconds.
struct Row<'a> {
    line: ParsedLine<'a>,
    time_ns: i64,
    /// Start of the shard-group window holding `time_ns`.
    window_start: i64,
}

impl WriteOutcome {
    /// Keeps the first [`MAX_LINE_ERRORS`] errors by line, counting all.
    fn set_errors(&mut self, mut errors: Vec<LineError>, uncounted: usize) {
        errors.sort_by_key(|e| e.line_number);
        self.lines_rejected = errors.len() + uncounted;
        errors.truncate(MAX_LINE_ERRORS);
        self.errors = errors;
    }
}

impl WriteRouter {
    pub fn new(
        catalog: CatalogClient,
        nodes: NodeClients,
        handoff: Arc<Handoff>,
        owner_timeout: Duration,
    ) -> Self {
        Self {
            catalog,
            nodes,
            handoff,
            owner_timeout,
        }
    }

    pub fn handoff(&self) -> &Arc<Handoff> {
        &self.handoff
    }

    #[tracing::instrument(name = "write", skip_all, fields(db = %database))]
    pub async fn write(
        &self,
        database: &str,
        body: &str,
        precision: Precision,
        consistency: Option<Consistency>,
        now_ns: i64,
    ) -> Result<WriteOutcome> {
        let (parsed, mut errors, parse_rejected) = parse_lines_keeping(body, MAX_LINE_ERRORS);
        // Errors past the kept ones are only counted.
        let uncounted = parse_rejected - errors.len();
        let mut rows = Vec::with_capacity(parsed.len());
        for line in parsed {
            let time_ns = match line.timestamp {
                None => now_ns,
                Some(t) => match t.checked_mul(precision.multiplier()) {
                    Some(ns) => ns,
                    None => {
                        errors.push(LineError {
                            line_number: line.line_number,
                            message: format!("timestamp {t} is out of range for precision"),
                        });
                        continue;
                    }
                },
            };
            rows.push(Row {
                line,
                time_ns,
                window_start: 0,
            });
        }
        self.write_rows(database, rows, errors, uncounted, consistency, now_ns)
            .await
    }

    /// Writes rows built elsewhere (SQL `INSERT`) through the same path as
    /// line protocol: schema on write, retention, shard routing. Each line's
    /// timestamp is in nanoseconds (none means `now_ns`); a refused line is
    /// reported by its `line_number`.
    pub async fn write_lines(
        &self,
        database: &str,
        lines: Vec<ParsedLine<'_>>,
        consistency: Option<Consistency>,
        now_ns: i64,
    ) -> Result<WriteOutcome> {
        let rows = lines
            .into_iter()
            .map(|line| Row {
                time_ns: line.timestamp.unwrap_or(now_ns),
                line,
                window_start: 0,
            })
            .collect();
        self.write_rows(database, rows, vec![], 0, consistency, now_ns)
            .await
    }

    async fn write_rows(
        &self,
        database: &str,
        rows: Vec<Row<'_>>,
        mut errors: Vec<LineError>,
        uncounted: usize,
        consistency: Option<Consistency>,
        now_ns: i64,
    ) -> Result<WriteOutcome> {
        // Group by table.
        let mut by_table: BTreeMap<Cow<str>, Vec<Row>> = BTreeMap::new();
        for r in rows {
            by_table
                .entry(r.line.series.measurement.clone())
                .or_default()
                .push(r);
        }

        let mut accepted: Vec<(Cow<str>, Vec<Row>)> = vec![];
        for (table, rows) in by_table {
            let rows = self
                .ensure_columns(database, &table, rows, &mut errors)
                .await?;
            if !rows.is_empty() {
                accepted.push((table, rows));
            }
        }

        let mut outcome = WriteOutcome::default();
        if accepted.is_empty() {
            outcome.set_errors(errors, uncounted);
            return Ok(outcome);
        }

        // Retention, then shard groups for every window touched.
        let state = self.catalog.state();
        let db = state
            .databases
            .get(database)
            .ok_or_else(|| Error::DatabaseNotFound {
                database: database.to_string(),
            })?
            .clone();
        let consistency = consistency.unwrap_or(db.options.consistency);
        let oldest = db
            .options
            .retention_ns
            .map_or(i64::MIN, |r| now_ns.saturating_sub(r));
        for (_, rows) in accepted.iter_mut() {
            rows.retain_mut(|r| {
                let problem = if r.time_ns < oldest {
                    Some(format!(
                        "point is older than the retention period of database '{database}'"
                    ))
                } else if let Some((start, _)) = db.window(r.time_ns) {
                    r.window_start = start;
                    None
                } else {
                    Some(format!("timestamp {} ns is out of range", r.time_ns))
                };
                if let Some(message) = &problem {
                    errors.push(LineError {
                        line_number: r.line.line_number,
                        message: message.clone(),
                    });
                }
                problem.is_none()
            });
        }
        accepted.retain(|(_, rows)| !rows.is_empty());
        let groups = self.shard_groups(&db, &accepted).await?;

        // Route rows to shards and build one batch per (table, shard).
        let state = self.catalog.state();
        let mut sends = vec![];
        for (table, rows) in &accepted {
            let mut by_shard: HashMap<u64, (Vec<u64>, Vec<&Row>), foldhash::fast::RandomState> =
                HashMap::default();
            for r in rows {
                let group = &groups[&r.window_start];
                let shard = group.shard_for_hash(shard_hash(group, &r.line));
                by_shard
                    .entry(shard.id)
                    .or_insert_with(|| (shard.owners.clone(), vec![]))
                    .1
                    .push(r);
            }
            let catalog_table = state
                .databases
                .get(database)
                .and_then(|d| d.tables.get(table.as_ref()));
            for (shard_id, (owners, rows)) in by_shard {
                let batches = build_batches(
                    catalog_table.map(|t| t.columns.as_slice()).unwrap_or(&[]),
                    &rows,
                )
                .map_err(|e| Error::BadBody {
                    what: "line protocol",
                    reason: e.to_string(),
                })?;
                outcome.lines_written += rows.len();
                sends.push(self.send_shard(
                    &state,
                    database,
                    table,
                    shard_id,
                    owners,
                    batches,
                    consistency,
                ));
            }
        }
        futures::future::try_join_all(sends).await?;
        outcome.set_errors(errors, uncounted);
        Ok(outcome)
    }

    /// Adds the columns the rows need; returns the rows whose columns fit
    /// the table, reporting the others.
    async fn ensure_columns<'a>(
        &self,
        database: &str,
        table: &str,
        rows: Vec<Row<'a>>,
        errors: &mut Vec<LineError>,
    ) -> Result<Vec<Row<'a>>> {
        let state = self.catalog.state();
        let existing: HashMap<String, ColumnKind> = state
            .databases
            .get(database)
            .and_then(|d| d.tables.get(table))
            .map(|t| t.columns.iter().map(|c| (c.name.clone(), c.kind)).collect())
            .unwrap_or_default();

        // The kind each column has in the table, or takes from the first line
        // of this request that uses it.
        let mut kinds: HashMap<String, ColumnKind> = existing.clone();
        let mut new_columns: Vec<Column> = vec![];
        let mut ok_rows: Vec<Row> = Vec::with_capacity(rows.len());
        for r in rows {
            // Kinds only grow, so a line shaped like the last accepted one
            // (same names, same field types) is accepted too.
            if ok_rows.last().is_some_and(|p| p.line.same_shape(&r.line)) {
                ok_rows.push(r);
                continue;
            }
            match check_line(table, &r.line, &mut kinds, &mut new_columns) {
                Ok(()) => ok_rows.push(r),
                Err(message) => errors.push(LineError {
                    line_number: r.line.line_number,
                    message,
                }),
            }
        }
        if existing.len() + new_columns.len() > MAX_TABLE_COLUMNS {
            // Keep the lines that add nothing; refuse the ones that would
            // take the table past its bound.
            let known = |r: &Row| {
                r.line
                    .tags()
                    .iter()
                    .all(|(k, _)| existing.contains_key(k.as_ref()))
                    && r.line
                        .fields
                        .iter()
                        .all(|(k, _)| existing.contains_key(k.as_ref()))
            };
            let (keep, refuse): (Vec<Row>, Vec<Row>) = ok_rows.into_iter().partition(|r| known(r));
            for r in refuse {
                errors.push(LineError {
                    line_number: r.line.line_number,
                    message: format!(
                        "table '{table}' would have more than {MAX_TABLE_COLUMNS} columns; \
                         write these fields to another table"
                    ),
                });
            }
            return Ok(keep);
        }
        let table_missing = !state
            .databases
            .get(database)
            .is_some_and(|d| d.tables.contains_key(table));
        if new_columns.is_empty() && !table_missing {
            return Ok(ok_rows);
        }
        if ok_rows.is_empty() {
            return Ok(ok_rows);
        }
        let result = self
            .catalog
            .execute(Command::AddColumns {
                database: database.to_string(),
                table: table.to_string(),
                columns: new_columns,
            })
            .await
            .context(CatalogSnafu)?;
        let conflicts = match result {
            CommandResult::ColumnsAdded { conflicts } => conflicts,
            _ => vec![],
        };
        if conflicts.is_empty() {
            return Ok(ok_rows);
        }
        // Another writer added a column with another type in the meantime.
        let clash = |c: &ColumnConflict, line: &ParsedLine| {
            line.tags().iter().any(|(k, _)| k == &c.column)
                || line.fields.iter().any(|(k, _)| k == &c.column)
        };
        Ok(ok_rows
            .into_iter()
            .filter(|r| match conflicts.iter().find(|c| clash(c, &r.line)) {
                Some(c) => {
                    errors.push(LineError {
                        line_number: r.line.line_number,
                        message: conflict_message(table, &c.column, c.existing, c.requested),
                    });
                    false
                }
                None => true,
            })
            .collect())
    }

    /// The shard group of every window the rows touch, creating missing ones.
    async fn shard_groups(
        &self,
        db: &Database,
        accepted: &[(Cow<'_, str>, Vec<Row<'_>>)],
    ) -> Result<HashMap<i64, ShardGroup>> {
        let mut groups: HashMap<i64, ShardGroup> = HashMap::new();
        for (_, rows) in accepted {
            for r in rows {
                let start = r.window_start;
                if groups.contains_key(&start) {
                    continue;
                }
                let group = match db.shard_group_for(r.time_ns) {
                    Some(g) => g.clone(),
                    None => {
                        let result = self
                            .catalog
                            .execute(Command::CreateShardGroup {
                                database: db.name.clone(),
                                time_ns: r.time_ns,
                            })
                            .await
                            .context(CatalogSnafu)?;
                        match result {
                            CommandResult::ShardGroup(g) => g,
                            _ => {
                                return Err(Error::DatabaseNotFound {
                                    database: db.name.clone(),
                                })
                            }
                        }
                    }
                };
                groups.insert(start, group);
            }
        }
        Ok(groups)
    }

    /// Sends one shard's rows to its owners; returns once the consistency
    /// level is met, leaving the slower owners to finish (or have the rows
    /// queued for them) in the background.
    #[allow(clippy::too_many_arguments)]
    async fn send_shard(
        &self,
        state: &CatalogData,
        database: &str,
        table: &str,
        shard_id: u64,
        owners: Vec<u64>,
        batches: Vec<RecordBatch>,
        consistency: Consistency,
    ) -> Result<()> {
        let required = consistency.required(owners.len());
        let met = |stored: usize, hinted: usize| {
            stored >= required && (consistency != Consistency::Any || stored + hinted >= 1)
        };
        let hint = Arc::new(Hint {
            database: database.to_string(),
            table: table.to_string(),
            shard_id,
            batches,
            delete: None,
        });
        let mut pending: futures::stream::FuturesUnordered<_> = owners
            .iter()
            .map(|node_id| {
                let node = state.nodes.get(node_id);
                let target = Target {
                    node_id: *node_id,
                    addr: node.map(|n| n.flight_addr.clone()),
                    down: node.is_none_or(|n| n.state == NodeState::Down),
                    catalog_version: state.version,
                };
                deliver(
                    self.nodes.clone(),
                    self.handoff.clone(),
                    self.owner_timeout,
                    target,
                    hint.clone(),
                )
            })
            .collect();
        let (mut stored, mut hinted) = (0, 0);
        let mut refused = false;
        let mut failures = vec![];
        while let Some(d) = pending.next().await {
            match d {
                Delivery::Stored => stored += 1,
                Delivery::Hinted => hinted += 1,
                Delivery::Failed {
                    refused: r,
                    message,
                } => {
                    refused |= r;
                    failures.push(message);
                }
            }
            if met(stored, hinted) {
                break;
            }
        }
        if !pending.is_empty() {
            // Met already: the rest go on without the client.
            tokio::spawn(async move {
                while let Some(d) = pending.next().await {
                    if let Delivery::Failed { message, .. } = d {
                        tracing::warn!(shard = shard_id, error = %message, "a replica missed an acknowledged write");
                    }
                }
            });
        }
        if met(stored, hinted) {
            return Ok(());
        }
        // A node that refused the rows for good (a series limit): retrying
        // cannot help, so it is the client's error, not an outage.
        if refused {
            return Err(Error::WriteRefused {
                shard_id,
                failures: failures.join("; "),
            });
        }
        Err(Error::Consistency {
            shard_id,
            consistency: consistency.name().to_string(),
            owners: owners.len(),
            stored,
            hinted,
            required,
            failures: failures.join("; "),
        })
    }
}

impl WriteRouter {
    /// Sends a delete (an encoded `DeleteRequest`) to every owner of a
    /// shard; an owner that cannot take it now gets it through hinted
    /// handoff, after the writes queued for it. Whether one owner applied
    /// it, and what became of the others.
    pub async fn delete_shard(
        &self,
        state: &CatalogData,
        database: &str,
        table: &str,
        shard_id: u64,
        owners: &[u64],
        request: Vec<u8>,
    ) -> (bool, Vec<String>) {
        let hint = Arc::new(Hint {
            database: database.to_string(),
            table: table.to_string(),
            shard_id,
            batches: vec![],
            delete: Some(request),
        });
        let deliveries = owners.iter().map(|node_id| {
            let node = state.nodes.get(node_id);
            let target = Target {
                node_id: *node_id,
                addr: node.map(|n| n.flight_addr.clone()),
                down: node.is_none_or(|n| n.state == NodeState::Down),
                catalog_version: state.version,
            };
            deliver(
                self.nodes.clone(),
                self.handoff.clone(),
                self.owner_timeout,
                target,
                hint.clone(),
            )
        });
        let mut applied = false;
        let mut notes = vec![];
        for (node_id, d) in owners
            .iter()
            .zip(futures::future::join_all(deliveries).await)
        {
            match d {
                Delivery::Stored => applied = true,
                Delivery::Hinted => notes.push(format!(
                    "node {node_id} will apply it through hinted handoff"
                )),
                Delivery::Failed { message, .. } => notes.push(message),
            }
        }
        (applied, notes)
    }
}

/// An owner as the catalog describes it when the write is routed.
struct Target {
    node_id: u64,
    addr: Option<String>,
    down: bool,
    catalog_version: u64,
}

/// Gets a write to one owner: straight to it, unless it has writes queued
/// (they go first), is marked down, or does not answer in time — then
/// into its hinted-handoff queue.
async fn deliver(
    nodes: NodeClients,
    handoff: Arc<Handoff>,
    timeout: Duration,
    target: Target,
    hint: Arc<Hint>,
) -> Delivery {
    let node_id = target.node_id;
    let queue = || {
        let handoff = handoff.clone();
        let hint = hint.clone();
        async move {
            handoff.enqueue(node_id, &hint).await.map_err(|e| {
                tracing::error!(node = node_id, error = %e, "cannot queue a write for a node");
                e.to_string()
            })
        }
    };
    let direct = match &target.addr {
        Some(addr) if !target.down && !handoff.pending(node_id) => Some(addr.clone()),
        _ => None,
    };
    let Some(addr) = direct else {
        // Behind earlier writes: a node that is up and draining its queue
        // takes this one soon, and then holds it as any other.
        return match queue().await {
            Ok(seq) if !target.down && handoff.wait_delivered(node_id, seq, timeout).await => {
                Delivery::Stored
            }
            Ok(_) => Delivery::Hinted,
            Err(e) => Delivery::Failed {
                refused: false,
                message: format!(
                    "node {node_id} is {}, and {e}",
                    if target.down {
                        "down"
                    } else {
                        "behind on queued writes"
                    }
                ),
            },
        };
    };
    let send = async {
        match hint.delete.clone() {
            Some(request) => delete_on(&nodes, &addr, request).await,
            None => {
                put_shard(
                    &nodes,
                    &addr,
                    target.catalog_version,
                    &hint.database,
                    &hint.table,
                    hint.shard_id,
                    hint.batches.clone(),
                )
                .await
            }
        }
    };
    let sent = tokio::time::timeout(timeout, send).await;
    let message = match sent {
        Ok(Ok(())) => return Delivery::Stored,
        Ok(Err(e)) => {
            if let FlightError::Tonic(s) = &e {
                use tonic::Code;
                // Refused for good: a retry later would be refused again.
                if matches!(
                    s.code(),
                    Code::FailedPrecondition | Code::InvalidArgument | Code::NotFound
                ) {
                    return Delivery::Failed {
                        refused: s.code() == Code::FailedPrecondition,
                        message: format!("node {node_id} at {addr}: {}", s.message()),
                    };
                }
            }
            format!("node {node_id} at {addr}: {e}")
        }
        Err(_) => format!(
            "node {node_id} at {addr} did not answer within {} ms",
            timeout.as_millis()
        ),
    };
    match queue().await {
        Ok(_) => Delivery::Hinted,
        Err(e) => Delivery::Failed {
            refused: false,
            message: format!("{message}; and {e}"),
        },
    }
}

fn conflict_message(
    table: &str,
    column: &str,
    existing: ColumnKind,
    requested: ColumnKind,
) -> String {
    let with_article = |kind: ColumnKind| {
        let d = kind.describe();
        match d.starts_with(['a', 'e', 'i', 'o', 'u']) {
            true => format!("an {d}"),
            false => format!("a {d}"),
        }
    };
    format!(
        "column '{column}' of table '{table}' is {}, but this line writes it as {}",
        with_article(existing),
        with_article(requested)
    )
}

fn field_type(v: &FieldValue) -> FieldType {
    match v {
        FieldValue::Float(_) => FieldType::Float,
        FieldValue::Integer(_) => FieldType::Integer,
        FieldValue::UInteger(_) => FieldType::UInteger,
        FieldValue::String(_) => FieldType::String,
        FieldValue::Boolean(_) => FieldType::Boolean,
    }
}

/// Checks one line's columns against the kinds known so far, recording the
/// columns it introduces.
fn check_line(
    table: &str,
    line: &ParsedLine,
    kinds: &mut HashMap<String, ColumnKind>,
    new_columns: &mut Vec<Column>,
) -> std::result::Result<(), String> {
    let wanted = line
        .tags()
        .iter()
        .map(|(k, _)| (k.as_ref(), ColumnKind::Tag))
        .chain(
            line.fields
                .iter()
                .map(|(k, v)| (k.as_ref(), ColumnKind::Field(field_type(v)))),
        );
    let mut introduced = vec![];
    for (name, kind) in wanted {
        if name == TIME_COLUMN {
            return Err(format!(
                "'{TIME_COLUMN}' cannot be used as a tag or field name"
            ));
        }
        match kinds.get(name) {
            Some(k) if *k == kind => {}
            Some(k) => return Err(conflict_message(table, name, *k, kind)),
            None => introduced.push(Column {
                name: name.to_string(),
                kind,
            }),
        }
    }
    for c in introduced {
        if kinds.insert(c.name.clone(), c.kind).is_none() {
            new_columns.push(c);
        }
    }
    Ok(())
}

/// The hash that picks a row's shard in `group`: of its shard-key tag
/// values when the group has a shard key, of its series key otherwise.
pub fn shard_hash(group: &ShardGroup, line: &ParsedLine) -> u64 {
    if group.shard_key.is_empty() {
        return line.series.hash;
    }
    let value = |key: &str| {
        // A tag written twice keeps its later value.
        line.tags()
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map_or("", |(_, v)| v.as_ref())
    };
    strata_catalog::model::shard_key_hash(group.shard_key.iter().map(|k| value(k)))
}

/// Where each row's values sit: for row `r`, `entries[spans[r].0..spans[r].1]`
/// holds (table column, index into the line's tags or fields) pairs. The
/// table is as large as the values the rows carry, whatever the width of
/// the table: a row of one field in a table of 5,000 fields takes one entry.
struct Positions {
    entries: Vec<(u32, u32)>,
    spans: Vec<(usize, usize)>,
}

impl Positions {
    /// Rows of one table usually repeat the previous row's keys in the same
    /// order, so a row whose tag and field names match the previous row's
    /// shares its entries; others look their names up.
    fn new(table_columns: &[Column], rows: &[&Row]) -> Self {
        let index: HashMap<(&str, bool), u32> = table_columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.kind != ColumnKind::Time)
            .map(|(i, c)| ((c.name.as_str(), c.kind == ColumnKind::Tag), i as u32))
            .collect();
        let mut entries: Vec<(u32, u32)> = vec![];
        let mut spans = Vec::with_capacity(rows.len());
        // Where a column's entry of the current row is, so that a later
        // duplicate of a key replaces the earlier one (as in InfluxDB).
        let mut slot = vec![u32::MAX; table_columns.len()];
        for (r, row) in rows.iter().enumerate() {
            let line = &row.line;
            if r > 0 && rows[r - 1].line.same_shape(line) {
                spans.push(spans[r - 1]);
                continue;
            }
            let start = entries.len();
            let tags = line.tags().iter().map(|(k, _)| (k.as_ref(), true));
            let fields = line.fields.iter().map(|(k, _)| (k.as_ref(), false));
            let keys = tags.enumerate().chain(fields.enumerate());
            for (i, key) in keys {
                let Some(&c) = index.get(&key) else { continue };
                match slot[c as usize] {
                    u32::MAX => {
                        slot[c as usize] = entries.len() as u32;
                        entries.push((c, i as u32));
                    }
                    e => entries[e as usize].1 = i as u32,
                }
            }
            for (c, _) in &entries[start..] {
                slot[*c as usize] = u32::MAX;
            }
            spans.push((start, entries.len()));
        }
        Self { entries, spans }
    }

    fn of(&self, row: usize) -> &[(u32, u32)] {
        let (a, b) = self.spans[row];
        &self.entries[a..b]
    }
}

/// A batch holds at most this many cells (rows × columns) beyond four per
/// value its rows carry: rows that share their columns go into one batch,
/// while sparse rows of a wide table are cut into batches narrow enough
/// that NULL padding stays a small multiple of the data.
const BATCH_CELL_SLACK: usize = 1024;

/// Cuts `rows` (in order) into ranges whose batches stay dense.
fn chunk_rows(positions: &Positions, rows: usize, width: usize) -> Vec<std::ops::Range<usize>> {
    let mut chunks = vec![];
    let mut seen = vec![false; width];
    let mut used: Vec<u32> = vec![];
    let (mut start, mut values) = (0, 0usize);
    for r in 0..rows {
        let entries = positions.of(r);
        let new_columns = entries.iter().filter(|(c, _)| !seen[*c as usize]).count();
        let cells = (r - start + 1) * (used.len() + new_columns + 1);
        let fits = cells <= BATCH_CELL_SLACK + 4 * (values + entries.len() + 1);
        if r > start && !fits {
            chunks.push(start..r);
            for c in used.drain(..) {
                seen[c as usize] = false;
            }
            start = r;
            values = 0;
        }
        for (c, _) in entries {
            if !std::mem::replace(&mut seen[*c as usize], true) {
                used.push(*c);
            }
        }
        values += entries.len() + 1;
    }
    if start < rows {
        chunks.push(start..rows);
    }
    chunks
}

/// Builds the batches of some rows of a table, in row order: each holds
/// the table's columns that its rows use, in table order, then `time`.
/// Rows are visited once each, appending to every column of their batch.
fn build_batches(
    table_columns: &[Column],
    rows: &[&Row],
) -> std::result::Result<Vec<RecordBatch>, arrow::error::ArrowError> {
    let positions = Positions::new(table_columns, rows);
    let width = table_columns.len();
    // Which builder of the current batch a table column appends to.
    let mut builder_of = vec![usize::MAX; width];
    let mut out = vec![];
    for chunk in chunk_rows(&positions, rows.len(), width) {
        let mut used: Vec<usize> = chunk
            .clone()
            .flat_map(|r| positions.of(r).iter().map(|(c, _)| *c as usize))
            .collect();
        used.sort_unstable();
        used.dedup();
        for (b, c) in used.iter().enumerate() {
            builder_of[*c] = b;
        }
        let n = chunk.len();
        let mut builders: Vec<ColumnBuilder<'_>> = used
            .iter()
            .map(|c| ColumnBuilder::new(table_columns[*c].kind, n))
            .collect();
        let mut time = TimestampNanosecondBuilder::with_capacity(n);
        // The position of each builder's value in the current row.
        let mut at: Vec<Option<usize>> = vec![None; used.len()];
        // Each series of the chunk by number, so that tag columns look a
        // series' values up once, not once per row.
        let mut series: HashMap<*const SeriesKey, usize, foldhash::fast::RandomState> =
            HashMap::default();
        for r in chunk {
            let key = Arc::as_ptr(&rows[r].line.series);
            let next = series.len();
            let slot = *series.entry(key).or_insert(next);
            let entries = positions.of(r);
            for (c, p) in entries {
                at[builder_of[*c as usize]] = Some(*p as usize);
            }
            let line = &rows[r].line;
            for (b, p) in builders.iter_mut().zip(&at) {
                b.append(line, *p, slot);
            }
            for (c, _) in entries {
                at[builder_of[*c as usize]] = None;
            }
            time.append_value(rows[r].time_ns);
        }
        let mut fields: Vec<Field> = used
            .iter()
            .map(|c| {
                let c = &table_columns[*c];
                Field::new(&c.name, c.kind.data_type(), true)
            })
            .collect();
        fields.push(Field::new(
            TIME_COLUMN,
            strata_catalog::model::time_data_type(),
            false,
        ));
        let mut arrays: Vec<ArrayRef> = builders
            .into_iter()
            .map(ColumnBuilder::finish)
            .collect::<Result<_, _>>()?;
        arrays.push(Arc::new(time.finish()));
        out.push(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?);
    }
    Ok(out)
}

/// An Arrow builder for one tag or field column.
enum ColumnBuilder<'a> {
    Tag(TagBuilder<'a>),
    Float(Float64Builder),
    Integer(Int64Builder),
    UInteger(UInt64Builder),
    Boolean(BooleanBuilder),
    String(StringBuilder),
}

/// A tag column: dictionary keys per row, each distinct value once. A
/// series' key is found once and reused for its other rows.
struct TagBuilder<'a> {
    keys: Int32Builder,
    values: StringBuilder,
    key_of_value: HashMap<&'a str, i32, foldhash::fast::RandomState>,
    /// By series number: its key, or -1 until its first row.
    key_of_series: Vec<i32>,
}

impl<'a> ColumnBuilder<'a> {
    fn new(kind: ColumnKind, rows: usize) -> Self {
        match kind {
            ColumnKind::Tag => Self::Tag(TagBuilder {
                keys: Int32Builder::with_capacity(rows),
                values: StringBuilder::new(),
                key_of_value: HashMap::default(),
                key_of_series: vec![],
            }),
            ColumnKind::Time => unreachable!("the time column is built on its own"),
            ColumnKind::Field(FieldType::Float) => Self::Float(Float64Builder::with_capacity(rows)),
            ColumnKind::Field(FieldType::Integer) => {
                Self::Integer(Int64Builder::with_capacity(rows))
            }
            ColumnKind::Field(FieldType::UInteger) => {
                Self::UInteger(UInt64Builder::with_capacity(rows))
            }
            ColumnKind::Field(FieldType::Boolean) => {
                Self::Boolean(BooleanBuilder::with_capacity(rows))
            }
            ColumnKind::Field(FieldType::String) => {
                Self::String(StringBuilder::with_capacity(rows, rows * 8))
            }
        }
    }

    /// Appends the value at `position` of the line's tags (for a tag
    /// column) or fields, or NULL; `series` numbers the line's series
    /// within the batch. A value of another type than the column is NULL
    /// too (the column check refused such lines already).
    fn append(&mut self, line: &'a ParsedLine, position: Option<usize>, series: usize) {
        let field = |p: usize| &line.fields[p].1;
        match (self, position) {
            (Self::Tag(b), Some(p)) => {
                if b.key_of_series.len() <= series {
                    b.key_of_series.resize(series + 1, -1);
                }
                let mut key = b.key_of_series[series];
                if key < 0 {
                    let value = line.tags()[p].1.as_ref();
                    let next = b.key_of_value.len() as i32;
                    key = *b.key_of_value.entry(value).or_insert_with(|| {
                        b.values.append_value(value);
                        next
                    });
                    b.key_of_series[series] = key;
                }
                b.keys.append_value(key)
            }
            (Self::Tag(b), None) => b.keys.append_null(),
            (Self::Float(b), p) => b.append_option(match p.map(field) {
                Some(FieldValue::Float(v)) => Some(*v),
                _ => None,
            }),
            (Self::Integer(b), p) => b.append_option(match p.map(field) {
                Some(FieldValue::Integer(v)) => Some(*v),
                _ => None,
            }),
            (Self::UInteger(b), p) => b.append_option(match p.map(field) {
                Some(FieldValue::UInteger(v)) => Some(*v),
                _ => None,
            }),
            (Self::Boolean(b), p) => b.append_option(match p.map(field) {
                Some(FieldValue::Boolean(v)) => Some(*v),
                _ => None,
            }),
            (Self::String(b), p) => b.append_option(match p.map(field) {
                Some(FieldValue::String(v)) => Some(v.as_ref()),
                _ => None,
            }),
        }
    }

    fn finish(self) -> Result<ArrayRef, arrow::error::ArrowError> {
        Ok(match self {
            Self::Tag(mut b) => Arc::new(DictionaryArray::<Int32Type>::try_new(
                b.keys.finish(),
                Arc::new(b.values.finish()),
            )?),
            Self::Float(mut b) => Arc::new(b.finish()),
            Self::Integer(mut b) => Arc::new(b.finish()),
            Self::UInteger(mut b) => Arc::new(b.finish()),
            Self::Boolean(mut b) => Arc::new(b.finish()),
            Self::String(mut b) => Arc::new(b.finish()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::line_protocol::parse_lines;

    #[test]
    fn series_hash_ignores_tag_order() {
        let (a, _) = parse_lines("cpu,host=a,region=x v=1 1");
        let (b, _) = parse_lines("cpu,region=x,host=a v=2 2");
        let (c, _) = parse_lines("cpu,region=x,host=b v=2 2");
        assert_eq!(a[0].series.hash, b[0].series.hash);
        assert_ne!(a[0].series.hash, c[0].series.hash);
        // Routing depends on it staying FNV-1a of the series key text with
        // its tags sorted, whatever the order they were written in.
        let fnv = |text: &str| {
            text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
            })
        };
        assert_eq!(b[0].series.hash, fnv("cpu,host=a,region=x"));
        let (d, _) = parse_lines("cpu,b=2,a=1,b=3 v=1 1");
        assert_eq!(d[0].series.hash, fnv("cpu,a=1,b=3"));
    }

    #[test]
    fn check_line_reports_conflicts_within_a_request() {
        let (lines, _) = parse_lines("m v=1 1\nm v=1i 2\nm,v=x w=1 3\nm time=1 4");
        let mut kinds = HashMap::new();
        let mut new = vec![];
        assert!(check_line("m", &lines[0], &mut kinds, &mut new).is_ok());
        let e = check_line("m", &lines[1], &mut kinds, &mut new).unwrap_err();
        assert!(
            e.contains("float field") && e.contains("integer field"),
            "{e}"
        );
        assert!(check_line("m", &lines[2], &mut kinds, &mut new).is_err());
        assert!(check_line("m", &lines[3], &mut kinds, &mut new).is_err());
        assert_eq!(new.len(), 1, "only v was introduced");
    }

    /// The rows of a line protocol body that must parse cleanly.
    fn rows_of(body: &str) -> Vec<Row<'_>> {
        let (lines, errors) = parse_lines(body);
        assert!(errors.is_empty(), "{errors:?}");
        lines
            .into_iter()
            .map(|line| Row {
                time_ns: line.timestamp.unwrap(),
                window_start: 0,
                line,
            })
            .collect()
    }

    #[test]
    fn build_batch_fills_missing_values_with_null() {
        let rows = rows_of("m,h=a v=1,s=\"x\" 1\nm w=2i 2");
        let refs: Vec<&Row> = rows.iter().collect();
        let cols = vec![
            Column {
                name: "time".into(),
                kind: ColumnKind::Time,
            },
            Column {
                name: "h".into(),
                kind: ColumnKind::Tag,
            },
            Column {
                name: "v".into(),
                kind: ColumnKind::Field(FieldType::Float),
            },
            Column {
                name: "s".into(),
                kind: ColumnKind::Field(FieldType::String),
            },
            Column {
                name: "w".into(),
                kind: ColumnKind::Field(FieldType::Integer),
            },
            Column {
                name: "unused".into(),
                kind: ColumnKind::Field(FieldType::Float),
            },
        ];
        let b = only(build_batches(&cols, &refs).unwrap());
        let names: Vec<_> = b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        assert_eq!(names, vec!["h", "v", "s", "w", "time"]);
        assert_eq!(b.column(0).null_count(), 1);
        assert_eq!(b.column(3).null_count(), 1);
    }

    /// Rows that repeat the previous row's keys, rows with the same keys in
    /// another order, and a key written twice in one line (the later
    /// wins) all land in the right columns.
    #[test]
    fn build_batch_places_values_whatever_the_key_order() {
        let body = "m,h=a,r=x v=1,w=10i 1\n\
                    m,h=b,r=y v=2,w=20i 2\n\
                    m,r=z,h=c w=30i,v=3 3\n\
                    m,r=z,h=c w=40i,v=4,v=5 4\n\
                    m,h=d v=6 5";
        let rows = rows_of(body);
        let refs: Vec<&Row> = rows.iter().collect();
        let column = |name: &str, kind| Column {
            name: name.into(),
            kind,
        };
        let cols = vec![
            column("h", ColumnKind::Tag),
            column("r", ColumnKind::Tag),
            column("v", ColumnKind::Field(FieldType::Float)),
            column("w", ColumnKind::Field(FieldType::Integer)),
        ];
        let b = only(build_batches(&cols, &refs).unwrap());
        let text = arrow::util::pretty::pretty_format_batches(&[b])
            .unwrap()
            .to_string();
        let expected = "\
+---+---+-----+----+-------------------------------+
| h | r | v   | w  | time                          |
+---+---+-----+----+-------------------------------+
| a | x | 1.0 | 10 | 1970-01-01T00:00:00.000000001 |
| b | y | 2.0 | 20 | 1970-01-01T00:00:00.000000002 |
| c | z | 3.0 | 30 | 1970-01-01T00:00:00.000000003 |
| c | z | 5.0 | 40 | 1970-01-01T00:00:00.000000004 |
| d |   | 6.0 |    | 1970-01-01T00:00:00.000000005 |
+---+---+-----+----+-------------------------------+";
        assert_eq!(text, expected);
    }

    fn only(mut batches: Vec<RecordBatch>) -> RecordBatch {
        assert_eq!(batches.len(), 1, "one batch expected");
        batches.pop().unwrap()
    }

    fn wide_columns(fields: usize) -> Vec<Column> {
        let mut cols = vec![Column {
            name: "h".into(),
            kind: ColumnKind::Tag,
        }];
        cols.extend((0..fields).map(|i| Column {
            name: format!("f{i}"),
            kind: ColumnKind::Field(FieldType::Float),
        }));
        cols
    }

    /// Rows of one field in a table of 5,000 fields: one entry per row
    /// value (shared while rows repeat their keys), one narrow batch.
    #[test]
    fn a_narrow_write_to_a_wide_table_costs_what_it_carries() {
        let cols = wide_columns(5_000);
        let body: String = (0..10_000)
            .map(|i| format!("w,h=a f4999={i} {i}\n"))
            .collect();
        let rows = rows_of(&body);
        let refs: Vec<&Row> = rows.iter().collect();
        let positions = Positions::new(&cols, &refs);
        assert_eq!(
            positions.entries.len(),
            2,
            "h and f4999, shared by every row"
        );
        let b = only(build_batches(&cols, &refs).unwrap());
        assert_eq!(b.num_columns(), 3);
        assert_eq!(b.num_rows(), 10_000);
    }

    /// Sparse rows (each a field of its own) of a wide table are cut into
    /// batches whose NULL padding stays bounded, and every value lands in
    /// its column, in row order.
    #[test]
    fn sparse_rows_of_a_wide_table_make_dense_batches() {
        let cols = wide_columns(5_000);
        let body: String = (0..6_000)
            .map(|i| format!("w,h=a f{}={i} {i}\n", i % 5_000))
            .collect();
        let rows = rows_of(&body);
        let refs: Vec<&Row> = rows.iter().collect();
        let batches = build_batches(&cols, &refs).unwrap();
        for b in &batches {
            // Each row carries a tag, a field and its time.
            let (cells, values) = (b.num_rows() * b.num_columns(), b.num_rows() * 3);
            assert!(
                cells <= BATCH_CELL_SLACK + 4 * values,
                "{cells} cells for {values} values"
            );
        }
        let cells: usize = batches.iter().map(|b| b.num_rows() * b.num_columns()).sum();
        assert!(cells <= 16 * 6_000 * 3, "{cells} cells in all");
        let mut seen = 0;
        for b in &batches {
            let time = b
                .column_by_name("time")
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::TimestampNanosecondArray>()
                .unwrap();
            for r in 0..b.num_rows() {
                let i = time.value(r);
                assert_eq!(i, seen, "rows keep their order");
                let v = b
                    .column_by_name(&format!("f{}", i % 5_000))
                    .unwrap()
                    .as_any()
                    .downcast_ref::<arrow::array::Float64Array>()
                    .unwrap();
                assert_eq!(v.value(r), i as f64);
                seen += 1;
            }
        }
        assert_eq!(seen, 6_000);
    }
}
