//! The scheduler: a thin async driver around [`state::SchedulerState`].
//!
//! - The accept loop passes each new connection through the handshake (preamble,
//!   `Hello`, token), then gives it a reader task and a writer task.
//! - Readers turn frames into [`state::Event`]s on one channel; the core task owns the
//!   state, handles every event waiting on the channel, then routes the resulting
//!   actions, batched per peer, to the writers.
//! - A ticker feeds `Tick` events so silent workers are declared lost.
//!
//! A peer that misbehaves (bad preamble, wrong version or token, oversized or invalid
//! frame) has its connection closed with a code and a reason; everyone else is served
//! on as before.

pub mod state;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use crate::proto::{
    ClientHello, CloseCode, FrameError, FrameReader, FrameWriter, FromClient, FromWorker, HandshakeError, Hello, Peer,
    Preamble, ToClient, ToWorker, Welcome, WorkerHello, DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME,
};
use crate::tenancy::Tenants;
use state::{Action, Event, SchedulerConfig, SchedulerState, SessionId, WorkerId};

/// How the scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// Who may connect.
    pub tenants: Tenants,
    /// Policy of the core.
    pub core: SchedulerConfig,
    /// How often workers send heartbeats (and the ticker checks them).
    pub heartbeat_interval: Duration,
    /// Bound on the handshake of a new connection.
    pub handshake_timeout: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            tenants: Tenants::generated(),
            core: SchedulerConfig::default(),
            heartbeat_interval: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// Messages into the core task.
enum CoreMsg {
    Event(Event),
    ClientOutbox(SessionId, mpsc::UnboundedSender<ToClient>),
    WorkerOutbox(WorkerId, mpsc::UnboundedSender<ToWorker>, quinn::Connection),
    QueryInfo(SessionId, u64),
}

/// Runs the scheduler on `endpoint` until `shutdown` completes. Connections are closed
/// with [`CloseCode::ShuttingDown`] on the way out.
pub async fn run(endpoint: quinn::Endpoint, options: SchedulerOptions, shutdown: impl Future<Output = ()>) {
    let (core_tx, core_rx) = mpsc::unbounded_channel();
    let core = tokio::spawn(core_loop(SchedulerState::new(options.core.clone()), core_rx));
    let ticker = {
        let tx = core_tx.clone();
        let every = options.heartbeat_interval;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(every);
            loop {
                interval.tick().await;
                if tx.send(CoreMsg::Event(Event::Tick { now: Instant::now() })).is_err() {
                    break;
                }
            }
        })
    };
    let ids = Arc::new(AtomicU64::new(1));
    let options = Arc::new(options);
    let accept = async {
        while let Some(incoming) = endpoint.accept().await {
            let remote = incoming.remote_address();
            let id = ids.fetch_add(1, Ordering::Relaxed);
            let core_tx = core_tx.clone();
            let options = options.clone();
            tokio::spawn(
                async move {
                    match incoming.await {
                        Ok(conn) => serve_connection(conn, id, options, core_tx).await,
                        Err(e) => tracing::debug!(%remote, error = %e, "connection attempt failed"),
                    }
                }
                .instrument(tracing::debug_span!("conn", id, %remote)),
            );
        }
    };
    tokio::select! {
        _ = accept => {}
        _ = shutdown => tracing::info!("shutting down"),
    }
    endpoint.close(CloseCode::ShuttingDown.code(), b"scheduler is shutting down");
    ticker.abort();
    drop(core_tx);
    core.abort();
    // Let the close frames leave.
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
}

/// Handshake, then the reader loop of one connection.
async fn serve_connection(
    conn: quinn::Connection,
    id: u64,
    options: Arc<SchedulerOptions>,
    core_tx: mpsc::UnboundedSender<CoreMsg>,
) {
    let remote = conn.remote_address();
    let accepted = tokio::time::timeout(options.handshake_timeout, handshake(&conn, &options.tenants)).await;
    let (writer, reader, hello, tenant) = match accepted {
        Ok(Ok(ok)) => ok,
        Ok(Err(rejection)) => {
            tracing::warn!(%remote, reason = %rejection.reason, "connection rejected");
            conn.close(rejection.code.code(), rejection.reason.as_bytes());
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "handshake timed out");
            conn.close(CloseCode::HandshakeTimeout.code(), b"no handshake within the time limit");
            return;
        }
    };
    let welcome = Welcome {
        tenant: tenant.to_string(),
        id,
        heartbeat_interval_ms: options.heartbeat_interval.as_millis() as u64,
    };
    match hello.peer {
        Peer::Client(ClientHello { name }) => {
            tracing::info!(%remote, session = id, %tenant, %name, "client connected");
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = core_tx.send(CoreMsg::ClientOutbox(id, tx));
            let _ = core_tx.send(CoreMsg::Event(Event::ClientJoined { session: id, tenant, name }));
            tokio::spawn(write_loop(writer, welcome, rx, conn.clone()));
            let end = client_reader(reader, id, &core_tx).await;
            close_on_error(&conn, end);
            let _ = core_tx.send(CoreMsg::Event(Event::ClientLeft { session: id }));
            tracing::info!(%remote, session = id, "client disconnected");
        }
        Peer::Worker(WorkerHello { name, slots }) => {
            tracing::info!(%remote, worker = id, %name, slots, "worker connected");
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = core_tx.send(CoreMsg::WorkerOutbox(id, tx, conn.clone()));
            let _ = core_tx.send(CoreMsg::Event(Event::WorkerJoined {
                worker: id,
                name,
                address: remote.to_string(),
                slots,
                now: Instant::now(),
            }));
            tokio::spawn(write_loop(writer, welcome, rx, conn.clone()));
            let end = worker_reader(reader, id, &core_tx).await;
            close_on_error(&conn, end);
            let _ = core_tx.send(CoreMsg::Event(Event::WorkerLeft { worker: id }));
        }
    }
}

fn close_on_error(conn: &quinn::Connection, end: Result<(), FrameError>) {
    if let Err(e) = end {
        if conn.close_reason().is_none() {
            tracing::warn!(remote = %conn.remote_address(), error = %e, "closing connection");
            conn.close(
                e.close_code().code(),
                format!("{e}; hint: the peer sent bytes that are not a valid Stockade frame").as_bytes(),
            );
        }
    }
}

struct Rejection {
    code: CloseCode,
    reason: String,
}

impl From<HandshakeError> for Rejection {
    fn from(e: HandshakeError) -> Self {
        Self { code: e.close_code(), reason: e.to_string() }
    }
}

impl From<FrameError> for Rejection {
    fn from(e: FrameError) -> Self {
        Self { code: e.close_code(), reason: format!("bad handshake: {e}") }
    }
}

type Accepted = (FrameWriter<quinn::SendStream>, FrameReader<quinn::RecvStream>, Hello, Arc<str>);

async fn handshake(conn: &quinn::Connection, tenants: &Tenants) -> Result<Accepted, Rejection> {
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| Rejection { code: CloseCode::ProtocolError, reason: format!("no control stream: {e}") })?;
    let mut preamble = [0u8; Preamble::LEN];
    recv.read_exact(&mut preamble)
        .await
        .map_err(|e| Rejection { code: CloseCode::ProtocolError, reason: format!("no preamble: {e}") })?;
    Preamble::check(&preamble)?;
    let mut reader = FrameReader::new(recv, HANDSHAKE_MAX_FRAME);
    let hello: Hello = reader
        .next()
        .await?
        .ok_or(Rejection { code: CloseCode::ProtocolError, reason: "stream ended before Hello".into() })?;
    let tenant = tenants.authenticate(&hello.token)?;
    reader.set_max_frame(DEFAULT_MAX_FRAME);
    Ok((FrameWriter::new(send), reader, hello, tenant))
}

async fn client_reader(
    mut reader: FrameReader<quinn::RecvStream>,
    session: SessionId,
    core_tx: &mpsc::UnboundedSender<CoreMsg>,
) -> Result<(), FrameError> {
    while let Some(msg) = reader.next::<FromClient>().await? {
        let msg = match msg {
            FromClient::Submit(tasks) => CoreMsg::Event(Event::Submit { session, tasks }),
            FromClient::Cancel(ids) => CoreMsg::Event(Event::Cancel { session, ids }),
            FromClient::CancelAll => CoreMsg::Event(Event::CancelAll { session }),
            FromClient::QueryInfo(request) => CoreMsg::QueryInfo(session, request),
        };
        if core_tx.send(msg).is_err() {
            break;
        }
    }
    Ok(())
}

async fn worker_reader(
    mut reader: FrameReader<quinn::RecvStream>,
    worker: WorkerId,
    core_tx: &mpsc::UnboundedSender<CoreMsg>,
) -> Result<(), FrameError> {
    while let Some(msg) = reader.next::<FromWorker>().await? {
        let now = Instant::now();
        let event = match msg {
            FromWorker::Finished(results) => Event::Finished { worker, results, now },
            FromWorker::Heartbeat => Event::Heartbeat { worker, now },
        };
        if core_tx.send(CoreMsg::Event(event)).is_err() {
            break;
        }
    }
    Ok(())
}

/// Sends the welcome, then everything the core routes to this peer, flushing once per
/// burst.
async fn write_loop<M>(
    mut writer: FrameWriter<quinn::SendStream>,
    welcome: Welcome,
    mut rx: mpsc::UnboundedReceiver<M>,
    conn: quinn::Connection,
) where
    M: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    let result = async {
        writer.send(&welcome).await?;
        while let Some(msg) = rx.recv().await {
            writer.push(&msg)?;
            while writer.buffered() < 4 * 1024 * 1024 {
                match rx.try_recv() {
                    Ok(msg) => writer.push(&msg)?,
                    Err(_) => break,
                }
            }
            writer.flush().await?;
        }
        Ok::<(), FrameError>(())
    }
    .await;
    if let Err(e) = result {
        tracing::debug!(remote = %conn.remote_address(), error = %e, "writer stopped");
    }
}

/// Where the core sends things.
#[derive(Default)]
struct Outboxes {
    clients: HashMap<SessionId, mpsc::UnboundedSender<ToClient>>,
    workers: HashMap<WorkerId, (mpsc::UnboundedSender<ToWorker>, quinn::Connection)>,
}

async fn core_loop(mut state: SchedulerState, mut rx: mpsc::UnboundedReceiver<CoreMsg>) {
    let mut out = Outboxes::default();
    let mut batch = Vec::with_capacity(256);
    while rx.recv_many(&mut batch, 256).await > 0 {
        for msg in batch.drain(..) {
            match msg {
                CoreMsg::Event(event) => {
                    tracing::trace!(?event, "event");
                    match &event {
                        Event::ClientLeft { session } => {
                            out.clients.remove(session);
                        }
                        Event::WorkerLeft { worker } => {
                            out.workers.remove(worker);
                        }
                        _ => {}
                    }
                    state.handle(event);
                }
                CoreMsg::ClientOutbox(session, tx) => {
                    out.clients.insert(session, tx);
                }
                CoreMsg::WorkerOutbox(worker, tx, conn) => {
                    out.workers.insert(worker, (tx, conn));
                }
                CoreMsg::QueryInfo(session, request) => {
                    if let Some(tx) = out.clients.get(&session) {
                        let _ = tx.send(ToClient::Info(request, state.info()));
                    }
                }
            }
        }
        route(state.take_actions(), &mut out);
    }
}

/// Sends actions, one message per peer and kind.
fn route(actions: Vec<Action>, out: &mut Outboxes) {
    if actions.is_empty() {
        return;
    }
    let mut runs: HashMap<WorkerId, Vec<_>> = HashMap::new();
    let mut cancels: HashMap<WorkerId, Vec<_>> = HashMap::new();
    let mut results: HashMap<SessionId, Vec<_>> = HashMap::new();
    for action in actions {
        match action {
            Action::Run { worker, assignment } => runs.entry(worker).or_default().push(assignment),
            Action::CancelAttempt { worker, attempt } => cancels.entry(worker).or_default().push(attempt),
            Action::Deliver { session, result } => results.entry(session).or_default().push(result),
            Action::DropWorker { worker, reason } => {
                if let Some((_, conn)) = out.workers.remove(&worker) {
                    conn.close(CloseCode::HeartbeatMissed.code(), reason.as_bytes());
                }
            }
        }
    }
    // Runs before cancels: a cancel may name an attempt of this very batch, never one
    // of a later batch.
    for (worker, assignments) in runs {
        if let Some((tx, _)) = out.workers.get(&worker) {
            let _ = tx.send(ToWorker::Run(assignments));
        }
    }
    for (worker, attempts) in cancels {
        if let Some((tx, _)) = out.workers.get(&worker) {
            let _ = tx.send(ToWorker::Cancel(attempts));
        }
    }
    for (session, batch) in results {
        if let Some(tx) = out.clients.get(&session) {
            let _ = tx.send(ToClient::Results(batch));
        }
    }
}

/// Whether `addr` is a loopback address (token-less mode is allowed only there).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
