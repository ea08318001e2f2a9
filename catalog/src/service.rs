//! The client-facing catalog gRPC service (`strata.catalog.v1`). Writes and
//! linearizable reads that reach a follower are forwarded to the leader.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use strata_proto::cluster::{SecretChannel, SendSecret};

use futures::{Stream, StreamExt};
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers, Membership, ServerState};
use strata_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use strata_proto::catalog::v1::catalog_service_server::CatalogService;
use strata_proto::catalog::v1::{
    AddLearnerRequest, CatalogState, ChangeMembershipRequest, ExecuteRequest, ExecuteResponse,
    GetStateRequest, HeartbeatRequest, HeartbeatResponse, Member, MembershipResponse,
    NodeHeartbeat, NodeLivenessRequest, NodeLivenessResponse, StatusRequest, StatusResponse,
    WatchRequest,
};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use crate::client::MAX_STATE_BYTES;
use crate::command::{Command, CommandResult, Rejection};
use crate::liveness::{now_ms, Liveness};
use crate::model::{CatalogData, NodeState};
use crate::raft::{NodeId, Raft};

pub struct CatalogServiceImpl {
    pub raft: Raft,
    pub node_id: NodeId,
    pub state: watch::Receiver<Arc<CatalogData>>,
    pub liveness: Arc<Liveness>,
    pub forward: Forwarder,
}

impl CatalogServiceImpl {
    /// A member to add must answer at its address as the id it is added
    /// under, at an address no other member has.
    async fn check_newcomer(&self, node_id: NodeId, addr: &str) -> Result<(), Status> {
        let m = self.raft.metrics().borrow().clone();
        for (id, node) in m.membership_config.membership().nodes() {
            if node.addr == addr && *id != node_id {
                return Err(Status::failed_precondition(format!(
                    "{addr} is the address of catalog member {id}; each member needs its own"
                )));
            }
            if *id == node_id && node.addr != addr {
                return Err(Status::failed_precondition(format!(
                    "catalog member {node_id} is already in the cluster at {}; remove it first \
                     or pick another id",
                    node.addr
                )));
            }
        }
        let status = self.status_of(addr).await.map_err(|e| {
            Status::failed_precondition(format!(
                "no catalog member answers at {addr} ({}); start it (without --bootstrap) first",
                e.message()
            ))
        })?;
        if status.node_id != node_id {
            return Err(Status::failed_precondition(format!(
                "the catalog member at {addr} is member {}, not {node_id}",
                status.node_id
            )));
        }
        Ok(())
    }

    async fn status_of(&self, addr: &str) -> Result<StatusResponse, Status> {
        let mut client = self.forward.client_at(addr)?;
        match tokio::time::timeout(Duration::from_secs(2), client.status(StatusRequest {})).await {
            Ok(r) => r.map(|r| r.into_inner()),
            Err(_) => Err(Status::unavailable("no answer within 2 s")),
        }
    }

    /// Waits until the member at `addr` has applied the log up to `index`.
    async fn wait_caught_up(&self, node_id: NodeId, addr: &str, index: u64) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(s) = self.status_of(addr).await {
                if s.last_applied >= index {
                    return Ok(());
                }
            }
            if tokio::time::Instant::now() > deadline {
                return Err(Status::deadline_exceeded(format!(
                    "catalog member {node_id} at {addr} did not catch up within 300 s; it stays a \
                     learner"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where to send what only the leader may answer; `None` when this
    /// member leads.
    fn leader_elsewhere(&self) -> Option<ForwardToLeader<NodeId, BasicNode>> {
        let m = self.raft.metrics().borrow().clone();
        if m.current_leader == Some(self.node_id) {
            return None;
        }
        Some(ForwardToLeader {
            leader_id: m.current_leader,
            leader_node: m
                .current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l).cloned()),
        })
    }
}

fn to_proto(data: &CatalogData) -> Result<CatalogState, Status> {
    Ok(CatalogState {
        version: data.version,
        state_json: serde_json::to_vec(data)
            .map_err(|e| Status::internal(format!("encoding catalog state: {e}")))?,
    })
}

/// Metadata key marking a request one member forwarded to another.
const FORWARDED: &str = "strata-forwarded";

fn forwarded<T>(request: &Request<T>) -> bool {
    request.metadata().contains_key(FORWARDED)
}

/// `message` as a request forwarded by this member.
fn onward<T>(message: T) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    r
}

/// Channels to the members this one forwards to, one per address.
#[derive(Default)]
pub struct Forwarder {
    clients:
        std::sync::Mutex<std::collections::HashMap<String, CatalogServiceClient<SecretChannel>>>,
}

/// How long a forwarded request may take. A leader that was paused or cut
/// off accepts connections but never answers; the client tries another
/// member after this.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);

impl Forwarder {
    fn client(
        &self,
        forward: &ForwardToLeader<NodeId, BasicNode>,
    ) -> Result<CatalogServiceClient<SecretChannel>, Status> {
        let Some(node) = &forward.leader_node else {
            return Err(Status::unavailable(
                "the catalog has no leader right now (election in progress); retry shortly",
            ));
        };
        self.client_at(&node.addr)
    }

    fn client_at(&self, addr: &str) -> Result<CatalogServiceClient<SecretChannel>, Status> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(addr) {
            return Ok(c.clone());
        }
        let channel = strata_proto::cluster::endpoint(addr)
            .map_err(|e| Status::invalid_argument(format!("bad member address: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(1))
            .connect_lazy();
        // A forwarded read carries the whole state back.
        let client = CatalogServiceClient::with_interceptor(channel, SendSecret)
            .max_decoding_message_size(MAX_STATE_BYTES);
        clients.insert(addr.to_string(), client.clone());
        Ok(client)
    }

    /// Sends a request on to the leader, within `timeout`; not a request
    /// that was itself forwarded here (`hop`): members with different
    /// ideas of who leads would pass it round.
    async fn send<T, Fut>(
        &self,
        hop: bool,
        forward: &ForwardToLeader<NodeId, BasicNode>,
        timeout: Duration,
        call: impl FnOnce(CatalogServiceClient<SecretChannel>) -> Fut,
    ) -> Result<Response<T>, Status>
    where
        Fut: std::future::Future<Output = Result<Response<T>, Status>>,
    {
        if hop {
            return Err(Status::unavailable(
                "the catalog member this request was forwarded to does not lead either \
                 (leadership is changing); retry shortly",
            ));
        }
        let client = self.client(forward)?;
        let addr = forward
            .leader_node
            .as_ref()
            .map(|n| n.addr.clone())
            .unwrap_or_default();
        match tokio::time::timeout(timeout, call(client)).await {
            Ok(Err(status)) if status.code() == tonic::Code::Unknown => {
                Err(Status::unavailable(format!(
                    "catalog leader at {addr} is unreachable: {}",
                    status.message()
                )))
            }
            Ok(answer) => answer,
            Err(_) => Err(Status::unavailable(format!(
                "catalog leader at {addr} did not answer within {timeout:?}"
            ))),
        }
    }
}

/// A failed membership change as the client sees it: another change in
/// progress is worth retrying (a member that just bootstrapped, or joined,
/// is still committing its own).
fn membership_error(
    e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>,
    what: &str,
) -> Status {
    use openraft::error::ChangeMembershipError as C;
    match e {
        RaftError::APIError(ClientWriteError::ChangeMembershipError(C::InProgress(p))) => {
            Status::unavailable(format!(
                "{what}: another membership change is being committed ({p}); retry shortly"
            ))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(C::EmptyMembership(_))) => {
            Status::failed_precondition(format!(
                "{what}: the catalog would be left without a voter"
            ))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(C::LearnerNotFound(l))) => {
            Status::failed_precondition(format!(
                "{what}: member {} must be added (as a learner) first",
                l.node_id
            ))
        }
        other => Status::unavailable(format!("{what}: {other}")),
    }
}

fn membership_response(m: &Option<Membership<NodeId, BasicNode>>) -> Response<MembershipResponse> {
    Response::new(MembershipResponse {
        membership_json: serde_json::to_string(m).unwrap_or_default(),
    })
}

/// How `strata admin catalog status` and `system.catalog` name a role.
pub fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "leader",
        ServerState::Follower => "follower",
        ServerState::Candidate => "candidate",
        ServerState::Learner => "learner",
        ServerState::Shutdown => "shutdown",
    }
}

#[tonic::async_trait]
impl CatalogService for CatalogServiceImpl {
    #[tracing::instrument(skip_all)]
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<ExecuteResponse>, Status> {
        let hop = forwarded(&request);
        let req = request.into_inner();
        let command: Command = serde_json::from_slice(&req.command_json)
            .map_err(|e| Status::invalid_argument(format!("bad catalog command: {e}")))?;
        match self.raft.client_write(command).await {
            Ok(resp) => Ok(Response::new(ExecuteResponse {
                version: resp.data.version,
                result_json: serde_json::to_vec(&resp.data.result)
                    .map_err(|e| Status::internal(format!("encoding result: {e}")))?,
            })),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                self.forward
                    .send(hop, &f, FORWARD_TIMEOUT, |mut c| async move {
                        c.execute(onward(req)).await
                    })
                    .await
            }
            Err(e) => Err(Status::unavailable(format!("catalog write failed: {e}"))),
        }
    }

    async fn get_state(
        &self,
        request: Request<GetStateRequest>,
    ) -> Result<Response<CatalogState>, Status> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(Response::new(to_proto(&self.state.borrow().clone())?)),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                let hop = forwarded(&request);
                let req = request.into_inner();
                self.forward
                    .send(hop, &f, FORWARD_TIMEOUT, |mut c| async move {
                        c.get_state(onward(req)).await
                    })
                    .await
            }
            Err(e) => Err(Status::unavailable(format!("catalog read failed: {e}"))),
        }
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<CatalogState, Status>> + Send>>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let known = request.into_inner().known_version;
        let stream = WatchStream::new(self.state.clone())
            .filter(move |d| futures::future::ready(d.version > known))
            .map(|d| to_proto(&d));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn add_learner(
        &self,
        request: Request<AddLearnerRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let hop = forwarded(&request);
        let req = request.into_inner();
        if req.addr.is_empty() {
            return Err(Status::invalid_argument("a learner needs an address"));
        }
        if let Some(f) = self.leader_elsewhere() {
            // Waits for the learner to catch up, as below.
            return self
                .forward
                .send(hop, &f, Duration::from_secs(300), |mut c| async move {
                    c.add_learner(onward(req)).await
                })
                .await;
        }
        self.check_newcomer(req.node_id, &req.addr).await?;
        let target = self.raft.metrics().borrow().last_log_index.unwrap_or(0);
        match self
            .raft
            .add_learner(req.node_id, BasicNode::new(&req.addr), true)
            .await
        {
            Ok(resp) => {
                // Promoting a learner that is behind would stall commits:
                // wait until it has applied the log as it was.
                self.wait_caught_up(req.node_id, &req.addr, target).await?;
                Ok(membership_response(&resp.membership))
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                self.forward
                    .send(hop, &f, Duration::from_secs(300), |mut c| async move {
                        c.add_learner(onward(req)).await
                    })
                    .await
            }
            Err(e) => Err(membership_error(
                e,
                &format!("adding catalog member {} at {}", req.node_id, req.addr),
            )),
        }
    }

    async fn change_membership(
        &self,
        request: Request<ChangeMembershipRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let hop = forwarded(&request);
        let req = request.into_inner();
        let change: ChangeMembers<NodeId, BasicNode> = if !req.voters.is_empty() {
            ChangeMembers::ReplaceAllVoters(req.voters.iter().copied().collect())
        } else if !req.add_voters.is_empty() && req.remove_voters.is_empty() {
            ChangeMembers::AddVoterIds(req.add_voters.iter().copied().collect())
        } else if req.add_voters.is_empty() && !req.remove_voters.is_empty() {
            ChangeMembers::RemoveVoters(req.remove_voters.iter().copied().collect())
        } else {
            return Err(Status::invalid_argument(
                "give either the new voters, or voters to add, or voters to remove",
            ));
        };
        // `retain = false`: a removed voter leaves the cluster instead of
        // staying on as a learner.
        match self.raft.change_membership(change, false).await {
            Ok(resp) => Ok(membership_response(&resp.membership)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                self.forward
                    .send(hop, &f, FORWARD_TIMEOUT * 10, |mut c| async move {
                        c.change_membership(onward(req)).await
                    })
                    .await
            }
            Err(e) => Err(membership_error(e, "changing catalog membership")),
        }
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let hop = forwarded(&request);
        let req = request.into_inner();
        if let Some(f) = self.leader_elsewhere() {
            return self
                .forward
                .send(hop, &f, FORWARD_TIMEOUT, |mut c| async move {
                    c.heartbeat(onward(req)).await
                })
                .await;
        }
        let state = self.state.borrow().clone();
        if state.removed_nodes.contains(&req.node_id) {
            return Err(removed_node(req.node_id));
        }
        let timeout = Duration::from_millis(req.timeout_ms.clamp(100, 3_600_000));
        if let Err(addr) =
            self.liveness
                .record(req.node_id, timeout, &req.instance, &req.flight_addr)
        {
            return Err(Status::failed_precondition(format!(
                "storage node id {} is in use by a running node at {addr} (another data \
                 directory); give this node another --node-id",
                req.node_id
            )));
        }
        if let Some(n) = state.nodes.get(&req.node_id) {
            if !n.instance.is_empty() && !req.instance.is_empty() && n.instance != req.instance {
                return Err(Status::failed_precondition(format!(
                    "storage node id {} belongs to another data directory (last at {}); a node \
                     whose data is lost joins under a new --node-id",
                    req.node_id, n.flight_addr
                )));
            }
        }
        let known = state.nodes.get(&req.node_id).is_some_and(|n| {
            n.flight_addr == req.flight_addr
                && n.state == NodeState::Up
                && n.instance == req.instance
        });
        let version = if known {
            state.version
        } else {
            // New, moved, or back from being down.
            if req.flight_addr.is_empty() {
                return Err(Status::invalid_argument(
                    "a heartbeat needs the node's address",
                ));
            }
            let command = Command::RegisterNode {
                id: req.node_id,
                flight_addr: req.flight_addr.clone(),
                at_ms: now_ms(),
                instance: req.instance.clone(),
            };
            match self.raft.client_write(command).await {
                Ok(resp) => match resp.data.result {
                    CommandResult::Rejected(Rejection::NodeRemoved { id }) => {
                        return Err(removed_node(id))
                    }
                    CommandResult::Rejected(r) => {
                        return Err(Status::failed_precondition(r.to_string()))
                    }
                    _ => resp.data.version,
                },
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    return self
                        .forward
                        .send(hop, &f, FORWARD_TIMEOUT, |mut c| async move {
                            c.heartbeat(onward(req)).await
                        })
                        .await
                }
                Err(e) => return Err(Status::unavailable(format!("catalog write failed: {e}"))),
            }
        };
        Ok(Response::new(HeartbeatResponse {
            catalog_version: version,
        }))
    }

    async fn node_liveness(
        &self,
        request: Request<NodeLivenessRequest>,
    ) -> Result<Response<NodeLivenessResponse>, Status> {
        if let Some(f) = self.leader_elsewhere() {
            let hop = forwarded(&request);
            let req = request.into_inner();
            return self
                .forward
                .send(hop, &f, FORWARD_TIMEOUT, |mut c| async move {
                    c.node_liveness(onward(req)).await
                })
                .await;
        }
        let nodes = self
            .liveness
            .heard()
            .into_iter()
            .map(|(node_id, last_heartbeat_ms, timeout)| NodeHeartbeat {
                node_id,
                last_heartbeat_ms,
                timeout_ms: timeout.as_millis() as u64,
            })
            .collect();
        Ok(Response::new(NodeLivenessResponse { nodes }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members: Vec<Member> = membership
            .nodes()
            .map(|(id, n)| Member {
                node_id: *id,
                addr: n.addr.clone(),
                voter: voters.contains(id),
            })
            .collect();
        let addr_of = |id: NodeId| {
            members
                .iter()
                .find(|m| m.node_id == id)
                .map(|m| m.addr.clone())
        };
        Ok(Response::new(StatusResponse {
            node_id: self.node_id,
            leader_id: m.current_leader,
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            catalog_version: self.state.borrow().version,
            leader_addr: m.current_leader.and_then(addr_of).unwrap_or_default(),
            role: role_name(m.state).to_string(),
            last_log_index: m.last_log_index.unwrap_or(0),
            addr: addr_of(self.node_id).unwrap_or_default(),
            members,
        }))
    }
}

/// What a storage node whose id was removed from the cluster hears: it may
/// not serve again under that id.
fn removed_node(id: u64) -> Status {
    Status::failed_precondition(format!(
        "storage node {id} was removed from the cluster (strata admin node remove); its \
         shards live on other nodes now. Start this node with a new --node-id and an empty \
         data directory to add it back"
    ))
}
