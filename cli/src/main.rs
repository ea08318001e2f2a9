//! The `strata` command: `dev` (embedded one-process cluster), the server
//! roles `catalog`, `storage`, `coordinator`, and the `sql` client.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use strata::cluster_auth::ClusterAuthArgs;
use strata::config::{ConfigError, ConfigFile};
use strata::dev::{DevCluster, DevConfig};
use strata::sql_client::{self, OutputFormat, Session, SqlClient};
use strata_catalog::{CatalogConfig, CatalogServer};
use strata_coordinator::handoff::HandoffConfig;
use strata_coordinator::tls::TlsFiles;
use strata_coordinator::write_router::DEFAULT_OWNER_TIMEOUT;
use strata_coordinator::{Coordinator, CoordinatorConfig};
use strata_storage::memory::{MemoryLimits, QueryMemory};
use strata_storage::wal::{Recovery, SyncPolicy};
use strata_storage::{EngineConfig, StorageConfig, StorageNode};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "strata: a distributed SQL database for time series"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as `text` or `json` (one object per line, with the span
    /// fields: a query's `query_id` on the coordinator and the nodes).
    #[arg(long, global = true, env = "STRATA_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole cluster in one process on a local data directory.
    Dev(DevArgs),
    /// Run a catalog (Raft) node.
    Catalog(CatalogArgs),
    /// Run a storage node.
    Storage(StorageArgs),
    /// Run a coordinator (HTTP and Flight SQL front doors).
    Coordinator(CoordinatorArgs),
    /// Interactive SQL over Flight SQL.
    Sql(SqlArgs),
    /// Operator commands: catalog membership.
    #[command(subcommand)]
    Admin(strata::admin::AdminCommand),
    /// Benchmark tools (TSBS-style).
    #[command(subcommand)]
    Bench(strata::bench::BenchCommand),
}

#[derive(Args)]
struct DevArgs {
    #[arg(long, default_value = "./strata-data", env = "STRATA_DATA_DIR")]
    data_dir: PathBuf,
    /// HTTP address: line protocol writes, SQL over HTTP, health.
    #[arg(long, default_value = "127.0.0.1:8086", env = "STRATA_HTTP_ADDR")]
    http_addr: String,
    /// Flight SQL address.
    #[arg(long, default_value = "127.0.0.1:8082", env = "STRATA_FLIGHT_ADDR")]
    flight_addr: String,
    #[arg(long, default_value_t = 3)]
    storage_nodes: u32,
    /// Catalog members (Raft voters) to run: 1, 3 or 5.
    #[arg(long, default_value_t = 1)]
    catalog_voters: u32,
    /// Flush a storage node's memtables to Parquet at this many rows.
    #[arg(long)]
    flush_rows: Option<usize>,
    /// Refuse writes that would give a database more series than this on
    /// one storage node (default 1,000,000; 0 for no limit).
    #[arg(long)]
    max_series_per_database: Option<usize>,
    /// Memory the coordinator's in-flight writes may hold, in MiB; past it
    /// writes are answered 503 with Retry-After.
    #[arg(long, default_value_t = DEFAULT_WRITE_MEMORY_MIB)]
    write_memory_limit_mib: usize,
    #[command(flatten)]
    writes: WriteArgs,
    #[command(flatten)]
    queries: QueryArgs,
    /// Require tokens from clients (and a cluster secret between the
    /// roles, kept in <data-dir>/cluster-secret). The first start makes an
    /// admin token and prints it once, unless --admin-token gives one.
    #[arg(long)]
    auth: bool,
    /// With --auth: the admin token (admin on every database) to create
    /// when the catalog does not hold it yet.
    #[arg(
        long,
        env = "STRATA_ADMIN_TOKEN",
        hide_env_values = true,
        requires = "auth"
    )]
    admin_token: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    /// With --tls-cert: the catalog and storage nodes serve TLS too, and
    /// the roles call each other trusting this CA certificate (PEM).
    #[arg(long, requires = "tls_cert")]
    cluster_tls_ca: Option<PathBuf>,
    /// Write the bound addresses as JSON to this file once ready.
    #[arg(long)]
    addr_file: Option<PathBuf>,
}

const DEFAULT_WRITE_MEMORY_MIB: usize = strata_coordinator::http::DEFAULT_WRITE_MEMORY_BYTES >> 20;

#[derive(Args)]
struct CatalogArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, env = "STRATA_NODE_ID")]
    node_id: Option<u64>,
    #[arg(long, env = "STRATA_DATA_DIR")]
    data_dir: Option<String>,
    #[arg(long, env = "STRATA_LISTEN")]
    listen: Option<String>,
    /// Address peers use to reach this node (default: the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Start a new single-voter cluster when this node has no state yet.
    #[arg(long)]
    bootstrap: bool,
    /// Join the cluster these members (`host:port[,...]`) belong to: as a
    /// learner first, as a voter once caught up. Harmless on a restart.
    #[arg(long)]
    join: Option<String>,
    /// How often the leader drops shard groups past their retention
    /// (e.g. `1m`).
    #[arg(long)]
    retention_check_interval: Option<String>,
    #[command(flatten)]
    auth: ClusterAuthArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[arg(long)]
    addr_file: Option<PathBuf>,
}

#[derive(Args)]
struct StorageArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, env = "STRATA_NODE_ID")]
    node_id: Option<u64>,
    #[arg(long, env = "STRATA_DATA_DIR")]
    data_dir: Option<String>,
    #[arg(long, env = "STRATA_LISTEN")]
    listen: Option<String>,
    #[arg(long)]
    advertise: Option<String>,
    /// The catalog's members, `host:port[,host:port...]`.
    #[arg(long, env = "STRATA_CATALOG")]
    catalog: Option<String>,
    /// `always` (fsync before acknowledging, the default) or an interval
    /// such as `100ms` (acknowledge, then fsync within the interval).
    #[arg(long)]
    wal_sync: Option<String>,
    /// `strict` (default) or `skip-corrupt`.
    #[arg(long)]
    wal_recovery: Option<String>,
    /// Refuse writes ("slow down", HTTP 503) while this many MiB wait in
    /// memory to be flushed.
    #[arg(long)]
    memory_limit_mib: Option<usize>,
    /// Flush memtables to Parquet at this many rows.
    #[arg(long)]
    flush_rows: Option<usize>,
    /// Refuse writes that would give a database more series than this on
    /// this node (default 1,000,000; 0 for no limit).
    #[arg(long)]
    max_series_per_database: Option<usize>,
    #[command(flatten)]
    queries: QueryMemoryArgs,
    /// How often to tell the catalog this node is alive (e.g. `1s`).
    #[arg(long)]
    heartbeat_interval: Option<String>,
    /// The catalog marks this node down after this long without a
    /// heartbeat (e.g. `10s`).
    #[arg(long)]
    heartbeat_timeout: Option<String>,
    #[command(flatten)]
    auth: ClusterAuthArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[arg(long)]
    addr_file: Option<PathBuf>,
}

#[derive(Args)]
struct CoordinatorArgs {
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long, env = "STRATA_HTTP_ADDR")]
    http_addr: Option<String>,
    #[arg(long, env = "STRATA_FLIGHT_ADDR")]
    flight_addr: Option<String>,
    /// The catalog's members, `host:port[,host:port...]`.
    #[arg(long, env = "STRATA_CATALOG")]
    catalog: Option<String>,
    /// Memory in-flight writes may hold, in MiB (503 with Retry-After past it).
    #[arg(long, default_value_t = DEFAULT_WRITE_MEMORY_MIB)]
    write_memory_limit_mib: usize,
    /// Where this coordinator keeps writes for shard owners that could not
    /// take them (hinted handoff); one directory per coordinator
    /// [default: ./strata-data/coordinator].
    #[arg(long, env = "STRATA_DATA_DIR")]
    data_dir: Option<String>,
    #[command(flatten)]
    writes: WriteArgs,
    #[command(flatten)]
    queries: QueryArgs,
    /// Clients need a token (see `strata admin token`) unless
    /// --without-auth is given.
    #[command(flatten)]
    auth: ClusterAuthArgs,
    #[command(flatten)]
    tls: TlsArgs,
    #[arg(long)]
    addr_file: Option<PathBuf>,
}

/// TLS on the front doors (HTTP and Flight SQL).
#[derive(Args)]
struct TlsArgs {
    /// Serve HTTPS and Flight SQL over TLS (grpc+tls://) with this
    /// certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "STRATA_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "STRATA_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn files(self, f: &ConfigFile) -> Result<Option<TlsFiles>, String> {
        let cert: Option<String> = f
            .pick_opt(self.tls_cert.map(|p| p.display().to_string()), "tls_cert")
            .map_err(|e| e.0)?;
        let key: Option<String> = f
            .pick_opt(self.tls_key.map(|p| p.display().to_string()), "tls_key")
            .map_err(|e| e.0)?;
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.into(),
                key: key.into(),
            })),
            (None, None) => Ok(None),
            _ => Err("--tls-cert and --tls-key go together".into()),
        }
    }
}

/// How much memory queries may hold.
#[derive(Args)]
struct QueryMemoryArgs {
    /// Memory one query may hold, in MiB (on a storage node: one query's
    /// fragment); past it sorts, aggregates and joins spill to disk, and
    /// what cannot spill fails with "resources exhausted" [default: 1024].
    #[arg(long)]
    query_memory_limit_mib: Option<usize>,
    /// Memory all running queries together may hold, in MiB [default: half
    /// of the machine's memory].
    #[arg(long)]
    query_memory_total_mib: Option<usize>,
}

impl QueryMemoryArgs {
    fn limits(self, f: &ConfigFile) -> Result<MemoryLimits, String> {
        let mut limits = MemoryLimits::default();
        let mib = |flag: &str, v: usize| {
            if !(1..=1 << 30).contains(&v) {
                return Err(format!(
                    "{flag} must be a whole number of MiB, at least 1, not {v}"
                ));
            }
            Ok(v << 20)
        };
        if let Some(v) = f
            .pick_opt(self.query_memory_limit_mib, "query_memory_limit_mib")
            .map_err(|e| e.0)?
        {
            limits.per_query = Some(mib("--query-memory-limit-mib", v)?);
        }
        if let Some(v) = f
            .pick_opt(self.query_memory_total_mib, "query_memory_total_mib")
            .map_err(|e| e.0)?
        {
            limits.total = Some(mib("--query-memory-total-mib", v)?);
        }
        Ok(limits)
    }
}

/// Limits of the queries a coordinator runs.
#[derive(Args)]
struct QueryArgs {
    #[command(flatten)]
    memory: QueryMemoryArgs,
    /// How long a query may run before it is cancelled, e.g. `5m`; `off`
    /// for no limit. A statement sets its own with the hint
    /// `/*+ strata.statement_timeout = '30s' */` [default: off].
    #[arg(long)]
    query_timeout: Option<String>,
}

impl QueryArgs {
    fn apply(self, f: &ConfigFile) -> Result<(MemoryLimits, Option<std::time::Duration>), String> {
        let timeout = match f
            .pick_opt(self.query_timeout, "query_timeout")
            .map_err(|e| e.0)?
        {
            None => None,
            Some(t) if t == "off" || t == "0" => None,
            Some(t) => {
                Some(duration_flag("--query-timeout", t).map_err(|e| format!("{e}, or 'off'"))?)
            }
        };
        Ok((self.memory.limits(f)?, timeout))
    }
}

impl WriteSettings {
    fn of(c: &CoordinatorConfig) -> Self {
        Self {
            timeout: c.write_timeout,
            handoff: c.handoff.clone(),
            anti_entropy_interval: c.anti_entropy_interval,
            anti_entropy_share: c.anti_entropy_share,
        }
    }

    fn set(self, c: &mut CoordinatorConfig) {
        c.write_timeout = self.timeout;
        c.handoff = self.handoff;
        c.anti_entropy_interval = self.anti_entropy_interval;
        c.anti_entropy_share = self.anti_entropy_share;
    }
}

/// How a coordinator routes writes to shard owners.
#[derive(Args)]
struct WriteArgs {
    /// How long one shard owner has to take a write before the write is
    /// queued for it (hinted handoff), e.g. `10s`.
    #[arg(long)]
    write_timeout: Option<String>,
    /// Bytes of queued writes one storage node may have waiting on this
    /// coordinator, in MiB; past it writes for the node are refused.
    #[arg(long)]
    hinted_handoff_max_mib: Option<u64>,
    /// Age of a node's oldest queued write past which new writes for it
    /// are refused, e.g. `168h`.
    #[arg(long)]
    hinted_handoff_max_age: Option<String>,
    /// How often background anti-entropy compares the replicas of every
    /// shard and repairs them, e.g. `10m`; `off` never.
    #[arg(long)]
    anti_entropy_interval: Option<String>,
    /// Share of the time background anti-entropy may spend working
    /// (0.01 to 1; it pauses between shards to keep to it).
    #[arg(long)]
    anti_entropy_share: Option<f64>,
}

/// What [`WriteArgs`] set.
struct WriteSettings {
    timeout: std::time::Duration,
    handoff: HandoffConfig,
    anti_entropy_interval: Option<std::time::Duration>,
    anti_entropy_share: f64,
}

impl WriteArgs {
    /// Fills in the write timeout, the hinted-handoff bounds and
    /// anti-entropy.
    fn apply(self, f: &ConfigFile, w: &mut WriteSettings) -> Result<(), String> {
        let (timeout, handoff) = (&mut w.timeout, &mut w.handoff);
        if let Some(t) = f
            .pick_opt(self.write_timeout, "write_timeout")
            .map_err(|e| e.0)?
        {
            *timeout = duration_flag("--write-timeout", t)?;
        }
        if let Some(i) = f
            .pick_opt(self.anti_entropy_interval, "anti_entropy_interval")
            .map_err(|e| e.0)?
        {
            w.anti_entropy_interval = match i.as_str() {
                "off" | "0" => None,
                _ => Some(
                    duration_flag("--anti-entropy-interval", i.clone())
                        .map_err(|e| format!("{e}, or 'off'"))?,
                ),
            };
        }
        if let Some(share) = f
            .pick_opt(self.anti_entropy_share, "anti_entropy_share")
            .map_err(|e| e.0)?
        {
            if !(0.01..=1.0).contains(&share) {
                return Err(format!(
                    "--anti-entropy-share must be from 0.01 to 1, not {share}"
                ));
            }
            w.anti_entropy_share = share;
        }
        if let Some(mib) = f
            .pick_opt(self.hinted_handoff_max_mib, "hinted_handoff_max_mib")
            .map_err(|e| e.0)?
        {
            if !(1..=1 << 30).contains(&mib) {
                return Err(format!(
                    "--hinted-handoff-max-mib must be at least 1 (MiB per storage node), not {mib}"
                ));
            }
            handoff.max_bytes = mib << 20;
        }
        if let Some(age) = f
            .pick_opt(self.hinted_handoff_max_age, "hinted_handoff_max_age")
            .map_err(|e| e.0)?
        {
            handoff.max_age = duration_flag("--hinted-handoff-max-age", age)?;
        }
        Ok(())
    }
}

#[derive(Args)]
struct SqlArgs {
    /// Flight SQL address of a coordinator.
    #[arg(long, default_value = "127.0.0.1:8082", env = "STRATA_HOST")]
    host: String,
    /// Database to run statements in.
    #[arg(long, short = 'd', env = "STRATA_DATABASE")]
    database: Option<String>,
    /// Token to present, when the coordinator requires one.
    #[arg(long, env = "STRATA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// CA certificate (PEM) to trust for a TLS coordinator
    /// (`--host grpc+tls://HOST:PORT`).
    #[arg(long, env = "STRATA_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Run this SQL and exit.
    #[arg(short = 'c')]
    command: Option<String>,
    /// Run the statements in this file and exit.
    #[arg(short = 'f')]
    file: Option<PathBuf>,
    /// aligned, csv or json.
    #[arg(long, default_value = "aligned")]
    format: String,
}

/// Logs to stderr, filtered by `RUST_LOG` or else `default`, as text or
/// one JSON object per line.
fn init_tracing(default: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn write_addr_file(path: Option<&Path>, json: serde_json::Value) -> Result<(), String> {
    let Some(path) = path else { return Ok(()) };
    strata_catalog::fsutil::write_atomic(path, json.to_string().as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// jemalloc returns freed memory to the system (the default allocator
/// kept a 15 GB spike resident while idle), as IOx and GreptimeDB do.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options: a background thread hands memory unused for a
/// second back to the system, also while the process is idle.
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: &[u8; 60] =
    b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = match cli.log_format.as_str() {
        "text" => false,
        "json" => true,
        other => {
            eprintln!("strata: --log-format must be text or json, not '{other}'");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(
        match &cli.command {
            Command::Dev(_) | Command::Catalog(_) => "info,openraft=warn",
            Command::Storage(_) | Command::Coordinator(_) => "info",
            Command::Sql(_) | Command::Admin(_) | Command::Bench(_) => "warn",
        },
        json,
    );
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strata-io")
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("strata: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(a) => run_dev(a).await,
            Command::Catalog(a) => run_catalog(a).await,
            Command::Storage(a) => run_storage(a).await,
            Command::Coordinator(a) => run_coordinator(a).await,
            Command::Sql(a) => run_sql(a).await,
            Command::Admin(a) => strata::admin::run(a).await,
            Command::Bench(b) => strata::bench::run(b).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_dev(a: DevArgs) -> Result<(), String> {
    if a.data_dir.as_os_str().is_empty() {
        return Err("--data-dir must name a directory, not be empty".into());
    }
    std::fs::create_dir_all(&a.data_dir)
        .map_err(|e| format!("cannot create data directory {}: {e}", a.data_dir.display()))?;
    let config = DevConfig {
        http_addr: a.http_addr,
        flight_addr: a.flight_addr,
        storage_nodes: a.storage_nodes.max(1),
        catalog_voters: a.catalog_voters,
        flush_rows: a.flush_rows,
        max_series_per_database: a.max_series_per_database,
        write_memory_limit_bytes: a.write_memory_limit_mib << 20,
        auth: a.auth,
        admin_token: a.admin_token,
        tls: a.tls.files(&ConfigFile::default())?,
        cluster_tls_ca: a.cluster_tls_ca,
        ..DevConfig::new(&a.data_dir)
    };
    let (http_scheme, flight_scheme) = match config.tls.is_some() {
        true => ("https", "grpc+tls"),
        false => ("http", "grpc"),
    };
    let mut config = config;
    let mut w = WriteSettings {
        timeout: config.write_timeout,
        handoff: HandoffConfig {
            max_bytes: config.hinted_handoff_max_bytes,
            max_age: config.hinted_handoff_max_age,
            ..HandoffConfig::new("")
        },
        anti_entropy_interval: config.anti_entropy_interval,
        anti_entropy_share: config.anti_entropy_share,
    };
    a.writes.apply(&ConfigFile::default(), &mut w)?;
    (config.query_memory, config.query_timeout) = a.queries.apply(&ConfigFile::default())?;
    config.write_timeout = w.timeout;
    config.hinted_handoff_max_bytes = w.handoff.max_bytes;
    config.hinted_handoff_max_age = w.handoff.max_age;
    config.anti_entropy_interval = w.anti_entropy_interval;
    config.anti_entropy_share = w.anti_entropy_share;
    let cluster = DevCluster::start(config).await.map_err(|e| e.to_string())?;
    let addrs = cluster.addrs();
    println!("strata dev: data directory {}", a.data_dir.display());
    println!("  catalog        {}", addrs.catalog);
    for (i, s) in addrs.storage.iter().enumerate() {
        println!("  storage node {} {}", i + 1, s);
    }
    println!("  HTTP           {http_scheme}://{}  (line protocol: /write, /api/v2/write; SQL: /api/v3/query_sql)", addrs.http);
    println!(
        "  Flight SQL     {flight_scheme}://{}  (strata sql --host {flight_scheme}://{})",
        addrs.flight, addrs.flight
    );
    if a.auth {
        println!(
            "  authentication on: clients send a token; roles share the secret in {}",
            a.data_dir.join("cluster-secret").display()
        );
    }
    if let Some(token) = &cluster.new_admin_token {
        println!("  admin token    {token}");
        println!("                 (shown once: keep it; it can create others with `strata admin token create`)");
    }
    write_addr_file(
        a.addr_file.as_deref(),
        serde_json::to_value(&addrs).map_err(|e| e.to_string())?,
    )?;
    println!("strata is ready");
    wait_for_signal().await;
    println!("strata: shutting down");
    cluster.shutdown().await;
    Ok(())
}

async fn run_catalog(a: CatalogArgs) -> Result<(), String> {
    let f = ConfigFile::load(a.config.as_deref()).map_err(|e: ConfigError| e.0)?;
    a.auth.apply(&f, "catalog")?;
    let config = CatalogConfig {
        node_id: f.pick(a.node_id, "node_id", 1).map_err(|e| e.0)?,
        data_dir: data_dir_flag(
            f.pick(a.data_dir, "data_dir", "./strata-data/catalog".into())
                .map_err(|e| e.0)?,
        )?,
        listen: f
            .pick(a.listen, "listen", "127.0.0.1:8090".into())
            .map_err(|e| e.0)?,
        advertise: a.advertise,
        bootstrap: a.bootstrap || f.pick(None, "bootstrap", false).map_err(|e| e.0)?,
        retention_check_interval: duration_flag(
            "--retention-check-interval",
            f.pick(
                a.retention_check_interval,
                "retention_check_interval",
                "1m".to_string(),
            )
            .map_err(|e| e.0)?,
        )?,
        join: match a.join {
            Some(j) => Some(j),
            None => {
                let j: String = f.pick(None, "join", String::new()).map_err(|e| e.0)?;
                (!j.is_empty()).then_some(j)
            }
        },
        tls: role_tls(a.tls, &f)?,
    };
    let server = CatalogServer::start(config)
        .await
        .map_err(|e| e.to_string())?;
    println!("strata catalog: listening on {}", server.addr());
    write_addr_file(
        a.addr_file.as_deref(),
        serde_json::json!({ "catalog": server.addr() }),
    )?;
    println!("strata is ready");
    wait_for_signal().await;
    server.shutdown().await;
    Ok(())
}

async fn run_storage(a: StorageArgs) -> Result<(), String> {
    let f = ConfigFile::load(a.config.as_deref()).map_err(|e| e.0)?;
    a.auth.apply(&f, "storage")?;
    let data_dir = data_dir_flag(
        f.pick(a.data_dir, "data_dir", "./strata-data/storage".into())
            .map_err(|e| e.0)?,
    )?;
    let mut engine = EngineConfig::new(&data_dir);
    engine.sync = match f
        .pick(a.wal_sync, "wal_sync", "always".to_string())
        .map_err(|e| e.0)?
        .as_str()
    {
        "always" => SyncPolicy::Always,
        other => match strata_coordinator::query::ddl::parse_duration(other) {
            Ok(ns) => SyncPolicy::Interval(std::time::Duration::from_nanos(ns as u64)),
            Err(_) => {
                return Err(format!(
                    "--wal-sync must be 'always' or an interval like '100ms', not '{other}'"
                ))
            }
        },
    };
    engine.recovery = match f
        .pick(a.wal_recovery, "wal_recovery", "strict".to_string())
        .map_err(|e| e.0)?
        .as_str()
    {
        "strict" => Recovery::Strict,
        "skip-corrupt" => Recovery::SkipCorrupt,
        other => {
            return Err(format!(
                "--wal-recovery must be 'strict' or 'skip-corrupt', not '{other}'"
            ))
        }
    };
    engine.flush_rows = f
        .pick(a.flush_rows, "flush_rows", engine.flush_rows)
        .map_err(|e| e.0)?;
    engine.memory_limit_bytes = f
        .pick(
            a.memory_limit_mib,
            "memory_limit_mib",
            engine.memory_limit_bytes >> 20,
        )
        .map_err(|e| e.0)?
        << 20;
    engine.max_series_per_database = f
        .pick(
            a.max_series_per_database,
            "max_series_per_database",
            engine.max_series_per_database,
        )
        .map_err(|e| e.0)?;
    let heartbeat_interval = duration_flag(
        "--heartbeat-interval",
        f.pick(a.heartbeat_interval, "heartbeat_interval", "1s".to_string())
            .map_err(|e| e.0)?,
    )?;
    let heartbeat_timeout = duration_flag(
        "--heartbeat-timeout",
        f.pick(a.heartbeat_timeout, "heartbeat_timeout", "10s".to_string())
            .map_err(|e| e.0)?,
    )?;
    if heartbeat_timeout <= heartbeat_interval {
        return Err(format!(
            "--heartbeat-timeout ({heartbeat_timeout:?}) must be longer than --heartbeat-interval ({heartbeat_interval:?})"
        ));
    }
    let config = StorageConfig {
        heartbeat_interval,
        heartbeat_timeout,
        node_id: f.pick(a.node_id, "node_id", 1).map_err(|e| e.0)?,
        listen: f
            .pick(a.listen, "listen", "127.0.0.1:8091".into())
            .map_err(|e| e.0)?,
        advertise: a.advertise,
        catalog_addr: f
            .pick(a.catalog, "catalog", "127.0.0.1:8090".into())
            .map_err(|e| e.0)?,
        engine,
        query_memory: QueryMemory::new(a.queries.limits(&f)?),
        query_executor: None,
        tls: role_tls(a.tls, &f)?,
    };
    let node = StorageNode::start(config)
        .await
        .map_err(|e| e.to_string())?;
    println!("strata storage: listening on {}", node.addr());
    write_addr_file(
        a.addr_file.as_deref(),
        serde_json::json!({ "storage": node.addr() }),
    )?;
    println!("strata is ready");
    wait_for_signal().await;
    node.shutdown().await;
    Ok(())
}

/// The TLS a catalog member or storage node serves its port with.
fn role_tls(
    args: TlsArgs,
    f: &ConfigFile,
) -> Result<Option<tonic::transport::ServerTlsConfig>, String> {
    match args.files(f)? {
        Some(files) => Ok(Some(files.load()?.tonic_config())),
        None => Ok(None),
    }
}

/// A `--data-dir` value: any path but an empty one.
fn data_dir_flag(value: String) -> Result<PathBuf, String> {
    if value.trim().is_empty() {
        return Err("--data-dir must name a directory, not be empty".into());
    }
    Ok(PathBuf::from(value))
}

/// A duration flag such as `500ms`, `1s` or `2m`.
fn duration_flag(flag: &str, value: String) -> Result<std::time::Duration, String> {
    match strata_coordinator::query::ddl::parse_duration(&value) {
        Ok(ns) if ns > 0 => Ok(std::time::Duration::from_nanos(ns as u64)),
        _ => Err(format!(
            "{flag} must be a positive duration like '500ms' or '10s', not '{value}'"
        )),
    }
}

async fn run_coordinator(a: CoordinatorArgs) -> Result<(), String> {
    let f = ConfigFile::load(a.config.as_deref()).map_err(|e| e.0)?;
    let require_auth = a.auth.apply(&f, "coordinator")?;
    let config = CoordinatorConfig {
        http_listen: f
            .pick(a.http_addr, "http_addr", "127.0.0.1:8086".into())
            .map_err(|e| e.0)?,
        flight_listen: f
            .pick(a.flight_addr, "flight_addr", "127.0.0.1:8082".into())
            .map_err(|e| e.0)?,
        catalog_addr: f
            .pick(a.catalog, "catalog", "127.0.0.1:8090".into())
            .map_err(|e| e.0)?,
        write_memory_limit_bytes: a.write_memory_limit_mib << 20,
        handoff: HandoffConfig::new(
            data_dir_flag(
                f.pick(a.data_dir, "data_dir", "./strata-data/coordinator".into())
                    .map_err(|e| e.0)?,
            )?
            .join("hints"),
        ),
        write_timeout: DEFAULT_OWNER_TIMEOUT,
        anti_entropy_interval: Some(CoordinatorConfig::DEFAULT_ANTI_ENTROPY_INTERVAL),
        anti_entropy_share: CoordinatorConfig::DEFAULT_ANTI_ENTROPY_SHARE,
        query_memory: QueryMemory::new(MemoryLimits::unbounded()),
        query_executor: None,
        query_timeout: None,
        require_auth,
        tls: a.tls.files(&f)?,
    };
    let mut config = config;
    let (memory, timeout) = a.queries.apply(&f)?;
    config.query_memory = QueryMemory::new(memory);
    config.query_timeout = timeout;
    let mut w = WriteSettings::of(&config);
    a.writes.apply(&f, &mut w)?;
    w.set(&mut config);
    let c = Coordinator::start(config)
        .await
        .map_err(|e| e.to_string())?;
    println!(
        "strata coordinator: HTTP {} Flight SQL {}",
        c.http_addr(),
        c.flight_addr()
    );
    write_addr_file(
        a.addr_file.as_deref(),
        serde_json::json!({ "http": c.http_addr(), "flight": c.flight_addr() }),
    )?;
    println!("strata is ready");
    wait_for_signal().await;
    c.shutdown().await;
    Ok(())
}

async fn run_sql(a: SqlArgs) -> Result<(), String> {
    let format = OutputFormat::parse(&a.format)
        .ok_or_else(|| format!("--format must be aligned, csv or json, not '{}'", a.format))?;
    let tls_ca = match &a.tls_ca {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| format!("cannot read --tls-ca {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut client = SqlClient::connect_with(&a.host, a.database, tls_ca)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(token) = &a.token {
        client.set_token(token);
    }
    let mut session = Session {
        client,
        format,
        timing: false,
        expanded: false,
        settings: Default::default(),
    };
    let mut stdout = std::io::stdout();
    if let Some(sql) = a.command {
        return session
            .run_script(&sql, &mut stdout)
            .await
            .map_err(|e| e.to_string());
    }
    if let Some(file) = a.file {
        let script = std::fs::read_to_string(&file)
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        return session
            .run_script(&script, &mut stdout)
            .await
            .map_err(|e| e.to_string());
    }
    if !sql_client::stdin_is_terminal() {
        let script = sql_client::read_stdin().map_err(|e| format!("cannot read stdin: {e}"))?;
        return session
            .run_script(&script, &mut stdout)
            .await
            .map_err(|e| e.to_string());
    }
    session.interactive().await.map_err(|e| e.to_string())
}
