"""The backend with no address: an embedded local cluster, started once per process."""

from __future__ import annotations

import multiprocessing
import os

import pytest
from joblib import Parallel, delayed, parallel_config

import stockade
from _support import task_identity


@pytest.fixture(scope="module", autouse=True)
def stop_embedded_cluster_afterwards():
    yield
    # Frees the embedded cluster's processes for the rest of the session (they would
    # otherwise live until interpreter exit).
    close = getattr(stockade._backend, "_close_default", None)
    if close is not None:
        close()


def assert_ran_on_an_embedded_worker(results, expected):
    assert [x for x, _, _ in results] == expected
    for _, pid, worker_pid in results:
        assert pid != os.getpid()
        # The task ran in a Python child of the embedded cluster's worker, which runs in
        # this process.
        assert worker_pid == os.getpid()


@pytest.mark.timeout(90)
def test_parallel_config_without_an_address():
    with parallel_config(backend="stockade"):
        out = Parallel()(delayed(task_identity)(i) for i in range(8))
    assert_ran_on_an_embedded_worker(out, list(range(8)))


@pytest.mark.timeout(90)
def test_managed_parallel_with_the_backend_name():
    with Parallel(n_jobs=2, backend="stockade") as parallel:
        first = parallel(delayed(task_identity)(i) for i in range(5))
        second = parallel(delayed(task_identity)(i) for i in range(5, 9))
    assert_ran_on_an_embedded_worker(first, list(range(5)))
    assert_ran_on_an_embedded_worker(second, list(range(5, 9)))


def embedded_parallel_in_a_forked_child(n):
    """Runs in a process forked after this one started the embedded cluster."""
    with parallel_config(backend="stockade"):
        return Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(n))


@pytest.mark.timeout(120)
def test_the_embedded_backend_works_in_a_forked_child():
    # The parent starts (and keeps) the embedded cluster; a child forked afterwards
    # (multiprocessing's default start method on Linux) uses the backend too.
    with parallel_config(backend="stockade"):
        assert Parallel()(delayed(abs)(-i) for i in range(3)) == [0, 1, 2]
    with multiprocessing.get_context("fork").Pool(1) as pool:
        pending = pool.apply_async(embedded_parallel_in_a_forked_child, (4,))
        try:
            value = pending.get(timeout=60)
        except multiprocessing.TimeoutError:
            pytest.fail("the forked child's Parallel did not return within 60 s")
    assert value == [0, 1, 2, 3]
