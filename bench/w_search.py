"""Workload 3: the randomized SVC search of examples/sklearn_search.py, n_iter 50 and 200.

Wall time of `search.fit(X, y)` under each backend, and how close it comes to the ideal
for two workers. The ideal is computed from the run's own `cv_results_`:

    ideal = sum over candidates of n_splits * (mean_fit_time + mean_score_time) / 2
            + refit_time_

that is, the time the cross-validation fits and scorings took inside the workers, spread
perfectly over two slots, plus the final refit on the whole data, which scikit-learn
runs in the calling process after the search. "% of ideal" = ideal / wall time.
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np

from _common import ROOT, Config, Metric, Row, Table, interleave, log, shared_backends

TITLE = "3. scikit-learn randomized SVC search (examples/sklearn_search.py)"


def _example():
    path = os.path.join(ROOT, "examples", "sklearn_search.py")
    spec = importlib.util.spec_from_file_location("sklearn_search_example", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ideal_seconds(search) -> float:
    r = search.cv_results_
    per_candidate = np.asarray(r["mean_fit_time"]) + np.asarray(r["mean_score_time"])
    return float(search.n_splits_ * per_candidate.sum() / 2 + getattr(search, "refit_time_", 0.0))


def run(cfg: Config) -> dict:
    from sklearn.datasets import load_digits

    example = _example()
    X, y = load_digits(return_X_y=True)
    X = np.ascontiguousarray(X)
    if cfg.smoke:  # tiny: a third of the digits, a few candidates
        X, y = X[:600], y[:600]
    sizes = [3] if cfg.smoke else [50, 200]
    names = cfg.peers()
    metrics = [
        Metric("wall", "wall time", "s", "lower", 2),
        Metric("pct_ideal", "% of ideal", "%", "higher", 0),
        Metric("ideal", "ideal", "s", None, 2),
    ]
    tables, scores = [], {}
    backends = shared_backends(names)
    for b in backends.running.values() if not cfg.smoke else []:  # warm-up: children import sklearn
        with b.context():
            example.make_search(1, n_jobs=2).fit(X, y)
    for n_iter in sizes:
        subset = " on 600 of the 1797 digits" if cfg.smoke else ""
        table = Table(f"n_iter={n_iter} (cv=3: {3 * n_iter} fits{subset})", metrics,
                      [Row(n, ours=(n == "stockade")) for n in names], reference="stockade")
        for r in table.rows:
            r.error = backends.errors.get(r.label)

        def measure(b, n_iter=n_iter):
            def go():
                search = example.make_search(n_iter, n_jobs=2)
                with b.context():
                    t = time.perf_counter()
                    search.fit(X, y)
                    wall = time.perf_counter() - t
                scores.setdefault(n_iter, {})[b.name] = np.asarray(search.cv_results_["mean_test_score"])
                ideal = ideal_seconds(search)
                return {"wall": wall, "pct_ideal": 100 * ideal / wall, "ideal": ideal}

            return go

        interleave(cfg.reps, table, {n: measure(b) for n, b in backends.running.items()}, log)
        got = scores.get(n_iter, {})
        if len(got) > 1:
            first = next(iter(got.values()))
            same = [n for n, s in got.items() if np.allclose(s, first)]
            table.notes.append(
                "Same mean test scores on every backend: "
                + ("yes." if len(same) == len(got) else f"NO (agree with the first: {', '.join(same)}).")
            )
        tables.append(table)
    return {"title": TITLE, "tables": tables, "notes": [
        "ideal = sum over candidates of n_splits x (mean_fit_time + mean_score_time) / 2 + refit_time_, "
        "from each run's own cv_results_ (so it follows the machine's speed during that run); "
        "% of ideal = ideal / wall time. The refit on the whole data runs in the caller, after the search.",
        "Same backends as workloads 1-2, side by side in one process; RandomizedSearchCV(n_jobs=2).",
    ]}
