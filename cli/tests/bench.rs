//! `strata bench load` posts a line-protocol file with several workers and
//! reports what it loaded.

use std::process::Command;

use crate::support::{strata_bin, CpuData, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_load_posts_a_file_and_reports_rows_and_metrics() {
    let c = TestCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cpu.lp");
    let data = CpuData {
        hosts: 10,
        start_s: 1_451_606_400,
        interval_s: 10,
        steps: 50,
    };
    std::fs::write(&file, data.lines(0..data.steps)).unwrap();
    let url = c.http_url("");
    let run = |file: std::path::PathBuf, db: &'static str| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            Command::new(strata_bin())
                .args(["bench", "load", "--url", &url, "--db", db, "--workers", "3"])
                .args(["--batch-size", "64", "--precision", "s", "--file"])
                .arg(file)
                .output()
                .unwrap()
        })
    };
    let out = run(file.clone(), "bench").await.unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with("loaded 500 rows, 1500 metrics in "),
        "{stdout}"
    );
    assert!(
        stdout.contains(" rows/s, ") && stdout.contains(" metrics/s"),
        "{stdout}"
    );
    assert_eq!(
        c.query("bench", "SELECT count(*) FROM cpu").await,
        vec!["500"]
    );

    // A refused batch stops the load with the server's answer.
    let bad = dir.path().join("bad.lp");
    std::fs::write(&bad, "cpu,host=a v=1 1\ncpu,host=b v=oops 2\n").unwrap();
    let out = run(bad, "bench2").await.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused (400)") && stderr.contains("line 2"),
        "{stderr}"
    );
}
