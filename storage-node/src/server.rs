//! Runs one storage node: opens the engine, serves Flight, registers its
//! address with the catalog, and flushes in the background.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::cluster::RequireSecret;
use tonic::service::interceptor::InterceptedService;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::prelude::{SessionConfig, SessionContext};
use snafu::ResultExt;
use strata_catalog::CatalogClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::drops::Dropper;
use crate::engine::{Engine, EngineConfig};
use crate::error::{BindSnafu, EngineSnafu, QueryRuntimeSnafu, RegisterSnafu, StorageError};
use crate::executor::QueryExecutor;
use crate::flight::StorageFlightService;

/// Largest gRPC message a node accepts or sends (a big DoPut batch).
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;

#[derive(Debug, Clone)]
pub struct StorageConfig {
    pub node_id: u64,
    pub listen: String,
    /// Address others use to reach this node; defaults to the bound address.
    pub advertise: Option<String>,
    /// The catalog's members, `host:port[,...]`.
    pub catalog_addr: String,
    pub engine: EngineConfig,
    /// How often the node tells the catalog it is alive.
    pub heartbeat_interval: Duration,
    /// The catalog marks the node down after this long without a heartbeat.
    pub heartbeat_timeout: Duration,
    /// Memory pools of the fragments (shared with other roles of the
    /// process, as in `strata dev`).
    pub query_memory: crate::memory::QueryMemory,
    /// Threads running plan fragments; `None`: a runtime of the node's
    /// own, a thread per core.
    pub query_executor: Option<QueryExecutor>,
    /// Serve the node's port over TLS (callers trust the cluster CA).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

impl StorageConfig {
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
    pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
}

pub struct StorageNode {
    addr: SocketAddr,
    engine: Arc<Engine>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    flusher: JoinHandle<()>,
    heartbeat: JoinHandle<()>,
    drops: JoinHandle<()>,
}

impl StorageNode {
    pub async fn start(config: StorageConfig) -> Result<Self, StorageError> {
        let mut engine_config = config.engine.clone();
        engine_config.metrics_node = config.node_id.to_string();
        let engine = Engine::open(engine_config).context(EngineSnafu)?;
        register_metrics(config.node_id, &engine, &config.query_memory);
        let listener = TcpListener::bind(&config.listen).await.context(BindSnafu {
            addr: config.listen.clone(),
        })?;
        let addr = listener.local_addr().context(BindSnafu {
            addr: config.listen.clone(),
        })?;
        let catalog = CatalogClient::connect(&config.catalog_addr, Duration::from_secs(60))
            .await
            .context(RegisterSnafu)?;
        let dropper = Arc::new(Dropper::new(engine.clone()));
        let fragments = crate::running::Fragments::default();
        let service = StorageFlightService {
            node_id: config.node_id,
            engine: engine.clone(),
            ctx: SessionContext::new_with_config(
                SessionConfig::new()
                    .with_target_partitions(2)
                    .with_sort_spill_reservation_bytes(crate::memory::sort_spill_reservation(
                        config.query_memory.limits().per_query,
                    )),
            ),
            catalog: catalog.clone(),
            last_refresh: tokio::sync::Mutex::new(None),
            drops: dropper.clone(),
            repairs: crate::digest::RepairLog::open(engine.data_dir()),
            executor: match config.query_executor.clone() {
                Some(e) => e,
                None => QueryExecutor::with_default_threads().context(QueryRuntimeSnafu)?,
            },
            memory: config.query_memory.clone(),
            fragments: fragments.clone(),
        };
        strata_metrics::global().gauge_fn(
            "strata_fragments_running",
            "Plan fragments running on the storage node.",
            &[("node", &config.node_id.to_string())],
            move || fragments.list().len() as f64,
        );
        let (tx, rx) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = config.tls.clone() {
            builder = builder.tls_config(tls).map_err(|e| StorageError::Bind {
                addr: addr.to_string(),
                source: std::io::Error::other(format!("TLS: {e}")),
            })?;
        }
        let server = tokio::spawn(
            builder
                // HTTP/1.1 for `GET /metrics` beside gRPC on the one port.
                .accept_http1(true)
                .add_routes(
                    tonic::service::Routes::from(strata_metrics::grpc_port_router()).add_service(
                        InterceptedService::new(
                            FlightServiceServer::new(service)
                                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                                .max_encoding_message_size(MAX_MESSAGE_BYTES),
                            RequireSecret,
                        ),
                    ),
                )
                // Accepted sockets get TCP_NODELAY, and are served once they
                // speak (a silent one is closed after 10 s).
                .serve_with_incoming_shutdown(strata_proto::incoming::speaking(listener), async {
                    let _ = rx.await;
                }),
        );
        let flusher = engine.spawn_flusher();

        let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
        let instance = instance_id(&config.engine.data_dir)?;
        // The first heartbeat registers the node (or its new address); the
        // catalog refuses it when another running node holds this id.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let version = loop {
            match catalog
                .heartbeat(
                    config.node_id,
                    &instance,
                    &advertise,
                    config.heartbeat_timeout,
                )
                .await
            {
                Ok(v) => break v,
                Err(strata_catalog::Error::Rpc { addr, source })
                    if source.code() == tonic::Code::FailedPrecondition =>
                {
                    return Err(StorageError::Register {
                        source: strata_catalog::Error::Rpc { addr, source },
                    })
                }
                Err(e) if tokio::time::Instant::now() > deadline => {
                    return Err(StorageError::Register { source: e })
                }
                Err(e) => {
                    tracing::debug!(error = %e, "catalog not ready to register this node yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        catalog
            .wait_for_version(version)
            .await
            .context(RegisterSnafu)?;
        let heartbeat = tokio::spawn(heartbeat(
            catalog.clone(),
            config.node_id,
            instance,
            advertise,
            config.heartbeat_interval,
            config.heartbeat_timeout,
        ));
        let drops = tokio::spawn(crate::drops::follow(dropper, catalog.clone()));

        tracing::info!(node_id = config.node_id, %addr, "storage node serving");
        Ok(Self {
            addr,
            engine,
            shutdown: Some(tx),
            server: Some(server),
            flusher,
            heartbeat,
            drops,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Stops serving, then flushes what is in memory so that the next start
    /// has no WAL to replay.
    pub async fn shutdown(mut self) {
        self.heartbeat.abort();
        self.drops.abort();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        self.flusher.abort();
        if let Err(e) = self.engine.flush().await {
            tracing::warn!(error = %e, "final flush failed; the WAL will be replayed on start");
        }
    }
}

impl Drop for StorageNode {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.flusher.abort();
        self.heartbeat.abort();
        self.drops.abort();
    }
}

/// Gauges computed at scrape time from what the engine holds; they stop
/// answering (NaN is not sent: they read 0) once the engine is gone.
fn register_metrics(node_id: u64, engine: &Arc<Engine>, memory: &crate::memory::QueryMemory) {
    let registry = strata_metrics::global();
    let node = node_id.to_string();
    let labels = [("node", node.as_str())];
    type Stat = fn(&crate::engine::EngineStats) -> f64;
    let gauges: [(&str, &str, Stat); 6] = [
        (
            "strata_memtable_bytes",
            "Bytes held in memtables (active and being flushed).",
            |s| s.memtable_bytes as f64,
        ),
        (
            "strata_memtable_rows",
            "Rows in the active memtables.",
            |s| s.memtable_rows as f64,
        ),
        (
            "strata_parquet_files",
            "Parquet files the node's manifest lists.",
            |s| s.parquet_files as f64,
        ),
        (
            "strata_parquet_bytes",
            "Bytes of the Parquet files the node's manifest lists.",
            |s| s.parquet_bytes as f64,
        ),
        (
            "strata_parquet_files_per_table_max",
            "Parquet files of the shard table that has the most (compaction merges them).",
            |s| s.max_files_per_table as f64,
        ),
        (
            "strata_last_value_cache_bytes",
            "Bytes held by the last-value caches.",
            |s| s.last_cache_bytes as f64,
        ),
    ];
    for (name, help, stat) in gauges {
        let engine = Arc::downgrade(engine);
        registry.gauge_fn(name, help, &labels, move || {
            engine.upgrade().map_or(0.0, |e| stat(&e.stats()))
        });
    }
    let memory = memory.clone();
    registry.gauge_fn(
        "strata_query_memory_bytes",
        "Bytes the running queries' operators hold (of the process's budget).",
        &[("role", "storage")],
        move || memory.in_use() as f64,
    );
}

/// The id of this node's data directory, made on first start: the catalog
/// tells a restart of this node (same id, same directory) from a second
/// node given the same id by mistake.
fn instance_id(data_dir: &std::path::Path) -> Result<String, StorageError> {
    let path = data_dir.join("node-instance");
    if let Ok(id) = std::fs::read_to_string(&path) {
        let id = id.trim();
        if !id.is_empty() {
            return Ok(id.to_string());
        }
    }
    let id = uuid::Uuid::new_v4().to_string();
    strata_catalog::fsutil::write_atomic(&path, id.as_bytes()).map_err(|source| {
        StorageError::Engine {
            source: crate::engine::EngineError::Io {
                path: path.clone(),
                source,
            },
        }
    })?;
    Ok(id)
}

/// Tells the catalog every `interval` that this node is alive. A missed
/// beat is only logged: the next one may reach another member.
async fn heartbeat(
    catalog: CatalogClient,
    node_id: u64,
    instance: String,
    addr: String,
    interval: Duration,
    timeout: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match catalog.heartbeat(node_id, &instance, &addr, timeout).await {
            Ok(_) if failing => {
                tracing::info!(node_id, "heartbeats reach the catalog again");
                failing = false;
            }
            Ok(_) => {}
            Err(strata_catalog::Error::Rpc { source, .. })
                if source.code() == tonic::Code::FailedPrecondition =>
            {
                // Removed from the cluster, or the id taken by another data
                // directory: no later beat will be accepted, so say it once
                // and stop asking.
                tracing::error!(
                    node_id,
                    "the catalog refuses this node: {}",
                    source.message()
                );
                return;
            }
            Err(e) if !failing => {
                tracing::warn!(node_id, error = %e, "heartbeat did not reach the catalog");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
