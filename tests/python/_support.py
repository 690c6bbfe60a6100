"""Helpers shared by the test modules (imported by name: this directory is on sys.path,
and the workers' Python children import it too when a task refers to these functions)."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import stockade

# Fast failure detection: lost workers are noticed within seconds, with room for a
# loaded 2-core machine (a 1 s bound dropped live workers there).
FAST_HEARTBEAT = (
    "--heartbeat-interval-ms", "100",
    "--heartbeat-timeout-ms", "3000",
    "--allowed-failures", "3",
)


def poll(fetch, done, timeout: float, interval: float = 0.1):
    """Calls ``fetch()`` until ``done(value)`` or ``timeout`` seconds; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fetch()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


def is_idle(info: dict) -> bool:
    """Nothing queued or running, in the scheduler's counters and on every worker."""
    return (
        info["tasks"]["queued"] == 0
        and info["tasks"]["running"] == 0
        and all(w["running"] == 0 for w in info["workers"])
    )


def wait_idle(client: stockade.Client, timeout: float = 30.0) -> dict:
    """Waits until the scheduler has nothing queued or running; returns its last view."""
    return poll(client.scheduler_info, is_idle, timeout)


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count: it has exited)."""
    try:
        return _stat_fields(pid)[0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids(cluster: stockade.LocalCluster) -> set[int]:
    """Process ids of a cluster's worker processes (the parents of their Python children)."""
    return {w.pid for w in cluster.workers}


def task_identity(x):
    """Runs on a worker: the argument, the Python child's pid and its parent (the worker)."""
    return x, os.getpid(), os.getppid()


@contextlib.contextmanager
def alarm_after(limit: float, make_error):
    """Raises ``make_error()`` in the main thread if the block runs longer than ``limit``
    seconds (pytest-timeout is not installed; SIGALRM does the same job)."""

    def on_alarm(signum, frame):
        raise make_error()

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
