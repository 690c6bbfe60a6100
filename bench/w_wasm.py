"""Workload 7: WebAssembly tasks.

- The sandbox on this machine (`stockade bench --sandbox --json`, no cluster):
  instantiation of a small module from the pool (median, p90), no-op calls per second
  on all cores, and the cost of epoch interruption on compute-bound guests (CPU time of
  the same kernel with and without it).
- No-op WebAssembly tasks through a cluster of two one-slot workers
  (`stockade bench --wasm-module fixtures.wasm --wasm-task noop --json`): tasks per
  second and one-task latency, next to built-in no-op tasks through the same kind of
  cluster (the scheduler's own cost).

The comparison with the same computation in native Rust and in numpy is not measured
yet (see the note in results.md).
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
    if not cfg.smoke:
        sandbox = Table("the sandbox on this machine (no cluster)",
                        [Metric("inst", "instantiation, median", "µs", None, 2),
                         Metric("calls", "no-op calls", "calls/s", None, 0),
                         Metric("epoch", "epoch cost, worst kernel", "%", None, 1)],
                        [Row("stockade sandbox", ours=True)], row_header="engine")

        def measure():
            r = last_json_line(run_bounded([binary, "bench", "--sandbox", "--json"], timeout=900, env=dict(os.environ)))
            worst = max(k["epoch_overhead"] for k in r["kernels"]) * 100
            return {"inst": r["instantiate_us_p50"], "calls": r["noop_calls_per_second"], "epoch": worst}

        interleave(cfg.reps, sandbox, {"stockade sandbox": measure}, log)
        tables.append(sandbox)
    return {"title": TITLE, "tables": tables, "notes": [
        "Not measured yet: a compute-bound guest against the same computation in native Rust and in numpy.",
    ]}
