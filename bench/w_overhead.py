"""Workloads 1 and 2: joblib's per-task overhead and one-call latency.

1. no-op tasks, `batch_size=1` and auto batching: tasks per second;
2. a one-task `Parallel` call: latency median and p99; and, for Stockade only, one task
   through `Client.submit(noop, 1).result()`.

Each backend runs in its own process (a runner, see _common.Runner), started once; the
measurements below run there, repetitions interleaved across the backends.
"""

from __future__ import annotations

import statistics
import time

from _common import Config, Metric, Table, interleave, log, shared_runners

TITLE = "1-2. joblib overhead: no-op tasks and one-task latency"


def noop(x):
    return x


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def latencies(samples: list[float]) -> dict:
    return {"p50": statistics.median(samples), "p99": percentile(samples, 99)}


# -- run in a backend's runner: fn(backend, ...) -> {metric: value} ---------------------


def warm_up(backend) -> dict:
    """Children import, pools fill."""
    from joblib import Parallel, delayed

    with backend.context():
        Parallel(n_jobs=2)(delayed(noop)(i) for i in range(50))
    return {}


def throughput(backend, n: int, batch_size) -> dict:
    from joblib import Parallel, delayed

    with backend.context():
        t = time.perf_counter()
        out = Parallel(n_jobs=2, batch_size=batch_size)(delayed(noop)(i) for i in range(n))
        dt = time.perf_counter() - t
    if out != list(range(n)):
        raise RuntimeError("wrong results")
    return {"tps": n / dt}


def one_task_latency(backend, calls: int) -> dict:
    from joblib import Parallel, delayed

    samples = []
    with backend.context():
        for _ in range(calls):
            t = time.perf_counter()
            Parallel(n_jobs=2)([delayed(noop)(1)])
            samples.append((time.perf_counter() - t) * 1e3)
    return latencies(samples)


def submit_latency(backend, tasks: int) -> dict:
    """Stockade only: one task at a time through the runner's stockade.Client."""
    samples = []
    for _ in range(tasks):
        t = time.perf_counter()
        backend.client.submit(noop, 1).result(timeout=60)
        samples.append((time.perf_counter() - t) * 1e3)
    return latencies(samples)


# -- the workload -----------------------------------------------------------------------


def run(cfg: Config) -> dict:
    n_bs1 = 200 if cfg.smoke else 2000
    n_auto = 2000 if cfg.smoke else 100_000
    n_lat = 3 if cfg.smoke else 30
    n_submit = 20 if cfg.smoke else 300
    names = cfg.peers()
    runners = shared_runners(names)

    tps = [Metric("tps", "throughput", "tasks/s", "higher", 0)]
    bs1 = Table(f"no-op tasks, batch_size=1 ({n_bs1} tasks)", tps, runners.rows(names), reference="stockade")
    auto = Table(f"no-op tasks, auto batching ({n_auto} tasks)", tps, runners.rows(names), reference="stockade")
    lat = Table(
        f"one-task Parallel call ({n_lat} calls per repetition)",
        [Metric("p50", "median", "ms", "lower", 2), Metric("p99", "p99", "ms", "lower", 2)],
        runners.rows(names),
        reference="stockade",
        notes=[f"Median and p99 of the {n_lat} calls of each repetition; the table shows the median over "
               "repetitions. joblib polls for results every 10 ms, a lower bound for any backend."],
    )
    submit = Table(
        f"Client.submit(noop, 1).result(), Stockade only ({n_submit} tasks per repetition)",
        [Metric("p50", "median", "ms", None, 3), Metric("p99", "p99", "ms", None, 3)],
        runners.rows(["stockade"]),
    )

    for warm in runners.runs(warm_up).values():
        warm()
    interleave(cfg.reps, bs1, runners.runs(throughput, n_bs1, 1), log)
    interleave(cfg.reps, auto, runners.runs(throughput, n_auto, "auto"), log)
    interleave(cfg.reps, lat, runners.runs(one_task_latency, n_lat), log)
    interleave(cfg.reps, submit, runners.runs(submit_latency, n_submit), log)  # its one row: stockade
    return {"title": TITLE, "tables": [bs1, auto, lat, submit], "notes": [
        "Each backend runs in its own process, started once and driven in turn by the suite (in one shared "
        "process, dask's event-loop thread slowed the others): Stockade as stockade.LocalCluster(n_workers=2, "
        "slots_per_worker=1) (scheduler and workers in the runner's process, tasks in two Python child "
        "processes) through one stockade.Client, loky with n_jobs=2, dask LocalCluster(n_workers=2, "
        "threads_per_worker=1, processes=True), Ray ray.init(num_cpus=2); every call with n_jobs=2.",
    ]}
