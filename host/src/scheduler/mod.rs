//! The scheduler: a thin async driver around [`state::SchedulerState`].
//!
//! - The accept loop passes each new connection through the handshake (preamble,
//!   `Hello`, token), then gives it a reader task and a writer task.
//! - Readers turn frames into [`state::Event`]s on one channel; the core task owns the
//!   state, handles every event waiting on the channel, then routes the resulting
//!   actions, batched per peer, to the writers.
//! - A ticker feeds `Tick` events so silent workers are declared lost.
//! - Pinned objects arrive on object streams (or, from a client on this machine, as a
//!   file in the store the client shares); the driver keeps its handle on each object
//!   while the core says it is live, and streams it to workers that do not share the
//!   store.
//!
//! A peer that misbehaves (bad preamble, wrong version or token, oversized or invalid
//! frame) has its connection closed with a code and a reason; everyone else is served
//! on as before.

pub mod local;
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
    ClientHello, CloseCode, ErrorKind, FrameError, FrameReader, FrameWriter, FromClient, FromWorker, HandshakeError,
    Hello, ObjectHeader, ObjectKey, Peer, PinOutcome, PinReply, Preamble, TaskError, ToClient, ToWorker, Welcome,
    WorkerHello, DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME,
};
use crate::store::{stream, SharedPinned, Store};
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
    /// Where pinned objects live (`None`: scatter is refused with a reason).
    pub store: Option<Store>,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            tenants: Tenants::generated(),
            core: SchedulerConfig::default(),
            heartbeat_interval: Duration::from_secs(1),
            handshake_timeout: Duration::from_secs(10),
            store: None,
        }
    }
}

/// Messages into the core task.
enum CoreMsg {
    Event(Event),
    ClientOutbox(SessionId, mpsc::UnboundedSender<ToClient>),
    WorkerOutbox(WorkerOutbox),
    QueryInfo(SessionId, u64),
    /// An object of a session is in the scheduler's store.
    ObjectArrived(SessionId, SharedPinned),
    /// A session's pin failed before reaching the core.
    PinFailed(SessionId, PinReply),
}

/// How the core reaches a worker.
struct WorkerOutbox {
    id: WorkerId,
    tx: mpsc::UnboundedSender<ToWorker>,
    /// `None` for a worker of this process ([`local`]), which shares the store.
    conn: Option<quinn::Connection>,
    /// Whether it shares the scheduler's store (objects need no transfer).
    shares_store: bool,
    /// Object bytes streamed to it.
    sent: Arc<AtomicU64>,
}

/// Runs the scheduler on `endpoint` until `shutdown` completes. Connections are closed
/// with [`CloseCode::ShuttingDown`] on the way out.
pub async fn run(endpoint: quinn::Endpoint, options: SchedulerOptions, shutdown: impl Future<Output = ()>) {
    Scheduler::start(endpoint, options).serve(shutdown).await;
}

/// A scheduler whose core runs on the current tokio runtime: [`Scheduler::serve`]
/// accepts connections, and [`Scheduler::open_door`] also lets clients of this process
/// in without the network.
pub struct Scheduler {
    endpoint: quinn::Endpoint,
    options: Arc<SchedulerOptions>,
    core_tx: mpsc::UnboundedSender<CoreMsg>,
    received: Arc<AtomicU64>,
    ids: Arc<AtomicU64>,
    core: tokio::task::JoinHandle<()>,
    ticker: tokio::task::JoinHandle<()>,
    door: Option<SocketAddr>,
}

impl Scheduler {
    /// Starts the core and its ticker. Call it inside a tokio runtime.
    pub fn start(endpoint: quinn::Endpoint, options: SchedulerOptions) -> Self {
        let (core_tx, core_rx) = mpsc::unbounded_channel();
        if options.store.is_none() {
            tracing::warn!("no object store: scatter is refused");
        }
        let received = Arc::new(AtomicU64::new(0));
        let out = Outboxes {
            clients: HashMap::new(),
            workers: HashMap::new(),
            objects: HashMap::new(),
            core_tx: core_tx.clone(),
            received: received.clone(),
        };
        let core = tokio::spawn(core_loop(SchedulerState::new(options.core.clone()), core_rx, out));
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
        Self {
            endpoint,
            options: Arc::new(options),
            core_tx,
            received,
            ids: Arc::new(AtomicU64::new(1)),
            core,
            ticker,
            door: None,
        }
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Lets clients of this process that connect to [`Self::local_addr`] in through
    /// channels instead of QUIC (see [`local`]); until [`Self::serve`] ends.
    pub fn open_door(&mut self) -> std::io::Result<()> {
        let addr = self.local_addr()?;
        local::register(
            addr,
            local::LocalDoor { core_tx: self.core_tx.clone(), ids: self.ids.clone(), options: self.options.clone() },
        );
        self.door = Some(addr);
        Ok(())
    }

    /// Accepts connections until `shutdown` completes, then closes every connection
    /// with [`CloseCode::ShuttingDown`] and stops the core.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        let Self { endpoint, options, core_tx, received, ids, core, ticker, door } = self;
        let accept = async {
            while let Some(incoming) = endpoint.accept().await {
                let remote = incoming.remote_address();
                let id = ids.fetch_add(1, Ordering::Relaxed);
                let core_tx = core_tx.clone();
                let options = options.clone();
                let received = received.clone();
                tokio::spawn(
                    async move {
                        match incoming.await {
                            Ok(conn) => serve_connection(conn, id, options, core_tx, received).await,
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
        if let Some(addr) = door {
            local::unregister(addr);
        }
        endpoint.close(CloseCode::ShuttingDown.code(), b"scheduler is shutting down");
        ticker.abort();
        drop(core_tx);
        core.abort();
        // Let the close frames leave.
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
}

/// Handshake, then the reader loop of one connection.
async fn serve_connection(
    conn: quinn::Connection,
    id: u64,
    options: Arc<SchedulerOptions>,
    core_tx: mpsc::UnboundedSender<CoreMsg>,
    received: Arc<AtomicU64>,
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
    let welcome = welcome(&options, &tenant, id);
    let store = options.store.clone();
    match hello.peer {
        Peer::Client(ClientHello { name }) => {
            tracing::info!(%remote, session = id, %tenant, %name, "client connected");
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = core_tx.send(CoreMsg::ClientOutbox(id, tx));
            let _ = core_tx.send(CoreMsg::Event(Event::ClientJoined { session: id, tenant: tenant.clone(), name }));
            tokio::spawn(write_loop(writer, welcome, rx, conn.clone()));
            let uploads = tokio::spawn(accept_objects(
                conn.clone(),
                id,
                tenant.clone(),
                store.clone(),
                core_tx.clone(),
                received,
            ));
            let end = client_reader(reader, id, &tenant, &store, &core_tx).await;
            uploads.abort();
            close_on_error(&conn, end);
            let _ = core_tx.send(CoreMsg::Event(Event::ClientLeft { session: id }));
            tracing::info!(%remote, session = id, "client disconnected");
        }
        Peer::Worker(WorkerHello { name, slots, store_id }) => {
            let shares_store = store.as_ref().is_some_and(|s| s.id() == store_id);
            tracing::info!(%remote, worker = id, %name, slots, shares_store, "worker connected");
            let (tx, rx) = mpsc::unbounded_channel();
            let sent = Arc::new(AtomicU64::new(0));
            let outbox = WorkerOutbox { id, tx, conn: Some(conn.clone()), shares_store, sent };
            let _ = core_tx.send(CoreMsg::WorkerOutbox(outbox));
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

/// What a peer learns once admitted.
fn welcome(options: &SchedulerOptions, tenant: &str, id: u64) -> Welcome {
    Welcome {
        tenant: tenant.to_string(),
        id,
        heartbeat_interval_ms: options.heartbeat_interval.as_millis() as u64,
        store: options.store.as_ref().map(Store::info).unwrap_or_default(),
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
    tenant: &str,
    store: &Option<Store>,
    core_tx: &mpsc::UnboundedSender<CoreMsg>,
) -> Result<(), FrameError> {
    while let Some(msg) = reader.next::<FromClient>().await? {
        if core_tx.send(client_message(session, tenant, store, msg)).is_err() {
            break;
        }
    }
    Ok(())
}

/// What a client's message means to the core.
fn client_message(session: SessionId, tenant: &str, store: &Option<Store>, msg: FromClient) -> CoreMsg {
    match msg {
        FromClient::Submit(tasks) => CoreMsg::Event(Event::Submit { session, tasks }),
        FromClient::Cancel(ids) => CoreMsg::Event(Event::Cancel { session, ids }),
        FromClient::CancelAll => CoreMsg::Event(Event::CancelAll { session }),
        FromClient::QueryInfo(request) => CoreMsg::QueryInfo(session, request),
        FromClient::Release(keys) => CoreMsg::Event(Event::Release { session, keys }),
        FromClient::Pin(header) => {
            let pinned = store.as_ref().ok_or_else(no_store).and_then(|s| {
                s.pin(tenant, &header).map_err(|e| {
                    format!("{e}; hint: the client must write the object into the scheduler's store first")
                })
            });
            match pinned {
                Ok(pinned) => CoreMsg::ObjectArrived(session, Arc::new(pinned)),
                Err(message) => CoreMsg::PinFailed(session, pin_failed(header.key, ErrorKind::DataLost, message)),
            }
        }
    }
}

async fn worker_reader(
    mut reader: FrameReader<quinn::RecvStream>,
    worker: WorkerId,
    core_tx: &mpsc::UnboundedSender<CoreMsg>,
) -> Result<(), FrameError> {
    while let Some(msg) = reader.next::<FromWorker>().await? {
        if core_tx.send(CoreMsg::Event(worker_event(worker, msg))).is_err() {
            break;
        }
    }
    Ok(())
}

/// What a worker's message means to the core.
fn worker_event(worker: WorkerId, msg: FromWorker) -> Event {
    let now = Instant::now();
    match msg {
        FromWorker::Finished(results) => Event::Finished { worker, results, now },
        FromWorker::Heartbeat => Event::Heartbeat { worker, now },
        FromWorker::Pinned(tenant, reply) => Event::WorkerPinned { worker, tenant, reply },
    }
}

fn no_store() -> String {
    "the scheduler has no object store (its log says why); hint: start it with --store-dir DIR".into()
}

fn pin_failed(key: ObjectKey, kind: ErrorKind, message: String) -> PinReply {
    PinReply { key, outcome: PinOutcome::Failed(TaskError { kind, message, detail: Vec::new() }) }
}

/// Receives the objects a client streams (each on its own stream, concurrently).
async fn accept_objects(
    conn: quinn::Connection,
    session: SessionId,
    tenant: Arc<str>,
    store: Option<Store>,
    core_tx: mpsc::UnboundedSender<CoreMsg>,
    received: Arc<AtomicU64>,
) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let (tenant, store, core_tx, received, conn) =
            (tenant.clone(), store.clone(), core_tx.clone(), received.clone(), conn.clone());
        tokio::spawn(async move {
            let header = match stream::receive_header(&mut recv).await {
                Ok(header) => header,
                Err(e) => {
                    tracing::warn!(session, error = %e, "bad object stream");
                    let reason = format!("{e}; hint: the peer sent an object stream that is not the Stockade protocol");
                    conn.close(CloseCode::MalformedFrame.code(), reason.as_bytes());
                    return;
                }
            };
            let result = match &store {
                None => Err(no_store()),
                Some(store) => match store.writer(&tenant, Some((header.key, header.size))) {
                    Err(e) => Err(e.to_string()),
                    Ok(writer) => stream::receive_body(&mut recv, writer, &header).await.map_err(|e| e.to_string()),
                },
            };
            let msg = match result {
                Ok(pinned) => {
                    received.fetch_add(header.size, Ordering::Relaxed);
                    CoreMsg::ObjectArrived(session, Arc::new(pinned))
                }
                Err(message) => {
                    let _ = recv.stop(quinn::VarInt::from_u32(0));
                    CoreMsg::PinFailed(session, pin_failed(header.key, ErrorKind::DataLost, message))
                }
            };
            let _ = core_tx.send(msg);
        });
    }
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

/// Where the core sends things, and the objects it holds.
struct Outboxes {
    clients: HashMap<SessionId, mpsc::UnboundedSender<ToClient>>,
    workers: HashMap<WorkerId, WorkerOutbox>,
    objects: HashMap<(String, ObjectKey), SharedPinned>,
    /// For reports from tasks the router spawns (object streams to workers).
    core_tx: mpsc::UnboundedSender<CoreMsg>,
    /// Object bytes received from clients.
    received: Arc<AtomicU64>,
}

async fn core_loop(mut state: SchedulerState, mut rx: mpsc::UnboundedReceiver<CoreMsg>, mut out: Outboxes) {
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
                CoreMsg::WorkerOutbox(outbox) => {
                    out.workers.insert(outbox.id, outbox);
                }
                CoreMsg::QueryInfo(session, request) => {
                    if let Some(tx) = out.clients.get(&session) {
                        let mut info = state.info();
                        for w in &mut info.workers {
                            w.object_bytes_sent = out.workers.get(&w.id).map_or(0, |o| o.sent.load(Ordering::Relaxed));
                        }
                        info.object_bytes_received = out.received.load(Ordering::Relaxed);
                        let _ = tx.send(ToClient::Info(request, info));
                    }
                }
                CoreMsg::ObjectArrived(session, pinned) => {
                    let header = pinned.header().clone();
                    out.objects.insert((header.tenant.clone(), header.key), pinned);
                    state.handle(Event::ObjectStored { session, header });
                }
                CoreMsg::PinFailed(session, reply) => {
                    if let Some(tx) = out.clients.get(&session) {
                        let _ = tx.send(ToClient::Pinned(reply));
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
                // A worker of this process stops when its outbox is dropped.
                if let Some(conn) = out.workers.remove(&worker).and_then(|w| w.conn) {
                    conn.close(CloseCode::HeartbeatMissed.code(), reason.as_bytes());
                }
            }
            Action::PinOnWorker { worker, header } => pin_on_worker(out, worker, header),
            Action::UnpinOnWorker { worker, tenant, key } => {
                if let Some(w) = out.workers.get(&worker) {
                    let _ = w.tx.send(ToWorker::Unpin(tenant, key));
                }
            }
            Action::ReplyPinned { session, reply } => {
                if let Some(tx) = out.clients.get(&session) {
                    let _ = tx.send(ToClient::Pinned(reply));
                }
            }
            Action::ForgetObject { tenant, key } => {
                out.objects.remove(&(tenant, key));
            }
        }
    }
    // Runs before cancels: a cancel may name an attempt of this very batch, never one
    // of a later batch.
    for (worker, assignments) in runs {
        if let Some(w) = out.workers.get(&worker) {
            let _ = w.tx.send(ToWorker::Run(assignments));
        }
    }
    for (worker, attempts) in cancels {
        if let Some(w) = out.workers.get(&worker) {
            let _ = w.tx.send(ToWorker::Cancel(attempts));
        }
    }
    for (session, batch) in results {
        if let Some(tx) = out.clients.get(&session) {
            let _ = tx.send(ToClient::Results(batch));
        }
    }
}

/// Gives a worker an object: a message if it shares the store, else an object stream.
/// A failed stream is reported to the core as the worker's failed pin.
fn pin_on_worker(out: &Outboxes, worker: WorkerId, header: ObjectHeader) {
    let Some(w) = out.workers.get(&worker) else {
        return;
    };
    if w.shares_store {
        let _ = w.tx.send(ToWorker::Pin(header));
        return;
    }
    let core_tx = out.core_tx.clone();
    let id = (header.tenant.clone(), header.key);
    let fail = move |message: String| {
        let tenant = header.tenant.clone();
        let reply = pin_failed(header.key, ErrorKind::DataLost, message);
        let _ = core_tx.send(CoreMsg::Event(Event::WorkerPinned { worker, tenant, reply }));
    };
    let Some(object) = out.objects.get(&id).cloned() else {
        fail("the scheduler no longer holds the object".into());
        return;
    };
    let Some(conn) = w.conn.clone() else {
        fail("the worker shares no store with the scheduler and has no connection to stream it on".into());
        return;
    };
    let sent = w.sent.clone();
    tokio::spawn(async move {
        match stream::send(&conn, object.header(), object.bytes()).await {
            Ok(n) => {
                sent.fetch_add(n, Ordering::Relaxed);
            }
            Err(e) => fail(format!("could not send the object to the worker: {e}")),
        }
    });
}

/// Whether `addr` is a loopback address (token-less mode is allowed only there).
pub fn is_loopback(addr: &SocketAddr) -> bool {
    addr.ip().is_loopback()
}
