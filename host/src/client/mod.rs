//! The Rust client: connect, submit, await results, cancel, ask for scheduler info.
//!
//! One connection, one control stream. Submissions go through a writer task that sends
//! whatever has queued up in one frame, so `submit` never blocks on the network; a
//! reader task completes each task's [`Completion`] exactly once: with the outcome, or
//! with [`ClientError::ConnectionLost`] if the scheduler goes away first.
//!
//! Pinning ("scatter") is two steps: [`Client::prepare_object`] writes an object into a
//! store (the scheduler's own when this process can use it, so nothing is copied over
//! the network; else this machine's), blocking, from any thread; [`Client::pin`] then
//! announces or streams it and waits until every worker holds it.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::net::{dial, DialError, Target};
use crate::proto::{
    ClientHello, CloseCode, ErrorKind, FrameError, FromClient, ObjectKey, ObjectKind, Outcome, Peer, PinOutcome,
    PinReply, SchedulerInfo, StoreInfo, TaskId, TaskKind, TaskSpec, ToClient, Welcome,
};
use crate::scheduler::local;
use crate::store::{stream, ObjectWriter, Pinned, Store};

/// Errors of the client API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// Connecting failed; the message says why and what to do.
    #[error("{0}")]
    Connect(String),
    /// The connection to the scheduler ended; unfinished tasks will not complete.
    /// Reconnecting and resubmitting may help.
    #[error("lost the connection to the scheduler: {0}")]
    ConnectionLost(String),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
    /// No answer within the bound.
    #[error("no answer from the scheduler within {0:?}")]
    Timeout(Duration),
    /// An object could not be pinned (`kind` is `PinnedMemoryExceeded` or `DataLost`).
    #[error("{message}")]
    Pin {
        /// Why.
        kind: ErrorKind,
        /// What happened and what to do.
        message: String,
    },
}

/// A task to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    /// What runs it.
    pub kind: TaskKind,
    /// Its input.
    pub payload: Vec<u8>,
    /// Pinned objects it reads.
    pub needs: Vec<ObjectKey>,
}

/// An object written into a store and not yet pinned (see [`Client::pin`]).
#[derive(Debug)]
pub struct PreparedObject {
    pinned: Pinned,
    /// Whether it is in the scheduler's own store.
    local: bool,
}

impl PreparedObject {
    /// Its key.
    pub fn key(&self) -> ObjectKey {
        self.pinned.header().key
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.pinned.header().size
    }
}

impl From<DialError> for ClientError {
    fn from(e: DialError) -> Self {
        Self::Connect(e.to_string())
    }
}

/// Called once with a task's id and final outcome.
pub type Completion = Box<dyn FnOnce(TaskId, Result<Outcome, ClientError>) + Send + 'static>;

/// How to reach the scheduler.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The scheduler.
    pub target: Target,
    /// Name shown by `status`.
    pub name: String,
    /// Bound on connecting.
    pub connect_timeout: Duration,
    /// Write pinned objects into the scheduler's store when this process can (same
    /// machine and user); `false` always streams them, as a client elsewhere does.
    pub share_store: bool,
}

struct Shared {
    pending: Mutex<HashMap<TaskId, Completion>>,
    info_waiters: Mutex<HashMap<u64, oneshot::Sender<SchedulerInfo>>>,
    pin_waiters: Mutex<HashMap<ObjectKey, Vec<oneshot::Sender<PinOutcome>>>>,
    /// Set once the connection ends; later submissions fail at once.
    dead: Mutex<Option<ClientError>>,
}

impl Shared {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            pending: Mutex::new(HashMap::new()),
            info_waiters: Mutex::new(HashMap::new()),
            pin_waiters: Mutex::new(HashMap::new()),
            dead: Mutex::new(None),
        })
    }

    /// Hands one message of the scheduler to whoever waits for it.
    fn deliver(&self, msg: ToClient) {
        match msg {
            ToClient::Results(results) => {
                let completions: Vec<(TaskId, Completion, Outcome)> = match self.pending.lock() {
                    Ok(mut pending) => results
                        .into_iter()
                        .filter_map(|r| pending.remove(&r.id).map(|c| (r.id, c, r.outcome)))
                        .collect(),
                    Err(_) => Vec::new(),
                };
                for (id, completion, outcome) in completions {
                    completion(id, Ok(outcome));
                }
            }
            ToClient::Info(request, info) => {
                let waiter = self.info_waiters.lock().ok().and_then(|mut w| w.remove(&request));
                if let Some(waiter) = waiter {
                    let _ = waiter.send(info);
                }
            }
            ToClient::Pinned(PinReply { key, outcome }) => {
                let waiters = self.pin_waiters.lock().ok().and_then(|mut w| w.remove(&key));
                for waiter in waiters.unwrap_or_default() {
                    let _ = waiter.send(outcome.clone());
                }
            }
        }
    }

    fn fail_all(&self, error: ClientError) {
        let pending: Vec<(TaskId, Completion)> = match self.pending.lock() {
            Ok(mut p) => p.drain().collect(),
            Err(_) => Vec::new(),
        };
        if let Ok(mut dead) = self.dead.lock() {
            dead.get_or_insert(error.clone());
        }
        if let Ok(mut w) = self.info_waiters.lock() {
            w.clear();
        }
        if let Ok(mut w) = self.pin_waiters.lock() {
            w.clear();
        }
        for (id, completion) in pending {
            completion(id, Err(error.clone()));
        }
    }
}

/// What carries a client's messages.
#[derive(Clone)]
enum Link {
    /// A QUIC connection.
    Quic { conn: quinn::Connection, endpoint: quinn::Endpoint },
    /// Channels to a scheduler in this process ([`crate::scheduler::local`]); the
    /// sender ends the session.
    Local(Arc<Mutex<Option<oneshot::Sender<()>>>>),
}

/// A connected client. Cheap to clone; the connection closes when the last clone is
/// dropped or [`Client::close`] is called.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<FromClient>,
    link: Link,
    next_id: Arc<AtomicU64>,
    tenant: Arc<str>,
    session: u64,
    scheduler_store: StoreInfo,
    share_store: bool,
}

impl Client {
    /// Connects and authenticates. A scheduler that runs in this process and opened its
    /// door ([`crate::scheduler::Scheduler::open_door`]) is reached through channels.
    pub async fn connect(options: ClientOptions) -> Result<Self, ClientError> {
        if let Some(door) = local::door(options.target.addr) {
            return Self::connect_local(&door, options);
        }
        let connected =
            dial(&options.target, Peer::Client(ClientHello { name: options.name.clone() }), options.connect_timeout)
                .await?;
        let shared = Shared::new();
        let (tx, mut rx) = mpsc::unbounded_channel::<FromClient>();
        let mut writer = connected.writer;
        let mut reader = connected.reader;
        let conn = connected.conn.clone();

        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            while rx.recv_many(&mut batch, 64).await > 0 {
                let mut submit: Vec<TaskSpec> = Vec::new();
                let mut result = Ok(());
                for msg in batch.drain(..) {
                    match msg {
                        FromClient::Submit(tasks) => submit.extend(tasks),
                        other => {
                            // Keep order: submissions before a cancel go out first.
                            if !submit.is_empty() {
                                result = result.and(writer.push(&FromClient::Submit(std::mem::take(&mut submit))));
                            }
                            result = result.and(writer.push(&other));
                        }
                    }
                }
                if !submit.is_empty() {
                    result = result.and(writer.push(&FromClient::Submit(submit)));
                }
                if let Err(e) = result.and(writer.flush().await) {
                    tracing::debug!(error = %e, "client writer stopped");
                    break;
                }
            }
            let _ = writer.get_mut().finish();
        });

        let reader_shared = shared.clone();
        let reader_conn = conn.clone();
        tokio::spawn(async move {
            let end: Result<(), FrameError> = async {
                while let Some(msg) = reader.next::<ToClient>().await? {
                    reader_shared.deliver(msg);
                }
                Ok(())
            }
            .await;
            let reason = match (reader_conn.close_reason(), end) {
                (Some(quinn::ConnectionError::LocallyClosed), _) => ClientError::Closed,
                (Some(quinn::ConnectionError::ApplicationClosed(close)), _) => {
                    let code = CloseCode::from_code(close.error_code);
                    if code == Some(CloseCode::Normal) {
                        ClientError::Closed
                    } else {
                        ClientError::ConnectionLost(String::from_utf8_lossy(&close.reason).into_owned())
                    }
                }
                (Some(other), _) => ClientError::ConnectionLost(other.to_string()),
                (None, Err(e)) => ClientError::ConnectionLost(e.to_string()),
                (None, Ok(())) => ClientError::ConnectionLost("the scheduler closed the stream".into()),
            };
            reader_shared.fail_all(reason);
        });

        Ok(Self::new(shared, tx, Link::Quic { conn, endpoint: connected.endpoint }, connected.welcome, &options))
    }

    /// Joins the scheduler of this process through its door.
    fn connect_local(door: &local::LocalDoor, options: ClientOptions) -> Result<Self, ClientError> {
        let link = door.connect_client(&options.target.token, options.name.clone()).map_err(|e| {
            ClientError::Connect(format!("the scheduler at {} refused this client: {e}", options.target.display))
        })?;
        let shared = Shared::new();
        let reader_shared = shared.clone();
        let mut rx = link.rx;
        tokio::spawn(async move {
            while let Some(msg) = rx.recv().await {
                reader_shared.deliver(msg);
            }
            reader_shared.fail_all(ClientError::ConnectionLost("the scheduler in this process stopped".into()));
        });
        let leave = Link::Local(Arc::new(Mutex::new(Some(link.leave))));
        Ok(Self::new(shared, link.tx, leave, link.welcome, &options))
    }

    fn new(
        shared: Arc<Shared>,
        tx: mpsc::UnboundedSender<FromClient>,
        link: Link,
        welcome: Welcome,
        options: &ClientOptions,
    ) -> Self {
        Self {
            shared,
            tx,
            link,
            next_id: Arc::new(AtomicU64::new(1)),
            tenant: Arc::from(welcome.tenant.as_str()),
            session: welcome.id,
            scheduler_store: welcome.store,
            share_store: options.share_store,
        }
    }

    /// The tenant this client's token belongs to.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Whether it reaches a scheduler of this process through channels rather than QUIC.
    pub fn is_local(&self) -> bool {
        matches!(self.link, Link::Local(_))
    }

    /// This client's session id on the scheduler.
    pub fn session(&self) -> u64 {
        self.session
    }

    /// Submits tasks; each completion is called exactly once. Returns their ids.
    pub fn submit_with(&self, tasks: Vec<(NewTask, Completion)>) -> Result<Vec<TaskId>, ClientError> {
        if let Some(e) = self.shared.dead.lock().ok().and_then(|d| d.clone()) {
            return Err(e);
        }
        let first = self.next_id.fetch_add(tasks.len() as u64, Ordering::Relaxed);
        let mut specs = Vec::with_capacity(tasks.len());
        let mut ids = Vec::with_capacity(tasks.len());
        {
            let mut pending = self.shared.pending.lock().map_err(|_| ClientError::Closed)?;
            for (i, (task, completion)) in tasks.into_iter().enumerate() {
                let id = first + i as u64;
                pending.insert(id, completion);
                specs.push(TaskSpec { id, kind: task.kind, payload: task.payload, needs: task.needs });
                ids.push(id);
            }
        }
        if self.tx.send(FromClient::Submit(specs)).is_err() {
            self.shared.fail_all(ClientError::ConnectionLost("the client's writer stopped".into()));
        }
        Ok(ids)
    }

    /// Submits one task and returns a handle that resolves to its outcome.
    pub fn submit(&self, kind: TaskKind, payload: Vec<u8>) -> Result<TaskHandle, ClientError> {
        let mut handles = self.submit_many(vec![(kind, payload)])?;
        handles.pop().ok_or(ClientError::Closed)
    }

    /// Submits tasks that need no pinned objects and returns a handle per task, in order.
    pub fn submit_many(&self, tasks: Vec<(TaskKind, Vec<u8>)>) -> Result<Vec<TaskHandle>, ClientError> {
        self.submit_tasks(
            tasks.into_iter().map(|(kind, payload)| NewTask { kind, payload, needs: Vec::new() }).collect(),
        )
    }

    /// Submits tasks and returns a handle per task, in order.
    pub fn submit_tasks(&self, tasks: Vec<NewTask>) -> Result<Vec<TaskHandle>, ClientError> {
        let mut receivers = Vec::with_capacity(tasks.len());
        let with: Vec<(NewTask, Completion)> = tasks
            .into_iter()
            .map(|task| {
                let (tx, rx) = oneshot::channel();
                receivers.push(rx);
                let completion: Completion = Box::new(move |_, r| {
                    let _ = tx.send(r);
                });
                (task, completion)
            })
            .collect();
        let ids = self.submit_with(with)?;
        Ok(ids.into_iter().zip(receivers).map(|(id, rx)| TaskHandle { id, rx }).collect())
    }

    /// Cancels tasks; each ends with a `Cancelled` error unless it already ended.
    pub fn cancel(&self, ids: Vec<TaskId>) -> Result<(), ClientError> {
        self.tx.send(FromClient::Cancel(ids)).map_err(|_| ClientError::Closed)
    }

    /// Cancels every unfinished task of this session.
    pub fn cancel_all(&self) -> Result<(), ClientError> {
        self.tx.send(FromClient::CancelAll).map_err(|_| ClientError::Closed)
    }

    /// Number of tasks submitted and not yet completed.
    pub fn pending(&self) -> usize {
        self.shared.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Whether task `id` was submitted and its completion has not been called yet.
    pub fn is_pending(&self, id: TaskId) -> bool {
        self.shared.pending.lock().map(|p| p.contains_key(&id)).unwrap_or(false)
    }

    /// Asks the scheduler for workers, slots and task counts.
    pub async fn scheduler_info(&self, timeout: Duration) -> Result<SchedulerInfo, ClientError> {
        if let Some(e) = self.shared.dead.lock().ok().and_then(|d| d.clone()) {
            return Err(e);
        }
        let request = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.shared.info_waiters.lock().map_err(|_| ClientError::Closed)?.insert(request, tx);
        self.tx.send(FromClient::QueryInfo(request)).map_err(|_| ClientError::Closed)?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(info)) => Ok(info),
            Ok(Err(_)) => Err(self.shared.dead.lock().ok().and_then(|d| d.clone()).unwrap_or(ClientError::Closed)),
            Err(_) => Err(ClientError::Timeout(timeout)),
        }
    }

    /// Writes an object into the scheduler's store if this process can use it, else
    /// into this machine's default store (it is then streamed by [`Self::pin`]).
    /// Blocking (file I/O); call it off the async runtime's threads.
    pub fn prepare_object(
        &self,
        kind: ObjectKind,
        write: impl FnOnce(&mut ObjectWriter) -> std::io::Result<()>,
    ) -> Result<PreparedObject, ClientError> {
        let store_err =
            |e: crate::store::StoreError| ClientError::Pin { kind: ErrorKind::DataLost, message: e.to_string() };
        let shared = if self.share_store { Store::shared_with(&self.scheduler_store) } else { None };
        let (store, local) = match shared {
            Some(store) => (store, true),
            None => (Store::open(None).map_err(store_err)?, false),
        };
        let mut writer = store.writer(&self.tenant, None).map_err(store_err)?;
        write(&mut writer).map_err(|e| ClientError::Pin {
            kind: ErrorKind::DataLost,
            message: format!("could not write the object: {e}"),
        })?;
        let pinned = writer.finish(kind).map_err(store_err)?;
        Ok(PreparedObject { pinned, local })
    }

    /// Pins a prepared object for this session and waits (up to `timeout`) until every
    /// connected worker holds it; returns how many do.
    pub async fn pin(&self, object: PreparedObject, timeout: Duration) -> Result<u32, ClientError> {
        if let Some(e) = self.shared.dead.lock().ok().and_then(|d| d.clone()) {
            return Err(e);
        }
        let header = object.pinned.header().clone();
        let (tx, rx) = oneshot::channel();
        self.shared.pin_waiters.lock().map_err(|_| ClientError::Closed)?.entry(header.key).or_default().push(tx);
        let answer = async {
            match &self.link {
                _ if object.local => {
                    self.tx.send(FromClient::Pin(header.clone())).map_err(|_| ClientError::Closed)?;
                }
                Link::Quic { conn, .. } => {
                    stream::send(conn, &header, object.pinned.bytes())
                        .await
                        .map_err(|e| ClientError::ConnectionLost(e.to_string()))?;
                }
                Link::Local(_) => {
                    return Err(ClientError::Pin {
                        kind: ErrorKind::DataLost,
                        message: "the scheduler in this process has no object store (its log says why)".into(),
                    })
                }
            }
            rx.await.map_err(|_| self.shared.dead.lock().ok().and_then(|d| d.clone()).unwrap_or(ClientError::Closed))
        };
        let outcome = match tokio::time::timeout(timeout, answer).await {
            Ok(outcome) => outcome?,
            Err(_) => return Err(ClientError::Timeout(timeout)),
        };
        // The scheduler holds its own handle now; ours may go.
        drop(object);
        match outcome {
            PinOutcome::Pinned(workers) => Ok(workers),
            PinOutcome::Failed(e) => Err(ClientError::Pin { kind: e.kind, message: e.message }),
        }
    }

    /// Tells the scheduler this session no longer needs these objects.
    pub fn release(&self, keys: Vec<ObjectKey>) -> Result<(), ClientError> {
        self.tx.send(FromClient::Release(keys)).map_err(|_| ClientError::Closed)
    }

    /// Closes the connection; unfinished tasks are cancelled on the scheduler and their
    /// completions get [`ClientError::Closed`].
    pub async fn close(&self) {
        match &self.link {
            Link::Quic { conn, endpoint } => {
                conn.close(CloseCode::Normal.code(), b"client closed");
                self.shared.fail_all(ClientError::Closed);
                let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
            }
            Link::Local(leave) => {
                // First, so that nothing the scheduler still sends completes a task.
                self.shared.fail_all(ClientError::Closed);
                if let Some(leave) = leave.lock().ok().and_then(|mut l| l.take()) {
                    let _ = leave.send(());
                }
            }
        }
    }
}

/// Resolves to one task's outcome.
pub struct TaskHandle {
    /// The task's id in this session.
    pub id: TaskId,
    rx: oneshot::Receiver<Result<Outcome, ClientError>>,
}

impl Future for TaskHandle {
    type Output = Result<Outcome, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}
