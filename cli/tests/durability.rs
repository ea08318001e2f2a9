//! Acknowledged writes survive `kill -9` of a `strata dev` process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::support::{post, strata_bin, TestCluster};

struct DevProcess {
    child: Child,
    http: String,
    flight: String,
}

impl DevProcess {
    /// Starts `strata dev` on port 0 and waits for its ready line.
    fn start(dir: &std::path::Path) -> Self {
        let addr_file = dir.join("addrs.json");
        let _ = std::fs::remove_file(&addr_file);
        let mut child = Command::new(strata_bin())
            .args([
                "dev",
                "--http-addr",
                "127.0.0.1:0",
                "--flight-addr",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--addr-file")
            .arg(&addr_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn strata dev");
        let stdout = child.stdout.take().expect("stdout");
        let mut ready = false;
        for line in BufReader::new(stdout).lines() {
            if line.expect("read stdout") == "strata is ready" {
                ready = true;
                break;
            }
        }
        assert!(ready, "strata dev exited before it was ready");
        let addrs: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&addr_file).expect("addr file")).unwrap();
        Self {
            child,
            http: addrs["http"].as_str().unwrap().to_string(),
            flight: addrs["flight"].as_str().unwrap().to_string(),
        }
    }

    fn kill9(mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for DevProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    let (status, _) = c.write("r", "s", "m,t=c v=3i 3\n").await;
    assert_eq!(status, 204);
    c.restart().await;
    let got = c.query("r", "SELECT t, v FROM m ORDER BY t").await;
    assert_eq!(got, vec!["a|1", "b|2", "c|3"]);
    assert!(c.data_dir().join("catalog").exists());
}
