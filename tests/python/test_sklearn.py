"""scikit-learn under the backend gives exactly the sequential results."""

from __future__ import annotations

import numpy as np
import pytest
from joblib import parallel_config
from sklearn.datasets import load_digits
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import RandomizedSearchCV, cross_val_score
from sklearn.svm import SVC

PARAM_SPACE = {
    "C": np.logspace(-2, 3, 6),
    "gamma": np.logspace(-4, -1, 4),
    "tol": np.logspace(-4, -1, 4),
    "class_weight": [None, "balanced"],
}


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return np.ascontiguousarray(X), y


def make_search(n_jobs):
    return RandomizedSearchCV(SVC(), PARAM_SPACE, n_iter=6, cv=3, random_state=0, n_jobs=n_jobs)


@pytest.mark.timeout(120)
def test_randomized_search_matches_sequential(digits, idle_client):
    X, y = digits
    sequential = make_search(n_jobs=None).fit(X, y)
    done_before = idle_client.scheduler_info()["tasks"]["done"]
    with parallel_config(backend="stockade", client=idle_client):
        distributed = make_search(n_jobs=-1).fit(X, y)
    assert idle_client.scheduler_info()["tasks"]["done"] > done_before  # it did run on the cluster
    np.testing.assert_array_equal(
        distributed.cv_results_["mean_test_score"], sequential.cv_results_["mean_test_score"]
    )
    np.testing.assert_array_equal(distributed.cv_results_["rank_test_score"], sequential.cv_results_["rank_test_score"])
    assert distributed.best_params_ == sequential.best_params_
    assert distributed.best_score_ == sequential.best_score_
    np.testing.assert_array_equal(distributed.predict(X), sequential.predict(X))


@pytest.mark.timeout(120)
def test_cross_val_score_matches_sequential(digits, cluster, idle_client):
    X, y = digits
    sequential = cross_val_score(SVC(gamma=0.001), X, y, cv=5)
    with parallel_config(backend="stockade", scheduler_file=cluster.scheduler_file):
        distributed = cross_val_score(SVC(gamma=0.001), X, y, cv=5, n_jobs=-1)
    np.testing.assert_array_equal(distributed, sequential)


@pytest.mark.timeout(120)
def test_random_forest_matches_sequential(digits, idle_client):
    # fit dispatches trees to the cluster; predict's require="sharedmem" falls back to threads.
    X, y = digits
    sequential = RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=1).fit(X, y)
    done_before = idle_client.scheduler_info()["tasks"]["done"]
    with parallel_config(backend="stockade", client=idle_client):
        distributed = RandomForestClassifier(n_estimators=20, random_state=0, n_jobs=2).fit(X, y)
        distributed_proba = distributed.predict_proba(X)
        distributed_prediction = distributed.predict(X)
    assert idle_client.scheduler_info()["tasks"]["done"] > done_before  # the fit ran on the cluster
    np.testing.assert_array_equal(distributed_proba, sequential.predict_proba(X))
    np.testing.assert_array_equal(distributed_prediction, sequential.predict(X))
