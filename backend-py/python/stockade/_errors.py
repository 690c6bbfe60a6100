"""Exceptions a task's caller can see besides the task's own."""


class StockadeError(Exception):
    """Base class of Stockade's own errors."""


class WorkerLost(StockadeError):
    """The processes running a task died ``allowed_failures`` times (a crash, kill -9,
    or a task that ended its own process)."""


class TaskCancelled(StockadeError):
    """The task was cancelled before it finished."""


class TaskRejected(StockadeError):
    """The scheduler or worker cannot run the task as submitted."""


class ConnectionLost(StockadeError):
    """The connection to the scheduler ended before the task finished."""


class PinnedMemoryExceeded(StockadeError):
    """A worker cannot pin a scattered object within its ``--memory-limit``."""


class DataLost(StockadeError):
    """A pinned object a task needs is gone (or could not be stored or sent)."""


class TaskTimeout(StockadeError, TimeoutError):
    """A task ran past its time limit (a WebAssembly task's wall-time limit)."""


class Trap(StockadeError):
    """A WebAssembly task trapped: a guest panic (the message has it), an out-of-bounds
    access, a stack overflow, or a WASI call the sandbox refused to survive."""


class MemoryLimit(StockadeError):
    """A WebAssembly task needed more memory, or produced more output, than allowed."""


class BadModule(StockadeError):
    """A WebAssembly module is invalid, or not built with the Stockade guest SDK."""


class NoSuchTask(StockadeError):
    """A WebAssembly module has no task of that name (the message lists its tasks)."""


class WasmTaskFailed(StockadeError):
    """A WebAssembly task returned an error (``Err``); the message is its text."""


class RemoteTraceback(Exception):
    """Carries the traceback text of an exception raised on a worker; it is attached as
    the ``__cause__`` of the re-raised exception, as ``concurrent.futures`` does."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


_BY_KIND = {
    "WorkerLost": WorkerLost,
    "Cancelled": TaskCancelled,
    "Rejected": TaskRejected,
    "ConnectionLost": ConnectionLost,
    "Closed": ConnectionLost,
    "PinnedMemoryExceeded": PinnedMemoryExceeded,
    "DataLost": DataLost,
    "Timeout": TaskTimeout,
    "Trap": Trap,
    "MemoryLimit": MemoryLimit,
    "BadModule": BadModule,
    "NoSuchTask": NoSuchTask,
}


def error_for(kind: str, message: str) -> StockadeError:
    """The exception for a non-task failure of the given kind."""
    return _BY_KIND.get(kind, StockadeError)(message)
