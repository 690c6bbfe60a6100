"""Stockade's benchmark suite, side by side with loky, dask.distributed and Ray.

    python bench/suite.py                          # everything (`just bench`)
    python bench/suite.py --only search,coldstart  # some workloads (names or numbers)
    REPS=3 python bench/suite.py                   # repetitions (default 5)
    SMOKE=1 python bench/suite.py                  # Stockade + loky, tiny sizes (`just test`)
    python bench/suite.py --list                   # the workloads

Installs the peers (bench/requirements.txt) into this interpreter's environment unless
SMOKE or --no-install. Writes bench/results.json (raw samples), bench/results.md and
bench/results.png; a run with --only replaces those workloads' sections and keeps the
others. SMOKE runs write bench/out/smoke-results.* instead, never the real results.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import subprocess
import sys
import time
import traceback
import warnings

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import BENCH, ROOT, Config, NotAvailable, close_shared_runners, log, machine, short_error, to_jsonable  # noqa: E402

# id -> (number, module). The order is the order of results.md.
WORKLOADS = {
    "overhead": ("1,2", "w_overhead"),
    "search": ("3", "w_search"),
    "scatter": ("4", "w_scatter"),
    "coldstart": ("5", "w_coldstart"),
    "scheduler": ("6", "w_scheduler"),
    "wasm": ("7", "w_wasm"),
}
ORDER = list(WORKLOADS)
# The workloads that drive the backends' shared runner processes (_common.shared_runners);
# the runners are stopped after the last of them, so that they do not idle beside the rest.
ON_RUNNERS = {"overhead", "search"}


def select(only: str | None) -> list[str]:
    if not only:
        return ORDER
    chosen = []
    for word in only.split(","):
        word = word.strip()
        match = [k for k, (nums, _) in WORKLOADS.items() if word == k or word in nums.split(",")]
        if not match:
            raise SystemExit(f"unknown workload {word!r}; known: "
                             + ", ".join(f"{k} ({n})" for k, (n, _) in WORKLOADS.items()))
        chosen += [m for m in match if m not in chosen]
    return [k for k in ORDER if k in chosen]


def code_version() -> str:
    """The commit measured (with "+changes" when the work tree differs from it)."""
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":!bench/results.*"], capture_output=True, text=True, timeout=10).stdout.strip()
        return head + ("+changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def install_peers() -> None:
    req = os.path.join(BENCH, "requirements.txt")
    log(f"installing the peers ({req}) ...")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", req],
                   check=True, timeout=1800)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated workloads, by name or number (see --list)")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--no-install", action="store_true", help="do not pip install bench/requirements.txt")
    parser.add_argument("--out", help="results base path (default bench/results, or bench/out/smoke-results)")
    args = parser.parse_args()
    if args.list:
        for k, (n, mod) in WORKLOADS.items():
            doc = (importlib.import_module(mod).__doc__ or "").strip().splitlines()[0]
            print(f"{k:<10} {n:<4} {doc}")
        return 0

    cfg = Config.from_env()
    chosen = select(args.only)
    default = os.path.join(BENCH, "out", "smoke-results") if cfg.smoke else os.path.join(BENCH, "results")
    base = args.out or default
    os.makedirs(os.path.dirname(base), exist_ok=True)
    if not cfg.smoke and not args.no_install:
        install_peers()
    warnings.filterwarnings("ignore")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")

    json_path = base + ".json"
    data = {"sections": {}}
    if os.path.exists(json_path) and not cfg.smoke:
        with open(json_path) as f:
            data = json.load(f)
    info = machine()
    info["commit"] = code_version()
    log(f"benchmarks: {', '.join(chosen)}; REPS={cfg.reps}{' SMOKE' if cfg.smoke else ''}; "
        f"{info['cores']} cores, {info['cpu']}; results -> {base}.md")
    try:
        failed = run_all(cfg, chosen, data, json_path, base, info)
    finally:
        close_shared_runners()  # the backends' processes of workloads 1-3
    if failed:
        log("FAILED (figures missing because of an unexpected error):\n  " + "\n  ".join(failed))
    return 1 if failed else 0


def run_all(cfg: Config, chosen: list[str], data: dict, json_path: str, base: str, info: dict) -> list[str]:
    import report

    failed = []
    t_all = time.perf_counter()
    for i, key in enumerate(chosen):
        mod = importlib.import_module(WORKLOADS[key][1])
        log(f"== {mod.TITLE}")
        t = time.perf_counter()
        section = {"title": mod.TITLE, "tables": [], "notes": []}
        try:
            section.update(mod.run(cfg))
        except NotAvailable as e:
            section["error"] = f"not available: {e}"
        except Exception as e:
            traceback.print_exc()
            section["error"] = f"failed: {short_error(e)}"
            failed.append(f"{key}: {section['error']}")
        if section.get("error"):
            log(f"   {section['error']}")
        if not ON_RUNNERS & set(chosen[i + 1:]):
            close_shared_runners()
        for table in section.get("tables", []):
            failed += [f"{key}: {table.title}: {r.label}: {r.error}" for r in table.rows if r.failed]
        section.update(date=datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                       reps=cfg.reps, smoke=cfg.smoke, seconds=time.perf_counter() - t, machine=info)
        data["sections"][key] = to_jsonable(section)
        # Written after every workload: a long run that stops keeps what it measured.
        with open(json_path, "w") as f:
            json.dump(data, f, indent=1)
        if not cfg.smoke or key == chosen[-1]:
            write_reports(report, data, base)
    log(f"done in {time.perf_counter() - t_all:.0f} s: {base}.md")
    return failed


def write_reports(report, data: dict, base: str) -> None:
    png = base + ".png"
    try:
        report.render_png(data, png)
    except ImportError as e:
        log(f"   note: no plot ({short_error(e)}); `pip install matplotlib` for {png}")
        png = None
    with open(base + ".md", "w") as f:
        f.write(report.render_md(data, ORDER, os.path.basename(png) if png else None))


# The guard matters: the backends' runners are spawned processes, which import this file
# as __mp_main__ and must do nothing here.
if __name__ == "__main__":
    sys.exit(main())
