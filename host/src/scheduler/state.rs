//! The scheduler's sans-IO core: events in, actions out.
//!
//! [`SchedulerState`] knows workers, sessions and tasks. The driver feeds it
//! [`Event`]s (with the current time where time matters) and carries out the
//! [`Action`]s it returns. No sockets, clocks or tasks live here, so every rule below is
//! unit-tested by feeding events and comparing actions.
//!
//! Rules:
//! - Tasks queue per session; sessions with queued tasks take turns (round robin), so
//!   one client's flood does not starve another.
//! - A worker gets up to `slots` attempts, plus a prefetch window when tasks are short
//!   (estimated from reported run times), so that tiny tasks do not wait for a round
//!   trip each; long tasks get no prefetch, so load stays balanced.
//! - Every assignment is a new attempt with its own id. A result is accepted only for
//!   the live attempt of a task from the worker that holds it; anything else (a worker
//!   declared lost coming back, a cancelled attempt) is dropped, so a task ends once.
//! - A lost worker's attempts are requeued at the front of their session's queue; a
//!   task that lost `allowed_failures` workers fails with [`ErrorKind::WorkerLost`].
//! - A client that leaves has its queued and running tasks cancelled.
//! - Pinned objects (see the private `objects` module) belong to sessions; a session's tasks run only on
//!   workers that hold all of the session's objects.

use std::collections::{BTreeMap, HashMap, VecDeque};

use rustc_hash::{FxHashMap, FxHashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::proto::{
    Assignment, AttemptId, AttemptResult, ErrorKind, ObjectHeader, ObjectKey, Outcome, PinReply, SchedulerInfo,
    SessionInfo, TaskCounts, TaskError, TaskId, TaskKind, TaskResult, TaskSpec, WorkerInfo,
};

mod objects;
use objects::{Object, ObjectRef};

/// Identifies a connected client session.
pub type SessionId = u64;
/// Identifies a connected worker.
pub type WorkerId = u64;

/// Policy knobs of the scheduler core.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// A task fails with `WorkerLost` once this many workers were lost while running it.
    pub allowed_failures: u32,
    /// A worker silent for this long is declared lost.
    pub heartbeat_timeout: Duration,
    /// Prefetch aims to keep about this much queued work on each slot.
    pub prefetch_target: Duration,
    /// Upper bound on prefetched attempts per slot.
    pub max_prefetch_per_slot: u32,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            allowed_failures: 3,
            heartbeat_timeout: Duration::from_secs(10),
            prefetch_target: Duration::from_millis(10),
            max_prefetch_per_slot: 1024,
        }
    }
}

/// Something that happened, as the driver reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A client passed the handshake.
    ClientJoined {
        /// Its new session.
        session: SessionId,
        /// Tenant decided by its token.
        tenant: Arc<str>,
        /// Name it gave.
        name: String,
    },
    /// A client's connection ended.
    ClientLeft {
        /// The session that ended.
        session: SessionId,
    },
    /// A client submitted tasks.
    Submit {
        /// Submitting session.
        session: SessionId,
        /// The tasks.
        tasks: Vec<TaskSpec>,
    },
    /// A client cancelled some of its tasks.
    Cancel {
        /// Cancelling session.
        session: SessionId,
        /// The client's task ids.
        ids: Vec<TaskId>,
    },
    /// A client cancelled all its unfinished tasks.
    CancelAll {
        /// Cancelling session.
        session: SessionId,
    },
    /// A worker passed the handshake.
    WorkerJoined {
        /// Its new id.
        worker: WorkerId,
        /// Name it gave.
        name: String,
        /// Address it connected from.
        address: String,
        /// Tasks it runs at once.
        slots: u32,
        /// Current time.
        now: Instant,
    },
    /// A worker's connection ended.
    WorkerLeft {
        /// The worker.
        worker: WorkerId,
    },
    /// A worker said it is alive.
    Heartbeat {
        /// The worker.
        worker: WorkerId,
        /// Current time.
        now: Instant,
    },
    /// A worker reported attempts that ended.
    Finished {
        /// The reporting worker.
        worker: WorkerId,
        /// Its reports.
        results: Vec<AttemptResult>,
        /// Current time.
        now: Instant,
    },
    /// Time passed; silent workers are checked.
    Tick {
        /// Current time.
        now: Instant,
    },
    /// An object of a session is in the scheduler's store (written there by the client
    /// or received on an object stream); the driver holds it until [`Action::ForgetObject`].
    ObjectStored {
        /// The session that pinned it.
        session: SessionId,
        /// The object (its tenant is the session's).
        header: ObjectHeader,
    },
    /// A worker answered a pin.
    WorkerPinned {
        /// The worker.
        worker: WorkerId,
        /// The object's tenant.
        tenant: String,
        /// Its answer.
        reply: PinReply,
    },
    /// A session no longer needs these objects.
    Release {
        /// The session.
        session: SessionId,
        /// The objects.
        keys: Vec<ObjectKey>,
    },
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Send an attempt to a worker.
    Run {
        /// Target worker.
        worker: WorkerId,
        /// The attempt.
        assignment: Assignment,
    },
    /// Tell a worker to stop an attempt (it still reports it, which frees the slot).
    CancelAttempt {
        /// Target worker.
        worker: WorkerId,
        /// The attempt.
        attempt: AttemptId,
    },
    /// Send a task's final outcome to its client.
    Deliver {
        /// Target session.
        session: SessionId,
        /// The outcome.
        result: TaskResult,
    },
    /// Close a worker's connection (it was declared lost).
    DropWorker {
        /// The worker.
        worker: WorkerId,
        /// Why, for the worker's log.
        reason: String,
    },
    /// Give a worker an object from the scheduler's store (through the store they share,
    /// or on an object stream); it answers with [`Event::WorkerPinned`].
    PinOnWorker {
        /// Target worker.
        worker: WorkerId,
        /// The object, tenant set.
        header: ObjectHeader,
    },
    /// Tell a worker to drop an object.
    UnpinOnWorker {
        /// Target worker.
        worker: WorkerId,
        /// The object's tenant.
        tenant: String,
        /// The object.
        key: ObjectKey,
    },
    /// Answer a session's pin.
    ReplyPinned {
        /// Target session.
        session: SessionId,
        /// The answer.
        reply: PinReply,
    },
    /// The scheduler no longer needs its own copy of an object.
    ForgetObject {
        /// The object's tenant.
        tenant: String,
        /// The object.
        key: ObjectKey,
    },
}

/// Scheduler-internal task key (client task ids are only unique per session).
type TaskKey = u64;

#[derive(Debug)]
enum TaskState {
    Queued,
    Assigned { worker: WorkerId, attempt: AttemptId },
}

#[derive(Debug)]
struct Task {
    session: SessionId,
    id: TaskId,
    kind: TaskKind,
    payload: Vec<u8>,
    needs: Vec<ObjectKey>,
    state: TaskState,
    /// Workers lost while running it.
    lost: u32,
}

#[derive(Debug)]
struct Session {
    tenant: Arc<str>,
    name: String,
    /// Queued tasks in order; entries of cancelled tasks are skipped when popped.
    queue: VecDeque<TaskKey>,
    /// Unfinished tasks by client id.
    tasks: HashMap<TaskId, TaskKey>,
    /// Whether the session is in the round-robin ring.
    in_ring: bool,
    /// Pinned objects it holds.
    objects: Vec<ObjectKey>,
}

#[derive(Debug)]
struct Worker {
    name: String,
    address: String,
    slots: u32,
    /// Attempts sent and not yet reported, live or cancelled: the worker's real load.
    assigned: FxHashSet<AttemptId>,
    last_seen: Instant,
    done: u64,
}

/// The scheduler's state. See the module docs for the rules it keeps.
#[derive(Debug)]
pub struct SchedulerState {
    config: SchedulerConfig,
    workers: BTreeMap<WorkerId, Worker>,
    sessions: HashMap<SessionId, Session>,
    // Keys the scheduler itself hands out use a fast hash; maps keyed by what a
    // client chose (`Session::tasks`) keep the DoS-resistant default.
    tasks: FxHashMap<TaskKey, Task>,
    /// Live attempts.
    attempts: FxHashMap<AttemptId, TaskKey>,
    /// Sessions with queued tasks, in turn order.
    ring: VecDeque<SessionId>,
    queued: u64,
    done: u64,
    failed: u64,
    next_key: TaskKey,
    next_attempt: AttemptId,
    /// Moving average of reported run times, in microseconds.
    run_micros_avg: Option<f64>,
    /// Pinned objects.
    objects: HashMap<ObjectRef, Object>,
    actions: Vec<Action>,
}

impl SchedulerState {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            workers: BTreeMap::new(),
            sessions: HashMap::new(),
            tasks: FxHashMap::default(),
            attempts: FxHashMap::default(),
            ring: VecDeque::new(),
            queued: 0,
            done: 0,
            failed: 0,
            next_key: 1,
            next_attempt: 1,
            run_micros_avg: None,
            objects: HashMap::new(),
            actions: Vec::new(),
        }
    }

    /// Applies one event; the resulting actions accumulate until [`Self::take_actions`].
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::ClientJoined { session, tenant, name } => {
                self.sessions.insert(
                    session,
                    Session {
                        tenant,
                        name,
                        queue: VecDeque::new(),
                        tasks: HashMap::new(),
                        in_ring: false,
                        objects: Vec::new(),
                    },
                );
            }
            Event::ClientLeft { session } => {
                self.cancel_session(session, false);
                let keys = self.sessions.get(&session).map(|s| s.objects.clone()).unwrap_or_default();
                self.release(session, &keys);
                self.sessions.remove(&session);
            }
            Event::Submit { session, tasks } => self.submit(session, tasks),
            Event::Cancel { session, ids } => {
                let keys: Vec<TaskKey> = match self.sessions.get(&session) {
                    Some(s) => ids.iter().filter_map(|id| s.tasks.get(id).copied()).collect(),
                    None => return,
                };
                for key in keys {
                    self.cancel_task(key, true);
                }
            }
            Event::CancelAll { session } => self.cancel_session(session, true),
            Event::WorkerJoined { worker, name, address, slots, now } => {
                self.workers.insert(
                    worker,
                    Worker { name, address, slots, assigned: FxHashSet::default(), last_seen: now, done: 0 },
                );
                self.pin_all_on(worker);
            }
            Event::WorkerLeft { worker } => self.worker_lost(worker, "its connection closed"),
            Event::Heartbeat { worker, now } => {
                if let Some(w) = self.workers.get_mut(&worker) {
                    w.last_seen = now;
                }
            }
            Event::Finished { worker, results, now } => self.finished(worker, results, now),
            Event::Tick { now } => {
                let timeout = self.config.heartbeat_timeout;
                let silent: Vec<WorkerId> = self
                    .workers
                    .iter()
                    .filter(|(_, w)| now.saturating_duration_since(w.last_seen) > timeout)
                    .map(|(id, _)| *id)
                    .collect();
                for worker in silent {
                    let reason = format!("no heartbeat for {timeout:?}");
                    self.actions.push(Action::DropWorker { worker, reason: reason.clone() });
                    self.worker_lost(worker, &reason);
                }
            }
            Event::ObjectStored { session, header } => self.object_stored(session, header),
            Event::WorkerPinned { worker, tenant, reply } => self.worker_pinned(worker, &tenant, reply),
            Event::Release { session, keys } => self.release(session, &keys),
        }
        self.schedule();
    }

    /// Takes the actions produced so far.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// A snapshot for `status` and `scheduler_info()`.
    pub fn info(&self) -> SchedulerInfo {
        let workers = self
            .workers
            .iter()
            .map(|(id, w)| WorkerInfo {
                id: *id,
                name: w.name.clone(),
                address: w.address.clone(),
                slots: w.slots,
                running: w.assigned.len() as u32,
                done: w.done,
                pinned_bytes: self.pinned_bytes(*id),
                object_bytes_sent: 0,
            })
            .collect();
        let mut sessions: Vec<SessionInfo> = self
            .sessions
            .iter()
            .map(|(id, s)| SessionInfo {
                id: *id,
                tenant: s.tenant.to_string(),
                name: s.name.clone(),
                pending: s.tasks.len() as u64,
            })
            .collect();
        sessions.sort_by_key(|s| s.id);
        SchedulerInfo {
            workers,
            tasks: TaskCounts {
                queued: self.queued,
                running: self.attempts.len() as u64,
                done: self.done,
                failed: self.failed,
            },
            sessions,
            pinned: self.pinned_info(),
            object_bytes_received: 0,
        }
    }

    fn submit(&mut self, session: SessionId, specs: Vec<TaskSpec>) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        for spec in specs {
            let refusal = if s.tasks.contains_key(&spec.id) {
                Some(format!("task id {} is already in use in this session", spec.id))
            } else {
                spec.needs.iter().find(|k| !s.objects.contains(k)).map(|k| {
                    format!(
                        "object {} is not pinned in this session; hint: scatter it with this client first",
                        hex::encode(k)
                    )
                })
            };
            if let Some(message) = refusal {
                self.failed += 1;
                self.actions.push(Action::Deliver {
                    session,
                    result: TaskResult { id: spec.id, outcome: error(ErrorKind::Rejected, message) },
                });
                continue;
            }
            let key = self.next_key;
            self.next_key += 1;
            s.tasks.insert(spec.id, key);
            s.queue.push_back(key);
            self.queued += 1;
            self.tasks.insert(
                key,
                Task {
                    session,
                    id: spec.id,
                    kind: spec.kind,
                    payload: spec.payload,
                    needs: spec.needs,
                    state: TaskState::Queued,
                    lost: 0,
                },
            );
        }
        if !s.in_ring && !s.queue.is_empty() {
            s.in_ring = true;
            self.ring.push_back(session);
        }
    }

    fn finished(&mut self, worker: WorkerId, results: Vec<AttemptResult>, now: Instant) {
        let Some(w) = self.workers.get_mut(&worker) else {
            // A worker already declared lost: its reports are stale by definition.
            tracing::debug!(worker, n = results.len(), "dropping results of an unknown worker");
            return;
        };
        w.last_seen = now;
        let mut accepted = Vec::with_capacity(results.len());
        for r in results {
            if w.assigned.remove(&r.attempt) {
                accepted.push(r);
            } else {
                tracing::warn!(worker, attempt = r.attempt, "worker reported an attempt it does not hold");
            }
        }
        let mut lost = Vec::new();
        for r in accepted {
            let Some(key) = self.attempts.remove(&r.attempt) else {
                continue; // cancelled attempt: only frees the slot
            };
            if let Some(w) = self.workers.get_mut(&worker) {
                w.done += 1;
            }
            let sample = r.run_micros as f64;
            self.run_micros_avg = Some(match self.run_micros_avg {
                Some(avg) => avg * 0.9 + sample * 0.1,
                None => sample,
            });
            match r.outcome {
                Outcome::Err(e) if e.kind == ErrorKind::WorkerLost => lost.push((key, e.message)),
                outcome => self.finish(key, outcome),
            }
        }
        for (key, message) in lost {
            self.attempt_lost(key, &message);
        }
    }

    fn worker_lost(&mut self, worker: WorkerId, reason: &str) {
        let Some(w) = self.workers.remove(&worker) else {
            return;
        };
        tracing::warn!(worker, name = %w.name, reason, attempts = w.assigned.len(), "worker lost");
        self.forget_worker_pins(worker);
        let reason = format!("worker {} ({}) was lost: {reason}", w.name, w.address);
        let mut attempts: Vec<AttemptId> = w.assigned.into_iter().collect();
        attempts.sort_unstable(); // requeue in assignment order
        for attempt in attempts.into_iter().rev() {
            if let Some(key) = self.attempts.remove(&attempt) {
                self.attempt_lost(key, &reason);
            }
        }
    }

    /// An attempt ended without a result through no fault of the task.
    fn attempt_lost(&mut self, key: TaskKey, reason: &str) {
        let Some(task) = self.tasks.get_mut(&key) else {
            return;
        };
        task.lost += 1;
        if task.lost >= self.config.allowed_failures {
            let message = format!(
                "task lost {} workers (allowed_failures = {}); last: {reason}",
                task.lost, self.config.allowed_failures
            );
            self.finish(key, error(ErrorKind::WorkerLost, message));
            return;
        }
        task.state = TaskState::Queued;
        let session = task.session;
        if let Some(s) = self.sessions.get_mut(&session) {
            s.queue.push_front(key);
            self.queued += 1;
            if !s.in_ring {
                s.in_ring = true;
                self.ring.push_back(session);
            }
        }
    }

    /// Ends a task for its client.
    fn finish(&mut self, key: TaskKey, outcome: Outcome) {
        if let Some((session, id)) = self.retire(key, matches!(outcome, Outcome::Ok(_))) {
            self.actions.push(Action::Deliver { session, result: TaskResult { id, outcome } });
        }
    }

    /// Forgets a task and counts how it ended; returns its session and client id.
    fn retire(&mut self, key: TaskKey, succeeded: bool) -> Option<(SessionId, TaskId)> {
        let task = self.tasks.remove(&key)?;
        if let TaskState::Queued = task.state {
            self.queued -= 1;
        }
        if let Some(s) = self.sessions.get_mut(&task.session) {
            s.tasks.remove(&task.id);
        }
        if succeeded {
            self.done += 1;
        } else {
            self.failed += 1;
        }
        Some((task.session, task.id))
    }

    fn cancel_task(&mut self, key: TaskKey, deliver: bool) {
        let Some(task) = self.tasks.get(&key) else {
            return;
        };
        if let TaskState::Assigned { worker, attempt } = task.state {
            self.attempts.remove(&attempt);
            self.actions.push(Action::CancelAttempt { worker, attempt });
        }
        if deliver {
            self.finish(key, error(ErrorKind::Cancelled, "cancelled by the client".into()));
        } else {
            self.retire(key, false);
        }
    }

    fn cancel_session(&mut self, session: SessionId, deliver: bool) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let mut keys: Vec<TaskKey> = s.tasks.values().copied().collect();
        keys.sort_unstable();
        for key in keys {
            self.cancel_task(key, deliver);
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.queue.clear();
            s.tasks.clear();
        }
    }

    /// Extra attempts per slot beyond `slots`, from the run-time estimate.
    fn prefetch_per_slot(&self) -> u32 {
        match self.run_micros_avg {
            None => 0,
            Some(avg) => {
                let target = self.config.prefetch_target.as_micros() as f64;
                let n = (target / avg.max(1.0)).floor();
                (n as u32).min(self.config.max_prefetch_per_slot)
            }
        }
    }

    /// Fills free capacity: first every worker up to its slots, then the prefetch
    /// window, one attempt per worker per round so load spreads evenly.
    fn schedule(&mut self) {
        if self.queued == 0 || self.workers.is_empty() {
            return;
        }
        let extra = self.prefetch_per_slot();
        let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
        for per_slot in [0, extra] {
            loop {
                let mut progressed = false;
                for &id in &ids {
                    if self.queued == 0 {
                        return;
                    }
                    let Some(w) = self.workers.get(&id) else {
                        continue;
                    };
                    let capacity = w.slots as usize * (1 + per_slot as usize);
                    if w.assigned.len() >= capacity {
                        continue;
                    }
                    if self.assign_next(id) {
                        progressed = true;
                    }
                }
                if !progressed {
                    break;
                }
            }
        }
    }

    /// Pops the next queued task in session turn order and assigns it to `worker`.
    fn assign_next(&mut self, worker: WorkerId) -> bool {
        for _ in 0..self.ring.len() {
            let Some(session) = self.ring.pop_front() else {
                break;
            };
            if !self.holds_objects_of(worker, session) {
                self.ring.push_back(session);
                continue;
            }
            let Some(s) = self.sessions.get_mut(&session) else {
                continue;
            };
            let mut picked = None;
            while let Some(key) = s.queue.pop_front() {
                if matches!(self.tasks.get(&key), Some(Task { state: TaskState::Queued, .. })) {
                    picked = Some(key);
                    break;
                }
            }
            if s.queue.is_empty() {
                s.in_ring = false;
            } else {
                self.ring.push_back(session);
            }
            let Some(key) = picked else { continue };
            let tenant = s.tenant.to_string();
            let attempt = self.next_attempt;
            self.next_attempt += 1;
            let Some(task) = self.tasks.get_mut(&key) else {
                continue;
            };
            task.state = TaskState::Assigned { worker, attempt };
            self.queued -= 1;
            self.attempts.insert(attempt, key);
            if let Some(w) = self.workers.get_mut(&worker) {
                w.assigned.insert(attempt);
            }
            self.actions.push(Action::Run {
                worker,
                assignment: Assignment {
                    attempt,
                    tenant,
                    kind: task.kind,
                    payload: task.payload.clone(),
                    needs: task.needs.clone(),
                },
            });
            return true;
        }
        false
    }
}

fn error(kind: ErrorKind, message: String) -> Outcome {
    Outcome::Err(TaskError { kind, message, detail: Vec::new() })
}

#[cfg(test)]
mod tests;
