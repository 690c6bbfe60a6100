"""WebAssembly tasks on a real cluster: results through Client.submit, joblib and the
CLI; each sandbox limit gives its precise error and the worker lives on."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from joblib import Parallel, delayed, parallel_backend

import stockade

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GUESTS = os.environ.get("STOCKADE_TEST_GUESTS") or os.path.join(ROOT, "target", "guests", "wasm32-wasip1", "release")
RESULT_TIMEOUT = 60


def guest(name: str) -> str:
    path = os.path.join(GUESTS, f"{name}.wasm")
    assert os.path.exists(path), f"{path} is missing: run `just guests` (`just test` does)"
    return path


@pytest.fixture(scope="module")
def fixtures():
    return stockade.wasm.Module(guest("fixtures"))


def test_a_task_runs_in_the_sandbox_through_submit_and_joblib(client, fixtures):
    echo = fixtures.task("echo")
    assert client.submit(echo, {"a": [1, 2.5, "x"]}).result(RESULT_TIMEOUT) == {"a": [1, 2.5, "x"]}
    with parallel_backend("stockade", client=client):
        out = Parallel(n_jobs=2)(delayed(echo)(i) for i in range(50))
    assert out == list(range(50))


def test_the_ridge_search_matches_scikit_learn():
    out = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "wasm_search.py"), "--module", guest("ridge")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "largest difference from scikit-learn" in out.stdout


@pytest.mark.parametrize("task, arg, error, text", [
    ("panic", "the guest gave up", stockade.wasm.Trap, "the guest gave up"),
    ("fail", "bad input", stockade.wasm.TaskFailed, "bad input"),
    ("grow", None, stockade.wasm.MemoryLimit, "memory"),
    ("recurse", 10_000_000, stockade.wasm.Trap, "stack"),
    ("nonexistent", None, stockade.wasm.NoSuchTask, "echo"),
])
def test_each_failure_gives_its_precise_error_and_the_worker_lives_on(client, fixtures, task, arg, error, text):
    with pytest.raises(error, match=text):
        client.submit(fixtures.task(task), arg).result(RESULT_TIMEOUT)
    assert client.submit(fixtures.task("echo"), "still here").result(RESULT_TIMEOUT) == "still here"


def test_an_endless_task_times_out(make_cluster, fixtures):
    cluster = make_cluster(n_workers=1, worker_args=("--wasm-timeout", "1"))
    with stockade.Client(scheduler_file=cluster.scheduler_file) as c:
        with pytest.raises(stockade.wasm.Timeout):
            c.submit(fixtures.task("spin"), None).result(RESULT_TIMEOUT)
        assert c.submit(fixtures.task("spin"), 1000).result(RESULT_TIMEOUT) >= 0


def test_a_module_that_does_not_validate_is_a_bad_module(client):
    bad = stockade.wasm.Module(b"\0asm\x01\0\0\0 this is not wasm")
    with pytest.raises(stockade.wasm.BadModule):
        client.submit(bad.task("noop"), None).result(RESULT_TIMEOUT)


def test_the_files_and_the_network_are_out_of_reach(client, fixtures):
    with pytest.raises(stockade.wasm.TaskFailed):
        client.submit(fixtures.task("read_file"), "/etc/passwd").result(RESULT_TIMEOUT)
    with pytest.raises(stockade.wasm.TaskFailed):
        client.submit(fixtures.task("connect"), "127.0.0.1:22").result(RESULT_TIMEOUT)


def test_stockade_run_prints_the_output(cluster):
    out = subprocess.run(
        [sys.executable, "-m", "stockade", "run", guest("fixtures"), "echo", "--input", "-",
         "--scheduler-file", cluster.scheduler_file],
        input=json.dumps({"hello": "sandbox"}), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"hello": "sandbox"}
