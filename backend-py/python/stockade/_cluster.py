"""``LocalCluster``: a scheduler and workers on loopback, started from the package."""

from __future__ import annotations

import atexit
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading

from ._errors import StockadeError


class _Process:
    """One cluster process, its log, and its JSON ready line."""

    def __init__(self, name: str, args: list[str], env: dict, log_dir: str, lifeline: int):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "stockade", *args],
            stdout=subprocess.PIPE,
            stderr=self._log,
            stdin=subprocess.DEVNULL,
            env={**env, "STOCKADE_LIFELINE_FD": str(lifeline)},
            cwd=os.getcwd(),
            pass_fds=(lifeline,),
        )
        self._lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.popen.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def ready(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = None
        if not line:
            raise StockadeError(f"{self.name} did not start within {timeout}s; its log:\n{self.log()}")
        return json.loads(line)

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stop(self, timeout: float = 5.0) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()


class _InProcessScheduler:
    """The cluster's scheduler, running on this process's Stockade I/O runtime."""

    name = "scheduler"

    def __init__(self, args: list[str]):
        from . import _native

        self._native = _native.Scheduler(args)
        self.address = self._native.address
        self.pid = os.getpid()

    def log(self) -> str:
        return "(runs in this process; set STOCKADE_LOG=debug to see its log on stderr)"

    def stop(self) -> None:
        self._native.close()


class _InProcessWorker:
    """A worker running on this process's Stockade I/O runtime; its Python children are
    processes (started with this interpreter, in this directory, with this sys.path)."""

    def __init__(self, name: str, args: list[str], child_env: dict):
        from . import _native

        self.name = name
        self._native = _native.Worker(args, sorted(child_env.items()))
        self.pid = os.getpid()

    def ready(self, timeout: float) -> dict:
        return {"event": "ready", "worker": self._native.id, "name": self.name}

    def log(self) -> str:
        return "(runs in this process; set STOCKADE_LOG=debug to see its log on stderr)"

    def stop(self, timeout: float = 5.0) -> None:
        self._native.close()


class LocalCluster:
    """A scheduler and ``n_workers`` workers of ``slots_per_worker`` slots on 127.0.0.1.

    The scheduler runs inside this process, as dask's ``LocalCluster`` runs its
    scheduler: clients of this process reach it without the network, which saves a
    QUIC hop each way on every task. Workers are separate processes, and so are the
    Python processes that run the tasks.

    Workers run Python tasks with this interpreter, in this working directory, with this
    ``sys.path``, so functions defined in the caller's modules are found. Everything is
    stopped by ``close()``, at the end of a ``with`` block, or at interpreter exit.

    Workers run in this process too unless ``processes=True``, which starts each as a
    ``stockade worker`` process (to kill one, as a machine can be lost). Either way the
    Python code of tasks runs in separate, pooled Python processes.

    ``worker_args`` go to every ``stockade worker`` (e.g. ``("--memory-limit", "4GiB")``).
    With ``separate_stores``, each process keeps pinned objects in a directory of its
    own, so they travel between processes as between machines (for tests and
    benchmarks of the network path).
    """

    def __init__(self, n_workers: int | None = None, slots_per_worker: int = 1, *, timeout: float = 30.0,
                 scheduler_args: tuple[str, ...] = (), worker_args: tuple[str, ...] = (),
                 separate_stores: bool = False, processes: bool = False):
        self.n_workers = n_workers if n_workers is not None else (os.cpu_count() or 1)
        self.slots_per_worker = slots_per_worker
        self._dir = tempfile.mkdtemp(prefix="stockade-cluster-")
        self.scheduler_file = os.path.join(self._dir, "scheduler.json")
        # The scheduler also writes the per-user default scheduler file of its port, so
        # `Client(cluster.address)` works from this machine as with any scheduler.
        self._env = dict(os.environ)
        paths = [p for p in sys.path if p] + [os.getcwd()]
        self._env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        self._timeout = timeout
        self._worker_args = tuple(worker_args)
        self._separate_stores = separate_stores
        self.processes = processes
        self.workers: list[_Process | _InProcessWorker] = []
        self._closed = False
        # The lifeline: every cluster process watches the read end and stops when it
        # ends, i.e. when this process has exited, even without running close() (killed,
        # os._exit, a multiprocessing child). The write end is only ever held here.
        self._lifeline, self._lifeline_holder = os.pipe()
        atexit.register(self.close)
        try:
            self.scheduler = _InProcessScheduler(
                ["--host", "127.0.0.1", "--port", "0", "--scheduler-file", self.scheduler_file,
                 *self._store_args("scheduler"), *scheduler_args])
            self.address = self.scheduler.address
            for _ in range(self.n_workers):
                self._start_worker()
            for w in self.workers:
                w.ready(timeout)
        except BaseException:
            self.close()
            raise

    def _start_worker(self) -> _Process | _InProcessWorker:
        name = f"worker{len(self.workers) + 1}"
        args = ["--scheduler-file", self.scheduler_file, "--slots", str(self.slots_per_worker),
                "--name", name, "--python", sys.executable, *self._store_args(name), *self._worker_args]
        if self.processes:
            w = _Process(name, ["worker", *args], self._env, self._dir, self._lifeline)
        else:
            w = _InProcessWorker(name, args, {"PYTHONPATH": self._env["PYTHONPATH"]})
        self.workers.append(w)
        return w

    def _store_args(self, name: str) -> list[str]:
        return ["--store-dir", os.path.join(self._dir, f"store-{name}")] if self._separate_stores else []

    def add_worker(self) -> _Process | _InProcessWorker:
        """Starts one more worker and waits until it is registered."""
        w = self._start_worker()
        w.ready(self._timeout)
        return w

    def logs(self) -> str:
        """Every process's log, for diagnosing a failure."""
        parts = [f"----- {p.name} (pid {p.pid}) -----\n{p.log()}" for p in [self.scheduler, *self.workers]]
        return "\n".join(parts)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for p in [*self.workers, *([self.scheduler] if hasattr(self, "scheduler") else [])]:
            p.stop()
        for fd in (self._lifeline, self._lifeline_holder):
            os.close(fd)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"LocalCluster({self.address!r}, workers={len(self.workers)}, slots_per_worker={self.slots_per_worker}, "
                f"processes={self.processes})")
