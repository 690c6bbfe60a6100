"""Workload 7: WebAssembly. NOT IMPLEMENTED YET: it waits for the WebAssembly sandbox
(issue 5).

What belongs here (issue 6): instantiation time of a guest module, no-op wasm task
throughput, and a compute-bound guest against the same computation in native Rust and in
numpy. Fill in `run` so that it returns {"title", "tables", "notes"} like the other
workload modules; the suite already lists this workload (`--only wasm`) and reports it
as not measured until then. No figure is produced before that.
"""

from __future__ import annotations

from _common import Config, NotAvailable

TITLE = "7. WebAssembly tasks"


def run(cfg: Config) -> dict:
    raise NotAvailable("not implemented yet: waits for the WebAssembly sandbox (issue 5); see bench/w_wasm.py")
