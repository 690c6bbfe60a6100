"""stockade.Client on the shared cluster: submit, map, errors, cancel, close, addresses."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import re
import threading
import time

import cloudpickle
import pytest

import stockade
from _support import alive, is_idle, poll, task_identity, wait_idle, worker_pids

RESULT_TIMEOUT = 30


def add(a, b=0, *, scale=1):
    return (a + b) * scale


def divide(a, b):
    return a / b


def test_scheduler_info_lists_the_workers_and_slots(idle_client):
    info = idle_client.scheduler_info()
    assert sorted(w["name"] for w in info["workers"]) == ["worker1", "worker2"]
    assert [w["slots"] for w in info["workers"]] == [1, 1]
    assert set(info["tasks"]) == {"queued", "running", "done", "failed"}
    assert idle_client.total_slots() == 2


def test_submit_positional_and_keyword_arguments(idle_client):
    futures = [
        idle_client.submit(add, 2, 3),
        idle_client.submit(add, 2, b=5),
        idle_client.submit(add, 1, 2, scale=10),
        idle_client.submit(sorted, [3, 1, 2], reverse=True),
        idle_client.submit(dict, a=1, b=[2, 3]),
    ]
    assert all(isinstance(f, concurrent.futures.Future) for f in futures)
    assert [f.result(RESULT_TIMEOUT) for f in futures] == [5, 7, 30, [3, 2, 1], {"a": 1, "b": [2, 3]}]


def test_submit_lambda_and_closure(idle_client):
    offset = 100

    def closure(x):
        return x + offset

    assert idle_client.submit(lambda x, y: x * y, 6, 7).result(RESULT_TIMEOUT) == 42
    assert idle_client.submit(closure, 5).result(RESULT_TIMEOUT) == 105


def test_results_only_cloudpickle_can_pickle_come_back(idle_client):
    """Children pickle results with plain pickle when it can, cloudpickle otherwise."""

    class Local:
        def __init__(self, n):
            self.n = n

    def make():
        return [Local(3), lambda x: x + 1, 7]

    local, inc, seven = idle_client.submit(make).result(RESULT_TIMEOUT)
    assert (type(local).__name__, local.n, inc(1), seven) == ("Local", 3, 2, 7)


def test_tasks_run_in_the_workers_python_children(cluster, idle_client):
    futures = [idle_client.submit(task_identity, i) for i in range(6)]
    results = [f.result(RESULT_TIMEOUT) for f in futures]
    assert [x for x, _, _ in results] == list(range(6))
    assert all(pid != os.getpid() for _, pid, _ in results)
    assert {ppid for _, _, ppid in results} <= worker_pids(cluster)


def test_map_keeps_the_order_of_its_inputs(idle_client):
    futures = idle_client.map(pow, [2, 3, 4, 5], [3, 2, 1, 0])
    assert [f.result(RESULT_TIMEOUT) for f in futures] == [8, 9, 4, 1]
    many = idle_client.map(add, range(200), range(200))
    assert [f.result(RESULT_TIMEOUT) for f in many] == [2 * i for i in range(200)]


def test_map_over_nothing_submits_nothing(idle_client):
    assert idle_client.map(add, []) == []


def test_a_raising_task_raises_the_same_exception_with_the_remote_traceback(idle_client):
    future = idle_client.submit(divide, 1, 0)
    with pytest.raises(ZeroDivisionError) as info:
        future.result(RESULT_TIMEOUT)
    assert str(info.value) == "division by zero"
    cause = info.value.__cause__
    assert isinstance(cause, stockade.RemoteTraceback)
    assert "in divide" in cause.tb
    assert "return a / b" in cause.tb
    # The client keeps working.
    assert idle_client.submit(divide, 1, 4).result(RESULT_TIMEOUT) == 0.25


def test_an_unpicklable_result_fails_with_the_pickling_error(idle_client):
    with pytest.raises(TypeError) as local:
        cloudpickle.dumps(threading.Lock())
    future = idle_client.submit(threading.Lock)
    with pytest.raises(TypeError) as remote:
        future.result(RESULT_TIMEOUT)
    assert str(remote.value) == str(local.value) == "cannot pickle '_thread.lock' object"
    assert isinstance(remote.value.__cause__, stockade.RemoteTraceback)
    assert idle_client.submit(add, 1, 1).result(RESULT_TIMEOUT) == 2


def test_an_unpicklable_argument_fails_in_submit(idle_client):
    with pytest.raises(TypeError, match=re.escape("cannot pickle '_thread.lock' object")):
        idle_client.submit(id, threading.Lock())
    assert idle_client.submit(add, 2, 2).result(RESULT_TIMEOUT) == 4


@pytest.mark.timeout(60)
def test_cancel_stops_a_running_task(idle_client):
    future = idle_client.submit(time.sleep, 120)
    info = poll(idle_client.scheduler_info, lambda i: i["tasks"]["running"] == 1, 20)
    assert info["tasks"]["running"] == 1, info
    idle_client.cancel([future])
    with pytest.raises(stockade.TaskCancelled, match="cancelled"):
        future.result(RESULT_TIMEOUT)
    info = wait_idle(idle_client, 20)
    assert is_idle(info), info
    assert idle_client.submit(add, 3, 4).result(RESULT_TIMEOUT) == 7


@pytest.mark.timeout(60)
def test_closing_a_client_fails_its_unfinished_futures_and_cancels_their_tasks(cluster, idle_client):
    other = stockade.Client(scheduler_file=cluster.scheduler_file, timeout=10)
    future = other.submit(time.sleep, 120)
    info = poll(idle_client.scheduler_info, lambda i: i["tasks"]["running"] == 1, 20)
    assert info["tasks"]["running"] == 1, info
    other.close()
    with pytest.raises(stockade.ConnectionLost):
        future.result(RESULT_TIMEOUT)
    with pytest.raises(stockade.StockadeError, match="the client is closed"):
        other.submit(add, 1, 2)
    info = wait_idle(idle_client, 20)
    assert is_idle(info), info


def test_client_as_context_manager(cluster):
    with stockade.Client(scheduler_file=cluster.scheduler_file, timeout=10) as c:
        assert c.submit(add, 20, 22).result(RESULT_TIMEOUT) == 42
    with pytest.raises(stockade.StockadeError, match="the client is closed"):
        c.submit(add, 1, 2)


@pytest.mark.timeout(60)
def test_unknown_address_fails_fast_naming_it():
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=re.escape("127.0.0.1:1")):
        stockade.Client("127.0.0.1:1", timeout=2)
    assert time.monotonic() - start < 30


@pytest.mark.timeout(60)
def test_address_without_a_scheduler_fails_within_the_timeout_naming_it(cluster):
    # The scheduler file makes the address verifiable; nothing answers there.
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=re.escape("127.0.0.1:1")):
        stockade.Client("127.0.0.1:1", scheduler_file=cluster.scheduler_file, timeout=2)
    assert time.monotonic() - start < 30


def test_missing_scheduler_file_names_the_file(tmp_path):
    missing = tmp_path / "nowhere" / "scheduler.json"
    with pytest.raises(ConnectionError, match=re.escape(str(missing))):
        stockade.Client(scheduler_file=str(missing), timeout=2)


def test_address_alone_connects_on_the_schedulers_machine(cluster):
    # Client's documented contract: "Client("HOST:PORT") works on the scheduler's
    # machine". LocalCluster's scheduler runs on this machine, as this user.
    with stockade.Client(cluster.address, timeout=10) as c:
        assert c.submit(add, 1, 2).result(RESULT_TIMEOUT) == 3


def submit_from_a_new_client(scheduler_file):
    """Runs in a forked child: a Client of its own, one task."""
    with stockade.Client(scheduler_file=scheduler_file, timeout=5) as c:
        return c.submit(add, 1, 1).result(RESULT_TIMEOUT)


@pytest.mark.timeout(90)
def test_a_forked_child_process_can_use_its_own_client(cluster, idle_client):
    # This process already uses Stockade (the session client). A child forked from it,
    # as multiprocessing's default start method on Linux does, must be able to connect
    # on its own, or fail within its timeout; never hang.
    with multiprocessing.get_context("fork").Pool(1) as pool:
        pending = pool.apply_async(submit_from_a_new_client, (cluster.scheduler_file,))
        try:
            value = pending.get(timeout=30)
        except multiprocessing.TimeoutError:
            pytest.fail("Client(scheduler_file=..., timeout=5) in a forked child did not return within 30 s")
    assert value == 2


THREAD_LIMIT_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
                     "NUMEXPR_NUM_THREADS")


def thread_limits():
    return {var: os.environ.get(var) for var in THREAD_LIMIT_VARS}


def test_numeric_libraries_in_children_share_the_cores_among_slots(client, cluster):
    # As loky does for its workers: each child's BLAS/OpenMP pools get the machine's
    # cores divided by the worker's slots, unless the worker's environment says otherwise.
    share = str(max(1, len(os.sched_getaffinity(0)) // cluster.slots_per_worker))
    expected = {var: os.environ.get(var, share) for var in THREAD_LIMIT_VARS}
    assert client.submit(thread_limits).result(60) == expected


def wait_for_file(path, value):
    """A task that returns `value` once `path` exists (at most 60 s)."""
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


@pytest.mark.timeout(60)
def test_result_with_a_timeout_times_out_and_a_later_result_still_gets_the_value(idle_client, tmp_path):
    gate = tmp_path / "gate"
    future = idle_client.submit(wait_for_file, str(gate), 42)
    with pytest.raises(concurrent.futures.TimeoutError):
        future.result(timeout=0.2)
    with pytest.raises(concurrent.futures.TimeoutError):
        future.exception(timeout=0)
    gate.touch()
    assert future.result(RESULT_TIMEOUT) == 42
    assert future.exception(0) is None


@pytest.mark.timeout(60)
def test_threads_waiting_on_the_same_future_all_get_its_result_and_callbacks_run_once(idle_client, tmp_path):
    gate = tmp_path / "gate"
    future = idle_client.submit(wait_for_file, str(gate), "done")
    calls = []
    future.add_done_callback(calls.append)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        waiting = [pool.submit(future.result, RESULT_TIMEOUT) for _ in range(4)]
        gate.touch()
        assert [w.result(RESULT_TIMEOUT) for w in waiting] == ["done"] * 4
    assert calls == [future]


@pytest.mark.timeout(60)
def test_a_signal_interrupts_a_thread_blocked_in_result(idle_client, tmp_path):
    import signal

    class Interrupted(Exception):
        pass

    def interrupt(signum, frame):
        raise Interrupted()

    gate = tmp_path / "gate"
    future = idle_client.submit(wait_for_file, str(gate), 7)
    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.3)
        with pytest.raises(Interrupted):
            future.result(RESULT_TIMEOUT)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    gate.touch()
    assert future.result(RESULT_TIMEOUT) == 7


def test_a_raising_task_seen_through_exception_in_the_waiting_thread(idle_client):
    error = idle_client.submit(divide, 1, 0).exception(RESULT_TIMEOUT)
    assert isinstance(error, ZeroDivisionError)


OTHER_PROCESS_CLIENT = """
import sys, stockade
with stockade.Client(scheduler_file=sys.argv[1], timeout=10) as client:
    print(client.submit(sum, [20, 22]).result(60), len(client.scheduler_info()["sessions"]))
"""


def test_the_scheduler_of_a_local_cluster_runs_in_this_process_and_serves_others_too(cluster, idle_client):
    import subprocess
    import sys

    # In this process, with its workers: the cluster's clients reach it without the
    # network; tasks run in Python children of this process.
    assert cluster.scheduler.pid == os.getpid()
    assert {w.pid for w in cluster.workers} == {os.getpid()}
    assert idle_client.submit(add, 1, 2).result(RESULT_TIMEOUT) == 3
    assert idle_client.submit(os.getppid).result(RESULT_TIMEOUT) == os.getpid()
    assert {w["address"] for w in idle_client.scheduler_info()["workers"]} == {"in-process"}
    # Another process connects over QUIC to the same scheduler, alongside this client.
    out = subprocess.run([sys.executable, "-c", OTHER_PROCESS_CLIENT, cluster.scheduler_file],
                         capture_output=True, text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    result, sessions = out.stdout.split()
    assert result == "42"
    assert int(sessions) >= 2, out.stdout


def test_closing_a_local_cluster_stops_the_python_children_of_its_workers(make_cluster):
    cluster = make_cluster(n_workers=2, processes=False)
    with stockade.Client(cluster.address, timeout=10) as client:
        children = {client.submit(os.getpid).result(RESULT_TIMEOUT) for _ in range(8)}
    assert children and os.getpid() not in children
    cluster.close()
    left = poll(lambda: [p for p in children if alive(p)], lambda pids: not pids, 30)
    assert left == [], f"Python children of a closed cluster still run: {left}"
