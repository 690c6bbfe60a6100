# Stockade: `just demo` and `just test` are all a new user needs.

set shell := ["bash", "-euo", "pipefail", "-c"]

# Where cargo builds (the WebAssembly guests go to `guests/` under it).
target_dir := if env("CARGO_TARGET_DIR", "") == "" { justfile_directory() / "target" } else { env("CARGO_TARGET_DIR") }
guests_dir := target_dir / "guests" / "wasm32-wasip1" / "release"

_default:
    @just --list --unsorted

# Build the `stockade` binary (dependencies are built once, optimised, and shared).
[group('build')]
build:
    cargo build --bins

# The example searches on an embedded local cluster (scikit-learn next to loky, then
# ridge fits in WebAssembly sandboxes); then raw scheduler speed.
[group('run')]
demo: build python guests
    .venv/bin/python examples/sklearn_search.py
    .venv/bin/python examples/wasm_search.py --module "{{guests_dir}}/ridge.wasm"
    scripts/with-cluster.sh 2 1 bash -c 'target/debug/stockade status && target/debug/stockade bench --tasks 100000 --latency-tasks 2000'

# Every test: unit, state machine, integration tests on real processes, Python suites.
[group('check')]
test: build python guests
    STOCKADE_TEST_PYTHON="$PWD/.venv/bin/python" STOCKADE_TEST_GUESTS="{{guests_dir}}" cargo test
    SMOKE=1 .venv/bin/python bench/suite.py
    STOCKADE_TEST_GUESTS="{{guests_dir}}" .venv/bin/python -m pytest tests/python -q -p no:cacheprovider

# The WebAssembly guests (test fixtures and examples) for wasm32-wasip1, in TARGET/guests;
# each is built from its own directory, so its `.cargo/config.toml` applies.
[group('build')]
guests:
    rustup target add wasm32-wasip1
    for dir in tests/guests examples/guests; do \
        (cd "$dir" && cargo build --quiet --release --target wasm32-wasip1 --target-dir "{{target_dir}}/guests"); \
    done

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
