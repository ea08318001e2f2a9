//! The cluster secret: with it set, every role sends it on its calls to
//! the others and refuses calls without it, so the internal ports (storage
//! nodes' Flight, the catalog's gRPC and Raft) serve only the cluster.
//!
//! It is set once per process, at start, and read by every client and
//! server in the process (`strata dev` runs all roles in one).

use std::sync::OnceLock;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// gRPC request metadata carrying the cluster secret.
pub const CLUSTER_SECRET_HEADER: &str = "strata-cluster-secret";

static SECRET: OnceLock<Option<MetadataValue<Ascii>>> = OnceLock::new();

/// Sets this process's cluster secret (`None`: the cluster runs without
/// one). Fails when the secret is not printable ASCII, is shorter than 16
/// characters, or was set before to something else.
pub fn set_secret(secret: Option<&str>) -> Result<(), String> {
    let value = match secret {
        Some(s) => {
            let s = s.trim();
            if s.len() < 16 || !s.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(
                    "the cluster secret must be at least 16 printable ASCII characters \
                     (no spaces)"
                        .into(),
                );
            }
            Some(MetadataValue::try_from(s).map_err(|e| format!("cluster secret: {e}"))?)
        }
        None => None,
    };
    let set = SECRET.get_or_init(|| value.clone());
    if *set != value {
        return Err("the cluster secret was already set to another value".into());
    }
    Ok(())
}

fn secret() -> Option<&'static MetadataValue<Ascii>> {
    SECRET.get().and_then(|s| s.as_ref())
}

/// The secret's text, for clients that add it themselves (Arrow Flight's
/// `FlightClient::add_header`).
pub fn secret_str() -> Option<&'static str> {
    secret().and_then(|s| s.to_str().ok())
}

/// Client side: adds the cluster secret (when set) to each call.
#[derive(Debug, Clone, Copy, Default)]
pub struct SendSecret;

impl Interceptor for SendSecret {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(s) = secret() {
            request
                .metadata_mut()
                .insert(CLUSTER_SECRET_HEADER, s.clone());
        }
        Ok(request)
    }
}

/// Server side: refuses calls without the cluster secret (when set) with
/// `Unauthenticated`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequireSecret;

impl Interceptor for RequireSecret {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(expected) = secret() else {
            return Ok(request);
        };
        match request.metadata().get(CLUSTER_SECRET_HEADER) {
            Some(given) if same(given.as_bytes(), expected.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated(
                "wrong cluster secret: this port serves the cluster's own roles only",
            )),
            None => Err(Status::unauthenticated(
                "this port serves the cluster's own roles only (the call carried no cluster \
                 secret); clients connect to a coordinator",
            )),
        }
    }
}

/// Compares in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A channel whose calls carry the cluster secret.
pub type SecretChannel =
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, SendSecret>;

static TLS_CA: OnceLock<Option<tonic::transport::Certificate>> = OnceLock::new();

/// Sets the CA (PEM) this process trusts for calls to other roles, which
/// then go over TLS (`None`: plaintext). Set once, at start.
pub fn set_tls_ca(pem: Option<Vec<u8>>) -> Result<(), String> {
    let ca = pem.map(tonic::transport::Certificate::from_pem);
    let set = TLS_CA.get_or_init(|| ca.clone());
    if set.as_ref().map(|c| c.as_ref()) != ca.as_ref().map(|c| c.as_ref()) {
        return Err("the cluster TLS CA was already set to another one".into());
    }
    Ok(())
}

/// Where to reach the role at `addr` (`host:port`): plaintext, or TLS
/// trusting the cluster CA when one is set.
pub fn endpoint(addr: &str) -> Result<tonic::transport::Endpoint, String> {
    match TLS_CA.get().and_then(|c| c.as_ref()) {
        None => tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| format!("'{addr}' is not host:port ({e})")),
        Some(ca) => tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
            .map_err(|e| format!("'{addr}' is not host:port ({e})"))?
            .tls_config(tonic::transport::ClientTlsConfig::new().ca_certificate(ca.clone()))
            .map_err(|e| format!("TLS to {addr}: {e}")),
    }
}
