"""Scatter: pinned objects give the same results as unpinned ones, travel once per
worker, are read without copies, follow workers that join later, and go away with
their session."""

from __future__ import annotations

import functools
import gc

import numpy as np
import pandas as pd
import pytest
from joblib import Parallel, delayed, parallel_backend

import stockade
from _support import poll

RESULT_TIMEOUT = 60


def column_sum(x, j):
    return float(x[:, j].sum())


def describe(obj):
    """What a task sees of an argument: its type and, for arrays, whether it came from
    shared memory (rebuilt over a read-only mapping)."""
    if isinstance(obj, np.ndarray):
        return ("ndarray", bool(obj.flags.writeable), float(obj.sum()))
    if isinstance(obj, pd.DataFrame):
        return ("DataFrame", list(obj.columns), float(obj.to_numpy().sum()))
    return (type(obj).__name__, obj)


def nested(args):
    return [describe(a) for a in args["items"]]


def anonymous_kib():
    """Anonymous (private, not file-backed) resident memory of this process."""
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                return int(line.split()[1])
    raise AssertionError("no Anonymous line in smaps_rollup")


def touch_and_measure(x, j):
    before = anonymous_kib()
    total = float(x[:, j].sum()) + float(x.sum())  # reads every page of x
    import os
    return os.getpid(), before, anonymous_kib(), total


def pinned_keys(client):
    return {p["key"] for p in client.scheduler_info()["pinned"]}


def assert_released(client, keys):
    """The backend's automatic pins go with it (once it is collected)."""
    gc.collect()
    left = poll(lambda: pinned_keys(client), lambda k: not (k & keys), timeout=10)
    assert not (left & keys), f"pins left after the backend went: {left & keys}"


def test_scattered_objects_give_the_same_results(idle_client):
    rng = np.random.default_rng(0)
    arr = rng.random((300, 40))
    frame = pd.DataFrame({"a": np.arange(1000.0), "b": np.ones(1000)})
    plain = {"weights": [1, 2, 3], "name": "model"}
    refs = [idle_client.scatter(o) for o in (arr, frame, plain)]
    try:
        got = [f.result(RESULT_TIMEOUT) for f in (idle_client.submit(describe, r) for r in refs)]
        want = [describe(o) for o in (arr, frame, plain)]
        # Same values; the array arrives read-only from shared memory.
        assert got[0] == ("ndarray", False, want[0][2])
        assert got[1] == want[1]
        assert got[2] == want[2]
        keys = {r.key.hex() for r in refs}
        assert keys <= pinned_keys(idle_client)
    finally:
        idle_client.release(*refs)
    left = poll(lambda: pinned_keys(idle_client), lambda k: not (k & keys), timeout=10)
    assert not (left & keys), "released pins are gone"


def test_a_scattered_object_nested_in_arguments_is_sent_by_key(idle_client):
    arr = np.arange(50_000.0)
    ref = idle_client.scatter(arr)
    try:
        got = idle_client.submit(nested, {"items": [ref, 3, {"x": 1}]}).result(RESULT_TIMEOUT)
        assert got == [("ndarray", False, float(arr.sum())), ("int", 3), ("dict", {"x": 1})]
        # Under the backend, the scattered object is replaced wherever it sits.
        with parallel_backend("stockade", client=idle_client, scatter=[arr], auto_scatter=None):
            out = Parallel(n_jobs=2)(delayed(nested)({"items": [arr]}) for _ in range(4))
        assert out == [[("ndarray", False, float(arr.sum()))]] * 4
    finally:
        idle_client.release(ref)


def test_task_pickles_carry_pinned_objects_of_every_type_by_key(idle_client):
    """Arrays and frames go by key through reducer_override; a pinned list or dict,
    which pickle saves without asking it, through persistent_id."""
    from stockade._scatter import ObjectSession

    objects = [np.arange(100_000.0), pd.DataFrame({"a": np.arange(50_000.0)}),
               list(range(100_000)), {"weights": list(range(100_000))}]
    session = ObjectSession(idle_client, auto_threshold=None)
    try:
        for obj in objects:
            ref = session.scatter(obj)
            data, needs = session.dumps(functools.partial(describe, obj))
            assert needs == [ref.key] and len(data) < 4096, (type(obj), len(data))
            got = idle_client.submit_pickled([data], [needs])[0].result(RESULT_TIMEOUT)
            want = describe(obj)
            assert got == (("ndarray", False, want[2]) if isinstance(obj, np.ndarray) else want)
    finally:
        session.release()


def test_functions_go_by_value_once_their_module_is_registered_so():
    """The pickler remembers what cloudpickle pickles by reference, but not past a
    ``register_pickle_by_value``."""
    import pickle
    import sys
    import types

    import cloudpickle
    from stockade._scatter import ObjectSession

    name = "stockade_test_by_value"
    module = types.ModuleType(name)
    exec("def answer():\n    return 41\n\nclass Box:\n    pass\n", module.__dict__)
    sys.modules[name] = module
    session = ObjectSession(None, auto_threshold=None)
    try:
        for _ in range(2):  # the second time from the cache
            by_reference, _ = session.dumps((module.answer, module.Box))
            assert pickle.loads(by_reference) == (module.answer, module.Box)
        cloudpickle.register_pickle_by_value(module)
        try:
            by_value, _ = session.dumps((module.answer, module.Box))
        finally:
            cloudpickle.unregister_pickle_by_value(module)
    finally:
        del sys.modules[name]
    answer, box = pickle.loads(by_value)  # the module is gone: only by value loads
    assert answer() == 41 and box.__name__ == "Box"
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(by_reference)


def test_large_arrays_are_scattered_automatically_once(idle_client):
    big = np.ones((512, 1024))  # 4 MiB: over the 1 MiB default
    with parallel_backend("stockade", client=idle_client):
        before = pinned_keys(idle_client)
        out = Parallel(n_jobs=2)(delayed(column_sum)(big, j) for j in range(20))
        during = pinned_keys(idle_client) - before
        assert out == [512.0] * 20
        assert len(during) == 1, f"one pin for one array, got {during}"
        Parallel(n_jobs=2)(delayed(column_sum)(big, j) for j in range(5))
        assert pinned_keys(idle_client) - before == during, "reused, not pinned again"
    assert_released(idle_client, during)


def test_the_backends_pins_go_at_the_end_of_its_with_block_without_a_collection(idle_client):
    """joblib's Parallel and the backend refer to each other during a call; the backend
    lets go when the call ends, so its pins do not wait for the garbage collector."""
    big = np.ones((512, 1024))
    before = pinned_keys(idle_client)
    gc.disable()
    try:
        with parallel_backend("stockade", client=idle_client, scatter=[big]):
            assert Parallel(n_jobs=2, batch_size=1)(delayed(column_sum)(big, j) for j in range(50)) == [512.0] * 50
            during = pinned_keys(idle_client) - before
        assert len(during) == 1
        left = poll(lambda: pinned_keys(idle_client), lambda k: not (k & during), timeout=10)
        assert not (left & during), "the pin outlived its with block"
    finally:
        gc.enable()


def test_mid_sized_arrays_are_scattered_from_their_second_use(idle_client):
    mid = np.ones((100, 128))  # 100 KiB: under 1 MiB, over the 64 KiB reuse threshold
    once = np.full((100, 128), 2.0)
    small = np.ones((10, 10))
    with parallel_backend("stockade", client=idle_client):
        before = pinned_keys(idle_client)
        assert Parallel(n_jobs=2)([delayed(column_sum)(mid, 0), delayed(column_sum)(once, 0)]) == [100.0, 200.0]
        assert pinned_keys(idle_client) - before == set(), "a first use travels inline"
        out = Parallel(n_jobs=2)(delayed(column_sum)(mid, j) for j in range(10))
        assert out == [100.0] * 10
        pinned = pinned_keys(idle_client) - before
        assert len(pinned) == 1, f"the reused array is pinned once, got {pinned}"
        Parallel(n_jobs=2)(delayed(column_sum)(small, j) for j in range(10))
        assert pinned_keys(idle_client) - before == pinned, "small arrays always travel inline"
    assert_released(idle_client, pinned)


def test_a_sessions_pins_are_gone_after_the_with_block(cluster, idle_client):
    x = np.random.default_rng(1).random((1000, 20))
    with parallel_backend("stockade", scheduler_host=cluster.address, scatter=[x]):
        out = Parallel()(delayed(column_sum)(x, j) for j in range(20))
        assert len(pinned_keys(idle_client)) >= 1
    assert out == pytest.approx([column_sum(x, j) for j in range(20)])
    gc.collect()
    info = poll(idle_client.scheduler_info, lambda i: not i["pinned"], timeout=10)
    assert info["pinned"] == []


@pytest.mark.timeout(240)
def test_a_100_mb_array_crosses_once_per_worker_and_is_not_copied(make_cluster):
    cluster = make_cluster(n_workers=2, separate_stores=True)
    x = np.random.default_rng(2).random((100 * 1024 * 1024 // 8 // 64, 64))  # 100 MiB
    with stockade.Client(scheduler_file=cluster.scheduler_file) as client:
        ref = client.scatter(x)
        assert ref.workers == 2
        futures = [client.submit(touch_and_measure, ref, j % 64) for j in range(40)]
        results = [f.result(RESULT_TIMEOUT) for f in futures]
        info = client.scheduler_info()
    want = float(x.sum())
    assert all(abs(r[3] - float(x[:, j % 64].sum()) - want) < 1e-6 * want for j, r in enumerate(results))
    for w in info["workers"]:
        assert ref.nbytes <= w["object_bytes_sent"] < ref.nbytes + 4096, f"{w['name']} got it once: {w}"
    # Reading every page of the pinned array grows no child's private memory by its size.
    size_kib = x.nbytes // 1024
    for pid, before, after, _ in results:
        assert after - before < size_kib // 4, f"child {pid} copied the array: +{after - before} KiB"


def test_a_worker_joining_mid_search_receives_the_pins(make_cluster):
    cluster = make_cluster(n_workers=1)
    x = np.random.default_rng(3).random((2000, 16))
    with stockade.Client(scheduler_file=cluster.scheduler_file) as client:
        with parallel_backend("stockade", client=client, scatter=[x]):
            first = Parallel()(delayed(column_sum)(x, j) for j in range(8))
            cluster.add_worker()
            info = poll(client.scheduler_info,
                        lambda i: len(i["workers"]) == 2 and all(len(p["workers"]) == 2 for p in i["pinned"]),
                        timeout=30)
            assert info["pinned"], info
            second = Parallel(n_jobs=2)(delayed(column_sum)(x, j) for j in range(16))
            ran_on = {w["name"]: w["done"] for w in client.scheduler_info()["workers"]}
    assert first + second == pytest.approx([column_sum(x, j) for j in list(range(8)) + list(range(16))])
    assert len(ran_on) == 2


def test_the_pinned_memory_limit_gives_its_error(make_cluster):
    cluster = make_cluster(n_workers=2, worker_args=("--memory-limit", "2MiB"))
    with stockade.Client(scheduler_file=cluster.scheduler_file) as client:
        with pytest.raises(stockade.PinnedMemoryExceeded, match="--memory-limit"):
            client.scatter(np.zeros(4 * 1024 * 1024 // 8))
        assert client.scheduler_info()["pinned"] == []
        small = client.scatter(np.ones(1000))
        assert client.submit(describe, small).result(RESULT_TIMEOUT) == ("ndarray", False, 1000.0)


def test_two_sessions_scattering_the_same_object_share_one_pin(cluster):
    x = np.arange(200_000.0)
    with stockade.Client(scheduler_file=cluster.scheduler_file) as a, \
            stockade.Client(scheduler_file=cluster.scheduler_file) as b:
        ra, rb = a.scatter(x), b.scatter(x)
        assert ra.key == rb.key
        pins = [p for p in a.scheduler_info()["pinned"] if p["key"] == ra.key.hex()]
        assert len(pins) == 1 and len(pins[0]["sessions"]) == 2
        assert a.submit(describe, ra).result(RESULT_TIMEOUT) == b.submit(describe, rb).result(RESULT_TIMEOUT)


def test_sklearn_with_scatter_matches_sequential(cluster):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    X, y = load_digits(return_X_y=True)
    model = SVC(gamma=0.001)
    want = cross_val_score(model, X, y, cv=4)
    with parallel_backend("stockade", scheduler_host=cluster.address, scatter=[X, y]):
        got = cross_val_score(model, X, y, cv=4, n_jobs=-1)
    np.testing.assert_array_equal(got, want)
