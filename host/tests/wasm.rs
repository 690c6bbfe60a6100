//! The WebAssembly sandbox against real guests: every limit obeyed and violated, WASI's
//! refusals, bad modules, resident memory over a thousand instantiations, concurrent
//! calls, pinned archives and the ridge example.
//!
//! The guests are built by `just guests` (which `just test` runs); the environment
//! variable `STOCKADE_TEST_GUESTS` names the directory of their `.wasm` files.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use stockade::sandbox::wasm::bench::{ridge as ridge_bench, RidgeOptions};
use stockade::sandbox::wasm::{NoPins, Pins, WasmError, WasmLimits, WasmModule, WasmSandbox};
use stockade_guest::archive::{Buffer, Scattered};

/// The limits of the shared sandbox: small enough that violating them is quick.
fn limits() -> WasmLimits {
    WasmLimits {
        memory_bytes: 64 << 20,
        wall_time: Duration::from_secs(2),
        output_bytes: 1 << 20,
        instances: 16,
        ..WasmLimits::default()
    }
}

/// A guest's bytes, from `STOCKADE_TEST_GUESTS`; a missing build fails the test.
fn guest_bytes(name: &str) -> Vec<u8> {
    let dir = std::env::var_os("STOCKADE_TEST_GUESTS").unwrap_or_else(|| {
        panic!(
            "STOCKADE_TEST_GUESTS is not set: run `just guests` and set it to the directory of the guests' \
             .wasm files (`just test` does both)"
        )
    });
    let path = PathBuf::from(dir).join(format!("{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|err| panic!("cannot read guest {}: {err}; run `just guests`", path.display()))
}

fn key_of(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// One sandbox for most tests (compiling the fixture guest once), with its fixture
/// module.
fn shared() -> &'static (WasmSandbox, Arc<WasmModule>) {
    static SHARED: OnceLock<(WasmSandbox, Arc<WasmModule>)> = OnceLock::new();
    SHARED.get_or_init(|| {
        let sandbox = WasmSandbox::new(limits()).unwrap();
        let bytes = guest_bytes("fixtures");
        let module = sandbox.module(key_of(&bytes), &bytes).unwrap();
        (sandbox, module)
    })
}

/// Tests hold this for reading; the resident-memory test holds it for writing, so that
/// it measures its own calls alone.
static PROCESS: RwLock<()> = RwLock::new(());

fn together() -> RwLockReadGuard<'static, ()> {
    PROCESS.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn alone() -> RwLockWriteGuard<'static, ()> {
    PROCESS.write().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Calls a fixture task with JSON input and no pins.
fn call(task: &str, input: &str) -> Result<String, WasmError> {
    call_with(task, input, Arc::new(NoPins))
}

fn call_with(task: &str, input: &str, pins: Arc<dyn Pins>) -> Result<String, WasmError> {
    let (sandbox, module) = shared();
    sandbox.call(module, task, input.as_bytes(), pins).map(|output| String::from_utf8(output).unwrap())
}

fn trap_message(result: Result<String, WasmError>) -> String {
    match result {
        Err(WasmError::Trap { message }) => message,
        other => panic!("expected a trap, got {other:?}"),
    }
}

fn failure_message(result: Result<String, WasmError>) -> String {
    match result {
        Err(WasmError::Failed { message }) => message,
        other => panic!("expected the task to fail, got {other:?}"),
    }
}

// Results and task errors.

#[test]
fn tasks_return_their_json_output() {
    let _process = together();
    assert_eq!(call("noop", "null").unwrap(), "null");
    assert_eq!(call("echo", r#"{"a":[1,2.5,"x"],"b":null}"#).unwrap(), r#"{"a":[1,2.5,"x"],"b":null}"#);
}

#[test]
fn a_task_error_is_failed_with_its_message() {
    let _process = together();
    assert_eq!(call("fail", r#""no luck""#), Err(WasmError::Failed { message: "no luck".to_string() }));
    let message = failure_message(call("spin", r#""not a number""#));
    assert!(message.starts_with("the input is not valid for this task"), "{message}");
}

#[test]
fn an_unknown_task_is_no_such_task_with_the_list() {
    let _process = together();
    let Err(WasmError::NoSuchTask { name, available }) = call("missing", "null") else {
        panic!("expected NoSuchTask");
    };
    assert_eq!(name, "missing");
    let expected = [
        "connect",
        "echo",
        "exit",
        "fail",
        "grow",
        "noop",
        "output",
        "panic",
        "pinned_sum",
        "read_file",
        "recurse",
        "scribble_then_trap",
        "sleep",
        "spin",
    ];
    assert_eq!(available, expected);
    assert_eq!(shared().1.tasks().collect::<Vec<_>>(), expected);
}

// Limits, each obeyed and violated.

#[test]
fn time_limit_obeyed() {
    let _process = together();
    assert_eq!(call("spin", "1000").unwrap(), "1000");
}

#[test]
fn time_limit_violated_by_an_infinite_loop() {
    let _process = together();
    assert_eq!(call("spin", "null"), Err(WasmError::Timeout { limit: limits().wall_time }));
}

#[test]
fn time_limit_holds_while_the_guest_sleeps() {
    let _process = together();
    assert_eq!(call("sleep", "1").unwrap(), "null");
    assert_eq!(call("sleep", "3600000"), Err(WasmError::Timeout { limit: limits().wall_time }));
}

#[test]
fn memory_limit_obeyed() {
    let _process = together();
    // 17 pages of a Rust guest's own, plus 16 (1 MiB).
    let pages: usize = call("grow", "16").unwrap().parse().unwrap();
    assert!(pages > 16 && pages * 65536 <= limits().memory_bytes, "{pages} pages");
}

#[test]
fn memory_limit_violated_by_unbounded_growth() {
    let _process = together();
    assert_eq!(call("grow", "null"), Err(WasmError::MemoryLimit { limit: limits().memory_bytes }));
}

#[test]
fn stack_limit_obeyed() {
    let _process = together();
    assert_eq!(call("recurse", "1000").unwrap(), "1000");
}

#[test]
fn stack_limit_violated_by_unbounded_recursion() {
    let _process = together();
    let message = trap_message(call("recurse", &u64::MAX.to_string()));
    assert!(message.starts_with("stack overflow"), "{message}");
}

#[test]
fn output_limit_obeyed_and_violated() {
    let _process = together();
    assert_eq!(call("output", "3").unwrap(), r#""xxx""#);
    let over = (limits().output_bytes + 1).to_string();
    assert_eq!(call("output", &over), Err(WasmError::OutputLimit { limit: limits().output_bytes }));
}

// Traps.

#[test]
fn a_panic_is_a_trap_with_the_panic_message() {
    let _process = together();
    let message = trap_message(call("panic", r#""the dam broke at 42""#));
    assert!(message.starts_with("panicked at"), "{message}");
    assert!(message.ends_with("the dam broke at 42"), "{message}");
}

#[test]
fn a_trap_quotes_the_guest_stderr() {
    let _process = together();
    let message = trap_message(call("scribble_then_trap", r#""hello""#));
    assert!(message.contains("unreachable"), "{message}");
    assert!(message.contains("guest stderr:\nstderr: hello"), "{message}");
    assert!(!message.contains("stdout: hello"), "{message}");
}

#[test]
fn exit_is_a_trap() {
    let _process = together();
    assert_eq!(call("exit", "3"), Err(WasmError::Trap { message: "the guest called exit(3)".to_string() }));
}

// WASI grants nothing.

#[test]
fn reading_etc_passwd_is_refused() {
    let _process = together();
    let message = failure_message(call("read_file", r#""/etc/passwd""#));
    assert!(message.starts_with("reading /etc/passwd: "), "{message}");
    assert!(!message.contains("root:"), "{message}");
}

#[test]
fn connecting_to_the_scheduler_is_refused() {
    let _process = together();
    let message = failure_message(call("connect", r#""127.0.0.1:8786""#));
    assert!(message.contains("connect 127.0.0.1:8786: "), "{message}");
    // No descriptor is a socket: WASI answers EBADF (8) for every one.
    for fd in 3..8 {
        assert!(message.contains(&format!("fd {fd}: sock_accept errno 8, sock_send errno 8")), "{message}");
    }
}

// Modules.

#[test]
fn bytes_that_are_not_a_module_are_a_bad_module() {
    let _process = together();
    let sandbox = &shared().0;
    for bytes in [&b"not wasm at all"[..], b"\0asm\x01\0\0\0\x01\xffgarbage", b""] {
        match sandbox.module(key_of(bytes), bytes) {
            Err(WasmError::BadModule { reason }) => assert!(reason.contains("not a WebAssembly module"), "{reason}"),
            other => panic!("expected BadModule, got {other:?}"),
        }
    }
}

#[test]
fn modules_without_the_abi_are_bad_modules() {
    let _process = together();
    let sandbox = &shared().0;
    let cases = [
        (r#"(module (memory (export "memory") 1))"#, "does not export \"stockade_abi_version\""),
        (
            r#"(module (memory (export "memory") 1) (func (export "stockade_abi_version") (result i32) (i32.const 999)))"#,
            "built for guest ABI version 999",
        ),
        (
            r#"(module (import "env" "open" (func)) (memory (export "memory") 1)
                (func (export "stockade_abi_version") (result i32) (i32.const 1)))"#,
            "imports what the host does not provide",
        ),
        (r#"(module (func (export "stockade_abi_version") (result i32) (i32.const 1)))"#, "exports no memory"),
        (
            r#"(module (memory (export "memory") 1) (func (export "stockade_task_f") (param i32)))"#,
            "is not a function `() -> i32`",
        ),
        (r#"(module (memory (export "memory") 2000))"#, "its memory starts at 131072000 bytes, more than the limit"),
    ];
    for (text, expected) in cases {
        let bytes = wat::parse_str(text).unwrap();
        match sandbox.module(key_of(&bytes), &bytes) {
            Err(WasmError::BadModule { reason }) => assert!(reason.contains(expected), "{reason:?} lacks {expected:?}"),
            other => panic!("expected BadModule for {text}, got {other:?}"),
        }
    }
}

#[test]
fn a_module_whose_bytes_do_not_match_its_key_is_refused() {
    let _process = together();
    let bytes = guest_bytes("fixtures");
    let Err(WasmError::BadModule { reason }) = shared().0.module([7; 32], &bytes) else {
        panic!("expected BadModule");
    };
    assert!(reason.contains("do not hash to its key"), "{reason}");
}

#[test]
fn a_module_is_compiled_once_and_only_runs_in_its_sandbox() {
    let _process = together();
    let (sandbox, module) = shared();
    let bytes = guest_bytes("fixtures");
    assert!(Arc::ptr_eq(&sandbox.module(key_of(&bytes), &bytes).unwrap(), module));
    let other = WasmSandbox::new(WasmLimits { instances: 2, ..limits() }).unwrap();
    let Err(WasmError::BadModule { reason }) = other.call(module, "noop", b"null", Arc::new(NoPins)) else {
        panic!("expected BadModule");
    };
    assert_eq!(reason, "it was loaded by another sandbox");
}

// Pinned archives.

fn pins(entries: Vec<Vec<u8>>) -> (Arc<dyn Pins>, Vec<String>) {
    let keys: Vec<[u8; 32]> = entries.iter().map(|bytes| key_of(bytes)).collect();
    let hex = keys.iter().map(hex::encode).collect();
    (Arc::new(keys.into_iter().zip(entries).collect::<HashMap<_, _>>()), hex)
}

#[test]
fn a_pinned_archive_is_read_in_place() {
    let _process = together();
    let values = vec![1.5f64, 2.0, -0.25, 1e3];
    let archive = rkyv::to_bytes::<rkyv::rancor::Error>(&values).unwrap().to_vec();
    let (pins, keys) = pins(vec![archive, b"not an archive of floats".to_vec()]);
    let sum = call_with("pinned_sum", &format!("{:?}", keys[0]), Arc::clone(&pins)).unwrap();
    assert_eq!(sum.parse::<f64>().unwrap(), values.iter().sum::<f64>());

    let message = failure_message(call_with("pinned_sum", &format!("{:?}", keys[1]), Arc::clone(&pins)));
    assert!(message.contains("is not a valid archive of the requested type"), "{message}");
    let absent = hex::encode([0u8; 32]);
    let message = failure_message(call_with("pinned_sum", &format!("{absent:?}"), pins));
    assert_eq!(message, format!("nothing is pinned under key {absent}"));
}

// The worker's view: many calls, several threads.

/// Resident set size of this process, from /proc/self/statm.
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * usize::try_from(page).unwrap()
}

#[test]
fn a_thousand_instantiations_do_not_grow_resident_memory() {
    let _process = alone();
    for _ in 0..200 {
        call("echo", r#"{"warm":"up"}"#).unwrap();
    }
    let before = resident_bytes();
    for i in 0..1000 {
        assert_eq!(call("echo", &i.to_string()).unwrap(), i.to_string());
    }
    let grown = resident_bytes().saturating_sub(before);
    assert!(grown < 16 << 20, "resident memory grew by {grown} bytes over 1000 calls");
}

#[test]
fn calls_from_two_threads_at_once_keep_to_their_inputs() {
    let _process = together();
    std::thread::scope(|scope| {
        for thread in 0..2 {
            scope.spawn(move || {
                for i in 0..200 {
                    // Keys in sorted order: that is how the guest's serde_json writes them.
                    let input = format!(r#"{{"call":{i},"thread":{thread}}}"#);
                    assert_eq!(call("echo", &input).unwrap(), input);
                }
            });
        }
    });
}

#[test]
fn calls_work_from_tokio_blocking_threads() {
    let _process = together();
    // The worker's way: WASI's host calls (here the guest's prints) run inside tokio.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
    let result =
        runtime.block_on(async { tokio::task::spawn_blocking(|| call("scribble_then_trap", r#""tokio""#)).await });
    let message = trap_message(result.unwrap());
    assert!(message.contains("guest stderr:\nstderr: tokio"), "{message}");
}

// The ridge example.

/// Pins a numpy-like float64 array the way the Python client scatters it.
fn scattered_array(values: &[f64], shape: &[u64]) -> Vec<u8> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let object = Scattered {
        pickle: b"numpy pickle".to_vec(),
        buffers: vec![Buffer { data, dtype: "<f8".into(), shape: shape.to_vec() }],
    };
    rkyv::to_bytes::<rkyv::rancor::Error>(&object).unwrap().to_vec()
}

/// Ridge regression with an intercept, the textbook way: centre, form the normal
/// equations, solve by Gaussian elimination with partial pivoting.
fn ridge_reference(x: &[Vec<f64>], y: &[f64], alpha: f64, train: &[usize], test: &[usize]) -> (f64, f64, Vec<f64>) {
    let d = x[0].len();
    let n = train.len() as f64;
    let x_mean: Vec<f64> = (0..d).map(|j| train.iter().map(|&i| x[i][j]).sum::<f64>() / n).collect();
    let y_mean = train.iter().map(|&i| y[i]).sum::<f64>() / n;
    let mut system: Vec<Vec<f64>> = (0..d)
        .map(|a| {
            let mut row: Vec<f64> = (0..d)
                .map(|b| train.iter().map(|&i| (x[i][a] - x_mean[a]) * (x[i][b] - x_mean[b])).sum::<f64>())
                .collect();
            row[a] += alpha;
            row.push(train.iter().map(|&i| (x[i][a] - x_mean[a]) * (y[i] - y_mean)).sum());
            row
        })
        .collect();
    for col in 0..d {
        let pivot = (col..d).max_by(|&a, &b| system[a][col].abs().total_cmp(&system[b][col].abs())).unwrap();
        system.swap(col, pivot);
        for row in 0..d {
            if row != col {
                let factor = system[row][col] / system[col][col];
                let pivot_row = system[col].clone();
                system[row].iter_mut().zip(&pivot_row).for_each(|(v, p)| *v -= factor * p);
            }
        }
    }
    let coef: Vec<f64> = (0..d).map(|j| system[j][d] / system[j][j]).collect();
    let intercept = y_mean - coef.iter().zip(&x_mean).map(|(w, m)| w * m).sum::<f64>();
    let predicted: Vec<f64> =
        test.iter().map(|&i| intercept + coef.iter().zip(&x[i]).map(|(w, v)| w * v).sum::<f64>()).collect();
    let test_mean = test.iter().map(|&i| y[i]).sum::<f64>() / test.len() as f64;
    let residual: f64 = test.iter().zip(&predicted).map(|(&i, p)| (y[i] - p).powi(2)).sum();
    let total: f64 = test.iter().map(|&i| (y[i] - test_mean).powi(2)).sum();
    (1.0 - residual / total, intercept, coef)
}

#[test]
fn the_ridge_example_scores_like_a_direct_computation() {
    let _process = together();
    let (rows, cols) = (80usize, 6usize);
    // A deterministic pseudo-random design and noisy linear targets.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    };
    let x: Vec<Vec<f64>> = (0..rows).map(|_| (0..cols).map(|_| 4.0 * uniform()).collect()).collect();
    let truth = [1.5, -2.0, 0.0, 0.75, 3.0, -0.5];
    let y: Vec<f64> =
        x.iter().map(|row| 3.0 + row.iter().zip(truth).map(|(v, w)| v * w).sum::<f64>() + uniform()).collect();
    let flat: Vec<f64> = x.iter().flatten().copied().collect();
    let (pins, keys) =
        pins(vec![scattered_array(&flat, &[rows as u64, cols as u64]), scattered_array(&y, &[rows as u64])]);

    let sandbox = WasmSandbox::new(WasmLimits { instances: 4, ..limits() }).unwrap();
    let bytes = guest_bytes("ridge");
    let module = sandbox.module(key_of(&bytes), &bytes).unwrap();
    assert_eq!(module.tasks().collect::<Vec<_>>(), ["fit_score"]);
    let (train, test): (Vec<usize>, Vec<usize>) = ((0..60).collect(), (60..rows).collect());
    for alpha in [0.01, 1.0, 100.0] {
        let input = serde_json::json!({"alpha": alpha, "x": keys[0], "y": keys[1], "train": train, "test": test});
        let output = sandbox.call(&module, "fit_score", input.to_string().as_bytes(), Arc::clone(&pins)).unwrap();
        let fitted: serde_json::Value = serde_json::from_slice(&output).unwrap();
        let (score, intercept, coef) = ridge_reference(&x, &y, alpha, &train, &test);
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * (1.0 + b.abs());
        assert!(close(fitted["score"].as_f64().unwrap(), score), "alpha {alpha}: {fitted} vs score {score}");
        assert!(close(fitted["intercept"].as_f64().unwrap(), intercept), "alpha {alpha}: {fitted} vs {intercept}");
        let guest_coef: Vec<f64> = serde_json::from_value(fitted["coef"].clone()).unwrap();
        assert_eq!(guest_coef.len(), cols);
        assert!(guest_coef.iter().zip(&coef).all(|(a, b)| close(*a, *b)), "alpha {alpha}: {guest_coef:?} vs {coef:?}");
    }
    // Small alpha recovers a good fit; the score is a real R².
    let input = serde_json::json!({"alpha": 0.01, "x": keys[0], "y": keys[1], "train": train, "test": test});
    let output = sandbox.call(&module, "fit_score", input.to_string().as_bytes(), Arc::clone(&pins)).unwrap();
    let score = serde_json::from_slice::<serde_json::Value>(&output).unwrap()["score"].as_f64().unwrap();
    assert!(score > 0.9, "R² {score}");

    let bad = serde_json::json!({"alpha": 1.0, "x": keys[0], "y": keys[1], "train": [0, 500], "test": [1]});
    let message = match sandbox.call(&module, "fit_score", bad.to_string().as_bytes(), pins) {
        Err(WasmError::Failed { message }) => message,
        other => panic!("expected Failed, got {other:?}"),
    };
    assert_eq!(message, format!("row 500 is out of range: x has {rows} rows"));
}

#[test]
fn the_ridge_benchmark_runs_the_same_fit_in_the_sandbox_and_natively() {
    let _process = together();
    let options = RidgeOptions { rows: 90, cols: 5, alpha: 0.5, runs: 1 };
    let report = ridge_bench(&guest_bytes("ridge"), &options).unwrap();
    // The benchmark itself refuses differing answers; the fit is also a good one.
    assert!((report.sandbox_score - report.native_score).abs() <= 1e-9, "{report}");
    assert!(report.native_score > 0.9, "{report}");
    assert!(report.sandbox.with_epochs > Duration::ZERO && report.native > Duration::ZERO, "{report}");
}
