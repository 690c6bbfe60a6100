"""Workload 4: a large float64 array used by 64 tasks, each reading one column.

A 200 MB array (409 600 x 64) and, memory allowing, a 1 GB one (2 097 152 x 64). Each
measurement runs in a fresh Python process (`python bench/w_scatter.py child ...`) so
that the process tree is that backend's alone: the client with its own copy of the
array, the backend's cluster and its workers. The backend is started and warmed up with
no-op tasks first; then a thread samples the sum of PSS (proportional set size, from
/proc/PID/smaps_rollup) over the tree every 50 ms while the backend context is entered
(so `scatter=` uploads count) and the 64 tasks run. Figures: wall time, and peak PSS
minus the PSS just before (the client already holds its array then).

Variants: loky (auto-memmap of arrays over 1 MB, its default), dask with `scatter=[X]`
and without (its joblib backend then scatters large arguments per call by itself), Ray
(its object store), Stockade with `scatter=[X]` (the scatter issue's public contract)
and without. Stockade's scatter variant is reported "not available" with the reason
until `stockade.Client.scatter` exists and the run leaves the array pinned on the
cluster (`scheduler_info()["pinned"]`): no figure is taken for a scatter that did not
happen.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time

from _common import (
    ChildFailed, Config, Metric, NotAvailable, PeakMemory, Row, Table, interleave, last_json_line, log, meminfo, run_bounded,
    short_error, speed_probe,
)

TITLE = "4. a large array read by 64 tasks, with and without scatter"
COLUMNS = 64

# label -> (backend, variant)
VARIANTS = {
    "stockade, scatter=[X]": ("stockade", "scatter"),
    "stockade, no scatter": ("stockade", "plain"),
    "loky (auto-memmap)": ("loky", "memmap"),
    "dask, scatter=[X]": ("dask", "scatter"),
    "dask, no scatter": ("dask", "plain"),
    "ray": ("ray", "plain"),
}


def colsum(X, j):
    return float(X[:, j].sum())


def noop(x):
    return x


# -- the child: one backend, one variant, one size --------------------------------------


def remove_dir(path: str, timeout: float = 10.0) -> None:
    """Removes `path`, retrying while another process (loky's resource tracker) is still
    deleting or creating files in it; bounded."""
    deadline = time.monotonic() + timeout
    while os.path.exists(path) and time.monotonic() < deadline:
        shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(path):
            time.sleep(0.2)
    if os.path.exists(path):
        log(f"warning: could not remove {path}")


def child(backend: str, variant: str, rows: int) -> dict:
    import numpy as np
    from joblib import Parallel, delayed, parallel_backend

    # Shared-memory files of this run (Stockade's store, loky's memmaps) go to a private
    # tmpfs directory, so that those no process maps can be counted too.
    shm = tempfile.mkdtemp(prefix="stockade-bench-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.environ["STOCKADE_STORE_DIR"] = os.path.join(shm, "store")
    os.environ["JOBLIB_TEMP_FOLDER"] = os.path.join(shm, "joblib")
    X = np.random.default_rng(0).random((rows, COLUMNS))
    expected = X.sum(axis=0)
    stop = [lambda: remove_dir(shm)]
    try:
        if backend == "stockade":
            import stockade

            if variant == "scatter" and not hasattr(stockade.Client, "scatter"):
                raise NotAvailable("stockade.Client.scatter: AttributeError: type object 'Client' has no attribute "
                                   "'scatter' (the scatter issue has not landed in this build)")
            cluster = stockade.LocalCluster(n_workers=2, slots_per_worker=1)
            stop.insert(0, cluster.close)
            addr = cluster.address
            warm = lambda: parallel_backend("stockade", scheduler_host=addr)  # noqa: E731
            if variant == "scatter":
                probe_client = stockade.Client(addr)
                stop.insert(0, probe_client.close)
                try:
                    probe_client.scatter(np.zeros(8))
                except Exception as e:
                    raise NotAvailable(f"stockade.Client.scatter: {short_error(e)}") from None
                ctx = lambda: parallel_backend("stockade", scheduler_host=addr, scatter=[X])  # noqa: E731
            else:
                ctx = warm
        elif backend == "loky":
            warm = ctx = lambda: parallel_backend("loky", n_jobs=2)  # noqa: E731
        elif backend == "dask":
            from dask.distributed import Client, LocalCluster

            cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
            stop.insert(0, cluster.close)
            client = Client(cluster)
            stop.insert(0, client.close)
            warm = lambda: parallel_backend("dask", client=client)  # noqa: E731
            if variant == "scatter":
                ctx = lambda: parallel_backend("dask", client=client, scatter=[X])  # noqa: E731
            else:
                ctx = warm
        elif backend == "ray":
            import ray
            from ray.util.joblib import register_ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
            stop.insert(0, ray.shutdown)
            register_ray()
            warm = ctx = lambda: parallel_backend("ray", n_jobs=2)  # noqa: E731
        else:
            raise ValueError(backend)

        with warm():
            Parallel(n_jobs=2)(delayed(noop)(i) for i in range(8))
        time.sleep(0.5)  # let the warm-up's garbage settle before the baseline
        probe = speed_probe()
        with PeakMemory(files_dir=shm) as mem:
            t = time.perf_counter()
            with ctx():
                out = Parallel(n_jobs=2)(delayed(colsum)(X, j) for j in range(COLUMNS))
                wall = time.perf_counter() - t
                if backend == "stockade" and variant == "scatter":
                    pinned = probe_client.scheduler_info().get("pinned")
                    if not any(p.get("nbytes", 0) >= X.nbytes for p in pinned or []):
                        raise NotAvailable(
                            f"scatter=[X] ran but the scheduler lists no pinned object of {X.nbytes} bytes "
                            f"(scheduler_info()['pinned'] = {pinned!r})")
        if not np.allclose(out, expected):
            raise RuntimeError("wrong column sums")
        return {
            "wall": wall,
            "mem": (mem.peak - mem.baseline) / 2**20,
            "mem_all": (mem.all_peak - mem.all_baseline) / 2**20,
            "base": mem.baseline / 2**20,
            "shmem": (mem.shmem_peak - mem.shmem_baseline) / 2**20,
            "procs": mem.peak_procs,
            "samples": mem.samples,
            "probe_ms": probe,
        }
    finally:
        for f in stop:
            try:
                f()
            except Exception as e:
                log(f"warning: stopping {backend}: {short_error(e)}")


def child_main(argv: list[str]) -> int:
    backend, variant, rows = argv[0], argv[1], int(argv[2])
    try:
        result = {"ok": True, **child(backend, variant, rows)}
    except NotAvailable as e:
        result = {"ok": False, "unavailable": True, "error": str(e)}
    except Exception as e:
        result = {"ok": False, "unavailable": False, "error": short_error(e)}
    print(json.dumps(result), flush=True)
    return 0


# -- the parent: interleaved repetitions ------------------------------------------------


def run(cfg: Config) -> dict:
    sizes = [("2 MB", 4096)] if cfg.smoke else [("200 MB", 409_600), ("1 GB", 2_097_152)]
    backends = set(cfg.peers())
    labels = [label for label, (b, _) in VARIANTS.items() if b in backends]
    metrics = [
        Metric("wall", "wall time", "s", "lower", 2),
        Metric("mem", "peak PSS over baseline", "MB", "lower", 0),
        Metric("mem_all", "peak PSS + unmapped shm files, over baseline", "MB", "lower", 0),
        Metric("base", "baseline PSS", "MB", None, 0),
        Metric("shmem", "machine Shmem increase", "MB", None, 0),
    ]
    tables = []
    for size_label, rows in sizes:
        nbytes = rows * COLUMNS * 8
        table = Table(
            f"{size_label} float64 array ({rows} x {COLUMNS}), 64 tasks",
            metrics,
            [Row(label, ours=label.startswith("stockade")) for label in labels],
            reference="stockade, scatter=[X]",
        )

        def measure(label, rows=rows, nbytes=nbytes):
            backend, variant = VARIANTS[label]

            def go():
                need = 10 * nbytes + 2 * 2**30
                if meminfo("MemAvailable") < need:
                    raise NotAvailable(f"skipped: {meminfo('MemAvailable') / 2**30:.1f} GB of memory available, "
                                       f"{need / 2**30:.1f} GB wanted")
                out = run_bounded([sys.executable, os.path.abspath(__file__), "child", backend, variant, str(rows)],
                                  timeout=300 + 600 * nbytes / 2**30)
                r = last_json_line(out)
                if not r.pop("ok"):
                    raise (NotAvailable if r["unavailable"] else ChildFailed)(r["error"])
                log(f"    ({r.pop('procs')} processes at peak, {r.pop('samples')} memory samples)")
                return r

            return go

        interleave(cfg.reps, table, {label: measure(label) for label in labels}, log)
        tables.append(table)
    return {"title": TITLE, "tables": tables, "notes": [
        "Each measurement is a fresh process: backend started and warmed up with no-op tasks, then wall time "
        "of entering the backend context (scatter= uploads included) and running the 64 tasks "
        "(Parallel(n_jobs=2), each task sums one column). Memory: sum of PSS over the process tree (client, "
        "cluster, workers, their children), sampled every 50 ms by a thread; the figure is the peak minus the "
        "sum just before the run, when the client already holds the array. Shared pages count once in PSS. "
        "Shared-memory files that no process maps (a store file between tasks) are in no PSS: the next column "
        "adds the files of the run's private tmpfs directory (STOCKADE_STORE_DIR, JOBLIB_TEMP_FOLDER) that "
        "no process of the tree maps at the moment of the sample. "
        "'machine Shmem increase' is /proc/meminfo Shmem (tmpfs, memfd, shared memory) over the same "
        "interval, for the whole machine.",
        "The 1 GB variant runs only when the machine has 10x the array plus 2 GB available.",
    ]}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        sys.exit(child_main(sys.argv[2:]))
    sys.exit("usage: python bench/w_scatter.py child BACKEND VARIANT ROWS (the suite runs this)")
