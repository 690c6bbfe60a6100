"""Zero-work scheduler benchmark: built-in no-op tasks through one scheduler and the
workers of the surrounding cluster (see scripts/with-cluster.sh). Prints the median and
spread of several repetitions of throughput and of one-task submit-to-result latency.
"""

import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("STOCKADE_BIN", os.path.join(ROOT, "target", "debug", "stockade"))


def run(tasks: int, latency_tasks: int) -> dict:
    out = subprocess.run(
        [BIN, "bench", "--tasks", str(tasks), "--latency-tasks", str(latency_tasks), "--json"],
        check=True, capture_output=True, text=True, timeout=600,
    )
    return json.loads(out.stdout)


def main() -> None:
    reps = int(os.environ.get("REPS", "5"))
    tasks = int(os.environ.get("TASKS", "200000"))
    run(1000, 10)  # warm-up
    results = [run(tasks, 2000) for _ in range(reps)]
    tput = [r["tasks_per_second"] for r in results]
    p50 = [r["latency_ms_p50"] for r in results]
    p99 = [r["latency_ms_p99"] for r in results]
    print(f"zero-work: {tasks} noop tasks x {reps} runs, 2 workers x 1 slot")
    print(f"  throughput        median {statistics.median(tput):>10.0f} tasks/s   (min {min(tput):.0f}, max {max(tput):.0f})")
    print(f"  per-task overhead median {1e6 / statistics.median(tput):>10.2f} us")
    print(f"  one-task latency  median {statistics.median(p50):>10.3f} ms       (p99 median {statistics.median(p99):.3f} ms)")


if __name__ == "__main__":
    sys.exit(main())
