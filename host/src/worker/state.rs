//! The worker's sans-IO core: which attempts run, which wait, what to report.
//!
//! The scheduler may send more attempts than the worker has slots (its prefetch
//! window); the extra ones wait here in order. Every attempt is reported exactly once:
//! with its outcome, or as cancelled.
//!
//! Short WebAssembly tasks start in *runs*: a slot takes the next waiting WebAssembly
//! attempts together and one thread runs them back to back, so that each costs one
//! sandbox call rather than a hand-off between threads and a message of its own. A run
//! holds about [`RUN_BUDGET_MICROS`] of work by the measured task time, so an attempt
//! waits at most that long behind the others of its run; long tasks run one by one.
//!
//! Short Python tasks are *pipelined*: when every slot is busy, the next waiting Python
//! attempt starts behind a running one of the same tenant ([`WorkerAction::StartBehind`]),
//! so that its request is already in that child's pipe when the child finishes, and the
//! child goes on without sleeping. A pipelined attempt takes no slot of its own; it
//! inherits its leader's slot when the leader ends. At most one attempt follows each
//! running one, and only while the measured Python task time is under
//! [`PIPELINE_MAX_MICROS`].

use std::collections::{HashMap, VecDeque};

use crate::proto::{Assignment, AttemptId, AttemptResult, ErrorKind, Outcome, TaskError, TaskKind};

/// The work one run holds, in microseconds of estimated task time.
pub const RUN_BUDGET_MICROS: f64 = 2_000.0;

/// The most attempts in one run.
pub const MAX_RUN: usize = 256;

/// Python attempts are pipelined only while their mean run time is under this: a
/// pipelined attempt waits for its leader even if another slot frees first, and
/// cancelling it costs its child.
pub const PIPELINE_MAX_MICROS: f64 = 2_000.0;

/// Weight of the newest sample in the task-time estimate.
const ESTIMATE_WEIGHT: f64 = 0.2;

/// Something that happened to the worker.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerEvent {
    /// The scheduler sent attempts.
    Assigned(Vec<Assignment>),
    /// The scheduler cancelled attempts.
    CancelRequested(Vec<AttemptId>),
    /// An executor finished an attempt (possibly one already cancelled).
    Completed(AttemptResult),
}

/// Something the worker driver must do.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkerAction {
    /// Start running an attempt.
    Start(Assignment),
    /// Run these attempts back to back on one thread, in order (see [`runs_back_to_back`]).
    StartRun(Vec<Assignment>),
    /// Start an attempt behind the running attempt `behind`, in the same Python child,
    /// so that it starts the moment `behind` ends (see the module documentation).
    StartBehind {
        /// The attempt to start.
        assignment: Assignment,
        /// The running attempt it follows.
        behind: AttemptId,
    },
    /// Stop a running attempt, or skip it if its run has not reached it (its report is
    /// produced here, not by the executor).
    Abort(AttemptId),
    /// Report an ended attempt to the scheduler.
    Report(AttemptResult),
}

/// Whether attempts of `kind` start in runs ([`WorkerAction::StartRun`]).
pub fn runs_back_to_back(kind: &TaskKind) -> bool {
    matches!(kind, TaskKind::Wasm)
}

/// What follows a running attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Follower {
    /// Nothing yet: an attempt may start behind it.
    None,
    /// This attempt, which inherits the slot.
    Some(AttemptId),
    /// An attempt that was cancelled or ended early: none may follow any more.
    Spent,
}

/// A running attempt.
#[derive(Debug)]
struct Running {
    /// Order of start: the earliest-started attempt is likely to end first.
    seq: u64,
    /// Its run (attempts started alone have none).
    run: Option<RunId>,
    /// The tenant of a Python attempt (only those are pipelined).
    python_tenant: Option<String>,
    /// The attempt it was started behind, while that one runs.
    leader: Option<AttemptId>,
    follower: Follower,
}

impl Running {
    fn new(seq: u64, run: Option<RunId>, assignment: &Assignment) -> Self {
        let python_tenant = matches!(assignment.kind, TaskKind::Python).then(|| assignment.tenant.clone());
        Self { seq, run, python_tenant, leader: None, follower: Follower::None }
    }
}

/// Slots, waiting and running attempts.
#[derive(Debug)]
pub struct WorkerState {
    slots: usize,
    /// Slots in use: one per single attempt or run.
    busy: usize,
    waiting: VecDeque<Assignment>,
    /// Running attempts, pipelined ones included.
    running: HashMap<AttemptId, Running>,
    /// Attempts of each run not yet ended.
    runs: HashMap<RunId, usize>,
    next_run: RunId,
    /// Attempts started so far ([`Running::seq`]).
    started: u64,
    /// Mean time of the attempts that ran in runs, in microseconds.
    run_task_micros: Option<f64>,
    /// Mean time of Python attempts, in microseconds.
    python_task_micros: Option<f64>,
    actions: Vec<WorkerAction>,
}

type RunId = u64;

impl WorkerState {
    /// A worker with `slots` slots.
    pub fn new(slots: u32) -> Self {
        Self {
            slots: slots.max(1) as usize,
            busy: 0,
            waiting: VecDeque::new(),
            running: HashMap::new(),
            runs: HashMap::new(),
            next_run: 0,
            started: 0,
            run_task_micros: None,
            python_task_micros: None,
            actions: Vec::new(),
        }
    }

    /// Applies an event.
    pub fn handle(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Assigned(assignments) => self.waiting.extend(assignments),
            WorkerEvent::CancelRequested(attempts) => {
                for attempt in attempts {
                    if let Some(running) = self.running.remove(&attempt) {
                        self.ended(running);
                        self.actions.push(WorkerAction::Abort(attempt));
                        self.actions.push(WorkerAction::Report(cancelled(attempt)));
                    } else if let Some(pos) = self.waiting.iter().position(|a| a.attempt == attempt) {
                        self.waiting.remove(pos);
                        self.actions.push(WorkerAction::Report(cancelled(attempt)));
                    }
                }
            }
            WorkerEvent::Completed(result) => {
                if let Some(running) = self.running.remove(&result.attempt) {
                    let sample = result.run_micros as f64;
                    if running.run.is_some() {
                        self.run_task_micros = Some(average(self.run_task_micros, sample));
                    }
                    if running.python_tenant.is_some() {
                        self.python_task_micros = Some(average(self.python_task_micros, sample));
                    }
                    self.ended(running);
                    self.actions.push(WorkerAction::Report(result));
                }
            }
        }
        while self.busy < self.slots {
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            self.busy += 1;
            if !runs_back_to_back(&next.kind) {
                let running = Running::new(self.next_seq(), None, &next);
                self.running.insert(next.attempt, running);
                self.actions.push(WorkerAction::Start(next));
                continue;
            }
            let run = self.next_run;
            self.next_run += 1;
            let mut members = vec![next];
            while members.len() < self.run_len() {
                match self.waiting.front() {
                    Some(a) if runs_back_to_back(&a.kind) => members.extend(self.waiting.pop_front()),
                    _ => break,
                }
            }
            for member in &members {
                let running = Running::new(self.next_seq(), Some(run), member);
                self.running.insert(member.attempt, running);
            }
            self.runs.insert(run, members.len());
            self.actions.push(WorkerAction::StartRun(members));
        }
        self.pipeline();
    }

    /// Starts waiting Python attempts behind running ones of their tenant, in order,
    /// while Python tasks are short.
    fn pipeline(&mut self) {
        if !self.python_task_micros.is_some_and(|avg| avg < PIPELINE_MAX_MICROS) {
            return;
        }
        while let Some(next) = self.waiting.front() {
            let TaskKind::Python = next.kind else { return };
            let leader = self
                .running
                .iter()
                .filter(|(_, r)| {
                    r.leader.is_none() && r.follower == Follower::None && r.python_tenant.as_ref() == Some(&next.tenant)
                })
                .min_by_key(|(_, r)| r.seq);
            let Some((&behind, _)) = leader else { return };
            let Some(next) = self.waiting.pop_front() else { return };
            let mut running = Running::new(self.next_seq(), None, &next);
            running.leader = Some(behind);
            self.running.insert(next.attempt, running);
            if let Some(leader) = self.running.get_mut(&behind) {
                leader.follower = Follower::Some(next.attempt);
            }
            self.actions.push(WorkerAction::StartBehind { assignment: next, behind });
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.started += 1;
        self.started
    }

    /// How many attempts the next run takes: one until a task time is known.
    fn run_len(&self) -> usize {
        match self.run_task_micros {
            None => 1,
            Some(avg) => ((RUN_BUDGET_MICROS / avg.max(1.0)) as usize).clamp(1, MAX_RUN),
        }
    }

    /// A running attempt ended (or was cancelled). A pipelined one held no slot; its
    /// leader takes no other follower. Otherwise the follower inherits the slot, or the
    /// slot frees once nothing of the attempt's run is left.
    fn ended(&mut self, ended: Running) {
        if let Some(leader) = ended.leader.and_then(|leader| self.running.get_mut(&leader)) {
            leader.follower = Follower::Spent;
            return;
        }
        if let Follower::Some(follower) = ended.follower {
            if let Some(follower) = self.running.get_mut(&follower) {
                follower.leader = None;
                return;
            }
        }
        if let Some(run) = ended.run {
            let Some(left) = self.runs.get_mut(&run) else { return };
            *left -= 1;
            if *left > 0 {
                return;
            }
            self.runs.remove(&run);
        }
        self.busy -= 1;
    }

    /// Takes the actions produced so far.
    pub fn take_actions(&mut self) -> Vec<WorkerAction> {
        std::mem::take(&mut self.actions)
    }

    /// Attempts running now (including those whose run has not reached them).
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Slots in use.
    pub fn busy_slots(&self) -> usize {
        self.busy
    }
}

/// The estimate `avg` moved toward `sample`.
fn average(avg: Option<f64>, sample: f64) -> f64 {
    match avg {
        None => sample,
        Some(avg) => avg + ESTIMATE_WEIGHT * (sample - avg),
    }
}

fn cancelled(attempt: AttemptId) -> AttemptResult {
    AttemptResult {
        attempt,
        outcome: Outcome::Err(TaskError {
            kind: ErrorKind::Cancelled,
            message: "cancelled".into(),
            detail: Vec::new(),
        }),
        run_micros: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Builtin, TaskKind};

    fn a(attempt: AttemptId) -> Assignment {
        Assignment {
            attempt,
            tenant: "t".into(),
            kind: TaskKind::Builtin(Builtin::Noop),
            payload: vec![],
            needs: vec![],
        }
    }

    fn wasm(attempt: AttemptId) -> Assignment {
        Assignment { kind: TaskKind::Wasm, ..a(attempt) }
    }

    fn py(attempt: AttemptId) -> Assignment {
        Assignment { kind: TaskKind::Python, ..a(attempt) }
    }

    fn behind(attempt: AttemptId, leader: AttemptId) -> WorkerAction {
        WorkerAction::StartBehind { assignment: py(attempt), behind: leader }
    }

    /// One slot that has measured a short Python task (attempt 1) and runs attempt 2
    /// with attempt 3 behind it.
    fn pipelining() -> WorkerState {
        let mut s = WorkerState::new(1);
        step(&mut s, WorkerEvent::Assigned(vec![py(1), py(2), py(3)]));
        let acts = step(&mut s, WorkerEvent::Completed(took(1, 50)));
        assert_eq!(acts, vec![WorkerAction::Report(took(1, 50)), WorkerAction::Start(py(2)), behind(3, 2)]);
        assert_eq!((s.running(), s.busy_slots()), (2, 1));
        s
    }

    fn done(attempt: AttemptId) -> AttemptResult {
        took(attempt, 1)
    }

    fn took(attempt: AttemptId, run_micros: u64) -> AttemptResult {
        AttemptResult { attempt, outcome: Outcome::Ok(vec![]), run_micros }
    }

    fn step(s: &mut WorkerState, e: WorkerEvent) -> Vec<WorkerAction> {
        s.handle(e);
        s.take_actions()
    }

    #[test]
    fn runs_up_to_slots_and_queues_the_rest() {
        let mut s = WorkerState::new(2);
        let acts = step(&mut s, WorkerEvent::Assigned(vec![a(1), a(2), a(3)]));
        assert_eq!(acts, vec![WorkerAction::Start(a(1)), WorkerAction::Start(a(2))]);
        let acts = step(&mut s, WorkerEvent::Completed(done(2)));
        assert_eq!(acts, vec![WorkerAction::Report(done(2)), WorkerAction::Start(a(3))]);
    }

    #[test]
    fn cancel_reports_once_whether_waiting_or_running() {
        let mut s = WorkerState::new(1);
        step(&mut s, WorkerEvent::Assigned(vec![a(1), a(2), a(3)]));
        let acts = step(&mut s, WorkerEvent::CancelRequested(vec![1, 3, 99]));
        assert_eq!(
            acts,
            vec![
                WorkerAction::Abort(1),
                WorkerAction::Report(cancelled(1)),
                WorkerAction::Report(cancelled(3)),
                WorkerAction::Start(a(2)),
            ]
        );
        // The aborted executor's late completion is not reported again.
        assert!(step(&mut s, WorkerEvent::Completed(done(1))).is_empty());
        assert_eq!(s.running(), 1);
    }

    #[test]
    fn short_wasm_tasks_start_in_runs_sized_by_their_measured_time() {
        let mut s = WorkerState::new(1);
        // No estimate yet: one at a time.
        let acts = step(&mut s, WorkerEvent::Assigned((1..=1000).map(wasm).collect()));
        assert_eq!(acts, vec![WorkerAction::StartRun(vec![wasm(1)])]);
        // 20 µs a task: a run holds the budget's worth.
        let acts = step(&mut s, WorkerEvent::Completed(took(1, 20)));
        let expected = (RUN_BUDGET_MICROS / 20.0) as u64;
        assert_eq!(
            acts,
            vec![WorkerAction::Report(took(1, 20)), WorkerAction::StartRun((2..2 + expected).map(wasm).collect())]
        );
        assert_eq!((s.running(), s.busy_slots()), (expected as usize, 1));
        // The slot frees only when the whole run has ended.
        for attempt in 2..1 + expected {
            assert_eq!(
                step(&mut s, WorkerEvent::Completed(took(attempt, 20))),
                vec![WorkerAction::Report(took(attempt, 20))]
            );
        }
        let acts = step(&mut s, WorkerEvent::Completed(took(1 + expected, 20)));
        assert_eq!(acts.len(), 2);
        assert!(matches!(&acts[1], WorkerAction::StartRun(run) if run.len() == expected as usize));
    }

    #[test]
    fn long_wasm_tasks_run_alone_and_runs_stop_at_other_kinds() {
        let mut s = WorkerState::new(1);
        step(&mut s, WorkerEvent::Assigned(vec![wasm(1), wasm(2), wasm(3), a(4), wasm(5)]));
        // A task time beyond the budget: runs of one.
        let acts = step(&mut s, WorkerEvent::Completed(took(1, 1_000_000)));
        assert_eq!(acts[1], WorkerAction::StartRun(vec![wasm(2)]));
        let mut s = WorkerState::new(1);
        step(&mut s, WorkerEvent::Assigned(vec![wasm(1), wasm(2), wasm(3), a(4), wasm(5)]));
        let acts = step(&mut s, WorkerEvent::Completed(took(1, 1)));
        assert_eq!(acts[1], WorkerAction::StartRun(vec![wasm(2), wasm(3)]));
    }

    #[test]
    fn cancelling_every_member_of_a_run_frees_its_slot() {
        let mut s = WorkerState::new(1);
        step(&mut s, WorkerEvent::Assigned(vec![wasm(1)]));
        step(&mut s, WorkerEvent::Completed(took(1, 1)));
        let acts = step(&mut s, WorkerEvent::Assigned(vec![wasm(2), wasm(3), a(4)]));
        assert_eq!(acts, vec![WorkerAction::StartRun(vec![wasm(2), wasm(3)])]);
        // Attempt 3 is still in the run: the slot stays busy.
        let acts = step(&mut s, WorkerEvent::CancelRequested(vec![2]));
        assert_eq!(acts, vec![WorkerAction::Abort(2), WorkerAction::Report(cancelled(2))]);
        // The executor's late report of a skipped member is dropped.
        assert!(step(&mut s, WorkerEvent::Completed(took(2, 1))).is_empty());
        let acts = step(&mut s, WorkerEvent::CancelRequested(vec![3]));
        assert_eq!(acts, vec![WorkerAction::Abort(3), WorkerAction::Report(cancelled(3)), WorkerAction::Start(a(4))]);
        assert_eq!((s.running(), s.busy_slots()), (1, 1));
    }

    #[test]
    fn short_python_tasks_start_behind_running_ones_and_inherit_their_slot() {
        let mut s = WorkerState::new(1);
        // No estimate yet: nothing is pipelined.
        let acts = step(&mut s, WorkerEvent::Assigned(vec![py(1), py(2)]));
        assert_eq!(acts, vec![WorkerAction::Start(py(1))]);
        let mut s = pipelining();
        // One follower per running attempt.
        assert!(step(&mut s, WorkerEvent::Assigned(vec![py(4)])).is_empty());
        // 3 inherits the slot and 4 starts behind it.
        let acts = step(&mut s, WorkerEvent::Completed(took(2, 50)));
        assert_eq!(acts, vec![WorkerAction::Report(took(2, 50)), behind(4, 3)]);
        assert_eq!((s.running(), s.busy_slots()), (2, 1));
        step(&mut s, WorkerEvent::Completed(took(3, 50)));
        step(&mut s, WorkerEvent::Completed(took(4, 50)));
        assert_eq!((s.running(), s.busy_slots()), (0, 0));
    }

    #[test]
    fn long_python_tasks_other_tenants_and_other_kinds_are_not_pipelined() {
        let mut s = WorkerState::new(1);
        step(&mut s, WorkerEvent::Assigned(vec![py(1), py(2), py(3)]));
        let acts = step(&mut s, WorkerEvent::Completed(took(1, 1_000_000)));
        assert_eq!(acts, vec![WorkerAction::Report(took(1, 1_000_000)), WorkerAction::Start(py(2))]);
        let mut s = pipelining();
        let other = Assignment { tenant: "u".into(), ..py(5) };
        step(&mut s, WorkerEvent::Completed(took(2, 50)));
        // 3 runs alone now; the other tenant's attempt and a built-in wait for the slot.
        assert!(step(&mut s, WorkerEvent::Assigned(vec![other.clone(), py(6)])).is_empty());
        let acts = step(&mut s, WorkerEvent::Completed(took(3, 50)));
        assert_eq!(acts, vec![WorkerAction::Report(took(3, 50)), WorkerAction::Start(other)]);
        let mut s = pipelining();
        step(&mut s, WorkerEvent::Completed(took(2, 50)));
        assert!(step(&mut s, WorkerEvent::Assigned(vec![a(7), py(8)])).is_empty());
    }

    #[test]
    fn cancelling_a_pipelined_attempt_leaves_its_leader_the_slot_and_no_follower() {
        let mut s = pipelining();
        let acts = step(&mut s, WorkerEvent::CancelRequested(vec![3]));
        assert_eq!(acts, vec![WorkerAction::Abort(3), WorkerAction::Report(cancelled(3))]);
        assert_eq!((s.running(), s.busy_slots()), (1, 1));
        // Its child still holds the cancelled request: nothing more goes behind 2.
        assert!(step(&mut s, WorkerEvent::Assigned(vec![py(4)])).is_empty());
        let acts = step(&mut s, WorkerEvent::Completed(took(2, 50)));
        assert_eq!(acts, vec![WorkerAction::Report(took(2, 50)), WorkerAction::Start(py(4))]);
        assert_eq!((s.running(), s.busy_slots()), (1, 1));
    }

    #[test]
    fn cancelling_a_leader_passes_its_slot_to_the_follower() {
        let mut s = pipelining();
        let acts = step(&mut s, WorkerEvent::CancelRequested(vec![2]));
        assert_eq!(acts, vec![WorkerAction::Abort(2), WorkerAction::Report(cancelled(2))]);
        assert_eq!((s.running(), s.busy_slots()), (1, 1));
        let acts = step(&mut s, WorkerEvent::Completed(took(3, 50)));
        assert_eq!(acts, vec![WorkerAction::Report(took(3, 50))]);
        assert_eq!((s.running(), s.busy_slots()), (0, 0));
    }

    #[test]
    fn a_follower_that_ends_before_its_leader_frees_no_slot() {
        // The executor reruns a follower elsewhere when its leader's child dies.
        let mut s = pipelining();
        assert_eq!(step(&mut s, WorkerEvent::Completed(took(3, 50))), vec![WorkerAction::Report(took(3, 50))]);
        assert_eq!((s.running(), s.busy_slots()), (1, 1));
        assert!(step(&mut s, WorkerEvent::Assigned(vec![py(4)])).is_empty());
        let acts = step(&mut s, WorkerEvent::Completed(took(2, 50)));
        assert_eq!(acts, vec![WorkerAction::Report(took(2, 50)), WorkerAction::Start(py(4))]);
    }

    #[test]
    fn the_earliest_started_attempt_is_the_leader() {
        let mut s = WorkerState::new(3);
        step(&mut s, WorkerEvent::Assigned(vec![py(1)]));
        step(&mut s, WorkerEvent::Completed(took(1, 50)));
        step(&mut s, WorkerEvent::Assigned(vec![py(2), py(3), py(4)]));
        let acts = step(&mut s, WorkerEvent::Assigned(vec![py(5), py(6), py(7)]));
        assert_eq!(acts, vec![behind(5, 2), behind(6, 3), behind(7, 4)]);
    }
}
