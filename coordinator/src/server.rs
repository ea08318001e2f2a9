//! Runs a coordinator: connects to the catalog, then serves HTTP (line
//! protocol, SQL over HTTP) and Flight SQL.

use std::net::SocketAddr;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use snafu::ResultExt;
use strata_catalog::CatalogClient;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

use crate::auth::Auth;
use crate::error::{BindSnafu, CatalogSnafu, Error, HandoffSnafu, Result, RuntimeSnafu};
use crate::executor::QueryExecutor;
use crate::flight_sql::{FlightAuth, StrataFlightSql};
use crate::handoff::{Handoff, HandoffConfig};
use crate::http::{router, HttpState, WriteBudget};
use crate::node_clients::{NodeClients, MAX_MESSAGE_BYTES};
use crate::query::QueryEngine;
use crate::tls::TlsFiles;
use crate::write_router::WriteRouter;

#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    pub http_listen: String,
    pub flight_listen: String,
    pub catalog_addr: String,
    /// Memory in-flight write requests may hold (bodies, decoded text,
    /// parsed rows); past it writes get 503 with `Retry-After`.
    pub write_memory_limit_bytes: usize,
    /// Where writes for owners that could not take them wait (hinted
    /// handoff), and its bounds.
    pub handoff: HandoffConfig,
    /// How long one shard owner has to take a write before it is queued
    /// for it.
    pub write_timeout: Duration,
    /// How often background anti-entropy compares every shard's replicas
    /// (`None`: never), and the share of time it may take.
    pub anti_entropy_interval: Option<Duration>,
    pub anti_entropy_share: f64,
    /// Memory pools of the queries (shared with other roles of the
    /// process, as in `strata dev`).
    pub query_memory: strata_storage::memory::QueryMemory,
    /// Query threads; `None`: a runtime of the coordinator's own.
    pub query_executor: Option<QueryExecutor>,
    /// How long a query may run unless it sets its own limit.
    pub query_timeout: Option<Duration>,
    /// Whether clients need a token (kept in the catalog).
    pub require_auth: bool,
    /// Serve HTTPS and Flight SQL over TLS with this certificate.
    pub tls: Option<TlsFiles>,
}

impl CoordinatorConfig {
    pub const DEFAULT_ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(600);
    pub const DEFAULT_ANTI_ENTROPY_SHARE: f64 = 0.1;
}

pub struct Coordinator {
    http_addr: SocketAddr,
    flight_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    handoff: std::sync::Arc<Handoff>,
    tasks: Vec<JoinHandle<()>>,
}

impl Coordinator {
    pub async fn start(config: CoordinatorConfig) -> Result<Self> {
        // Bad certificate files fail the start before anything listens.
        let tls = match &config.tls {
            Some(files) => Some(files.load().map_err(|reason| Error::Tls { reason })?),
            None => None,
        };
        let catalog = CatalogClient::connect(&config.catalog_addr, Duration::from_secs(60))
            .await
            .context(CatalogSnafu)?;
        let nodes = NodeClients::default();
        let executor = match config.query_executor.clone() {
            Some(e) => e,
            None => QueryExecutor::with_default_threads().context(RuntimeSnafu)?,
        };
        let handoff = Handoff::open(
            config.handoff.clone(),
            nodes.clone(),
            catalog.clone(),
            config.write_timeout,
        )
        .context(HandoffSnafu)?;
        let writer = WriteRouter::new(
            catalog.clone(),
            nodes.clone(),
            handoff.clone(),
            config.write_timeout,
        );
        let engine = QueryEngine::new(catalog.clone(), nodes.clone(), executor, writer.clone())
            .with_limits(config.query_memory.clone(), config.query_timeout);
        register_metrics(&handoff, &engine, &config.query_memory);

        let http_listener = TcpListener::bind(&config.http_listen)
            .await
            .context(BindSnafu {
                addr: config.http_listen.clone(),
            })?;
        let http_addr = http_listener.local_addr().context(BindSnafu {
            addr: config.http_listen.clone(),
        })?;
        let flight_listener =
            TcpListener::bind(&config.flight_listen)
                .await
                .context(BindSnafu {
                    addr: config.flight_listen.clone(),
                })?;
        let flight_addr = flight_listener.local_addr().context(BindSnafu {
            addr: config.flight_listen.clone(),
        })?;

        let (shutdown, rx) = watch::channel(false);
        let mut tasks = vec![];
        if let Some(interval) = config.anti_entropy_interval {
            let mut stop = rx.clone();
            let repair = crate::repair::run_background(
                catalog,
                nodes,
                handoff.clone(),
                interval,
                config.anti_entropy_share,
            );
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = repair => {}
                    _ = stop.wait_for(|s| *s) => {}
                }
            }));
        }

        let auth = match config.require_auth {
            true => Auth::required(engine.catalog().clone()),
            false => Auth::disabled(),
        };
        let app = router(HttpState {
            writer,
            engine: engine.clone(),
            write_budget: WriteBudget::new(config.write_memory_limit_bytes),
            auth: auth.clone(),
        });
        let mut http_rx = rx.clone();
        let stopped = async move {
            let _ = http_rx.wait_for(|s| *s).await;
        };
        match &tls {
            Some(identity) => {
                let listener = identity
                    .https_listener(http_listener)
                    .map_err(|reason| Error::Tls { reason })?;
                tasks.push(tokio::spawn(serve_http(listener, app, stopped)));
            }
            None => {
                use axum::serve::ListenerExt;
                // Replies go out at once, not after the peer's delayed ACK.
                let listener = http_listener.tap_io(|tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                tasks.push(tokio::spawn(serve_http(listener, app, stopped)))
            }
        }

        let flight = InterceptedService::new(
            FlightServiceServer::new(StrataFlightSql::new(engine))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            FlightAuth(auth),
        );
        let mut flight_rx = rx;
        let mut builder = tonic::transport::Server::builder();
        if let Some(identity) = &tls {
            builder = builder
                .tls_config(identity.tonic_config())
                .map_err(|e| Error::Tls {
                    reason: e.to_string(),
                })?;
        }
        tasks.push(tokio::spawn(async move {
            let serve = builder
                .add_service(flight)
                // Accepted sockets get TCP_NODELAY, and are served once they
                // speak (a silent one is closed after 10 s).
                .serve_with_incoming_shutdown(
                    strata_proto::incoming::speaking(flight_listener),
                    async move {
                        let _ = flight_rx.wait_for(|s| *s).await;
                    },
                );
            if let Err(e) = serve.await {
                tracing::error!(error = %e, "Flight SQL server failed");
            }
        }));
        tracing::info!(%http_addr, %flight_addr, "coordinator serving");
        Ok(Self {
            http_addr,
            flight_addr,
            shutdown,
            handoff,
            tasks,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    pub fn flight_addr(&self) -> SocketAddr {
        self.flight_addr
    }

    /// Stops accepting requests and waits for the servers to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        self.handoff.shutdown();
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
    }
}

async fn serve_http<L>(
    listener: L,
    app: axum::Router,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) where
    L: axum::serve::Listener,
{
    crate::http_serve::serve(listener, app, stopped).await
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.handoff.shutdown();
    }
}

/// Gauges and counts computed at scrape time: the hinted-handoff queues
/// (one series per target node), running queries, query memory.
fn register_metrics(
    handoff: &std::sync::Arc<Handoff>,
    engine: &QueryEngine,
    memory: &strata_storage::memory::QueryMemory,
) {
    use crate::handoff::QueueStats;
    let registry = strata_metrics::global();
    type Stat = fn(&QueueStats, i64) -> f64;
    let queues: [(&str, &str, bool, Stat); 6] = [
        (
            "strata_hinted_handoff_bytes",
            "Bytes queued on this coordinator for a storage node that could not take them.",
            false,
            |q, _| q.bytes as f64,
        ),
        (
            "strata_hinted_handoff_entries",
            "Writes and deletes queued on this coordinator for a storage node.",
            false,
            |q, _| q.entries as f64,
        ),
        (
            "strata_hinted_handoff_oldest_age_seconds",
            "Age of the oldest entry queued for a storage node (0 when none).",
            false,
            |q, now| q.oldest_ms.map_or(0.0, |t| (now - t).max(0) as f64 / 1e3),
        ),
        (
            "strata_hinted_handoff_delivered_total",
            "Queued entries delivered to their storage node.",
            true,
            |q, _| q.delivered as f64,
        ),
        (
            "strata_hinted_handoff_discarded_total",
            "Queued entries their storage node refused for good (logged).",
            true,
            |q, _| q.discarded as f64,
        ),
        (
            "strata_hinted_handoff_refused_total",
            "Writes refused because a node's queue was at its bound (bytes or age).",
            true,
            |q, _| q.refused as f64,
        ),
    ];
    for (name, help, counter, stat) in queues {
        let handoff = std::sync::Arc::downgrade(handoff);
        let f = move || {
            let Some(h) = handoff.upgrade() else {
                return vec![];
            };
            let now = strata_catalog::liveness::now_ms();
            h.stats()
                .iter()
                .map(|q| {
                    let labels = vec![("target_node".to_string(), q.node_id.to_string())];
                    (labels, stat(q, now))
                })
                .collect()
        };
        match counter {
            true => registry.counter_family_fn(name, help, "coordinator", f),
            false => registry.gauge_family_fn(name, help, "coordinator", f),
        }
    }
    let queries = engine.queries().clone();
    registry.gauge_fn(
        "strata_queries_running",
        "Statements running on this coordinator.",
        &[],
        move || queries.running() as f64,
    );
    let memory = memory.clone();
    registry.gauge_fn(
        "strata_query_memory_bytes",
        "Bytes the running queries' operators hold (of the process's budget).",
        &[("role", "coordinator")],
        move || memory.in_use() as f64,
    );
}
