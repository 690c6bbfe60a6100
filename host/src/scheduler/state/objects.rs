//! Pinned objects in the scheduler core.
//!
//! Rules:
//! - An object is identified by tenant and key (tenants never share one), and belongs
//!   to the sessions that pinned it; the first pin asks every connected worker to pin it
//!   too, and answers the session once each has answered.
//! - If any of those workers cannot pin it, the pin fails for the session (with the
//!   worker's reason, e.g. `PinnedMemoryExceeded`) and the object is unpinned
//!   everywhere: no half-pinned state lingers.
//! - A worker that joins later is asked to pin every live object before it gets tasks
//!   of their sessions; if it cannot, it simply never runs those sessions' tasks.
//! - When no session holds an object any more (released, or the client left), every
//!   worker drops it and so does the scheduler.

use super::*;
use crate::proto::{PinOutcome, PinnedInfo};

/// Identifies an object: tenant and key.
pub(super) type ObjectRef = (Arc<str>, ObjectKey);

/// Where a worker stands with an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PinState {
    /// Asked, no answer yet.
    Pending,
    /// Holds it.
    Pinned,
    /// Could not pin it.
    Failed,
}

/// A pinned object.
#[derive(Debug)]
pub(super) struct Object {
    header: ObjectHeader,
    /// Sessions holding it, in the order they pinned it.
    sessions: Vec<SessionId>,
    /// Sessions waiting for the answer to their pin.
    waiting: Vec<SessionId>,
    workers: BTreeMap<WorkerId, PinState>,
}

impl SchedulerState {
    pub(super) fn object_stored(&mut self, session: SessionId, mut header: ObjectHeader) {
        let Some(s) = self.sessions.get_mut(&session) else {
            // The client left meanwhile: nobody holds the object.
            self.actions.push(Action::ForgetObject { tenant: header.tenant, key: header.key });
            return;
        };
        if !s.objects.contains(&header.key) {
            s.objects.push(header.key);
        }
        header.tenant = s.tenant.to_string();
        let id: ObjectRef = (s.tenant.clone(), header.key);
        if let Some(object) = self.objects.get_mut(&id) {
            // Pinned before (by this or another session of the tenant): the driver's
            // second copy of the handle is not needed.
            if !object.sessions.contains(&session) {
                object.sessions.push(session);
            }
            object.waiting.push(session);
            self.answer_if_settled(&id);
            return;
        }
        let mut workers = BTreeMap::new();
        for &worker in self.workers.keys() {
            workers.insert(worker, PinState::Pending);
            self.actions.push(Action::PinOnWorker { worker, header: header.clone() });
        }
        self.objects.insert(id.clone(), Object { header, sessions: vec![session], waiting: vec![session], workers });
        self.answer_if_settled(&id);
    }

    pub(super) fn worker_pinned(&mut self, worker: WorkerId, tenant: &str, reply: PinReply) {
        let id: ObjectRef = (Arc::from(tenant), reply.key);
        let state = self.objects.get_mut(&id).and_then(|o| o.workers.get_mut(&worker));
        let Some(state) = state else {
            // Released while the worker was pinning it: it must not keep it.
            if matches!(reply.outcome, PinOutcome::Pinned(_)) {
                self.actions.push(Action::UnpinOnWorker { worker, tenant: tenant.to_string(), key: reply.key });
            }
            return;
        };
        match reply.outcome {
            PinOutcome::Pinned(_) => *state = PinState::Pinned,
            PinOutcome::Failed(err) => {
                *state = PinState::Failed;
                let Some(object) = self.objects.get(&id) else {
                    return;
                };
                let name = self.workers.get(&worker).map_or("?", |w| w.name.as_str()).to_string();
                if object.waiting.is_empty() {
                    tracing::warn!(worker, %name, error = %err.message, "a worker cannot pin an object; it will not run the tasks that need it");
                } else {
                    let err = TaskError { message: format!("worker {name}: {}", err.message), ..err };
                    self.fail_object(&id, err);
                    return;
                }
            }
        }
        self.answer_if_settled(&id);
    }

    /// Removes a session's hold on objects; drops those no session holds.
    pub(super) fn release(&mut self, session: SessionId, keys: &[ObjectKey]) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        s.objects.retain(|k| !keys.contains(k));
        let tenant = s.tenant.clone();
        for key in keys {
            let id: ObjectRef = (tenant.clone(), *key);
            let Some(object) = self.objects.get_mut(&id) else {
                continue;
            };
            object.sessions.retain(|&x| x != session);
            object.waiting.retain(|&x| x != session);
            if object.sessions.is_empty() {
                self.drop_object(&id);
            }
        }
    }

    /// Asks a new worker to pin every live object.
    pub(super) fn pin_all_on(&mut self, worker: WorkerId) {
        for object in self.objects.values_mut() {
            object.workers.insert(worker, PinState::Pending);
            self.actions.push(Action::PinOnWorker { worker, header: object.header.clone() });
        }
    }

    /// A worker is gone: pins waiting for it no longer do.
    pub(super) fn forget_worker_pins(&mut self, worker: WorkerId) {
        let ids: Vec<ObjectRef> =
            self.objects.iter_mut().filter_map(|(id, o)| o.workers.remove(&worker).map(|_| id.clone())).collect();
        for id in ids {
            self.answer_if_settled(&id);
        }
    }

    /// Whether a worker holds every object of a session (so it may run its tasks).
    pub(super) fn holds_objects_of(&self, worker: WorkerId, session: SessionId) -> bool {
        let Some(s) = self.sessions.get(&session) else {
            return true;
        };
        s.objects.iter().all(|key| {
            self.objects
                .get(&(s.tenant.clone(), *key))
                .is_some_and(|o| o.workers.get(&worker) == Some(&PinState::Pinned))
        })
    }

    pub(super) fn pinned_bytes(&self, worker: WorkerId) -> u64 {
        self.objects.values().filter(|o| o.workers.get(&worker) == Some(&PinState::Pinned)).map(|o| o.header.size).sum()
    }

    pub(super) fn pinned_info(&self) -> Vec<PinnedInfo> {
        let mut info: Vec<PinnedInfo> = self
            .objects
            .values()
            .map(|o| PinnedInfo {
                key: hex::encode(o.header.key),
                nbytes: o.header.size,
                workers: o.workers.iter().filter(|(_, s)| **s == PinState::Pinned).map(|(w, _)| *w).collect(),
                session: o.sessions.first().copied().unwrap_or_default(),
                sessions: o.sessions.clone(),
                tenant: o.header.tenant.clone(),
            })
            .collect();
        info.sort_by(|a, b| a.key.cmp(&b.key));
        info
    }

    /// Answers waiting sessions once no connected worker is still pinning.
    fn answer_if_settled(&mut self, id: &ObjectRef) {
        let Some(object) = self.objects.get_mut(id) else {
            return;
        };
        if object.waiting.is_empty() || object.workers.values().any(|s| *s == PinState::Pending) {
            return;
        }
        let held = object.workers.values().filter(|s| **s == PinState::Pinned).count() as u32;
        for session in std::mem::take(&mut object.waiting) {
            let reply = PinReply { key: id.1, outcome: PinOutcome::Pinned(held) };
            self.actions.push(Action::ReplyPinned { session, reply });
        }
    }

    /// A first pin failed: tell the waiting sessions, unpin everywhere.
    fn fail_object(&mut self, id: &ObjectRef, err: TaskError) {
        let Some(object) = self.objects.get(id) else {
            return;
        };
        for &session in &object.waiting {
            let reply = PinReply { key: id.1, outcome: PinOutcome::Failed(err.clone()) };
            self.actions.push(Action::ReplyPinned { session, reply });
        }
        for session in object.sessions.clone() {
            if let Some(s) = self.sessions.get_mut(&session) {
                s.objects.retain(|k| *k != id.1);
            }
        }
        self.drop_object(id);
    }

    fn drop_object(&mut self, id: &ObjectRef) {
        let Some(object) = self.objects.remove(id) else {
            return;
        };
        let tenant = object.header.tenant;
        for (worker, state) in object.workers {
            if state != PinState::Failed {
                self.actions.push(Action::UnpinOnWorker { worker, tenant: tenant.clone(), key: id.1 });
            }
        }
        self.actions.push(Action::ForgetObject { tenant, key: id.1 });
    }
}
