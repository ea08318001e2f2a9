//! Runs one storage node: opens the engine, serves Flight, registers its
//! address with the catalog, and flushes in the background.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use datafusion::prelude::{SessionConfig, SessionContext};
use snafu::ResultExt;
use strata_catalog::{CatalogClient, Command};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::drops::Dropper;
use crate::engine::{Engine, EngineConfig};
use crate::error::{BindSnafu, EngineSnafu, RegisterSnafu, StorageError};
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
        let engine = Engine::open(config.engine.clone()).context(EngineSnafu)?;
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
        let service = StorageFlightService {
            node_id: config.node_id,
            engine: engine.clone(),
            ctx: SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2)),
            catalog: catalog.clone(),
            last_refresh: tokio::sync::Mutex::new(None),
            drops: dropper.clone(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(
                    FlightServiceServer::new(service)
                        .max_decoding_message_size(MAX_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_MESSAGE_BYTES),
                )
                // Accepted sockets get TCP_NODELAY: tonic ignores its own setting for
                // a listener it is handed, and Nagle's algorithm held each reply for
                // the peer's delayed ACK (about 40 ms a request).
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                    async {
                        let _ = rx.await;
                    },
                ),
        );
        let flusher = engine.spawn_flusher();

        let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());
        catalog
            .execute(Command::RegisterNode {
                id: config.node_id,
                flight_addr: advertise.clone(),
                at_ms: strata_catalog::liveness::now_ms(),
            })
            .await
            .context(RegisterSnafu)?;
        let drops = tokio::spawn(crate::drops::follow(dropper, catalog.clone()));
        let heartbeat = tokio::spawn(heartbeat(
            catalog,
            config.node_id,
            advertise,
            config.heartbeat_interval,
            config.heartbeat_timeout,
        ));
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

/// Tells the catalog every `interval` that this node is alive. A missed
/// beat is only logged: the next one may reach another member.
async fn heartbeat(
    catalog: CatalogClient,
    node_id: u64,
    addr: String,
    interval: Duration,
    timeout: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tick.tick().await;
        match catalog.heartbeat(node_id, &addr, timeout).await {
            Ok(()) if failing => {
                tracing::info!(node_id, "heartbeats reach the catalog again");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(node_id, error = %e, "heartbeat did not reach the catalog");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
