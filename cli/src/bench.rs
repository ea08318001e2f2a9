//! `strata bench`: the TSBS-style harness. `generate` writes TSBS cpu-only
//! data, `queries` writes the query types as SQL, `load` posts line
//! protocol to an InfluxDB-v1-compatible endpoint, `run` times the queries
//! over Flight SQL (and with `--verify` checks every answer), `chart` draws
//! median latencies of one or more runs.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arrow::record_batch::RecordBatch;
use clap::{Args, Subcommand};
use strata_benches::tsbs::cpu_only::{CpuOnlyConfig, CpuOnlySimulator};
use strata_benches::tsbs::queries::{Query, QueryGenerator, QUERY_TYPES};
use strata_benches::tsbs::run::{render_table, run_type, QueryExecutor, RunReport, TypeStats};
use strata_benches::tsbs::verify::{compare, Reference};
use strata_benches::tsbs::{chart, output};
use strata_coordinator::query::ddl::parse_duration;

use crate::sql_client::SqlClient;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Generate TSBS data (byte for byte what `tsbs_generate_data` writes
    /// for the same flags).
    Generate(GenerateArgs),
    /// Write the TSBS cpu-only query types as SQL (runnable with
    /// `strata sql -f`).
    Queries(QueriesArgs),
    /// Post a line-protocol file to an InfluxDB v1 compatible `/write`
    /// endpoint (strata or InfluxDB) and report rows/s and metrics/s.
    Load(LoadArgs),
    /// Run the TSBS cpu-only query types over Flight SQL and report
    /// latencies per type.
    Run(RunArgs),
    /// Draw median latency per query type of one or more `run --json`
    /// reports as an SVG bar chart.
    Chart(ChartArgs),
    /// Kill the catalog leader of a three-member catalog under a DDL
    /// stream; print the time to the next acknowledged DDL and DDL lost.
    CatalogFailover(crate::failover_bench::FailoverArgs),
}

/// The data set's shape, shared by `generate`, `queries` and `run`.
#[derive(Args, Clone)]
pub struct DataSetArgs {
    /// Number of hosts.
    #[arg(long, default_value_t = 1)]
    scale: u64,
    /// First timestamp (RFC 3339).
    #[arg(long, default_value = "2016-01-01T00:00:00Z")]
    timestamp_start: String,
    /// End of the data (RFC 3339, exclusive).
    #[arg(long, default_value = "2016-01-02T00:00:00Z")]
    timestamp_end: String,
    /// Seed of Go's random number generator, as TSBS takes it; 0 picks one
    /// from the clock (and prints it).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    seed: i64,
}

impl DataSetArgs {
    fn range_ns(&self) -> Result<(i64, i64), String> {
        let start = parse_time(&self.timestamp_start, "--timestamp-start")?;
        let end = parse_time(&self.timestamp_end, "--timestamp-end")?;
        if end <= start {
            return Err(format!(
                "--timestamp-end {} is not after --timestamp-start {}",
                self.timestamp_end, self.timestamp_start
            ));
        }
        if self.scale == 0 {
            return Err("--scale must be at least 1".into());
        }
        Ok((start, end))
    }

    /// The seed to use: the given one, or (for 0) one from the clock, as
    /// TSBS does; reported on stderr so that the run can be repeated.
    fn seed(&self) -> i64 {
        if self.seed != 0 {
            return self.seed;
        }
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as i64)
            .unwrap_or(1)
            .max(1);
        eprintln!("using seed {seed}");
        seed
    }
}

fn parse_time(s: &str, flag: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| {
            format!("{flag} '{s}' is not an RFC 3339 time ({e}); e.g. 2016-01-01T00:00:00Z")
        })?
        .timestamp_nanos_opt()
        .ok_or_else(|| format!("{flag} '{s}' is outside the nanosecond range (1677–2262)"))
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Only `cpu-only` is supported.
    #[arg(long, default_value = "cpu-only")]
    use_case: String,
    #[command(flatten)]
    data: DataSetArgs,
    /// Hosts reporting at the start; the rest join linearly (0 = all).
    #[arg(long, default_value_t = 0)]
    initial_scale: u64,
    /// Time between two rows of a host.
    #[arg(long, default_value = "10s")]
    log_interval: String,
    /// Stop after this many points (0 = no limit).
    #[arg(long, default_value_t = 0)]
    max_data_points: u64,
    /// `line-protocol` (TSBS's `influx`) or `parquet`.
    #[arg(long, default_value = "line-protocol")]
    format: String,
    /// Output file; standard output when absent.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
pub struct QueriesArgs {
    #[command(flatten)]
    data: DataSetArgs,
    /// Queries per type.
    #[arg(long, default_value_t = 1000)]
    queries: usize,
    /// Query types, comma separated (default: all 15).
    #[arg(long, value_delimiter = ',')]
    query_type: Vec<String>,
    /// Output file; standard output when absent.
    #[arg(long)]
    output: Option<PathBuf>,
}

#[derive(Args)]
pub struct LoadArgs {
    /// Line-protocol file; `-` reads stdin.
    #[arg(long)]
    file: PathBuf,
    /// Base URL of the endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8086")]
    url: String,
    #[arg(long)]
    db: String,
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Lines per request.
    #[arg(long, default_value_t = 10_000)]
    batch_size: usize,
    /// Precision of the file's timestamps.
    #[arg(long, default_value = "ns")]
    precision: String,
    /// Write consistency of every request (`any`, `one`, `quorum`, `all`;
    /// default: the database's).
    #[arg(long)]
    consistency: Option<String>,
    /// Token to send, when the server requires one.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    /// Flight SQL address.
    #[arg(long, default_value = "127.0.0.1:8082")]
    host: String,
    #[arg(long)]
    db: String,
    /// Token to send, when the server requires one.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(flatten)]
    data: DataSetArgs,
    /// Queries per type.
    #[arg(long, default_value_t = 100)]
    queries: usize,
    /// Query types, comma separated (default: all 15).
    #[arg(long, value_delimiter = ',')]
    query_type: Vec<String>,
    /// Concurrent connections.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Check every answer against DataFusion over this file of the loaded
    /// data (line protocol or Parquet from `bench generate`).
    #[arg(long)]
    verify: Option<PathBuf>,
    /// Also time every query on the reference engine of `--verify`
    /// (in-process DataFusion over one Parquet file of the same rows) with
    /// the same workers, and print both side by side.
    #[arg(long, requires = "verify")]
    compare: bool,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write an SVG chart of median latency per type.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Name of the engine in reports and charts.
    #[arg(long, default_value = "strata")]
    engine: String,
    /// Settings for every query, sent as a leading `/*+ HINT */` comment
    /// (e.g. "strata.last_value_cache = false").
    #[arg(long)]
    hint: Option<String>,
}

#[derive(Args)]
pub struct ChartArgs {
    /// Reports written by `bench run --json`.
    #[arg(required = true)]
    reports: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long)]
    output: PathBuf,
}

pub async fn run(command: BenchCommand) -> Result<(), String> {
    match command {
        BenchCommand::Generate(a) => generate(a),
        BenchCommand::Queries(a) => queries(a),
        BenchCommand::Load(a) => load(a).await,
        BenchCommand::Run(a) => run_queries(a).await,
        BenchCommand::Chart(a) => draw_chart(a),
        BenchCommand::CatalogFailover(a) => crate::failover_bench::run(a).await,
    }
}

fn create(path: &PathBuf) -> Result<BufWriter<File>, String> {
    File::create(path)
        .map(|f| BufWriter::with_capacity(1 << 20, f))
        .map_err(|e| format!("cannot create {}: {e}", path.display()))
}

fn generate(a: GenerateArgs) -> Result<(), String> {
    if a.use_case != "cpu-only" {
        return Err(format!(
            "use case '{}' is not supported; strata generates cpu-only",
            a.use_case
        ));
    }
    let (start_ns, end_ns) = a.data.range_ns()?;
    let interval_ns =
        parse_duration(&a.log_interval).map_err(|e| format!("--log-interval: {e}"))?;
    let config = CpuOnlyConfig {
        seed: a.data.seed(),
        scale: a.data.scale,
        initial_scale: a.initial_scale,
        start_ns,
        end_ns,
        interval_ns,
        max_points: a.max_data_points,
    };
    let mut sim = CpuOnlySimulator::new(&config);
    let mut out: Box<dyn Write + Send> = match &a.output {
        Some(p) => Box::new(create(p)?),
        None => Box::new(BufWriter::with_capacity(1 << 20, std::io::stdout())),
    };
    let rows = match a.format.as_str() {
        "line-protocol" | "influx" => output::write_line_protocol(&mut sim, &mut out),
        "parquet" => output::write_parquet(&mut sim, &mut out),
        other => {
            return Err(format!(
                "--format '{other}' is not supported: use line-protocol or parquet"
            ))
        }
    }
    .map_err(|e| e.to_string())?;
    out.flush()
        .map_err(|e| format!("writing the output: {e}"))?;
    if a.output.is_some() {
        eprintln!("generated {rows} rows, {} metrics", rows * 10);
    }
    Ok(())
}

/// The requested query types, checked, in TSBS's order.
fn query_types(requested: &[String]) -> Result<Vec<&'static str>, String> {
    if requested.is_empty() {
        return Ok(QUERY_TYPES.iter().map(|(n, _)| *n).collect());
    }
    for r in requested {
        if !QUERY_TYPES.iter().any(|(n, _)| n == r) {
            return Err(format!(
                "unknown query type '{r}'; the cpu-only types are: {}",
                QUERY_TYPES.map(|(n, _)| n).join(", ")
            ));
        }
    }
    Ok(QUERY_TYPES
        .iter()
        .map(|(n, _)| *n)
        .filter(|n| requested.iter().any(|r| r == n))
        .collect())
}

fn generate_queries(
    data: &DataSetArgs,
    seed: i64,
    types: &[&'static str],
    per_type: usize,
) -> Result<Vec<(&'static str, Vec<Query>)>, String> {
    let (start_ns, end_ns) = data.range_ns()?;
    let generator = QueryGenerator::for_data(seed, data.scale, start_ns, end_ns);
    types
        .iter()
        .map(|t| {
            generator
                .generate(t, per_type)
                .map(|q| (*t, q))
                .map_err(|e| e.to_string())
        })
        .collect()
}

fn queries(a: QueriesArgs) -> Result<(), String> {
    let types = query_types(&a.query_type)?;
    let all = generate_queries(&a.data, a.data.seed(), &types, a.queries)?;
    let stdout = std::io::stdout();
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => Box::new(create(p)?),
        None => Box::new(stdout.lock()),
    };
    for (t, qs) in all {
        for q in qs {
            writeln!(out, "-- {t}\n{};", q.sql).map_err(|e| format!("writing queries: {e}"))?;
        }
    }
    out.flush().map_err(|e| format!("writing queries: {e}"))
}

async fn load(a: LoadArgs) -> Result<(), String> {
    let mut config = strata_benches::load::LoadConfig {
        url: a.url,
        db: a.db,
        workers: a.workers,
        batch_size: a.batch_size,
        precision: a.precision,
        progress_every: Some(Duration::from_secs(1)),
        total_bytes: None,
        consistency: a.consistency,
        token: a.token,
    };
    let summary = if a.file.as_os_str() == "-" {
        strata_benches::load::load(&config, BufReader::new(std::io::stdin())).await
    } else {
        let file =
            File::open(&a.file).map_err(|e| format!("cannot open {}: {e}", a.file.display()))?;
        config.total_bytes = file.metadata().ok().map(|m| m.len());
        strata_benches::load::load(&config, BufReader::with_capacity(1 << 20, file)).await
    }
    .map_err(|e| e.to_string())?;
    println!("{summary}");
    Ok(())
}

impl QueryExecutor for SqlClient {
    async fn execute(&mut self, sql: &str) -> Result<Vec<RecordBatch>, String> {
        self.query(sql).await.map_err(|e| e.to_string())
    }
}

/// Mismatches printed in full; the rest are only counted.
const MISMATCHES_SHOWN: u64 = 5;

async fn run_queries(a: RunArgs) -> Result<(), String> {
    if a.workers == 0 {
        return Err("--workers must be at least 1".into());
    }
    let types = query_types(&a.query_type)?;
    let seed = a.data.seed();
    let mut all = generate_queries(&a.data, seed, &types, a.queries)?;
    if let Some(hint) = &a.hint {
        for q in all.iter_mut().flat_map(|(_, qs)| qs.iter_mut()) {
            q.sql = format!("/*+ {hint} */ {}", q.sql);
        }
    }
    // Open the reference first: a bad --verify file should fail before
    // the timed run, not after it.
    let reference = match &a.verify {
        Some(path) => {
            eprintln!("preparing the reference copy of {}", path.display());
            Some(Arc::new(
                Reference::open(path).await.map_err(|e| e.to_string())?,
            ))
        }
        None => None,
    };
    let mut executors = Vec::with_capacity(a.workers);
    for _ in 0..a.workers {
        let mut client = SqlClient::connect(&a.host, Some(a.db.clone()))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(t) = &a.token {
            client.set_token(t);
        }
        executors.push(client);
    }
    let mut stats = Vec::new();
    let mut latencies = Vec::new();
    let mut wall = Duration::ZERO;
    for (t, qs) in &all {
        let (s, back, l) = run_type(t, qs.clone(), executors)
            .await
            .map_err(|e| e.to_string())?;
        executors = back;
        eprintln!(
            "{t}: {} queries, median {:.2} ms, {:.2} queries/s",
            s.count,
            s.median_ms,
            s.count as f64 / s.wall_seconds
        );
        wall += Duration::from_secs_f64(s.wall_seconds);
        latencies.extend(l);
        stats.push(s);
    }
    let rows = stats.iter().map(|s| s.rows).sum();
    let overall = TypeStats::from_latencies("all queries", &latencies, rows, wall);
    let mismatches = match &reference {
        Some(r) => Some(verify(r, &mut executors[0], &all).await?),
        None => None,
    };
    let reference_stats = match (&reference, a.compare) {
        (Some(r), true) => Some(time_reference(r.clone(), a.workers, &all).await?),
        _ => None,
    };
    let report = RunReport {
        engine: a.engine,
        workers: a.workers,
        scale: a.data.scale,
        seed,
        queries_per_second: overall.count as f64 / overall.wall_seconds.max(1e-9),
        overall,
        types: stats,
        mismatches,
        reference: reference_stats,
    };
    print!("{}", render_table(&report));
    if let Some(path) = &a.json {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    if let Some(path) = &a.chart {
        std::fs::write(path, chart::render_svg(std::slice::from_ref(&report)))
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    match mismatches {
        Some(n) if n > 0 => Err(format!("{n} answers differ from the reference")),
        _ => Ok(()),
    }
}

/// One worker's handle on the reference engine.
struct ReferenceWorker(Arc<Reference>);

impl QueryExecutor for ReferenceWorker {
    async fn execute(&mut self, sql: &str) -> Result<Vec<RecordBatch>, String> {
        self.0.query(sql).await.map_err(|e| e.to_string())
    }
}

/// Runs every type's queries on the reference engine as on strata.
async fn time_reference(
    reference: Arc<Reference>,
    workers: usize,
    all: &[(&'static str, Vec<Query>)],
) -> Result<Vec<TypeStats>, String> {
    let mut executors: Vec<ReferenceWorker> = (0..workers)
        .map(|_| ReferenceWorker(reference.clone()))
        .collect();
    let mut stats = vec![];
    for (t, qs) in all {
        let (s, back, _) = run_type(t, qs.clone(), executors)
            .await
            .map_err(|e| format!("on the reference: {e}"))?;
        eprintln!("{t} on the reference: median {:.2} ms", s.median_ms);
        executors = back;
        stats.push(s);
    }
    Ok(stats)
}

/// Runs every query again, untimed, on strata and on the reference and
/// compares the answers; returns how many differ.
async fn verify(
    reference: &Reference,
    strata: &mut SqlClient,
    all: &[(&'static str, Vec<Query>)],
) -> Result<u64, String> {
    let mut mismatches = 0;
    for (t, qs) in all {
        for (i, q) in qs.iter().enumerate() {
            let got = strata
                .execute(&q.sql)
                .await
                .map_err(|e| format!("{t}: {e}"))?;
            let want = reference
                .query(&q.sql)
                .await
                .map_err(|e| format!("{t} on the reference: {e}\n  query: {}", q.sql))?;
            if let Err(diff) = compare(&q.sql, &got, &want) {
                mismatches += 1;
                if mismatches <= MISMATCHES_SHOWN {
                    eprintln!("MISMATCH {t} #{i}: {diff}\n  query: {}", q.sql);
                }
            }
        }
    }
    Ok(mismatches)
}

fn draw_chart(a: ChartArgs) -> Result<(), String> {
    let mut reports = Vec::new();
    for p in &a.reports {
        let text =
            std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let report: RunReport = serde_json::from_str(&text)
            .map_err(|e| format!("{} is not a `bench run --json` report: {e}", p.display()))?;
        reports.push(report);
    }
    std::fs::write(&a.output, chart::render_svg(&reports))
        .map_err(|e| format!("cannot write {}: {e}", a.output.display()))
}
