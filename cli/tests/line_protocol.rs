//! Line-protocol writes over HTTP: partial writes, type conflicts,
//! precisions, gzip, the v2 endpoint and v1 database management.

use std::io::Write;

use crate::support::{error_lines, post, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_lines_are_named_and_good_lines_kept() {
    let c = TestCluster::start().await;
    let body = "weather,city=paris temp=12.5 10\n\
                weather,city=oslo temp= 11\n\
                weather,city=rome temp=20.0 12\n\
                weather city=lima 13\n\
                weather,city=nice temp=18i 14\n";
    let (status, resp) = c.write("lp", "s", body).await;
    assert_eq!(status, 400, "{resp}");
    let json: serde_json::Value = serde_json::from_str(&resp).expect("JSON error body");
    assert_eq!(json["lines_written"], 2);
    // line 5 writes temp as an integer into a float column
    assert_eq!(error_lines(&json), vec![2, 4, 5]);
    let msg = json["error"].as_str().unwrap();
    assert!(msg.contains("line 2"), "{msg}");
    let conflict = json["line_errors"][2]["error"].as_str().unwrap();
    assert!(
        conflict.contains("temp") && conflict.contains("float"),
        "{conflict}"
    );

    let got = c
        .query("lp", "SELECT city, temp FROM weather ORDER BY city")
        .await;
    assert_eq!(got, vec!["paris|12.5", "rome|20.0"]);

    // A type conflict with what an earlier request stored fails just that line.
    let (status, resp) = c
        .write(
            "lp",
            "s",
            "weather,city=bern temp=\"warm\" 20\nweather,city=bern temp=9.0 21\n",
        )
        .await;
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("line 1") && resp.contains("string"), "{resp}");
    let got = c.query("lp", "SELECT count(*) FROM weather").await;
    assert_eq!(got, vec!["3"]);

    // Timestamps at the ends of the nanosecond range are refused, not fatal.
    let body = "weather,city=x temp=1.0 9223372036854775807\n\
                weather,city=y temp=1.0 -9223372036854775808\n\
                weather,city=z temp=1.0 9999999999999\n";
    let (status, resp) = c.write("lp", "ns", body).await;
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("out of range"), "{resp}");
    let (status, resp) = c
        .write("lp", "s", "weather,city=w temp=1.0 9999999999999\n")
        .await;
    assert_eq!(status, 400, "{resp}");
    let got = c
        .query(
            "lp",
            "SELECT city FROM weather WHERE city IN ('x', 'y', 'z', 'w')",
        )
        .await;
    assert_eq!(got, vec!["z"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_field_types_precisions_gzip_and_v2() {
    let c = TestCluster::start().await;
    let body = r#"sensor,id=a\ b f=1.25,i=-7i,u=42u,s="quote \" and, comma",b=t 1700000000000
sensor,id=c f=2,b=FALSE 1700000001000
"#;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(body.as_bytes()).unwrap();
    let url = c.http_url("/api/v2/write?bucket=types&org=any&precision=ms");
    let (status, resp) = post(&c.http, &url, gz.finish().unwrap(), Some("gzip")).await;
    assert_eq!(status, 204, "{resp}");

    let got = c
        .query(
            "types",
            "SELECT id, f, i, u, s, b, time FROM sensor ORDER BY time",
        )
        .await;
    assert_eq!(
        got,
        vec![
            "a b|1.25|-7|42|quote \" and, comma|true|2023-11-14T22:13:20",
            "c|2.0|NULL|NULL|NULL|false|2023-11-14T22:13:21",
        ]
    );

    // Microseconds, and a line without a timestamp gets the server's clock.
    let before = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let (status, resp) = c
        .write(
            "types",
            "us",
            "sensor,id=d f=3 1700000002000000\nsensor,id=now f=4\n",
        )
        .await;
    assert_eq!(status, 204, "{resp}");
    let after = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    let got = c
        .query("types", "SELECT time FROM sensor WHERE id = 'd'")
        .await;
    assert_eq!(got, vec!["2023-11-14T22:13:22"]);
    let got = c
        .query(
            "types",
            "SELECT CAST(time AS BIGINT) FROM sensor WHERE id = 'now'",
        )
        .await;
    let t: i64 = got[0].parse().unwrap();
    assert!(before <= t && t <= after, "{before} <= {t} <= {after}");

    // Bad parameters are named.
    let (status, resp) = c.write("types", "fortnights", "m v=1").await;
    assert_eq!(status, 400);
    assert!(resp.contains("precision"), "{resp}");
    let (status, resp) = post(&c.http, &c.http_url("/write"), b"m v=1".to_vec(), None).await;
    assert_eq!(status, 400);
    assert!(resp.contains("db"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn v1_query_endpoint_manages_databases() {
    let c = TestCluster::start().await;
    let url = c.http_url("/query?q=CREATE%20DATABASE%20%22v1db%22");
    let (status, resp) = post(&c.http, &url, vec![], None).await;
    assert_eq!(status, 200, "{resp}");
    let resp = c
        .http
        .get(c.http_url("/query?q=SHOW%20DATABASES"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(resp.contains("\"v1db\""), "{resp}");
    let status = c
        .http
        .get(c.http_url("/ping"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 204);

    let (status, _) = c.write("v1db", "s", "m v=1 1").await;
    assert_eq!(status, 204);
    let resp = c
        .http
        .get(c.http_url("/api/v3/query_sql?db=v1db&q=SELECT%20v%20FROM%20m&format=csv"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(resp, "v\n1.0\n");

    // InfluxQL's DELETE through the same endpoint, in `db`.
    let (status, _) = c.write("v1db", "s", "m,host=a v=2 2\nm,host=b v=3 3").await;
    assert_eq!(status, 204);
    let url = c.http_url("/query?db=v1db&q=DELETE%20FROM%20m%20WHERE%20host%20%3D%20%27a%27");
    let (status, resp) = post(&c.http, &url, vec![], None).await;
    assert_eq!(status, 200, "{resp}");
    assert_eq!(
        c.query("v1db", "SELECT v FROM m ORDER BY time").await,
        vec!["1.0", "3.0"]
    );
    let url = c.http_url("/query?db=v1db&q=DELETE%20FROM%20m%20WHERE%20v%20%3E%201");
    let (status, resp) = post(&c.http, &url, vec![], None).await;
    assert_eq!(status, 400, "{resp}");
    assert!(resp.contains("'v' is a field"), "{resp}");
}

/// A write that would take a database over its series limit on a node is
/// refused with 400 naming the database and the limit, as InfluxDB does;
/// writes to the series it has keep working, and nothing refused is
/// stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_over_the_series_limit_are_refused_with_the_limit_named() {
    let c = TestCluster::start_with(|config| config.max_series_per_database = Some(10)).await;
    // One shard per group, so every series lands on one node.
    c.create_database("capped", "WITH SHARDS 1").await;
    let lines = |hosts: std::ops::Range<usize>, v: i64| -> String {
        hosts
            .map(|h| format!("cpu,host=h{h} v={v}i 1795996800000000000\n"))
            .collect()
    };
    let (status, body) = c.write("capped", "ns", &lines(0..10, 1)).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = c.write("capped", "ns", &lines(8..13, 2)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("'capped'") && body.contains("limit of 10 series"),
        "{body}"
    );
    let (status, body) = c.write("capped", "ns", &lines(0..10, 3)).await;
    assert_eq!(status, 204, "{body}");
    let answer = c.query("capped", "SELECT count(*), sum(v) FROM cpu").await;
    assert_eq!(answer, vec!["10|30".to_string()]);
}
