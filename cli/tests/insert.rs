//! SQL `INSERT`: rows from VALUES and from a query go through the write
//! path of line protocol (schema on write, dedup, shard routing) and are
//! answered with their count; bad rows are refused before any is written.

use crate::support::TestCluster;

async fn insert(c: &TestCluster, db: &str, sql: &str) -> Result<String, String> {
    let mut client = c.sql(Some(db)).await;
    match client.query(sql).await {
        Ok(batches) => Ok(crate::support::rows(&batches).join(",")),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test]
async fn insert_values_writes_rows_with_schema_on_write_and_dedup() {
    let c = TestCluster::start().await;
    c.create_database("ins", "SHARD DURATION 1h").await;

    let n = insert(
        &c,
        "ins",
        "INSERT INTO cpu (time, host, region, usage, n, ok) VALUES \
         ('2026-01-01T00:00:00Z', 'a', 'eu', 1.5, 1, true), \
         ('2026-01-01T01:30:00Z', 'b', NULL, 2, NULL, false), \
         ('2026-01-01T02:00:00Z', 'c', 'us', -3.25, 7, NULL)",
    )
    .await
    .unwrap();
    assert_eq!(n, "3");
    assert_eq!(
        c.query(
            "ins",
            "SELECT time, host, region, usage, n, ok FROM cpu ORDER BY time"
        )
        .await,
        [
            "2026-01-01T00:00:00|a|eu|1.5|1|true",
            "2026-01-01T01:30:00|b|NULL|2.0|NULL|false",
            "2026-01-01T02:00:00|c|us|-3.25|7|NULL",
        ]
    );

    // Strings became tags: a string field of the same name conflicts.
    let (status, body) = c.write("ins", "ns", "cpu host=\"x\" 1").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tag"), "{body}");

    // The same time and tags replace the fields, as a line would; an integer
    // goes into the float field and a new field joins the table.
    let n = insert(
        &c,
        "ins",
        "INSERT INTO ins.cpu (time, host, region, usage, extra) \
         VALUES ('2026-01-01T00:00:00Z', 'a', 'eu', 10, 42)",
    )
    .await
    .unwrap();
    assert_eq!(n, "1");
    assert_eq!(
        c.query(
            "ins",
            "SELECT count(*), sum(usage) FILTER (WHERE host = 'a'), max(extra) FROM cpu"
        )
        .await,
        ["3|10.0|42"]
    );

    // Without a column list the table's own columns are meant, in order.
    let columns = c
        .query(
            "ins",
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'cpu' \
             ORDER BY ordinal_position",
        )
        .await;
    let values: Vec<&str> = columns
        .iter()
        .map(|c| match c.as_str() {
            "time" => "'2026-01-01T03:00:00Z'",
            "usage" => "4.0",
            "ok" => "NULL",
            "n" => "NULL",
            "extra" => "NULL",
            _ => "'d'",
        })
        .collect();
    let n = insert(
        &c,
        "ins",
        &format!("INSERT INTO cpu VALUES ({})", values.join(", ")),
    )
    .await
    .unwrap();
    assert_eq!(n, "1");
    assert_eq!(
        c.query("ins", "SELECT host, usage FROM cpu WHERE usage = 4")
            .await,
        ["d|4.0"]
    );
}

#[tokio::test]
async fn insert_select_copies_and_downsamples_across_shards() {
    let c = TestCluster::start().await;
    c.create_database("src", "SHARD DURATION 1h").await;
    let mut body = String::new();
    for host in 0..20 {
        for minute in 0..180 {
            let t = 1_767_225_600 + minute * 60;
            body.push_str(&format!(
                "cpu,host=h{host} v={}i {t}\n",
                host * 1000 + minute
            ));
        }
    }
    let (status, text) = c.write("src", "s", &body).await;
    assert_eq!(status, 204, "{text}");

    // 3,600 rows, more than one write of the INSERT path, into another
    // database: unqualified tables are in the session's.
    c.create_database("copy", "SHARD DURATION 1h").await;
    let n = insert(
        &c,
        "src",
        "INSERT INTO copy.cpu (time, host, v) SELECT time, host, v FROM cpu",
    )
    .await
    .unwrap();
    assert_eq!(n, "3600");
    let check = "SELECT count(*), count(DISTINCT host), sum(v), min(time), max(time) FROM cpu";
    assert_eq!(c.query("copy", check).await, c.query("src", check).await);

    // Downsampling into a table of hourly means.
    let n = insert(
        &c,
        "src",
        "INSERT INTO cpu_1h (time, host, mean) \
         SELECT date_bin(INTERVAL '1 hour', time), host, avg(v) FROM cpu GROUP BY 1, 2",
    )
    .await
    .unwrap();
    assert_eq!(n, "60");
    assert_eq!(
        c.query(
            "src",
            "SELECT time, mean FROM cpu_1h WHERE host = 'h3' ORDER BY time"
        )
        .await,
        [
            "2026-01-01T00:00:00|3029.5",
            "2026-01-01T01:00:00|3089.5",
            "2026-01-01T02:00:00|3149.5"
        ]
    );

    // Rows beyond one write call, from a table function, with integer times.
    let n = insert(
        &c,
        "copy",
        "INSERT INTO big (time, host, v) \
         SELECT value * 1000000000, 'h' || (value % 7), value * 0.5 FROM generate_series(1, 25000)",
    )
    .await
    .unwrap();
    assert_eq!(n, "25000");
    assert_eq!(
        c.query(
            "copy",
            "SELECT count(*), count(DISTINCT host), sum(v) FROM big"
        )
        .await,
        ["25000|7|156256250.0"]
    );
}

#[tokio::test]
async fn bad_inserts_name_the_problem_and_write_nothing() {
    let c = TestCluster::start().await;
    c.create_database("bad", "").await;
    let (status, text) = c.write("bad", "s", "cpu,host=a usage=1,n=1i 1").await;
    assert_eq!(status, 204, "{text}");

    for (sql, says) in [
        (
            "INSERT INTO cpu (time, host, usage) VALUES (2, 'a', 'high')",
            "column 'usage' (float field) cannot take Utf8",
        ),
        (
            "INSERT INTO cpu (time, host, n) VALUES (2, 'a', 1.5)",
            "column 'n' (integer field) cannot take Float64",
        ),
        (
            "INSERT INTO cpu (time, host, usage) VALUES (2, 'a', 1), (3, 'b', NULL)",
            "row 2 has no field value",
        ),
        (
            "INSERT INTO cpu (time, host, usage) VALUES (NULL, 'a', 1)",
            "row 1: time is NULL",
        ),
        (
            "INSERT INTO cpu (time, host, usage) VALUES ('noon', 'a', 1)",
            "time",
        ),
        (
            "INSERT INTO cpu (time, usage) VALUES (1, 2, 3)",
            "names 2 column(s) but its VALUES give(s) 3",
        ),
        (
            "INSERT INTO nope.cpu (time, v) VALUES (1, 2)",
            "database 'nope' not found",
        ),
        ("INSERT INTO fresh VALUES (1, 2)", "does not exist yet"),
        (
            "INSERT INTO cpu (host, usage) VALUES ('a', 1), ('a', 2)",
            "needs the 'time' column",
        ),
        (
            "INSERT INTO cpu (time, host, usage) SELECT time, host, usage FROM missing",
            "missing",
        ),
        (
            "INSERT INTO cpu (time, host, usage) VALUES (1, 'a', 1) RETURNING usage",
            "RETURNING",
        ),
    ] {
        let e = insert(&c, "bad", sql).await.unwrap_err();
        assert!(e.contains(says), "{sql}: {e}");
    }
    assert_eq!(
        c.query("bad", "SELECT count(*), sum(usage) FROM cpu").await,
        ["1|1.0"]
    );
}
