//! Clients in the scheduler's own process, without the network.
//!
//! `stockade.LocalCluster` runs its scheduler inside the Python process that uses it,
//! as dask's `LocalCluster` does, and by default its workers too (their CPython
//! children stay separate processes). A client or worker of that process that connects
//! to the scheduler's address is let in through a [`LocalDoor`]: its messages go to the
//! scheduler's core over a channel and the core's answers come back over another, the
//! same typed messages the wire carries, with the same token check. What this saves is
//! a QUIC hop each way (a wake-up of another process, system calls, encryption) on
//! every task. Other processes connect over QUIC as always.
//!
//! Doors are registered per process id: a forked child inherits the registry but not
//! the runtime behind it, so it connects over QUIC like any other process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{client_message, welcome, worker_event, CoreMsg, SchedulerOptions, WorkerOutbox};
use crate::proto::{FromClient, FromWorker, HandshakeError, ToClient, ToWorker, Welcome, WorkerHello};
use crate::scheduler::state::Event;

/// The way into a scheduler running in this process.
#[derive(Clone)]
pub struct LocalDoor {
    pub(super) core_tx: mpsc::UnboundedSender<CoreMsg>,
    pub(super) ids: Arc<AtomicU64>,
    pub(super) options: Arc<SchedulerOptions>,
}

/// A client session through a [`LocalDoor`].
pub struct LocalLink {
    /// What a QUIC client would have been told at the handshake.
    pub welcome: Welcome,
    /// Messages to the scheduler; the session ends when every sender is dropped.
    pub tx: mpsc::UnboundedSender<FromClient>,
    /// The scheduler's messages; ends when the scheduler stops.
    pub rx: mpsc::UnboundedReceiver<ToClient>,
    /// Sending (or dropping) it ends the session at once, as closing a connection does.
    pub leave: oneshot::Sender<()>,
}

/// A worker's session through a [`LocalDoor`].
pub struct WorkerLink {
    /// What a QUIC worker would have been told at the handshake.
    pub welcome: Welcome,
    /// Messages to the scheduler; the worker leaves when it is dropped.
    pub tx: mpsc::UnboundedSender<FromWorker>,
    /// The scheduler's messages; ends when the scheduler stops or drops the worker.
    pub rx: mpsc::UnboundedReceiver<ToWorker>,
}

impl LocalDoor {
    /// Whether a worker keeping its objects in the store `store_id` can come in: it
    /// must share the scheduler's store, since nothing can be streamed to it.
    pub fn takes_worker_with(&self, store_id: &str) -> bool {
        self.options.store.as_ref().is_some_and(|s| s.id() == store_id)
    }

    /// Admits a worker presenting `token` (see [`Self::takes_worker_with`]). Call it
    /// inside the runtime the scheduler runs on.
    pub fn connect_worker(&self, token: &str, hello: WorkerHello) -> Result<WorkerLink, HandshakeError> {
        let tenant = self.options.tenants.authenticate(token)?;
        let worker = self.ids.fetch_add(1, Ordering::Relaxed);
        let WorkerHello { name, slots, .. } = hello;
        tracing::info!(worker, %name, slots, "worker connected in this process");
        let (to_worker, rx) = mpsc::unbounded_channel();
        let (tx, mut from_worker) = mpsc::unbounded_channel::<FromWorker>();
        let outbox = WorkerOutbox {
            id: worker,
            tx: to_worker,
            conn: None,
            shares_store: true,
            sent: Arc::new(AtomicU64::new(0)),
        };
        let _ = self.core_tx.send(CoreMsg::WorkerOutbox(outbox));
        let _ = self.core_tx.send(CoreMsg::Event(Event::WorkerJoined {
            worker,
            name,
            address: "in-process".into(),
            slots,
            now: std::time::Instant::now(),
        }));
        let core_tx = self.core_tx.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            while from_worker.recv_many(&mut batch, 64).await > 0 {
                for msg in batch.drain(..) {
                    if core_tx.send(CoreMsg::Event(worker_event(worker, msg))).is_err() {
                        return;
                    }
                }
            }
            let _ = core_tx.send(CoreMsg::Event(Event::WorkerLeft { worker }));
        });
        Ok(WorkerLink { welcome: welcome(&self.options, &tenant, worker), tx, rx })
    }

    /// Admits a client presenting `token`, as the handshake would. Call it inside the
    /// runtime the scheduler runs on.
    pub fn connect_client(&self, token: &str, name: String) -> Result<LocalLink, HandshakeError> {
        let tenant = self.options.tenants.authenticate(token)?;
        let session = self.ids.fetch_add(1, Ordering::Relaxed);
        let (to_client, rx) = mpsc::unbounded_channel();
        let (tx, mut from_client) = mpsc::unbounded_channel::<FromClient>();
        let (leave, mut left) = oneshot::channel();
        tracing::info!(session, %tenant, %name, "client connected in this process");
        let _ = self.core_tx.send(CoreMsg::ClientOutbox(session, to_client));
        let _ = self.core_tx.send(CoreMsg::Event(Event::ClientJoined { session, tenant: tenant.clone(), name }));
        let core_tx = self.core_tx.clone();
        let store = self.options.store.clone();
        let forward_tenant = tenant.clone();
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(64);
            loop {
                tokio::select! {
                    n = from_client.recv_many(&mut batch, 64) => {
                        if n == 0 {
                            break;
                        }
                        for msg in batch.drain(..) {
                            if core_tx.send(client_message(session, &forward_tenant, &store, msg)).is_err() {
                                return;
                            }
                        }
                    }
                    _ = &mut left => break,
                }
            }
            let _ = core_tx.send(CoreMsg::Event(Event::ClientLeft { session }));
            tracing::info!(session, "client disconnected");
        });
        Ok(LocalLink { welcome: welcome(&self.options, &tenant, session), tx, rx, leave })
    }
}

type Registry = Vec<(u32, SocketAddr, LocalDoor)>;

static DOORS: Mutex<Registry> = Mutex::new(Vec::new());

fn doors() -> std::sync::MutexGuard<'static, Registry> {
    DOORS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn register(addr: SocketAddr, door: LocalDoor) {
    let pid = std::process::id();
    let mut doors = doors();
    doors.retain(|(owner, a, _)| *owner == pid && *a != addr);
    doors.push((pid, addr, door));
}

pub(super) fn unregister(addr: SocketAddr) {
    doors().retain(|(_, a, _)| *a != addr);
}

/// The door of the scheduler this process runs at `addr`, if any.
pub fn door(addr: SocketAddr) -> Option<LocalDoor> {
    let pid = std::process::id();
    doors().iter().find(|(owner, a, _)| *owner == pid && *a == addr).map(|(_, _, door)| door.clone())
}
