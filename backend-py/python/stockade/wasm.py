"""WebAssembly tasks: functions of a guest module (``stockade_guest``) run on workers in
wasmtime sandboxes, with no file system, network or environment, bounded memory and
time.

    mod = stockade.wasm.Module("examples/guests/ridge.wasm")
    fit = mod.task("fit_score")
    client.submit(fit, {"alpha": 1.0}).result()
    with parallel_backend("stockade"):
        Parallel()(delayed(fit)({"alpha": a}) for a in alphas)

A task's input is JSON: the one positional argument, or the keyword arguments as an
object. A ``stockade.Pinned`` reference (``Client.scatter``) anywhere in the input is
sent as its key (64 hex digits), which the guest opens with
``stockade_guest::pinned``. The output is the task's JSON output, decoded.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from typing import Any

from ._errors import BadModule, MemoryLimit, NoSuchTask, StockadeError, TaskTimeout, Trap, WasmTaskFailed
from ._scatter import Pinned

#: A task that ran past its wall-time limit.
Timeout = TaskTimeout
#: A task that returned ``Err``.
TaskFailed = WasmTaskFailed

__all__ = ["Module", "Task", "Trap", "Timeout", "MemoryLimit", "BadModule", "NoSuchTask", "TaskFailed"]


class Module:
    """A WebAssembly module, from a path or bytes. It is uploaded to the cluster once
    per client (pinned by content hash) and compiled once per worker."""

    def __init__(self, path_or_bytes: str | os.PathLike | bytes):
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            self.data = bytes(path_or_bytes)
            self.name = "<bytes>"
        else:
            with open(path_or_bytes, "rb") as f:
                self.data = f.read()
            self.name = os.fspath(path_or_bytes)
        self.digest = hashlib.sha256(self.data).hexdigest()

    def task(self, name: str) -> "Task":
        """The module's task ``name`` as a callable for ``delayed`` and ``Client.submit``."""
        return Task(self, name)

    def __repr__(self) -> str:
        return f"<stockade.wasm.Module {self.name} ({len(self.data)} bytes)>"


class Task:
    """One task of a module. Calling it directly is an error: it runs on a cluster."""

    def __init__(self, module: Module, name: str):
        self.module = module
        self.name = name

    def encode(self, args: tuple, kwargs: dict) -> tuple[bytes, list[bytes]]:
        """The JSON input for a call, and the keys of the pinned objects it names."""
        if args and kwargs:
            raise TypeError("a WebAssembly task takes one positional argument or keyword arguments, not both")
        if len(args) > 1:
            raise TypeError(f"a WebAssembly task takes one input, got {len(args)} positional arguments")
        value = args[0] if args else kwargs
        needs: list[bytes] = []

        def default(obj):
            if isinstance(obj, Pinned):
                needs.append(obj.key)
                return obj.key.hex()
            np = sys.modules.get("numpy")
            if np is not None:
                if isinstance(obj, np.generic):
                    return obj.item()
                if isinstance(obj, np.ndarray):
                    return obj.tolist()
            raise TypeError(f"{type(obj).__name__} is not JSON: pass numbers, strings, lists, dicts or stockade.Pinned")

        return json.dumps(value, default=default).encode(), needs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise StockadeError(
            f"the WebAssembly task {self.name!r} runs on a Stockade cluster: call it through "
            "Client.submit or under joblib's 'stockade' backend"
        )

    def __reduce__(self):
        raise StockadeError("a WebAssembly task is sent as a module and a name, not pickled")

    def __repr__(self) -> str:
        return f"<stockade.wasm.Task {self.name} of {self.module.name}>"


def decode(data: bytes) -> Any:
    """A task's JSON output."""
    return json.loads(data) if data else None
