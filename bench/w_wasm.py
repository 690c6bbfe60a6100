"""Workload 7: WebAssembly tasks.

- The sandbox on this machine (`stockade bench --sandbox --json`, no cluster):
  instantiation of a small module from the pool (median, p90), no-op calls per second
  on all cores, and the cost of epoch interruption on compute-bound guests (CPU time of
  the same kernel with and without it).
- No-op WebAssembly tasks through a cluster of two one-slot workers
  (`stockade bench --wasm-module fixtures.wasm --wasm-task noop --json`): tasks per
  second and one-task latency, next to built-in no-op tasks through the same kind of
  cluster (the scheduler's own cost).

- A compute-bound guest against the same computation natively: one ridge fit and score
  of the example guest (examples/guests/ridge) on a digits-shaped problem (1797 x 64,
  two thirds train), in the sandbox with and without epoch checks and compiled natively
  from the same source (`stockade bench --ridge ridge.wasm --json`), next to the same
  algorithm in numpy on one BLAS thread (normal equations, `np.linalg.solve`). Medians
  of thread CPU time.
"""

from __future__ import annotations

import os

from _common import ROOT, Config, Metric, NotAvailable, Row, Table, interleave, last_json_line, log, run_bounded, \
    stockade_bin

TITLE = "7. WebAssembly tasks"


def guests_dir() -> str:
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
    return os.environ.get("STOCKADE_TEST_GUESTS") or os.path.join(target, "guests", "wasm32-wasip1", "release")


def cluster_bench(binary: str, extra: list[str], tasks: int, latency_tasks: int) -> dict:
    out = run_bounded(
        [os.path.join(ROOT, "scripts", "with-cluster.sh"), "2", "1", binary, "bench", "--tasks", str(tasks),
         "--latency-tasks", str(latency_tasks), "--json", *extra],
        timeout=600, env=dict(os.environ, STOCKADE_BIN=binary),
    )
    r = last_json_line(out)
    if r.get("failed"):
        raise RuntimeError(f"{r['failed']} tasks failed")
    return {"tps": r["tasks_per_second"], "p50": r["latency_ms_p50"]}


class RidgeRuns:
    """`stockade bench --ridge` measures the sandbox with and without epoch checks and the
    native fit in one run (interleaved); one run serves the three rows of a repetition:
    a figure already read starts the next run."""

    def __init__(self, binary: str, module: str):
        self.args = [binary, "bench", "--ridge", module, "--json"]
        self.last: dict | None = None
        self.read: set[str] = set()

    def figure(self, key: str) -> dict:
        if self.last is None or key in self.read:
            self.last = last_json_line(run_bounded(self.args, timeout=600, env=dict(os.environ)))
            self.read = set()
        self.read.add(key)
        return {"ms": self.last[key]}


def numpy_ridge_ms(runs: int = 15, rows: int = 1797, cols: int = 64, alpha: float = 1.0) -> float:
    """Median thread CPU time of the guest's algorithm in numpy, on one BLAS thread."""
    import time

    import numpy as np
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    X = np.floor(16 * rng.random((rows, cols)))
    y = X @ (rng.random(cols) - 0.5) + rng.random(rows)
    index = np.arange(rows)
    train, test = index[index % 3 != 0], index[index % 3 == 0]

    def fit_score() -> float:
        Xt, yt = X[train], y[train]
        x_mean, y_mean = Xt.mean(axis=0), yt.mean()
        Xc = Xt - x_mean
        coef = np.linalg.solve(Xc.T @ Xc + alpha * np.eye(cols), Xc.T @ (yt - y_mean))
        intercept = y_mean - x_mean @ coef
        residual = y[test] - (X[test] @ coef + intercept)
        return 1 - (residual ** 2).sum() / ((y[test] - y[test].mean()) ** 2).sum()

    times = []
    with threadpool_limits(1):
        fit_score()
        for _ in range(runs):
            started = time.thread_time()
            fit_score()
            times.append((time.thread_time() - started) * 1e3)
    return sorted(times)[len(times) // 2]


def run(cfg: Config) -> dict:
    binary = stockade_bin()
    if binary is None:
        raise NotAvailable("no stockade binary: run `just build`")
    module = os.path.join(guests_dir(), "fixtures.wasm")
    if not os.path.exists(module):
        raise NotAvailable(f"{module} is missing: run `just guests`")
    tasks = 500 if cfg.smoke else 20_000
    latency_tasks = 20 if cfg.smoke else 500
    through = Table(f"{tasks} no-op tasks at once through 2 workers x 1 slot; {latency_tasks} one at a time",
                    [Metric("tps", "throughput", "tasks/s", None, 0), Metric("p50", "one task, median", "ms", None, 3)],
                    [Row("stockade, WebAssembly no-op", ours=True), Row("stockade, built-in no-op")],
                    row_header="task")
    interleave(cfg.reps, through, {
        "stockade, WebAssembly no-op": lambda: cluster_bench(binary, ["--wasm-module", module], tasks, latency_tasks),
        "stockade, built-in no-op": lambda: cluster_bench(binary, [], tasks, latency_tasks),
    }, log)
    tables = [through]
    ridge_module = os.path.join(guests_dir(), "ridge.wasm")
    if not os.path.exists(ridge_module):
        raise NotAvailable(f"{ridge_module} is missing: run `just guests`")
    ridge = Table("one ridge fit and score, 1797 x 64 (digits-shaped), CPU time of one thread",
                  [Metric("ms", "fit and score", "ms", "lower", 2)],
                  [Row("stockade WebAssembly sandbox", ours=True), Row("sandbox without epoch checks"),
                   Row("native Rust, same source"), Row("numpy, 1 BLAS thread")],
                  reference="stockade WebAssembly sandbox", row_header="where it runs")
    runs = RidgeRuns(binary, ridge_module)
    interleave(cfg.reps, ridge, {
        "stockade WebAssembly sandbox": lambda: runs.figure("sandbox_ms"),
        "sandbox without epoch checks": lambda: runs.figure("sandbox_without_epochs_ms"),
        "native Rust, same source": lambda: runs.figure("native_ms"),
        "numpy, 1 BLAS thread": lambda: {"ms": numpy_ridge_ms()},
    }, log)
    tables.append(ridge)
    if not cfg.smoke:
        sandbox = Table("the sandbox on this machine (no cluster)",
                        [Metric("inst", "instantiation, median", "µs", None, 2),
                         Metric("calls", "no-op calls", "calls/s", None, 0),
                         Metric("epoch_float", "epoch cost, float64 dot loop (WAT)", "%", None, 1),
                         Metric("epoch_int", "epoch cost, integer loop (WAT)", "%", None, 1)],
                        [Row("stockade sandbox", ours=True)], row_header="engine")

        def measure():
            r = last_json_line(run_bounded([binary, "bench", "--sandbox", "--json"], timeout=900, env=dict(os.environ)))
            cost = {k["name"].split()[1]: k["epoch_overhead"] * 100 for k in r["kernels"]}
            return {"inst": r["instantiate_us_p50"], "calls": r["noop_calls_per_second"],
                    "epoch_float": cost["float64"], "epoch_int": cost["integer"]}

        interleave(cfg.reps, sandbox, {"stockade sandbox": measure}, log)
        tables.append(sandbox)
    return {"title": TITLE, "tables": tables, "notes": [
        "Ridge: the sandbox's figure is a whole task (instance, JSON input and output) and the guest is "
        "built with `--release` for wasm32-wasip1; the native figure is the same source file compiled into "
        "the `stockade` binary (the dev profile, opt-level 2); numpy runs the same normal equations with "
        "BLAS (one thread, like the sandbox). The guest's R² equals the native one (checked on every run).",
    ]}
