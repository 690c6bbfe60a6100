"""The joblib backend "stockade" on the shared cluster (two workers of one slot)."""

from __future__ import annotations

import json
import operator
import os
import subprocess
import sys
import textwrap
import threading
import time

import cloudpickle
import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_backend, parallel_config

import stockade
from _support import is_idle, poll, task_identity, worker_pids

MIB = 1024 * 1024


def square(x):
    return x * x


def power(base, exponent=2, *, offset=0):
    return base**exponent + offset


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"item {x} is bad")
    return x


def sleep_then_fail_on(x, bad):
    if x == bad:
        raise ValueError(f"item {x} is bad")
    time.sleep(0.05)
    return x


def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


def inner_parallel(n):
    """Runs on a worker: a nested Parallel with joblib's default backend."""
    return Parallel(n_jobs=2)(delayed(square)(i) for i in range(n))


def big_array(n_bytes):
    return np.arange(n_bytes // 8, dtype=np.int64)


def big_bytes(n_bytes):
    return bytes(range(256)) * (n_bytes // 256)


def checksum(array):
    return array.shape, str(array.dtype), int(array.sum())


@pytest.fixture
def on_cluster(idle_client):
    """joblib's active backend is the shared cluster (through the session client)."""
    with parallel_config(backend="stockade", client=idle_client):
        yield idle_client


def test_results_come_back_in_order(on_cluster):
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(50)) == [i * i for i in range(50)]


def test_default_n_jobs_uses_the_cluster(on_cluster):
    assert Parallel()(delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]


def test_lambdas_closures_and_kwargs(on_cluster):
    factor = 3

    def closure(x):
        return x * factor

    assert Parallel(n_jobs=2)(delayed(lambda x: x + 1)(i) for i in range(5)) == [1, 2, 3, 4, 5]
    assert Parallel(n_jobs=2)(delayed(closure)(i) for i in range(5)) == [0, 3, 6, 9, 12]
    assert Parallel(n_jobs=2)(delayed(power)(i, exponent=3, offset=1) for i in range(4)) == [1, 2, 9, 28]
    assert Parallel(n_jobs=2)(delayed(power)(base=i) for i in range(4)) == [0, 1, 4, 9]


def test_tasks_run_on_the_cluster_workers(cluster, on_cluster):
    out = Parallel(n_jobs=2)(delayed(task_identity)(i) for i in range(8))
    assert [x for x, _, _ in out] == list(range(8))
    assert all(pid != os.getpid() for _, pid, _ in out)
    assert {ppid for _, _, ppid in out} <= worker_pids(cluster)


def test_scheduler_file_keyword(cluster, idle_client):
    with parallel_backend("stockade", scheduler_file=cluster.scheduler_file):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]


def test_scheduler_host_keyword(cluster, idle_client):
    # joblib's dask-style keyword: the address alone, on the scheduler's machine.
    with parallel_backend("stockade", scheduler_host=cluster.address):
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(5)) == [0, 1, 4, 9, 16]


def test_an_exception_raises_the_same_type_and_message_and_the_backend_stays_usable(on_cluster):
    with pytest.raises(ValueError) as info:
        Parallel(n_jobs=2)(delayed(fail_on)(i, 3) for i in range(10))
    assert type(info.value) is ValueError
    assert str(info.value) == "item 3 is bad"
    cause = info.value.__cause__
    assert isinstance(cause, stockade.RemoteTraceback)
    assert "in fail_on" in cause.tb
    assert 'raise ValueError(f"item {x} is bad")' in cause.tb
    # The same backend, again: no leftovers of the failed call.
    assert Parallel(n_jobs=2)(delayed(fail_on)(i, -1) for i in range(10)) == list(range(10))


def test_managed_parallel_is_reused_for_two_calls(cluster, idle_client):
    with parallel_config(backend="stockade", scheduler_file=cluster.scheduler_file):
        with Parallel(n_jobs=2) as parallel:
            first = parallel(delayed(task_identity)(i) for i in range(6))
            second = parallel(delayed(task_identity)(i) for i in range(10, 14))
    assert [x for x, _, _ in first] == list(range(6))
    assert [x for x, _, _ in second] == list(range(10, 14))
    assert {ppid for _, _, ppid in first + second} <= worker_pids(cluster)


@pytest.mark.timeout(90)
def test_managed_parallel_after_a_failed_call_returns_every_result(on_cluster):
    # After a call fails, its cancelled tasks must not leak into the next call of the
    # same Parallel object: each following call returns all its results.
    # pre_dispatch="all": joblib itself keeps the look-ahead batches of a failed call
    # (Parallel._ready_batches is never emptied) and dispatches them in the next call of
    # a reused Parallel, with loky too (5 of 20 reuses on a loaded machine). Dispatching
    # everything at once leaves no look-ahead, so only this backend's behaviour is tested.
    with Parallel(n_jobs=2, pre_dispatch="all") as parallel:
        for attempt in range(10):
            with pytest.raises(ValueError, match="item 1 is bad"):
                parallel(delayed(sleep_then_fail_on)(i, 1) for i in range(10))
            out = parallel(delayed(square)(i) for i in range(6))
            assert out == [0, 1, 4, 9, 16, 25], f"call {attempt + 1} after a failed call returned {out}"


def test_n_jobs_zero_is_rejected_like_joblib_does(on_cluster):
    with pytest.raises(ValueError, match="n_jobs == 0 in Parallel has no meaning"):
        Parallel(n_jobs=0)(delayed(square)(i) for i in range(3))


@pytest.mark.timeout(60)
def test_generator_unordered_yields_fast_results_before_a_slow_one(on_cluster):
    # Two slots: the slow task holds one, the fast ones finish on the other. (A fast task
    # may queue behind the slow one on its worker, so only the first result is certain.)
    tasks = [delayed(sleep_then)(3, "slow"), delayed(sleep_then)(0, "fast1"), delayed(sleep_then)(0, "fast2")]
    out = list(Parallel(n_jobs=2, return_as="generator_unordered")(tasks))
    assert sorted(out) == ["fast1", "fast2", "slow"]
    assert out[0] in {"fast1", "fast2"}


def test_generator_yields_in_order(on_cluster):
    gen = Parallel(n_jobs=2, return_as="generator")(delayed(square)(i) for i in range(20))
    assert not isinstance(gen, list)
    assert list(gen) == [i * i for i in range(20)]


@pytest.mark.timeout(90)
def test_a_failing_first_task_raises_promptly_and_the_rest_is_cancelled(on_cluster):
    # Each sleeper would hold a slot for 30 s; the error and the clean-up must come first.
    tasks = [delayed(operator.add)("a", 1)] + [delayed(time.sleep)(30)] * 10
    start = time.monotonic()
    with pytest.raises(TypeError) as info:
        Parallel(n_jobs=2)(tasks)
    assert str(info.value) == 'can only concatenate str (not "int") to str'
    assert time.monotonic() - start < 20
    info = poll(on_cluster.scheduler_info, is_idle, 10)
    assert is_idle(info), info
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_nested_parallel_inside_a_task(on_cluster):
    out = Parallel(n_jobs=2)(delayed(inner_parallel)(n) for n in [1, 3, 5])
    assert out == [[0], [0, 1, 4], [0, 1, 4, 9, 16]]


@pytest.mark.timeout(90)
def test_a_30_mib_array_result_comes_back_intact(on_cluster):
    (out,) = Parallel(n_jobs=2)([delayed(big_array)(30 * MIB)])
    assert out.dtype == np.int64
    assert out.nbytes == 30 * MIB
    np.testing.assert_array_equal(out, np.arange(30 * MIB // 8, dtype=np.int64))


@pytest.mark.timeout(90)
def test_a_30_mib_bytes_result_comes_back_intact(on_cluster):
    (out,) = Parallel(n_jobs=2)([delayed(big_bytes)(30 * MIB)])
    assert len(out) == 30 * MIB
    assert out == bytes(range(256)) * (30 * MIB // 256)


@pytest.mark.timeout(90)
def test_a_30_mib_argument_arrives_intact(on_cluster):
    array = np.arange(30 * MIB // 8, dtype=np.int64)
    (out,) = Parallel(n_jobs=2)([delayed(checksum)(array)])
    assert out == (array.shape, "int64", int(array.sum()))


def test_an_unpicklable_result_raises_the_pickling_error(on_cluster):
    with pytest.raises(TypeError) as local:
        cloudpickle.dumps(threading.Lock())
    with pytest.raises(TypeError) as remote:
        Parallel(n_jobs=2)(delayed(threading.Lock)() for _ in range(2))
    assert str(remote.value) == str(local.value) == "cannot pickle '_thread.lock' object"
    assert isinstance(remote.value.__cause__, stockade.RemoteTraceback)
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_an_unpicklable_argument_raises_the_pickling_error(on_cluster):
    with pytest.raises(TypeError, match="cannot pickle '_thread.lock' object"):
        Parallel(n_jobs=2)(delayed(id)(threading.Lock()) for _ in range(2))
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(3)) == [0, 1, 4]


CHANGED_GLOBAL_SCRIPT = textwrap.dedent(
    """
    import json
    import sys

    from joblib import Parallel, delayed, parallel_config

    import stockade

    SCALE = 1


    def scaled(x):
        return x * SCALE


    if __name__ == "__main__":
        out = {}
        with parallel_config(backend="stockade", scheduler_file=sys.argv[1]):
            out["first"] = Parallel(n_jobs=2)(delayed(scaled)(i) for i in range(6))
            SCALE = 10
            out["second"] = Parallel(n_jobs=2)(delayed(scaled)(i) for i in range(6))
            with Parallel(n_jobs=2) as parallel:
                SCALE = 100
                out["managed_first"] = parallel(delayed(scaled)(i) for i in range(6))
                SCALE = 1000
                out["managed_second"] = parallel(delayed(scaled)(i) for i in range(6))
        print(json.dumps(out))
    """
)


@pytest.mark.timeout(120)
def test_a_changed_global_of_main_is_seen_by_the_next_call(cluster, idle_client, tmp_path):
    # Functions of __main__ (scripts, notebooks) travel by value with the globals they
    # read; the warm children must not keep the previous call's values.
    script = tmp_path / "changed_global.py"
    script.write_text(CHANGED_GLOBAL_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), cluster.scheduler_file],
        capture_output=True, text=True, timeout=100, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out == {
        "first": [0, 1, 2, 3, 4, 5],
        "second": [0, 10, 20, 30, 40, 50],
        "managed_first": [0, 100, 200, 300, 400, 500],
        "managed_second": [0, 1000, 2000, 3000, 4000, 5000],
    }


def nested_by_name(n):
    # Inside a task, the backend named "stockade" runs the nested call in the task's
    # own process, on threads; the caller's process id shows where it ran.
    inner = Parallel(n_jobs=2, backend="stockade")(delayed(os.getpid)() for _ in range(4))
    return os.getpid(), inner, sum(Parallel(n_jobs=2, backend="stockade")(delayed(abs)(-i) for i in range(n)))


def test_nested_parallel_naming_the_stockade_backend_runs_inside_the_task(on_cluster):
    out = Parallel(n_jobs=2)(delayed(nested_by_name)(n) for n in (3, 5))
    for (pid, inner_pids, total), n in zip(out, (3, 5)):
        assert inner_pids == [pid] * 4
        assert total == sum(range(n))
