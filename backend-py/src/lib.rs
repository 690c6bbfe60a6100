//! `stockade._native`: the Rust client exposed to Python.
//!
//! One tokio runtime per process runs the QUIC connection (and, for `LocalCluster`, the
//! scheduler itself: [`NativeScheduler`]); Python threads never run on
//! it, and every blocking call releases the GIL (`Python::detach`). Completions are not
//! delivered by calling into Python from the runtime: they queue here, and the Python
//! package's dispatcher thread collects them with [`NativeClient::wait_completions`].
//! So the runtime never waits for the GIL.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use pyo3::exceptions::{PyConnectionError, PyRuntimeError, PyTimeoutError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use stockade::cli::{EmbeddedScheduler, EmbeddedWorker};
use stockade::client::{Client, ClientError, ClientOptions, Completion, NewTask, PreparedObject};
use stockade::net::Target;
use stockade::proto::{ErrorKind, ObjectKey, ObjectKind, Outcome, TaskKind, WasmCall};
use stockade::store::{write_scattered, Buffer};

/// Completion status: the task returned (data is the pickled result).
const DONE: u8 = 0;
/// Completion status: the task raised (data is the pickled error tuple).
const RAISED: u8 = 1;
/// Completion status: no result for another reason (kind and message say why).
const ERROR: u8 = 2;

/// The process's I/O runtime. A forked child (multiprocessing's default on Linux)
/// inherits the parent's runtime without its threads, so each process id gets its own;
/// the parent's copy in the child is leaked, since dropping it would touch threads
/// that do not exist there.
fn runtime() -> PyResult<&'static tokio::runtime::Runtime> {
    static RUNTIME: Mutex<Option<(u32, &'static tokio::runtime::Runtime)>> = Mutex::new(None);
    let mut slot = RUNTIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let pid = std::process::id();
    if let Some((owner, rt)) = *slot {
        if owner == pid {
            return Ok(rt);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("stockade-io")
        .enable_all()
        .build()
        .map_err(|e| PyRuntimeError::new_err(format!("cannot start the Stockade I/O runtime: {e}")))?;
    let rt: &'static tokio::runtime::Runtime = Box::leak(Box::new(rt));
    *slot = Some((pid, rt));
    Ok(rt)
}

/// `(id, status, kind, message, data)` as the dispatcher thread receives it.
type CompletionTuple<'py> = (u64, u8, &'static str, String, Bound<'py, PyBytes>);

/// One finished task, waiting for the dispatcher thread.
struct Completed {
    id: u64,
    status: u8,
    kind: &'static str,
    message: String,
    data: Vec<u8>,
}

impl Completed {
    fn into_tuple(self, py: Python<'_>) -> CompletionTuple<'_> {
        (self.id, self.status, self.kind, self.message, PyBytes::new(py, &self.data))
    }
}

/// Finished tasks on their way to Python. Most go to the dispatcher thread; a task a
/// Python thread is blocked on (`Future.result()`) is *claimed* and handed to that
/// thread directly, saving the hop through the dispatcher.
#[derive(Default)]
struct CompletionQueue {
    state: Mutex<QueueState>,
    /// The dispatcher waits here.
    ready: Condvar,
    /// Threads waiting for a claimed task wait here.
    claimed_ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    items: VecDeque<Completed>,
    /// Claimed task ids, with the completion once it arrived.
    claimed: HashMap<u64, Option<Completed>>,
}

impl CompletionQueue {
    fn push(&self, item: Completed) {
        let claimed = {
            let Ok(mut state) = self.state.lock() else { return };
            match state.claimed.get_mut(&item.id) {
                Some(slot) => {
                    *slot = Some(item);
                    true
                }
                None => {
                    state.items.push_back(item);
                    false
                }
            }
        };
        // Notified after the lock is released: a waiter woken while it is held would
        // block on it at once and need a second wake-up.
        if claimed {
            self.claimed_ready.notify_all();
        } else {
            self.ready.notify_one();
        }
    }

    /// Waits up to `timeout` for the dispatcher's completions and takes them all.
    fn drain(&self, timeout: Duration) -> Vec<Completed> {
        let Ok(mut state) = self.state.lock() else { return Vec::new() };
        if state.items.is_empty() {
            state = match self.ready.wait_timeout(state, timeout) {
                Ok((guard, _)) => guard,
                Err(_) => return Vec::new(),
            };
        }
        state.items.drain(..).collect()
    }

    /// Waits up to `timeout` for the completion of task `id` and takes it. `still_pending`
    /// says whether the client has yet to call the task's completion: if it has and the
    /// completion is not queued, the dispatcher has it already.
    fn take(&self, id: u64, timeout: Duration, still_pending: impl Fn() -> bool) -> Taken {
        let Ok(mut state) = self.state.lock() else { return Taken::Elsewhere };
        if let Some(at) = state.items.iter().position(|c| c.id == id) {
            return state.items.remove(at).map_or(Taken::Elsewhere, Taken::Here);
        }
        // Checked under the queue's lock: a completion called after this goes to the
        // claim below.
        if !still_pending() {
            return Taken::Elsewhere;
        }
        state.claimed.insert(id, None);
        let start = std::time::Instant::now();
        loop {
            if let Some(Some(_)) = state.claimed.get(&id) {
                return state.claimed.remove(&id).flatten().map_or(Taken::Elsewhere, Taken::Here);
            }
            let left = timeout.saturating_sub(start.elapsed());
            if left.is_zero() {
                state.claimed.remove(&id);
                return Taken::NotYet;
            }
            state = match self.claimed_ready.wait_timeout(state, left) {
                Ok((guard, _)) => guard,
                Err(_) => return Taken::Elsewhere,
            };
        }
    }
}

/// What [`CompletionQueue::take`] found.
enum Taken {
    /// The completion, for this thread.
    Here(Completed),
    /// The task has not finished.
    NotYet,
    /// The dispatcher thread has (or will get) the completion.
    Elsewhere,
}

fn kind_name(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::Failed => "Failed",
        ErrorKind::WorkerLost => "WorkerLost",
        ErrorKind::Cancelled => "Cancelled",
        ErrorKind::Timeout => "Timeout",
        ErrorKind::DataLost => "DataLost",
        ErrorKind::QuotaExceeded => "QuotaExceeded",
        ErrorKind::Rejected => "Rejected",
        ErrorKind::PinnedMemoryExceeded => "PinnedMemoryExceeded",
        ErrorKind::Trap => "Trap",
        ErrorKind::MemoryLimit => "MemoryLimit",
        ErrorKind::BadModule => "BadModule",
        ErrorKind::NoSuchTask => "NoSuchTask",
    }
}

/// A block of memory the Python caller keeps alive for the duration of the call:
/// `(address, length)`. (The buffer protocol is not in the stable ABI before Python
/// 3.11, so the package passes addresses it took from numpy or ctypes.)
type RawBlock = (usize, usize);

/// The bytes of a block.
///
/// # Safety
/// `block` must describe readable memory that stays valid and unmodified while the
/// slice is used (the private `_scatter` module guarantees it by holding the objects).
unsafe fn bytes_of<'a>(block: RawBlock) -> &'a [u8] {
    if block.1 == 0 {
        return &[];
    }
    // SAFETY: the caller's contract above.
    unsafe { std::slice::from_raw_parts(block.0 as *const u8, block.1) }
}

fn key_of(raw: &[u8]) -> PyResult<ObjectKey> {
    raw.try_into().map_err(|_| PyValueError::new_err(format!("an object key has 32 bytes, not {}", raw.len())))
}

/// `(kind, message)` of a failed pin, for the Python side to raise.
fn pin_error(e: ClientError) -> PyErr {
    match e {
        ClientError::Pin { kind, message } => PyRuntimeError::new_err((kind_name(kind), message)),
        ClientError::Timeout(_) => PyTimeoutError::new_err(e.to_string()),
        other => PyConnectionError::new_err(other.to_string()),
    }
}

fn completed(id: u64, result: Result<Outcome, ClientError>) -> Completed {
    match result {
        Ok(Outcome::Ok(data)) => Completed { id, status: DONE, kind: "", message: String::new(), data },
        Ok(Outcome::Err(e)) if e.kind == ErrorKind::Failed => {
            Completed { id, status: RAISED, kind: "Failed", message: e.message, data: e.detail }
        }
        Ok(Outcome::Err(e)) => {
            Completed { id, status: ERROR, kind: kind_name(e.kind), message: e.message, data: e.detail }
        }
        Err(ClientError::Closed) => {
            Completed { id, status: ERROR, kind: "Closed", message: "the client is closed".into(), data: Vec::new() }
        }
        Err(e) => Completed { id, status: ERROR, kind: "ConnectionLost", message: e.to_string(), data: Vec::new() },
    }
}

/// A connection to a scheduler. Methods are thread-safe.
#[pyclass(frozen, module = "stockade._native", name = "Client")]
struct NativeClient {
    client: Client,
    queue: Arc<CompletionQueue>,
}

impl NativeClient {
    /// A Python task for [`NativeClient::submit_many`]: `header` followed by `pickled`,
    /// completing into the queue.
    fn python_task(&self, header: &[u8], pickled: &[u8], needs: &[Vec<u8>]) -> PyResult<(NewTask, Completion)> {
        let mut payload = Vec::with_capacity(header.len() + pickled.len());
        payload.extend_from_slice(header);
        payload.extend_from_slice(pickled);
        let needs = needs.iter().map(|k| key_of(k)).collect::<PyResult<Vec<_>>>()?;
        Ok((NewTask { kind: TaskKind::Python, payload, needs }, self.completion()))
    }

    /// A completion that queues the outcome for the dispatcher thread.
    fn completion(&self) -> Completion {
        let queue = self.queue.clone();
        Box::new(move |id, result| queue.push(completed(id, result)))
    }
}

#[pymethods]
impl NativeClient {
    /// Connects to a scheduler given by address and/or scheduler file.
    #[new]
    #[pyo3(signature = (address=None, scheduler_file=None, token=None, name="python".to_string(), timeout=10.0))]
    fn new(
        py: Python<'_>,
        address: Option<String>,
        scheduler_file: Option<PathBuf>,
        token: Option<String>,
        name: String,
        timeout: f64,
    ) -> PyResult<Self> {
        let rt = runtime()?;
        let target = Target::resolve(address.as_deref(), scheduler_file.as_deref(), token, None)
            .map_err(|e| PyConnectionError::new_err(e.to_string()))?;
        let connect_timeout = Duration::from_secs_f64(timeout.max(0.01));
        let options = ClientOptions { target, name, connect_timeout, share_store: true };
        let client = py
            .detach(|| rt.block_on(Client::connect(options)))
            .map_err(|e| PyConnectionError::new_err(e.to_string()))?;
        Ok(Self { client, queue: Arc::new(CompletionQueue::default()) })
    }

    /// Submits pickled zero-argument callables; returns their task ids in order.
    /// Each task's payload is `header` followed by its pickle, assembled here in one
    /// copy (a large argument is not copied again by a concatenation in Python).
    /// `needs` lists, per payload, the keys of the pinned objects it refers to.
    /// Submitting never blocks (it queues for the I/O runtime), so the GIL stays held.
    #[pyo3(signature = (payloads, header=None, needs=None))]
    fn submit_many(
        &self,
        payloads: Vec<Bound<'_, PyBytes>>,
        header: Option<&[u8]>,
        needs: Option<Vec<Vec<Vec<u8>>>>,
    ) -> PyResult<Vec<u64>> {
        let mut needs = needs.unwrap_or_default().into_iter();
        let tasks = payloads
            .iter()
            .map(|pickled| {
                self.python_task(header.unwrap_or_default(), pickled.as_bytes(), &needs.next().unwrap_or_default())
            })
            .collect::<PyResult<Vec<_>>>()?;
        self.client.submit_with(tasks).map_err(|e| PyConnectionError::new_err(e.to_string()))
    }

    /// Submits one WebAssembly task: `task` of the pinned module `module` on `input`
    /// (JSON); `needs` are the keys of the pinned objects it reads (the module is
    /// added). Returns the task id; its completion carries the JSON output.
    fn submit_wasm(&self, module: Vec<u8>, task: String, input: Vec<u8>, needs: Vec<Vec<u8>>) -> PyResult<u64> {
        let module = key_of(&module)?;
        let mut keys = vec![module];
        for k in &needs {
            keys.push(key_of(k)?);
        }
        let call = WasmCall { module, task, input };
        let payload = stockade::proto::frame::encode(&call).map_err(|e| PyValueError::new_err(e.to_string()))?.to_vec();
        let task = NewTask { kind: TaskKind::Wasm, payload, needs: keys };
        let ids = self
            .client
            .submit_with(vec![(task, self.completion())])
            .map_err(|e| PyConnectionError::new_err(e.to_string()))?;
        ids.first().copied().ok_or_else(|| PyRuntimeError::new_err("no task id"))
    }

    /// Pins a pickled object (protocol 5) with its out-of-band buffers, each given as
    /// `((address, length), dtype, shape)` of memory the caller keeps alive, on every
    /// worker; returns `(key, nbytes, workers)`. Raises RuntimeError(kind, message)
    /// when a worker cannot pin it. Private: use `stockade.Client.scatter`.
    #[pyo3(signature = (pickle, buffers, timeout=600.0))]
    fn scatter<'py>(
        &self,
        py: Python<'py>,
        pickle: Bound<'py, PyBytes>,
        buffers: Vec<(RawBlock, String, Vec<u64>)>,
        timeout: f64,
    ) -> PyResult<(Bound<'py, PyBytes>, u64, u32)> {
        let pickle_bytes = pickle.as_bytes();
        let blocks = buffers
            .iter()
            // SAFETY: the private caller holds every buffer for the call (see `bytes_of`).
            .map(|(block, dtype, shape)| Buffer {
                data: unsafe { bytes_of(*block) },
                dtype: dtype.clone(),
                shape: shape.clone(),
            })
            .collect();
        let object = stockade::store::Scattered { pickle: pickle_bytes, buffers: blocks };
        let prepared = py.detach(|| self.client.prepare_object(ObjectKind::Scattered, |w| write_scattered(w, &object)));
        self.pin_prepared(py, prepared.map_err(pin_error)?, timeout)
    }

    /// Pins opaque bytes (a WebAssembly module) on every worker; returns
    /// `(key, nbytes, workers)`.
    #[pyo3(signature = (data, timeout=600.0))]
    fn scatter_raw<'py>(
        &self,
        py: Python<'py>,
        data: Bound<'py, PyBytes>,
        timeout: f64,
    ) -> PyResult<(Bound<'py, PyBytes>, u64, u32)> {
        let bytes = data.as_bytes();
        let prepared =
            py.detach(|| self.client.prepare_object(ObjectKind::Raw, |w| std::io::Write::write_all(w, bytes)));
        self.pin_prepared(py, prepared.map_err(pin_error)?, timeout)
    }

    /// Tells the scheduler this client no longer needs these objects.
    fn release(&self, keys: Vec<Vec<u8>>) -> PyResult<()> {
        let keys = keys.iter().map(|k| key_of(k)).collect::<PyResult<Vec<_>>>()?;
        self.client.release(keys).map_err(|e| PyConnectionError::new_err(e.to_string()))
    }

    /// Waits up to `timeout` seconds for finished tasks and returns all there are, as
    /// `(id, status, kind, message, data)` tuples; status 0 = returned, 1 = raised,
    /// 2 = other error. Tasks claimed by [`NativeClient::wait_for`] are not among them.
    fn wait_completions<'py>(&self, py: Python<'py>, timeout: f64) -> PyResult<Vec<CompletionTuple<'py>>> {
        let drained = py.detach(|| self.queue.drain(Duration::from_secs_f64(timeout.max(0.0))));
        Ok(drained.into_iter().map(|c| c.into_tuple(py)).collect())
    }

    /// Waits up to `timeout` seconds in this thread for task `id`, claiming its
    /// completion from the dispatcher thread. Returns its `(id, status, kind, message,
    /// data)` tuple, `None` if it did not finish in time, or `False` if the completion
    /// went to the dispatcher thread (before the claim), which completes the future.
    fn wait_for<'py>(&self, py: Python<'py>, id: u64, timeout: f64) -> PyResult<Bound<'py, PyAny>> {
        let timeout = Duration::try_from_secs_f64(timeout.max(0.0)).unwrap_or(Duration::MAX);
        let taken = py.detach(|| self.queue.take(id, timeout, || self.client.is_pending(id)));
        Ok(match taken {
            Taken::Here(c) => c.into_tuple(py).into_pyobject(py)?.into_any(),
            Taken::NotYet => py.None().into_bound(py),
            Taken::Elsewhere => false.into_pyobject(py)?.to_owned().into_any(),
        })
    }

    /// Cancels tasks by id; each completes with kind "Cancelled" unless already done.
    fn cancel(&self, ids: Vec<u64>) -> PyResult<()> {
        self.client.cancel(ids).map_err(|e| PyConnectionError::new_err(e.to_string()))
    }

    /// Cancels every unfinished task of this client.
    fn cancel_all(&self) -> PyResult<()> {
        self.client.cancel_all().map_err(|e| PyConnectionError::new_err(e.to_string()))
    }

    /// Tasks submitted and not yet completed.
    fn pending(&self) -> usize {
        self.client.pending()
    }

    /// The scheduler's view as a JSON string (workers, tasks, sessions).
    fn scheduler_info(&self, py: Python<'_>, timeout: f64) -> PyResult<String> {
        let rt = runtime()?;
        let info = py
            .detach(|| rt.block_on(self.client.scheduler_info(Duration::from_secs_f64(timeout.max(0.01)))))
            .map_err(|e| match e {
                ClientError::Timeout(_) => PyTimeoutError::new_err(e.to_string()),
                other => PyConnectionError::new_err(other.to_string()),
            })?;
        serde_json::to_string(&info).map_err(|e| PyRuntimeError::new_err(e.to_string()))
    }

    /// The tenant this client's token belongs to.
    #[getter]
    fn tenant(&self) -> String {
        self.client.tenant().to_string()
    }

    /// Closes the connection; unfinished tasks complete with kind "Closed".
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let rt = runtime()?;
        py.detach(|| rt.block_on(self.client.close()));
        Ok(())
    }
}

impl NativeClient {
    fn pin_prepared<'py>(
        &self,
        py: Python<'py>,
        prepared: PreparedObject,
        timeout: f64,
    ) -> PyResult<(Bound<'py, PyBytes>, u64, u32)> {
        let rt = runtime()?;
        let (key, size) = (prepared.key(), prepared.size());
        let timeout = Duration::from_secs_f64(timeout.max(0.01));
        let workers = py.detach(|| rt.block_on(self.client.pin(prepared, timeout))).map_err(pin_error)?;
        Ok((PyBytes::new(py, &key), size, workers))
    }
}

/// A part of a local cluster running on this process's I/O runtime, stopped once.
struct InProcess<T> {
    inner: Mutex<Option<T>>,
    /// The process it runs in: a forked child has the object but not the tasks behind it.
    pid: u32,
}

impl<T> InProcess<T> {
    fn new(value: T) -> Self {
        Self { inner: Mutex::new(Some(value)), pid: std::process::id() }
    }

    /// Takes it to stop it; `None` if it was taken before or this process is a forked
    /// child, where it is forgotten (its tasks live in the parent's runtime).
    fn take(&self) -> Option<T> {
        let taken = self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if self.pid == std::process::id() {
            return taken;
        }
        std::mem::forget(taken);
        None
    }
}

/// A scheduler running in this process, on its I/O runtime (what `LocalCluster` starts).
/// Clients of this process that connect to its address reach it without the network.
#[pyclass(frozen, module = "stockade._native", name = "Scheduler")]
struct NativeScheduler {
    inner: InProcess<EmbeddedScheduler>,
    address: String,
    scheduler_file: PathBuf,
}

#[pymethods]
impl NativeScheduler {
    /// Starts a scheduler from the options of `stockade scheduler`.
    #[new]
    fn new(py: Python<'_>, args: Vec<String>) -> PyResult<Self> {
        let rt = runtime()?;
        let started = py.detach(|| {
            let _entered = rt.enter();
            EmbeddedScheduler::start(&args)
        });
        let scheduler = started.map_err(|e| PyRuntimeError::new_err(format!("cannot start the scheduler: {e:#}")))?;
        Ok(Self {
            address: scheduler.address().to_string(),
            scheduler_file: scheduler.scheduler_file().to_path_buf(),
            inner: InProcess::new(scheduler),
        })
    }

    /// `HOST:PORT` it listens on.
    #[getter]
    fn address(&self) -> String {
        self.address.clone()
    }

    /// The scheduler file it wrote (address, certificate fingerprint, token).
    #[getter]
    fn scheduler_file(&self) -> String {
        self.scheduler_file.to_string_lossy().into_owned()
    }

    /// Stops it (idempotent): its connections are closed, its scheduler files removed.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let rt = runtime()?;
        if let Some(mut scheduler) = self.inner.take() {
            py.detach(|| rt.block_on(scheduler.stop()));
        }
        Ok(())
    }
}

/// A worker running in this process, on its I/O runtime (what `LocalCluster` starts
/// unless asked for worker processes). Its CPython children are processes.
#[pyclass(frozen, module = "stockade._native", name = "Worker")]
struct NativeWorker {
    inner: InProcess<EmbeddedWorker>,
    id: u64,
}

#[pymethods]
impl NativeWorker {
    /// Starts a worker from the options of `stockade worker` and waits until it is
    /// registered; `child_env` is added to its Python children's environment.
    #[new]
    #[pyo3(signature = (args, child_env=Vec::new()))]
    fn new(py: Python<'_>, args: Vec<String>, child_env: Vec<(String, String)>) -> PyResult<Self> {
        let rt = runtime()?;
        let started = py.detach(|| rt.block_on(EmbeddedWorker::start(&args, child_env)));
        let worker = started.map_err(|e| PyRuntimeError::new_err(format!("cannot start the worker: {e:#}")))?;
        Ok(Self { id: worker.id(), inner: InProcess::new(worker) })
    }

    /// Its id on the scheduler.
    #[getter]
    fn id(&self) -> u64 {
        self.id
    }

    /// Stops it and its Python children (idempotent).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let rt = runtime()?;
        if let Some(mut worker) = self.inner.take() {
            py.detach(|| rt.block_on(worker.stop()));
        }
        Ok(())
    }
}

/// Runs the `stockade` command line with `argv` (program name first); returns the exit
/// status. This is the Python package's console entry point.
#[pyfunction]
fn cli_main(py: Python<'_>, argv: Vec<String>) -> i32 {
    let code = py.detach(|| stockade::cli::run(argv));
    if code == std::process::ExitCode::SUCCESS {
        0
    } else {
        1
    }
}

/// The native part of the `stockade` package.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeClient>()?;
    m.add_class::<NativeScheduler>()?;
    m.add_class::<NativeWorker>()?;
    m.add_function(wrap_pyfunction!(cli_main, m)?)?;
    Ok(())
}
