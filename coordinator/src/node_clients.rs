//! Connections to storage nodes, one lazily connected channel per address,
//! shared by the write router and query execution.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow_flight::encode::{DictionaryHandling, FlightDataEncoderBuilder};
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightClient, FlightDescriptor};
use futures::{StreamExt, TryStreamExt};
use parking_lot::Mutex;
use strata_proto::CATALOG_VERSION_HEADER;
use strata_storage::digest::ShardDigest;
use tonic::transport::Channel;

/// Largest gRPC message exchanged with a storage node.
pub const MAX_MESSAGE_BYTES: usize = 512 << 20;

#[derive(Clone, Default)]
pub struct NodeClients {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
}

impl NodeClients {
    /// A Flight client for the node at `addr` (`host:port`).
    pub fn flight(&self, addr: &str) -> Result<FlightClient, tonic::Status> {
        let channel = {
            let mut channels = self.channels.lock();
            match channels.get(addr) {
                Some(c) => c.clone(),
                None => {
                    let c = strata_proto::cluster::endpoint(addr)
                        .map_err(|e| {
                            tonic::Status::invalid_argument(format!("bad node address: {e}"))
                        })?
                        .connect_timeout(std::time::Duration::from_secs(3))
                        .tcp_nodelay(true)
                        .connect_lazy();
                    channels.insert(addr.to_string(), c.clone());
                    c
                }
            }
        };
        let inner = FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut client = FlightClient::new_from_inner(inner);
        if let Some(secret) = strata_proto::cluster::secret_str() {
            client
                .add_header(strata_proto::cluster::CLUSTER_SECRET_HEADER, secret)
                .map_err(|e| tonic::Status::internal(format!("cluster secret: {e}")))?;
        }
        Ok(client)
    }
}

/// A request to a storage node made on the raw Flight client (not
/// [`FlightClient`], which adds the header itself): with the cluster secret.
pub fn cluster_request<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(secret) = strata_proto::cluster::secret_str() {
        if let Ok(value) = secret.parse() {
            request
                .metadata_mut()
                .insert(strata_proto::cluster::CLUSTER_SECRET_HEADER, value);
        }
    }
    request
}

/// Sends one shard's batches to the node at `addr` with Flight `DoPut`; the
/// node checks them against a catalog at least `catalog_version` new.
pub async fn put_shard(
    nodes: &NodeClients,
    addr: &str,
    catalog_version: u64,
    database: &str,
    table: &str,
    shard_id: u64,
    batches: Vec<RecordBatch>,
) -> Result<(), FlightError> {
    let mut client = nodes
        .flight(addr)
        .map_err(|e| FlightError::Tonic(Box::new(e)))?;
    client.add_header(CATALOG_VERSION_HEADER, &catalog_version.to_string())?;
    let desc = FlightDescriptor::new_path(vec![
        database.to_string(),
        table.to_string(),
        shard_id.to_string(),
    ]);
    // Batches may have different columns: each goes with its own schema
    // message (an encoder keeps the first schema it saw), the first with
    // the descriptor.
    let mut desc = Some(desc);
    let encoders: Vec<_> = batches
        .into_iter()
        .map(|b| {
            FlightDataEncoderBuilder::new()
                .with_flight_descriptor(desc.take())
                .with_dictionary_handling(DictionaryHandling::Resend)
                .build(futures::stream::iter([Ok(b)]))
        })
        .collect();
    let data = futures::stream::iter(encoders).flatten();
    let results = client.do_put(data.boxed()).await?;
    let _acks: Vec<_> = results.try_collect().await?;
    Ok(())
}

/// Runs the Flight action `kind` with a JSON `body` on the node at `addr`
/// and reads its first answer as JSON; errors say what was unreadable
/// (`what`).
pub async fn json_action<T: serde::de::DeserializeOwned>(
    nodes: &NodeClients,
    addr: &str,
    kind: &str,
    body: serde_json::Value,
    what: &str,
) -> Result<T, String> {
    let mut client = nodes.flight(addr).map_err(|e| e.message().to_string())?;
    let action = arrow_flight::Action::new(kind.to_string(), bytes::Bytes::from(body.to_string()));
    let results: Vec<bytes::Bytes> = client
        .do_action(action)
        .await
        .map_err(|e| e.to_string())?
        .try_collect()
        .await
        .map_err(|e| e.to_string())?;
    let first = results
        .first()
        .ok_or_else(|| format!("the node answered no {what}"))?;
    serde_json::from_slice(first).map_err(|e| format!("unreadable {what}: {e}"))
}

/// Digests of the shards (of what the node at `addr` holds of them), in
/// time buckets of `bucket_ns`.
pub async fn shard_digests(
    nodes: &NodeClients,
    addr: &str,
    shard_ids: &[u64],
    bucket_ns: i64,
) -> Result<Vec<ShardDigest>, String> {
    let body = serde_json::json!({ "shard_ids": shard_ids, "bucket_ns": bucket_ns });
    json_action(
        nodes,
        addr,
        strata_proto::SHARD_DIGEST_ACTION,
        body,
        "digests",
    )
    .await
}

/// Sends a delete (an encoded `DeleteRequest`) to the node at `addr`.
pub async fn delete_on(
    nodes: &NodeClients,
    addr: &str,
    request: Vec<u8>,
) -> Result<(), FlightError> {
    let mut client = nodes
        .flight(addr)
        .map_err(|e| FlightError::Tonic(Box::new(e)))?;
    let action = arrow_flight::Action::new("delete", bytes::Bytes::from(request));
    let _: Vec<bytes::Bytes> = client.do_action(action).await?.try_collect().await?;
    Ok(())
}

/// The plan fragments running on the node at `addr`.
pub async fn running_fragments(
    nodes: &NodeClients,
    addr: &str,
) -> Result<Vec<strata_storage::running::FragmentInfo>, String> {
    let body = serde_json::json!({});
    json_action(
        nodes,
        addr,
        strata_proto::RUNNING_FRAGMENTS_ACTION,
        body,
        "fragment list",
    )
    .await
}

/// Cancels the fragments of `query_id` on the node at `addr`; how many it
/// had.
pub async fn cancel_fragments(
    nodes: &NodeClients,
    addr: &str,
    query_id: &str,
    reason: &str,
) -> Result<usize, String> {
    let body = serde_json::json!({ "query_id": query_id, "reason": reason });
    let answer: serde_json::Value = json_action(
        nodes,
        addr,
        strata_proto::CANCEL_QUERY_ACTION,
        body,
        "answer",
    )
    .await?;
    Ok(answer["cancelled"].as_u64().unwrap_or(0) as usize)
}
