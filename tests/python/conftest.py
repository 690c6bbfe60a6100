"""Shared fixtures of the Python suite: real clusters on loopback, bounded waits.

Every test runs under a watchdog, because pytest-timeout is not a dependency: 120 s,
or ``--timeout SECONDS``, or ``@pytest.mark.timeout(seconds)`` on the test (same names
as pytest-timeout's). A failing test gets the logs of the clusters it used attached to
its report.
"""

from __future__ import annotations

import faulthandler

import pytest

import stockade
from _support import FAST_HEARTBEAT, alarm_after, is_idle, wait_idle

# Not a test module: a report script that runs joblib's own suite (see its docstring).
collect_ignore = ["run_joblib_suite.py"]

DEFAULT_TEST_TIMEOUT = 120.0
_LOG_TAIL = 20_000
_clusters_key = pytest.StashKey[list]()


def pytest_addoption(parser):
    # Same name and meaning as pytest-timeout's option, which is not a dependency; if
    # that plugin is installed it owns the option and both limits apply.
    try:
        parser.addoption("--timeout", type=float, default=None,
                         help=f"watchdog limit of each test in seconds (default {DEFAULT_TEST_TIMEOUT:.0f})")
    except ValueError:
        pass


def pytest_configure(config):
    config.addinivalue_line("markers", "timeout(seconds): watchdog limit of one test (default 120 s)")


class WatchdogTimeout(Exception):
    """A test ran past its watchdog limit."""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    marker = item.get_closest_marker("timeout")
    if marker is not None:
        limit = float(marker.args[0])
    else:
        limit = item.config.getoption("timeout", None) or DEFAULT_TEST_TIMEOUT

    # Last resort if the main thread cannot take the signal (stuck in native code).
    faulthandler.dump_traceback_later(limit + 60, exit=True)
    try:
        with alarm_after(limit, lambda: WatchdogTimeout(f"{item.nodeid} ran longer than its watchdog limit of {limit:.0f}s")):
            yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    clusters = [v for v in getattr(item, "funcargs", {}).values() if isinstance(v, stockade.LocalCluster)]
    clusters += [c for c in item.stash.get(_clusters_key, []) if c not in clusters]
    for cluster in clusters:
        try:
            logs = cluster.logs()
        except Exception as e:  # noqa: BLE001 - diagnostics only
            logs = f"(cannot read the logs: {e!r})"
        if len(logs) > _LOG_TAIL:
            logs = "... (truncated) ...\n" + logs[-_LOG_TAIL:]
        report.sections.append((f"stockade cluster {getattr(cluster, 'address', '?')} logs ({report.when})", logs))


# -- fixtures --------------------------------------------------------------------


@pytest.fixture(scope="session")
def cluster():
    """The shared cluster: two workers of one slot each. Tests must not break it."""
    with stockade.LocalCluster(n_workers=2, slots_per_worker=1, scheduler_args=FAST_HEARTBEAT) as c:
        yield c


@pytest.fixture(scope="session")
def client(cluster):
    with stockade.Client(scheduler_file=cluster.scheduler_file, timeout=10) as c:
        yield c


@pytest.fixture
def idle_client(client):
    """The session client, once the shared cluster has nothing queued or running."""
    info = wait_idle(client)
    assert is_idle(info), f"the shared cluster is still busy from an earlier test: {info}"
    return client


@pytest.fixture
def make_cluster(request):
    """Starts dedicated clusters (for destructive tests); all are closed after the test."""
    started: list[stockade.LocalCluster] = []
    request.node.stash[_clusters_key] = started

    def make(n_workers: int = 2, slots_per_worker: int = 1, scheduler_args=FAST_HEARTBEAT,
             processes: bool = True, **kwargs) -> stockade.LocalCluster:
        # Worker processes by default: destructive tests kill them.
        c = stockade.LocalCluster(n_workers=n_workers, slots_per_worker=slots_per_worker,
                                  scheduler_args=tuple(scheduler_args), processes=processes, **kwargs)
        started.append(c)
        return c

    yield make
    for c in started:
        c.close()
