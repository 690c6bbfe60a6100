"""Stockade's CPython child: runs pickled callables sent by its worker.

The worker starts this script with the configured interpreter and talks to it over a
private pipe pair: the original stdin and stdout. User code's prints go to stderr (the
worker's log), never into the protocol.

Frames are a little-endian u32 length and that many bytes.
- First, the child sends a JSON hello: python and cloudpickle versions, pid.
- Each request is one frame: a cloudpickle of a zero-argument callable.
- Each answer is one frame: a status byte, then
    0: cloudpickle of the result,
    1: pickle of (exception or None, type name, message, remote traceback text).
"""

import io
import json
import os
import struct
import sys
import traceback

import cloudpickle

OK, RAISED = 0, 1


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
    stream.write(struct.pack("<IB", len(body) + 1, status))
    stream.write(body)
    stream.flush()


def _error_payload(exc):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    name = f"{type(exc).__module__}.{type(exc).__qualname__}"
    message = str(exc)
    try:
        return cloudpickle.dumps((exc, name, message, tb))
    except Exception:  # the exception itself does not pickle: send its description
        return cloudpickle.dumps((None, name, message, tb))


def main():
    proto_in = os.fdopen(os.dup(0), "rb", buffering=0)
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
    while True:
        header = _read_exact(proto_in, 4)
        if header is None:
            return
        (length,) = struct.unpack("<I", header)
        payload = _read_exact(proto_in, length)
        if payload is None:
            return
        try:
            func = cloudpickle.loads(payload)
            result = func()
            body = cloudpickle.dumps(result)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure goes to the caller
            _write(proto_out, RAISED, _error_payload(exc))
            continue
        _write(proto_out, OK, body)


if __name__ == "__main__":
    main()
