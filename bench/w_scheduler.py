"""Workload 6: zero-work scheduler throughput with 2, 16 and 128 workers.

Built-in no-op tasks (no Python anywhere) through one scheduler and N one-slot worker
processes on loopback, in the style of the RSDS and HyperQueue papers:

    scripts/with-cluster.sh N 1  stockade bench --tasks T --latency-tasks L --json

The Rust client submits T tasks at once and measures tasks per second, then L tasks one
at a time for the submit-to-result latency. A fresh cluster per measurement; the cluster
sizes are interleaved (2 16 128 2 16 128 ...). 128 worker processes on two cores is
fine: they idle until they get tasks. No peer runs here.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile

from _common import ROOT, Config, Metric, NotAvailable, Row, Table, interleave, last_json_line, log, run_bounded, \
    stockade_bin

TITLE = "6. zero-work scheduler throughput (built-in no-op tasks, Rust client)"


def bench_once(binary: str, workers: int, tasks: int, latency_tasks: int) -> dict:
    env = dict(os.environ, STOCKADE_BIN=binary)
    out = run_bounded(
        [os.path.join(ROOT, "scripts", "with-cluster.sh"), str(workers), "1",
         binary, "bench", "--tasks", str(tasks), "--latency-tasks", str(latency_tasks), "--json"],
        timeout=600, env=env,
    )
    r = last_json_line(out)
    if r.get("failed"):
        raise RuntimeError(f"{r['failed']} tasks failed")
    return {"tps": r["tasks_per_second"], "p50": r["latency_ms_p50"], "p99": r["latency_ms_p99"]}


def run(cfg: Config) -> dict:
    sizes = [2] if cfg.smoke else [2, 16, 128]
    tasks = 2000 if cfg.smoke else 200_000
    latency_tasks = 50 if cfg.smoke else 2000
    metrics = [
        Metric("tps", "throughput", "tasks/s", None, 0),
        Metric("p50", "one task, median", "ms", None, 3),
        Metric("p99", "one task, p99", "ms", None, 3),
    ]
    table = Table(f"{tasks} no-op tasks at once; {latency_tasks} one at a time", metrics,
                  [Row(f"{n} workers x 1 slot", ours=True) for n in sizes], row_header="cluster")
    source = stockade_bin()
    if source is None:
        raise NotAvailable("no stockade binary: set STOCKADE_BIN or CARGO_TARGET_DIR, or run `just build`")
    # A private copy: a rebuild of the shared binary during the run cannot mix versions.
    tmp = tempfile.mkdtemp(prefix="stockade-bench-bin-")
    try:
        binary = shutil.copy2(source, os.path.join(tmp, "stockade"))
        runs = {f"{n} workers x 1 slot": (lambda n=n: bench_once(binary, n, tasks, latency_tasks)) for n in sizes}
        interleave(cfg.reps, table, runs, log)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    built = datetime.datetime.fromtimestamp(os.path.getmtime(source)).astimezone().isoformat(timespec="seconds")
    table.notes.append(f"Binary: a copy of {source} (built {built}).")
    return {"title": TITLE, "tables": [table], "notes": [
        "`stockade bench` against a cluster started by scripts/with-cluster.sh N 1 (scheduler and N "
        "`stockade worker --slots 1` processes); a fresh cluster per measurement, sizes interleaved. "
        "No peers: dask's and Ray's Python clients cannot submit a Rust-side no-op, so a side-by-side "
        "figure would measure their Python layers (workload 1 does that).",
    ]}
