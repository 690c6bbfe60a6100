"""Destructive tests, each on a dedicated cluster: dying Python children and workers."""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from joblib import Parallel, delayed, parallel_config

import stockade
from _support import alive, is_idle, poll, worker_pids

RESULT_TIMEOUT = 60


def square(x):
    return x * x


def slow_square(x, seconds):
    time.sleep(seconds)
    return x * x


def exit_unless(x, keep):
    if x != keep:
        os._exit(1)
    return x


@pytest.mark.timeout(120)
def test_a_task_that_ends_its_process_raises_worker_lost_and_the_cluster_keeps_working(make_cluster):
    cluster = make_cluster()
    with stockade.Client(scheduler_file=cluster.scheduler_file, timeout=10) as client:
        future = client.submit(os._exit, 1)
        with pytest.raises(stockade.WorkerLost) as info:
            future.result(RESULT_TIMEOUT)
        assert re.search(r"died: exit status 1\b", str(info.value)), str(info.value)

        with parallel_config(backend="stockade", client=client):
            with pytest.raises(stockade.WorkerLost, match=r"died: exit status 1\b"):
                Parallel(n_jobs=2)([delayed(os._exit)(1)] + [delayed(square)(i) for i in range(4)])
            # The same backend keeps working, on both workers.
            assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(20)) == [i * i for i in range(20)]

        assert all(w.popen.poll() is None for w in cluster.workers)
        info = client.scheduler_info()
        assert sorted(w["name"] for w in info["workers"]) == ["worker1", "worker2"]
        assert client.submit(square, 9).result(RESULT_TIMEOUT) == 81


@pytest.mark.timeout(120)
def test_kill_9_of_a_worker_mid_run_loses_no_result(make_cluster):
    cluster = make_cluster(n_workers=2)
    victim, survivor = cluster.workers
    results = []
    with parallel_config(backend="stockade", scheduler_file=cluster.scheduler_file):
        for value in Parallel(n_jobs=2, return_as="generator")(delayed(slow_square)(i, 0.3) for i in range(20)):
            if not results:
                os.kill(victim.pid, signal.SIGKILL)
            results.append(value)
    assert results == [i * i for i in range(20)]
    assert victim.popen.wait(10) == -signal.SIGKILL
    assert survivor.popen.poll() is None

    with stockade.Client(scheduler_file=cluster.scheduler_file, timeout=10) as client:
        info = poll(client.scheduler_info, lambda i: len(i["workers"]) == 1 and is_idle(i), 20)
        assert [w["name"] for w in info["workers"]] == [survivor.name], info
        assert is_idle(info), info
        # The remaining worker still runs new work.
        futures = client.map(square, range(5))
        assert [f.result(RESULT_TIMEOUT) for f in futures] == [0, 1, 4, 9, 16]
        assert {client.submit(os.getppid).result(RESULT_TIMEOUT)} <= worker_pids(cluster) - {victim.pid}


@pytest.mark.timeout(120)
def test_a_worker_added_after_a_loss_takes_work(make_cluster):
    cluster = make_cluster(n_workers=1)
    with stockade.Client(scheduler_file=cluster.scheduler_file, timeout=10) as client:
        os.kill(cluster.workers[0].pid, signal.SIGKILL)
        info = poll(client.scheduler_info, lambda i: not i["workers"], 20)
        assert info["workers"] == [], info
        future = client.submit(square, 12)  # queued: no worker
        replacement = cluster.add_worker()
        assert future.result(RESULT_TIMEOUT) == 144
        assert client.submit(os.getppid).result(RESULT_TIMEOUT) == replacement.pid


OWNER_DIES = """
import os, sys
import stockade
cluster = stockade.LocalCluster(n_workers=2)
with stockade.Client(scheduler_file=cluster.scheduler_file) as client:
    children = {client.submit(os.getpid).result(60) for _ in range(4)}
print(" ".join(map(str, [cluster.scheduler.pid, *(w.pid for w in cluster.workers), *children])), flush=True)
os._exit(0)  # no atexit, no close(): as if killed
"""


@pytest.mark.timeout(120)
def test_a_local_cluster_does_not_outlive_its_owner():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", OWNER_DIES], capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) >= 4, out.stdout  # scheduler, two workers, their Python children
    left = poll(lambda: [p for p in pids if alive(p)], lambda alive_pids: not alive_pids, 30)
    for pid in left:  # a failing run still leaves nothing behind
        os.kill(pid, signal.SIGKILL)
    assert left == [], f"processes of a dead owner's cluster still run: {left}"
