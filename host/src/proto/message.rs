//! Message types of the control stream. All are rkyv archives; see the module docs of
//! [`crate::proto`] for the framing.

use rkyv::{Archive, Deserialize, Serialize};

pub use stockade_guest::archive::Key as ObjectKey;

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
    /// Identity of its object store (see [`StoreInfo`]); objects in the scheduler's
    /// store reach it without a copy when the two are the same.
    pub store_id: String,
}

/// Where a peer keeps pinned objects: the identity of a store directory (a random id
/// written into it when created) and its path. Two processes with the same id share
/// the directory, so an object one of them stored needs no transfer to the other.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
pub struct StoreInfo {
    /// The directory's id ("" when the peer has no store).
    pub id: String,
    /// The directory's path.
    pub dir: String,
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
    /// The scheduler's object store; a client that can read the same directory writes
    /// objects there and sends [`FromClient::Pin`] instead of streaming them.
    pub store: StoreInfo,
}

/// What runs a task.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskKind {
    /// Built-in tasks for tests and benchmarks; see [`Builtin`].
    Builtin(Builtin),
    /// A cloudpickled zero-argument callable, run in a warm CPython child of the
    /// tenant; the result is its cloudpickled return value.
    Python,
    /// A task of a WebAssembly module, run in a wasmtime sandbox; the payload is a
    /// [`WasmCall`], the result the task's JSON output.
    Wasm,
}

/// The payload of a [`TaskKind::Wasm`] task (an rkyv archive like every message).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct WasmCall {
    /// Key of the pinned module (it must also be among the task's `needs`).
    pub module: ObjectKey,
    /// Name of the task the module exports.
    pub task: String,
    /// The task's input (JSON, see `stockade_guest::abi`).
    pub input: Vec<u8>,
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
    /// Pinned objects of the session the task reads; it runs only on a worker that
    /// holds them all.
    pub needs: Vec<ObjectKey>,
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
    /// A worker cannot pin an object within its pinned-memory limit.
    PinnedMemoryExceeded,
    /// A WebAssembly task trapped (a guest panic included; the message has it).
    Trap,
    /// A WebAssembly task needed more memory (or output) than its limit.
    MemoryLimit,
    /// A WebAssembly module is invalid or not a Stockade guest.
    BadModule,
    /// A WebAssembly module has no task of that name.
    NoSuchTask,
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
    /// Pin an object the client wrote into the scheduler's store (same machine, see
    /// [`Welcome::store`]); objects from elsewhere arrive on object streams instead.
    /// Answered by [`ToClient::Pinned`].
    Pin(ObjectHeader),
    /// The session no longer needs these objects; they are unpinned when no session
    /// holds them.
    Release(Vec<ObjectKey>),
}

/// Kinds of pinned objects; see `stockade_guest::archive` for their layout.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// A pickled Python object with out-of-band buffers (an rkyv `Scattered` archive).
    Scattered,
    /// Opaque bytes (a WebAssembly module).
    Raw,
}

/// Describes a pinned object. Also the first frame of an *object stream*: a
/// unidirectional QUIC stream that carries one object (client → scheduler, scheduler
/// → worker): this header as a frame, then exactly `size` bytes.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct ObjectHeader {
    /// BLAKE3 hash of the bytes; receivers check it.
    pub key: ObjectKey,
    /// Length in bytes.
    pub size: u64,
    /// What the bytes are.
    pub kind: ObjectKind,
    /// Owning tenant (set by the scheduler towards workers; ignored from clients).
    pub tenant: String,
}

/// The answer to a pin: every worker connected at the time holds it, or why not.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct PinReply {
    /// The object.
    pub key: ObjectKey,
    /// Number of workers holding it, or the error (the object is then unpinned).
    pub outcome: PinOutcome,
}

/// How a pin ended.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum PinOutcome {
    /// Pinned on this many workers (and kept for workers that join later).
    Pinned(u32),
    /// Not pinned; [`ErrorKind::PinnedMemoryExceeded`] or [`ErrorKind::DataLost`].
    Failed(TaskError),
}

/// Scheduler → client.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ToClient {
    /// Final outcomes of tasks.
    Results(Vec<TaskResult>),
    /// Answer to [`FromClient::QueryInfo`].
    Info(u64, SchedulerInfo),
    /// Answer to a pin ([`FromClient::Pin`] or an object stream).
    Pinned(PinReply),
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
    /// Pinned objects it reads (the worker holds them all).
    pub needs: Vec<ObjectKey>,
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
    /// Answer to a pin ([`ToWorker::Pin`] or an object stream): the object's tenant
    /// and the answer.
    Pinned(String, PinReply),
}

/// Scheduler → worker.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub enum ToWorker {
    /// Run these attempts.
    Run(Vec<Assignment>),
    /// Stop these attempts and report them.
    Cancel(Vec<AttemptId>),
    /// Pin an object that is in the scheduler's store, which the worker shares.
    Pin(ObjectHeader),
    /// Drop an object (no session holds it any more): its tenant and key.
    Unpin(String, ObjectKey),
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
    /// Pinned objects.
    pub pinned: Vec<PinnedInfo>,
    /// Object bytes received from clients on object streams.
    pub object_bytes_received: u64,
}

/// One pinned object in [`SchedulerInfo`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct PinnedInfo {
    /// The key, in hex.
    pub key: String,
    /// Size in bytes.
    pub nbytes: u64,
    /// Workers that hold it.
    pub workers: Vec<u64>,
    /// The session that pinned it first.
    pub session: u64,
    /// Every session that holds it.
    pub sessions: Vec<u64>,
    /// Owning tenant.
    pub tenant: String,
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
    /// Bytes of the pinned objects it holds.
    pub pinned_bytes: u64,
    /// Object bytes streamed to it.
    pub object_bytes_sent: u64,
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
            needs: vec![[7; 32]],
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
        let msg = Hello {
            token: "t".into(),
            peer: Peer::Worker(WorkerHello { name: "w".into(), slots: 2, store_id: "s".into() }),
        };
        let bytes = encode(&msg).unwrap();
        assert_eq!(
            hex::encode(&bytes),
            GOLDEN_HELLO,
            "wire layout changed: bump PROTOCOL_VERSION and update the golden bytes"
        );
        assert_eq!(decode::<Hello>(&bytes).unwrap(), msg);
    }

    const GOLDEN_SUBMIT: &str =
        "68690707070707070707070707070707070707070707070707070707070707070707000000000000070000000000000000020000ccffffff02000000c6ffffff010000000000000000000000dcffffff0100000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000";
    const GOLDEN_HELLO: &str = "74ffffffffffffff0100000077ffffffffffffff0200000073ffffffffffffff";
}
