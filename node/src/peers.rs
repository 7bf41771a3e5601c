//! Connections to peers: one lazily connected gRPC channel per address,
//! reused by every request, with TCP_NODELAY set.

use kv_proto::v1::kv_client::KvClient;
use kv_proto::v1::peer_client::PeerClient;
use kv_proto::v1::PeerHeader;
use kv_proto::FORMAT_VERSION;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// Channel pool keyed by peer address.
pub struct Peers {
    channels: Mutex<HashMap<String, Channel>>,
    message_limit: usize,
    keepalive: Duration,
}

impl Peers {
    /// Creates an empty pool. A connection silent for `keepalive` is pinged
    /// and closed when the ping is not answered within `keepalive`.
    pub fn new(message_limit: usize, keepalive: Duration) -> Peers {
        Peers {
            channels: Mutex::new(HashMap::new()),
            message_limit,
            keepalive,
        }
    }

    fn channel(&self, address: &str) -> Result<Channel, tonic::Status> {
        let mut channels = self
            .channels
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(channel) = channels.get(address) {
            return Ok(channel.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{address}"))
            .map_err(|error| {
                tonic::Status::internal(format!("invalid peer address {address:?}: {error}"))
            })?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(1))
            .http2_keep_alive_interval(self.keepalive)
            .keep_alive_timeout(self.keepalive);
        let channel = endpoint.connect_lazy();
        channels.insert(address.to_string(), channel.clone());
        Ok(channel)
    }

    pub fn peer(&self, address: &str) -> Result<PeerClient<Channel>, tonic::Status> {
        Ok(PeerClient::new(self.channel(address)?)
            .max_decoding_message_size(self.message_limit)
            .max_encoding_message_size(self.message_limit))
    }

    pub fn kv(&self, address: &str) -> Result<KvClient<Channel>, tonic::Status> {
        Ok(KvClient::new(self.channel(address)?)
            .max_decoding_message_size(self.message_limit)
            .max_encoding_message_size(self.message_limit))
    }
}

/// Builds the header of a message from `sender`; the receiver gives up on
/// the request after `timeout`.
pub fn header(
    cluster_id: &str,
    sender: u64,
    ring_version: u64,
    timeout: Option<Duration>,
) -> PeerHeader {
    PeerHeader {
        format_version: FORMAT_VERSION,
        cluster_id: cluster_id.to_string(),
        sender,
        ring_version,
        timeout_ms: timeout.map(|after| after.as_millis() as u64).unwrap_or(0),
    }
}
