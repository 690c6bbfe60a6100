//! The worker: connects to the scheduler, registers its slots and runs attempts through
//! an [`Executor`], around the sans-IO [`state::WorkerState`].

pub mod executor;
pub mod pins;
pub mod state;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

pub use executor::{BuiltinExecutor, Executor, Executors, Report, Skips};
use state::{WorkerAction, WorkerEvent, WorkerState};

use crate::net::{dial, DialError, Target};
use crate::proto::{
    AttemptId, AttemptResult, FrameError, FrameWriter, FromWorker, HandshakeError, ObjectHeader, Outcome, Peer,
    PinOutcome, PinReply, TaskError, ToWorker, WorkerHello,
};
use crate::scheduler::local;
use crate::store::{stream, Store};
use pins::PinTable;

/// How a worker runs.
#[derive(Clone)]
pub struct WorkerOptions {
    /// The scheduler.
    pub target: Target,
    /// Name shown by `status`.
    pub name: String,
    /// Attempts run at once.
    pub slots: u32,
    /// What runs the attempts.
    pub executor: Arc<dyn Executor>,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Where pinned objects are kept.
    pub store: Store,
    /// Bound on the bytes of pinned objects (`--memory-limit`).
    pub memory_limit: Option<u64>,
}

/// Why a worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// It could not connect.
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The connection failed later.
    #[error("lost the scheduler: {0}")]
    Connection(String),
    /// The scheduler of this process refused it (the token).
    #[error("the scheduler refused this worker: {0}")]
    Refused(HandshakeError),
}

/// Messages into the worker's core loop.
enum Input {
    FromScheduler(ToWorker),
    Completed(AttemptResult),
    Heartbeat,
    /// A pin ended (from an object stream).
    Pinned(String, PinReply),
}

/// Connects and runs until the scheduler goes away or `shutdown` completes. Calls
/// `on_ready` with the worker id once registered. A scheduler of this process that
/// shares the worker's store is joined through its door ([`local`]), any other over QUIC.
pub async fn run(
    options: WorkerOptions,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(u64),
) -> Result<(), WorkerError> {
    let hello =
        WorkerHello { name: options.name.clone(), slots: options.slots, store_id: options.store.id().to_string() };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let door = local::door(options.target.addr).filter(|door| door.takes_worker_with(options.store.id()));
    let (mut uplink, welcome, reader_task) = match door {
        Some(door) => {
            let link = door.connect_worker(&options.target.token, hello).map_err(WorkerError::Refused)?;
            let (to_core, mut from_scheduler) = (tx.clone(), link.rx);
            let reader_task = tokio::spawn(async move {
                while let Some(msg) = from_scheduler.recv().await {
                    if to_core.send(Input::FromScheduler(msg)).is_err() {
                        break;
                    }
                }
                Ok::<(), FrameError>(())
            });
            (Uplink::Local { tx: link.tx, queued: Vec::new() }, link.welcome, reader_task)
        }
        None => {
            let connected = dial(&options.target, Peer::Worker(hello), options.connect_timeout).await?;
            let mut reader = connected.reader;
            let to_core = tx.clone();
            let reader_task = tokio::spawn(async move {
                while let Some(msg) = reader.next::<ToWorker>().await? {
                    if to_core.send(Input::FromScheduler(msg)).is_err() {
                        break;
                    }
                }
                Ok::<(), FrameError>(())
            });
            let uplink = Uplink::Quic { conn: connected.conn, endpoint: connected.endpoint, writer: connected.writer };
            (uplink, connected.welcome, reader_task)
        }
    };
    let heartbeat = Duration::from_millis(welcome.heartbeat_interval_ms.max(10));
    tracing::info!(worker = welcome.id, name = %options.name, slots = options.slots, "registered with the scheduler");
    on_ready(welcome.id);
    let ticker = {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(heartbeat);
            loop {
                interval.tick().await;
                if tx.send(Input::Heartbeat).is_err() {
                    break;
                }
            }
        })
    };

    let table = Arc::new(Mutex::new(PinTable::new(options.name.clone(), options.memory_limit)));
    let conn = uplink.conn().cloned();
    let objects =
        conn.clone().map(|conn| tokio::spawn(accept_objects(conn, options.store.clone(), table.clone(), tx.clone())));
    let mut pin_replies = Vec::new();
    let mut state = WorkerState::new(options.slots);
    let mut running: HashMap<AttemptId, JoinHandle<()>> = HashMap::new();
    // Attempts handed to a run, with the run's skip list.
    let mut in_runs: HashMap<AttemptId, Arc<Skips>> = HashMap::new();
    let mut finished = Vec::new();
    let mut inputs = Vec::with_capacity(256);
    let core = async {
        while rx.recv_many(&mut inputs, 256).await > 0 {
            let mut beat = false;
            for input in inputs.drain(..) {
                if let Input::FromScheduler(msg) = &input {
                    tracing::trace!(?msg, "from scheduler");
                }
                let event = match input {
                    Input::FromScheduler(ToWorker::Pin(header)) => {
                        let reply = pin_local(&options.store, &table, &header);
                        prepare(&*options.executor, &table, &header.tenant, &reply);
                        pin_replies.push(FromWorker::Pinned(header.tenant, reply));
                        continue;
                    }
                    Input::FromScheduler(ToWorker::Unpin(tenant, key)) => {
                        if lock(&table).remove(&tenant, &key) {
                            options.executor.forget(&tenant, &key);
                        }
                        continue;
                    }
                    Input::Pinned(tenant, reply) => {
                        prepare(&*options.executor, &table, &tenant, &reply);
                        pin_replies.push(FromWorker::Pinned(tenant, reply));
                        continue;
                    }
                    Input::FromScheduler(ToWorker::Run(assignments)) => WorkerEvent::Assigned(assignments),
                    Input::FromScheduler(ToWorker::Cancel(attempts)) => WorkerEvent::CancelRequested(attempts),
                    Input::Completed(result) => {
                        running.remove(&result.attempt);
                        in_runs.remove(&result.attempt);
                        WorkerEvent::Completed(result)
                    }
                    Input::Heartbeat => {
                        beat = true;
                        continue;
                    }
                };
                state.handle(event);
                let mut pending_actions: std::collections::VecDeque<WorkerAction> = state.take_actions().into();
                while let Some(action) = pending_actions.pop_front() {
                    match action {
                        WorkerAction::Start(assignment) => {
                            let attempt = assignment.attempt;
                            let started = Instant::now();
                            let mut future = match lock(&table).resolve(&assignment.tenant, &assignment.needs) {
                                Ok(pins) => options.executor.run(assignment, pins),
                                Err(e) => Box::pin(std::future::ready(Outcome::Err(e))),
                            };
                            // Tasks that finish at once (no-ops, echoes) skip the spawn.
                            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                            if let std::task::Poll::Ready(outcome) = future.as_mut().poll(&mut cx) {
                                let run_micros = started.elapsed().as_micros() as u64;
                                let result = AttemptResult { attempt, outcome, run_micros };
                                end_now(&mut state, &mut pending_actions, result);
                                continue;
                            }
                            let tx = tx.clone();
                            let span = tracing::debug_span!("attempt", attempt);
                            let handle = tokio::spawn(
                                async move {
                                    let outcome = future.await;
                                    let run_micros = started.elapsed().as_micros() as u64;
                                    let _ = tx.send(Input::Completed(AttemptResult { attempt, outcome, run_micros }));
                                }
                                .instrument(span),
                            );
                            running.insert(attempt, handle);
                        }
                        WorkerAction::StartRun(assignments) => {
                            let skips = Arc::new(Skips::default());
                            let mut members = Vec::with_capacity(assignments.len());
                            for assignment in assignments {
                                match lock(&table).resolve(&assignment.tenant, &assignment.needs) {
                                    Ok(pins) => {
                                        in_runs.insert(assignment.attempt, skips.clone());
                                        members.push((assignment, pins));
                                    }
                                    Err(e) => {
                                        end_now(&mut state, &mut pending_actions, unresolved(assignment.attempt, e))
                                    }
                                }
                            }
                            if !members.is_empty() {
                                tokio::spawn(options.executor.run_sequence(members, skips, reporter(&tx)));
                            }
                        }
                        WorkerAction::StartBehind { assignment, behind } => {
                            let attempt = assignment.attempt;
                            match lock(&table).resolve(&assignment.tenant, &assignment.needs) {
                                Ok(pins) => {
                                    let run = options.executor.run_behind(assignment, pins, behind, reporter(&tx));
                                    let span = tracing::debug_span!("attempt", attempt, behind);
                                    running.insert(attempt, tokio::spawn(run.instrument(span)));
                                }
                                Err(e) => end_now(&mut state, &mut pending_actions, unresolved(attempt, e)),
                            }
                        }
                        WorkerAction::Abort(attempt) => {
                            if let Some(handle) = running.remove(&attempt) {
                                handle.abort();
                            }
                            if let Some(skips) = in_runs.remove(&attempt) {
                                skips.skip(attempt);
                            }
                        }
                        WorkerAction::Report(result) => finished.push(result),
                    }
                }
            }
            for reply in pin_replies.drain(..) {
                uplink.push(reply)?;
            }
            if !finished.is_empty() {
                uplink.push(FromWorker::Finished(std::mem::take(&mut finished)))?;
            }
            if beat {
                uplink.push(FromWorker::Heartbeat)?;
            }
            uplink.flush().await?;
        }
        Ok::<(), FrameError>(())
    };
    let result = tokio::select! {
        r = core => r.map_err(|e| WorkerError::Connection(e.to_string())),
        r = reader_task => {
            let reason = conn.as_ref().and_then(|conn| conn.close_reason()).map(|r| r.to_string());
            match (r, reason) {
                (Ok(_), Some(reason)) => Err(WorkerError::Connection(reason)),
                (Ok(Ok(())), None) if conn.is_some() => Ok(()),
                (Ok(Ok(())), None) => Err(WorkerError::Connection("the scheduler in this process stopped or dropped this worker".into())),
                (Ok(Err(e)), None) => Err(WorkerError::Connection(e.to_string())),
                (Err(e), _) => Err(WorkerError::Connection(e.to_string())),
            }
        },
        _ = shutdown => {
            tracing::info!("worker shutting down");
            Ok(())
        }
    };
    ticker.abort();
    if let Some(objects) = objects {
        objects.abort();
    }
    for handle in running.values() {
        handle.abort();
    }
    uplink.close().await;
    result
}

/// How a worker's messages reach the scheduler.
enum Uplink {
    /// A QUIC connection and its control stream.
    Quic { conn: quinn::Connection, endpoint: quinn::Endpoint, writer: FrameWriter<quinn::SendStream> },
    /// The door of a scheduler in this process; `queued` waits for the next flush.
    Local { tx: mpsc::UnboundedSender<FromWorker>, queued: Vec<FromWorker> },
}

impl Uplink {
    fn conn(&self) -> Option<&quinn::Connection> {
        match self {
            Self::Quic { conn, .. } => Some(conn),
            Self::Local { .. } => None,
        }
    }

    fn push(&mut self, msg: FromWorker) -> Result<(), FrameError> {
        match self {
            Self::Quic { writer, .. } => writer.push(&msg),
            Self::Local { queued, .. } => {
                queued.push(msg);
                Ok(())
            }
        }
    }

    /// Sends what was pushed, if anything.
    async fn flush(&mut self) -> Result<(), FrameError> {
        match self {
            Self::Quic { writer, .. } if writer.buffered() > 0 => writer.flush().await,
            Self::Quic { .. } => Ok(()),
            Self::Local { tx, queued } => {
                for msg in queued.drain(..) {
                    if tx.send(msg).is_err() {
                        let gone = std::io::Error::new(
                            std::io::ErrorKind::BrokenPipe,
                            "the scheduler in this process stopped",
                        );
                        return Err(FrameError::Io(gone));
                    }
                }
                Ok(())
            }
        }
    }

    /// Leaves the scheduler.
    async fn close(self) {
        if let Self::Quic { conn, endpoint, .. } = self {
            conn.close(crate::proto::CloseCode::Normal.code(), b"worker stopped");
            let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
        }
    }
}

/// An attempt that ended in the driver (at once, or before it could start): its result
/// goes into the state now, and the actions that follow join those pending.
fn end_now(state: &mut WorkerState, pending: &mut std::collections::VecDeque<WorkerAction>, result: AttemptResult) {
    state.handle(WorkerEvent::Completed(result));
    pending.extend(state.take_actions());
}

/// The result of an attempt whose pinned objects the worker does not hold.
fn unresolved(attempt: AttemptId, error: TaskError) -> AttemptResult {
    AttemptResult { attempt, outcome: Outcome::Err(error), run_micros: 0 }
}

/// Where an executor reports attempts it ends itself: into the worker's core loop.
fn reporter(tx: &mpsc::UnboundedSender<Input>) -> Report {
    let tx = tx.clone();
    Box::new(move |result| {
        let _ = tx.send(Input::Completed(result));
    })
}

fn lock(table: &Mutex<PinTable>) -> std::sync::MutexGuard<'_, PinTable> {
    // A panic while holding the lock cannot leave the table inconsistent (every
    // method updates it in one step), so a poisoned lock is still usable.
    table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn refused(header: &ObjectHeader, err: TaskError) -> PinReply {
    tracing::warn!(key = %hex::encode(header.key), error = %err.message, "cannot pin an object");
    PinReply { key: header.key, outcome: PinOutcome::Failed(err) }
}

fn store_error(e: impl std::fmt::Display) -> TaskError {
    TaskError { kind: crate::proto::ErrorKind::DataLost, message: e.to_string(), detail: Vec::new() }
}

/// Lets the executor prepare for an object the worker now holds.
fn prepare(executor: &dyn Executor, table: &Mutex<PinTable>, tenant: &str, reply: &PinReply) {
    if !matches!(reply.outcome, PinOutcome::Pinned(_)) {
        return;
    }
    if let Some(object) = lock(table).get(tenant, &reply.key) {
        executor.prepare(tenant, &object);
    }
}

/// Pins an object from the store this worker shares with the scheduler.
fn pin_local(store: &Store, table: &Mutex<PinTable>, header: &ObjectHeader) -> PinReply {
    if let Err(e) = lock(table).reserve(header) {
        return refused(header, e);
    }
    match store.pin(&header.tenant, header) {
        Ok(pinned) => lock(table).insert(pinned),
        Err(e) => {
            lock(table).unreserve(header);
            refused(header, store_error(e))
        }
    }
}

/// Receives the objects the scheduler streams, each on its own stream.
async fn accept_objects(
    conn: quinn::Connection,
    store: Store,
    table: Arc<Mutex<PinTable>>,
    tx: mpsc::UnboundedSender<Input>,
) {
    while let Ok(mut recv) = conn.accept_uni().await {
        let (store, table, tx) = (store.clone(), table.clone(), tx.clone());
        tokio::spawn(async move {
            let header = match stream::receive_header(&mut recv).await {
                Ok(header) => header,
                Err(e) => {
                    tracing::warn!(error = %e, "bad object stream from the scheduler");
                    return;
                }
            };
            if let Err(e) = lock(&table).reserve(&header) {
                let _ = recv.stop(quinn::VarInt::from_u32(0));
                let _ = tx.send(Input::Pinned(header.tenant.clone(), refused(&header, e)));
                return;
            }
            let received = match store.writer(&header.tenant, Some((header.key, header.size))) {
                Ok(writer) => stream::receive_body(&mut recv, writer, &header).await.map_err(store_error),
                Err(e) => Err(store_error(e)),
            };
            let reply = match received {
                Ok(pinned) => lock(&table).insert(pinned),
                Err(e) => {
                    lock(&table).unreserve(&header);
                    refused(&header, e)
                }
            };
            let _ = tx.send(Input::Pinned(header.tenant, reply));
        });
    }
}
