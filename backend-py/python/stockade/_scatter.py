"""Scatter: objects pinned once on every worker and referred to by key.

An object is pickled with protocol 5; its out-of-band buffers (numpy arrays, pandas
blocks, any ``PickleBuffer``) stay separate and are written, 64-byte aligned, into an
rkyv archive in shared memory (layout: ``stockade_guest::archive``), keyed by the hash
of its bytes. Task pickles then carry only the key, as a call ``_pinned_object(KEY)``
(or as a persistent id, see ``_PersistentPickler``), wherever the object sits in the
arguments; the worker's Python child maps the archive read-only and
rebuilds the object over the mapping, so numpy arrays arrive without a copy (and, as
with loky's memmaps, read-only).
"""

from __future__ import annotations

import copyreg
import ctypes
import io
import pickle
import sys
import threading
import types
import weakref
from typing import Any

import cloudpickle

from ._errors import StockadeError, error_for

PIN = "stockade/pin"

#: Arrays at least this large are scattered automatically, from their first use (bytes).
DEFAULT_AUTO_SCATTER = 1 << 20

#: Smaller arrays, down to this size, are scattered automatically from their second use
#: in a session: a scikit-learn search sends the same ``X`` with every fit, and one copy
#: per worker beats one per task (a 0.9 MB ``X`` took the example search from 91 % to
#: 96 % of its ideal time), while an array sent once still travels once, inline.
REUSE_SCATTER = 64 << 10

#: Types that CPython's pickler saves itself, without asking ``reducer_override``.
_SAVED_DIRECTLY = frozenset(
    {type(None), bool, int, float, bytes, bytearray, str, dict, set, frozenset, list, tuple, pickle.PickleBuffer}
)


class _PicklerCache:
    """What cloudpickle would work out again for every task pickle, kept across them:

    - the classes and functions it pickles by reference (by module and name), by id:
      finding that out costs a module lookup per function per task, most of the time it
      takes to pickle a small joblib batch. Valid while cloudpickle's registry of modules
      pickled by value is unchanged; bounded (the objects stay alive meanwhile, so an id
      is not reused);
    - its dispatch table as one dict rather than a ``ChainMap`` over ``copyreg``'s
      (a Python-level lookup per object), rebuilt when a reducer is registered there.
    """

    LIMIT = 4096

    def __init__(self) -> None:
        self.objects: dict[int, Any] = {}
        self.by_value: set[str] = set()
        self.dispatch: dict = {}
        self.registered = -1

    def refresh(self) -> None:
        """Brings the cache up to date (once per pickle)."""
        registry = cloudpickle.list_registry_pickle_by_value()
        if registry != self.by_value:
            self.objects = {}
            self.by_value = registry
        if len(copyreg.dispatch_table) != self.registered:
            self.registered = len(copyreg.dispatch_table)
            self.dispatch = {**copyreg.dispatch_table, **cloudpickle.Pickler._dispatch_table}

    def by_reference(self, obj: Any) -> bool:
        return self.objects.get(id(obj)) is obj

    def note_by_reference(self, obj: Any) -> None:
        objects = self.objects
        if len(objects) >= self.LIMIT:
            objects.clear()
        objects[id(obj)] = obj


_cache = _PicklerCache()


def _pinned_object(key: str) -> Any:
    """Stands for a pinned object in a task's pickle. Never called: a worker's Python
    child resolves this global to the object itself (see child.py)."""
    raise StockadeError(f"the pinned object {key[:16]} can only be read inside a Stockade worker")


class Pinned:
    """A reference to an object pinned on every worker (what ``Client.scatter``
    returns). Pass it as a task argument, anywhere inside the arguments: the task
    receives the object itself."""

    __slots__ = ("key", "nbytes", "workers", "__weakref__")

    def __init__(self, key: bytes, nbytes: int, workers: int):
        self.key = key
        self.nbytes = nbytes
        self.workers = workers

    def __repr__(self) -> str:
        return f"<stockade.Pinned {self.key.hex()[:16]} {self.nbytes} bytes on {self.workers} workers>"

    def __reduce__(self):
        raise StockadeError(
            "a stockade.Pinned reference can only be sent through the Stockade client that pinned it"
        )


def _contiguous(obj: Any) -> Any:
    """numpy hands out-of-band buffers only for contiguous arrays: make a strided view
    contiguous once, or it would silently travel in-band. C order also for Fortran-order
    arrays: the archive's shape is read row-major (e.g. by WebAssembly guests)."""
    np = sys.modules.get("numpy")
    if np is not None and isinstance(obj, np.ndarray) and not obj.flags.c_contiguous:
        return np.ascontiguousarray(obj)
    return obj


def _block(buffer: pickle.PickleBuffer, keep: list) -> tuple[tuple[int, int], str, list[int]]:
    """``((address, length), dtype, shape)`` of a buffer; what must stay alive for the
    address to stay valid goes into ``keep``. (The buffer protocol is not in the stable
    ABI the native module is built for, so addresses come from numpy, or from a bytes
    copy for other exporters.)"""
    raw = buffer.raw()
    exporter = memoryview(buffer).obj
    np = sys.modules.get("numpy")
    if np is not None:
        view = np.frombuffer(raw, dtype=np.uint8)
        keep.append(view)
        block = (view.__array_interface__["data"][0], view.nbytes)
        if isinstance(exporter, np.ndarray):
            return block, exporter.dtype.str, [int(d) for d in exporter.shape]
        return block, "", []
    data = bytes(raw)
    keep.append(data)
    return (ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value or 0, len(data)), "", []


class ObjectSession:
    """The objects a client (or one backend) pinned, by identity of the original.

    Objects are held (so identities stay valid) until :meth:`release`; a scattered
    object must not be modified in place meanwhile (the workers keep the first copy),
    as with dask's ``scatter``.
    """

    def __init__(self, client, auto_threshold: int | None = DEFAULT_AUTO_SCATTER):
        self._client = client
        self.auto_threshold = auto_threshold
        self._by_id: dict[int, tuple[Any, Pinned]] = {}
        #: Types of the objects pinned by identity (kept until release): the pickler
        #: looks up only objects of these types, and numpy arrays.
        self.types: set[type] = set()
        # Arrays sent inline once, by identity; a second use pins them.
        self._seen: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
        self._lock = threading.Lock()

    def scatter(self, obj: Any) -> Pinned:
        """Pins ``obj`` on every worker (once per session) and returns its reference."""
        if isinstance(obj, Pinned):
            return obj
        with self._lock:
            held = self._by_id.get(id(obj))
        if held is not None:
            return held[1]
        ref = self._client._pin(obj)
        with self._lock:
            if id(obj) in self._by_id:  # another thread pinned it meanwhile
                self._client._unpin([ref.key])
                return self._by_id[id(obj)][1]
            self._by_id[id(obj)] = (obj, ref)
            self.types.add(type(obj))
        return ref

    def lookup(self, obj: Any) -> Pinned | None:
        held = self._by_id.get(id(obj))
        if held is not None and held[0] is obj:
            return held[1]
        if self.auto_threshold is None:
            return None
        np = sys.modules.get("numpy")
        if np is None or type(obj) is not np.ndarray or obj.nbytes < min(REUSE_SCATTER, self.auto_threshold):
            return None
        if obj.nbytes >= self.auto_threshold:
            return self.scatter(obj)
        with self._lock:
            seen = self._seen.get(id(obj)) is obj
            if not seen:
                self._seen[id(obj)] = obj
        return self.scatter(obj) if seen else None

    def dumps(self, obj: Any) -> tuple[bytes, list[bytes]]:
        """Pickles ``obj`` (cloudpickle) with pinned objects replaced by their keys;
        returns the pickle and the keys it needs."""
        # No lock: a set operation on types runs whole under the GIL.
        saved_directly = not self.types.isdisjoint(_SAVED_DIRECTLY)
        _cache.refresh()
        f = io.BytesIO()
        pickler = (_PersistentPickler if saved_directly else _Pickler)(f, self)
        pickler.dump(obj)
        return f.getvalue(), list(pickler.needs)

    def forget(self, refs) -> None:
        """Unpins these references (if this session pinned them)."""
        keys = {r.key for r in refs}
        with self._lock:
            gone = [i for i, (_, ref) in self._by_id.items() if ref.key in keys]
            for i in gone:
                del self._by_id[i]
        if gone:
            self._client._unpin(list(keys))

    def release(self) -> None:
        """Unpins everything this session pinned."""
        with self._lock:
            keys = [ref.key for _, ref in self._by_id.values()]
            self._by_id.clear()
            self.types.clear()
            self._seen.clear()
        if keys:
            self._client._unpin(keys)


class _Pickler(cloudpickle.Pickler):
    """Pickles a task with the session's pinned objects replaced by references, through
    ``reducer_override``: pickle calls it for objects of every type but the few it saves
    directly (ints, strings, lists ...), so a batch of many small calls pays little."""

    def __init__(self, file, objects: ObjectSession):
        self.dispatch_table = _cache.dispatch  # read by pickle's own __init__
        super().__init__(file)
        self._objects = objects
        self.needs: dict[bytes, None] = {}
        np = sys.modules.get("numpy")
        self._ndarray = np.ndarray if np is not None else None

    def _pinned_key(self, obj) -> str | None:
        """The hex key ``obj`` is pinned under (noted in ``needs``), or None."""
        kind = type(obj)
        if kind is Pinned:
            ref = obj
        elif kind is not self._ndarray and kind not in self._objects.types:
            return None
        else:
            ref = self._objects.lookup(obj)
            if ref is None:
                return None
        self.needs[ref.key] = None
        return ref.key.hex()

    def reducer_override(self, obj):
        key = self._pinned_key(obj)
        if key is not None:
            return _pinned_object, (key,)
        if _cache.by_reference(obj):
            return NotImplemented
        reduced = super().reducer_override(obj)
        if reduced is NotImplemented and isinstance(obj, (type, types.FunctionType)):
            _cache.note_by_reference(obj)
        return reduced


class _PersistentPickler(_Pickler):
    """For a session that pinned an object of a type pickle saves directly (a list, a
    dict ...): ``persistent_id`` sees those too, at the price of a call per object."""

    def persistent_id(self, obj):
        key = self._pinned_key(obj)
        return None if key is None else (PIN, key)


def pin(native, obj: Any, timeout: float) -> Pinned:
    """Pickles ``obj`` with out-of-band buffers and pins it through ``native``."""
    buffers: list[pickle.PickleBuffer] = []
    data = cloudpickle.dumps(_contiguous(obj), protocol=5, buffer_callback=buffers.append)
    keep: list = []
    try:
        key, nbytes, workers = native.scatter(data, [_block(b, keep) for b in buffers], timeout)
    except RuntimeError as e:
        if len(e.args) == 2:
            raise error_for(*e.args) from None
        raise
    return Pinned(key, nbytes, workers)
