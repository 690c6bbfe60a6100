"""The Python client: ``concurrent.futures.Future`` per task over the native client."""

from __future__ import annotations

import functools
import json
import logging
import os
import sys
import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Iterable

import cloudpickle

from . import _native
from ._errors import RemoteTraceback, StockadeError, error_for
from ._errors import WasmTaskFailed
from ._scatter import DEFAULT_AUTO_SCATTER, ObjectSession, Pinned, pin
from . import wasm as _wasm

_DONE, _RAISED = 0, 1

_log = logging.getLogger("stockade")

# Workers refuse a task whose pickles come from another Python minor version or
# cloudpickle version (see child.py), with a message naming both.
_VERSION_HEADER = (
    f"stockade:python={sys.version_info[0]}.{sys.version_info[1]};cloudpickle={cloudpickle.__version__}\n".encode()
)


def _from_parts(info: dict) -> BaseException | None:
    """Rebuilds an exception from class, args and attributes without calling __init__.

    pickle rebuilds exceptions as ``cls(*args)``, which is wrong whenever __init__ turns
    its parameters into other args (``FormattedError(7)`` with args ``("code 7",)``)
    and fails when it takes other parameters. ``BaseException.__new__`` sets args and
    skips __init__; the attributes come back one by one.
    """
    if info["type"] is None:
        return None
    try:
        cls = cloudpickle.loads(info["type"])
        if not (isinstance(cls, type) and issubclass(cls, BaseException)):
            return None
        if cls.__reduce__ is not BaseException.__reduce__ or cls.__reduce_ex__ is not BaseException.__reduce_ex__:
            return None  # the class says how to pickle itself: trust its pickle
        args = cloudpickle.loads(info["args"]) if info["args"] is not None else (info["message"],)
        exc = cls.__new__(cls, *args)
        # The built-in base's __init__ sets C-level fields from args (SystemExit.code,
        # OSError.errno ...) without running the class's own __init__.
        builtin_base = next(c for c in cls.__mro__ if c.__module__ == "builtins")
        builtin_base.__init__(exc, *args)
        exc.args = args
        for key, blob in info["state"].items():
            try:
                setattr(exc, key, cloudpickle.loads(blob))
            except Exception:
                pass
        return exc
    except Exception:
        return None


def _rebuild_exception(data: bytes) -> BaseException:
    """Turns a child's error description (see child.py) back into the task's exception,
    with the remote traceback as its ``__cause__``."""
    info = cloudpickle.loads(data)
    exc = _from_parts(info)
    if exc is None and info["exception"] is not None:
        try:
            exc = cloudpickle.loads(info["exception"])
        except Exception:
            exc = None
    if exc is None:
        exc = StockadeError(f"{info['name']}: {info['message']} (the exception could not be rebuilt here)")
    exc.__cause__ = RemoteTraceback(info["traceback"])
    return exc


def _outcome(status: int, kind: str, message: str, data: bytes, wasm: bool) -> tuple[bool, Any]:
    """``(True, result)`` or ``(False, exception)`` of a completion."""
    if status == _DONE:
        if wasm:
            return True, _wasm.decode(data)
        try:
            return True, cloudpickle.loads(data)
        except Exception as e:
            return False, StockadeError(f"cannot unpickle the task's result here: {e!r}")
    if status == _RAISED:
        return False, WasmTaskFailed(message) if wasm else _rebuild_exception(data)
    return False, error_for(kind, message)


class TaskFuture(Future):
    """The future of one task. A thread that blocks in :meth:`result` or
    :meth:`exception` takes the task's completion from the native client itself, one
    thread hand-off sooner than the dispatcher thread would deliver it."""

    def __init__(self, client: "Client", wasm: bool = False):
        super().__init__()
        self.set_running_or_notify_cancel()
        self.stockade_id = -1
        self.wasm = wasm
        self._client: Client | None = client
        self._claimed = False

    def result(self, timeout: float | None = None) -> Any:
        return super().result(self._collect(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._collect(timeout))

    def _complete(self, task_id: int, ok: bool, value: Any) -> None:
        self._client = None
        if self.done():
            return
        if ok:
            self.set_result(value)
        else:
            self.set_exception(value)

    def _collect(self, timeout: float | None) -> float | None:
        """Waits for the completion in this thread (unless another thread does, or the
        dispatcher has it); returns what is left of ``timeout``."""
        client = self._client
        if client is None or self.done():
            return timeout
        with client._lock:
            if self._claimed or client._futures.get(self.stockade_id) is not self:
                return timeout
            self._claimed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not self.done():
                # In steps, so that Ctrl-C interrupts the wait.
                step = _WAIT_STEP if deadline is None else min(_WAIT_STEP, deadline - time.monotonic())
                if step <= 0:
                    break
                got = client._native.wait_for(self.stockade_id, step)
                if got is False:
                    break  # the dispatcher thread completes this future
                if got is not None:
                    client._deliver(*got)
        finally:
            self._claimed = False
        return None if deadline is None else max(0.0, deadline - time.monotonic())


class BatchTask:
    """A batch of the joblib backend: one or more tasks (a pickled batch, or a call per
    WebAssembly task) whose outcome goes to ``callback(batch)`` on the thread that
    completes it. Lighter than a Future (no condition variable, no callback list, no
    lock), since joblib reads the outcome only in that callback, through :meth:`result`.

    ``owner`` is the backend that submitted it (see :meth:`Client.cancel_owned`); an
    aborted batch ends without calling back.
    """

    __slots__ = ("owner", "callback", "aborted", "wasm", "_ids", "_parts", "_ok", "_value")

    def __init__(self, owner: object, callback: Callable[["BatchTask"], Any] | None, wasm: bool = False):
        self.owner = owner
        self.callback = callback
        self.aborted = False
        self.wasm = wasm
        self._ids: list[int] = []
        self._parts: dict[int, tuple[bool, Any]] = {}
        self._ok = True
        self._value: Any = None

    def result(self) -> Any:
        """The batch's result (a list per call for WebAssembly batches), or raises its
        (first) exception."""
        if not self._ok:
            raise self._value
        return self._value

    def _track(self, ids: list[int]) -> None:
        """Called by the client, under its lock, once the tasks are submitted."""
        self._ids = ids

    def _complete(self, task_id: int, ok: bool, value: Any) -> None:
        parts = self._parts
        parts[task_id] = (ok, value)
        if len(parts) < len(self._ids):
            return
        outcomes = [parts[i] for i in self._ids]
        failed = [v for good, v in outcomes if not good]
        if failed:
            self._ok, self._value = False, failed[0]
        else:
            self._value = [v for _, v in outcomes] if self.wasm else outcomes[0][1]
        if self.callback is not None and not self.aborted:
            try:
                self.callback(self)
            except Exception:
                _log.exception("the callback of a Stockade batch raised")


# How long a thread blocked in TaskFuture.result() waits before checking for signals.
_WAIT_STEP = 0.1

# Whether this process was forked from one that imported stockade: only then can a
# Client belong to another process (checked on every submission, so not by getpid()).
_forked = False


def _after_fork() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_after_fork)


class Client:
    """A connection to a Stockade scheduler.

    ``Client("HOST:PORT")`` works on the scheduler's machine; elsewhere pass
    ``scheduler_file=`` (or ``token=``). Futures are ``concurrent.futures.Future``.

    Arguments are pickled with cloudpickle; objects given to :meth:`scatter` and numpy
    arrays of at least ``auto_scatter`` bytes (``None`` turns that off), and those of
    64 KiB or more from their second use, are pinned once on every worker and sent by
    reference.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        scheduler_file: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        name: str = "python",
        auto_scatter: int | None = DEFAULT_AUTO_SCATTER,
    ):
        self._pid = os.getpid()
        self._native = _native.Client(address, scheduler_file, token, name, timeout)
        self._pins: dict[bytes, int] = {}
        self._pins_lock = threading.Lock()
        self._objects = ObjectSession(self, auto_scatter)
        self._modules: dict[str, bytes] = {}
        self._futures: dict[int, TaskFuture | BatchTask] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._dispatcher = threading.Thread(target=self._dispatch, name="stockade-results", daemon=True)
        self._dispatcher.start()

    # -- submission --------------------------------------------------------------

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        """Runs ``fn(*args, **kwargs)`` on the cluster (in a WebAssembly sandbox when
        ``fn`` is a ``stockade.wasm.Task``)."""
        if isinstance(fn, _wasm.Task):
            return self.submit_wasm(fn, args, kwargs)
        call = functools.partial(fn, *args, **kwargs) if args or kwargs else fn
        return self.submit_calls([call], self._objects)[0]

    def map(self, fn: Callable, *iterables: Iterable) -> list[Future]:
        """Submits ``fn`` over the zipped iterables in one batch; futures in order."""
        return self.submit_calls([functools.partial(fn, *args) for args in zip(*iterables)], self._objects)

    def submit_calls(self, calls: list[Callable], objects: ObjectSession) -> list[Future]:
        """Pickles zero-argument callables with the pinned objects of ``objects``
        replaced by reference, and submits them."""
        pickled = [objects.dumps(call) for call in calls]
        return self.submit_pickled([p for p, _ in pickled], [n for _, n in pickled])

    def submit_wasm(self, task: "_wasm.Task", args: tuple, kwargs: dict) -> Future:
        """Runs a WebAssembly task on ``task.encode(args, kwargs)``; the future's result
        is the task's decoded JSON output."""
        call = self._wasm_call(task, args, kwargs)
        future = TaskFuture(self, wasm=True)
        with self._lock:
            future.stockade_id = self._native.submit_wasm(*call)
            self._futures[future.stockade_id] = future
        return future

    def _wasm_call(self, task: "_wasm.Task", args: tuple, kwargs: dict) -> tuple[bytes, str, bytes, list[bytes]]:
        """``submit_wasm``'s arguments for a call (pinning the module on first use)."""
        self._check_usable()
        data, needs = task.encode(args, kwargs)
        return self._module_key(task.module), task.name, data, needs

    def submit_batch(self, batch: Callable, objects: ObjectSession, owner: object,
                     callback: Callable[[BatchTask], Any] | None) -> BatchTask:
        """Submits a joblib batch (a zero-argument callable) as one task; ``callback``
        gets the :class:`BatchTask` when it ends (see :meth:`cancel_owned`)."""
        self._check_usable()
        payload, needs = objects.dumps(batch)
        task = BatchTask(owner, callback)
        # Hold the lock so that no completion arrives before its task is known.
        with self._lock:
            ids = self._native.submit_many([payload], _VERSION_HEADER, [needs])
            task._track(ids)
            self._futures[ids[0]] = task
        return task

    def submit_wasm_batch(self, calls: list, owner: object, callback: Callable[[BatchTask], Any] | None) -> BatchTask:
        """Submits ``(wasm.Task, args, kwargs)`` calls, one sandboxed task each, as one
        batch: its result is the list of their outputs."""
        prepared = [self._wasm_call(f, a, k) for f, a, k in calls]
        task = BatchTask(owner, callback, wasm=True)
        with self._lock:
            ids = [self._native.submit_wasm(*call) for call in prepared]
            task._track(ids)
            for task_id in ids:
                self._futures[task_id] = task
        return task

    def _module_key(self, module: "_wasm.Module") -> bytes:
        """Pins a module once per client; returns its key."""
        key = self._modules.get(module.digest)
        if key is None:
            key, _, _ = self._native.scatter_raw(module.data)
            self._modules[module.digest] = key
        return key

    # -- scatter -------------------------------------------------------------------

    def scatter(self, obj: Any, broadcast: bool = True, timeout: float = 600.0) -> Pinned:
        """Pins ``obj`` on every worker (and on workers that join later) and returns a
        reference to pass as a task argument. Pins are always broadcast: every worker
        of the cluster holds one copy per machine. Raises ``PinnedMemoryExceeded`` when
        a worker's ``--memory-limit`` does not allow it."""
        return self._objects.scatter(obj)

    def release(self, *refs: Pinned) -> None:
        """Unpins objects this client scattered (all of them when none is given)."""
        if refs:
            self._objects.forget(refs)
        else:
            self._objects.release()

    def _pin(self, obj: Any, timeout: float = 600.0) -> Pinned:
        self._check_usable()
        ref = pin(self._native, obj, timeout)
        with self._pins_lock:
            self._pins[ref.key] = self._pins.get(ref.key, 0) + 1
        return ref

    def _unpin(self, keys: list[bytes]) -> None:
        """Drops one hold on each key; unpins those nobody in this process holds."""
        gone = []
        with self._pins_lock:
            for key in keys:
                n = self._pins.get(key, 0) - 1
                if n > 0:
                    self._pins[key] = n
                else:
                    self._pins.pop(key, None)
                    gone.append(key)
        if gone and not self._closed.is_set() and os.getpid() == self._pid:
            try:
                self._native.release(gone)
            except ConnectionError:
                pass  # the scheduler frees a gone session's pins itself

    def _check_usable(self) -> None:
        if self._closed.is_set():
            raise StockadeError("the client is closed")
        if _forked and os.getpid() != self._pid:
            raise StockadeError(
                f"this Client was created in process {self._pid}; its connection does not survive a fork. "
                "hint: create a new Client in the child process"
            )

    def submit_pickled(self, payloads: list[bytes], needs: list[list[bytes]] | None = None) -> list[Future]:
        """Submits already pickled zero-argument callables; ``needs`` lists per
        payload the keys of the pinned objects it refers to."""
        self._check_usable()
        futures = [TaskFuture(self) for _ in payloads]
        # Hold the lock so that no completion arrives before its future is known.
        with self._lock:
            ids = self._native.submit_many(payloads, _VERSION_HEADER, needs)
            for task_id, f in zip(ids, futures):
                f.stockade_id = task_id
                self._futures[task_id] = f
        return futures

    def cancel(self, futures: Iterable[Future]) -> None:
        """Cancels tasks on the cluster; their futures fail with ``TaskCancelled``."""
        ids = [f.stockade_id for f in futures if isinstance(f, TaskFuture) and not f.done()]
        if ids:
            self._native.cancel(ids)

    def cancel_owned(self, owner: object) -> None:
        """Cancels the unfinished batches ``owner`` submitted: they end without calling
        back (their tasks end as cancelled on the cluster)."""
        with self._lock:
            ids = [i for i, t in self._futures.items() if type(t) is BatchTask and t.owner is owner]
            for i in ids:
                self._futures[i].aborted = True
        if ids:
            self._native.cancel(ids)

    # -- results -----------------------------------------------------------------

    def _dispatch(self) -> None:
        while not self._closed.is_set() or self._futures:
            for completion in self._native.wait_completions(0.2):
                self._deliver(*completion)
            # Keep no finished task's data alive until the next completion.
            completion = None
            if self._closed.is_set() and self._native.pending() == 0:
                break

    def _deliver(self, task_id: int, status: int, kind: str, message: str, data: bytes) -> None:
        """Completes task ``task_id``'s future or batch from its completion (by
        whichever thread took the completion: the dispatcher or a waiting caller)."""
        with self._lock:
            pending = self._futures.pop(task_id, None)
        if pending is not None:
            pending._complete(task_id, *_outcome(status, kind, message, data, pending.wasm))

    # -- information and life cycle -----------------------------------------------

    def scheduler_info(self, timeout: float = 10.0) -> dict:
        """Workers, slots and task counts, as ``stockade status --json`` prints them."""
        return json.loads(self._native.scheduler_info(timeout))

    def total_slots(self, timeout: float = 10.0) -> int:
        """Slots of all connected workers."""
        return sum(w["slots"] for w in self.scheduler_info(timeout)["workers"])

    @property
    def tenant(self) -> str:
        return self._native.tenant

    def close(self) -> None:
        """Closes the connection; unfinished tasks are cancelled on the cluster."""
        if self._closed.is_set() or os.getpid() != self._pid:
            return  # a forked copy: the connection is the parent's
        self._closed.set()
        self._native.close()
        if threading.current_thread() is not self._dispatcher:
            self._dispatcher.join(timeout=5)
        with self._lock:
            leftover = list(self._futures.items())
            self._futures.clear()
        for task_id, pending in leftover:
            pending._complete(task_id, False, error_for("Closed", "the client was closed before the task finished"))

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
