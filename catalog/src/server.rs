//! Runs one catalog voter: opens its Raft storage, starts Raft and serves the
//! catalog and Raft gRPC services on one listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::cluster::RequireSecret;
use tonic::service::interceptor::InterceptedService;

use openraft::{BasicNode, Config, SnapshotPolicy};
use snafu::ResultExt;
use strata_proto::catalog::v1::catalog_service_server::CatalogServiceServer;
use strata_proto::raft::v1::raft_service_server::RaftServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use strata_proto::catalog::v1::{AddLearnerRequest, ChangeMembershipRequest, StatusRequest};

use crate::client::{Members, REQUEST_TIMEOUT};
use crate::error::{
    BindSnafu, BootstrapSnafu, JoinSnafu, OpenStorageSnafu, Result, StartRaftSnafu,
};
use crate::liveness::{watch_nodes, Liveness};
use crate::maintenance;
use crate::model::CatalogData;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, RaftServer, MAX_RAFT_MESSAGE_BYTES};
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{NodeId, Raft};
use crate::service::CatalogServiceImpl;

#[derive(Debug, Clone)]
pub struct CatalogConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Where to listen; port 0 picks a free port.
    pub listen: String,
    /// Address peers use to reach this node; defaults to the bound address.
    pub advertise: Option<String>,
    /// Initialize a new single-voter cluster if this node has no state yet.
    pub bootstrap: bool,
    /// Members of an existing cluster (`host:port[,...]`) to join: this node
    /// is added as a learner, catches up, then becomes a voter. Nothing
    /// happens when it already is one (a restart).
    pub join: Option<String>,
    /// How often the leader drops shard groups past their retention.
    pub retention_check_interval: Duration,
    /// Serve the member's port over TLS (callers trust the cluster CA).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

impl CatalogConfig {
    pub const DEFAULT_RETENTION_CHECK_INTERVAL: Duration = Duration::from_secs(60);

    /// A member with default settings.
    pub fn new(node_id: NodeId, data_dir: impl Into<PathBuf>, listen: impl Into<String>) -> Self {
        Self {
            node_id,
            data_dir: data_dir.into(),
            listen: listen.into(),
            advertise: None,
            bootstrap: false,
            join: None,
            retention_check_interval: Self::DEFAULT_RETENTION_CHECK_INTERVAL,
            tls: None,
        }
    }
}

pub struct CatalogServer {
    addr: SocketAddr,
    raft: Raft,
    state: watch::Receiver<Arc<CatalogData>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    node_watch: JoinHandle<()>,
    upkeep: JoinHandle<()>,
}

impl CatalogServer {
    pub async fn start(config: CatalogConfig) -> Result<Self> {
        let dir = config.data_dir.clone();
        let log = LogStore::open(&dir).context(OpenStorageSnafu { dir: dir.clone() })?;
        let sm = StateMachineStore::open(&dir).context(OpenStorageSnafu { dir: dir.clone() })?;
        let state = sm.subscribe();

        let listener = TcpListener::bind(&config.listen).await.context(BindSnafu {
            addr: config.listen.clone(),
        })?;
        let addr = listener.local_addr().context(BindSnafu {
            addr: config.listen.clone(),
        })?;
        let advertise = config.advertise.clone().unwrap_or_else(|| addr.to_string());

        let raft_config = Config {
            cluster_name: "strata-catalog".to_string(),
            heartbeat_interval: 150,
            election_timeout_min: 400,
            election_timeout_max: 800,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(500),
            max_in_snapshot_log_to_keep: 100,
            // A chunk is sent and installed within this time. With openraft's
            // 200 ms default a member that joined after the log was purged
            // never caught up (catalog/tests/members.rs): decoding a chunk's
            // JSON takes longer than that in a debug build on a busy machine.
            snapshot_max_chunk_size: 1 << 20,
            install_snapshot_timeout: 10_000,
            max_payload_entries: 64,
            ..Default::default()
        }
        .validate()
        .map_err(|e| {
            BootstrapSnafu {
                message: e.to_string(),
            }
            .build()
        })?;
        let raft = Raft::new(config.node_id, Arc::new(raft_config), Network, log, sm)
            .await
            .map_err(Box::new)
            .context(StartRaftSnafu)?;

        let liveness = Arc::new(Liveness::default());
        let service = CatalogServiceImpl {
            raft: raft.clone(),
            node_id: config.node_id,
            state: state.clone(),
            liveness: liveness.clone(),
            forward: Default::default(),
        };
        let node_watch = tokio::spawn(watch_nodes(
            raft.clone(),
            config.node_id,
            liveness,
            state.clone(),
        ));
        let upkeep = tokio::spawn(maintenance::run(
            raft.clone(),
            config.node_id,
            state.clone(),
            config.retention_check_interval,
        ));
        register_metrics(config.node_id, &raft);
        let (tx, rx) = oneshot::channel::<()>();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = config.tls.clone() {
            builder = builder.tls_config(tls).map_err(|e| crate::Error::Bind {
                addr: addr.to_string(),
                source: std::io::Error::other(format!("TLS: {e}")),
            })?;
        }
        let task = tokio::spawn(
            builder
                // HTTP/1.1 for `GET /metrics` beside gRPC on the one port.
                .accept_http1(true)
                .add_routes(
                    tonic::service::Routes::from(strata_metrics::grpc_port_router())
                        .add_service(InterceptedService::new(
                            CatalogServiceServer::new(service),
                            RequireSecret,
                        ))
                        .add_service(InterceptedService::new(
                            RaftServiceServer::new(RaftServer { raft: raft.clone() })
                                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
                            RequireSecret,
                        )),
                )
                // Accepted sockets get TCP_NODELAY, and are served once they
                // speak (a silent one is closed after 10 s).
                .serve_with_incoming_shutdown(strata_proto::incoming::speaking(listener), async {
                    let _ = rx.await;
                }),
        );

        if config.bootstrap
            && !raft
                .is_initialized()
                .await
                .map_err(Box::new)
                .context(StartRaftSnafu)?
        {
            let members = BTreeMap::from([(config.node_id, BasicNode::new(&advertise))]);
            raft.initialize(members).await.map_err(|e| {
                BootstrapSnafu {
                    message: e.to_string(),
                }
                .build()
            })?;
        }
        if !config.bootstrap
            && config.join.is_none()
            && !raft
                .is_initialized()
                .await
                .map_err(Box::new)
                .context(StartRaftSnafu)?
        {
            tracing::warn!(
                node_id = config.node_id,
                "this member belongs to no catalog cluster yet and waits to be added \
                 (strata admin catalog add); start the first member with --bootstrap and the \
                 others with --join"
            );
        }
        if config.bootstrap {
            // A single voter elects itself; wait for that so that callers can
            // write as soon as start returns.
            raft.wait(Some(Duration::from_secs(30)))
                .metrics(|m| m.current_leader.is_some(), "catalog leader elected")
                .await
                .map_err(|e| {
                    BootstrapSnafu {
                        message: e.to_string(),
                    }
                    .build()
                })?;
        }
        if let Some(join) = &config.join {
            if config.bootstrap {
                return Err(JoinSnafu {
                    message: "--bootstrap starts a new cluster, --join enters an existing one; give one of them".to_string(),
                }
                .build());
            }
            join_cluster(config.node_id, &advertise, join).await?;
        }
        tracing::info!(%addr, node_id = config.node_id, "catalog node serving");
        Ok(Self {
            addr,
            raft,
            state,
            shutdown: Some(tx),
            task: Some(task),
            node_watch,
            upkeep,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The newest catalog state this node applied.
    pub fn state(&self) -> Arc<CatalogData> {
        self.state.borrow().clone()
    }

    pub async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        self.node_watch.abort();
        self.upkeep.abort();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // Raft first: stopping it ends the state's watch streams, which a
        // graceful shutdown of the server would otherwise wait for.
        let _ = self.raft.shutdown().await;
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

/// How long joining may take: the learner receives the whole catalog first.
const JOIN_PATIENCE: Duration = Duration::from_secs(300);

/// Makes this node a voter of the cluster that `join` names.
async fn join_cluster(node_id: NodeId, advertise: &str, join: &str) -> Result<()> {
    let members = Members::parse(join)?;
    let status = members
        .call(
            "a status request",
            REQUEST_TIMEOUT,
            JOIN_PATIENCE,
            |mut c| async move { c.status(StatusRequest {}).await },
        )
        .await?
        .into_inner();
    members.learn(&status);
    match status.members.iter().find(|m| m.node_id == node_id) {
        Some(m) if m.addr != advertise => {
            return Err(JoinSnafu {
                message: format!(
                    "catalog member {node_id} is already in the cluster at {}; this node advertises {advertise} (pick another --node-id, or remove the old member first)",
                    m.addr
                ),
            }
            .build())
        }
        Some(m) if m.voter => {
            tracing::info!(node_id, "already a voter of the catalog cluster");
            return Ok(());
        }
        _ => {}
    }
    tracing::info!(node_id, %advertise, "joining the catalog cluster as a learner");
    members
        .call(
            "a request to add a learner",
            JOIN_PATIENCE,
            JOIN_PATIENCE,
            |mut c| async move {
                c.add_learner(AddLearnerRequest {
                    node_id,
                    addr: advertise.to_string(),
                })
                .await
            },
        )
        .await?;
    tracing::info!(node_id, "caught up; becoming a voter");
    members
        .call(
            "a request to add a voter",
            REQUEST_TIMEOUT * 6,
            JOIN_PATIENCE,
            |mut c| async move {
                c.change_membership(ChangeMembershipRequest {
                    add_voters: vec![node_id],
                    ..Default::default()
                })
                .await
            },
        )
        .await?;
    Ok(())
}

impl Drop for CatalogServer {
    fn drop(&mut self) {
        self.node_watch.abort();
        self.upkeep.abort();
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Raft's state as gauges, read from the member's metrics at scrape time.
fn register_metrics(node_id: u64, raft: &Raft) {
    let registry = strata_metrics::global();
    let member = node_id.to_string();
    type Read = fn(&openraft::RaftMetrics<u64, openraft::BasicNode>) -> f64;
    let gauges: [(&str, &str, Read); 5] = [
        ("strata_raft_term", "The member's current Raft term.", |m| {
            m.current_term as f64
        }),
        (
            "strata_raft_leader",
            "The leader this member knows of (0: none).",
            |m| m.current_leader.unwrap_or(0) as f64,
        ),
        (
            "strata_raft_is_leader",
            "1 on the member that leads.",
            |m| f64::from(u8::from(m.current_leader == Some(m.id))),
        ),
        (
            "strata_raft_last_log_index",
            "Index of the member's last Raft log entry.",
            |m| m.last_log_index.unwrap_or(0) as f64,
        ),
        (
            "strata_raft_last_applied_index",
            "Index of the last entry applied to the member's catalog (committed).",
            |m| m.last_applied.map_or(0, |l| l.index) as f64,
        ),
    ];
    for (name, help, read) in gauges {
        let metrics = raft.metrics();
        registry.gauge_fn(name, help, &[("member", &member)], move || {
            read(&metrics.borrow())
        });
    }
}
