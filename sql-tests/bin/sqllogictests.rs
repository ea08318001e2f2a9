//! Runs every `.slt` file under `sql-tests/test_files/` against an
//! in-process strata cluster through Flight SQL. Each file gets its own
//! database, sent as the `database` header.
//!
//! `cargo test -p strata-sql-tests` runs them all;
//! `cargo test -p strata-sql-tests -- FILTER` runs files whose path
//! contains FILTER; `-- --complete` rewrites the expected output.
//!
//! A file may set its database's options with a line
//! `# database-options: SHARD DURATION 1h SHARDS 2`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use sqllogictest::{default_column_validator, default_normalizer, default_validator, Runner};
use strata::dev::{DevCluster, DevConfig};
use strata::sql_client::SqlClient;
use strata_sql_tests::StrataDb;

fn slt_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for ent in rd.flatten() {
        let p = ent.path();
        if p.is_dir() {
            slt_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "slt") {
            out.push(p);
        }
    }
}

/// `time/functions.slt` → `time_functions`.
fn database_for(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .with_extension("")
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Options for the file's database, from a `# database-options: ...` line
/// (e.g. `SHARD DURATION 1h SHARDS 2`).
fn database_options(file: &Path) -> String {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("# database-options:"))
        .unwrap_or("")
        .trim()
        .to_string()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let complete = args.iter().any(|a| a == "--complete");
    // cargo test passes its own flags (e.g. --nocapture); keep plain words.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("test_files");
    let mut files = vec![];
    slt_files(&root, &mut files);
    files.sort();
    files.retain(|f| {
        filters.is_empty()
            || filters
                .iter()
                .any(|p| f.to_string_lossy().contains(p.as_str()))
    });

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(run(root, files, complete))
}

async fn run(root: PathBuf, files: Vec<PathBuf>, complete: bool) -> ExitCode {
    let dir = tempfile::tempdir().expect("temp dir");
    let cluster = DevCluster::start(DevConfig::ephemeral(dir.path()))
        .await
        .expect("start a dev cluster");
    let flight = cluster.coordinator.flight_addr().to_string();
    let http_base = format!("http://{}", cluster.coordinator.http_addr());

    let (mut passed, mut failed) = (0usize, 0usize);
    for file in &files {
        let database = database_for(&root, file);
        let mut admin = SqlClient::connect(&flight, None).await.expect("connect");
        admin
            .query(&format!(
                "CREATE DATABASE {database} {}",
                database_options(file)
            ))
            .await
            .expect("create the file's database");

        let (flight, http_base, db) = (flight.clone(), http_base.clone(), database.clone());
        let mut runner = Runner::new(move || {
            let (flight, http_base, database) = (flight.clone(), http_base.clone(), db.clone());
            async move {
                let sql = SqlClient::connect(&flight, Some(database.clone()))
                    .await
                    .map_err(|e| strata_sql_tests::SltError(e.to_string()))?;
                Ok(StrataDb {
                    sql,
                    http: reqwest::Client::new(),
                    http_base,
                    database,
                })
            }
        });
        let name = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
        let result = if complete {
            runner
                .update_test_file(
                    file,
                    " ",
                    default_validator,
                    default_normalizer,
                    default_column_validator,
                )
                .await
                .map_err(|e| e.to_string())
        } else {
            runner
                .run_file_async(file)
                .await
                .map_err(|e| e.display(true).to_string())
        };
        match result {
            Ok(()) => {
                passed += 1;
                println!("ok      {name}");
            }
            Err(e) => {
                failed += 1;
                println!("FAILED  {name}\n{e}\n");
            }
        }
    }
    cluster.shutdown().await;
    println!("\nsqllogictest: {passed} passed, {failed} failed");
    if failed == 0 && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
