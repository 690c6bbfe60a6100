//! Message types of the control stream. All are rkyv archives; see the module docs of
//! [`crate::proto`] for the framing.

use rkyv::{Archive, Deserialize, Serialize};

/// Identifier a client gives a task, unique within its session.
pub type TaskId = u64;
/// Identifier of one attempt to run a task on a worker, unique within a scheduler's life.
pub type AttemptId = u64;

/// First message on a control stream, after the preamble.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Hello {
    /// The tenant's access token ("" in token-less loopback mode).
    pub token: String,
    /// Who is connecting.
    pub peer: Peer,
}

/// The role of a connecting peer, with what the scheduler needs to know about it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Peer {
    /// A client that submits tasks.
    Client(ClientHello),
    /// A worker that runs tasks.
    Worker(WorkerHello),
}

/// What a client says about itself.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ClientHello {
    /// Free-form name for logs and `status`.
    pub name: String,
}

/// What a worker says about itself.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WorkerHello {
    /// Name shown by `status`; unique names are the operator's business.
    pub name: String,
    /// Number of tasks it runs at once.
    pub slots: u32,
}

/// The scheduler's answer to an accepted [`Hello`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Welcome {
    /// Tenant the token belongs to.
    pub tenant: String,
    /// Session id (clients) or worker id (workers).
    pub id: u64,
    /// How often a worker must send [`FromWorker::Heartbeat`], in milliseconds.
    pub heartbeat_interval_ms: u64,
}

/// What runs a task.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// Built-in tasks for tests and benchmarks; see [`Builtin`].
    Builtin(Builtin),
    /// A cloudpickled zero-argument callable, run in a warm CPython child of the
    /// tenant; the result is its cloudpickled return value.
    Python,
}

/// Built-in task kinds. They need no executor set-up, which makes them the yardstick
/// of the scheduler's own overhead.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Builtin {
    /// Returns an empty result at once.
    Noop,
    /// Sleeps for the number of milliseconds in the payload (decimal text), returns it.
    Sleep,
    /// Returns the payload.
    Echo,
    /// Fails with the payload (UTF-8) as the error message.
    Fail,
}

/// A task as a client submits it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TaskSpec {
    /// Client-chosen id, unique within the session.
    pub id: TaskId,
    /// What runs it.
    pub kind: TaskKind,
    /// Opaque input, forwarded untouched to the executor.
    pub payload: Vec<u8>,
}

/// How a task (or one attempt of it) ended.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The executor's result bytes.
    Ok(Vec<u8>),
    /// The task did not produce a result.
    Err(TaskError),
}

/// Why a task has no result.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TaskError {
    /// The class of failure.
    pub kind: ErrorKind,
    /// Human-readable explanation.
    pub message: String,
    /// Executor-specific detail (for Python: the pickled exception), may be empty.
    pub detail: Vec<u8>,
}

/// Classes of task failure. Only [`ErrorKind::Failed`] comes from the task's own code.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The task's code raised or returned an error.
    Failed,
    /// The workers running it were lost `allowed_failures` times (or, reported by a
    /// worker for one attempt: the process running it died).
    WorkerLost,
    /// Cancelled by the client.
    Cancelled,
    /// Exceeded its time limit.
    Timeout,
    /// Pinned data it needs is gone.
    DataLost,
    /// The tenant's quota does not allow it.
    QuotaExceeded,
    /// The task cannot be run as submitted (duplicate id, unknown executor).
    Rejected,
}

/// A task's final outcome, sent to the client that submitted it.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct TaskResult {
    /// The client's id of the task.
    pub id: TaskId,
    /// How it ended.
    pub outcome: Outcome,
}

/// Client → scheduler.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum FromClient {
    /// Queue these tasks.
    Submit(Vec<TaskSpec>),
    /// Cancel these tasks (queued or running); each gets a `Cancelled` result.
    Cancel(Vec<TaskId>),
    /// Cancel every unfinished task of the session.
    CancelAll,
    /// Ask for a [`SchedulerInfo`]; answered by [`ToClient::Info`] with the same id.
    QueryInfo(u64),
}

/// Scheduler → client.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ToClient {
    /// Final outcomes of tasks.
    Results(Vec<TaskResult>),
    /// Answer to [`FromClient::QueryInfo`].
    Info(u64, SchedulerInfo),
}

/// A task handed to a worker.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Assignment {
    /// This attempt's id; the worker reports under it.
    pub attempt: AttemptId,
    /// Tenant that owns the task (executors keep tenants apart).
    pub tenant: String,
    /// What runs it.
    pub kind: TaskKind,
    /// The client's payload.
    pub payload: Vec<u8>,
}

/// A worker's report on one attempt.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct AttemptResult {
    /// The attempt reported on.
    pub attempt: AttemptId,
    /// How it ended.
    pub outcome: Outcome,
    /// Time spent running it, in microseconds (feeds the scheduler's prefetch estimate).
    pub run_micros: u64,
}

/// Worker → scheduler.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum FromWorker {
    /// Attempts that ended (including cancelled ones, which frees their slots).
    Finished(Vec<AttemptResult>),
    /// I am alive.
    Heartbeat,
}

/// Scheduler → worker.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ToWorker {
    /// Run these attempts.
    Run(Vec<Assignment>),
    /// Stop these attempts and report them.
    Cancel(Vec<AttemptId>),
}

/// What `stockade status` and `Client.scheduler_info()` show.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct SchedulerInfo {
    /// Connected workers.
    pub workers: Vec<WorkerInfo>,
    /// Task counters across all sessions.
    pub tasks: TaskCounts,
    /// Connected client sessions.
    pub sessions: Vec<SessionInfo>,
}

/// One worker in [`SchedulerInfo`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct WorkerInfo {
    /// Worker id.
    pub id: u64,
    /// Name given at start.
    pub name: String,
    /// Address it connected from.
    pub address: String,
    /// Tasks it runs at once.
    pub slots: u32,
    /// Attempts assigned and not yet reported (running or prefetched).
    pub running: u32,
    /// Attempts it completed.
    pub done: u64,
}

/// Task counters in [`SchedulerInfo`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct TaskCounts {
    /// Waiting for a slot.
    pub queued: u64,
    /// Assigned to a worker.
    pub running: u64,
    /// Ended with a result.
    pub done: u64,
    /// Ended with an error (cancelled ones included).
    pub failed: u64,
}

/// One client session in [`SchedulerInfo`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct SessionInfo {
    /// Session id.
    pub id: u64,
    /// Tenant it belongs to.
    pub tenant: String,
    /// Client name.
    pub name: String,
    /// Its unfinished tasks.
    pub pending: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::frame::{decode, encode};

    /// Golden bytes: if this changes, the wire layout changed and
    /// [`crate::proto::PROTOCOL_VERSION`] must be bumped.
    #[test]
    fn golden_bytes_of_a_submit() {
        let msg = FromClient::Submit(vec![TaskSpec {
            id: 7,
            kind: TaskKind::Builtin(Builtin::Echo),
            payload: b"hi".to_vec(),
        }]);
        let bytes = encode(&msg).unwrap();
        assert_eq!(
            hex::encode(&bytes),
            GOLDEN_SUBMIT,
            "wire layout changed: bump PROTOCOL_VERSION and update the golden bytes"
        );
        assert_eq!(decode::<FromClient>(&bytes).unwrap(), msg);
    }

    #[test]
    fn golden_bytes_of_a_hello() {
        let msg = Hello { token: "t".into(), peer: Peer::Worker(WorkerHello { name: "w".into(), slots: 2 }) };
        let bytes = encode(&msg).unwrap();
        assert_eq!(
            hex::encode(&bytes),
            GOLDEN_HELLO,
            "wire layout changed: bump PROTOCOL_VERSION and update the golden bytes"
        );
        assert_eq!(decode::<Hello>(&bytes).unwrap(), msg);
    }

    const GOLDEN_SUBMIT: &str =
        "6869000000000000070000000000000000020000ecffffff020000000000000000000000e4ffffff0100000000000000";
    const GOLDEN_HELLO: &str = "74ffffffffffffff0100000077ffffffffffffff02000000";
}
