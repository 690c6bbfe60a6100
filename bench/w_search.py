"""Workload 3: the randomized SVC search of examples/sklearn_search.py, n_iter 50 and 200.

Wall time of `search.fit(X, y)` under each backend, and how close it comes to the ideal
for two workers. The ideal is computed from the run's own `cv_results_`:

    ideal = sum over candidates of n_splits * (mean_fit_time + mean_score_time) / 2
            + refit_time_

that is, the time the cross-validation fits and scorings took inside the workers, spread
perfectly over two slots, plus the final refit on the whole data, which scikit-learn
runs in the calling process after the search. "% of ideal" = ideal / wall time.

The searches run in the backends' runners (each backend in its own process, see
_common.Runner), the same ones as workloads 1-2.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import time

import numpy as np

from _common import ROOT, Config, Metric, Table, interleave, log, shared_runners

TITLE = "3. scikit-learn randomized SVC search (examples/sklearn_search.py)"


def ideal_seconds(search) -> float:
    r = search.cv_results_
    per_candidate = np.asarray(r["mean_fit_time"]) + np.asarray(r["mean_score_time"])
    return float(search.n_splits_ * per_candidate.sum() / 2 + getattr(search, "refit_time_", 0.0))


# -- run in a backend's runner --------------------------------------------------------------


@functools.cache
def problem(smoke: bool):
    """(examples/sklearn_search.py as a module, X, y), loaded once per runner."""
    from sklearn.datasets import load_digits

    path = os.path.join(ROOT, "examples", "sklearn_search.py")
    spec = importlib.util.spec_from_file_location("sklearn_search_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    X, y = load_digits(return_X_y=True)
    X = np.ascontiguousarray(X)
    if smoke:  # tiny: a third of the digits, a few candidates
        X, y = X[:600], y[:600]
    return example, X, y


def fit_search(backend, n_iter: int, smoke: bool) -> dict:
    """One search.fit under the backend: wall time, ideal, and the candidates' mean test
    scores (under "scores", for the parent's check that every backend found the same)."""
    example, X, y = problem(smoke)
    search = example.make_search(n_iter, n_jobs=2)
    with backend.context():
        t = time.perf_counter()
        search.fit(X, y)
        wall = time.perf_counter() - t
    ideal = ideal_seconds(search)
    return {"wall": wall, "pct_ideal": 100 * ideal / wall, "ideal": ideal,
            "scores": [float(s) for s in search.cv_results_["mean_test_score"]]}


# -- the workload -----------------------------------------------------------------------


def run(cfg: Config) -> dict:
    sizes = [3] if cfg.smoke else [50, 200]
    names = cfg.peers()
    metrics = [
        Metric("wall", "wall time", "s", "lower", 2),
        Metric("pct_ideal", "% of ideal", "%", "higher", 0),
        Metric("ideal", "ideal", "s", None, 2),
    ]
    runners = shared_runners(names)
    for warm in runners.runs(fit_search, 1, cfg.smoke).values() if not cfg.smoke else []:
        warm()  # warm-up: children import sklearn
    tables = []
    for n_iter in sizes:
        subset = " on 600 of the 1797 digits" if cfg.smoke else ""
        table = Table(f"n_iter={n_iter} (cv=3: {3 * n_iter} fits{subset})", metrics, runners.rows(names),
                      reference="stockade")
        scores = {}

        def measure(name, search):
            out = search()
            scores[name] = out.pop("scores")
            return out

        runs = runners.runs(fit_search, n_iter, cfg.smoke)
        interleave(cfg.reps, table, {n: functools.partial(measure, n, r) for n, r in runs.items()}, log)
        if len(scores) > 1:
            first = next(iter(scores.values()))
            same = [n for n, s in scores.items() if np.allclose(s, first)]
            table.notes.append(
                "Same mean test scores on every backend: "
                + ("yes." if len(same) == len(scores) else f"NO (agree with the first: {', '.join(same)}).")
            )
        tables.append(table)
    return {"title": TITLE, "tables": tables, "notes": [
        "ideal = sum over candidates of n_splits x (mean_fit_time + mean_score_time) / 2 + refit_time_, "
        "from each run's own cv_results_ (so it follows the machine's speed during that run); "
        "% of ideal = ideal / wall time. The refit on the whole data runs in the caller, after the search.",
        "Same backends as workloads 1-2, each in its own process, started once; RandomizedSearchCV(n_jobs=2).",
    ]}
