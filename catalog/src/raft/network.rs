//! Raft transport between catalog voters over gRPC (`strata.raft.v1`), and
//! the server side that hands received messages to the local Raft node.

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use strata_proto::cluster::{SecretChannel, SendSecret};
use strata_proto::raft::v1::raft_service_client::RaftServiceClient;
use strata_proto::raft::v1::raft_service_server::RaftService;
use strata_proto::raft::v1::RaftMessage;

use super::{NodeId, Raft, TypeConfig};

/// Largest Raft message either side accepts. Entries and snapshot chunks
/// travel as JSON, in which a snapshot's bytes take about 3.6 times their
/// size: one of openraft's default 3 MiB chunks is over 10 MiB, past
/// gRPC's default 4 MiB limit. Chunks are 1 MiB and appends carry at most
/// 64 entries (each at most a request's worth of new columns), so messages
/// stay well below this.
pub(crate) const MAX_RAFT_MESSAGE_BYTES: usize = 256 << 20;

/// Creates one lazily connected gRPC client per peer.
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerClient {
        let client = strata_proto::cluster::endpoint(&node.addr).map(|e| {
            RaftServiceClient::with_interceptor(e.connect_lazy(), SendSecret)
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES)
        });
        PeerClient {
            target,
            addr: node.addr.clone(),
            client,
        }
    }
}

pub struct PeerClient {
    target: NodeId,
    addr: String,
    client: Result<RaftServiceClient<SecretChannel>, String>,
}

type RpcResult<T, E> = Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl PeerClient {
    async fn call<Req, Resp, E>(&mut self, kind: RpcKind, req: &Req) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match &mut self.client {
            Ok(c) => c,
            Err(e) => {
                let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, e.clone());
                return Err(RPCError::Unreachable(Unreachable::new(&e)));
            }
        };
        let payload =
            serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let msg = tonic::Request::new(RaftMessage {
            payload_json: payload,
        });
        let reply = match kind {
            RpcKind::Append => client.append_entries(msg).await,
            RpcKind::Vote => client.vote(msg).await,
            RpcKind::Snapshot => client.install_snapshot(msg).await,
        }
        .map_err(|s| {
            tracing::debug!(peer = %self.addr, status = %s, "raft peer unreachable");
            RPCError::Unreachable(Unreachable::new(&s))
        })?;
        let result: Result<Resp, RaftError<NodeId, E>> =
            serde_json::from_slice(&reply.into_inner().payload_json)
                .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

#[derive(Clone, Copy)]
enum RpcKind {
    Append,
    Vote,
    Snapshot,
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>, openraft::error::Infallible> {
        self.call(RpcKind::Append, &rpc).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        self.call(RpcKind::Snapshot, &rpc).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        _option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>, openraft::error::Infallible> {
        self.call(RpcKind::Vote, &rpc).await
    }
}

/// The receiving side: decodes a peer's message and runs it on `raft`.
pub struct RaftServer {
    pub raft: Raft,
}

fn decode<T: DeserializeOwned>(req: tonic::Request<RaftMessage>) -> Result<T, tonic::Status> {
    serde_json::from_slice(&req.into_inner().payload_json)
        .map_err(|e| tonic::Status::invalid_argument(format!("bad raft message: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
    let payload_json = serde_json::to_vec(v)
        .map_err(|e| tonic::Status::internal(format!("encoding raft reply: {e}")))?;
    Ok(tonic::Response::new(RaftMessage { payload_json }))
}

#[tonic::async_trait]
impl RaftService for RaftServer {
    async fn append_entries(
        &self,
        req: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req)?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(
        &self,
        req: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = decode(req)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<RaftMessage>,
    ) -> Result<tonic::Response<RaftMessage>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode(req)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }
}
