//! quinn endpoints for the scheduler (server) and for clients and workers.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

use super::tls::{self, Identity, ServerTrust};

/// Errors setting up or using the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Certificate or key problems.
    #[error("TLS: {0}")]
    Tls(String),
    /// The socket could not be bound or used.
    #[error("cannot use {addr}: {source}; hint: check that the address is local and the port free")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The scheduler file is missing or unreadable.
    #[error("{0}")]
    SchedulerFile(String),
    /// The address could not be resolved.
    #[error("cannot resolve {addr}: {reason}; hint: give HOST:PORT, e.g. 127.0.0.1:8786")]
    Resolve {
        /// What was given.
        addr: String,
        /// Why it failed.
        reason: String,
    },
}

/// A connection silent this long (keep-alives included) is dead.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Transport settings shared by both sides: keep-alives so that idle connections stay
/// up, an idle timeout that detects dead peers, and windows large enough for big
/// task payloads on a fast link.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    t.stream_receive_window(quinn::VarInt::from_u32(16 * 1024 * 1024));
    t.receive_window(quinn::VarInt::from_u32(64 * 1024 * 1024));
    t.send_window(64 * 1024 * 1024);
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(16));
    t
}

/// The scheduler's endpoint, bound to `addr`.
pub fn server_endpoint(addr: SocketAddr, identity: &Identity) -> Result<quinn::Endpoint, NetError> {
    let crypto = QuicServerConfig::try_from(tls::server_config(identity)?).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    quinn::Endpoint::server(config, addr).map_err(|source| NetError::Bind { addr, source })
}

/// A client endpoint for reaching `remote`, trusting the scheduler as `trust` says.
pub fn client_endpoint(remote: SocketAddr, trust: &ServerTrust) -> Result<quinn::Endpoint, NetError> {
    let local: SocketAddr = if remote.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }
        .parse()
        .map_err(|_| NetError::Resolve { addr: remote.to_string(), reason: "bad local address".into() })?;
    let crypto = QuicClientConfig::try_from(tls::client_config(trust)?).map_err(|e| NetError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(transport_config()));
    let mut endpoint = quinn::Endpoint::client(local).map_err(|source| NetError::Bind { addr: local, source })?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Resolves `HOST:PORT` to a socket address.
pub fn resolve(addr: &str) -> Result<SocketAddr, NetError> {
    use std::net::ToSocketAddrs;
    let addr = addr.strip_prefix("quic://").unwrap_or(addr);
    addr.to_socket_addrs()
        .map_err(|e| NetError::Resolve { addr: addr.to_string(), reason: e.to_string() })?
        .next()
        .ok_or_else(|| NetError::Resolve { addr: addr.to_string(), reason: "no address found".into() })
}
