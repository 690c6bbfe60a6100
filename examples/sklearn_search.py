"""Randomized SVC search over the digits data, on Stockade and on loky, side by side.

The search of the original dask joblib documentation (C, gamma, tol, class_weight;
cv=3, n_iter=50), in today's scikit-learn API:

    python examples/sklearn_search.py                       # embedded local cluster
    python examples/sklearn_search.py --scheduler HOST:PORT # a real cluster
"""

import argparse
import sys
import threading
import time

import numpy as np
from joblib import parallel_backend
from sklearn.datasets import load_digits
from sklearn.model_selection import RandomizedSearchCV
from sklearn.svm import SVC

import stockade

PARAM_SPACE = {
    "C": np.logspace(-6, 6, 13),
    "gamma": np.logspace(-8, 8, 17),
    "tol": np.logspace(-4, -1, 4),
    "class_weight": [None, "balanced"],
}


def make_search(n_iter: int, n_jobs: int) -> RandomizedSearchCV:
    return RandomizedSearchCV(SVC(kernel="rbf"), PARAM_SPACE, cv=3, n_iter=n_iter, random_state=0, n_jobs=n_jobs)


def show_progress(client: stockade.Client, total: int, stop: threading.Event) -> None:
    """Prints finished fits from the scheduler's counters until `stop` is set."""
    start = client.scheduler_info()["tasks"]["done"]
    while not stop.wait(0.5):
        info = client.scheduler_info()
        done = info["tasks"]["done"] - start
        running = info["tasks"]["running"]
        print(f"\r  stockade: {done} batches done, {running} running (search of {total} fits)", end="", file=sys.stderr)
    print(file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scheduler", help="HOST:PORT of a running scheduler (default: an embedded cluster)")
    parser.add_argument("--scheduler-file", help="scheduler file of a running scheduler")
    parser.add_argument("--n-iter", type=int, default=50)
    parser.add_argument("--skip-loky", action="store_true", help="do not run the loky comparison")
    args = parser.parse_args()

    X, y = load_digits(return_X_y=True)
    X = np.ascontiguousarray(X)  # load_digits().data is a strided view
    total = args.n_iter * 3

    if args.scheduler or args.scheduler_file:
        client = stockade.Client(args.scheduler, scheduler_file=args.scheduler_file)
        cluster = None
    else:
        t = time.perf_counter()
        cluster = stockade.LocalCluster(n_workers=2, slots_per_worker=1)
        client = stockade.Client(scheduler_file=cluster.scheduler_file)
        print(f"embedded cluster {cluster.address} ready in {time.perf_counter() - t:.2f} s", file=sys.stderr)
    slots = client.total_slots()
    print(f"Stockade: {len(client.scheduler_info()['workers'])} workers, {slots} slots")

    stop = threading.Event()
    progress = threading.Thread(target=show_progress, args=(client, total, stop), daemon=True)
    progress.start()
    search = make_search(args.n_iter, n_jobs=-1)
    t = time.perf_counter()
    with parallel_backend("stockade", client=client):
        search.fit(X, y)
    ours = time.perf_counter() - t
    stop.set()
    progress.join()
    print(f"best parameters: {search.best_params_}")
    print(f"best score:      {search.best_score_:.4f}")
    print(f"stockade:        {ours:.2f} s")

    if not args.skip_loky:
        loky = make_search(args.n_iter, n_jobs=slots)
        t = time.perf_counter()
        with parallel_backend("loky", n_jobs=slots):
            loky.fit(X, y)
        theirs = time.perf_counter() - t
        same = np.allclose(loky.cv_results_["mean_test_score"], search.cv_results_["mean_test_score"])
        print(f"loky (n_jobs={slots}): {theirs:.2f} s   loky/stockade = {theirs / ours:.2f}   same scores: {same}")

    client.close()
    if cluster is not None:
        cluster.close()


if __name__ == "__main__":
    main()
