//! Anti-entropy: replicas of a shard compared by digest and made equal.
//!
//! For each shard with more than one owner:
//!
//! 1. every owner digests its rows per table and time bucket (row count
//!    and a sum of row hashes, [`strata_storage::digest`]);
//! 2. buckets whose digests are not the same everywhere are read from
//!    every owner (deduplicated rows, deletes applied); a bucket of more
//!    than `split_rows` rows is first digested per series range (64
//!    ranges by series hash) and only the ranges that differ are read;
//! 3. per series and time the repair settles each field's value: the one
//!    most replicas hold (a field some replica lacks takes the value of
//!    those that have it; on a tie, the replica holding the most rows of
//!    the bucket, then the lowest node id, wins) and counts a conflict
//!    when replicas disagreed;
//! 4. each owner is written the rows it lacks or holds differently, as a
//!    normal write: its deduplication (newest non-null value per field)
//!    then holds the settled row.
//!
//! Repair only ever adds rows: a row deleted on every replica stays
//! deleted, since no replica answers it. A delete that missed a replica
//! reaches it through hinted handoff, in order with the writes; a repair
//! run while such a delete is still queued would copy the rows back, so
//! background repair passes over shards with hints queued on this
//! coordinator.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{DataType, TimestampNanosecondType};
use datafusion::scalar::ScalarValue;
use futures::TryStreamExt;
use serde::Serialize;
use strata_catalog::model::{Database, NodeState, Shard, Table, TIME_COLUMN};
use strata_catalog::CatalogData;
use strata_storage::digest::ShardDigest;

use crate::node_clients::{json_action, put_shard, shard_digests, NodeClients};

/// What a repair covers.
#[derive(Debug, Clone)]
pub struct RepairScope {
    pub database: Option<String>,
    pub shard_id: Option<u64>,
    /// Width of the time buckets compared.
    pub bucket_ns: i64,
    /// Compare and report only.
    pub dry_run: bool,
    /// A differing bucket holding more rows than this is compared per
    /// series range before rows are read.
    pub split_rows: u64,
}

/// Series ranges a large differing bucket is compared in.
const SERIES_RANGES: u32 = 64;

impl Default for RepairScope {
    fn default() -> Self {
        Self {
            database: None,
            shard_id: None,
            bucket_ns: strata_storage::flight::DEFAULT_DIGEST_BUCKET_NS,
            dry_run: false,
            split_rows: 10_000,
        }
    }
}

/// What the repair of one shard found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShardRepair {
    pub database: String,
    pub shard_id: u64,
    pub owners: Vec<u64>,
    /// (table, bucket) pairs compared.
    pub buckets: usize,
    /// Of which the replicas' digests differed.
    pub differing: usize,
    /// Series ranges of large differing buckets that differed (and were
    /// read), out of those compared.
    pub ranges_differing: usize,
    pub ranges_compared: usize,
    /// Rows written to each node.
    pub rows_written: BTreeMap<u64, u64>,
    /// Rows whose replicas held different values for a field.
    pub conflicts: u64,
    pub error: Option<String>,
}

/// How long one node has for one call of a repair.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The shards in scope: (database, shard), every shard with more than one
/// owner.
pub fn shards_in<'a>(
    state: &'a CatalogData,
    scope: &RepairScope,
) -> Vec<(&'a Database, &'a Shard)> {
    state
        .databases
        .values()
        .filter(|d| scope.database.as_ref().is_none_or(|n| *n == d.name))
        .flat_map(|d| {
            d.shard_groups
                .iter()
                .flat_map(move |g| g.shards.iter().map(move |s| (d, s)))
        })
        .filter(|(_, s)| scope.shard_id.is_none_or(|id| id == s.id) && s.owners.len() > 1)
        .collect()
}

/// Repairs every shard in scope, one after the other.
pub async fn repair(
    state: &CatalogData,
    nodes: &NodeClients,
    scope: &RepairScope,
) -> Vec<ShardRepair> {
    let mut out = vec![];
    for (db, shard) in shards_in(state, scope) {
        out.push(repair_shard(state, nodes, db, shard, scope).await);
    }
    out
}

/// Compares the replicas of one shard and writes each the rows it lacks.
pub async fn repair_shard(
    state: &CatalogData,
    nodes: &NodeClients,
    db: &Database,
    shard: &Shard,
    scope: &RepairScope,
) -> ShardRepair {
    let mut report = ShardRepair {
        database: db.name.clone(),
        shard_id: shard.id,
        owners: shard.owners.clone(),
        ..Default::default()
    };
    if let Err(e) = compare_and_repair(state, nodes, db, shard, scope, &mut report).await {
        report.error = Some(e);
    }
    report
}

async fn compare_and_repair(
    state: &CatalogData,
    nodes: &NodeClients,
    db: &Database,
    shard: &Shard,
    scope: &RepairScope,
    report: &mut ShardRepair,
) -> Result<(), String> {
    let mut owners = vec![];
    for id in &shard.owners {
        let node = state
            .nodes
            .get(id)
            .ok_or_else(|| format!("node {id} is not registered"))?;
        if node.state == NodeState::Down {
            return Err(format!(
                "node {id} is down; this shard is compared when it is back (or after \
                 strata admin node remove moves its replica)"
            ));
        }
        owners.push((*id, node.flight_addr.clone()));
    }
    // 1. Digests from every owner.
    let asks = owners.iter().map(|(id, addr)| async move {
        tokio::time::timeout(
            CALL_TIMEOUT,
            shard_digests(nodes, addr, &[shard.id], scope.bucket_ns),
        )
        .await
        .unwrap_or_else(|_| Err("no answer in time".into()))
        .map_err(|e| format!("node {id} at {addr}: {e}"))
        .and_then(|mut d| d.pop().ok_or_else(|| format!("node {id} sent no digest")))
    });
    let digests: Vec<ShardDigest> = futures::future::try_join_all(asks).await?;

    // 2. Buckets that differ.
    let mut buckets: BTreeMap<(String, i64), Vec<(u64, u64)>> = BTreeMap::new();
    for (i, d) in digests.iter().enumerate() {
        for t in &d.tables {
            for b in &t.buckets {
                buckets
                    .entry((t.table.clone(), b.start_ns))
                    .or_insert_with(|| vec![(0, 0); owners.len()])[i] = (b.rows, b.digest);
            }
        }
    }
    report.buckets = buckets.len();
    for ((table, start), sums) in buckets {
        if sums.iter().all(|s| *s == sums[0]) {
            continue;
        }
        report.differing += 1;
        let Some(catalog_table) = db.tables.get(&table) else {
            // Dropped meanwhile: the nodes drop its rows too.
            continue;
        };
        let end = start.saturating_add(scope.bucket_ns);
        let table_name = table.as_str();
        // A large bucket: only the series ranges that differ are read.
        let mut series = None;
        if sums.iter().any(|s| s.0 > scope.split_rows) {
            let asks = owners.iter().map(|(id, addr)| async move {
                tokio::time::timeout(
                    CALL_TIMEOUT,
                    series_ranges(nodes, addr, &db.name, table_name, shard.id, start, end),
                )
                .await
                .unwrap_or_else(|_| Err("no answer in time".into()))
                .map_err(|e| format!("node {id} at {addr}: {e}"))
            });
            let ranges: Vec<Vec<(u64, u64)>> = futures::future::try_join_all(asks).await?;
            let wanted: Vec<u32> = (0..SERIES_RANGES)
                .filter(|p| {
                    let first = ranges[0].get(*p as usize);
                    ranges.iter().any(|r| r.get(*p as usize) != first)
                })
                .collect();
            report.ranges_compared += SERIES_RANGES as usize;
            report.ranges_differing += wanted.len();
            if wanted.is_empty() {
                continue;
            }
            series = Some(serde_json::json!({
                "database": db.name, "parts": SERIES_RANGES, "wanted": wanted,
            }));
        }
        let series = &series;
        let reads = owners.iter().map(|(id, addr)| async move {
            tokio::time::timeout(
                CALL_TIMEOUT,
                shard_rows(
                    nodes,
                    addr,
                    table_name,
                    shard.id,
                    start,
                    end,
                    series.clone(),
                ),
            )
            .await
            .unwrap_or_else(|_| Err("no answer in time".into()))
            .map_err(|e| format!("node {id} at {addr}: {e}"))
        });
        let replicas: Vec<Vec<RecordBatch>> = futures::future::try_join_all(reads).await?;
        let held: Vec<u64> = sums.iter().map(|s| s.0).collect();
        let ids: Vec<u64> = owners.iter().map(|(id, _)| *id).collect();
        let settled = settle(catalog_table, &replicas, &held, &ids)?;
        report.conflicts += settled.conflicts;
        for (i, (id, addr)) in owners.iter().enumerate() {
            let Some(batch) = &settled.missing[i] else {
                continue;
            };
            *report.rows_written.entry(*id).or_default() += batch.num_rows() as u64;
            if scope.dry_run {
                continue;
            }
            tokio::time::timeout(
                CALL_TIMEOUT,
                put_shard(
                    nodes,
                    addr,
                    state.version,
                    &db.name,
                    &table,
                    shard.id,
                    vec![batch.clone()],
                ),
            )
            .await
            .map_err(|_| format!("node {id} at {addr}: no answer in time"))?
            .map_err(|e| format!("node {id} at {addr}: {e}"))?;
        }
    }
    if !scope.dry_run {
        let at_ms = strata_catalog::liveness::now_ms();
        for (id, addr) in &owners {
            if let Err(e) = mark_repaired(nodes, addr, shard.id, at_ms).await {
                tracing::warn!(node = id, error = %e, "cannot record a repair time");
            }
        }
    }
    Ok(())
}

async fn mark_repaired(
    nodes: &NodeClients,
    addr: &str,
    shard_id: u64,
    at_ms: i64,
) -> Result<(), String> {
    let mut client = nodes.flight(addr).map_err(|e| e.message().to_string())?;
    let body = serde_json::json!({ "shard_ids": [shard_id], "at_ms": at_ms });
    let action = arrow_flight::Action::new(
        strata_proto::REPAIRED_ACTION,
        bytes::Bytes::from(body.to_string()),
    );
    let _: Vec<bytes::Bytes> = client
        .do_action(action)
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Row count and digest of each series range of one table of one shard in
/// `[start, end)` held by the node.
async fn series_ranges(
    nodes: &NodeClients,
    addr: &str,
    database: &str,
    table: &str,
    shard_id: u64,
    start_ns: i64,
    end_ns: i64,
) -> Result<Vec<(u64, u64)>, String> {
    let body = serde_json::json!({
        "database": database, "table": table, "shard_id": shard_id,
        "start_ns": start_ns, "end_ns": end_ns, "parts": SERIES_RANGES,
    });
    json_action(
        nodes,
        addr,
        strata_proto::SHARD_PARTS_ACTION,
        body,
        "series digests",
    )
    .await
}

/// The rows of one table of one shard in `[start, end)` held by the node
/// (only those of some series ranges when `series` names them).
pub async fn shard_rows(
    nodes: &NodeClients,
    addr: &str,
    table: &str,
    shard_id: u64,
    start_ns: i64,
    end_ns: i64,
    series: Option<serde_json::Value>,
) -> Result<Vec<RecordBatch>, String> {
    let mut client = nodes.flight(addr).map_err(|e| e.message().to_string())?;
    let body = serde_json::json!({
        "table": table, "shard_id": shard_id, "start_ns": start_ns, "end_ns": end_ns,
        "series": series,
    });
    let action = arrow_flight::Action::new(
        strata_proto::SHARD_ROWS_ACTION,
        bytes::Bytes::from(body.to_string()),
    );
    let answers: Vec<bytes::Bytes> = client
        .do_action(action)
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let mut batches = vec![];
    for ipc in answers {
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .map_err(|e| format!("unreadable rows: {e}"))?;
        for b in reader {
            batches.push(b.map_err(|e| format!("unreadable rows: {e}"))?);
        }
    }
    Ok(batches)
}

/// A series and a time.
type Key = (Vec<(String, String)>, i64);
/// A row's non-null fields.
type Fields = BTreeMap<String, ScalarValue>;

struct Settled {
    /// Per replica, the rows to write to it (none when it holds them all).
    missing: Vec<Option<RecordBatch>>,
    conflicts: u64,
}

/// Settles the rows of one bucket from every replica's copy; `held` is
/// the rows each replica holds of the bucket, `ids` their node ids.
fn settle(
    table: &Table,
    replicas: &[Vec<RecordBatch>],
    held: &[u64],
    ids: &[u64],
) -> Result<Settled, String> {
    let tags: BTreeSet<&str> = table.tag_names().collect();
    let copies: Vec<HashMap<Key, Fields>> = replicas
        .iter()
        .map(|batches| rows_of(batches, &tags))
        .collect::<Result<_, _>>()?;
    let keys: BTreeSet<&Key> = copies.iter().flat_map(|c| c.keys()).collect();
    // On a tie, the replica holding the most rows, then the lowest id.
    let rank = |i: usize| (std::cmp::Reverse(held[i]), ids[i]);
    let mut conflicts = 0;
    let mut missing: Vec<Vec<(&Key, Fields)>> = vec![vec![]; copies.len()];
    for key in keys {
        let names: BTreeSet<&String> = copies
            .iter()
            .filter_map(|c| c.get(key))
            .flat_map(|f| f.keys())
            .collect();
        let mut truth = Fields::new();
        let mut conflict = false;
        for name in names {
            // (value, holders) for each distinct value.
            let mut votes: Vec<(&ScalarValue, Vec<usize>)> = vec![];
            for (i, c) in copies.iter().enumerate() {
                if let Some(v) = c.get(key).and_then(|f| f.get(name)) {
                    match votes.iter_mut().find(|(x, _)| *x == v) {
                        Some((_, holders)) => holders.push(i),
                        None => votes.push((v, vec![i])),
                    }
                }
            }
            conflict |= votes.len() > 1;
            let best = votes
                .into_iter()
                .max_by(|a, b| {
                    a.1.len().cmp(&b.1.len()).then_with(|| {
                        let best_a = a.1.iter().map(|i| rank(*i)).min();
                        let best_b = b.1.iter().map(|i| rank(*i)).min();
                        best_b.cmp(&best_a)
                    })
                })
                .expect("a field some replica holds");
            truth.insert(name.clone(), best.0.clone());
        }
        if truth.is_empty() {
            // A row with no field is no row.
            continue;
        }
        conflicts += conflict as u64;
        for (i, c) in copies.iter().enumerate() {
            if c.get(key) != Some(&truth) {
                missing[i].push((key, truth.clone()));
            }
        }
    }
    let schema = table.arrow_schema();
    let missing = missing
        .into_iter()
        .map(|rows| {
            if rows.is_empty() {
                return Ok(None);
            }
            let columns = schema
                .fields()
                .iter()
                .map(|f| column_of(f.name(), f.data_type(), &tags, &rows))
                .collect::<Result<Vec<ArrayRef>, String>>()?;
            RecordBatch::try_new(schema.clone(), columns)
                .map(Some)
                .map_err(|e| e.to_string())
        })
        .collect::<Result<_, String>>()?;
    Ok(Settled { missing, conflicts })
}

/// Every row of the batches by series and time, with its non-null fields.
fn rows_of(batches: &[RecordBatch], tags: &BTreeSet<&str>) -> Result<HashMap<Key, Fields>, String> {
    let mut out = HashMap::new();
    for b in batches {
        let schema = b.schema();
        let time = b
            .column_by_name(TIME_COLUMN)
            .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
            .ok_or("rows without a time column")?;
        let mut tag_columns = vec![];
        let mut field_columns = vec![];
        for (f, c) in schema.fields().iter().zip(b.columns()) {
            if f.name() == TIME_COLUMN {
                continue;
            }
            if tags.contains(f.name().as_str()) {
                let c = arrow::compute::cast(c, &DataType::Utf8).map_err(|e| e.to_string())?;
                tag_columns.push((f.name().clone(), c));
            } else {
                field_columns.push((f.name().clone(), c.clone()));
            }
        }
        for row in 0..b.num_rows() {
            let series = tag_columns
                .iter()
                .filter(|(_, c)| c.is_valid(row))
                .map(|(n, c)| (n.clone(), c.as_string::<i32>().value(row).to_string()))
                .collect();
            let mut fields = Fields::new();
            for (n, c) in &field_columns {
                if c.is_valid(row) {
                    let v = ScalarValue::try_from_array(c, row).map_err(|e| e.to_string())?;
                    fields.insert(n.clone(), v);
                }
            }
            out.insert((series, time.value(row)), fields);
        }
    }
    Ok(out)
}

/// One column of the rows to write, of the catalog's type.
fn column_of(
    name: &str,
    data_type: &DataType,
    tags: &BTreeSet<&str>,
    rows: &[(&Key, Fields)],
) -> Result<ArrayRef, String> {
    let values: Vec<ScalarValue> = if name == TIME_COLUMN {
        rows.iter()
            .map(|((_, t), _)| ScalarValue::TimestampNanosecond(Some(*t), None))
            .collect()
    } else if tags.contains(name) {
        rows.iter()
            .map(|((series, _), _)| {
                ScalarValue::Utf8(
                    series
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, v)| v.clone()),
                )
            })
            .collect()
    } else {
        let null = ScalarValue::try_from(data_type).map_err(|e| e.to_string())?;
        rows.iter()
            .map(|(_, fields)| fields.get(name).cloned().unwrap_or_else(|| null.clone()))
            .collect()
    };
    let array = ScalarValue::iter_to_array(values).map_err(|e| e.to_string())?;
    if array.data_type() == data_type {
        return Ok(array);
    }
    arrow::compute::cast(&array, data_type).map_err(|e| e.to_string())
}

/// Background anti-entropy: every `interval`, each shard in turn, pausing
/// between shards so that repair keeps to `share` of the time; shards with
/// an owner down or writes queued here for one wait for the next round.
pub async fn run_background(
    catalog: strata_catalog::CatalogClient,
    nodes: NodeClients,
    handoff: Arc<crate::handoff::Handoff>,
    interval: Duration,
    share: f64,
) {
    let share = share.clamp(0.01, 1.0);
    loop {
        tokio::time::sleep(interval).await;
        let state = catalog.state();
        let scope = RepairScope::default();
        let (mut compared, mut repaired, mut written, mut skipped) = (0, 0, 0u64, 0);
        for (db, shard) in shards_in(&state, &scope) {
            // An owner down, or behind on writes queued here: next round.
            let down = |o: &u64| {
                state
                    .nodes
                    .get(o)
                    .is_none_or(|n| n.state == NodeState::Down)
            };
            if shard.owners.iter().any(|o| handoff.pending(*o) || down(o)) {
                skipped += 1;
                continue;
            }
            let started = tokio::time::Instant::now();
            let r = repair_shard(&state, &nodes, db, shard, &scope).await;
            compared += 1;
            let rows: u64 = r.rows_written.values().sum();
            if rows > 0 {
                repaired += 1;
                written += rows;
                tracing::info!(database = %r.database, shard = r.shard_id, differing = r.differing, rows, conflicts = r.conflicts, "anti-entropy repaired a shard");
            }
            if let Some(e) = &r.error {
                tracing::warn!(database = %r.database, shard = r.shard_id, error = %e, "anti-entropy could not compare a shard");
            }
            let spent = started.elapsed();
            tokio::time::sleep(spent.mul_f64((1.0 - share) / share)).await;
        }
        tracing::debug!(
            compared,
            repaired,
            rows = written,
            skipped,
            "anti-entropy round done"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray, TimestampNanosecondArray};
    use arrow::datatypes::{Field, Schema, TimeUnit};
    use strata_catalog::model::{Column, ColumnKind, FieldType};

    fn table() -> Table {
        let mut t = Table::new("cpu");
        t.columns.push(Column {
            name: "host".into(),
            kind: ColumnKind::Tag,
        });
        t.columns.push(Column {
            name: "usage".into(),
            kind: ColumnKind::Field(FieldType::Float),
        });
        t
    }

    fn rows(points: &[(&str, i64, Option<f64>)]) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("host", DataType::Utf8, true),
            Field::new(
                "time",
                DataType::Timestamp(TimeUnit::Nanosecond, None),
                false,
            ),
            Field::new("usage", DataType::Float64, true),
        ]));
        vec![RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(points.iter().map(|p| p.0))),
                Arc::new(TimestampNanosecondArray::from_iter_values(
                    points.iter().map(|p| p.1),
                )),
                Arc::new(Float64Array::from_iter(points.iter().map(|p| p.2))),
            ],
        )
        .unwrap()]
    }

    fn written(b: &Option<RecordBatch>) -> Vec<String> {
        let Some(b) = b else { return vec![] };
        let hosts = arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
        (0..b.num_rows())
            .map(|r| {
                format!(
                    "{}@{}={}",
                    hosts.as_string::<i32>().value(r),
                    b.column(0)
                        .as_primitive::<TimestampNanosecondType>()
                        .value(r),
                    b.column(2)
                        .as_primitive::<arrow::datatypes::Float64Type>()
                        .value(r)
                )
            })
            .collect()
    }

    #[test]
    fn missing_rows_are_copied_and_the_majority_value_wins() {
        let a = rows(&[
            ("a", 1, Some(1.0)),
            ("a", 2, Some(2.0)),
            ("b", 1, Some(9.0)),
        ]);
        let b = rows(&[("a", 1, Some(1.0)), ("b", 1, Some(9.0))]);
        let c = rows(&[
            ("a", 1, Some(1.0)),
            ("a", 2, Some(2.0)),
            ("b", 1, Some(5.0)),
        ]);
        let s = settle(&table(), &[a, b, c], &[3, 2, 3], &[1, 2, 3]).unwrap();
        // b lacks a@2; c holds b@1 as 5 where the others hold 9.
        assert_eq!(written(&s.missing[0]), Vec::<String>::new());
        assert_eq!(written(&s.missing[1]), vec!["a@2=2"]);
        assert_eq!(written(&s.missing[2]), vec!["b@1=9"]);
        assert_eq!(s.conflicts, 1);
    }

    #[test]
    fn a_tie_goes_to_the_replica_holding_more_rows_and_nulls_never_win() {
        let a = rows(&[("a", 1, Some(1.0))]);
        let b = rows(&[("a", 1, Some(7.0)), ("a", 2, None)]);
        let s = settle(&table(), &[a, b], &[1, 2], &[1, 2]).unwrap();
        assert_eq!(written(&s.missing[0]), vec!["a@1=7"]);
        assert_eq!(written(&s.missing[1]), Vec::<String>::new());
        // a@2 holds no field on b: a row with only nulls is no row, so a
        // is not given it.
        assert_eq!(s.conflicts, 1);
    }
}
