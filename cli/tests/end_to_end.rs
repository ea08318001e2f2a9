//! Writes over HTTP, reads over Flight SQL, on a dev cluster with three
//! storage nodes and data spread over several shard groups.

use std::collections::BTreeMap;

use crate::support::{CpuData, TestCluster};

const START_S: i64 = 1_451_606_400; // 2016-01-01T00:00:00Z

fn data() -> CpuData {
    CpuData {
        hosts: 10,
        start_s: START_S,
        interval_s: 60,
        steps: 360, // six hours
    }
}

async fn load(c: &TestCluster, d: &CpuData) {
    c.create_database("tsbs", "SHARD DURATION 1h").await;
    for chunk in (0..d.steps).collect::<Vec<_>>().chunks(60) {
        let (status, body) = c
            .write("tsbs", "s", &d.lines(chunk[0]..chunk[chunk.len() - 1] + 1))
            .await;
        assert_eq!(status, 204, "write failed: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_come_back_exactly_across_shard_groups_and_nodes() {
    let mut c = TestCluster::start().await;
    let d = data();
    load(&c, &d).await;

    // Six one-hour shard groups, their shards spread over all three nodes.
    let state = c.cluster().catalog[0].state();
    let db = &state.databases["tsbs"];
    assert_eq!(db.shard_groups.len(), 6);
    for node in &c.cluster().storage {
        assert!(
            !node.engine().tables().is_empty(),
            "storage node at {} holds no data",
            node.addr()
        );
    }

    let answers = check_answers(&c, &d).await;

    // The same answers after a clean restart on the same data directory.
    c.restart().await;
    assert_eq!(check_answers(&c, &d).await, answers);
}

/// Runs the checked queries and returns their rows for comparison.
async fn check_answers(c: &TestCluster, d: &CpuData) -> Vec<Vec<String>> {
    let mut all = vec![];

    let count = c.query("tsbs", "SELECT count(*) FROM cpu").await;
    assert_eq!(count, vec![(d.hosts * d.steps).to_string()]);
    all.push(count);

    // Per-host aggregates.
    let got = c
        .query(
            "tsbs",
            "SELECT hostname, max(usage_user), min(usage_user), sum(usage_system) \
             FROM cpu GROUP BY hostname ORDER BY hostname",
        )
        .await;
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    for h in 0..d.hosts {
        let users: Vec<i64> = (0..d.steps).map(|s| CpuData::usage_user(h, s)).collect();
        let sys: i64 = (0..d.steps).map(|s| CpuData::usage_system(h, s)).sum();
        expected.insert(
            format!("host_{h}"),
            format!(
                "host_{h}|{}|{}|{sys}",
                users.iter().max().unwrap(),
                users.iter().min().unwrap()
            ),
        );
    }
    assert_eq!(got, expected.into_values().collect::<Vec<_>>());
    all.push(got);

    // A time-range filter over two of the six hours, with a tag filter.
    let got = c
        .query(
            "tsbs",
            "SELECT count(*), sum(usage_user) FROM cpu \
             WHERE time >= '2016-01-01T01:00:00Z' AND time < '2016-01-01T03:00:00Z' \
             AND region = 'region_1'",
        )
        .await;
    let hosts: Vec<usize> = (0..d.hosts).filter(|h| h % 3 == 1).collect();
    let steps = 60..180;
    let sum: i64 = hosts
        .iter()
        .flat_map(|h| steps.clone().map(move |s| CpuData::usage_user(*h, s)))
        .sum();
    assert_eq!(got, vec![format!("{}|{sum}", hosts.len() * 120)]);
    all.push(got);

    // Hourly buckets for one host.
    let got = c
        .query(
            "tsbs",
            "SELECT date_bin(INTERVAL '1 hour', time) AS hour, max(usage_user), count(*) \
             FROM cpu WHERE hostname = 'host_3' GROUP BY hour ORDER BY hour",
        )
        .await;
    let expected: Vec<String> = (0..6)
        .map(|hour| {
            let max = (hour * 60..hour * 60 + 60)
                .map(|s| CpuData::usage_user(3, s))
                .max()
                .unwrap();
            format!("2016-01-01T0{hour}:00:00|{max}|60")
        })
        .collect();
    assert_eq!(got, expected);
    all.push(got);

    // ORDER BY with LIMIT across all shards.
    let got = c
        .query(
            "tsbs",
            "SELECT hostname, time, usage_idle FROM cpu \
             ORDER BY usage_user DESC, time ASC, hostname ASC LIMIT 3",
        )
        .await;
    let mut points: Vec<(i64, i64, String, f64)> = vec![];
    for h in 0..d.hosts {
        for s in 0..d.steps {
            let u = CpuData::usage_user(h, s);
            points.push((-u, d.time_s(s), format!("host_{h}"), (100 - u) as f64 + 0.5));
        }
    }
    points.sort_by(|a, b| (a.0, a.1, &a.2).cmp(&(b.0, b.1, &b.2)));
    let expected: Vec<String> = points[..3]
        .iter()
        .map(|(_, t, h, idle)| {
            let ts = chrono::DateTime::from_timestamp(*t, 0).unwrap().naive_utc();
            format!("{h}|{}|{idle}", ts.format("%Y-%m-%dT%H:%M:%S"))
        })
        .collect();
    assert_eq!(got, expected);
    all.push(got);

    // A subquery and a self-join run on the coordinator over fanned-out scans.
    let got = c
        .query(
            "tsbs",
            "SELECT count(*) FROM cpu WHERE usage_user > (SELECT avg(usage_user) FROM cpu)",
        )
        .await;
    let values: Vec<i64> = (0..d.hosts)
        .flat_map(|h| (0..d.steps).map(move |s| CpuData::usage_user(h, s)))
        .collect();
    let avg = values.iter().sum::<i64>() as f64 / values.len() as f64;
    let above = values.iter().filter(|v| **v as f64 > avg).count();
    assert_eq!(got, vec![above.to_string()]);
    all.push(got);

    let got = c
        .query(
            "tsbs",
            "SELECT count(*) FROM cpu a JOIN cpu b ON a.time = b.time AND a.hostname = 'host_0' \
             AND b.hostname = 'host_1' WHERE a.usage_user < b.usage_user",
        )
        .await;
    let expected = (0..d.steps)
        .filter(|s| CpuData::usage_user(0, *s) < CpuData::usage_user(1, *s))
        .count();
    assert_eq!(got, vec![expected.to_string()]);
    all.push(got);
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metadata_and_errors_are_clear() {
    let c = TestCluster::start().await;
    let (status, body) = c.write("meta", "s", "m,t=a v=1 1\n").await;
    assert_eq!(status, 204, "{body}");

    let got = c.query("meta", "SHOW TABLES").await;
    assert!(
        got.contains(&"strata|meta|m|BASE TABLE".to_string()),
        "{got:?}"
    );
    let got = c
        .query("meta", "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'm' ORDER BY column_name")
        .await;
    assert_eq!(
        got,
        vec![
            "t|Dictionary(Int32, Utf8)",
            "time|Timestamp(ns)",
            "v|Float64"
        ]
    );

    let mut sql = c.sql(Some("meta")).await;
    let e = sql
        .query("SELECT nope FROM m")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nope"), "{e}");
    let e = sql.query("SELEC 1").await.unwrap_err().to_string();
    assert!(e.contains("SELEC"), "{e}");
    let mut no_db = c.sql(None).await;
    let e = no_db
        .query("SELECT * FROM m")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("database"), "{e}");
    // A qualified name works without the header.
    assert_eq!(
        rows_of(&mut no_db, "SELECT count(*) FROM meta.m").await,
        vec!["1"]
    );
    let e = no_db
        .query("CREATE DATABASE bad RETENTION forever")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("forever"), "{e}");
}

async fn rows_of(c: &mut strata::sql_client::SqlClient, sql: &str) -> Vec<String> {
    crate::support::rows(&c.query(sql).await.expect("query"))
}
