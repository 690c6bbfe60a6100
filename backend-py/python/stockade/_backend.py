"""The joblib backend ``"stockade"``, built on joblib's public backend API."""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref

from joblib import register_parallel_backend
from joblib.parallel import AutoBatchingMixin, ParallelBackendBase

from ._client import Client
from ._cluster import LocalCluster
from . import wasm as _wasm
from ._errors import StockadeError
from ._scatter import DEFAULT_AUTO_SCATTER, ObjectSession

_default_lock = threading.Lock()
# (pid, cluster, client) of the process's embedded cluster. A forked child inherits the
# parent's entry but not its connection, so it starts its own.
_default: tuple[int, LocalCluster, Client] | None = None


def _default_client() -> Client:
    """The process's embedded cluster, started on first use and stopped at exit."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            cluster = LocalCluster()
            client = Client(scheduler_file=cluster.scheduler_file, name="joblib-embedded")
            _default = (os.getpid(), cluster, client)
            atexit.register(_close_default)
        return _default[2]


def _close_default() -> None:
    global _default
    with _default_lock:
        if _default is not None and _default[0] == os.getpid():
            _, cluster, client = _default
            _default = None
            client.close()
            cluster.close()


class StockadeBackend(AutoBatchingMixin, ParallelBackendBase):
    """Runs joblib batches on a Stockade cluster.

    Keywords as in joblib's dask backend where they mean the same: ``scheduler_host``,
    ``scatter``, ``client``, ``wait_for_workers_timeout``; plus ``scheduler_file`` and
    ``token``. With none of ``scheduler_host``, ``scheduler_file`` or ``client``, an
    embedded local cluster is started once per process.

    ``scatter=[X, y]`` pins those objects on every worker when the backend is made;
    batches then refer to them by key wherever they appear in the arguments. Other
    numpy arrays of at least ``auto_scatter`` bytes (1 MiB; ``None`` turns it off) are
    pinned on first use, and those of 64 KiB or more on their second use in the session.
    The pins are released when the backend goes away (the end of its ``with`` block).
    """

    default_n_jobs = -1
    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_sharedmem = False

    def __init__(self, scheduler_host=None, scheduler_file=None, client=None, token=None, scatter=None,
                 wait_for_workers_timeout=10.0, nesting_level=None, inner_max_num_threads=None,
                 auto_scatter=DEFAULT_AUTO_SCATTER, **kwargs):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **kwargs)
        owned = None
        if client is None:
            if scheduler_host is not None or scheduler_file is not None:
                client = owned = Client(scheduler_host, scheduler_file=scheduler_file, token=token, name="joblib")
            else:
                client = _default_client()
        self.client = client
        self._objects = ObjectSession(client, auto_scatter)
        # When the backend goes away (the end of its `with` block), its pins go too,
        # and so does a connection it opened itself.
        weakref.finalize(self, _release, self._objects, owned)
        self.scatter = [self._objects.scatter(obj) for obj in (scatter or [])]
        self.wait_for_workers_timeout = wait_for_workers_timeout

    def effective_n_jobs(self, n_jobs):
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        slots = self._wait_for_slots()
        if n_jobs is None or n_jobs == -1:
            return slots
        if n_jobs < 0:
            return max(slots + 1 + n_jobs, 1)
        return n_jobs

    def _wait_for_slots(self) -> int:
        deadline = time.monotonic() + self.wait_for_workers_timeout
        while True:
            slots = self.client.total_slots()
            if slots > 0:
                return slots
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no Stockade worker joined within wait_for_workers_timeout="
                    f"{self.wait_for_workers_timeout}s; start workers (stockade worker ...) or raise the setting"
                )
            time.sleep(0.05)

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def submit(self, func, callback=None):
        items = getattr(func, "items", None)
        if items and all(isinstance(f, _wasm.Task) for f, _, _ in items):
            # A batch of WebAssembly calls runs in sandboxes, one task per call.
            return self.client.submit_wasm_batch(items, self, callback)
        return self.client.submit_batch(func, self._objects, self, callback)

    def retrieve_result_callback(self, out):
        return out.result()

    def abort_everything(self, ensure_ready=True):
        """Cancels this backend's queued and running tasks on the cluster. Their batches
        end without calling back: joblib must not see them, or they would count against
        the next call of the same Parallel."""
        self.client.cancel_owned(self)

    def terminate(self):
        """End of a Parallel call: the cluster stays, the batching statistics reset.

        The backend lets go of its ``Parallel`` (``configure`` sets it again for the next
        call): the two refer to each other, and the cycle would keep the backend, and so
        its pins, until the next garbage collection instead of the end of its ``with``
        block."""
        self.reset_batch_stats()
        self.parallel = None

    def __reduce__(self):
        raise StockadeError("the stockade backend cannot be pickled into a task")


def _release(objects: ObjectSession, owned: Client | None) -> None:
    objects.release()
    if owned is not None:
        owned.close()


def register() -> None:
    """Registers the ``"stockade"`` joblib backend (done by ``import stockade``)."""
    register_parallel_backend("stockade", StockadeBackend)
