"""Type stubs of the native module (Rust, pyo3). Use ``stockade.Client`` instead."""

from typing import Literal

class Client:
    """A connection to a scheduler; thread-safe. Blocking calls release the GIL."""

    def __init__(
        self,
        address: str | None = None,
        scheduler_file: str | None = None,
        token: str | None = None,
        name: str = "python",
        timeout: float = 10.0,
    ) -> None:
        """Connects; raises ConnectionError with a message that names the address."""

    def submit_many(
        self, payloads: list[bytes], header: bytes | None = None, needs: list[list[bytes]] | None = None
    ) -> list[int]:
        """Submits pickled zero-argument callables, each sent as ``header + payload``;
        ``needs`` lists per payload the keys of the pinned objects it refers to.
        Returns their task ids in order."""

    def scatter(
        self, pickle: bytes, buffers: list[tuple[memoryview, str, list[int]]], timeout: float = 600.0
    ) -> tuple[bytes, int, int]:
        """Pins a protocol-5 pickle and its out-of-band buffers ``(buffer, dtype,
        shape)`` (``(address, length)`` of memory the caller keeps alive) on every worker;
        returns ``(key, nbytes, workers)``. Private: use ``Client.scatter``. Raises
        ``RuntimeError(kind, message)`` when a worker cannot pin it."""

    def scatter_raw(self, data: bytes, timeout: float = 600.0) -> tuple[bytes, int, int]:
        """Pins opaque bytes (a WebAssembly module); returns ``(key, nbytes, workers)``."""

    def submit_wasm(self, module: bytes, task: str, input: bytes, needs: list[bytes]) -> int:
        """Submits task ``task`` of the pinned module ``module`` on ``input`` (JSON);
        ``needs`` are keys of pinned objects it reads. Returns the task id."""

    def release(self, keys: list[bytes]) -> None:
        """This client no longer needs these pinned objects."""

    def wait_completions(self, timeout: float) -> list[tuple[int, int, str, str, bytes]]:
        """Waits up to ``timeout`` seconds; returns ``(id, status, kind, message, data)``
        for every finished task (status 0 returned, 1 raised, 2 other error)."""

    def wait_for(self, id: int, timeout: float) -> tuple[int, int, str, str, bytes] | None | Literal[False]:
        """Waits up to ``timeout`` seconds in this thread for task ``id``, claiming its
        completion from ``wait_completions``: the completion tuple, ``None`` if it did
        not finish in time, ``False`` if ``wait_completions`` already has it."""

    def cancel(self, ids: list[int]) -> None:
        """Cancels tasks; each completes with kind "Cancelled" unless already done."""

    def cancel_all(self) -> None:
        """Cancels every unfinished task of this client."""

    def pending(self) -> int:
        """Tasks submitted and not yet completed."""

    def scheduler_info(self, timeout: float) -> str:
        """The scheduler's view as JSON (workers, tasks, sessions)."""

    @property
    def tenant(self) -> str:
        """The tenant this client's token belongs to."""

    def close(self) -> None:
        """Closes the connection; unfinished tasks complete with kind "Closed"."""

class Scheduler:
    """A scheduler running in this process (``LocalCluster`` starts one). Clients of this
    process that connect to its address reach it without the network."""

    def __init__(self, args: list[str]) -> None:
        """Starts it from the options of ``stockade scheduler`` (e.g. ``["--port", "0"]``)."""

    @property
    def address(self) -> str:
        """``HOST:PORT`` it listens on."""

    @property
    def scheduler_file(self) -> str:
        """The scheduler file it wrote (address, certificate fingerprint, token)."""

    def close(self) -> None:
        """Stops it (idempotent); its connections are closed, its scheduler files removed."""

class Worker:
    """A worker running in this process (``LocalCluster`` starts them unless asked for
    worker processes); its Python children are processes of their own."""

    def __init__(self, args: list[str], child_env: list[tuple[str, str]] = ...) -> None:
        """Starts it from the options of ``stockade worker`` and waits until it is
        registered; ``child_env`` is added to its Python children's environment."""

    @property
    def id(self) -> int:
        """Its id on the scheduler."""

    def close(self) -> None:
        """Stops it and its Python children (idempotent)."""

def cli_main(argv: list[str]) -> int:
    """Runs the ``stockade`` command line (program name first); returns the exit status."""
