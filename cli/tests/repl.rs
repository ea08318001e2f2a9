//! `strata sql` as users run it: `-c`, a script on stdin, output formats
//! and error text.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::{strata_bin, TestCluster};

fn run_sql(flight: &str, args: &[&str], stdin: &str) -> (bool, String, String) {
    let mut child = Command::new(strata_bin())
        .args(["sql", "--host", flight])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn strata sql");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sql_client_runs_commands_and_scripts() {
    let c = TestCluster::start().await;
    let (status, _) = c.write("repl", "s", "t,k=a v=1.5 1\nt,k=b v=2.5 2\n").await;
    assert_eq!(status, 204);
    let flight = c.cluster().coordinator.flight_addr().to_string();

    let (ok, out, err) = tokio::task::spawn_blocking({
        let flight = flight.clone();
        move || {
            run_sql(
                &flight,
                &["-d", "repl", "-c", "SELECT k, v FROM t ORDER BY k"],
                "",
            )
        }
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "+---+-----+\n| k | v   |\n+---+-----+\n| a | 1.5 |\n| b | 2.5 |\n+---+-----+\n(2 rows)\n"
    );

    // A multi-line script on stdin, a backslash command, CSV output.
    let script = "SELECT k,\n  v * 2 AS doubled\nFROM t\nWHERE k = 'b';\n\\l\n";
    let (ok, out, err) = tokio::task::spawn_blocking({
        let flight = flight.clone();
        move || run_sql(&flight, &["-d", "repl", "--format", "csv"], script)
    })
    .await
    .unwrap();
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "k,doubled\nb,5.0\nname,retention,shard_group_duration,replication_factor,shards,shard_key,consistency\nrepl,,1w,1,,,one\n"
    );

    // Errors go to stderr with the server's words, and the exit code says so.
    let (ok, _, err) = tokio::task::spawn_blocking(move || {
        run_sql(&flight, &["-d", "repl", "-c", "SELECT missing FROM t"], "")
    })
    .await
    .unwrap();
    assert!(!ok);
    assert!(err.contains("ERROR") && err.contains("missing"), "{err}");
}
