//! The catalog client used by coordinators, storage nodes and `strata
//! admin`: requests that follow the leader over a list of members, and a
//! cached copy of the catalog fed by a watch stream on the leader that never
//! moves to an older version, also across a reconnect to another member.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use strata_proto::cluster::{SecretChannel, SendSecret};

use serde::Serialize;
use snafu::ResultExt;
use strata_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use strata_proto::catalog::v1::{
    CatalogState, ExecuteRequest, GetStateRequest, HeartbeatRequest, NodeHeartbeat,
    NodeLivenessRequest, StatusRequest, StatusResponse, WatchRequest,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::command::{Command, CommandResult};
use crate::error::{DecodeSnafu, Error, Result};
use crate::model::CatalogData;

/// Largest catalog state a client accepts.
pub(crate) const MAX_STATE_BYTES: usize = 256 << 20;

/// How long one request to one member may take before the client counts
/// the member as unresponsive and asks another.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request goes on being retried over the members (a leader
/// election takes about a second) before it fails.
pub const RETRY_PATIENCE: Duration = Duration::from_secs(20);

/// The longest wait between two rounds over the members. Short: a round
/// costs a few local RPCs, and an election is over in about a second.
const MAX_BACKOFF: Duration = Duration::from_millis(200);

/// How often a watch checks that the member it listens to still leads.
const WATCH_CHECK: Duration = Duration::from_secs(1);

/// The members of a catalog cluster as a client knows them: the addresses
/// it was given plus the ones members reported, one lazily connected
/// channel each (HTTP/2 pings every 500 ms, 1 s to answer), and the member that answered last (the leader, usually)
/// tried first.
#[derive(Clone)]
pub struct Members {
    inner: Arc<MembersInner>,
}

struct MembersInner {
    addrs: Mutex<Vec<String>>,
    clients: Mutex<HashMap<String, CatalogServiceClient<SecretChannel>>>,
    preferred: Mutex<Option<String>>,
}

/// Errors that say "this member could not answer now", after which another
/// member (or the same one, later) may.
///
/// A connection that breaks mid-request (the member shut down or was
/// killed) comes back as `Internal` with an HTTP/2 error; that is the
/// member too. Commands carry request ids, so retrying one is safe.
fn retryable(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::Unknown
        | Code::Aborted => true,
        Code::Internal => status.message().contains("h2 protocol error"),
        _ => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Members {
    /// Parses `host:port[,host:port...]`.
    pub fn parse(addrs: &str) -> Result<Self> {
        let bad = |message: String| Error::BadAddress {
            addrs: addrs.to_string(),
            message,
        };
        let mut list: Vec<String> = vec![];
        for a in addrs.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            strata_proto::cluster::endpoint(a).map_err(bad)?;
            if !list.iter().any(|x| x == a) {
                list.push(a.to_string());
            }
        }
        if list.is_empty() {
            return Err(bad("no address given".to_string()));
        }
        Ok(Self {
            inner: Arc::new(MembersInner {
                addrs: Mutex::new(list),
                clients: Mutex::new(HashMap::new()),
                preferred: Mutex::new(None),
            }),
        })
    }

    /// Every address known: given and learned.
    pub fn addrs(&self) -> Vec<String> {
        lock(&self.inner.addrs).clone()
    }

    /// A client for the member at `addr`. HTTP/2 keepalive notices a member
    /// that stopped answering (killed, paused, cut off) within seconds, also
    /// on a quiet watch stream.
    pub fn client(&self, addr: &str) -> CatalogServiceClient<SecretChannel> {
        let mut clients = lock(&self.inner.clients);
        if let Some(c) = clients.get(addr) {
            return c.clone();
        }
        let channel = strata_proto::cluster::endpoint(addr)
            .expect("checked when the address was added")
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_millis(500))
            .keep_alive_timeout(Duration::from_secs(1))
            .keep_alive_while_idle(true)
            .connect_lazy();
        // The whole state travels in one message; allow it to grow.
        let client = CatalogServiceClient::with_interceptor(channel, SendSecret)
            .max_decoding_message_size(MAX_STATE_BYTES);
        clients.insert(addr.to_string(), client.clone());
        client
    }

    /// Takes note of the members and leader a member reported.
    pub fn learn(&self, status: &StatusResponse) {
        {
            let mut addrs = lock(&self.inner.addrs);
            for m in &status.members {
                if !m.addr.is_empty()
                    && !addrs.contains(&m.addr)
                    && strata_proto::cluster::endpoint(&m.addr).is_ok()
                {
                    addrs.push(m.addr.clone());
                }
            }
        }
        if !status.leader_addr.is_empty() {
            *lock(&self.inner.preferred) = Some(status.leader_addr.clone());
        }
    }

    fn prefer(&self, addr: &str) {
        *lock(&self.inner.preferred) = Some(addr.to_string());
    }

    /// The order to try members in: the preferred one first.
    fn order(&self) -> Vec<String> {
        let mut addrs = self.addrs();
        if let Some(p) = lock(&self.inner.preferred).clone() {
            if let Some(i) = addrs.iter().position(|a| *a == p) {
                addrs[..=i].rotate_right(1);
            }
        }
        addrs
    }

    /// Runs `f` against one member after another (the preferred first) until
    /// one answers, waiting between rounds with a growing backoff, for at
    /// most `patience`. An answer that is an error of the request itself
    /// (not of the member) is returned as is.
    pub async fn call<T, F, Fut>(
        &self,
        what: &'static str,
        attempt_timeout: Duration,
        patience: Duration,
        mut f: F,
    ) -> Result<T>
    where
        F: FnMut(CatalogServiceClient<SecretChannel>) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(50);
        let mut last = String::new();
        // Waiting long (the catalog not started yet, or without a quorum)
        // is said now and then, not only when giving up.
        let mut next_warning = start + Duration::from_secs(5);
        loop {
            for addr in self.order() {
                match tokio::time::timeout(attempt_timeout, f(self.client(&addr))).await {
                    Ok(Ok(v)) => {
                        self.prefer(&addr);
                        return Ok(v);
                    }
                    Ok(Err(status)) if !retryable(&status) => {
                        return Err(Error::Rpc {
                            addr,
                            source: status,
                        })
                    }
                    Ok(Err(status)) => {
                        tracing::debug!(%addr, %status, what, "catalog member did not answer");
                        last = format!("{addr}: {}", status.message());
                    }
                    Err(_) => {
                        last = format!("{addr}: no answer within {attempt_timeout:?}");
                    }
                }
            }
            if Instant::now() >= next_warning {
                tracing::warn!(
                    what,
                    members = %self.addrs().join(","),
                    last = %last,
                    waited_s = start.elapsed().as_secs(),
                    "the catalog has not answered yet; still trying"
                );
                next_warning += Duration::from_secs(10);
            }
            if start.elapsed() + backoff > patience {
                return Err(Error::NoMember {
                    what,
                    members: self.addrs().join(", "),
                    waited: start.elapsed(),
                    last,
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Every known member's status (or why it gave none), asked at once.
    pub async fn statuses(&self, timeout: Duration) -> Vec<(String, Result<StatusResponse>)> {
        let addrs = self.addrs();
        let asks = addrs.iter().map(|addr| {
            let mut client = self.client(addr);
            async move {
                let answer = match tokio::time::timeout(timeout, client.status(StatusRequest {}))
                    .await
                {
                    Ok(Ok(s)) => Ok(s.into_inner()),
                    Ok(Err(status)) => Err(Error::Rpc {
                        addr: addr.clone(),
                        source: status,
                    }),
                    Err(_) => Err(Error::Rpc {
                        addr: addr.clone(),
                        source: Status::deadline_exceeded(format!("no answer within {timeout:?}")),
                    }),
                };
                (addr.clone(), answer)
            }
        });
        let answers = futures::future::join_all(asks).await;
        for (_, a) in &answers {
            if let Ok(s) = a {
                self.learn(s);
            }
        }
        answers
    }
}

#[derive(Clone)]
pub struct CatalogClient {
    members: Members,
    cache: Arc<watch::Sender<Arc<CatalogData>>>,
    requests: Arc<RequestIds>,
    _watcher: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Ids for [`Command::Once`]: a random prefix per client and a counter.
struct RequestIds {
    prefix: u64,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.write_u32(std::process::id());
        Self {
            prefix: h.finish(),
            next: AtomicU64::new(0),
        }
    }

    fn next(&self) -> String {
        format!(
            "{:016x}-{}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
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
    /// Connects to the catalog at `addrs` (`host:port[,host:port...]`, any
    /// of its members), retrying for up to `patience` while none answers yet
    /// (roles may start in any order).
    pub async fn connect(addrs: &str, patience: Duration) -> Result<Self> {
        let members = Members::parse(addrs)?;
        let initial = members
            .call(
                "a read of the catalog state",
                REQUEST_TIMEOUT,
                patience,
                |mut c| async move { c.get_state(GetStateRequest {}).await },
            )
            .await?;
        let (tx, _) = watch::channel(Arc::new(decode(initial.into_inner())?));
        let cache = Arc::new(tx);
        let watcher = tokio::spawn(watch_loop(members.clone(), cache.clone()));
        Ok(Self {
            members,
            cache,
            requests: Arc::new(RequestIds::new()),
            _watcher: Arc::new(AbortOnDrop(watcher)),
        })
    }

    pub fn members(&self) -> &Members {
        &self.members
    }

    /// The newest catalog state this client has seen.
    pub fn state(&self) -> Arc<CatalogData> {
        self.cache.borrow().clone()
    }

    pub fn subscribe(&self) -> watch::Receiver<Arc<CatalogData>> {
        self.cache.subscribe()
    }

    /// Runs a command through Raft, on another member if the one asked dies
    /// or loses leadership (the command carries an id, so a retry of one
    /// that was applied is answered, not applied again). Returns its result
    /// once the cached state includes it; a rejection becomes
    /// [`Error::Rejected`].
    pub async fn execute(&self, command: Command) -> Result<CommandResult> {
        let command = Command::Once {
            request_id: self.requests.next(),
            command: Box::new(command),
        };
        let command_json = serde_json::to_vec(&command).context(DecodeSnafu {
            what: "catalog command",
        })?;
        let resp = self
            .members
            .call(
                "a catalog command",
                REQUEST_TIMEOUT,
                RETRY_PATIENCE,
                |mut c| {
                    let command_json = command_json.clone();
                    async move { c.execute(ExecuteRequest { command_json }).await }
                },
            )
            .await?
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

    /// Tells the catalog leader that storage node `node_id` is alive (one
    /// round over the members, within `timeout`), registering it when it is
    /// new, moved, or was marked down. `instance` names the node's data
    /// directory. Returns a catalog version that includes the node.
    pub async fn heartbeat(
        &self,
        node_id: u64,
        instance: &str,
        flight_addr: &str,
        timeout: Duration,
    ) -> Result<u64> {
        let request = HeartbeatRequest {
            node_id,
            flight_addr: flight_addr.to_string(),
            timeout_ms: timeout.as_millis() as u64,
            instance: instance.to_string(),
        };
        let attempt = timeout.min(REQUEST_TIMEOUT);
        self.members
            .call("a heartbeat", attempt, attempt, |mut c| {
                let request = request.clone();
                async move { c.heartbeat(request).await }
            })
            .await
            .map(|r| r.into_inner().catalog_version)
    }

    /// When the leader last heard from each storage node.
    pub async fn node_liveness(&self) -> Result<Vec<NodeHeartbeat>> {
        let resp = self
            .members
            .call(
                "a node liveness request",
                REQUEST_TIMEOUT,
                REQUEST_TIMEOUT,
                |mut c| async move { c.node_liveness(NodeLivenessRequest {}).await },
            )
            .await?;
        Ok(resp.into_inner().nodes)
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
            .members
            .call(
                "a read of the catalog state",
                REQUEST_TIMEOUT,
                RETRY_PATIENCE,
                |mut c| async move { c.get_state(GetStateRequest {}).await },
            )
            .await?
            .into_inner();
        offer(&self.cache, decode(state)?);
        Ok(())
    }
}

/// The member to watch: the leader of the highest term among those that
/// answer, else the member with the newest state; never one whose state is
/// older than `held`.
async fn watch_target(members: &Members, held: u64) -> Option<String> {
    let statuses = members.statuses(WATCH_CHECK).await;
    let fresh = statuses
        .into_iter()
        .filter_map(|(addr, s)| s.ok().map(|s| (addr, s)))
        .filter(|(_, s)| s.catalog_version >= held);
    fresh
        .max_by_key(|(_, s)| (s.role == "leader", s.term, s.catalog_version))
        .map(|(addr, _)| addr)
}

async fn watch_loop(members: Members, cache: Arc<watch::Sender<Arc<CatalogData>>>) {
    loop {
        let held = cache.borrow().version;
        if let Some(addr) = watch_target(&members, held).await {
            watch_member(&members, &addr, &cache).await;
        }
        // A leader change is under way or no member answers.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Applies the states one member streams until the stream ends, the member
/// stops answering, or another member leads.
async fn watch_member(members: &Members, addr: &str, cache: &watch::Sender<Arc<CatalogData>>) {
    let mut client = members.client(addr);
    let known_version = cache.borrow().version;
    let mut stream = match tokio::time::timeout(
        REQUEST_TIMEOUT,
        client.watch(WatchRequest { known_version }),
    )
    .await
    {
        Ok(Ok(s)) => s.into_inner(),
        Ok(Err(status)) => {
            tracing::debug!(%addr, %status, "catalog watch failed");
            return;
        }
        Err(_) => return,
    };
    let mut check = tokio::time::interval(WATCH_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    check.tick().await;
    loop {
        tokio::select! {
            message = stream.message() => match message {
                Ok(Some(state)) => match decode(state) {
                    Ok(data) => offer(cache, data),
                    Err(e) => tracing::warn!(error = %e, "ignoring catalog update"),
                },
                Ok(None) => return,
                Err(status) => {
                    tracing::debug!(%addr, %status, "catalog watch interrupted");
                    return;
                }
            },
            _ = check.tick() => {
                // A member that lost leadership, or was cut off from the
                // others, keeps the stream open but hears of no change.
                let status = tokio::time::timeout(WATCH_CHECK, client.status(StatusRequest {})).await;
                match status {
                    Ok(Ok(s)) => {
                        let s = s.into_inner();
                        members.learn(&s);
                        // Only the leader is sure to hear of every change;
                        // a follower is watched only while none leads.
                        if s.role != "leader" {
                            return;
                        }
                    }
                    _ => return,
                }
            }
        }
    }
}

/// One member as `strata admin catalog status` and `system.catalog` show it.
#[derive(Debug, Clone, Serialize)]
pub struct MemberRow {
    pub node_id: Option<u64>,
    pub address: String,
    /// leader, follower, candidate, learner, or `unreachable`.
    pub role: String,
    pub voter: Option<bool>,
    pub leader_id: Option<u64>,
    pub term: Option<u64>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub version: Option<u64>,
    /// Why the member did not answer.
    pub error: Option<String>,
}

/// Asks every known member (and every member they name) for its status.
pub async fn survey(members: &Members) -> Vec<MemberRow> {
    let timeout = Duration::from_secs(2);
    // The first round learns the members the given ones know of; the
    // second asks those too.
    members.statuses(timeout).await;
    let answers = members.statuses(timeout).await;
    // Membership as the member in the highest term sees it.
    let membership: BTreeMap<String, (u64, bool)> = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .max_by_key(|s| (s.term, s.last_log_index))
        .map(|s| {
            s.members
                .iter()
                .map(|m| (m.addr.clone(), (m.node_id, m.voter)))
                .collect()
        })
        .unwrap_or_default();
    let mut rows: Vec<MemberRow> = answers
        .into_iter()
        .map(|(addr, answer)| match answer {
            Ok(s) => {
                let mut r = row(&addr, &s, membership.get(&addr).map(|m| m.1));
                if !membership.is_empty() && !membership.contains_key(&addr) {
                    // Still running, but no longer in the cluster.
                    r.role = "removed".to_string();
                    r.voter = Some(false);
                }
                r
            }
            Err(e) => MemberRow {
                node_id: membership.get(&addr).map(|m| m.0),
                address: addr.clone(),
                role: "unreachable".to_string(),
                voter: membership.get(&addr).map(|m| m.1),
                leader_id: None,
                term: None,
                last_log_index: None,
                last_applied: None,
                version: None,
                error: Some(e.to_string()),
            },
        })
        .collect();
    rows.sort_by_key(|r| (r.node_id.unwrap_or(u64::MAX), r.address.clone()));
    rows
}

fn row(addr: &str, s: &StatusResponse, voter: Option<bool>) -> MemberRow {
    MemberRow {
        node_id: Some(s.node_id),
        address: addr.to_string(),
        role: s.role.clone(),
        voter,
        leader_id: s.leader_id,
        term: Some(s.term),
        last_log_index: Some(s.last_log_index),
        last_applied: Some(s.last_applied),
        version: Some(s.catalog_version),
        error: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_lists_parse_and_reject_garbage() {
        let m = Members::parse(" a:1, b:2,,a:1 ").unwrap();
        assert_eq!(m.addrs(), vec!["a:1", "b:2"]);
        assert!(matches!(
            Members::parse(" , "),
            Err(Error::BadAddress { .. })
        ));
        assert!(matches!(
            Members::parse("a:1,not an address"),
            Err(Error::BadAddress { .. })
        ));
    }

    #[test]
    fn a_broken_connection_is_retried_a_bad_request_is_not() {
        assert!(retryable(&Status::internal(
            "h2 protocol error: http2 error"
        )));
        assert!(retryable(&Status::unavailable("leader changing")));
        assert!(!retryable(&Status::internal(
            "encoding catalog state: oops"
        )));
        assert!(!retryable(&Status::invalid_argument("bad command")));
    }

    #[test]
    fn the_preferred_member_is_tried_first() {
        let m = Members::parse("a:1,b:2,c:3").unwrap();
        m.prefer("c:3");
        assert_eq!(m.order(), vec!["c:3", "a:1", "b:2"]);
        m.learn(&StatusResponse {
            leader_addr: "d:4".into(),
            members: vec![strata_proto::catalog::v1::Member {
                node_id: 4,
                addr: "d:4".into(),
                voter: true,
            }],
            ..Default::default()
        });
        assert_eq!(m.order(), vec!["d:4", "a:1", "b:2", "c:3"]);
    }

    #[test]
    fn request_ids_are_unique_per_client() {
        let (a, b) = (RequestIds::new(), RequestIds::new());
        let ids: std::collections::HashSet<String> =
            (0..100).flat_map(|_| [a.next(), b.next()]).collect();
        assert_eq!(ids.len(), 200);
    }
}
