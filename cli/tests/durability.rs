//! Acknowledged writes survive `kill -9` of a `strata dev` process.

use crate::support::{post, walk, ServerProcess, TestCluster};

/// A `strata dev` child process on port 0.
struct DevProcess {
    process: ServerProcess,
    http: String,
    flight: String,
}

impl DevProcess {
    fn start(dir: &std::path::Path) -> Self {
        let data = dir.join("data");
        let (process, addrs) = ServerProcess::start(
            &[
                "dev",
                "--http-addr",
                "127.0.0.1:0",
                "--flight-addr",
                "127.0.0.1:0",
                "--data-dir",
                data.to_str().unwrap(),
            ],
            &dir.join("addrs.json"),
        );
        Self {
            process,
            http: addrs["http"].as_str().unwrap().to_string(),
            flight: addrs["flight"].as_str().unwrap().to_string(),
        }
    }

    fn kill9(self) {
        self.process.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut acked_rows = 0u64;
    let mut acked_sum = 0i64;
    for round in 0..3 {
        let p = DevProcess::start(dir.path());
        // Write batches and kill while later ones may still be in flight.
        for batch in 0..10 {
            let mut body = String::new();
            let mut sum = 0;
            for i in 0..200i64 {
                let v = round * 10_000 + batch * 200 + i;
                body.push_str(&format!("k,host=h{} v={v}i {}\n", i % 7, 1_600_000_000 + v));
                sum += v;
            }
            let url = format!("http://{}/write?db=kill&precision=s", p.http);
            let (status, resp) = post(&http, &url, body.into_bytes(), None).await;
            assert_eq!(status, 204, "{resp}");
            acked_rows += 200;
            acked_sum += sum;
        }
        let url = format!("http://{}/write?db=kill&precision=s", p.http);
        let unacked = tokio::spawn({
            let http = http.clone();
            async move { post(&http, &url, b"k,host=x v=1i 1".to_vec(), None).await }
        });
        p.kill9();
        let _ = unacked.await;

        let p = DevProcess::start(dir.path());
        let mut sql = strata::sql_client::SqlClient::connect(&p.flight, Some("kill".into()))
            .await
            .unwrap();
        let got = crate::support::rows(
            &sql.query("SELECT count(*), sum(v) FROM k WHERE host != 'x'")
                .await
                .unwrap(),
        );
        assert_eq!(
            got,
            vec![format!("{acked_rows}|{acked_sum}")],
            "round {round}"
        );
        p.kill9();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushed_and_unflushed_rows_survive_a_restart() {
    let mut c = TestCluster::start().await;
    let (status, _) = c.write("r", "s", "m,t=a v=1i 1\nm,t=b v=2i 2\n").await;
    assert_eq!(status, 204);
    for node in &c.cluster().storage {
        node.engine().flush().await.unwrap();
    }
    // c is new; b is a retried write of a flushed point, with a new value.
    let (status, _) = c.write("r", "s", "m,t=c v=3i 3\nm,t=b v=20i 2\n").await;
    assert_eq!(status, 204);
    c.restart().await;
    let got = c.query("r", "SELECT t, v FROM m ORDER BY t").await;
    assert_eq!(got, vec!["a|1", "b|20", "c|3"]);
    assert!(c.data_dir().join("catalog").exists());
}

/// Twenty SIGKILLs at random moments while a writer streams batches and
/// the nodes flush and compact every few hundred rows: after each restart
/// every acknowledged row is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_rows_survive_kills_during_flush_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next_random = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut acked: u64 = 0; // batches 0..acked are acknowledged
                            // Twenty killed runs, then one more start that only checks.
    for cycle in 0..=20 {
        let (process, addrs) = ServerProcess::start(
            &[
                "dev",
                "--http-addr",
                "127.0.0.1:0",
                "--flight-addr",
                "127.0.0.1:0",
                "--flush-rows",
                "300",
                "--data-dir",
                dir.path().join("data").to_str().unwrap(),
            ],
            &dir.path().join("addrs.json"),
        );
        let url = format!(
            "http://{}/write?db=chaos&precision=s",
            addrs["http"].as_str().unwrap()
        );
        let flight = addrs["flight"].as_str().unwrap().to_string();

        // Everything acknowledged before this start is still there, once.
        let mut sql = strata::sql_client::SqlClient::connect(&flight, Some("chaos".into()))
            .await
            .unwrap();
        if acked > 0 {
            let got = crate::support::rows(
                &sql.query(&format!(
                    "SELECT count(*), count(DISTINCT batch * 1000 + i) FROM k WHERE batch < {acked}"
                ))
                .await
                .unwrap(),
            );
            assert_eq!(
                got,
                vec![format!("{}|{}", acked * 100, acked * 100)],
                "cycle {cycle}"
            );
        }

        // Write until killed.
        let writer = tokio::spawn({
            let http = http.clone();
            let start = acked;
            async move {
                let mut done = start;
                loop {
                    let mut body = String::new();
                    for i in 0..100u64 {
                        body.push_str(&format!(
                            "k,host=h{} batch={done}i,i={i}i {}\n",
                            i % 5,
                            1_600_000_000 + done * 100 + i
                        ));
                    }
                    let resp = http.post(&url).body(body).send().await;
                    match resp {
                        Ok(r) if r.status().as_u16() == 204 => done += 1,
                        _ => return done,
                    }
                }
            }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50 + next_random(400))).await;
        process.kill9();
        acked = writer.await.unwrap();
    }
    assert!(acked > 20, "the writer made progress: {acked} batches");
    // The runs flushed (and so compacted) along the way.
    let parquet_files = walk(&dir.path().join("data"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    assert!(parquet_files > 0, "no flush happened");
}
