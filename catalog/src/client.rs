//! The catalog client used by coordinators and storage nodes: a cached copy
//! of the catalog fed by the watch stream (never moving to an older
//! version), and commands that return once the cache reflects them.

use std::sync::Arc;
use std::time::Duration;

use snafu::ResultExt;
use strata_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use strata_proto::catalog::v1::{CatalogState, ExecuteRequest, GetStateRequest, WatchRequest};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::command::{Command, CommandResult};
use crate::error::{DecodeSnafu, Error, Result, RpcSnafu, UnreachableSnafu};
use crate::model::CatalogData;

/// Largest catalog state a client accepts.
pub(crate) const MAX_STATE_BYTES: usize = 256 << 20;

#[derive(Clone)]
pub struct CatalogClient {
    addr: String,
    rpc: CatalogServiceClient<Channel>,
    cache: Arc<watch::Sender<Arc<CatalogData>>>,
    _watcher: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn decode(state: CatalogState) -> Result<CatalogData> {
    serde_json::from_slice(&state.state_json).context(DecodeSnafu {
        what: "catalog state",
    })
}

/// Replaces the cached state only with a newer one.
fn offer(cache: &watch::Sender<Arc<CatalogData>>, data: CatalogData) {
    cache.send_if_modified(|current| {
        if data.version > current.version {
            *current = Arc::new(data);
            true
        } else {
            false
        }
    });
}

impl CatalogClient {
    /// Connects to the catalog at `addr` (`host:port`), retrying for up to
    /// `patience` while it is not reachable yet (roles may start in any
    /// order).
    pub async fn connect(addr: &str, patience: Duration) -> Result<Self> {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Unreachable {
                addr: addr.to_string(),
                source: e,
            })?
            .connect_timeout(Duration::from_secs(2));
        let deadline = tokio::time::Instant::now() + patience;
        let mut backoff = Duration::from_millis(50);
        let (rpc, initial) = loop {
            let attempt = async {
                let channel = endpoint
                    .connect()
                    .await
                    .context(UnreachableSnafu { addr })?;
                // The whole state travels in one message; allow it to grow.
                let mut rpc =
                    CatalogServiceClient::new(channel).max_decoding_message_size(MAX_STATE_BYTES);
                let state = rpc
                    .get_state(GetStateRequest {})
                    .await
                    .context(RpcSnafu { addr })?
                    .into_inner();
                Ok::<_, Error>((rpc, decode(state)?))
            };
            match attempt.await {
                Ok(ok) => break ok,
                Err(e) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %e, "catalog not ready yet");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        };
        let (tx, _) = watch::channel(Arc::new(initial));
        let cache = Arc::new(tx);
        let watcher = tokio::spawn(watch_loop(addr.to_string(), rpc.clone(), cache.clone()));
        Ok(Self {
            addr: addr.to_string(),
            rpc,
            cache,
            _watcher: Arc::new(AbortOnDrop(watcher)),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The newest catalog state this client has seen.
    pub fn state(&self) -> Arc<CatalogData> {
        self.cache.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<CatalogData>> {
        self.cache.subscribe()
    }

    /// Runs a command through Raft. Returns its result once the cached state
    /// includes it; a rejection becomes [`Error::Rejected`].
    pub async fn execute(&self, command: Command) -> Result<CommandResult> {
        let command_json = serde_json::to_vec(&command).context(DecodeSnafu {
            what: "catalog command",
        })?;
        let resp = self
            .rpc
            .clone()
            .execute(ExecuteRequest { command_json })
            .await
            .context(RpcSnafu { addr: &self.addr })?
            .into_inner();
        let result: CommandResult =
            serde_json::from_slice(&resp.result_json).context(DecodeSnafu {
                what: "catalog command result",
            })?;
        self.wait_for_version(resp.version).await?;
        match result {
            CommandResult::Rejected(rejection) => Err(Error::Rejected { rejection }),
            other => Ok(other),
        }
    }

    /// Waits until the cache holds `version` or newer; asks the catalog
    /// directly if the watch stream is slow to deliver it.
    pub async fn wait_for_version(&self, version: u64) -> Result<()> {
        let mut rx = self.cache.subscribe();
        let reached = tokio::time::timeout(Duration::from_secs(2), async {
            rx.wait_for(|s| s.version >= version).await.is_ok()
        })
        .await
        .unwrap_or(false);
        if reached {
            return Ok(());
        }
        self.refresh().await
    }

    /// Reads the catalog state from the leader (linearizable) into the cache.
    pub async fn refresh(&self) -> Result<()> {
        let state = self
            .rpc
            .clone()
            .get_state(GetStateRequest {})
            .await
            .context(RpcSnafu { addr: &self.addr })?
            .into_inner();
        offer(&self.cache, decode(state)?);
        Ok(())
    }
}

async fn watch_loop(
    addr: String,
    mut rpc: CatalogServiceClient<Channel>,
    cache: Arc<watch::Sender<Arc<CatalogData>>>,
) {
    loop {
        let known_version = cache.borrow().version;
        match rpc.watch(WatchRequest { known_version }).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(state)) => match decode(state) {
                            Ok(data) => offer(&cache, data),
                            Err(e) => tracing::warn!(error = %e, "ignoring catalog update"),
                        },
                        Ok(None) => break,
                        Err(status) => {
                            tracing::debug!(%addr, %status, "catalog watch interrupted");
                            break;
                        }
                    }
                }
            }
            Err(status) => tracing::debug!(%addr, %status, "catalog watch failed"),
        }
        // Reconnect backoff: the catalog is restarting or a leader change is
        // under way.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
