//! The connecting side: find the scheduler, verify it, and pass the handshake.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::endpoint::{client_endpoint, resolve};
use super::{NetError, SchedulerFile, ServerTrust};
use crate::proto::{
    CloseCode, FrameError, FrameReader, FrameWriter, Hello, Peer, Preamble, Welcome, DEFAULT_MAX_FRAME,
    HANDSHAKE_MAX_FRAME,
};

/// Where a scheduler is and how to trust it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Its address.
    pub addr: SocketAddr,
    /// What was given, for messages.
    pub display: String,
    /// Name for TLS (checked only with a CA).
    pub server_name: String,
    /// How its certificate is verified.
    pub trust: ServerTrust,
    /// Token to present.
    pub token: String,
}

impl Target {
    /// Works out the target from what a user gave: an address, a scheduler file, a token
    /// and a CA file, any of which may be missing.
    ///
    /// With a scheduler file, its address, fingerprint and token are used (explicit
    /// arguments win). With an address alone, the per-user default scheduler file of
    /// that port supplies fingerprint and token, which works on the scheduler's own
    /// machine. Otherwise a CA file must say how to verify the scheduler.
    pub fn resolve(
        address: Option<&str>,
        scheduler_file: Option<&Path>,
        token: Option<String>,
        ca_file: Option<PathBuf>,
    ) -> Result<Self, NetError> {
        let file = match (scheduler_file, address) {
            (Some(path), _) => Some(SchedulerFile::read(path)?),
            (None, Some(addr)) => {
                let port = resolve(addr)?.port();
                SchedulerFile::read(&SchedulerFile::default_path(port)).ok()
            }
            (None, None) => {
                return Err(NetError::SchedulerFile(
                    "no scheduler given; hint: pass HOST:PORT or --scheduler-file PATH".into(),
                ))
            }
        };
        let display =
            address.map(str::to_string).or_else(|| file.as_ref().map(|f| f.address.clone())).unwrap_or_default();
        let addr = resolve(&display)?;
        let host = display.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or("localhost").to_string();
        let (trust, file_token) = match (ca_file, file) {
            (Some(ca), file) => (ServerTrust::CaFile(ca), file.map(|f| f.token)),
            (None, Some(file)) => (ServerTrust::Fingerprint(file.fingerprint), Some(file.token)),
            (None, None) => {
                return Err(NetError::SchedulerFile(format!(
                    "no way to verify the scheduler at {display}: no scheduler file for it on this machine; \
                     hint: copy its scheduler file here and pass --scheduler-file PATH, or pass --ca-file"
                )))
            }
        };
        let token = token.or(file_token).unwrap_or_default();
        Ok(Self { addr, display, server_name: host, trust, token })
    }
}

/// Why connecting failed. Every variant's message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// Local set-up failed (TLS material, socket).
    #[error(transparent)]
    Net(#[from] NetError),
    /// The scheduler could not be reached or the TLS handshake failed.
    #[error("cannot connect to the scheduler at {addr}: {reason}; hint: check that the scheduler is running there and that the scheduler file is current")]
    Connect {
        /// Target as given.
        addr: String,
        /// What failed.
        reason: String,
    },
    /// The scheduler refused us (version, token) and said why.
    #[error("the scheduler at {addr} refused the connection: {reason}")]
    Rejected {
        /// Target as given.
        addr: String,
        /// The close code, if known.
        code: Option<CloseCode>,
        /// The scheduler's reason.
        reason: String,
    },
    /// No answer in time.
    #[error("no answer from the scheduler at {addr} within {timeout:?}; hint: check the address and that UDP traffic to it is allowed")]
    Timeout {
        /// Target as given.
        addr: String,
        /// The bound.
        timeout: Duration,
    },
}

/// An established, authenticated control stream.
pub struct Connected {
    /// Keeps the local socket alive.
    pub endpoint: quinn::Endpoint,
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Sending half of the control stream.
    pub writer: FrameWriter<quinn::SendStream>,
    /// Receiving half of the control stream.
    pub reader: FrameReader<quinn::RecvStream>,
    /// The scheduler's welcome.
    pub welcome: Welcome,
}

/// Connects to `target` as `peer`, within `timeout`.
pub async fn dial(target: &Target, peer: Peer, timeout: Duration) -> Result<Connected, DialError> {
    dial_with_preamble(target, peer, timeout, Preamble::current()).await
}

/// As [`dial`], with a chosen preamble (tests use it to claim another version).
pub async fn dial_with_preamble(
    target: &Target,
    peer: Peer,
    timeout: Duration,
    preamble: Preamble,
) -> Result<Connected, DialError> {
    let addr = target.display.clone();
    let endpoint = client_endpoint(target.addr, &target.trust)?;
    let attempt = async {
        let conn = endpoint
            .connect(target.addr, &target.server_name)
            .map_err(|e| DialError::Connect { addr: addr.clone(), reason: e.to_string() })?
            .await
            .map_err(|e| connection_error(&addr, e))?;
        let exchange = async {
            let (send, recv) = conn.open_bi().await.map_err(|e| FrameError::Io(std::io::Error::other(e)))?;
            let mut writer = FrameWriter::new(send);
            let mut reader = FrameReader::new(recv, HANDSHAKE_MAX_FRAME);
            writer.get_mut().write_all(&preamble.to_bytes()).await.map_err(|e| FrameError::Io(e.into()))?;
            writer.send(&Hello { token: target.token.clone(), peer }).await?;
            let welcome = reader.next::<Welcome>().await?.ok_or(FrameError::Truncated { got: 0, expected: 4 })?;
            reader.set_max_frame(DEFAULT_MAX_FRAME);
            Ok::<_, FrameError>((writer, reader, welcome))
        };
        match exchange.await {
            Ok((writer, reader, welcome)) => {
                Ok(Connected { endpoint: endpoint.clone(), conn, writer, reader, welcome })
            }
            Err(e) => {
                // A refusal arrives as a connection close; wait briefly for it so the
                // user sees the scheduler's reason rather than a stream error.
                let closed = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
                match closed {
                    Ok(reason) => Err(connection_error(&addr, reason)),
                    Err(_) => Err(DialError::Connect { addr: addr.clone(), reason: e.to_string() }),
                }
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(DialError::Timeout { addr, timeout }),
    }
}

/// Maps a connection error to a [`DialError`], keeping the scheduler's reason.
pub fn connection_error(addr: &str, e: quinn::ConnectionError) -> DialError {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => DialError::Rejected {
            addr: addr.to_string(),
            code: CloseCode::from_code(close.error_code),
            reason: String::from_utf8_lossy(&close.reason).into_owned(),
        },
        quinn::ConnectionError::TimedOut => {
            DialError::Timeout { addr: addr.to_string(), timeout: super::endpoint::IDLE_TIMEOUT }
        }
        other => DialError::Connect { addr: addr.to_string(), reason: other.to_string() },
    }
}
