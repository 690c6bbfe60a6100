//! Clients in the scheduler's own process, without the network.
//!
//! `stockade.LocalCluster` runs its scheduler inside the Python process that uses it,
//! as dask's `LocalCluster` does; workers stay separate processes and connect over
//! QUIC. A client of that process that connects to the scheduler's address is let in
//! through a [`LocalDoor`]: its messages go to the scheduler's core over a channel and
//! the core's answers come back over another, the same typed messages the wire carries,
//! with the same token check. What this saves is a QUIC hop each way (a wake-up of
//! another process, system calls, encryption) on every task.
//!
//! Doors are registered per process id: a forked child inherits the registry but not
//! the runtime behind it, so it connects over QUIC like any other process.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{client_message, welcome, CoreMsg, SchedulerOptions};
use crate::proto::{FromClient, HandshakeError, ToClient, Welcome};
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

impl LocalDoor {
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
