"""A hyperparameter search whose every fit runs in a WebAssembly sandbox.

Ridge regression over the digits data (predicting the digit from its pixels), with 5-fold
cross-validation over a grid of alphas. The data is pinned once on every worker
(`Client.scatter`); each fit is a call of the `fit_score` task of the Rust guest in
examples/guests/ridge (built by `just guests`), which reads the pinned matrix in place.
The same search with scikit-learn's Ridge runs beside it, and the scores must agree.

    python examples/wasm_search.py [--scheduler HOST:PORT | --scheduler-file PATH] [--module PATH]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
from joblib import Parallel, delayed, parallel_backend
from sklearn.datasets import load_digits
from sklearn.linear_model import Ridge
from sklearn.model_selection import KFold

import stockade

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODULE = os.path.join(
    os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "guests", "wasm32-wasip1", "release", "ridge.wasm"
)
ALPHAS = [0.01, 0.1, 1.0, 10.0, 100.0, 1000.0]


def sklearn_score(X, y, alpha, train, test):
    return Ridge(alpha=alpha).fit(X[train], y[train]).score(X[test], y[test])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scheduler", help="HOST:PORT of a running scheduler (default: an embedded cluster)")
    parser.add_argument("--scheduler-file")
    parser.add_argument("--module", default=DEFAULT_MODULE, help="the ridge guest (.wasm)")
    args = parser.parse_args()
    if not os.path.exists(args.module):
        print(f"error: {args.module} is missing; hint: run `just guests`", file=sys.stderr)
        return 1

    X, y = load_digits(return_X_y=True)
    X = np.ascontiguousarray(X)
    y = y.astype(np.float64)
    folds = list(KFold(5, shuffle=True, random_state=0).split(X))
    fit_score = stockade.wasm.Module(args.module).task("fit_score")

    cluster = None
    if args.scheduler or args.scheduler_file:
        client = stockade.Client(args.scheduler, scheduler_file=args.scheduler_file)
    else:
        cluster = stockade.LocalCluster(n_workers=2, slots_per_worker=1)
        client = stockade.Client(scheduler_file=cluster.scheduler_file)
    try:
        t = time.perf_counter()
        x_ref, y_ref = client.scatter(X), client.scatter(y)
        calls = [(a, i) for a in ALPHAS for i in range(len(folds))]
        with parallel_backend("stockade", client=client):
            fitted = Parallel()(
                delayed(fit_score)({"alpha": a, "x": x_ref, "y": y_ref,
                                    "train": folds[i][0].tolist(), "test": folds[i][1].tolist()})
                for a, i in calls
            )
        sandboxed = time.perf_counter() - t
        t = time.perf_counter()
        reference = [sklearn_score(X, y, a, *folds[i]) for a, i in calls]
        local = time.perf_counter() - t
    finally:
        client.close()
        if cluster is not None:
            cluster.close()

    scores = np.array([f["score"] for f in fitted])
    worst = float(np.max(np.abs(scores - np.array(reference))))
    print(f"{len(calls)} fits in the sandbox: {sandboxed:.2f} s (scikit-learn in this process: {local:.2f} s)")
    print(f"{'alpha':>8}  {'mean R² (wasm)':>15}  {'mean R² (sklearn)':>18}")
    n = len(folds)
    for k, alpha in enumerate(ALPHAS):
        print(f"{alpha:>8g}  {scores[k * n:(k + 1) * n].mean():>15.6f}  {np.mean(reference[k * n:(k + 1) * n]):>18.6f}")
    best = ALPHAS[int(np.argmax(scores.reshape(len(ALPHAS), n).mean(axis=1)))]
    print(f"best alpha: {best}; largest difference from scikit-learn: {worst:.2e}")
    if worst > 1e-6:
        print("error: the sandboxed fits disagree with scikit-learn", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
