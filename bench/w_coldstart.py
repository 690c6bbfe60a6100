"""Workload 5: cold start, from nothing to the first result of a one-task Parallel call.

Each measurement is a fresh `python -c SCRIPT` process: interpreter start, imports,
cluster start and the first call. The figure is the time from spawning that process to
reading its first result on its stdout (measured by this process); the script's own
clock splits it into imports, cluster start and first call. The cluster is shut down
after the result is printed, outside the measured time, and the process must exit within
a bound.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time

from _common import ChildFailed, Config, Metric, Row, Table, interleave, kill_group, log, reap_group

TITLE = "5. cold start: from nothing to the first result (cluster start included)"

_PRELUDE = """
import json, sys, time
t0 = time.perf_counter()
def f(x):
    return x + 1
"""

_REPORT = """
assert out == [2], out
print("RESULT " + json.dumps({"imports": t1 - t0, "start": t2 - t1, "first_call": t3 - t2}), flush=True)
"""

SCRIPTS = {
    "stockade (LocalCluster)": """
import stockade
from joblib import Parallel, delayed, parallel_backend
t1 = time.perf_counter()
cluster = stockade.LocalCluster(n_workers=2, slots_per_worker=1)
try:
    t2 = time.perf_counter()
    with parallel_backend("stockade", scheduler_host=cluster.address):
        out = Parallel(n_jobs=2)([delayed(f)(1)])
    t3 = time.perf_counter()
    REPORT
finally:
    cluster.close()
""",
    "stockade (embedded: parallel_config alone)": """
import stockade
from joblib import Parallel, delayed, parallel_config
t1 = t2 = time.perf_counter()  # the embedded cluster starts inside the first call
with parallel_config(backend="stockade"):
    out = Parallel(n_jobs=2)([delayed(f)(1)])
t3 = time.perf_counter()
REPORT
""",
    "loky": """
from joblib import Parallel, delayed
t1 = t2 = time.perf_counter()  # loky starts its workers inside the first call
out = Parallel(n_jobs=2, backend="loky")([delayed(f)(1)])
t3 = time.perf_counter()
REPORT
""",
    "dask": """
from dask.distributed import Client, LocalCluster
from joblib import Parallel, delayed, parallel_backend
t1 = time.perf_counter()
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
client = Client(cluster)
try:
    t2 = time.perf_counter()
    with parallel_backend("dask", client=client):
        out = Parallel(n_jobs=2)([delayed(f)(1)])
    t3 = time.perf_counter()
    REPORT
finally:
    client.close()
    cluster.close()
""",
    "ray": """
import ray
from ray.util.joblib import register_ray
from joblib import Parallel, delayed, parallel_backend
t1 = time.perf_counter()
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
try:
    register_ray()
    t2 = time.perf_counter()
    with parallel_backend("ray", n_jobs=2):
        out = Parallel(n_jobs=2)([delayed(f)(1)])
    t3 = time.perf_counter()
    REPORT
finally:
    ray.shutdown()
""",
}


def _script(label: str) -> str:
    body = SCRIPTS[label]
    # REPORT sits at the indentation of the line it replaces.
    lines = []
    for line in body.splitlines():
        if line.strip() == "REPORT":
            indent = line[: len(line) - len(line.lstrip())]
            lines.extend(indent + x for x in _REPORT.strip().splitlines())
        else:
            lines.append(line)
    return _PRELUDE + "\n".join(lines) + "\n"


def cold_start(label: str, timeout: float = 180.0) -> dict:
    """Spawns the script; returns the figures once its RESULT line arrives; then waits
    (bounded) for it to shut its cluster down and exit."""
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-c", _script(label)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         stdin=subprocess.DEVNULL, text=True, start_new_session=True, cwd=os.getcwd())
    lines: queue.Queue = queue.Queue()
    err: list[str] = []

    def read_out():
        for line in p.stdout:
            lines.put(line)
        lines.put(None)

    def read_err():
        err.extend(p.stderr)

    threading.Thread(target=read_out, daemon=True).start()
    threading.Thread(target=read_err, daemon=True).start()
    try:
        total = None
        deadline = time.monotonic() + timeout
        while total is None:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise TimeoutError(f"no result within {timeout:.0f} s") from None
            if line is None:
                p.wait(10)
                tail = " | ".join(x.strip() for x in err[-5:])
                raise ChildFailed(f"the script exited with {p.returncode} before its result: {tail}")
            if line.startswith("RESULT "):
                total = time.perf_counter() - t
                parts = json.loads(line[len("RESULT "):])
        try:
            p.wait(60)
            reap_group(p.pid)
        except subprocess.TimeoutExpired:  # the figure stands; the process is killed below
            log(f"  warning: {label} did not exit within 60 s after its result; killing its process group")
        return {"total": total, **parts}
    finally:
        if p.poll() is None:
            kill_group(p)


def run(cfg: Config) -> dict:
    backends = set(cfg.peers())
    labels = [label for label in SCRIPTS if label.split()[0] in backends]
    metrics = [
        Metric("total", "first result", "s", "lower", 2),
        Metric("imports", "imports", "s", None, 2),
        Metric("start", "cluster start", "s", None, 2),
        Metric("first_call", "first call", "s", None, 2),
    ]
    table = Table("one-task Parallel call in a fresh Python process", metrics,
                  [Row(label, ours=label.startswith("stockade")) for label in labels],
                  reference="stockade (LocalCluster)")
    interleave(cfg.reps, table, {label: (lambda label=label: cold_start(label)) for label in labels}, log)
    return {"title": TITLE, "tables": [table], "notes": [
        "'first result' is measured from spawning `python -c SCRIPT` to reading the task's result on its "
        "stdout: interpreter start, imports, cluster start and the first call. The other columns are the "
        "script's own clock (after the interpreter started): imports, explicit cluster start (0 where the "
        "backend starts inside the first call: loky, the embedded Stockade cluster) and the first call.",
    ]}
