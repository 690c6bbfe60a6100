"""joblib overhead, side by side: Stockade, loky, dask.distributed and Ray.

Same machine, same run, two workers with one slot each for Stockade and n_jobs=2 for
the others. Repetitions are interleaved (A B C D A B C D ...) because this machine's
speed drifts; a short pure-Python speed probe is recorded beside every repetition.
Prints medians and each peer's figure relative to Stockade.

    SMOKE=1 python bench/python_overhead.py   # Stockade and loky only, tiny sizes
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import warnings

from joblib import Parallel, delayed, parallel_backend

import stockade

SMOKE = bool(os.environ.get("SMOKE"))
REPS = int(os.environ.get("REPS", "1" if SMOKE else "5"))
N_BS1 = 200 if SMOKE else 2000
N_AUTO = 2000 if SMOKE else 100_000
N_LAT = 3 if SMOKE else 20
N_SUBMIT = 20 if SMOKE else 300


def noop(x):
    return x


def speed_probe() -> float:
    """Seconds for a fixed pure-Python loop: the machine's speed right now."""
    t = time.perf_counter()
    s = 0
    for i in range(200_000):
        s += i * i
    return time.perf_counter() - t


class Backend:
    """How to enter one backend for a Parallel call."""

    def __init__(self, name: str):
        self.name = name

    def start(self) -> None: ...

    def context(self):
        raise NotImplementedError

    def stop(self) -> None: ...


class Stockade(Backend):
    def start(self):
        self.cluster = stockade.LocalCluster(n_workers=2, slots_per_worker=1)
        self.client = stockade.Client(scheduler_file=self.cluster.scheduler_file)

    def context(self):
        return parallel_backend("stockade", client=self.client)

    def stop(self):
        self.client.close()
        self.cluster.close()


class Loky(Backend):
    def context(self):
        return parallel_backend("loky", n_jobs=2)


class Dask(Backend):
    def start(self):
        from dask.distributed import Client, LocalCluster

        self.cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
        self.client = Client(self.cluster)

    def context(self):
        return parallel_backend("dask", client=self.client)

    def stop(self):
        self.client.close()
        self.cluster.close()


class Ray(Backend):
    def start(self):
        import ray
        from ray.util.joblib import register_ray

        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        register_ray()

    def context(self):
        return parallel_backend("ray", n_jobs=2)

    def stop(self):
        import ray

        ray.shutdown()


def available() -> list[Backend]:
    backends: list[Backend] = [Stockade("stockade"), Loky("loky")]
    if SMOKE:
        return backends
    for name, cls, module in [("dask", Dask, "distributed"), ("ray", Ray, "ray")]:
        try:
            __import__(module)
            backends.append(cls(name))
        except ImportError:
            print(f"note: {name} is not installed; skipped", file=sys.stderr)
    return backends


def tput_bs1(b: Backend) -> float:
    with b.context():
        t = time.perf_counter()
        Parallel(n_jobs=2, batch_size=1)(delayed(noop)(i) for i in range(N_BS1))
        return N_BS1 / (time.perf_counter() - t)


def tput_auto(b: Backend) -> float:
    with b.context():
        t = time.perf_counter()
        Parallel(n_jobs=2)(delayed(noop)(i) for i in range(N_AUTO))
        return N_AUTO / (time.perf_counter() - t)


def one_task(b: Backend) -> float:
    samples = []
    with b.context():
        for _ in range(N_LAT):
            t = time.perf_counter()
            Parallel(n_jobs=2)([delayed(noop)(1)])
            samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e3


WORKLOADS = [
    ("no-op tasks, batch_size=1", "tasks/s", tput_bs1, True),
    ("no-op tasks, auto batching", "tasks/s", tput_auto, True),
    ("one-task Parallel call", "ms", one_task, False),
]


def main() -> None:
    warnings.filterwarnings("ignore")
    backends = available()
    for b in backends:
        b.start()
    results = {(w[0], b.name): [] for w in WORKLOADS for b in backends}
    probes = []
    submit_lat = []
    try:
        for b in backends:  # warm-up: children import, pools fill
            with b.context():
                Parallel(n_jobs=2)(delayed(noop)(i) for i in range(50))
        for _ in range(REPS):
            probes.append(speed_probe())
            for name, _, fn, _ in WORKLOADS:
                for b in backends:
                    results[(name, b.name)].append(fn(b))
            client = backends[0].client
            for _ in range(N_SUBMIT):
                t = time.perf_counter()
                client.submit(noop, 1).result()
                submit_lat.append(time.perf_counter() - t)
    finally:
        for b in backends:
            b.stop()

    print(f"joblib overhead: {REPS} interleaved repetitions, 2 workers x 1 slot (others n_jobs=2)")
    print(f"speed probe: median {statistics.median(probes) * 1e3:.1f} ms (spread {min(probes) * 1e3:.1f}-{max(probes) * 1e3:.1f})")
    for name, unit, _, higher_is_better in WORKLOADS:
        ours = statistics.median(results[(name, "stockade")])
        print(f"\n{name} ({unit}, median)")
        for b in backends:
            vals = results[(name, b.name)]
            med = statistics.median(vals)
            ratio = (ours / med) if higher_is_better else (med / ours)
            rel = "" if b.name == "stockade" else f"   stockade is {ratio:.2f}x {'faster' if ratio >= 1 else 'slower'}"
            print(f"  {b.name:<9} {med:>12.1f}   [{min(vals):.1f} .. {max(vals):.1f}]{rel}")
    print(f"\nClient.submit(...).result(), one task: median {statistics.median(submit_lat) * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
