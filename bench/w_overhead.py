"""Workloads 1 and 2: joblib's per-task overhead and one-call latency.

1. no-op tasks, `batch_size=1` and auto batching: tasks per second;
2. a one-task `Parallel` call: latency median and p99; and, for Stockade only, one task
   through `Client.submit(noop, 1).result()`.

All backends run side by side in this process, repetitions interleaved.
"""

from __future__ import annotations

import statistics
import time

from _common import Config, Metric, Row, Table, interleave, log, shared_backends

TITLE = "1-2. joblib overhead: no-op tasks and one-task latency"


def noop(x):
    return x


def percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of a non-empty list."""
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def run(cfg: Config) -> dict:
    from joblib import Parallel, delayed

    n_bs1 = 200 if cfg.smoke else 2000
    n_auto = 2000 if cfg.smoke else 100_000
    n_lat = 3 if cfg.smoke else 30
    n_submit = 20 if cfg.smoke else 300
    names = cfg.peers()

    def rows() -> list[Row]:
        return [Row(n, ours=(n == "stockade")) for n in names]

    tps = [Metric("tps", "throughput", "tasks/s", "higher", 0)]
    bs1 = Table(f"no-op tasks, batch_size=1 ({n_bs1} tasks)", tps, rows(), reference="stockade")
    auto = Table(f"no-op tasks, auto batching ({n_auto} tasks)", tps, rows(), reference="stockade")
    lat = Table(
        f"one-task Parallel call ({n_lat} calls per repetition)",
        [Metric("p50", "median", "ms", "lower", 2), Metric("p99", "p99", "ms", "lower", 2)],
        rows(),
        reference="stockade",
        notes=[f"Median and p99 of the {n_lat} calls of each repetition; the table shows the median over "
               "repetitions. joblib polls for results every 10 ms, a lower bound for any backend."],
    )
    submit = Table(
        f"Client.submit(noop, 1).result(), Stockade only ({n_submit} tasks per repetition)",
        [Metric("p50", "median", "ms", None, 3), Metric("p99", "p99", "ms", None, 3)],
        [Row("stockade", ours=True)],
    )
    tables = [bs1, auto, lat, submit]

    backends = shared_backends(names)
    for t in tables:
        for r in t.rows:
            if r.label in backends.errors:
                r.error = backends.errors[r.label]
    for b in backends.running.values():  # warm-up: children import, pools fill
        with b.context():
            Parallel(n_jobs=2)(delayed(noop)(i) for i in range(50))

    def tput(b, n, batch_size):
        def measure():
            with b.context():
                t = time.perf_counter()
                out = Parallel(n_jobs=2, batch_size=batch_size)(delayed(noop)(i) for i in range(n))
                dt = time.perf_counter() - t
            if out != list(range(n)):
                raise RuntimeError("wrong results")
            return {"tps": n / dt}

        return measure

    def one_task(b):
        def measure():
            samples = []
            with b.context():
                for _ in range(n_lat):
                    t = time.perf_counter()
                    Parallel(n_jobs=2)([delayed(noop)(1)])
                    samples.append((time.perf_counter() - t) * 1e3)
            return {"p50": statistics.median(samples), "p99": percentile(samples, 99)}

        return measure

    def client_submit():
        client = backends.running["stockade"].client
        samples = []
        for _ in range(n_submit):
            t = time.perf_counter()
            client.submit(noop, 1).result(timeout=60)
            samples.append((time.perf_counter() - t) * 1e3)
        return {"p50": statistics.median(samples), "p99": percentile(samples, 99)}

    run_ = backends.running
    interleave(cfg.reps, bs1, {n: tput(b, n_bs1, 1) for n, b in run_.items()}, log)
    interleave(cfg.reps, auto, {n: tput(b, n_auto, "auto") for n, b in run_.items()}, log)
    interleave(cfg.reps, lat, {n: one_task(b) for n, b in run_.items()}, log)
    if "stockade" in run_:
        interleave(cfg.reps, submit, {"stockade": client_submit}, log)
    return {"title": TITLE, "tables": tables, "notes": [
        "All backends run side by side in one process: Stockade as stockade.LocalCluster(n_workers=2, "
        "slots_per_worker=1) through one stockade.Client, loky with n_jobs=2, dask LocalCluster(n_workers=2, "
        "threads_per_worker=1, processes=True), Ray ray.init(num_cpus=2); every call with n_jobs=2.",
    ]}
