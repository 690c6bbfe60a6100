"""A task's exception reaches the caller with its own type, message and attributes,
including exception classes whose ``__init__`` does not take their ``args``."""

from __future__ import annotations

import json
import subprocess
import threading

import pytest
from joblib import Parallel, delayed, parallel_config

import stockade

RESULT_TIMEOUT = 30


class PlainError(Exception):
    pass


class TwoArgError(Exception):
    """Two required arguments, only the first passed to Exception."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class FormattedError(Exception):
    """The message is built from the argument: args differ from __init__'s parameters."""

    def __init__(self, code):
        super().__init__(f"error code {code}")
        self.code = code


class KeywordOnlyError(Exception):
    def __init__(self, message, *, code=0):
        super().__init__(message)
        self.code = code


class NoSuperInitError(Exception):
    """Never calls Exception.__init__; has its own __str__."""

    def __init__(self, a, b):
        self.a = a
        self.b = b

    def __str__(self):
        return f"{self.a}/{self.b}"


def open_missing_file():
    open("/nonexistent-stockade-test/file.txt")


def decode_bad_utf8():
    b"\xff".decode("utf-8")


def import_missing_module():
    import stockade_test_no_such_module  # noqa: F401


def run_false():
    import subprocess

    subprocess.run(["false"], check=True)


def parse_bad_json():
    import json

    json.loads("{")


# name -> (callable run on the worker that raises or returns the exception,
#          expected type, expected str, expected attributes)
CASES = {
    "plain": (lambda: PlainError("plain message"), PlainError, "plain message", {}),
    "builtin_key_error": (lambda: KeyError("missing"), KeyError, "'missing'", {}),
    "two_required_args": (lambda: TwoArgError("boom", 7), TwoArgError, "boom", {"code": 7}),
    "formatted_message": (lambda: FormattedError(7), FormattedError, "error code 7", {"code": 7}),
    "keyword_only_arg": (lambda: KeywordOnlyError("boom", code=5), KeywordOnlyError, "boom", {"code": 5}),
    "no_super_init": (lambda: NoSuperInitError(1, 2), NoSuperInitError, "1/2", {"a": 1, "b": 2}),
    # Built-in exceptions whose fields are set by their C-level __init__.
    "file_not_found": (
        open_missing_file, FileNotFoundError,
        "[Errno 2] No such file or directory: '/nonexistent-stockade-test/file.txt'",
        {"errno": 2, "filename": "/nonexistent-stockade-test/file.txt"},
    ),
    "unicode_decode": (
        decode_bad_utf8, UnicodeDecodeError,
        "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
        {"encoding": "utf-8", "object": b"\xff", "start": 0, "end": 1, "reason": "invalid start byte"},
    ),
    "module_not_found": (
        import_missing_module, ModuleNotFoundError,
        "No module named 'stockade_test_no_such_module'", {"name": "stockade_test_no_such_module"},
    ),
    "stop_iteration": (lambda: StopIteration(5), StopIteration, "5", {"value": 5}),
    "system_exit": (lambda: SystemExit(3), SystemExit, "3", {"code": 3}),
    # Python-level exceptions of the standard library with their own __init__.
    "called_process_error": (
        run_false, subprocess.CalledProcessError,
        "Command '['false']' returned non-zero exit status 1.", {"returncode": 1, "cmd": ["false"]},
    ),
    "json_decode_error": (
        parse_bad_json, json.JSONDecodeError,
        "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        {"msg": "Expecting property name enclosed in double quotes", "pos": 1, "lineno": 1, "colno": 2},
    ),
}


def noted_error():
    exc = PlainError("with a note")
    exc.add_note("extra context")
    return exc


CASES["with_note"] = (noted_error, PlainError, "with a note", {"__notes__": ["extra context"]})


def raise_case(name):
    exc = CASES[name][0]()
    raise exc


def ok_or_raise(x, name):
    if x == 2:
        raise_case(name)
    return x


def check(exc: BaseException, name: str) -> None:
    _, expected_type, expected_str, attributes = CASES[name]
    assert type(exc) is expected_type, f"{type(exc).__name__}: {exc}"
    assert str(exc) == expected_str
    for attr, value in attributes.items():
        assert getattr(exc, attr) == value
    assert isinstance(exc.__cause__, stockade.RemoteTraceback)
    assert "in raise_case" in exc.__cause__.tb
    assert expected_type.__name__ in exc.__cause__.tb


@pytest.mark.parametrize("name", CASES)
def test_client_future_reraises_the_task_exception(name, idle_client):
    future = idle_client.submit(raise_case, name)
    with pytest.raises(BaseException) as info:
        future.result(RESULT_TIMEOUT)
    check(info.value, name)


# joblib itself turns a StopIteration into "RuntimeError: generator raised StopIteration"
# (PEP 479), with every backend.
PARALLEL_CASES = [name for name in CASES if name != "stop_iteration"]


@pytest.mark.parametrize("name", PARALLEL_CASES)
def test_parallel_reraises_the_task_exception(name, idle_client):
    with parallel_config(backend="stockade", client=idle_client):
        with pytest.raises(BaseException) as info:
            Parallel(n_jobs=2)(delayed(ok_or_raise)(i, name) for i in range(6))
        check(info.value, name)
        assert Parallel(n_jobs=2)(delayed(ok_or_raise)(i, name) for i in [0, 1, 3]) == [0, 1, 3]


class UnpicklableStateError(Exception):
    """The exception pickles badly: one of its attributes cannot travel."""

    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable_state():
    raise UnpicklableStateError("cannot travel")


def test_an_exception_with_unpicklable_state_keeps_its_type_and_message(idle_client):
    future = idle_client.submit(raise_unpicklable_state)
    with pytest.raises(Exception) as info:
        future.result(RESULT_TIMEOUT)
    assert type(info.value) is UnpicklableStateError, f"{type(info.value).__name__}: {info.value}"
    assert str(info.value) == "cannot travel"
    assert isinstance(info.value.__cause__, stockade.RemoteTraceback)
    assert "in raise_unpicklable_state" in info.value.__cause__.tb


def raise_worker_only_error():
    """Raises an exception whose class exists only in the worker's Python child."""
    import sys
    import types

    module = types.ModuleType("stockade_test_worker_only")
    exec("class WorkerOnlyError(Exception):\n    pass\n", module.__dict__)
    sys.modules[module.__name__] = module
    raise module.WorkerOnlyError("only the worker knows this class")


def test_an_exception_whose_class_is_unknown_here_is_described(idle_client):
    future = idle_client.submit(raise_worker_only_error)
    with pytest.raises(stockade.StockadeError) as info:
        future.result(RESULT_TIMEOUT)
    assert str(info.value).startswith(
        "stockade_test_worker_only.WorkerOnlyError: only the worker knows this class"
    ), str(info.value)
    assert isinstance(info.value.__cause__, stockade.RemoteTraceback)
    assert "in raise_worker_only_error" in info.value.__cause__.tb


def raise_keyboard_interrupt():
    raise KeyboardInterrupt


@pytest.mark.timeout(60)
def test_keyboard_interrupt_raised_by_a_task_is_reraised(idle_client):
    # As joblib's process backends do (joblib's test_error_capture): the task raised it,
    # so the caller gets it; the task is not treated as a crashed process and re-run.
    with pytest.raises(KeyboardInterrupt):
        idle_client.submit(raise_keyboard_interrupt).result(RESULT_TIMEOUT)


def test_an_exception_class_defined_in_a_test_function_comes_back_as_itself(idle_client):
    # cloudpickle sends the class by value and maps it back to this very class.
    class LocalError(Exception):
        def __init__(self, what, code):
            super().__init__(f"{what} failed")
            self.code = code

    def raise_local():
        raise LocalError("step", 3)

    with pytest.raises(LocalError) as info:
        idle_client.submit(raise_local).result(RESULT_TIMEOUT)
    assert type(info.value) is LocalError
    assert str(info.value) == "step failed"
    assert info.value.code == 3
