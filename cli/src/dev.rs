//! `strata dev`: a whole cluster in one process — one catalog voter (or
//! three or five), N storage nodes and a coordinator — on one local data
//! directory. Every part talks to the others over real sockets, as separate
//! processes would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use strata_catalog::{CatalogConfig, CatalogServer};
use strata_coordinator::handoff::HandoffConfig;
use strata_coordinator::{Coordinator, CoordinatorConfig};
use strata_storage::executor::QueryExecutor;
use strata_storage::memory::{MemoryLimits, QueryMemory};
use strata_storage::{EngineConfig, StorageConfig, StorageNode};

#[derive(Debug, Clone)]
pub struct DevConfig {
    pub data_dir: PathBuf,
    pub http_addr: String,
    pub flight_addr: String,
    pub catalog_addr: String,
    /// Catalog members (Raft voters): 1, 3 or 5.
    pub catalog_voters: u32,
    pub storage_nodes: u32,
    /// Flush a storage node's memtables at this many rows.
    pub flush_rows: Option<usize>,
    /// Series a database may have on one storage node (0: no limit).
    pub max_series_per_database: Option<usize>,
    /// The coordinator's memory budget for in-flight writes.
    pub write_memory_limit_bytes: usize,
    /// How often storage nodes heartbeat, and after how long without one
    /// the catalog marks a node down.
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// How often the catalog drops shard groups past their retention.
    pub retention_check_interval: Duration,
    /// How long a shard owner has to take a write before it is queued
    /// for it (hinted handoff).
    pub write_timeout: Duration,
    /// Bounds of each node's hinted-handoff queue.
    pub hinted_handoff_max_bytes: u64,
    pub hinted_handoff_max_age: Duration,
    /// Background anti-entropy: how often (`None`: never) and the share of
    /// time it may take.
    pub anti_entropy_interval: Option<Duration>,
    pub anti_entropy_share: f64,
    /// Memory one query may hold in a role, and all queries of the process
    /// together (one budget for every role).
    pub query_memory: MemoryLimits,
    /// How long a query may run unless it sets its own limit.
    pub query_timeout: Option<Duration>,
    /// Clients need a token and the roles a cluster secret (kept in
    /// `<data>/cluster-secret`).
    pub auth: bool,
    /// With `auth`: a token to create as `admin` (admin on `*`) when the
    /// catalog has no such token; without one, a first start makes one.
    pub admin_token: Option<String>,
    /// HTTPS and Flight SQL over TLS with this certificate.
    pub tls: Option<strata_coordinator::tls::TlsFiles>,
    /// With `tls`: the catalog and storage nodes serve TLS too (the same
    /// certificate), and calls between roles trust this CA (PEM file).
    pub cluster_tls_ca: Option<PathBuf>,
}

impl DevConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            http_addr: "127.0.0.1:8086".into(),
            flight_addr: "127.0.0.1:8082".into(),
            catalog_addr: "127.0.0.1:0".into(),
            catalog_voters: 1,
            storage_nodes: 3,
            flush_rows: None,
            max_series_per_database: None,
            write_memory_limit_bytes: strata_coordinator::http::DEFAULT_WRITE_MEMORY_BYTES,
            heartbeat_interval: StorageConfig::DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: StorageConfig::DEFAULT_HEARTBEAT_TIMEOUT,
            retention_check_interval: CatalogConfig::DEFAULT_RETENTION_CHECK_INTERVAL,
            write_timeout: strata_coordinator::write_router::DEFAULT_OWNER_TIMEOUT,
            hinted_handoff_max_bytes: HandoffConfig::DEFAULT_MAX_BYTES,
            hinted_handoff_max_age: HandoffConfig::DEFAULT_MAX_AGE,
            anti_entropy_interval: Some(CoordinatorConfig::DEFAULT_ANTI_ENTROPY_INTERVAL),
            anti_entropy_share: CoordinatorConfig::DEFAULT_ANTI_ENTROPY_SHARE,
            query_memory: MemoryLimits::default(),
            query_timeout: None,
            auth: false,
            admin_token: None,
            tls: None,
            cluster_tls_ca: None,
        }
    }

    /// Every listener on a free port, for tests.
    pub fn ephemeral(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            http_addr: "127.0.0.1:0".into(),
            flight_addr: "127.0.0.1:0".into(),
            ..Self::new(data_dir)
        }
    }
}

/// The addresses a running dev cluster bound; written to `--addr-file`.
#[derive(Debug, Clone, Serialize)]
pub struct DevAddrs {
    pub http: SocketAddr,
    pub flight: SocketAddr,
    /// The catalog members, `host:port,...` (what `--catalog` takes).
    pub catalog: String,
    pub storage: Vec<SocketAddr>,
}

pub struct DevCluster {
    /// The catalog's members; the first bootstrapped the cluster.
    pub catalog: Vec<CatalogServer>,
    pub storage: Vec<StorageNode>,
    pub coordinator: Coordinator,
    /// The admin token this start created (shown once), if it made one.
    pub new_admin_token: Option<String>,
}

#[derive(Debug, snafu::Snafu)]
pub enum DevError {
    #[snafu(display("--catalog-voters must be 1, 3 or 5, not {n}"))]
    Voters { n: u32 },
    #[snafu(display("cannot record the catalog members in {}: {source}", path.display()))]
    Members {
        path: PathBuf,
        source: std::io::Error,
    },
    #[snafu(display("catalog: {source}"))]
    Catalog { source: strata_catalog::Error },
    #[snafu(display("storage node {node_id}: {source}"))]
    Storage {
        node_id: u64,
        source: strata_storage::StorageError,
    },
    #[snafu(display("coordinator: {source}"))]
    Coordinator { source: strata_coordinator::Error },
    #[snafu(display("cannot start the query threads: {message}"))]
    QueryThreads { message: String },
    /// Authentication or TLS settings (the message names the flag).
    #[snafu(display("{message}"))]
    Auth { message: String },
}

impl DevCluster {
    pub async fn start(config: DevConfig) -> Result<Self, DevError> {
        use snafu::ResultExt;
        if ![1, 3, 5].contains(&config.catalog_voters) {
            return Err(DevError::Voters {
                n: config.catalog_voters,
            });
        }
        if config.auth {
            crate::cluster_auth::dev_secret(&config.data_dir)
                .and_then(|s| strata_proto::cluster::set_secret(Some(&s)))
                .map_err(|message| DevError::Auth { message })?;
        }
        // Bad certificate files fail the start before anything is made.
        if let Some(files) = &config.tls {
            files.load().map_err(|message| DevError::Auth { message })?;
        }
        let internal_tls = match (&config.cluster_tls_ca, &config.tls) {
            (None, _) => None,
            (Some(_), None) => {
                return Err(DevError::Auth {
                    message: "--cluster-tls-ca needs --tls-cert and --tls-key (the roles serve \
                              that certificate)"
                        .into(),
                })
            }
            (Some(ca), Some(files)) => {
                let pem = std::fs::read(ca).map_err(|e| DevError::Auth {
                    message: format!("cannot read --cluster-tls-ca {}: {e}", ca.display()),
                })?;
                strata_proto::cluster::set_tls_ca(Some(pem))
                    .map_err(|message| DevError::Auth { message })?;
                let identity = files.load().map_err(|message| DevError::Auth { message })?;
                Some(identity.tonic_config())
            }
        };
        // Members find each other by address: with several, each keeps the
        // port it got on the first start, so the directory starts again.
        let members_file = config.data_dir.join("catalog-members.json");
        let known: Vec<String> = if config.catalog_voters > 1 {
            std::fs::read(&members_file)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default()
        } else {
            vec![]
        };
        let listen =
            |i: usize, default: &str| known.get(i).cloned().unwrap_or_else(|| default.to_string());
        let first = CatalogServer::start(CatalogConfig {
            node_id: 1,
            data_dir: config.data_dir.join("catalog"),
            listen: listen(0, &config.catalog_addr),
            advertise: None,
            bootstrap: true,
            join: None,
            retention_check_interval: config.retention_check_interval,
            tls: internal_tls.clone(),
        })
        .await
        .context(CatalogSnafu)?;
        let seed = first.addr().to_string();
        let mut catalog = vec![first];
        for id in 2..=config.catalog_voters as u64 {
            // The first member keeps its directory name from before there
            // could be more than one.
            let member = CatalogServer::start(CatalogConfig {
                node_id: id,
                data_dir: config.data_dir.join(format!("catalog-{id}")),
                listen: listen(id as usize - 1, "127.0.0.1:0"),
                advertise: None,
                bootstrap: false,
                join: Some(seed.clone()),
                retention_check_interval: config.retention_check_interval,
                tls: internal_tls.clone(),
            })
            .await
            .context(CatalogSnafu)?;
            catalog.push(member);
        }
        if config.catalog_voters > 1 {
            let addrs: Vec<String> = catalog.iter().map(|m| m.addr().to_string()).collect();
            strata_catalog::fsutil::write_atomic(
                &members_file,
                &serde_json::to_vec(&addrs).expect("addresses serialize"),
            )
            .map_err(|e| DevError::Members {
                path: members_file.clone(),
                source: e,
            })?;
        }
        let catalog_addr = catalog_list(&catalog);
        // The roles share the query threads and the memory budget, as one
        // process of the same size would.
        let query_memory = QueryMemory::new(config.query_memory);
        let query_executor =
            QueryExecutor::with_default_threads().map_err(|e| DevError::QueryThreads {
                message: e.to_string(),
            })?;
        let mut storage = vec![];
        for id in 1..=config.storage_nodes as u64 {
            let mut engine = EngineConfig::new(config.data_dir.join(format!("storage-{id}")));
            if let Some(rows) = config.flush_rows {
                engine.flush_rows = rows;
            }
            if let Some(n) = config.max_series_per_database {
                engine.max_series_per_database = n;
            }
            let node = StorageNode::start(StorageConfig {
                node_id: id,
                listen: "127.0.0.1:0".into(),
                advertise: None,
                catalog_addr: catalog_addr.clone(),
                engine,
                heartbeat_interval: config.heartbeat_interval,
                heartbeat_timeout: config.heartbeat_timeout,
                query_memory: query_memory.clone(),
                query_executor: Some(query_executor.clone()),
                tls: internal_tls.clone(),
            })
            .await
            .context(StorageSnafu { node_id: id })?;
            storage.push(node);
        }
        let coordinator = Coordinator::start(CoordinatorConfig {
            http_listen: config.http_addr.clone(),
            flight_listen: config.flight_addr.clone(),
            catalog_addr,
            write_memory_limit_bytes: config.write_memory_limit_bytes,
            handoff: HandoffConfig {
                max_bytes: config.hinted_handoff_max_bytes,
                max_age: config.hinted_handoff_max_age,
                ..HandoffConfig::new(config.data_dir.join("coordinator").join("hints"))
            },
            write_timeout: config.write_timeout,
            anti_entropy_interval: config.anti_entropy_interval,
            anti_entropy_share: config.anti_entropy_share,
            query_memory,
            query_executor: Some(query_executor),
            query_timeout: config.query_timeout,
            require_auth: config.auth,
            tls: config.tls.clone(),
        })
        .await
        .context(CoordinatorSnafu)?;
        let new_admin_token = match config.auth {
            true => ensure_admin_token(
                &catalog_list(&catalog),
                config.admin_token.as_deref(),
                &config.data_dir,
            )
            .await
            .map_err(|message| DevError::Auth { message })?,
            false => None,
        };
        Ok(Self {
            catalog,
            storage,
            coordinator,
            new_admin_token,
        })
    }

    pub fn addrs(&self) -> DevAddrs {
        DevAddrs {
            http: self.coordinator.http_addr(),
            flight: self.coordinator.flight_addr(),
            catalog: catalog_list(&self.catalog),
            storage: self.storage.iter().map(|s| s.addr()).collect(),
        }
    }

    /// Stops the front doors first, then flushes and stops storage, then
    /// the catalog.
    pub async fn shutdown(self) {
        self.coordinator.shutdown().await;
        for s in self.storage {
            s.shutdown().await;
        }
        for c in self.catalog {
            c.shutdown().await;
        }
    }
}

/// Makes sure an admin can get in, once per data directory: the first
/// start creates `given` as the token `admin` (or, with none given, a new
/// random one, returned to be shown) and leaves a marker, so that a later
/// start does not bring back an admin token that was revoked since.
async fn ensure_admin_token(
    catalog: &str,
    given: Option<&str>,
    data_dir: &std::path::Path,
) -> Result<Option<String>, String> {
    use strata_catalog::tokens::{self, Grant, Level, Token};
    let marker = data_dir.join("admin-token-created");
    if marker.exists() {
        if given.is_some() {
            tracing::info!(
                "--admin-token is used on the first start only; this directory's admin token \
                 was made before (strata admin token create makes others)"
            );
        }
        return Ok(None);
    }
    let client = strata_catalog::CatalogClient::connect(catalog, Duration::from_secs(30))
        .await
        .map_err(|e| e.to_string())?;
    let state = client.state();
    let token = match given {
        Some(t) if state.tokens.values().any(|k| k.hash == tokens::hash(t)) => None,
        Some(_) if state.tokens.contains_key("admin") => {
            return Err(
                "a token named 'admin' exists and is not the --admin-token given; \
                        revoke it first (strata admin token revoke --name admin)"
                    .into(),
            )
        }
        Some(t) => Some(t.to_string()),
        None if state.tokens.is_empty() => Some(tokens::generate()?),
        None => None,
    };
    if let Some(token) = &token {
        let command = strata_catalog::Command::CreateToken {
            token: Token {
                name: "admin".into(),
                hash: tokens::hash(token),
                grants: vec![Grant {
                    database: "*".into(),
                    level: Level::Admin,
                }],
                created_ms: chrono::Utc::now().timestamp_millis(),
            },
        };
        client.execute(command).await.map_err(|e| e.to_string())?;
    }
    strata_catalog::fsutil::write_atomic(&marker, b"")
        .map_err(|e| format!("cannot write {}: {e}", marker.display()))?;
    Ok(token.filter(|_| given.is_none()))
}

fn catalog_list(members: &[CatalogServer]) -> String {
    members
        .iter()
        .map(|m| m.addr().to_string())
        .collect::<Vec<_>>()
        .join(",")
}
