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

/// Runs the `strata` binary with `args` off the test's runtime.
async fn strata(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || Command::new(strata_bin()).args(args).output().unwrap())
        .await
        .unwrap()
}

fn args(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// The whole TSBS-style loop through the binary: generate cpu-only data,
/// load it over HTTP, run all 15 query types over Flight SQL and check every
/// answer against DataFusion over the same data; then show that the check
/// fails when the reference data differ.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bench_generate_load_run_verifies_every_query_type() {
    let c = TestCluster::start().await;
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_string_lossy().to_string();
    // 8 hosts (cpu-max-all-8 needs them) over 12.5 h (the 12 h windows).
    let data = "--seed 123 --scale 8 --timestamp-start 2016-01-01T00:00:00Z \
                --timestamp-end 2016-01-01T12:30:00Z";

    let out = strata(args(&format!(
        "bench generate --use-case cpu-only {data} --format line-protocol --output {}",
        path("cpu.lp")
    )))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lp = std::fs::read_to_string(path("cpu.lp")).unwrap();
    assert_eq!(lp.lines().count(), 8 * 4500);
    assert!(lp.starts_with(
        "cpu,hostname=host_0,region=eu-central-1,datacenter=eu-central-1a,rack=6,os=Ubuntu15.10,\
         arch=x86,team=SF,service=19,service_version=1,service_environment=test usage_user=58i,"
    ));

    let out = strata(args(&format!(
        "bench load --file {} --url {} --db tsbs --workers 2 --batch-size 5000",
        path("cpu.lp"),
        c.http_url("")
    )))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let host = c.cluster().coordinator.flight_addr().to_string();
    let run = format!("bench run --host {host} --db tsbs {data} --queries 1 --workers 2");
    let out = strata(args(&format!(
        "{run} --verify {} --json {} --chart {}",
        path("cpu.lp"),
        path("report.json"),
        path("chart.svg")
    )))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for (name, _) in strata_benches::tsbs::queries::QUERY_TYPES {
        assert!(
            stdout.lines().any(|l| l.starts_with(&format!("{name} "))),
            "no row for {name}:\n{stdout}"
        );
    }
    assert_eq!(stdout.lines().last(), Some("mismatches: 0"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("report.json")).unwrap()).unwrap();
    assert_eq!(report["types"].as_array().unwrap().len(), 15);
    assert_eq!(report["overall"]["count"], 15);
    assert_eq!(report["mismatches"], 0);
    let svg = std::fs::read_to_string(path("chart.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("groupby-orderby-limit"));

    // Against other data (another seed, as Parquet) the answers differ,
    // and the run says so and fails.
    let out = strata(args(&format!(
        "bench generate {} --format parquet --output {}",
        data.replace("--seed 123", "--seed 124"),
        path("other.parquet")
    )))
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = strata(args(&format!(
        "{run} --query-type single-groupby-1-1-1,lastpoint --verify {}",
        path("other.parquet")
    )))
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("mismatches: 2"), "{stdout}");
    assert!(stderr.contains("MISMATCH lastpoint #0"), "{stderr}");

    // `bench queries` writes the same SQL as statements `strata sql -f` runs.
    let out = strata(args(&format!(
        "bench queries {data} --queries 2 --query-type lastpoint,high-cpu-1"
    )))
    .await;
    let sql = String::from_utf8_lossy(&out.stdout);
    assert_eq!(sql.matches("-- high-cpu-1\n").count(), 2, "{sql}");
    assert_eq!(sql.matches(";\n").count(), 4, "{sql}");
}
