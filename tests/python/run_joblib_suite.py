#!/usr/bin/env python
"""joblib's own backend tests, run against the "stockade" backend: a report, not a gate.

Runs ``joblib/test/test_parallel.py`` of the installed joblib with ``"stockade"`` added
to its backend parametrizations, keeps only the tests parametrized with stockade, and
prints how many pass, fail, error or are skipped (by the joblib list that brought
stockade in, and overall), with the first line of each failure::

    .venv/bin/python tests/python/run_joblib_suite.py            # the report
    .venv/bin/python tests/python/run_joblib_suite.py -v         # every test's outcome
    .venv/bin/python tests/python/run_joblib_suite.py -k nested  # a subset (pytest -k)

How stockade gets in: ``import stockade`` registers the backend before the joblib test
module is imported, so the lists joblib builds from its backend registry
(``BACKENDS``, ``ALL_VALID_BACKENDS`` and ``RETURN_GENERATOR_BACKENDS``) include it;
the hand-written lists ``PARALLEL_BACKENDS``, ``PROCESS_BACKENDS`` and
``all_backends_for_context_manager`` are extended in place after import and before
collection (pytest's parametrize marks hold those list objects, so collection sees the
addition). The "stockade" backend with no address is the embedded local cluster that the
package starts once per process.

pytest runs in a child process with a per-test watchdog, writing one JSON line per test;
this parent prints the report even if the child hangs or dies. The exit status is 0
whenever the report could be produced. This file is not a pytest test module
(``conftest.py`` lists it in ``collect_ignore``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _support import alarm_after  # noqa: E402

GROUP_NAMES = (
    "PROCESS_BACKENDS",
    "PARALLEL_BACKENDS",
    "ALL_VALID_BACKENDS",
    "BACKENDS",
    "RETURN_GENERATOR_BACKENDS",
    "all_backends_for_context_manager",
)


# -- the child: pytest with the plugin ------------------------------------------------


class StockadeJoblibPlugin:
    """Adds stockade to joblib's backend lists, keeps the stockade tests, records outcomes."""

    def __init__(self, results_path: str, per_test_timeout: float, include_process_backends: bool):
        self.results = open(results_path, "a", buffering=1, encoding="utf-8")
        self.per_test_timeout = per_test_timeout
        self.include_process_backends = include_process_backends
        self.module = None
        self.groups: dict[str, str] = {}  # nodeid -> the joblib list that brought stockade in
        self.outcomes: dict[str, dict] = {}

    def pytest_configure(self, config):
        import stockade  # noqa: F401 - registers the backend before joblib's lists are built
        import joblib.test.test_parallel as tp

        self.module = tp
        if "stockade" not in tp.PARALLEL_BACKENDS:
            tp.PARALLEL_BACKENDS.append("stockade")
        if self.include_process_backends and "stockade" not in tp.PROCESS_BACKENDS:
            tp.PROCESS_BACKENDS.append("stockade")
        if "stockade" not in tp.all_backends_for_context_manager:
            tp.all_backends_for_context_manager.append("stockade")

    def _is_stockade(self, value) -> bool:
        from stockade import StockadeBackend

        return (isinstance(value, str) and value == "stockade") or isinstance(value, StockadeBackend)

    def _group(self, item) -> str:
        lists = {id(getattr(self.module, name)): name for name in GROUP_NAMES if hasattr(self.module, name)}
        for mark in item.iter_markers("parametrize"):
            values = mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("argvalues", ())
            if any(self._is_stockade(v) for v in values):
                return lists.get(id(values), "other")
        return "other"

    def pytest_collection_modifyitems(self, session, config, items):
        keep, drop = [], []
        for item in items:
            callspec = getattr(item, "callspec", None)
            if callspec is not None and any(self._is_stockade(v) for v in callspec.params.values()):
                keep.append(item)
                self.groups[item.nodeid] = self._group(item)
            else:
                drop.append(item)
        if drop:
            config.hook.pytest_deselected(items=drop)
        items[:] = keep

    def pytest_collection_finish(self, session):
        # After every plugin's selection (-k included).
        collected = [i.nodeid for i in session.items]
        groups = {nodeid: self.groups.get(nodeid, "other") for nodeid in collected}
        self.results.write(json.dumps({"collected": collected, "groups": groups}) + "\n")

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        limit = self.per_test_timeout

        self.results.write(json.dumps({"started": item.nodeid}) + "\n")
        with alarm_after(limit, lambda: TimeoutError(f"watchdog: the test ran longer than {limit:.0f}s")):
            yield
        record = self.outcomes.pop(item.nodeid, {"outcome": "unknown", "message": ""})
        record["nodeid"] = item.nodeid
        record["group"] = self.groups.get(item.nodeid, "other")
        self.results.write(json.dumps(record) + "\n")

    def pytest_runtest_logreport(self, report):
        record = self.outcomes.setdefault(report.nodeid, {"outcome": "passed", "message": ""})
        if report.when == "call":
            if report.passed:
                record["outcome"] = "xpassed" if hasattr(report, "wasxfail") else "passed"
            elif report.skipped:
                record["outcome"] = "xfailed" if hasattr(report, "wasxfail") else "skipped"
                record["message"] = _first_line(report)
            else:
                record["outcome"] = "failed"
                record["message"] = _first_line(report)
        elif report.failed:  # setup or teardown
            if record["outcome"] != "failed":
                record["outcome"] = "error"
                record["message"] = f"{report.when}: {_first_line(report)}"
        elif report.skipped and report.when == "setup":
            record["outcome"] = "skipped"
            record["message"] = _first_line(report)


def _first_line(report) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        text = crash.message
    elif isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:  # skip: (file, line, reason)
        text = str(report.longrepr[2])
    else:
        text = str(report.longrepr)
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[0][:300] if lines else ""


def run_child(args) -> int:
    import stockade  # noqa: F401 - registered before joblib's test module builds its lists
    import joblib.test.test_parallel

    plugin = StockadeJoblibPlugin(args.results, args.timeout, not args.no_process_backends)
    with tempfile.TemporaryDirectory(prefix="joblib-suite-") as tmp:
        ini = os.path.join(tmp, "pytest.ini")
        with open(ini, "w") as f:
            f.write("[pytest]\n")
        pytest_args = [
            joblib.test.test_parallel.__file__,
            "-c", ini,
            "--rootdir", os.path.dirname(os.path.dirname(joblib.test.test_parallel.__file__)),
            "-p", "no:cacheprovider",
            "-q", "-rN", "--tb=no", "--no-header",
            "-W", "ignore::pytest.PytestUnknownMarkWarning",
        ]
        if args.k:
            pytest_args += ["-k", args.k]
        return pytest.main(pytest_args, plugins=[plugin])


# -- the parent: run the child, print the report --------------------------------------


def report(results_path: str, child_status: str, verbose: bool) -> None:
    collected: list[str] = []
    groups: dict[str, str] = {}
    started: list[str] = []
    finished: dict[str, dict] = {}
    with open(results_path, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if "collected" in record:
                collected, groups = record["collected"], record["groups"]
            elif "started" in record:
                started.append(record["started"])
            else:
                finished[record["nodeid"]] = record
    for nodeid in collected:
        if nodeid not in finished:
            hung = nodeid in started
            finished[nodeid] = {
                "nodeid": nodeid,
                "group": groups.get(nodeid, "other"),
                "outcome": "crashed" if hung else "not run",
                "message": f"the pytest child ended during this test ({child_status})" if hung else "",
            }

    import joblib

    print(f"joblib {joblib.__version__}: joblib/test/test_parallel.py, tests parametrized with the stockade backend")
    print(f"pytest child: {child_status}")
    totals = collections.Counter(r["outcome"] for r in finished.values())
    by_group: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in finished.values():
        by_group[r["group"]][r["outcome"]] += 1
    order = ["passed", "failed", "error", "skipped", "xfailed", "xpassed", "crashed", "not run", "unknown"]

    def fmt(counter) -> str:
        return ", ".join(f"{counter[k]} {k}" for k in order if counter[k])

    print(f"\nstockade-parametrized tests: {len(finished)}: {fmt(totals)}")
    for group in sorted(by_group):
        print(f"  via {group}: {sum(by_group[group].values())}: {fmt(by_group[group])}")

    bad = [r for r in finished.values() if r["outcome"] in {"failed", "error", "crashed"}]
    if bad:
        print("\nfailures and errors:")
        for r in sorted(bad, key=lambda r: r["nodeid"]):
            name = r["nodeid"].split("::", 1)[-1]
            print(f"  {r['outcome'].upper():7} {name}\n          {r['message']}")
    if verbose:
        print("\nall:")
        for r in sorted(finished.values(), key=lambda r: r["nodeid"]):
            print(f"  {r['outcome']:8} {r['nodeid'].split('::', 1)[-1]}  {r['message']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", help="pytest -k expression to select a subset")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every test's outcome")
    parser.add_argument("--timeout", type=float, default=60.0, help="per-test watchdog in seconds (default 60)")
    parser.add_argument("--total-timeout", type=float, default=1800.0, help="bound of the whole run (default 1800 s)")
    parser.add_argument("--no-process-backends", action="store_true",
                        help="do not add stockade to joblib's PROCESS_BACKENDS (loky/multiprocessing-specific tests)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--results", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        return run_child(args)

    with tempfile.TemporaryDirectory(prefix="joblib-suite-results-") as tmp:
        results = os.path.join(tmp, "results.jsonl")
        open(results, "w").close()
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "--results", results,
               "--timeout", str(args.timeout)]
        if args.k:
            cmd += ["-k", args.k]
        if args.no_process_backends:
            cmd.append("--no-process-backends")
        start = time.monotonic()
        # Its own session, so that a hung run can be stopped with everything it started.
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL if not args.verbose else None,
                                 start_new_session=True)
        try:
            code = child.wait(timeout=args.total_timeout)
            status = f"exit status {code} after {time.monotonic() - start:.0f}s"
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            status = f"stopped after the total timeout of {args.total_timeout:.0f}s"
        report(results, status, args.verbose)
    return 0


if __name__ == "__main__":
    sys.exit(main())
