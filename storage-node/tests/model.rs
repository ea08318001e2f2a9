//! Randomized writes (duplicates, out-of-order rows, partial fields) and
//! deletes (time ranges, host conditions) with flushes, compactions and
//! reopenings at random points; every scan, with
//! random predicates and projections, must equal a simple in-memory model
//! of InfluxDB semantics (a point is (host, time); fields merge, newest
//! non-null value wins).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    Array, Float64Array, RecordBatch, StringDictionaryBuilder, TimestampNanosecondArray,
};
use arrow::datatypes::{DataType, Field, Int32Type, Schema, SchemaRef, TimeUnit};
use arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::logical_expr::{col, lit, Expr};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::Serializeable;
use strata_proto::storage::v1::{Projection, ScanTicket};
use strata_storage::delete::{DeletePredicate, TagCondition};
use strata_storage::engine::{Engine, EngineConfig};
use strata_storage::flight::schema_to_ipc;
use strata_storage::scan::execute_ticket;

/// A small deterministic generator (64-bit LCG), so failures replay.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const HOSTS: [&str; 4] = ["h0", "h1", "h2", "h3"];

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new(
            "host",
            DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8)),
            true,
        ),
        Field::new("a", DataType::Float64, true),
        Field::new("b", DataType::Float64, true),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ),
    ]))
}

type Point = (Option<f64>, Option<f64>);
type Model = BTreeMap<(String, i64), Point>;
/// The model's version of a filter.
type Keep = Box<dyn Fn(&(String, i64), &Point) -> bool>;

/// A batch of random rows. Some batches carry only one of the two fields
/// (the column is absent, as the write path sends sparse rows), so that
/// flushes and merges meet batches of differing columns.
fn random_batch(rng: &mut Rng, model: &mut Model) -> RecordBatch {
    let n = 1 + rng.below(20) as usize;
    // 0: only `a`, 1: only `b`, otherwise both.
    let shape = rng.below(4);
    let mut host = StringDictionaryBuilder::<Int32Type>::new();
    let (mut a, mut b, mut t) = (vec![], vec![], vec![]);
    for _ in 0..n {
        let h = HOSTS[rng.below(HOSTS.len() as u64) as usize];
        let time = rng.below(50) as i64; // few times: many duplicates, any order
        let va = (!rng.chance(30)).then(|| rng.below(100) as f64);
        let vb = (!rng.chance(50)).then(|| rng.below(100) as f64);
        let (va, vb) = match shape {
            0 => (va.or(Some(1.0)), None),
            1 => (None, vb.or(Some(2.0))),
            _ if va.is_none() && vb.is_none() => (Some(0.0), None),
            _ => (va, vb),
        };
        host.append_value(h);
        a.push(va);
        b.push(vb);
        t.push(time);
        let e = model.entry((h.to_string(), time)).or_insert((None, None));
        if va.is_some() {
            e.0 = va;
        }
        if vb.is_some() {
            e.1 = vb;
        }
    }
    let batch = RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(host.finish()),
            Arc::new(Float64Array::from(a)),
            Arc::new(Float64Array::from(b)),
            Arc::new(TimestampNanosecondArray::from(t)),
        ],
    )
    .unwrap();
    match shape {
        0 => batch.project(&[0, 1, 3]).unwrap(),
        1 => batch.project(&[0, 2, 3]).unwrap(),
        _ => batch,
    }
}

/// A random delete, applied to the model: a time range and maybe a host
/// condition (`=` or `!=`).
fn random_delete(rng: &mut Rng, model: &mut Model) -> DeletePredicate {
    let min_time = rng.below(50) as i64;
    let max_time = min_time + rng.below(15) as i64;
    let tags = match rng.below(3) {
        0 => vec![],
        n => vec![TagCondition {
            tag: "host".into(),
            values: vec![HOSTS[rng.below(4) as usize].to_string()],
            negated: n == 2,
        }],
    };
    let p = DeletePredicate {
        min_time,
        max_time,
        tags,
    };
    model.retain(|(host, time), _| {
        let in_range = (min_time..=max_time).contains(time);
        let tag_ok = p.tags.iter().all(|c| c.values.contains(host) != c.negated);
        !(in_range && tag_ok)
    });
    p
}

/// A random predicate with the model's version of it.
fn random_filter(rng: &mut Rng) -> (Option<Expr>, Keep) {
    let ts = |v: i64| {
        lit(datafusion::common::ScalarValue::TimestampNanosecond(
            Some(v),
            None,
        ))
    };
    match rng.below(7) {
        // Series lookups in settled memtables: tags pinned by IN or OR,
        // with a time range.
        5 => {
            let (a, b) = (HOSTS[rng.below(4) as usize], HOSTS[rng.below(4) as usize]);
            let lo = rng.below(50) as i64;
            let hi = lo + rng.below(20) as i64;
            (
                Some(
                    col("host")
                        .in_list(vec![lit(a), lit(b)], false)
                        .and(col("time").gt(ts(lo)))
                        .and(col("time").lt_eq(ts(hi))),
                ),
                Box::new(move |k, _| (k.0 == a || k.0 == b) && lo < k.1 && k.1 <= hi),
            )
        }
        6 => {
            let (a, b) = (HOSTS[rng.below(4) as usize], HOSTS[rng.below(4) as usize]);
            let t = rng.below(50) as i64;
            (
                Some(
                    col("host")
                        .eq(lit(a))
                        .or(col("host").eq(lit(b)))
                        .and(col("time").eq(ts(t))),
                ),
                Box::new(move |k, _| (k.0 == a || k.0 == b) && k.1 == t),
            )
        }
        0 => (None, Box::new(|_, _| true)),
        1 => {
            let h = HOSTS[rng.below(4) as usize];
            (Some(col("host").eq(lit(h))), Box::new(move |k, _| k.0 == h))
        }
        2 => {
            let lo = rng.below(50) as i64;
            let hi = lo + rng.below(20) as i64;
            (
                Some(col("time").gt_eq(ts(lo)).and(col("time").lt(ts(hi)))),
                Box::new(move |k, _| lo <= k.1 && k.1 < hi),
            )
        }
        3 => {
            let v = rng.below(100) as f64;
            (
                Some(col("a").gt(lit(v))),
                Box::new(move |_, p| p.0.is_some_and(|a| a > v)),
            )
        }
        _ => {
            let v = rng.below(100) as f64;
            (
                Some(col("b").lt_eq(lit(v))),
                Box::new(move |_, p| p.1.is_some_and(|b| b <= v)),
            )
        }
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map_or("NULL".to_string(), |v| format!("{v:?}"))
}

async fn scan(engine: &Engine, filter: Option<Expr>, columns: &[&str]) -> Vec<String> {
    read(engine, filter, columns, false).await
}

/// The newest row of each series, through the last-value cache.
async fn latest(engine: &Engine, filter: Option<Expr>) -> Vec<String> {
    read(engine, filter, &["host", "a", "b", "time"], true).await
}

async fn read(
    engine: &Engine,
    filter: Option<Expr>,
    columns: &[&str],
    latest_per_series: bool,
) -> Vec<String> {
    let ticket = ScanTicket {
        database: "db".into(),
        table: "t".into(),
        shard_ids: vec![1],
        table_schema_ipc: schema_to_ipc(&schema()).unwrap(),
        projection: Some(Projection {
            columns: columns.iter().map(|c| c.to_string()).collect(),
        }),
        filters: filter
            .clone()
            .iter()
            .map(|f| f.to_bytes().unwrap().to_vec())
            .collect(),
        limit: None,
        query_id: "model".into(),
        latest_per_series,
    };
    let ctx = SessionContext::new();
    let stream = execute_ticket(&ctx, engine, &ticket).await.unwrap();
    let batches = datafusion::physical_plan::common::collect(stream)
        .await
        .unwrap();
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows = vec![];
    for b in &batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            let cells: Vec<String> = b
                .columns()
                .iter()
                .zip(&fmts)
                .map(|(c, f)| match c.as_any().downcast_ref::<Float64Array>() {
                    Some(a) => fmt(a.is_valid(r).then(|| a.value(r))),
                    None => match c.as_any().downcast_ref::<TimestampNanosecondArray>() {
                        Some(t) => t.value(r).to_string(),
                        None => f.value(r).to_string(),
                    },
                })
                .collect();
            rows.push(cells.join("|"));
        }
    }
    rows.sort();
    rows
}

fn expected(
    model: &Model,
    keep: &dyn Fn(&(String, i64), &Point) -> bool,
    columns: &[&str],
) -> Vec<String> {
    let mut rows: Vec<String> = model
        .iter()
        .filter(|(k, p)| keep(k, p))
        .map(|(k, p)| {
            columns
                .iter()
                .map(|c| match *c {
                    "host" => k.0.clone(),
                    "time" => k.1.to_string(),
                    "a" => fmt(p.0),
                    _ => fmt(p.1),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    rows.sort();
    rows
}

/// The model's newest point of each host that `keep` keeps.
fn expected_latest(model: &Model, keep: &dyn Fn(&(String, i64), &Point) -> bool) -> Vec<String> {
    let mut newest: BTreeMap<&String, (&(String, i64), &Point)> = BTreeMap::new();
    for (k, p) in model {
        newest.insert(&k.0, (k, p));
    }
    let latest: Model = newest
        .into_values()
        .filter(|(k, p)| keep(k, p))
        .map(|(k, p)| (k.clone(), *p))
        .collect();
    expected(&latest, &|_, _| true, &["host", "a", "b", "time"])
}

/// Filters the last-value cache answers as a full scan would: on tags and
/// lower bounds of time.
fn random_latest_filter(rng: &mut Rng) -> (Option<Expr>, Keep) {
    let ts = |v: i64| {
        lit(datafusion::common::ScalarValue::TimestampNanosecond(
            Some(v),
            None,
        ))
    };
    match rng.below(3) {
        0 => (None, Box::new(|_, _| true)),
        1 => {
            let h = HOSTS[rng.below(4) as usize];
            (Some(col("host").eq(lit(h))), Box::new(move |k, _| k.0 == h))
        }
        _ => {
            let lo = rng.below(50) as i64;
            (
                Some(col("time").gt_eq(ts(lo))),
                Box::new(move |k, _| lo <= k.1),
            )
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_match_the_model_through_flushes_compactions_and_restarts() {
    for seed in 1..=12u64 {
        let mut rng = Rng(seed);
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
        let mut model = Model::new();
        for step in 0..40 {
            let batch = random_batch(&mut rng, &mut model);
            engine.write("db", "t", 1, batch).await.unwrap();
            if rng.chance(15) {
                let delete = random_delete(&mut rng, &mut model);
                engine.delete("db", "t", 1, delete).await.unwrap();
            }
            match rng.below(10) {
                0 | 1 => engine.flush().await.unwrap(),
                2 => {
                    engine.compact(2).await.unwrap();
                }
                3 if rng.chance(30) => {
                    drop(engine);
                    engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
                }
                _ => {}
            }
            for _ in 0..2 {
                let (filter, keep) = random_filter(&mut rng);
                let columns: &[&str] = match rng.below(3) {
                    0 => &["host", "a", "b", "time"],
                    1 => &["host", "a"],
                    _ => &["b", "time"],
                };
                let got = scan(&engine, filter.clone(), columns).await;
                let want = expected(&model, keep.as_ref(), columns);
                assert_eq!(
                    got, want,
                    "seed {seed} step {step} filter {filter:?} columns {columns:?}"
                );
            }
            // The newest row per series, from the cache (built by the
            // first such read, then kept up by writes and dropped by
            // deletes).
            if rng.chance(60) {
                let (filter, keep) = random_latest_filter(&mut rng);
                let got = latest(&engine, filter.clone()).await;
                let want = expected_latest(&model, keep.as_ref());
                assert_eq!(
                    got, want,
                    "latest: seed {seed} step {step} filter {filter:?}"
                );
            }
        }
    }
}
