//! Runs one catalog voter: opens its Raft storage, starts Raft and serves the
//! catalog and Raft gRPC services on one listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, SnapshotPolicy};
use snafu::ResultExt;
use strata_proto::catalog::v1::catalog_service_server::CatalogServiceServer;
use strata_proto::raft::v1::raft_service_server::RaftServiceServer;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::error::{BindSnafu, BootstrapSnafu, OpenStorageSnafu, Result, StartRaftSnafu};
use crate::model::CatalogData;
use crate::raft::log_store::LogStore;
use crate::raft::network::{Network, RaftServer, MAX_RAFT_MESSAGE_BYTES};
use crate::raft::state_machine::StateMachineStore;
use crate::raft::Raft;
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
}

pub struct CatalogServer {
    addr: SocketAddr,
    raft: Raft,
    state: watch::Receiver<Arc<CatalogData>>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
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

        let service = CatalogServiceImpl {
            raft: raft.clone(),
            node_id: config.node_id,
            state: state.clone(),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CatalogServiceServer::new(service))
                .add_service(
                    RaftServiceServer::new(RaftServer { raft: raft.clone() })
                        .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                        .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
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
        tracing::info!(%addr, node_id = config.node_id, "catalog node serving");
        Ok(Self {
            addr,
            raft,
            state,
            shutdown: Some(tx),
            task: Some(task),
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
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let _ = self.raft.shutdown().await;
    }
}

impl Drop for CatalogServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
