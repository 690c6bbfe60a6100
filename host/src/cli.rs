//! The `stockade` command: `scheduler`, `worker`, `status`, `bench`.
//!
//! Data goes to stdout (the scheduler's ready line, `status` output, benchmark
//! figures); logs go to stderr. Errors end with a `hint:`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};

use crate::client::NewTask;
use crate::client::{Client, ClientOptions};
use crate::net::{self, tls::Identity, SchedulerFile, Target};
use crate::proto::{Builtin, ObjectKind, Outcome, TaskKind, WasmCall};
use crate::sandbox::python::{PythonConfig, PythonExecutor};
use crate::sandbox::wasm::bench::{bench as sandbox_bench, ridge as ridge_bench, BenchOptions, RidgeOptions};
use crate::sandbox::wasm::{executor::WasmExecutor, WasmLimits, WasmSandbox};
use crate::scheduler::{self, state::SchedulerConfig, SchedulerOptions};
use crate::store::Store;
use crate::tenancy::Tenants;
use crate::worker::{self, pins::human, BuiltinExecutor, Executors, WorkerOptions};

/// Stockade: run joblib workloads and WebAssembly tasks on a shared cluster.
#[derive(Debug, Parser)]
#[command(name = "stockade", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a scheduler.
    Scheduler(SchedulerArgs),
    /// Start a worker and connect it to a scheduler.
    Worker(WorkerArgs),
    /// Show workers, slots and task counts of a scheduler.
    Status(StatusArgs),
    /// Run built-in tasks through a scheduler and print throughput and latency.
    Bench(BenchArgs),
    /// Run one task of a WebAssembly module on the cluster and print its JSON output.
    Run(RunArgs),
}

/// How to reach a scheduler; shared by every command that connects.
#[derive(Debug, Args)]
struct Connect {
    /// Scheduler address, HOST:PORT (optional with --scheduler-file).
    scheduler: Option<String>,
    #[command(flatten)]
    via: ConnectVia,
}

/// The options of [`Connect`] besides the address.
#[derive(Debug, Args)]
struct ConnectVia {
    /// Scheduler file written by `stockade scheduler --scheduler-file`.
    #[arg(long, env = "STOCKADE_SCHEDULER_FILE")]
    scheduler_file: Option<PathBuf>,
    /// Access token (default: the one in the scheduler file).
    #[arg(long, env = "STOCKADE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Verify the scheduler with this CA (PEM) instead of a pinned fingerprint.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Seconds to wait for the scheduler.
    #[arg(long, default_value_t = 10.0)]
    timeout: f64,
}

impl Connect {
    fn target(&self) -> anyhow::Result<Target> {
        Ok(Target::resolve(
            self.scheduler.as_deref(),
            self.via.scheduler_file.as_deref(),
            self.via.token.clone(),
            self.via.ca_file.clone(),
        )?)
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs_f64(self.via.timeout.max(0.1))
    }
}

#[derive(Debug, Args)]
struct SchedulerArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// UDP port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 8786)]
    port: u16,
    /// Also write the scheduler file here (it always goes to the per-user default too).
    #[arg(long)]
    scheduler_file: Option<PathBuf>,
    /// Tenants and tokens (`[[tenant]] name, token`).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Token of the default tenant (default: a fresh random one).
    #[arg(long, env = "STOCKADE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Accept connections without a token (only when listening on loopback).
    #[arg(long)]
    no_token: bool,
    /// PEM certificate to present (default: a fresh self-signed one).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Milliseconds between worker heartbeats.
    #[arg(long, default_value_t = 1000)]
    heartbeat_interval_ms: u64,
    /// Milliseconds of silence after which a worker is declared lost.
    #[arg(long, default_value_t = 10_000)]
    heartbeat_timeout_ms: u64,
    /// A task fails with WorkerLost after this many workers were lost running it.
    #[arg(long, default_value_t = 3)]
    allowed_failures: u32,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct StoreArgs {
    /// Directory of pinned objects (default: /dev/shm/stockade-UID). Processes on one
    /// machine that use the same directory share pinned objects without copies.
    #[arg(long, env = "STOCKADE_STORE_DIR")]
    store_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct WorkerArgs {
    #[command(flatten)]
    connect: Connect,
    /// Tasks run at once (default: number of CPUs).
    #[arg(long)]
    slots: Option<u32>,
    /// Name shown by `status` (default: host name and process id).
    #[arg(long)]
    name: Option<String>,
    /// Python interpreter for Python tasks (needs cloudpickle and the users' libraries).
    #[arg(long, default_value = "python3", env = "STOCKADE_PYTHON")]
    python: String,
    /// Replace a Python child after this many tasks (by default a child serves for as
    /// long as it lives).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    max_tasks_per_child: Option<u32>,
    /// Replace a Python child whose resident memory exceeds this after a task (e.g. 2GiB).
    #[arg(long, value_parser = parse_bytes)]
    max_child_memory: Option<u64>,
    /// Memory limit of one WebAssembly task (e.g. 256MiB).
    #[arg(long, value_parser = parse_bytes)]
    wasm_memory: Option<u64>,
    /// Wall-time limit of one WebAssembly task, in seconds.
    #[arg(long)]
    wasm_timeout: Option<f64>,
    /// Bound on the bytes of pinned (scattered) objects this worker holds (e.g. 4GiB).
    #[arg(long, value_parser = parse_bytes)]
    memory_limit: Option<u64>,
    #[command(flatten)]
    store: StoreArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The module (a `wasm32-wasip1` guest built with stockade-guest).
    module: PathBuf,
    /// The task to run (a `#[stockade_guest::task]` function).
    task: String,
    /// JSON input: a file, or `-` for standard input (default: `null`).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Scheduler address, HOST:PORT (optional with --scheduler-file).
    #[arg(long)]
    scheduler: Option<String>,
    #[command(flatten)]
    via: ConnectVia,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    connect: Connect,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct BenchArgs {
    #[command(flatten)]
    connect: Connect,
    /// Number of tasks for the throughput run.
    #[arg(long, default_value_t = 10_000)]
    tasks: usize,
    /// Built-in kind: noop, echo or sleep.
    #[arg(long, default_value = "noop")]
    kind: String,
    /// Payload of each task (for sleep: milliseconds).
    #[arg(long, default_value = "")]
    payload: String,
    /// Number of one-at-a-time tasks for the latency run (0 skips it).
    #[arg(long, default_value_t = 1000)]
    latency_tasks: usize,
    /// Run this task of a WebAssembly module instead of a built-in kind (input `null`),
    /// after two warm-up tasks that wait for the workers to compile it.
    #[arg(long, value_name = "MODULE.wasm")]
    wasm_module: Option<PathBuf>,
    /// The task of --wasm-module.
    #[arg(long, default_value = "noop")]
    wasm_task: String,
    /// Measure this machine's WebAssembly sandbox instead (instantiation, no-op calls,
    /// epoch-interruption cost); needs no scheduler.
    #[arg(long)]
    sandbox: bool,
    /// Time one fit of the ridge example guest (MODULE.wasm, `just guests` builds it) in
    /// the sandbox, with and without epoch checks, next to the same source compiled
    /// natively; needs no scheduler.
    #[arg(long, value_name = "MODULE.wasm")]
    ridge: Option<PathBuf>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs the command line; the binary's `main` is only this.
pub fn main() -> std::process::ExitCode {
    run(std::env::args_os())
}

/// Runs the command line with these arguments (the first is the program name). The
/// Python package's `stockade` entry point calls this.
pub fn run<I, T>(args: I) -> std::process::ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    log_to_stderr(
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    );
    // One thread: scheduler and worker work is many tiny steps, and cross-thread
    // wake-ups cost more than they buy (measured: about 2x throughput on 2 cores).
    // Executors that need threads (CPython children, wasmtime) bring their own.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Scheduler(args) => run_scheduler(args).await,
            Command::Worker(args) => run_worker(args).await,
            Command::Status(args) => run_status(args).await,
            Command::Bench(args) => run_bench(args).await,
            Command::Run(args) => run_wasm(args).await,
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let mut message = format!("error: {e}");
            for cause in e.chain().skip(1) {
                message.push_str(&format!("\n  caused by: {cause}"));
            }
            eprintln!("{message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Sends this process's logs to stderr (unless something else already took them).
fn log_to_stderr(filter: tracing_subscriber::EnvFilter) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// The environment variable naming a lifeline: the read end of a pipe whose write end
/// the process that started this one holds (`stockade.LocalCluster` sets it).
const LIFELINE_ENV: &str = "STOCKADE_LIFELINE_FD";

/// Completes on SIGINT or SIGTERM, or when the lifeline ([`LIFELINE_ENV`]) ends.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => drop(term.recv().await),
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
        _ = lifeline_ended() => {}
    }
}

/// Completes when the lifeline pipe reaches its end: the process holding its write end
/// has exited, however it died (even by SIGKILL or `os._exit`, which run no clean-up),
/// so a local cluster never outlives its owner. Never completes without a lifeline.
async fn lifeline_ended() {
    use std::io::Read;
    use std::os::fd::FromRawFd;

    let Some(fd) = std::env::var(LIFELINE_ENV).ok().and_then(|v| v.parse::<i32>().ok()).filter(|fd| *fd > 2) else {
        return std::future::pending().await;
    };
    // SAFETY: the parent passed this descriptor to this process for it alone, and
    // nothing else in this process opens or uses it.
    let mut pipe = unsafe { std::fs::File::from_raw_fd(fd) };
    // Not passed on to the processes this one starts (CPython children).
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    let (ended, wait) = tokio::sync::oneshot::channel::<()>();
    // A plain thread: a blocking read would keep tokio's runtime from shutting down.
    let spawned = std::thread::Builder::new().name("lifeline".into()).spawn(move || {
        let mut byte = [0u8; 1];
        while let Ok(1..) = pipe.read(&mut byte) {}
        let _ = ended.send(());
    });
    match spawned {
        Ok(_) => {
            if wait.await.is_ok() {
                tracing::info!("the process that started this one has exited: shutting down");
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the lifeline; this process will not stop with its parent");
            std::future::pending::<()>().await;
        }
    }
}

/// A scheduler set up from its arguments: bound, scheduler files written, not serving yet.
struct Prepared {
    endpoint: quinn::Endpoint,
    options: SchedulerOptions,
    address: SocketAddr,
    /// The scheduler files it wrote, removed when it stops.
    files: Vec<PathBuf>,
    /// The ready line's scheduler file.
    scheduler_file: PathBuf,
    fingerprint: String,
}

impl Prepared {
    fn new(args: SchedulerArgs) -> anyhow::Result<Self> {
        let listen: SocketAddr = net::endpoint::resolve(&format!("{}:{}", args.host, args.port))?;
        let tenants = match (&args.config, &args.token, args.no_token) {
            (Some(path), _, _) => Tenants::from_config(path)?,
            (None, _, true) => {
                if !scheduler::is_loopback(&listen) {
                    bail!("--no-token is only allowed on a loopback address, not {listen}; hint: drop --no-token and give clients the scheduler file");
                }
                tracing::warn!("running WITHOUT tokens: anyone on this machine can connect (loopback only)");
                Tenants::open()
            }
            (None, Some(token), false) => Tenants::single(token.clone()),
            (None, None, false) => Tenants::generated(),
        };
        let identity = match (&args.cert, &args.key) {
            (Some(cert), Some(key)) => Identity::from_pem_files(cert, key)?,
            _ => Identity::self_signed(std::slice::from_ref(&args.host))?,
        };
        let endpoint = net::server_endpoint(listen, &identity)?;
        let address = endpoint.local_addr().context("reading the bound address")?;
        let file = SchedulerFile {
            address: address.to_string(),
            fingerprint: identity.fingerprint(),
            token: tenants.default_token().unwrap_or_default().to_string(),
            pid: std::process::id(),
        };
        let mut files = vec![SchedulerFile::default_path(address.port())];
        files.extend(args.scheduler_file.clone());
        for path in &files {
            file.write(path)?;
        }
        let options = SchedulerOptions {
            tenants,
            core: SchedulerConfig {
                allowed_failures: args.allowed_failures.max(1),
                heartbeat_timeout: Duration::from_millis(args.heartbeat_timeout_ms),
                ..SchedulerConfig::default()
            },
            heartbeat_interval: Duration::from_millis(args.heartbeat_interval_ms.max(10)),
            store: Store::open(args.store.store_dir)
                .inspect_err(|e| tracing::warn!(error = %e, "cannot open the object store"))
                .ok(),
            ..SchedulerOptions::default()
        };
        let scheduler_file = files.last().cloned().unwrap_or_default();
        Ok(Self { endpoint, options, address, files, scheduler_file, fingerprint: file.fingerprint })
    }

    /// Serves until `shutdown`, then removes the scheduler files.
    async fn serve(self, scheduler: scheduler::Scheduler, shutdown: impl std::future::Future<Output = ()>) {
        tracing::info!(address = %self.address, "scheduler listening");
        scheduler.serve(shutdown).await;
        for path in &self.files {
            SchedulerFile::remove_if_ours(path);
        }
    }
}

async fn run_scheduler(args: SchedulerArgs) -> anyhow::Result<()> {
    let mut prepared = Prepared::new(args)?;
    let ready = serde_json::json!({
        "event": "ready",
        "address": prepared.address.to_string(),
        "fingerprint": prepared.fingerprint,
        "scheduler_file": prepared.scheduler_file,
    });
    println!("{ready}");
    let scheduler = scheduler::Scheduler::start(prepared.endpoint.clone(), std::mem::take(&mut prepared.options));
    prepared.serve(scheduler, shutdown_signal()).await;
    Ok(())
}

/// A scheduler running inside this process (`stockade.LocalCluster` starts one in the
/// Python process, as dask's `LocalCluster` does): clients of this process reach it
/// through its door ([`scheduler::local`]), workers and other processes over QUIC.
pub struct EmbeddedScheduler {
    address: SocketAddr,
    scheduler_file: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<()>,
}

impl EmbeddedScheduler {
    /// Starts a scheduler on the current tokio runtime from the options of
    /// `stockade scheduler` (for example `["--port", "0"]`). Its log goes to stderr when
    /// `STOCKADE_LOG` is set (a filter such as `info` or `stockade=debug`).
    pub fn start(args: &[String]) -> anyhow::Result<Self> {
        if let Ok(filter) = std::env::var("STOCKADE_LOG") {
            log_to_stderr(tracing_subscriber::EnvFilter::new(filter));
        }
        let mut prepared = Prepared::new(parse_options("scheduler", args)?)?;
        let mut scheduler =
            scheduler::Scheduler::start(prepared.endpoint.clone(), std::mem::take(&mut prepared.options));
        scheduler.open_door().context("opening the in-process door")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (address, scheduler_file) = (prepared.address, prepared.scheduler_file.clone());
        let done = tokio::spawn(prepared.serve(scheduler, async move {
            let _ = stopped.await;
        }));
        Ok(Self { address, scheduler_file, stop: Some(stop), done })
    }

    /// Where it listens.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The scheduler file workers connect with.
    pub fn scheduler_file(&self) -> &std::path::Path {
        &self.scheduler_file
    }

    /// Stops it: connections are closed, the scheduler files removed.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut self.done).await;
    }
}

/// The worker `args` describe: its options, name and slots.
fn worker_options(args: WorkerArgs, child_env: Vec<(String, String)>) -> anyhow::Result<(WorkerOptions, String, u32)> {
    let target = args.connect.target()?;
    let slots = args.slots.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1));
    let name = args.name.clone().unwrap_or_else(|| format!("{}-{}", hostname(), std::process::id()));
    let wasm = wasm_executor(&args, slots);
    let options = WorkerOptions {
        target,
        name: name.clone(),
        slots,
        executor: Arc::new(Executors {
            builtin: BuiltinExecutor,
            python: PythonExecutor::new(PythonConfig {
                python: args.python,
                max_tasks_per_child: args.max_tasks_per_child,
                max_child_memory: args.max_child_memory,
                // The machine's cores shared among this worker's slots.
                threads_per_child: Some(cores_per_slot(slots)),
                child_env,
            }),
            wasm,
        }),
        connect_timeout: args.connect.timeout(),
        store: Store::open(args.store.store_dir)?,
        memory_limit: args.memory_limit,
    };
    Ok((options, name, slots))
}

async fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    let (options, name, slots) = worker_options(args, Vec::new())?;
    worker::run(options, shutdown_signal(), |id| {
        println!("{}", serde_json::json!({"event": "ready", "worker": id, "name": name, "slots": slots}));
    })
    .await?;
    Ok(())
}

/// Parses the options of subcommand `name` (without the program and subcommand names).
fn parse_options<T: clap::Args + clap::FromArgMatches>(name: &'static str, args: &[String]) -> anyhow::Result<T> {
    let command = T::augment_args(clap::Command::new(name).no_binary_name(true));
    let matches = command.try_get_matches_from(args).map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(T::from_arg_matches(&matches)?)
}

/// A worker running inside this process (`stockade.LocalCluster` starts its workers in
/// the Python process by default); its CPython children are processes of their own.
/// Next to a scheduler of this process it comes in through the scheduler's door.
pub struct EmbeddedWorker {
    id: u64,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<Result<(), worker::WorkerError>>,
}

impl EmbeddedWorker {
    /// Starts a worker on the current tokio runtime from the options of
    /// `stockade worker` and waits until it is registered. `child_env` is added to the
    /// environment of its Python children.
    pub async fn start(args: &[String], child_env: Vec<(String, String)>) -> anyhow::Result<Self> {
        let (options, _, _) = worker_options(parse_options("worker", args)?, child_env)?;
        let timeout = options.connect_timeout;
        let (ready, registered) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let mut done = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            worker::run(options, shutdown, move |id| {
                let _ = ready.send(id);
            })
            .await
        });
        let id = tokio::select! {
            id = registered => id.ok(),
            ended = &mut done => match ended {
                Ok(Err(e)) => return Err(e.into()),
                _ => None,
            },
            _ = tokio::time::sleep(timeout) => None,
        };
        match id {
            Some(id) => Ok(Self { id, stop: Some(stop), done }),
            None => {
                done.abort();
                bail!("the worker did not register within {timeout:?}")
            }
        }
    }

    /// Its id on the scheduler.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Stops it; its Python children are stopped with it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(3), &mut self.done).await;
    }
}

/// This machine's cores divided among `slots` slots, at least one each.
fn cores_per_slot(slots: u32) -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    (cores / slots.max(1)).max(1)
}

/// The worker's WebAssembly sandbox, or `None` (logged) when it cannot be set up.
fn wasm_executor(args: &WorkerArgs, slots: u32) -> Option<WasmExecutor> {
    // Cancelled calls may still finish their time on a blocking thread: room for them.
    let mut limits = WasmLimits { instances: slots.max(1) * 2, ..WasmLimits::default() };
    if let Some(bytes) = args.wasm_memory {
        limits.memory_bytes = usize::try_from(bytes).unwrap_or(usize::MAX);
    }
    if let Some(seconds) = args.wasm_timeout {
        limits.wall_time = Duration::from_secs_f64(seconds.max(0.001));
    }
    match WasmSandbox::new(limits) {
        Ok(sandbox) => Some(WasmExecutor::new(sandbox)),
        Err(e) => {
            tracing::warn!(error = %e, "no WebAssembly sandbox: WebAssembly tasks are refused");
            None
        }
    }
}

async fn connect_client(connect: &Connect, name: &str) -> anyhow::Result<Client> {
    let options = ClientOptions {
        target: connect.target()?,
        name: name.to_string(),
        connect_timeout: connect.timeout(),
        share_store: true,
    };
    Ok(Client::connect(options).await?)
}

async fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let client = connect_client(&args.connect, "status").await?;
    let info = client.scheduler_info(args.connect.timeout()).await?;
    client.close().await;
    if args.json {
        println!("{}", serde_json::to_string(&info)?);
        return Ok(());
    }
    let slots: u32 = info.workers.iter().map(|w| w.slots).sum();
    println!("workers: {}   slots: {}   sessions: {}", info.workers.len(), slots, info.sessions.len());
    println!(
        "tasks:   queued {}   running {}   done {}   failed {}",
        info.tasks.queued, info.tasks.running, info.tasks.done, info.tasks.failed
    );
    if !info.workers.is_empty() {
        println!(
            "\n{:<6} {:<28} {:<22} {:>5} {:>8} {:>10} {:>11}",
            "ID", "NAME", "ADDRESS", "SLOTS", "RUNNING", "DONE", "PINNED"
        );
        for w in &info.workers {
            println!(
                "{:<6} {:<28} {:<22} {:>5} {:>8} {:>10} {:>11}",
                w.id,
                w.name,
                w.address,
                w.slots,
                w.running,
                w.done,
                human(w.pinned_bytes)
            );
        }
    }
    if !info.pinned.is_empty() {
        println!("\n{:<18} {:>11} {:>8} {:<12} SESSIONS", "PINNED OBJECT", "SIZE", "WORKERS", "TENANT");
        for p in &info.pinned {
            let sessions: Vec<String> = p.sessions.iter().map(u64::to_string).collect();
            let key = p.key.get(..16).unwrap_or(&p.key);
            println!(
                "{key:<18} {:>11} {:>8} {:<12} {}",
                human(p.nbytes),
                p.workers.len(),
                p.tenant,
                sessions.join(",")
            );
        }
    }
    Ok(())
}

async fn run_wasm(args: RunArgs) -> anyhow::Result<()> {
    let module = std::fs::read(&args.module)
        .with_context(|| format!("cannot read {}; hint: build the guest for wasm32-wasip1", args.module.display()))?;
    let input = match &args.input {
        None => b"null".to_vec(),
        Some(path) if path.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("cannot read the input")?;
            buf
        }
        Some(path) => std::fs::read(path).with_context(|| format!("cannot read the input {}", path.display()))?,
    };
    serde_json::from_slice::<serde_json::Value>(&input).context("the input is not JSON")?;
    let connect = Connect { scheduler: args.scheduler, via: args.via };
    let client = connect_client(&connect, "run").await?;
    let prepared = client.prepare_object(ObjectKind::Raw, |w| std::io::Write::write_all(w, &module))?;
    let key = prepared.key();
    client.pin(prepared, Duration::from_secs(600)).await?;
    let payload = crate::proto::frame::encode(&WasmCall { module: key, task: args.task, input })?.to_vec();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let completion: crate::client::Completion = Box::new(move |_, r| {
        let _ = tx.send(r);
    });
    client.submit_with(vec![(NewTask { kind: TaskKind::Wasm, payload, needs: vec![key] }, completion)])?;
    let outcome = rx.await.map_err(|_| anyhow::anyhow!("the client stopped"))??;
    client.close().await;
    match outcome {
        Outcome::Ok(output) => {
            println!("{}", String::from_utf8_lossy(&output));
            Ok(())
        }
        Outcome::Err(e) => bail!("{:?}: {}", e.kind, e.message),
    }
}

fn builtin(kind: &str) -> anyhow::Result<Builtin> {
    Ok(match kind {
        "noop" => Builtin::Noop,
        "echo" => Builtin::Echo,
        "sleep" => Builtin::Sleep,
        "fail" => Builtin::Fail,
        other => bail!("unknown built-in kind {other:?}; hint: use noop, echo, sleep or fail"),
    })
}

async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    if args.sandbox {
        let report = tokio::task::spawn_blocking(|| sandbox_bench(&BenchOptions::default())).await??;
        if args.json {
            let kernels: Vec<_> = report
                .kernels
                .iter()
                .map(|k| {
                    serde_json::json!({"name": k.name,
                "with_epochs_s": k.with_epochs.as_secs_f64(), "without_epochs_s": k.without_epochs.as_secs_f64(),
                "epoch_overhead": k.epoch_overhead()})
                })
                .collect();
            println!(
                "{}",
                serde_json::json!({"pooling": report.pooling,
                "instantiate_us_p50": report.instantiate_median.as_secs_f64() * 1e6,
                "instantiate_us_p90": report.instantiate_p90.as_secs_f64() * 1e6,
                "threads": report.threads, "noop_calls_per_second": report.noop_calls_per_second,
                "noop_cpu_us_per_call": report.noop_cpu_per_call.as_secs_f64() * 1e6, "kernels": kernels})
            );
        } else {
            println!("{report}");
        }
        return Ok(());
    }
    if let Some(path) = &args.ridge {
        let module =
            std::fs::read(path).with_context(|| format!("cannot read {}; hint: run `just guests`", path.display()))?;
        let report = tokio::task::spawn_blocking(move || ridge_bench(&module, &RidgeOptions::default())).await??;
        if args.json {
            println!(
                "{}",
                serde_json::json!({"rows": report.options.rows, "cols": report.options.cols,
                "sandbox_ms": report.sandbox.with_epochs.as_secs_f64() * 1e3,
                "sandbox_without_epochs_ms": report.sandbox.without_epochs.as_secs_f64() * 1e3,
                "epoch_overhead": report.sandbox.epoch_overhead(), "native_ms": report.native.as_secs_f64() * 1e3,
                "sandbox_score": report.sandbox_score, "native_score": report.native_score})
            );
        } else {
            print!("{report}");
        }
        return Ok(());
    }
    let client = connect_client(&args.connect, "bench").await?;
    let task = match &args.wasm_module {
        None => {
            NewTask { kind: TaskKind::Builtin(builtin(&args.kind)?), payload: args.payload.into_bytes(), needs: vec![] }
        }
        Some(path) => {
            let module = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
            let prepared = client.prepare_object(ObjectKind::Raw, |w| std::io::Write::write_all(w, &module))?;
            let key = prepared.key();
            client.pin(prepared, Duration::from_secs(600)).await?;
            let call = WasmCall { module: key, task: args.wasm_task.clone(), input: b"null".to_vec() };
            NewTask { kind: TaskKind::Wasm, payload: crate::proto::frame::encode(&call)?.to_vec(), needs: vec![key] }
        }
    };

    if args.wasm_module.is_some() {
        // Warm-up: the workers compile the module (once, when it is pinned); the figures
        // below are of tasks, not of compilation.
        for handle in client.submit_tasks(vec![task.clone(); 2])? {
            handle.await?;
        }
    }
    // Throughput: everything submitted at once, as a joblib batch stream would.
    let started = Instant::now();
    let handles = client.submit_tasks(vec![task.clone(); args.tasks])?;
    let mut failed = 0usize;
    for handle in handles {
        if !matches!(handle.await?, Outcome::Ok(_)) {
            failed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let throughput = args.tasks as f64 / elapsed.max(1e-9);

    // Latency: one task at a time, submit to result.
    let mut samples = Vec::with_capacity(args.latency_tasks);
    for _ in 0..args.latency_tasks {
        let t = Instant::now();
        let mut handle = client.submit_tasks(vec![task.clone()])?;
        if let Some(handle) = handle.pop() {
            handle.await?;
        }
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| samples.get(((samples.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN);
    let (p50, p99) = (pct(0.5), pct(0.99));
    client.close().await;
    if args.json {
        println!(
            "{}",
            serde_json::json!({"tasks": args.tasks, "failed": failed, "seconds": elapsed, "tasks_per_second": throughput,
                               "latency_ms_p50": p50, "latency_ms_p99": p99})
        );
    } else {
        println!(
            "{} {} tasks in {:.3} s: {:.0} tasks/s, {:.2} µs per task ({} failed)",
            args.tasks,
            args.kind,
            elapsed,
            throughput,
            1e6 / throughput,
            failed
        );
        if !samples.is_empty() {
            println!(
                "one task at a time ({}): submit-to-result median {:.3} ms, p99 {:.3} ms",
                samples.len(),
                p50,
                p99
            );
        }
    }
    if failed > 0 {
        bail!("{failed} tasks failed");
    }
    Ok(())
}

/// Parses sizes like `512MiB`, `2GiB`, `1.5GB` or a plain number of bytes.
fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.trim().parse().map_err(|_| format!("{text:?} is not a size; hint: write e.g. 4GiB"))?;
    let factor: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        other => return Err(format!("unknown size unit {other:?}; hint: use B, KiB, MiB, GiB, KB, MB or GB")),
    };
    if number < 0.0 || !number.is_finite() {
        return Err(format!("{text:?} is not a size"));
    }
    Ok((number * factor) as u64)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "worker".into())
}

#[cfg(test)]
mod tests {
    use super::{parse_bytes, Cli, Command};
    use clap::Parser;

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("4GiB"), Ok(4 * 1024 * 1024 * 1024));
        assert_eq!(parse_bytes("1.5 GB"), Ok(1_500_000_000));
        assert_eq!(parse_bytes("512"), Ok(512));
        assert!(parse_bytes("lots").unwrap_err().contains("hint:"));
        assert!(parse_bytes("3 parsecs").is_err());
    }

    fn worker(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(["stockade", "worker", "127.0.0.1:8786"].iter().chain(args))
    }

    #[test]
    fn a_python_child_serves_until_it_dies_unless_a_task_limit_is_given() {
        let Ok(Cli { command: Command::Worker(args) }) = worker(&[]) else { panic!("worker arguments") };
        assert_eq!(args.max_tasks_per_child, None);
        let Ok(Cli { command: Command::Worker(args) }) = worker(&["--max-tasks-per-child", "500"]) else {
            panic!("worker arguments")
        };
        assert_eq!(args.max_tasks_per_child, Some(500));
        assert!(worker(&["--max-tasks-per-child", "0"]).is_err(), "a limit of 0 tasks would start no task");
    }
}
