"""Stockade: run joblib workloads and WebAssembly tasks on a shared cluster.

``import stockade`` registers the joblib backend ``"stockade"``::

    with joblib.parallel_backend("stockade", scheduler_host="10.0.0.5:8786"):
        search.fit(X, y)

    with joblib.parallel_config(backend="stockade"):   # an embedded local cluster
        Parallel()(delayed(f)(i) for i in range(1000))
"""

from ._client import Client
from ._cluster import LocalCluster
from ._errors import (
    ConnectionLost,
    DataLost,
    PinnedMemoryExceeded,
    RemoteTraceback,
    StockadeError,
    TaskCancelled,
    TaskRejected,
    WorkerLost,
)
from ._scatter import Pinned
from ._backend import StockadeBackend, register
from . import wasm

__all__ = [
    "Client",
    "LocalCluster",
    "StockadeBackend",
    "StockadeError",
    "WorkerLost",
    "TaskCancelled",
    "TaskRejected",
    "ConnectionLost",
    "RemoteTraceback",
    "Pinned",
    "PinnedMemoryExceeded",
    "DataLost",
    "register",
    "wasm",
]

register()
