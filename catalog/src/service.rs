//! The client-facing catalog gRPC service (`strata.catalog.v1`). Writes and
//! linearizable reads that reach a follower are forwarded to the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use openraft::error::{ClientWriteError, ForwardToLeader, RaftError};
use openraft::BasicNode;
use strata_proto::catalog::v1::catalog_service_client::CatalogServiceClient;
use strata_proto::catalog::v1::catalog_service_server::CatalogService;
use strata_proto::catalog::v1::{
    AddLearnerRequest, CatalogState, ChangeMembershipRequest, ExecuteRequest, ExecuteResponse,
    GetStateRequest, MembershipResponse, StatusRequest, StatusResponse, WatchRequest,
};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;
use tonic::{Request, Response, Status};

use crate::client::MAX_STATE_BYTES;
use crate::command::Command;
use crate::model::CatalogData;
use crate::raft::{NodeId, Raft};

pub struct CatalogServiceImpl {
    pub raft: Raft,
    pub node_id: NodeId,
    pub state: watch::Receiver<Arc<CatalogData>>,
}

fn to_proto(data: &CatalogData) -> Result<CatalogState, Status> {
    Ok(CatalogState {
        version: data.version,
        state_json: serde_json::to_vec(data)
            .map_err(|e| Status::internal(format!("encoding catalog state: {e}")))?,
    })
}

async fn leader_client(
    forward: &ForwardToLeader<NodeId, BasicNode>,
) -> Result<CatalogServiceClient<tonic::transport::Channel>, Status> {
    let Some(node) = &forward.leader_node else {
        return Err(Status::unavailable(
            "the catalog has no leader right now (election in progress); retry shortly",
        ));
    };
    let client = CatalogServiceClient::connect(format!("http://{}", node.addr))
        .await
        .map_err(|e| {
            Status::unavailable(format!(
                "catalog leader at {} is unreachable: {e}",
                node.addr
            ))
        })?;
    // A forwarded read carries the whole state back.
    Ok(client.max_decoding_message_size(MAX_STATE_BYTES))
}

#[tonic::async_trait]
impl CatalogService for CatalogServiceImpl {
    #[tracing::instrument(skip_all)]
    async fn execute(
        &self,
        request: Request<ExecuteRequest>,
    ) -> Result<Response<ExecuteResponse>, Status> {
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
                leader_client(&f).await?.execute(req).await
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
                leader_client(&f)
                    .await?
                    .get_state(request.into_inner())
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
        let req = request.into_inner();
        let resp = self
            .raft
            .add_learner(req.node_id, BasicNode::new(&req.addr), true)
            .await
            .map_err(|e| Status::failed_precondition(format!("adding learner: {e}")))?;
        Ok(Response::new(MembershipResponse {
            membership_json: serde_json::to_string(&resp.membership).unwrap_or_default(),
        }))
    }

    async fn change_membership(
        &self,
        request: Request<ChangeMembershipRequest>,
    ) -> Result<Response<MembershipResponse>, Status> {
        let voters: BTreeSet<u64> = request.into_inner().voters.into_iter().collect();
        let resp = self
            .raft
            .change_membership(voters, false)
            .await
            .map_err(|e| Status::failed_precondition(format!("changing membership: {e}")))?;
        Ok(Response::new(MembershipResponse {
            membership_json: serde_json::to_string(&resp.membership).unwrap_or_default(),
        }))
    }

    async fn status(
        &self,
        _request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        let m = self.raft.metrics().borrow().clone();
        let nodes: BTreeMap<_, _> = m
            .membership_config
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        let leader_addr = m
            .current_leader
            .and_then(|l| nodes.get(&l).cloned())
            .unwrap_or_default();
        Ok(Response::new(StatusResponse {
            node_id: self.node_id,
            leader_id: m.current_leader,
            term: m.current_term,
            last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            catalog_version: self.state.borrow().version,
            leader_addr,
        }))
    }
}
