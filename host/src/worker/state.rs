//! The worker's sans-IO core: which attempts run, which wait, what to report.
//!
//! The scheduler may send more attempts than the worker has slots (its prefetch
//! window); the extra ones wait here in order. Every attempt is reported exactly once:
//! with its outcome, or as cancelled.

use std::collections::{HashSet, VecDeque};

use crate::proto::{Assignment, AttemptId, AttemptResult, ErrorKind, Outcome, TaskError};

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
    /// Stop a running attempt (its report is produced here, not by the executor).
    Abort(AttemptId),
    /// Report an ended attempt to the scheduler.
    Report(AttemptResult),
}

/// Slots, waiting and running attempts.
#[derive(Debug)]
pub struct WorkerState {
    slots: usize,
    waiting: VecDeque<Assignment>,
    running: HashSet<AttemptId>,
    actions: Vec<WorkerAction>,
}

impl WorkerState {
    /// A worker with `slots` slots.
    pub fn new(slots: u32) -> Self {
        Self { slots: slots.max(1) as usize, waiting: VecDeque::new(), running: HashSet::new(), actions: Vec::new() }
    }

    /// Applies an event.
    pub fn handle(&mut self, event: WorkerEvent) {
        match event {
            WorkerEvent::Assigned(assignments) => self.waiting.extend(assignments),
            WorkerEvent::CancelRequested(attempts) => {
                for attempt in attempts {
                    if self.running.remove(&attempt) {
                        self.actions.push(WorkerAction::Abort(attempt));
                        self.actions.push(WorkerAction::Report(cancelled(attempt)));
                    } else if let Some(pos) = self.waiting.iter().position(|a| a.attempt == attempt) {
                        self.waiting.remove(pos);
                        self.actions.push(WorkerAction::Report(cancelled(attempt)));
                    }
                }
            }
            WorkerEvent::Completed(result) => {
                if self.running.remove(&result.attempt) {
                    self.actions.push(WorkerAction::Report(result));
                }
            }
        }
        while self.running.len() < self.slots {
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            self.running.insert(next.attempt);
            self.actions.push(WorkerAction::Start(next));
        }
    }

    /// Takes the actions produced so far.
    pub fn take_actions(&mut self) -> Vec<WorkerAction> {
        std::mem::take(&mut self.actions)
    }

    /// Attempts running now.
    pub fn running(&self) -> usize {
        self.running.len()
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

    fn done(attempt: AttemptId) -> AttemptResult {
        AttemptResult { attempt, outcome: Outcome::Ok(vec![]), run_micros: 1 }
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
}
