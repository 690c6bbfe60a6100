//! Measurements of the sandbox: instantiation time, no-op call throughput on several
//! threads, and the cost of epoch interruption on compute-bound code.
//!
//! [`bench`] needs no guest build: its module is written here in WAT, against the same
//! ABI constants as the SDK. [`ridge`] times the ridge example guest
//! (`examples/guests/ridge`) in the sandbox next to the same source compiled natively.
//! Benchmarks are not tests; a command runs these and prints their reports.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stockade_guest::abi;
use stockade_guest::archive::{Buffer, Scattered};
use stockade_guest::Matrix;

use super::engine::EngineOptions;
use super::store::CallState;
use super::{NoPins, Pins, WasmError, WasmLimits, WasmModule, WasmSandbox};

/// What to measure, and how much.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Instantiations timed one by one (the median and the 90th percentile are reported).
    pub instantiations: usize,
    /// Threads calling the no-op task at once.
    pub threads: usize,
    /// No-op calls per thread.
    pub calls_per_thread: usize,
    /// Repetitions of each compute kernel per run (one repetition is 1024 steps).
    pub compute_repetitions: u64,
    /// Runs of each compute kernel per engine (the median is reported).
    pub compute_runs: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            instantiations: 20_000,
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            calls_per_thread: 50_000,
            compute_repetitions: 50_000,
            compute_runs: 7,
        }
    }
}

/// The figures [`bench`] measured.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Instances came from the pooling allocator.
    pub pooling: bool,
    /// Median time to set up a call: a fresh store with its WASI context and limits, and
    /// an instance of a small module.
    pub instantiate_median: Duration,
    /// 90th percentile of the same.
    pub instantiate_p90: Duration,
    /// Threads that called the no-op task at once.
    pub threads: usize,
    /// Complete no-op calls ([`WasmSandbox::call`]) per second, over all threads.
    pub noop_calls_per_second: f64,
    /// CPU time of the process per no-op call (steadier than the rate on a busy machine).
    pub noop_cpu_per_call: Duration,
    /// Each compute kernel's median run time with and without epoch interruption.
    pub kernels: Vec<KernelTimes>,
}

/// One compute kernel's median CPU time (of the calling thread, so other processes on a
/// busy machine disturb it less) on the two engines.
#[derive(Debug, Clone)]
pub struct KernelTimes {
    /// What the kernel computes.
    pub name: String,
    /// Median CPU time of a run with epoch interruption (as tasks run).
    pub with_epochs: Duration,
    /// Median CPU time of a run without it.
    pub without_epochs: Duration,
}

impl KernelTimes {
    /// The extra time epoch interruption costs, as a fraction of the time without it.
    pub fn epoch_overhead(&self) -> f64 {
        self.with_epochs.as_secs_f64() / self.without_epochs.as_secs_f64() - 1.0
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let allocator = if self.pooling { "pooling" } else { "on-demand" };
        writeln!(
            f,
            "instantiation ({allocator}): median {:.1} µs, p90 {:.1} µs",
            micros(self.instantiate_median),
            micros(self.instantiate_p90)
        )?;
        writeln!(
            f,
            "no-op calls on {} threads: {:.0} calls/s, {:.1} µs of CPU per call",
            self.threads,
            self.noop_calls_per_second,
            micros(self.noop_cpu_per_call)
        )?;
        for kernel in &self.kernels {
            writeln!(
                f,
                "epoch interruption on {}: {:.1} ms of CPU with, {:.1} ms without, overhead {:+.1} %",
                kernel.name,
                kernel.with_epochs.as_secs_f64() * 1e3,
                kernel.without_epochs.as_secs_f64() * 1e3,
                kernel.epoch_overhead() * 100.0
            )?;
        }
        Ok(())
    }
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

/// The compute kernels: (task, description).
const KERNELS: [(&str, &str); 2] =
    [("dot", "a float64 dot product (1024 elements)"), ("xorshift", "an integer xorshift loop (1024 steps)")];

/// Measures the sandbox with default limits (see [`BenchOptions`] for how much).
///
/// # Errors
///
/// Whatever setting up the sandboxes or running the module returns; none is expected.
pub fn bench(options: &BenchOptions) -> Result<BenchReport, WasmError> {
    let wasm = wat::parse_str(bench_module_wat()).map_err(|err| WasmError::BadModule { reason: err.to_string() })?;
    let key = *blake3::hash(&wasm).as_bytes();
    let limits =
        WasmLimits { instances: u32::try_from(options.threads + 2).unwrap_or(u32::MAX), ..WasmLimits::default() };
    let sandbox = WasmSandbox::new(limits)?;
    let module = sandbox.module(key, &wasm)?;
    let pins: Arc<dyn Pins> = Arc::new(NoPins);

    let mut setups = Vec::with_capacity(options.instantiations);
    for _ in 0..options.instantiations {
        setups.push(sandbox.time_instantiation(&module)?);
    }
    setups.sort();
    let percentile = |p: usize| setups.get(setups.len() * p / 100).copied().unwrap_or_default();

    let (started, cpu_started) = (Instant::now(), cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID));
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..options.threads)
            .map(|_| {
                scope.spawn(|| {
                    (0..options.calls_per_thread)
                        .try_for_each(|_| sandbox.call(&module, "noop", b"", Arc::clone(&pins)).map(drop))
                })
            })
            .collect();
        workers.into_iter().try_for_each(|worker| {
            worker
                .join()
                .unwrap_or_else(|_| Err(WasmError::Trap { message: "a benchmark thread panicked".to_string() }))
        })
    })?;
    let calls = options.threads * options.calls_per_thread;
    let noop_calls_per_second = calls as f64 / started.elapsed().as_secs_f64();
    let noop_cpu_per_call = cpu_time(libc::CLOCK_PROCESS_CPUTIME_ID).saturating_sub(cpu_started) / calls.max(1) as u32;

    let input = options.compute_repetitions.to_le_bytes();
    let kernels = KERNELS
        .into_iter()
        .map(|(task, name)| {
            epoch_overhead(name, &wasm, task, &input, Arc::clone(&pins), options.compute_runs).map(|(times, _)| times)
        })
        .collect::<Result<_, _>>()?;

    Ok(BenchReport {
        pooling: sandbox.pooling(),
        instantiate_median: percentile(50),
        instantiate_p90: percentile(90),
        threads: options.threads,
        noop_calls_per_second,
        noop_cpu_per_call,
        kernels,
    })
}

/// The cost of epoch interruption on one task of any guest: the median CPU time of
/// `runs` calls in a sandbox with default limits, and in one whose engine does not
/// instrument code with epoch checks, the two taking turns (so that a change in the
/// machine's speed affects both alike); with the task's output from the engine with
/// epoch checks (as tasks run).
///
/// # Errors
///
/// What loading the module or calling the task returns.
pub fn epoch_overhead(
    name: &str,
    wasm: &[u8],
    task: &str,
    input: &[u8],
    pins: Arc<dyn Pins>,
    runs: usize,
) -> Result<(KernelTimes, Vec<u8>), WasmError> {
    let limits = WasmLimits { instances: 2, ..WasmLimits::default() };
    let key = *blake3::hash(wasm).as_bytes();
    let mut loaded = Vec::with_capacity(2);
    let mut outputs = Vec::with_capacity(2);
    for epoch_interruption in [true, false] {
        let sandbox = WasmSandbox::with_options(
            limits.clone(),
            EngineOptions { epoch_interruption, ..EngineOptions::default() },
        )?;
        let module = sandbox.module(key, wasm)?;
        outputs.push(sandbox.call(&module, task, input, Arc::clone(&pins))?);
        loaded.push((sandbox, module));
    }
    let pins = &pins;
    let mut calls: Vec<_> = loaded
        .iter()
        .map(|(sandbox, module)| move || sandbox.call(module, task, input, Arc::clone(pins)).map(drop))
        .collect();
    let mut runs_of: Vec<&mut dyn FnMut() -> Result<(), WasmError>> =
        calls.iter_mut().map(|call| call as &mut dyn FnMut() -> Result<(), WasmError>).collect();
    let medians = median_cpu_times(runs, &mut runs_of)?;
    let times = KernelTimes { name: name.to_string(), with_epochs: medians[0], without_epochs: medians[1] };
    Ok((times, outputs.swap_remove(0)))
}

/// The median CPU time of this thread over `runs` (at least one) calls of each of
/// `variants`, which take turns, in an order that alternates from round to round.
fn median_cpu_times(
    runs: usize,
    variants: &mut [&mut dyn FnMut() -> Result<(), WasmError>],
) -> Result<Vec<Duration>, WasmError> {
    let mut times = vec![Vec::with_capacity(runs.max(1)); variants.len()];
    for round in 0..runs.max(1) {
        for turn in 0..variants.len() {
            let which = if round % 2 == 0 { turn } else { variants.len() - 1 - turn };
            let started = cpu_time(libc::CLOCK_THREAD_CPUTIME_ID);
            variants[which]()?;
            times[which].push(cpu_time(libc::CLOCK_THREAD_CPUTIME_ID).saturating_sub(started));
        }
    }
    Ok(times
        .into_iter()
        .map(|mut samples| {
            samples.sort();
            samples[samples.len() / 2]
        })
        .collect())
}

/// CPU time consumed so far by this thread or process (`clock` is a CPU-time clock).
fn cpu_time(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(clock, &mut now) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// The ridge example's fit, compiled natively from the guest's own source file: the
/// same computation as the guest's `fit_score`, outside the sandbox.
#[path = "../../../../examples/guests/ridge/src/fit.rs"]
mod ridge_fit;

/// The problem [`ridge`] fits.
#[derive(Debug, Clone)]
pub struct RidgeOptions {
    /// Rows of the design matrix (two thirds train, one third test).
    pub rows: usize,
    /// Its columns.
    pub cols: usize,
    /// The regularisation strength.
    pub alpha: f64,
    /// Timed fits of each kind (the median is reported).
    pub runs: usize,
}

impl Default for RidgeOptions {
    /// The shape of scikit-learn's digits data, as `examples/wasm_search.py` fits it.
    fn default() -> Self {
        RidgeOptions { rows: 1797, cols: 64, alpha: 1.0, runs: 31 }
    }
}

/// What [`ridge`] measured: median CPU time of one fit and score of each kind.
#[derive(Debug, Clone)]
pub struct RidgeReport {
    /// The problem.
    pub options: RidgeOptions,
    /// In the sandbox, with and without epoch interruption (a whole task: instance,
    /// JSON input and output included).
    pub sandbox: KernelTimes,
    /// The same source compiled natively into this binary.
    pub native: Duration,
    /// The R² the guest returned.
    pub sandbox_score: f64,
    /// The R² of the native fit; equal to the guest's up to rounding.
    pub native_score: f64,
}

impl fmt::Display for RidgeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        writeln!(
            f,
            "ridge fit ({} x {}): sandbox {:.2} ms ({:.2} ms without epoch checks, {:+.1} %), native {:.2} ms; \
             sandbox / native {:.2}; R² {:.12} vs {:.12}",
            self.options.rows,
            self.options.cols,
            ms(self.sandbox.with_epochs),
            ms(self.sandbox.without_epochs),
            self.sandbox.epoch_overhead() * 100.0,
            ms(self.native),
            self.sandbox.with_epochs.as_secs_f64() / self.native.as_secs_f64(),
            self.sandbox_score,
            self.native_score
        )
    }
}

/// Times one ridge fit and score of `wasm` (the ridge example guest) in the sandbox,
/// with and without epoch interruption, and the same fit compiled natively, on
/// deterministic data of the configured shape.
///
/// # Errors
///
/// What loading the module or calling it returns, and [`WasmError::Failed`] when the
/// guest's answer is not the native one.
pub fn ridge(wasm: &[u8], options: &RidgeOptions) -> Result<RidgeReport, WasmError> {
    let (rows, cols) = (options.rows, options.cols);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    };
    // Pixel-like values in [0, 16) and targets linear in them plus noise.
    let x: Vec<f64> = (0..rows * cols).map(|_| (16.0 * uniform()).floor()).collect();
    let weights: Vec<f64> = (0..cols).map(|_| uniform() - 0.5).collect();
    let y: Vec<f64> = x
        .chunks(cols.max(1))
        .map(|row| row.iter().zip(&weights).map(|(v, w)| v * w).sum::<f64>() + uniform())
        .collect();
    let (test, train): (Vec<usize>, Vec<usize>) = (0..rows).partition(|row| row % 3 == 0);

    let archive = |values: &[f64], shape: Vec<u64>| {
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let object = Scattered { pickle: Vec::new(), buffers: vec![Buffer { data, dtype: "<f8".into(), shape }] };
        rkyv::to_bytes::<rkyv::rancor::Error>(&object)
            .map(|bytes| bytes.to_vec())
            .map_err(|err| WasmError::Failed { message: format!("cannot archive the data: {err}") })
    };
    let pinned = [archive(&x, vec![rows as u64, cols as u64])?, archive(&y, vec![rows as u64])?];
    let keys = pinned.each_ref().map(|bytes| *blake3::hash(bytes).as_bytes());
    let pins: Arc<dyn Pins> = Arc::new(keys.into_iter().zip(pinned).collect::<HashMap<_, _>>());
    let input = serde_json::json!({"alpha": options.alpha, "x": hex::encode(keys[0]), "y": hex::encode(keys[1]),
                                   "train": train, "test": test})
    .to_string();

    let (sandbox, output) = epoch_overhead("the ridge fit", wasm, "fit_score", input.as_bytes(), pins, options.runs)?;
    let sandbox_score = serde_json::from_slice::<serde_json::Value>(&output)
        .ok()
        .and_then(|fitted| fitted["score"].as_f64())
        .ok_or_else(|| WasmError::Failed { message: "the guest's output has no score".into() })?;

    let matrix = Matrix { rows, cols, data: &x };
    let fit = || ridge_fit::fit_and_score(&matrix, &y, options.alpha, &train, &test);
    let native_score = fit().map_err(|message| WasmError::Failed { message })?.score;
    let mut native_fit = || std::hint::black_box(fit()).map(drop).map_err(|message| WasmError::Failed { message });
    let native = median_cpu_times(options.runs, &mut [&mut native_fit])?[0];
    if (sandbox_score - native_score).abs() > 1e-9 * (1.0 + native_score.abs()) {
        return Err(WasmError::Failed {
            message: format!("the guest scored {sandbox_score}, the native fit {native_score}"),
        });
    }
    Ok(RidgeReport { options: options.clone(), sandbox, native, sandbox_score, native_score })
}

impl WasmSandbox {
    /// The time to set up one call of `module`: store, WASI context, limits and
    /// instance (their teardown is not timed).
    fn time_instantiation(&self, module: &WasmModule) -> Result<Duration, WasmError> {
        let started = Instant::now();
        let mut store = self.store(CallState::new(&self.limits, Vec::new(), Arc::new(NoPins)));
        let instance = module.pre.instantiate(&mut store);
        let elapsed = started.elapsed();
        match instance {
            Ok(_) => Ok(elapsed),
            Err(err) => Err(self.classify(&err, store.data(), "")),
        }
    }
}

/// The benchmark's module: a no-op task and two compute kernels whose input is the
/// number of repetitions (8 bytes, little-endian) and whose output is the result's bits.
fn bench_module_wat() -> String {
    format!(
        r#"(module
  (import "{module}" "{input_read}" (func $input_read (param i32 i32)))
  (import "{module}" "{output_write}" (func $output_write (param i32 i32)))
  (memory (export "{memory}") 1)
  (func (export "{version_export}") (result i32) (i32.const {version}))
  (func (export "{prefix}noop") (result i32) (i32.const {ok}))
  ;; Sum of x[i] * y[i] over two 1024-element vectors at 1024 and 9216, `reps` times.
  (func (export "{prefix}dot") (result i32)
    (local $reps i64) (local $i i32) (local $acc f64)
    (call $input_read (i32.const 0) (i32.const 8))
    (local.set $reps (i64.load (i32.const 0)))
    (loop $outer
      (local.set $i (i32.const 0))
      (loop $inner
        (local.set $acc (f64.add (local.get $acc)
          (f64.mul (f64.load offset=1024 (local.get $i)) (f64.load offset=9216 (local.get $i)))))
        (local.set $i (i32.add (local.get $i) (i32.const 8)))
        (br_if $inner (i32.lt_u (local.get $i) (i32.const 8192))))
      (local.set $reps (i64.sub (local.get $reps) (i64.const 1)))
      (br_if $outer (i64.gt_s (local.get $reps) (i64.const 0))))
    (f64.store (i32.const 16) (local.get $acc))
    (call $output_write (i32.const 16) (i32.const 8))
    (i32.const {ok}))
  ;; 1024 xorshift64 steps, `reps` times.
  (func (export "{prefix}xorshift") (result i32)
    (local $reps i64) (local $i i32) (local $x i64)
    (call $input_read (i32.const 0) (i32.const 8))
    (local.set $reps (i64.load (i32.const 0)))
    (local.set $x (i64.const 88172645463325252))
    (loop $outer
      (local.set $i (i32.const 1024))
      (loop $inner
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 13))))
        (local.set $x (i64.xor (local.get $x) (i64.shr_u (local.get $x) (i64.const 7))))
        (local.set $x (i64.xor (local.get $x) (i64.shl (local.get $x) (i64.const 17))))
        (local.set $i (i32.sub (local.get $i) (i32.const 1)))
        (br_if $inner (local.get $i)))
      (local.set $reps (i64.sub (local.get $reps) (i64.const 1)))
      (br_if $outer (i64.gt_s (local.get $reps) (i64.const 0))))
    (i64.store (i32.const 16) (local.get $x))
    (call $output_write (i32.const 16) (i32.const 8))
    (i32.const {ok}))
)"#,
        module = abi::IMPORT_MODULE,
        input_read = abi::INPUT_READ,
        output_write = abi::OUTPUT_WRITE,
        memory = abi::MEMORY_EXPORT,
        version_export = abi::ABI_VERSION_EXPORT,
        version = abi::ABI_VERSION,
        prefix = abi::TASK_EXPORT_PREFIX,
        ok = abi::TASK_OK,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The benchmark's module loads and its kernels compute what they should; nothing is
    /// timed here.
    #[test]
    fn the_benchmark_module_runs() {
        let wasm = wat::parse_str(bench_module_wat()).unwrap();
        let sandbox = WasmSandbox::new(WasmLimits { instances: 2, ..WasmLimits::default() }).unwrap();
        let module = sandbox.module(*blake3::hash(&wasm).as_bytes(), &wasm).unwrap();
        assert_eq!(module.tasks().collect::<Vec<_>>(), ["dot", "noop", "xorshift"]);
        let pins: Arc<dyn Pins> = Arc::new(NoPins);
        assert_eq!(sandbox.call(&module, "noop", b"", Arc::clone(&pins)).unwrap(), b"");
        let dot = sandbox.call(&module, "dot", &3u64.to_le_bytes(), Arc::clone(&pins)).unwrap();
        assert_eq!(dot, 0f64.to_le_bytes());
        let mut x: u64 = 88172645463325252;
        for _ in 0..2 * 1024 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
        }
        assert_eq!(sandbox.call(&module, "xorshift", &2u64.to_le_bytes(), pins).unwrap(), x.to_le_bytes());
        assert!(sandbox.time_instantiation(&module).unwrap() > Duration::ZERO);
    }
}
