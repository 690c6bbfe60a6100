//! State-machine tests: events in, actions compared.

use super::*;
use crate::proto::Builtin;

fn t0() -> Instant {
    Instant::now()
}

fn spec(id: TaskId) -> TaskSpec {
    TaskSpec { id, kind: TaskKind::Builtin(Builtin::Noop), payload: id.to_le_bytes().to_vec(), needs: vec![] }
}

fn ok(attempt: AttemptId) -> AttemptResult {
    AttemptResult { attempt, outcome: Outcome::Ok(vec![1]), run_micros: 100_000 }
}

struct Harness {
    s: SchedulerState,
    now: Instant,
}

impl Harness {
    fn new() -> Self {
        Self { s: SchedulerState::new(SchedulerConfig::default()), now: t0() }
    }

    fn with(config: SchedulerConfig) -> Self {
        Self { s: SchedulerState::new(config), now: t0() }
    }

    fn ev(&mut self, e: Event) -> Vec<Action> {
        self.s.handle(e);
        self.s.take_actions()
    }

    fn client(&mut self, session: SessionId) {
        assert!(self
            .ev(Event::ClientJoined { session, tenant: "default".into(), name: format!("c{session}") })
            .is_empty());
    }

    fn worker(&mut self, worker: WorkerId, slots: u32) -> Vec<Action> {
        let now = self.now;
        self.ev(Event::WorkerJoined { worker, name: format!("w{worker}"), address: "127.0.0.1:1".into(), slots, now })
    }

    fn submit(&mut self, session: SessionId, ids: impl IntoIterator<Item = TaskId>) -> Vec<Action> {
        self.ev(Event::Submit { session, tasks: ids.into_iter().map(spec).collect() })
    }

    fn finish(&mut self, worker: WorkerId, results: Vec<AttemptResult>) -> Vec<Action> {
        let now = self.now;
        self.ev(Event::Finished { worker, results, now })
    }
}

/// (worker, attempt, payload's task id) of every `Run`.
fn runs(actions: &[Action]) -> Vec<(WorkerId, AttemptId, u64)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Run { worker, assignment } => {
                let mut id = [0u8; 8];
                id.copy_from_slice(&assignment.payload);
                Some((*worker, assignment.attempt, u64::from_le_bytes(id)))
            }
            _ => None,
        })
        .collect()
}

/// (session, task id, outcome) of every `Deliver`.
fn delivered(actions: &[Action]) -> Vec<(SessionId, TaskId, Outcome)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Deliver { session, result } => Some((*session, result.id, result.outcome.clone())),
            _ => None,
        })
        .collect()
}

fn err_kind(o: &Outcome) -> Option<ErrorKind> {
    match o {
        Outcome::Err(e) => Some(e.kind),
        Outcome::Ok(_) => None,
    }
}

#[test]
fn tasks_wait_for_a_worker_then_fill_its_slots() {
    let mut h = Harness::new();
    h.client(1);
    assert!(h.submit(1, [10, 11, 12]).is_empty());
    assert_eq!(h.s.info().tasks.queued, 3);
    let a = h.worker(7, 2);
    assert_eq!(runs(&a), vec![(7, 1, 10), (7, 2, 11)]);
    assert_eq!(h.s.info().tasks, TaskCounts { queued: 1, running: 2, done: 0, failed: 0 });
}

#[test]
fn load_spreads_across_workers() {
    let mut h = Harness::new();
    h.worker(1, 1);
    h.worker(2, 1);
    h.client(1);
    let a = h.submit(1, [10, 11, 12]);
    assert_eq!(runs(&a), vec![(1, 1, 10), (2, 2, 11)]);
}

#[test]
fn results_are_routed_to_the_submitting_session_and_free_the_slot() {
    let mut h = Harness::new();
    h.worker(1, 1);
    h.client(1);
    h.client(2);
    h.submit(1, [5]);
    let a = h.submit(2, [5]); // same client id in another session
    assert!(runs(&a).is_empty());
    let a = h.finish(1, vec![ok(1)]);
    assert_eq!(delivered(&a), vec![(1, 5, Outcome::Ok(vec![1]))]);
    assert_eq!(runs(&a), vec![(1, 2, 5)]);
    let a = h.finish(1, vec![AttemptResult { attempt: 2, outcome: Outcome::Ok(vec![2]), run_micros: 100_000 }]);
    assert_eq!(delivered(&a), vec![(2, 5, Outcome::Ok(vec![2]))]);
    assert_eq!(h.s.info().tasks, TaskCounts { queued: 0, running: 0, done: 2, failed: 0 });
}

#[test]
fn sessions_take_turns() {
    let mut h = Harness::new();
    h.client(1);
    h.client(2);
    h.submit(1, [1, 2, 3]);
    h.submit(2, [100, 101]);
    let a = h.worker(9, 4);
    // ids tell the sessions apart: 1.. is session 1, 100.. session 2.
    let ids: Vec<u64> = runs(&a).iter().map(|r| r.2).collect();
    assert_eq!(ids, vec![1, 100, 2, 101]);
}

#[test]
fn duplicate_task_id_is_rejected_and_the_first_kept() {
    let mut h = Harness::new();
    h.client(1);
    h.submit(1, [3]);
    let a = h.submit(1, [3]);
    let d = delivered(&a);
    assert_eq!(d.len(), 1);
    assert_eq!(err_kind(&d[0].2), Some(ErrorKind::Rejected));
    assert_eq!(h.s.info().tasks.queued, 1);
}

#[test]
fn cancel_of_queued_and_running_tasks() {
    let mut h = Harness::new();
    h.worker(1, 1);
    h.client(1);
    h.submit(1, [1, 2, 3]);
    let a = h.ev(Event::Cancel { session: 1, ids: vec![1, 2, 99] });
    // Running task 1 is cancelled on its worker; both get a Cancelled result.
    assert!(a.contains(&Action::CancelAttempt { worker: 1, attempt: 1 }));
    let d = delivered(&a);
    assert_eq!(
        d.iter().map(|x| (x.1, err_kind(&x.2))).collect::<Vec<_>>(),
        vec![(1, Some(ErrorKind::Cancelled)), (2, Some(ErrorKind::Cancelled))]
    );
    // The slot is still taken until the worker reports the cancelled attempt.
    assert!(runs(&a).is_empty());
    let a = h.finish(
        1,
        vec![AttemptResult {
            attempt: 1,
            outcome: Outcome::Err(TaskError { kind: ErrorKind::Cancelled, message: String::new(), detail: vec![] }),
            run_micros: 5,
        }],
    );
    assert!(delivered(&a).is_empty(), "a cancelled task ends once");
    assert_eq!(runs(&a), vec![(1, 2, 3)]);
}

#[test]
fn cancel_all_ends_every_unfinished_task_once() {
    let mut h = Harness::new();
    h.worker(1, 2);
    h.client(1);
    h.submit(1, 0..5);
    let a = h.ev(Event::CancelAll { session: 1 });
    let mut ids: Vec<u64> = delivered(&a).iter().map(|d| d.1).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2, 3, 4]);
    assert_eq!(a.iter().filter(|x| matches!(x, Action::CancelAttempt { .. })).count(), 2);
    let info = h.s.info();
    assert_eq!((info.tasks.queued, info.tasks.running, info.tasks.failed), (0, 0, 5));
    assert_eq!(info.sessions[0].pending, 0);
}

#[test]
fn a_lost_worker_has_its_attempts_requeued_with_new_attempt_ids() {
    let mut h = Harness::new();
    h.worker(1, 2);
    h.client(1);
    h.submit(1, [10, 11]);
    h.worker(2, 2);
    let a = h.ev(Event::WorkerLeft { worker: 1 });
    assert!(delivered(&a).is_empty());
    assert_eq!(runs(&a), vec![(2, 3, 10), (2, 4, 11)]);
    // The lost worker's late result for attempt 1 is dropped: task 10 ends once.
    assert!(h.finish(1, vec![ok(1)]).is_empty());
    let a = h.finish(2, vec![ok(3), ok(4)]);
    assert_eq!(delivered(&a).iter().map(|d| d.1).collect::<Vec<_>>(), vec![10, 11]);
}

#[test]
fn allowed_failures_limits_requeues() {
    let mut h = Harness::with(SchedulerConfig { allowed_failures: 2, ..Default::default() });
    h.client(1);
    h.submit(1, [42]);
    h.worker(1, 1);
    let a = h.ev(Event::WorkerLeft { worker: 1 });
    assert!(delivered(&a).is_empty());
    h.worker(2, 1);
    let a = h.ev(Event::WorkerLeft { worker: 2 });
    let d = delivered(&a);
    assert_eq!(d.len(), 1);
    match &d[0].2 {
        Outcome::Err(e) => {
            assert_eq!(e.kind, ErrorKind::WorkerLost);
            assert!(e.message.contains("lost 2 workers"), "{}", e.message);
            assert!(e.message.contains("w2"), "{}", e.message);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(h.s.info().tasks.failed, 1);
}

#[test]
fn worker_reported_lost_attempt_counts_as_a_lost_worker() {
    let mut h = Harness::with(SchedulerConfig { allowed_failures: 1, ..Default::default() });
    h.worker(1, 1);
    h.client(1);
    h.submit(1, [1]);
    let a = h.finish(
        1,
        vec![AttemptResult {
            attempt: 1,
            outcome: Outcome::Err(TaskError {
                kind: ErrorKind::WorkerLost,
                message: "child died".into(),
                detail: vec![],
            }),
            run_micros: 1,
        }],
    );
    let d = delivered(&a);
    assert_eq!(err_kind(&d[0].2), Some(ErrorKind::WorkerLost));
    assert!(h.s.workers.contains_key(&1), "the worker itself stays");
}

#[test]
fn silent_worker_is_dropped_and_its_stale_results_ignored() {
    let mut h = Harness::new();
    h.worker(1, 1);
    h.client(1);
    h.submit(1, [5]);
    let later = h.now + Duration::from_secs(11);
    h.worker(2, 1); // joined at t0 too, but it will heartbeat
    h.ev(Event::Heartbeat { worker: 2, now: later });
    let a = h.ev(Event::Tick { now: later });
    assert!(a.iter().any(|x| matches!(x, Action::DropWorker { worker: 1, .. })));
    assert_eq!(runs(&a), vec![(2, 2, 5)]);
    // Worker 1 comes back with the old attempt: dropped.
    assert!(h.finish(1, vec![ok(1)]).is_empty());
    let a = h.finish(2, vec![ok(2)]);
    assert_eq!(delivered(&a).len(), 1);
    assert_eq!(h.s.info().tasks.done, 1);
}

#[test]
fn a_disconnecting_client_has_its_tasks_cancelled_without_delivery() {
    let mut h = Harness::new();
    h.worker(1, 1);
    h.client(1);
    h.client(2);
    h.submit(1, [1, 2, 3]);
    h.submit(2, [7]);
    let a = h.ev(Event::ClientLeft { session: 1 });
    assert!(delivered(&a).is_empty());
    assert!(a.contains(&Action::CancelAttempt { worker: 1, attempt: 1 }));
    // The cancelled attempt's report frees the slot for session 2's task.
    let a = h.finish(1, vec![ok(1)]);
    assert!(delivered(&a).is_empty());
    assert_eq!(runs(&a), vec![(1, 2, 7)]);
    let info = h.s.info();
    assert_eq!(info.sessions.len(), 1);
    assert_eq!(info.tasks.queued, 0);
}

#[test]
fn short_tasks_get_a_prefetch_window_long_tasks_do_not() {
    let mut h = Harness::new();
    h.worker(1, 1);
    h.client(1);
    h.submit(1, 0..5000);
    let fast = AttemptResult { attempt: 1, outcome: Outcome::Ok(vec![]), run_micros: 10 };
    let a = h.finish(1, vec![fast]);
    // The window holds about `prefetch_target` of work per slot (capped), plus the slot.
    let config = SchedulerConfig::default();
    let window = (config.prefetch_target.as_micros() as u32 / 10).min(config.max_prefetch_per_slot);
    assert!(window > 1);
    assert_eq!(runs(&a).len(), 1 + window as usize);

    let mut h = Harness::new();
    h.worker(1, 1);
    h.client(1);
    h.submit(1, 0..10);
    let a = h.finish(1, vec![ok(1)]); // 100 ms tasks
    assert_eq!(runs(&a).len(), 1);
}

#[test]
fn results_for_attempts_a_worker_never_had_are_ignored() {
    let mut h = Harness::new();
    h.worker(1, 1);
    h.worker(2, 1);
    h.client(1);
    h.submit(1, [1, 2]);
    // Worker 2 claims worker 1's attempt.
    assert!(h.finish(2, vec![ok(1)]).is_empty());
    assert_eq!(h.s.info().tasks.running, 2);
}
