"""Shared pieces of the benchmark suite: configuration, the speed probe, interleaved
repetitions, the backends and the runner processes they run in, process-tree memory, and
bounded subprocesses.

Nothing here knows about a particular workload; see suite.py for the list of those.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- configuration ---------------------------------------------------------------------


@dataclass
class Config:
    """What the environment asked for: SMOKE=1, REPS=N."""

    smoke: bool
    reps: int

    @staticmethod
    def from_env() -> "Config":
        smoke = os.environ.get("SMOKE", "") not in ("", "0")
        reps = int(os.environ.get("REPS", "1" if smoke else "5"))
        if reps < 1:
            raise SystemExit("REPS must be at least 1")
        return Config(smoke=smoke, reps=reps)

    def peers(self) -> list[str]:
        """Backends compared in the joblib workloads (Stockade first)."""
        return ["stockade", "loky"] if self.smoke else ["stockade", "loky", "dask", "ray"]


def stockade_bin() -> str | None:
    """The `stockade` binary: $STOCKADE_BIN, else the cargo target directory's debug build."""
    candidates = [os.environ.get("STOCKADE_BIN")]
    if os.environ.get("CARGO_TARGET_DIR"):
        candidates.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "debug", "stockade"))
    candidates.append(os.path.join(ROOT, "target", "debug", "stockade"))
    # Last resort: the package's console script (the same command line, inside Python).
    candidates.append(os.path.join(os.path.dirname(sys.executable), "stockade"))
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    return None


# -- the machine's speed -------------------------------------------------------------------


def speed_probe() -> float:
    """Milliseconds for a fixed pure-Python loop: how fast this machine is right now."""
    t = time.perf_counter()
    s = 0
    for i in range(200_000):
        s += i * i
    return (time.perf_counter() - t) * 1e3


def _busy_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def settle(max_wait: float = 10.0, window: float = 0.25, busy_cores: float = 0.3) -> float:
    """Waits (at most `max_wait` s) until the machine is quiet: under `busy_cores` cores
    busy over a `window`. A backend's processes keep working for a while after its run
    (Ray's took about a fifth of the next run's throughput), which would otherwise fall
    on whichever backend comes next. Returns the seconds waited."""
    start = time.monotonic()
    cores = os.cpu_count() or 1
    while time.monotonic() - start < max_wait:
        b0, t0 = _busy_jiffies()
        time.sleep(window)
        b1, t1 = _busy_jiffies()
        if t1 > t0 and (b1 - b0) / (t1 - t0) * cores < busy_cores:
            break
    return time.monotonic() - start


def machine() -> dict:
    """What the figures were measured on."""
    import platform

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ["stockade", "joblib", "numpy", "scikit-learn", "dask", "distributed", "ray"]:
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(meminfo("MemTotal") / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "versions": versions,
    }


# -- results -------------------------------------------------------------------------------


@dataclass
class Metric:
    """One measured quantity of a table. `better` is "higher", "lower" or None (no ratio)."""

    key: str
    label: str
    unit: str
    better: str | None = None
    digits: int = 1


@dataclass
class Row:
    """One backend (or variant) of a table: its samples per metric, one per repetition."""

    label: str
    ours: bool = False
    samples: dict[str, list[float]] = field(default_factory=dict)
    probes_ms: list[float] = field(default_factory=list)
    error: str | None = None
    failed: bool = False  # the error was unexpected (not a NotAvailable)
    notes: list[str] = field(default_factory=list)


@dataclass
class Table:
    title: str
    metrics: list[Metric]
    rows: list[Row]
    reference: str | None = None  # label of the Stockade row the peers are compared to
    notes: list[str] = field(default_factory=list)
    row_header: str = "backend"

    def row(self, label: str) -> Row:
        return next(r for r in self.rows if r.label == label)


def to_jsonable(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {k: to_jsonable(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, list):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    return obj


def table_from_json(d: dict) -> Table:
    return Table(
        title=d["title"],
        metrics=[Metric(**m) for m in d["metrics"]],
        rows=[Row(**r) for r in d["rows"]],
        reference=d.get("reference"),
        notes=d.get("notes", []),
        row_header=d.get("row_header", "backend"),
    )


def short_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    first = text.splitlines()[0] if text else type(e).__name__
    return first[:300]


def interleave(reps: int, table: Table, runs: dict[str, Callable[[], dict]], log=print) -> None:
    """Runs every row's measurement once per repetition, rows interleaved and rotated
    (A B C, B C A, C A B), each once the machine is quiet (`settle`).

    A run returns {metric key: value} and may add "probe_ms" (its own speed probe, taken
    next to its measurement); otherwise a probe is taken just before it. A row that raises
    is marked with the error and not run again; rows never fake a figure. NotAvailable
    means the build or the machine cannot take this measurement ("not available: ...");
    any other exception is a failure ("failed: ...", and the suite exits non-zero).
    """
    n = len(table.rows)
    for rep in range(reps):
        # Each repetition starts one row later, so that no row always follows the same one.
        for row in table.rows[rep % n:] + table.rows[:rep % n]:
            if row.error is not None or row.label not in runs:
                continue
            settle()
            probe = speed_probe()
            try:
                values = runs[row.label]()
            except NotAvailable as e:
                row.error = f"not available: {e}"
            except Exception as e:  # recorded in the table, the suite goes on
                row.error = f"failed: {e}" if isinstance(e, ChildFailed) else f"failed: {short_error(e)}"
                row.failed = True
            else:
                probe = values.pop("probe_ms", probe)
                row.probes_ms.append(probe)
                for k, v in values.items():
                    row.samples.setdefault(k, []).append(v)
            shown = row.error or ", ".join(f"{k}={_fmt(v[-1])}" for k, v in row.samples.items())
            log(f"  [{table.title}] rep {rep + 1}/{reps} {row.label}: {shown}  (probe {probe:.1f} ms)")


def _fmt(v: float) -> str:
    return f"{v:.4g}"


class NotAvailable(Exception):
    """A measurement that cannot be taken in this build or on this machine (said why)."""


class ChildFailed(RuntimeError):
    """A measuring subprocess failed; the message already names the error."""


def median(xs: list[float]) -> float:
    return statistics.median(xs)


# -- the joblib backends (each runs in a Runner, below) -----------------------------------


class Backend:
    """A joblib backend kept running across repetitions: start, context(), stop."""

    name = "?"

    def start(self) -> None: ...

    def context(self):
        raise NotImplementedError

    def stop(self) -> None: ...


class ClusterBackend(Backend):
    """A backend that runs a local cluster and one client of it for the whole run."""

    def open(self, make_cluster, make_client) -> None:
        self.cluster = make_cluster()
        try:
            self.client = make_client(self.cluster)
        except BaseException:
            self.cluster.close()
            raise

    def stop(self):
        try:
            self.client.close()
        finally:
            self.cluster.close()


class StockadeBackend(ClusterBackend):
    """Two workers of one slot (stockade.LocalCluster); joblib talks to it through one
    Client, so repetitions do not open a connection each."""

    name = "stockade"

    def start(self):
        import stockade

        self.open(lambda: stockade.LocalCluster(n_workers=2, slots_per_worker=1),
                  lambda cluster: stockade.Client(cluster.address))

    def context(self):
        from joblib import parallel_backend

        return parallel_backend("stockade", client=self.client, n_jobs=2)


class LokyBackend(Backend):
    name = "loky"

    def context(self):
        from joblib import parallel_backend

        return parallel_backend("loky", n_jobs=2)

    def stop(self):
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)


class DaskBackend(ClusterBackend):
    name = "dask"

    def start(self):
        from dask.distributed import Client, LocalCluster

        self.open(lambda: LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None),
                  Client)

    def context(self):
        from joblib import parallel_backend

        return parallel_backend("dask", client=self.client, n_jobs=2)


class RayBackend(Backend):
    name = "ray"

    def start(self):
        import ray
        from ray.util.joblib import register_ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
        register_ray()

    def context(self):
        from joblib import parallel_backend

        return parallel_backend("ray", n_jobs=2)

    def stop(self):
        import ray

        ray.shutdown()


BACKENDS = {"stockade": StockadeBackend, "loky": LokyBackend, "dask": DaskBackend, "ray": RayBackend}


# -- one process per backend ------------------------------------------------------------
#
# Backends measured in one process disturb each other: dask's Client runs a tornado
# event-loop thread that takes the GIL every few milliseconds, which alone halved loky's
# batch_size=1 throughput. So each backend of workloads 1-3 runs in its own long-lived
# process (a runner) that starts only that backend, and the suite sends it, in turn, the
# measurements to take: module-level functions of the workloads, called there as
# fn(backend, *args, **kwargs), returning plain picklable dicts.


def _runner_main(conn, name: str) -> None:
    """The runner process: starts BACKENDS[name], then runs the calls it receives until
    "stop" (or until the suite has gone), and stops the backend."""
    # Its own session and process group (pgid = this pid): the suite can kill the whole
    # tree at once, and a Ctrl-C reaches only the suite, which then stops us cleanly.
    os.setsid()
    warnings.filterwarnings("ignore")
    try:
        backend = BACKENDS[name]()
        backend.start()
    except Exception as e:
        conn.send(("error", short_error(e)))
        return
    conn.send(("ready", None))
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break  # the suite has gone
            if msg == "stop":
                break
            fn, args, kwargs = msg
            try:
                reply = ("ok", fn(backend, *args, **kwargs))
            except NotAvailable as e:
                reply = ("unavailable", str(e))
            except Exception as e:
                reply = ("err", short_error(e))
            conn.send(reply)
    finally:
        try:
            backend.stop()
        except Exception as e:
            log(f"  warning: stopping {name}: {short_error(e)}")


class Runner:
    """One backend in its own spawned process, driven through a pipe.

    `call(fn, *args, timeout=...)` runs `fn(backend, *args)` there and returns its result;
    the measurement's error comes back as ChildFailed. A call that does not answer within
    its timeout, or a runner that dies, gets the runner's whole process tree killed (a
    ChildFailed says so) and every later call fails at once. Not daemonic: dask's
    LocalCluster starts processes of its own, which daemonic processes may not.
    """

    def __init__(self, name: str, start_timeout: float = 300.0):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.name = name
        self.gone: str | None = None  # why the runner cannot take calls any more
        self.busy = False  # a call was sent and its answer not received
        self.conn, child_conn = ctx.Pipe()
        self.process = ctx.Process(target=_runner_main, args=(child_conn, name), name=f"bench-runner-{name}")
        self.process.start()
        child_conn.close()  # ours; the child's end closing is then an EOF here
        try:
            status, detail = self._exchange(None, start_timeout, "start")
        except BaseException:
            self.stop()
            raise
        if status != "ready":
            self.stop()
            raise ChildFailed(detail)

    def call(self, fn: Callable, *args, timeout: float = 900.0, **kwargs) -> Any:
        if self.gone:
            raise ChildFailed(f"{self.name} runner is gone: {self.gone}")
        status, result = self._exchange((fn, args, kwargs), timeout, fn.__name__)
        if status == "unavailable":
            raise NotAvailable(result)
        if status == "err":
            raise ChildFailed(result)
        return result

    def _exchange(self, msg: Any, timeout: float, what: str) -> tuple[str, Any]:
        """Sends `msg` (unless None), then returns the runner's answer, waited for at
        most `timeout` s; otherwise kills the runner's tree and raises ChildFailed."""
        try:
            if msg is not None:
                self.conn.send(msg)
                self.busy = True  # until the answer: stopping then means killing
            if self.conn.poll(timeout):
                answer = self.conn.recv()
                self.busy = False
                return answer
            reason = f"gave no answer to {what} within {timeout:.0f} s"
        except (EOFError, OSError):
            self.process.join(10)
            reason = f"exited (code {self.process.exitcode}) during {what}"
        self.kill(reason)
        raise ChildFailed(f"{self.name} runner {reason}; its process tree was killed")

    def kill(self, reason: str) -> None:
        """SIGKILL to the runner's process group and to every process below it."""
        self.gone = self.gone or reason
        pids = descendants(self.process.pid) if self.process.is_alive() else []
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:  # it had not made its group yet, or all is gone
            pass
        for pid in pids:  # any that left the group
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.join(10)

    def stop(self, timeout: float = 60.0) -> None:
        """Asks the runner to stop its backend and exit, and kills its tree if it does not
        within `timeout` s, or at once if it is still in a call (the suite was interrupted);
        then kills what it left in its process group (after reap_group's grace)."""
        if self.process.is_alive() and not self.busy and not self.gone:
            try:
                self.conn.send("stop")
            except OSError:
                pass
            self.process.join(timeout)
            if self.process.is_alive():
                log(f"  warning: {self.name} runner did not stop within {timeout:.0f} s; killing its tree")
        if self.process.is_alive():
            self.kill("stopped")
        self.gone = self.gone or "stopped"
        self.conn.close()
        reap_group(self.process.pid)


class Runners:
    """The runners of the requested backends, started one after another (each start timed
    on its own); those that fail to start are recorded in `errors` (not silently dropped)."""

    def __init__(self, log=print):
        self.running: dict[str, Runner] = {}
        self.errors: dict[str, str] = {}
        self.log = log

    def start(self, names: list[str]) -> "Runners":
        for name in names:
            if name in self.running or name in self.errors:
                continue
            t = time.perf_counter()
            try:
                self.running[name] = Runner(name)
            except Exception as e:
                why = str(e) if isinstance(e, ChildFailed) else short_error(e)
                self.errors[name] = f"not available: could not start: {why}"
                self.log(f"  {name}: {self.errors[name]}")
                continue
            self.log(f"  {name} started in {time.perf_counter() - t:.1f} s")
        return self

    def rows(self, names: list[str]) -> list[Row]:
        """A table's rows for these backends, with the start error of those not running."""
        return [Row(n, ours=(n == "stockade"), error=self.errors.get(n)) for n in names]

    def runs(self, fn: Callable, *args, timeout: float = 900.0, **kwargs) -> dict[str, Callable[[], Any]]:
        """{backend: a callable running fn(backend, *args, **kwargs) in its runner}, for
        `interleave` (which runs only those of the table's rows)."""
        return {name: functools.partial(r.call, fn, *args, timeout=timeout, **kwargs)
                for name, r in self.running.items()}

    def close(self) -> None:
        for name, r in reversed(list(self.running.items())):
            try:
                r.stop()
            except Exception as e:
                self.log(f"  warning: stopping {name}: {short_error(e)}")
        self.running.clear()
        self.errors.clear()


_shared = Runners(log=log)


def shared_runners(names: list[str]) -> Runners:
    """The backends' runners, started once and shared by workloads 1-3; the suite stops
    them with `close_shared_runners` in a `finally`."""
    return _shared.start(names)


def close_shared_runners() -> None:
    _shared.close()


# -- memory of a process tree ----------------------------------------------------------


def meminfo(key: str) -> int:
    """A /proc/meminfo field in bytes."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def descendants(root: int) -> list[int]:
    """`root` and every process below it, from /proc/*/stat parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after the last ")".
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_pss(root: int) -> tuple[int, int]:
    """(sum of proportional set size in bytes, number of processes) over root's tree.

    PSS charges a shared page to each of its n users by 1/n, so shared memory (memmaps,
    shared-memory pins, Ray's object store) is counted once in the sum.
    """
    total, n = 0, 0
    for pid in descendants(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        n += 1
                        break
        except OSError:
            continue  # exited meanwhile, or a kernel thread
    return total, n


def unmapped_file_bytes(directory: str, pids: list[int]) -> int:
    """Bytes allocated by the files under `directory` (a tmpfs) that none of `pids` maps.

    Files in shared memory that no process maps (a store written with write(), a memmap
    between tasks) hold memory that no PSS shows; mapped ones are already in the PSS."""
    mapped = set()
    prefix = os.path.realpath(directory) + os.sep
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    i = line.find(prefix)
                    if i >= 0:
                        mapped.add(line[i:].rstrip("\n").removesuffix(" (deleted)"))
        except OSError:
            continue
    total = 0
    for dirpath, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(os.path.realpath(dirpath), name)
            if path in mapped:
                continue
            try:
                total += os.stat(path).st_blocks * 512
            except OSError:
                pass
    return total


class PeakMemory:
    """A thread sampling the tree's PSS sum (and the machine's Shmem) every `interval` s.

    With `files_dir` (a private tmpfs directory the backend keeps its shared-memory files
    in), also the PSS sum plus the files there that no process of the tree maps."""

    def __init__(self, root: int | None = None, interval: float = 0.05, files_dir: str | None = None):
        self.root = root if root is not None else os.getpid()
        self.interval = interval
        self.files_dir = files_dir
        self.baseline, self.baseline_procs = tree_pss(self.root)
        self.shmem_baseline = meminfo("Shmem")
        self.peak = self.baseline
        self.peak_procs = self.baseline_procs
        self.shmem_peak = self.shmem_baseline
        self.all_baseline = self.baseline + self._unmapped()
        self.all_peak = self.all_baseline
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pss-sampler", daemon=True)

    def _unmapped(self) -> int:
        return unmapped_file_bytes(self.files_dir, descendants(self.root)) if self.files_dir else 0

    def _sample(self) -> None:
        pss, n = tree_pss(self.root)
        if pss > self.peak:
            self.peak, self.peak_procs = pss, n
        self.all_peak = max(self.all_peak, pss + self._unmapped())
        self.shmem_peak = max(self.shmem_peak, meminfo("Shmem"))
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._sample()  # the end state too


# -- bounded subprocesses --------------------------------------------------------------


def run_bounded(args: list[str], timeout: float, env: dict | None = None, cwd: str | None = None) -> str:
    """Runs a command in its own process group; returns stdout. On timeout (or any
    error) the group, led by the child's pid, is killed and waited for."""
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
                         start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException:
        kill_group(p)
        raise
    reap_group(p.pid)
    if p.returncode != 0:
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise ChildFailed(f"{os.path.basename(args[0])} exited with {p.returncode}: {tail}")
    return out


def kill_group(p: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 10 s, to the process group that `p` leads."""
    for sig, wait in [(signal.SIGTERM, 10), (signal.SIGKILL, 10)]:
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _group_members(pgid: int) -> list[tuple[int, str, str]]:
    """(pid, state, command line) of the live processes in a process group."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            out.append((int(entry), fields[0], cmd[:120]))
    return out


def reap_group(pgid: int, grace: float = 5.0) -> None:
    """Kills what a finished child left behind in its process group, after `grace`
    seconds for it to exit by itself (processes whose parent just exited)."""
    deadline = time.monotonic() + grace
    while (left := _group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    if left:
        log(f"  warning: left behind in process group {pgid} after {grace:.0f} s, killed: {left}")
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def last_json_line(out: str) -> dict:
    for line in reversed(out.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"no JSON result in the output: {out[-500:]!r}")

