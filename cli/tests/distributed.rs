//! The distributed planner as measured by its own metrics: what the
//! coordinator receives from the nodes, how many shard groups a
//! time-ordered read opens, and each strategy surviving a replica that is
//! down before its first batch.

use crate::support::{rows, TestCluster};

/// 2026-11-30T00:00:00Z.
const BASE_NS: i64 = 1_795_996_800_000_000_000;
const HOUR_NS: i64 = 3_600_000_000_000;
const HOSTS: i64 = 10;
/// Points per host and hour.
const PER_HOUR: i64 = 6;

/// 24 one-hour groups of `HOSTS` hosts, `PER_HOUR` points each.
async fn load(c: &TestCluster, db: &str, options: &str) {
    c.create_database(db, options).await;
    let mut body = String::new();
    for hour in 0..24 {
        for host in 0..HOSTS {
            for i in 0..PER_HOUR {
                let t = BASE_NS + hour * HOUR_NS + i * HOUR_NS / PER_HOUR;
                body.push_str(&format!(
                    "cpu,host=h{host} v={} {t}\n",
                    hour * 100 + host + i
                ));
            }
        }
    }
    let (status, text) = c.write(db, "ns", &body).await;
    assert_eq!(status, 204, "{text}");
}

/// The value of metric `name` on the first plan line naming `operator`,
/// as shown: exact below 1,000, else to the shown digits ("60.19 K").
fn metric(plan: &[String], operator: &str, name: &str) -> u64 {
    let line = plan
        .iter()
        .flat_map(|l| l.lines())
        .find(|l| l.contains(operator))
        .unwrap_or_else(|| panic!("no {operator} in {plan:#?}"));
    let at = line
        .find(&format!("{name}="))
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    let value = &line[at + name.len() + 1..];
    let number: String = value
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    let scale = match value[number.len()..]
        .strip_prefix(' ')
        .and_then(|r| r.chars().next())
    {
        Some('K') => 1e3,
        Some('M') => 1e6,
        Some('B') => 1e9,
        _ => 1.0,
    };
    let n: f64 = number
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a count in {line}"));
    (n * scale).round() as u64
}

/// Whether two shown counts agree to the digits shown (0.1%).
fn about(a: u64, b: u64) -> bool {
    a.abs_diff(b) as f64 <= a.max(b) as f64 * 1e-3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_ship_groups_not_rows_and_time_ordered_reads_stop_early() {
    let c = TestCluster::start().await;
    load(&c, "shipped", "SHARD DURATION 1h SHARDS 3").await;
    let rows_in = (24 * HOSTS * PER_HOUR) as u64;
    let mut client = c.sql(Some("shipped")).await;

    // fan-out-aggregate: each shard sends one row per host it holds.
    let plan = rows(
        &client
            .query("EXPLAIN ANALYZE SELECT host, max(v) FROM cpu GROUP BY host")
            .await
            .unwrap(),
    );
    let shipped = metric(&plan, "ShardFragmentExec", "output_rows");
    let (groups, shards) = (24, 24 * 3);
    assert!(shipped <= HOSTS as u64 * groups, "{shipped} rows shipped");
    assert!(shipped <= HOSTS as u64 * shards, "{shipped} rows shipped");
    assert!(shipped < rows_in, "{shipped} of {rows_in} rows shipped");
    let bytes = metric(&plan, "ShardFragmentExec", "bytes_received");
    assert!(bytes > 0, "{plan:#?}");

    // What the nodes report: the fragment's operators count on the nodes
    // (the scan saw every row, the partial aggregate sent what arrived),
    // and per node the rows, bytes and time add up to the fragment's.
    assert_eq!(
        metric(&plan, "ScanLeafExec", "output_rows"),
        rows_in,
        "{plan:#?}"
    );
    assert_eq!(
        metric(&plan, "AggregateExec: mode=Partial", "output_rows"),
        shipped,
        "{plan:#?}"
    );
    let per_node = |name: &str| -> u64 {
        (1..=3)
            .map(|n| {
                let key = format!("{name}@node{n}");
                let present = plan.iter().any(|l| l.contains(&format!("{key}=")));
                if present {
                    metric(&plan, "ShardFragmentExec", &key)
                } else {
                    0
                }
            })
            .sum()
    };
    assert_eq!(per_node("rows"), shipped, "{plan:#?}");
    assert!(about(per_node("bytes"), bytes), "{plan:#?}");
    let line = plan
        .iter()
        .find(|l| l.contains("ShardFragmentExec"))
        .unwrap();
    assert!(line.contains("elapsed@node"), "{line}");

    // time-ordered: the newest group alone holds the five newest rows.
    let plan = rows(
        &client
            .query("EXPLAIN ANALYZE SELECT host, time, v FROM cpu ORDER BY time DESC LIMIT 5")
            .await
            .unwrap(),
    );
    let read = metric(&plan, "TimeOrderedExec", "shard_groups_read");
    assert!(read < groups, "{read} of {groups} shard groups read");
    assert_eq!(read, 1, "{plan:#?}");
    let shipped = metric(&plan, "ShardFragmentExec", "output_rows");
    assert!(shipped <= 5 * 3, "{shipped} rows shipped for LIMIT 5");
    let newest = rows(
        &client
            .query("SELECT host, v FROM cpu ORDER BY time DESC, host LIMIT 3")
            .await
            .unwrap(),
    );
    assert_eq!(newest, ["h0|2305.0", "h1|2306.0", "h2|2307.0"]);

    // time-ordered over an aggregate by a time bucket (TSBS
    // groupby-orderby-limit): minute buckets never straddle two hourly
    // groups, so the newest group alone answers, complete.
    let gol = "SELECT date_trunc('minute', time) AS minute, max(v) FROM cpu \
               WHERE time < '2026-11-30T23:30:00Z' GROUP BY minute ORDER BY minute DESC LIMIT 3";
    let plan = rows(
        &client
            .query(&format!("EXPLAIN ANALYZE {gol}"))
            .await
            .unwrap(),
    );
    assert_eq!(
        metric(&plan, "TimeOrderedExec", "shard_groups_read"),
        1,
        "{plan:#?}"
    );
    assert_eq!(
        rows(&client.query(gol).await.unwrap()),
        [
            "2026-11-30T23:20:00|2311.0",
            "2026-11-30T23:10:00|2310.0",
            "2026-11-30T23:00:00|2309.0"
        ]
    );
    // Two-hour buckets straddle the hourly groups: every group is read.
    let plan = rows(
        &client
            .query(
                "EXPLAIN SELECT date_bin(INTERVAL '2 hours', time) AS t, max(v) FROM cpu \
                 GROUP BY t ORDER BY t DESC LIMIT 3",
            )
            .await
            .unwrap(),
    );
    assert!(
        !plan.iter().any(|l| l.contains("TimeOrderedExec")),
        "{plan:#?}"
    );

    // The newest row per host written with row_number(): each shard sends
    // its own newest row per host, not its rows.
    let plan = rows(
        &client
            .query(
                "EXPLAIN ANALYZE SELECT host, time, v FROM (SELECT host, time, v, row_number() \
                 OVER (PARTITION BY host ORDER BY time DESC) AS rn FROM cpu) WHERE rn = 1",
            )
            .await
            .unwrap(),
    );
    let shipped = metric(&plan, "ShardFragmentExec", "output_rows");
    assert!(shipped <= HOSTS as u64 * shards, "{shipped} rows shipped");
    assert!(shipped < rows_in / 2, "{shipped} of {rows_in} rows shipped");

    // And as a self-join on max(time): the row side sends each shard's
    // newest rows per host.
    let plan = rows(
        &client
            .query(
                "EXPLAIN ANALYZE SELECT c.host, c.v FROM cpu c JOIN (SELECT host, max(time) AS t \
                 FROM cpu GROUP BY host) m ON c.host = m.host AND c.time = m.t",
            )
            .await
            .unwrap(),
    );
    let row_side = plan
        .iter()
        .flat_map(|l| l.lines())
        .filter(|l| l.contains("ShardFragmentExec: strategy=fan-out,"))
        .collect::<Vec<_>>();
    assert_eq!(row_side.len(), 1, "{plan:#?}");
    let shipped = metric(
        &[row_side[0].to_string()],
        "ShardFragmentExec",
        "output_rows",
    );
    assert!(shipped <= HOSTS as u64 * shards, "{shipped} rows shipped");

    // merge-sort: each shard sends its top three at most.
    let plan = rows(
        &client
            .query("EXPLAIN ANALYZE SELECT host, v FROM cpu ORDER BY v DESC LIMIT 3")
            .await
            .unwrap(),
    );
    let shipped = metric(&plan, "ShardFragmentExec", "output_rows");
    assert!(shipped <= 3 * shards, "{shipped} rows shipped for LIMIT 3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_strategy_reads_another_replica_when_one_is_down() {
    let mut c = TestCluster::start().await;
    load(&c, "replicas", "SHARD DURATION 1h SHARDS 3 REPLICATION 2").await;
    load(
        &c,
        "replicas_one",
        "SHARD DURATION 1d SHARDS 1 REPLICATION 2",
    )
    .await;
    let queries = [
        (
            "replicas",
            "fan-out",
            "SELECT host, time, v FROM cpu WHERE v > 2300",
        ),
        (
            "replicas",
            "fan-out-aggregate",
            "SELECT host, count(*), sum(v) FROM cpu GROUP BY host",
        ),
        (
            "replicas",
            "merge-sort",
            "SELECT host, v FROM cpu ORDER BY v DESC, host LIMIT 4",
        ),
        (
            "replicas",
            "time-ordered",
            "SELECT host, time FROM cpu ORDER BY time DESC, host LIMIT 4",
        ),
        (
            "replicas_one",
            "direct",
            "SELECT host, max(v) FROM cpu GROUP BY host ORDER BY host",
        ),
    ];
    let mut before = vec![];
    for (db, strategy, sql) in queries {
        let mut client = c.sql(Some(db)).await;
        let plan = rows(&client.query(&format!("EXPLAIN {sql}")).await.unwrap());
        assert!(
            plan.iter()
                .any(|l| l.contains(&format!("strategy={strategy},"))),
            "{sql} is not {strategy}: {plan:#?}"
        );
        let mut answer = rows(&client.query(sql).await.unwrap());
        answer.sort();
        assert!(!answer.is_empty(), "{sql}");
        before.push(answer);
    }
    // Stop one node: every shard it held has another replica.
    let node = c.cluster.as_mut().unwrap().storage.remove(0);
    node.shutdown().await;
    for ((db, strategy, sql), expected) in queries.iter().zip(&before) {
        let mut client = c.sql(Some(db)).await;
        let mut answer = rows(
            &client
                .query(sql)
                .await
                .unwrap_or_else(|e| panic!("{strategy} with a node down: {e}")),
        );
        answer.sort();
        assert_eq!(&answer, expected, "{strategy}: {sql}");
    }
}
