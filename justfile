# Stockade: `just demo` and `just test` are all a new user needs.

set shell := ["bash", "-euo", "pipefail", "-c"]

_default:
    @just --list --unsorted

# Build the `stockade` binary (dependencies are built once, optimised, and shared).
[group('build')]
build:
    cargo build --bins

# The example search on an embedded local cluster, next to loky; then raw scheduler speed.
[group('run')]
demo: build python
    .venv/bin/python examples/sklearn_search.py
    scripts/with-cluster.sh 2 1 bash -c 'target/debug/stockade status && target/debug/stockade bench --tasks 100000 --latency-tasks 2000'

# Every test: unit, state machine, integration tests on real processes, Python suites.
[group('check')]
test: build python
    STOCKADE_TEST_PYTHON="$PWD/.venv/bin/python" cargo test
    SMOKE=1 .venv/bin/python bench/suite.py
    .venv/bin/python -m pytest tests/python -q -p no:cacheprovider

# Build the Python package (pyo3, maturin) into .venv, sharing cargo's target directory.
[group('build')]
python: venv
    cd backend-py && VIRTUAL_ENV="$PWD/../.venv" PATH="$PWD/../.venv/bin:$PATH" maturin develop --quiet

# The Python environment in .venv (created once, refreshed when requirements change).
[group('build')]
venv:
    #!/usr/bin/env bash
    set -euo pipefail
    [ -x .venv/bin/python ] || python3 -m venv .venv
    stamp=.venv/.requirements-installed
    if [ ! -f "$stamp" ] || [ requirements-dev.txt -nt "$stamp" ]; then
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
        touch "$stamp"
    fi

# Benchmarks side by side with loky, dask, Ray (not in `test`); REPS=N, SMOKE=1, `just bench --only search,5`.
[group('check')]
bench *ARGS: build python
    .venv/bin/python bench/suite.py {{ARGS}}

# What CI runs, plus formatting and clippy.
[group('check')]
ready: fmt-check lint test

# Clippy with the workspace lints (unwrap/expect denied outside tests).
[group('check')]
lint:
    cargo clippy --workspace --all-targets -- -D warnings

# Format the code.
[group('check')]
fmt:
    cargo fmt --all

[group('check')]
fmt-check:
    cargo fmt --all -- --check

# API documentation of the Rust crates.
[group('check')]
doc:
    cargo doc --no-deps --workspace
