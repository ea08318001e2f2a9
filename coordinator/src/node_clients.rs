//! Connections to storage nodes, one lazily connected channel per address,
//! shared by the write router and query execution.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::FlightClient;
use parking_lot::Mutex;
use tonic::transport::{Channel, Endpoint};

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
                    let c = Endpoint::from_shared(format!("http://{addr}"))
                        .map_err(|e| {
                            tonic::Status::invalid_argument(format!("bad node address {addr}: {e}"))
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
        Ok(FlightClient::new_from_inner(inner))
    }
}
