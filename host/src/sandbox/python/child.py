"""Stockade's CPython child: runs pickled callables sent by its worker.

The worker starts this script with the configured interpreter and talks to it over a
private pipe pair: the original stdin and stdout. User code's prints go to stderr (the
worker's log), never into the protocol.

Frames are a little-endian u32 length and that many bytes.
- First, the child sends a JSON hello: python and cloudpickle versions, pid.
- Each request is one frame: a u32 length and that many bytes of JSON object update
  ({"pins": {KEY: {"path", "pickle": [offset, length], "buffers": [[offset, length],
  ...]}}, "forget": [KEY, ...]}; length 0 when there is none), then the task: an
  optional version header line `stockade:python=MAJOR.MINOR;cloudpickle=VERSION\n`
  written by the client, then a cloudpickle of a zero-argument callable. A request
  with no task only applies the update. The pickle refers to pinned objects as calls
  of the global `stockade._scatter._pinned_object` with KEY, or by persistent id
  ("stockade/pin", KEY); the child maps the object's file read-only once and rebuilds
  the object over the mapping (numpy arrays without a copy).
- Each answer is one frame: a status byte, then
    0: cloudpickle of the result,
    1: cloudpickle of a dict describing the exception: "exception" (its own pickle, or
       None), "type" (the class, or None), "args", "state" (its picklable attributes,
       each pickled alone), "name", "message" and "traceback" (the remote traceback
       text). The caller rebuilds the exception from class, args and state, which
       undoes what an __init__ did to its arguments, and uses the pickle only for
       classes that define their own __reduce__.
    2: UTF-8 text: the request was refused (versions differ), nothing ran.
    3: empty: the update of a request without a task was applied.
"""

import io
import json
import mmap
import os
import pickle
import signal
import struct
import sys
import traceback

import cloudpickle

OK, RAISED, REFUSED, DONE = 0, 1, 2, 3
HEADER = b"stockade:"
PIN = "stockade/pin"
# The client's stand-in for a pinned object: a call of this global with the key.
PIN_MODULE, PIN_GLOBAL = "stockade._scatter", "_pinned_object"


def _read_exact(stream, n):
    chunks = []
    while n:
        chunk = stream.read(n)
        if not chunk:
            return None
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write(stream, status, body):
    header = struct.pack("<IB", len(body) + 1, status)
    if len(body) < 65536:  # one write, one wake-up of the worker
        stream.write(header + body)
    else:
        stream.write(header)
        stream.write(body)
    stream.flush()


def _dumps_or_none(obj):
    try:
        return cloudpickle.dumps(obj)
    except Exception:
        return None


def _dumps_result(result):
    """Plain pickle when it can (a tenth of cloudpickle's cost for a small result: it
    identifies every global it saves, so nothing goes by reference wrongly); cloudpickle
    for what only it can pickle (lambdas, classes sent by value, ...)."""
    try:
        return pickle.dumps(result, protocol=cloudpickle.DEFAULT_PROTOCOL)
    except Exception:  # noqa: BLE001 - any failure: cloudpickle decides
        return cloudpickle.dumps(result)


def _error_payload(exc):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    exc.__traceback__ = None  # frames do not pickle; the text above carries them
    return cloudpickle.dumps({
        "exception": _dumps_or_none(exc),
        "type": _dumps_or_none(type(exc)),
        "args": _dumps_or_none(exc.args),
        # Attribute by attribute, so one unpicklable attribute loses only itself.
        "state": {k: b for k, v in getattr(exc, "__dict__", {}).items() if (b := _dumps_or_none(v)) is not None},
        "name": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "traceback": tb,
    })


def _check_header(request, start, ours):
    """Splits off the client's version header of the task at `start` of `request`;
    returns (pickle bytes, refusal or None), copying the pickle once."""
    if not request.startswith(HEADER, start):
        return request[start:], None
    end = request.find(b"\n", start, start + 256)
    if end < 0:
        return None, "malformed version header"
    theirs = request[start + len(HEADER):end].decode("utf-8", "replace")
    if theirs != ours:
        return None, (
            f"version mismatch: the client has {theirs}, this worker's Python has {ours}; "
            "hint: run workers with --python pointing to an environment with the client's "
            "Python minor version and cloudpickle version"
        )
    return request[end + 1:], None


class Objects:
    """Pinned objects this child may read: locations, mappings, rebuilt objects."""

    def __init__(self):
        self.locations = {}
        self.loaded = {}

    def update(self, raw):
        if not raw:
            return
        update = json.loads(raw)
        for key in update.get("forget", ()):
            self.locations.pop(key, None)
            # The mapping closes when the last object built over it is collected.
            self.loaded.pop(key, None)
        self.locations.update(update.get("pins", {}))

    def get(self, key):
        obj = self.loaded.get(key)
        if obj is not None:
            return obj[0]
        where = self.locations.get(key)
        if where is None:
            raise pickle.UnpicklingError(f"pinned object {key} is not known to this worker")
        with open(where["path"], "rb") as f:
            view = memoryview(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        start, length = where["pickle"]
        buffers = [view[o:o + n] for o, n in where["buffers"]]
        value = pickle.loads(view[start:start + length], buffers=buffers)
        self.loaded[key] = (value,)
        return value


OBJECTS = Objects()


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == PIN_MODULE and name == PIN_GLOBAL:
            return OBJECTS.get
        return super().find_class(module, name)

    def persistent_load(self, pid):
        if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == PIN:
            return OBJECTS.get(pid[1])
        raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")


def _loads(payload):
    return _Unpickler(io.BytesIO(payload)).load()


_nested_registered = False


def _register_nested_backend():
    """Inside a task, `backend="stockade"` means: run the nested call here, on threads.

    The task already holds one of the cluster's slots; sending nested batches back to
    the cluster could wait on slots held by the callers themselves. joblib's own rule
    for nested calls is the same (threads at the first level). Registered once joblib
    is imported, which unpickling a joblib batch does.
    """
    global _nested_registered
    if _nested_registered or "joblib" not in sys.modules:
        return
    from joblib import register_parallel_backend
    from joblib.parallel import ThreadingBackend

    register_parallel_backend("stockade", ThreadingBackend)
    _nested_registered = True


def main():
    # Ctrl-C on the worker's terminal reaches the whole process group; the worker
    # decides what happens to its children, so they ignore it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Buffered: a small request's length and body come in one read.
    proto_in = os.fdopen(os.dup(0), "rb", buffering=65536)
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # user prints go to the worker's log
    sys.stdout = io.TextIOWrapper(os.fdopen(1, "wb"), line_buffering=True)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    hello = json.dumps({
        "python": ".".join(map(str, sys.version_info[:3])),
        "cloudpickle": cloudpickle.__version__,
        "pid": os.getpid(),
    }).encode()
    proto_out.write(struct.pack("<I", len(hello)) + hello)
    proto_out.flush()
    ours = f"python={sys.version_info[0]}.{sys.version_info[1]};cloudpickle={cloudpickle.__version__}"
    while True:
        header = _read_exact(proto_in, 4)
        if header is None:
            return
        (length,) = struct.unpack("<I", header)
        request = _read_exact(proto_in, length)
        if request is None:
            return
        (update_len,) = struct.unpack_from("<I", request)
        try:
            OBJECTS.update(request[4:4 + update_len])
        except BaseException as exc:  # noqa: BLE001 - reported like a task failure
            _write(proto_out, RAISED, _error_payload(exc))
            continue
        if len(request) == 4 + update_len:
            _write(proto_out, DONE, b"")
            continue
        payload, refusal = _check_header(request, 4 + update_len, ours)
        del request
        if refusal is not None:
            _write(proto_out, REFUSED, refusal.encode())
            continue
        try:
            func = _loads(payload)
            _register_nested_backend()
            result = func()
            body = _dumps_result(result)
        except BaseException as exc:  # noqa: BLE001 - every failure, KeyboardInterrupt too, goes to the caller
            _write(proto_out, RAISED, _error_payload(exc))
            continue
        _write(proto_out, OK, body)


if __name__ == "__main__":
    main()
