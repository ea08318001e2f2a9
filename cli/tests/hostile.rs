//! Hostile clients: each input that once crashed, wedged or blew up a
//! node, sent as a real request to a real cluster. Every case checks the
//! exact answer, then that the cluster still takes a normal write and
//! query and that acknowledged data is intact.

use std::io::{Read, Write};
use std::sync::Arc;

use arrow::array::{Float64Array, RecordBatch, StringArray, TimestampNanosecondArray};
use arrow::datatypes::{Field, Schema};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor, Ticket};
use futures::TryStreamExt;
use prost::Message;
use strata_catalog::CatalogClient;

use crate::support::{error_lines, post, rows, sql_status, walk, TestCluster};

/// The cluster still writes and answers, and `db` holds `rows` rows in `m`.
async fn still_serves(c: &TestCluster, db: &str, rows: usize) {
    let (status, body) = c.write("alive", "s", "ok,t=a v=1 1\n").await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(c.query("alive", "SELECT count(*) FROM ok").await, vec!["1"]);
    if rows > 0 {
        assert_eq!(
            c.query(db, "SELECT count(*) FROM m").await,
            vec![rows.to_string()]
        );
    }
}

fn chain(op: &str, term: impl Fn(usize) -> String, n: usize) -> String {
    (0..n).map(term).collect::<Vec<_>>().join(op)
}

/// Long left-deep chains (which pass the parser's nesting limit) get an
/// answer or a clear error over Flight SQL and HTTP; deep nesting too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_expressions_get_an_answer_or_a_clear_error() {
    let c = TestCluster::start().await;
    let (status, _) = c
        .write("deep", "s", "m,host=a v=1 1\nm,host=b v=2 2\n")
        .await;
    assert_eq!(status, 204);

    let sum = format!("SELECT {}", chain("+", |_| "1".into(), 500));
    assert_eq!(c.query("deep", &sum).await, vec!["500"]);
    let ors = format!(
        "SELECT count(*) FROM m WHERE {}",
        chain(" OR ", |i| format!("host='h{i}'"), 300)
    );
    assert_eq!(c.query("deep", &ors).await, vec!["0"]);

    let mut flight = c.sql(Some("deep")).await;
    for q in [
        format!("SELECT {}", chain("+", |_| "1".into(), 10_000)),
        format!(
            "SELECT count(*) FROM m WHERE {}",
            chain(" OR ", |i| format!("host='h{i}'"), 10_000)
        ),
    ] {
        let e = flight.query(&q).await.unwrap_err().to_string();
        assert!(e.contains("operators"), "{e}");
        let (status, body) = sql_status(&c, Some("deep"), &q).await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("at most 4096"), "{body}");
    }
    let nested = format!("SELECT {}1{}", "(".repeat(2_000), ")".repeat(2_000));
    let (status, body) = sql_status(&c, None, &nested).await;
    assert_eq!(status, 400, "{body}");
    still_serves(&c, "deep", 2).await;
}

/// After one line gives a table 5,000 fields, a write of many one-field
/// lines costs what it carries (it once allocated rows × width).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrow_writes_to_a_wide_table_and_its_sparse_flush() {
    let mut c = TestCluster::start().await;
    let wide: Vec<String> = (0..5_000).map(|i| format!("f{i}={i}")).collect();
    let (status, body) = c
        .write("wide", "s", &format!("m,h=a {} 0\n", wide.join(",")))
        .await;
    assert_eq!(status, 204, "{body}");
    let narrow: String = (1..=100_000)
        .map(|i| format!("m,h=a f1={i} {i}\n"))
        .collect();
    let (status, body) = c.write("wide", "s", &narrow).await;
    assert_eq!(status, 204, "{body}");
    // Sparse rows: each a field of its own among the 5,000.
    let sparse: String = (0..20_000)
        .map(|i| format!("m,h=b f{}={i} {}\n", i % 5_000, 200_000 + i))
        .collect();
    let (status, body) = c.write("wide", "s", &sparse).await;
    assert_eq!(status, 204, "{body}");
    for node in &c.cluster().storage {
        node.engine().flush().await.expect("the wide table flushes");
    }
    c.restart().await;
    let total = 1 + 100_000 + 20_000;
    assert_eq!(
        c.query("wide", "SELECT count(*) FROM m").await,
        vec![total.to_string()]
    );
    assert_eq!(
        c.query("wide", "SELECT sum(f1), count(f4999) FROM m WHERE h = 'b'")
            .await,
        vec![format!("{}.0|4", 1 + 5_001 + 10_001 + 15_001)]
    );
    still_serves(&c, "wide", total).await;
}

/// Names past 255 bytes are refused per line; the rest of the request is
/// written, every node keeps flushing, and a strict restart replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_names_are_refused_per_line_and_never_wedge_a_node() {
    let mut c = TestCluster::start().await;
    let ok_name = "n".repeat(250);
    let body = format!(
        "{ok_name} v=1 1\n{} v=1 2\nm,{}=x v=1 3\nm {}=1 4\n{} v=1 5\nm v=1 6\n",
        "n".repeat(256),
        "k".repeat(300),
        "f".repeat(300),
        "x".repeat(64 * 1024),
    );
    let (status, resp) = c.write("names", "s", &body).await;
    assert_eq!(status, 400, "{resp}");
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["lines_written"], 2);
    assert_eq!(error_lines(&v), vec![2, 3, 4, 5]);
    for node in &c.cluster().storage {
        node.engine().flush().await.expect("flushes go on");
    }
    c.restart().await;
    assert_eq!(
        c.query("names", &format!("SELECT v FROM \"{ok_name}\""))
            .await,
        vec!["1.0"]
    );
    still_serves(&c, "names", 1).await;
}

/// A body of thousands of bad lines is answered with the count and the
/// first 1,000 errors, not with all of them; the good lines are written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_bad_lines_get_a_bounded_answer() {
    let c = TestCluster::start().await;
    let mut body: String = (0..5_000).map(|i| format!("bad line {i}\n")).collect();
    body.push_str("m v=1 1\n");
    let (status, resp) = c.write("bad", "s", &body).await;
    assert_eq!(status, 400);
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["lines_rejected"], 5_000);
    assert_eq!(v["lines_written"], 1);
    assert_eq!(v["line_errors"].as_array().unwrap().len(), 1_000);
    assert_eq!(v["line_errors"][999]["line"], 1_000);
    assert_eq!(c.query("bad", "SELECT v FROM m").await, vec!["1.0"]);
}

/// `v=1,v="s"` is an error for its line; the same type twice keeps the
/// later value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_repeated_with_another_type_is_refused() {
    let c = TestCluster::start().await;
    let (status, resp) = c.write("rep", "s", "m v=1,v=\"s\" 1\nm v=1,v=2 2\n").await;
    assert_eq!(status, 400, "{resp}");
    assert!(
        resp.contains("written twice with different types"),
        "{resp}"
    );
    assert_eq!(c.query("rep", "SELECT v FROM m").await, vec!["2.0"]);
}

fn batch(fields: Vec<(&str, arrow::array::ArrayRef)>) -> RecordBatch {
    let schema = Schema::new(
        fields
            .iter()
            .map(|(n, a)| Field::new(*n, a.data_type().clone(), *n != "time"))
            .collect::<Vec<_>>(),
    );
    RecordBatch::try_new(
        Arc::new(schema),
        fields.into_iter().map(|(_, a)| a).collect(),
    )
    .unwrap()
}

async fn put(
    client: &mut FlightClient,
    path: [&str; 3],
    b: RecordBatch,
) -> Result<(), tonic::Status> {
    let desc = FlightDescriptor::new_path(path.iter().map(|s| s.to_string()).collect());
    let data = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(desc))
        .build(futures::stream::iter([Ok(b)]));
    drained(client.do_put(data).await).await
}

/// Reads a Flight answer to its end; the status of its failure, if any.
async fn drained<S, T>(
    answer: Result<S, arrow_flight::error::FlightError>,
) -> Result<(), tonic::Status>
where
    S: futures::Stream<Item = Result<T, arrow_flight::error::FlightError>>,
{
    match answer {
        Ok(s) => s
            .try_collect::<Vec<_>>()
            .await
            .map(|_| ())
            .map_err(status_of),
        Err(e) => Err(status_of(e)),
    }
}

fn status_of(e: arrow_flight::error::FlightError) -> tonic::Status {
    match e {
        arrow_flight::error::FlightError::Tonic(s) => *s,
        other => tonic::Status::unknown(other.to_string()),
    }
}

/// Batches sent straight to a storage node are checked against the
/// catalog before they are logged; requests for shards the node does not
/// hold are NOT_FOUND. Afterwards the node still flushes and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storage_node_refuses_batches_that_contradict_the_catalog() {
    let c = TestCluster::start().await;
    let (status, _) = c.write("direct", "s", "m,host=a v=1 1\n").await;
    assert_eq!(status, 204);
    let catalog = CatalogClient::connect(
        &c.cluster().addrs().catalog,
        std::time::Duration::from_secs(5),
    )
    .await
    .unwrap();
    let state = catalog.state();
    let shard = &state.databases["direct"].shard_groups[0].shards[0];
    let node = &state.nodes[&shard.owners[0]];
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", node.flight_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = FlightClient::new(channel);
    let shard_id = shard.id.to_string();
    let path = ["direct", "m", shard_id.as_str()];
    let time =
        |t: i64| -> arrow::array::ArrayRef { Arc::new(TimestampNanosecondArray::from(vec![t])) };

    let no_time = batch(vec![("v", Arc::new(Float64Array::from(vec![1.0])))]);
    let e = put(&mut client, path, no_time).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("no 'time' column"), "{e}");

    let string_into_float = batch(vec![
        ("v", Arc::new(StringArray::from(vec!["s"]))),
        ("time", time(5)),
    ]);
    let e = put(&mut client, path, string_into_float).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
    assert!(e.message().contains("float field"), "{e}");

    let unknown_table = batch(vec![("time", time(5))]);
    let e = put(
        &mut client,
        ["direct", "nope", &shard_id],
        unknown_table.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");

    let e = put(&mut client, ["direct", "m", "987654"], unknown_table)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.message().contains("shard 987654"), "{e}");

    // A shard of one database does not take another database's rows.
    let (status, _) = c.write("other", "s", "m,host=a v=1 1\n").await;
    assert_eq!(status, 204);
    let e = put(
        &mut client,
        ["other", "m", &shard_id],
        batch(vec![
            ("v", Arc::new(Float64Array::from(vec![1.0]))),
            ("time", time(5)),
        ]),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.message().contains("database 'other'"), "{e}");

    // A plan fragment for a shard the node does not hold.
    let schema = Schema::new(vec![Field::new(
        "time",
        arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Nanosecond, None),
        false,
    )]);
    let ticket = strata_proto::storage::v1::ScanTicket {
        database: "direct".into(),
        table: "m".into(),
        shard_ids: vec![987654],
        table_schema_ipc: strata_storage::flight::schema_to_ipc(&schema).unwrap(),
        ..Default::default()
    };
    let fragment = strata_storage::fragment::scan_ticket_bytes(ticket.clone()).unwrap();
    let e = drained(client.do_get(Ticket::new(fragment)).await)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.message().contains("shard 987654"), "{e}");
    // A bare scan, garbage, or a ticket format this node does not speak.
    let other_version = strata_proto::storage::v1::FragmentTicket {
        version: 99,
        query_id: "q".into(),
        plan: vec![],
        report_metrics: true,
        ..Default::default()
    };
    for (bytes, says) in [
        (ticket.encode_to_vec(), "bad fragment ticket"),
        (vec![0xff; 64], "bad fragment ticket"),
        (other_version.encode_to_vec(), "format version 99"),
    ] {
        let e = drained(client.do_get(Ticket::new(bytes)).await)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains(says), "{e}");
    }

    // A good batch sent directly is taken.
    let good = batch(vec![
        ("v", Arc::new(Float64Array::from(vec![7.0]))),
        ("time", time(9_000_000_000)),
    ]);
    put(&mut client, path, good).await.expect("a valid batch");
    for node in &c.cluster().storage {
        node.engine().flush().await.expect("flushes go on");
    }
    assert_eq!(
        c.query("direct", "SELECT count(*), sum(v) FROM m").await,
        vec!["2|8.0"]
    );
    still_serves(&c, "direct", 2).await;
}

/// Sends raw HTTP (to declare a length the body does not have) and
/// returns the status line.
fn raw_http(addr: std::net::SocketAddr, head: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Unknown tables and databases are 404, a body declared over the limit
/// is 413 before it is read, unsupported encodings 415, deflate works, a
/// replication factor above the node count is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_answers_name_the_problem_with_the_right_status() {
    let c = TestCluster::start().await;
    let (status, _) = c.write("codes", "s", "m v=1 1\n").await;
    assert_eq!(status, 204);
    let (status, body) = sql_status(&c, Some("codes"), "SELECT * FROM nope").await;
    assert_eq!(status, 404, "{body}");
    // A query that reads no table needs no database; one that does names
    // the missing database.
    let (status, body) = sql_status(&c, Some("nodb"), "SELECT 1").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = sql_status(&c, Some("nodb"), "SELECT * FROM m").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("database 'nodb' not found"), "{body}");
    let mut flight = c.sql(Some("codes")).await;
    let e = flight
        .query("SELECT * FROM nope")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found"), "{e}");

    let addr = c.cluster().coordinator.http_addr();
    let status_line = raw_http(
        addr,
        "POST /write?db=codes HTTP/1.1\r\nHost: x\r\nContent-Length: 300000000\r\n\r\n",
    );
    assert!(status_line.contains("413"), "{status_line}");

    let url = c.http_url("/write?db=codes&precision=s");
    let (status, body) = post(&c.http, &url, b"m v=2 2".to_vec(), Some("br")).await;
    assert_eq!(status, 415, "{body}");
    let mut z = flate2::write::ZlibEncoder::new(vec![], flate2::Compression::fast());
    z.write_all(b"m v=3 3\n").unwrap();
    let (status, body) = post(&c.http, &url, z.finish().unwrap(), Some("deflate")).await;
    assert_eq!(status, 204, "{body}");

    let (status, body) = sql_status(&c, None, "CREATE DATABASE r WITH REPLICATION 100").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("REPLICATION 100"), "{body}");
    assert_eq!(c.query("codes", "SELECT count(*) FROM m").await, vec!["2"]);
}

/// A write that needs more than the coordinator's whole write budget is
/// refused as too large (413) while it is decoded; a small one goes on.
/// (Writes that would pass the budget together get 503 with
/// `Retry-After`: see `memory_stays_bounded_for_wide_tables_and_gzip_bodies`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_larger_than_the_budget_is_refused() {
    let c = TestCluster::start_with(|config| config.write_memory_limit_bytes = 4 << 20).await;
    let big: String = (0..200_000).map(|i| format!("m,h=a v={i} {i}\n")).collect();
    let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::fast());
    gz.write_all(big.as_bytes()).unwrap();
    let resp = c
        .http
        .post(c.http_url("/write?db=budget&precision=s"))
        .header("Content-Encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 413);
    assert!(resp.text().await.unwrap().contains("4194304 bytes"));
    let (status, body) = c.write("budget", "s", "m,h=a v=1 1\n").await;
    assert_eq!(status, 204, "{body}");
    still_serves(&c, "budget", 1).await;
}

/// Results stream as json, jsonl and csv, whole and well-formed; pretty
/// refuses a result past its row limit instead of building it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_over_http_streams_results_and_bounds_pretty() {
    let c = TestCluster::start().await;
    let rows = 12_000;
    let lines: String = (0..rows)
        .map(|i| format!("m,h=h{} v={i} {i}\n", i % 7))
        .collect();
    let (status, body) = c.write("stream", "s", &lines).await;
    assert_eq!(status, 204, "{body}");
    let get = |format: &str| {
        let url = c.http_url(&format!(
            "/api/v3/query_sql?db=stream&format={format}&q=SELECT%20h,%20v%20FROM%20m"
        ));
        let http = c.http.clone();
        async move {
            let resp = http.get(url).send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }
    };
    let (status, json) = get("json").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&json).expect("one JSON array");
    assert_eq!(v.as_array().unwrap().len(), rows);
    let (_, jsonl) = get("jsonl").await;
    assert_eq!(jsonl.lines().count(), rows);
    let (_, csv) = get("csv").await;
    assert_eq!(csv.lines().count(), rows + 1, "one header");
    assert_eq!(csv.lines().next(), Some("h,v"));
    let (status, body) = get("pretty").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("format=csv"), "{body}");
    let (status, empty) = sql_status(&c, Some("stream"), "SELECT v FROM m WHERE v < 0").await;
    assert_eq!((status, empty.as_str()), (200, "[]"));
}

/// `/health` asks every storage node; a node whose flushes fail (here its
/// shard directory cannot be made) is named with the cause, and the
/// answer is 503 until a flush succeeds again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_names_a_node_whose_flushes_fail() {
    let c = TestCluster::start().await;
    let health = || async {
        let resp = c.http.get(c.http_url("/health")).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
        )
    };
    let (status, body) = health().await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["checks"].as_array().unwrap().len(), 3);
    let (status, _) = c.write("sick", "s", "m,host=a v=1 1\n").await;
    assert_eq!(status, 204);
    // The node holding the row, and its shard directory.
    let node = c
        .cluster()
        .storage
        .iter()
        .find(|n| !n.engine().tables().is_empty())
        .expect("a node holds the row");
    let (_, key) = node.engine().tables().remove(0);
    let blocker = node
        .engine()
        .data_dir()
        .join(format!("shards/{}", key.shard_id));
    std::fs::create_dir_all(blocker.parent().unwrap()).unwrap();
    std::fs::write(&blocker, b"not a directory").unwrap();
    assert!(node.engine().flush().await.is_err());
    let (status, body) = health().await;
    assert_eq!(status, 503, "{body}");
    let failing: Vec<&serde_json::Value> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["status"] == "fail")
        .collect();
    assert_eq!(failing.len(), 1, "{body}");
    assert!(failing[0]["message"]
        .as_str()
        .unwrap()
        .contains("flushes in a row failed"));
    std::fs::remove_file(&blocker).unwrap();
    node.engine()
        .flush()
        .await
        .expect("the flush succeeds again");
    assert_eq!(health().await.0, 200);
    assert_eq!(c.query("sick", "SELECT v FROM m").await, vec!["1.0"]);
}

/// Peak RSS of a real `strata dev` process (VmHWM from /proc) while a
/// sparse table of 5,000 fields is written, flushed and, after `kill -9`,
/// replayed, and while 10 gzip bodies that inflate to 20 MB each arrive
/// at once against a 128 MiB write budget. Widening the sparse rows would
/// take 60,000 × 5,000 × 8 bytes = 2.4 GB per copy; ten bodies decoded at
/// once, 200 MB plus their parsed form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_for_wide_tables_and_gzip_bodies() {
    const LIMIT_MIB: u64 = 1024;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let addr_file = dir.path().join("addrs.json");
    let data_arg = data.to_str().unwrap().to_string();
    let args = [
        "dev",
        "--data-dir",
        &data_arg,
        "--http-addr",
        "127.0.0.1:0",
        "--flight-addr",
        "127.0.0.1:0",
        "--flush-rows",
        "60000",
        "--write-memory-limit-mib",
        "128",
    ];
    let (dev, addrs) = crate::support::ServerProcess::start(&args, &addr_file);
    let http = reqwest::Client::new();
    let url = |addrs: &serde_json::Value, path: &str| {
        format!("http://{}{path}", addrs["http"].as_str().unwrap())
    };
    let write = |addrs: serde_json::Value, body: Vec<u8>, gzip: bool| {
        let http = http.clone();
        async move {
            let mut req = http
                .post(url(&addrs, "/write?db=mem&precision=s"))
                .body(body);
            if gzip {
                req = req.header("Content-Encoding", "gzip");
            }
            match req.send().await {
                Ok(r) => r.status().as_u16(),
                // Answered and closed before the whole body was sent.
                Err(_) => 503,
            }
        }
    };
    let fields: Vec<String> = (0..5_000).map(|i| format!("f{i}={i}")).collect();
    let first = format!("sparse,h=a {} 0\n", fields.join(","));
    assert_eq!(write(addrs.clone(), first.into_bytes(), false).await, 204);
    dev.reset_peak();
    let sparse: String = (0..60_000)
        .map(|i| format!("sparse,h=b f{}={i} {}\n", i % 5_000, i + 1))
        .collect();
    assert_eq!(write(addrs.clone(), sparse.into_bytes(), false).await, 204);
    let files = || {
        walk(&data)
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while files() == 0 {
        assert!(std::time::Instant::now() < deadline, "the flush never came");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let flush_peak = dev.status_mib("VmHWM");
    println!("sparse 60,000 rows x 5,000 fields, written and flushed: peak RSS {flush_peak} MiB");
    assert!(flush_peak < LIMIT_MIB, "peak RSS {flush_peak} MiB");

    // The same again, unflushed, then kill -9 and replay.
    let again: String = (0..59_000)
        .map(|i| format!("sparse,h=c f{}={i} {}\n", i % 5_000, i + 1))
        .collect();
    assert_eq!(write(addrs.clone(), again.into_bytes(), false).await, 204);
    dev.kill9();
    let (dev, addrs) = crate::support::ServerProcess::start(&args, &addr_file);
    let replay_peak = dev.status_mib("VmHWM");
    println!("replay of 59,000 sparse rows after kill -9: peak RSS {replay_peak} MiB");
    assert!(replay_peak < LIMIT_MIB, "peak RSS {replay_peak} MiB");
    let count = http
        .get(url(
            &addrs,
            "/api/v3/query_sql?db=mem&q=SELECT%20count(*)%20AS%20n%20FROM%20sparse",
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(count, r#"[{"n":119001}]"#);

    let line = b"bomb,host=server01,region=eu usage_user=12.5,usage_system=3i 1700000000\n";
    let text = line.repeat((20 << 20) / line.len());
    let mut gz = flate2::write::GzEncoder::new(vec![], flate2::Compression::best());
    gz.write_all(&text).unwrap();
    let packed = gz.finish().unwrap();
    drop(text);
    dev.reset_peak();
    let statuses: Vec<u16> =
        futures::future::join_all((0..10).map(|_| write(addrs.clone(), packed.clone(), true)))
            .await;
    let gzip_peak = dev.status_mib("VmHWM");
    println!("10 gzip bodies of {} KB, 20 MB each decoded, at once: statuses {statuses:?}, peak RSS {gzip_peak} MiB", packed.len() / 1000);
    assert!(
        statuses.iter().all(|s| *s == 204 || *s == 503),
        "{statuses:?}"
    );
    assert!(
        statuses.contains(&204) && statuses.contains(&503),
        "{statuses:?}"
    );
    assert!(gzip_peak < LIMIT_MIB, "peak RSS {gzip_peak} MiB");
    drop(dev);
}

/// A client that connects to the HTTP port and never finishes its request
/// headers is disconnected (after `HEADER_READ_TIMEOUT`, 30 s) instead of
/// holding the connection, and a file descriptor, forever; one that says
/// nothing to a gRPC port, after `FIRST_BYTES_TIMEOUT` (10 s). Others are
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = TestCluster::start().await;
    let addr = c.cluster().coordinator.http_addr();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
    half.write_all(b"GET /ping HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let ping = c.http.get(c.http_url("/ping")).send().await.unwrap();
    assert_eq!(ping.status(), 204);
    let limit = strata_coordinator::http_serve::HEADER_READ_TIMEOUT * 3;
    for (name, conn) in [("silent", &mut silent), ("half a header", &mut half)] {
        let mut buf = vec![];
        let read = tokio::time::timeout(limit, conn.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "{name}: still open after {limit:?}");
        println!(
            "{name} connection closed after {:?} ({} bytes sent to it)",
            started.elapsed(),
            buf.len()
        );
    }
    // The gRPC ports (Flight SQL, a storage node) close connections that
    // never send a byte.
    let grpc = [
        ("Flight SQL", c.cluster().coordinator.flight_addr()),
        ("storage node", c.cluster().storage[0].addr()),
    ];
    for (name, addr) in grpc {
        let started = std::time::Instant::now();
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let limit = strata_proto::incoming::FIRST_BYTES_TIMEOUT * 3;
        let mut buf = vec![];
        let read = tokio::time::timeout(limit, silent.read_to_end(&mut buf)).await;
        assert!(read.is_ok(), "{name}: still open after {limit:?}");
        println!(
            "silent connection to the {name} port closed after {:?}",
            started.elapsed()
        );
    }
    // They go on serving.
    let mut sql = c.sql(None).await;
    assert_eq!(rows(&sql.query("SELECT 1").await.unwrap()), vec!["1"]);
}
