//! One table of 1,000,000 distinct series on one engine: writable within
//! the default memory budget and series limit, readable by series (from
//! memory and from a file) and by the last-value cache, and counted again
//! after a restart. Timing is printed, never asserted.

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Float64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::logical_expr::{col, lit, Expr};
use datafusion::prelude::SessionContext;
use datafusion_proto::bytes::Serializeable;
use strata_proto::storage::v1::ScanTicket;
use strata_storage::engine::{Engine, EngineConfig};
use strata_storage::flight::schema_to_ipc;
use strata_storage::scan::execute_ticket;

const SERIES: usize = 1_000_000;
const BATCH: usize = 100_000;

fn schema() -> SchemaRef {
    let tag = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
    Arc::new(Schema::new(vec![
        Field::new("id", tag, true),
        Field::new("v", DataType::Float64, true),
        Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            false,
        ),
    ]))
}

/// Series `range`, one point each at `time`.
fn batch(range: std::ops::Range<usize>, time: i64) -> RecordBatch {
    let ids: StringArray = range.clone().map(|i| Some(format!("s{i}"))).collect();
    let ids = cast(&ids, schema().field(0).data_type()).unwrap();
    RecordBatch::try_new(
        schema(),
        vec![
            ids,
            Arc::new(range.clone().map(|i| i as f64).collect::<Float64Array>()),
            Arc::new(TimestampNanosecondArray::from_iter_values(
                range.map(|_| time),
            )),
        ],
    )
    .unwrap()
}

async fn rows(engine: &Engine, filter: Option<Expr>, latest: bool) -> usize {
    let ticket = ScanTicket {
        database: "db".into(),
        table: "t".into(),
        shard_ids: vec![1],
        table_schema_ipc: schema_to_ipc(&schema()).unwrap(),
        projection: None,
        filters: filter
            .iter()
            .map(|f| f.to_bytes().unwrap().to_vec())
            .collect(),
        limit: None,
        query_id: "million".into(),
        latest_per_series: latest,
    };
    let ctx = SessionContext::new();
    let stream = execute_ticket(&ctx, engine, &ticket).await.unwrap();
    let batches = datafusion::physical_plan::common::collect(stream)
        .await
        .unwrap();
    batches.iter().map(|b| b.num_rows()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_series_are_writable_and_queryable() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
    let started = Instant::now();
    for first in (0..SERIES).step_by(BATCH) {
        engine
            .write("db", "t", 1, batch(first..first + BATCH, 1))
            .await
            .unwrap();
    }
    println!("wrote {SERIES} series in {:?}", started.elapsed());
    assert_eq!(engine.series_count("db"), SERIES);

    let started = Instant::now();
    let one = Some(col("id").eq(lit("s777777")));
    assert_eq!(rows(&engine, one.clone(), false).await, 1);
    println!(
        "first lookup (settles the memtable) {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    assert_eq!(rows(&engine, one.clone(), false).await, 1);
    println!("indexed lookup {:?}", started.elapsed());

    // A newer point for some series; the newest row of each series.
    engine.write("db", "t", 1, batch(0..1000, 2)).await.unwrap();
    let started = Instant::now();
    assert_eq!(rows(&engine, None, true).await, SERIES);
    println!("newest row of every series {:?}", started.elapsed());

    engine.flush().await.unwrap();
    assert_eq!(rows(&engine, one.clone(), false).await, 1);
    drop(engine);

    let started = Instant::now();
    let engine = Engine::open(EngineConfig::new(dir.path())).unwrap();
    println!(
        "reopened (series counted from the file) in {:?}",
        started.elapsed()
    );
    assert_eq!(engine.series_count("db"), SERIES);
    // The series limit (1,000,000 by default) is reached: a new series is
    // refused, a known one is not.
    let err = engine
        .write("db", "t", 1, batch(SERIES..SERIES + 1, 3))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("limit of 1000000 series"), "{err}");
    engine.write("db", "t", 1, batch(5..6, 3)).await.unwrap();
    // Its points at times 1, 2 and 3.
    assert_eq!(rows(&engine, Some(col("id").eq(lit("s5"))), false).await, 3);
}
