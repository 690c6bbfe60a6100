"""Turns the suite's raw results (results.json) into results.md and results.png.

    python bench/report.py [bench/results.json]   # re-render without measuring

Ratios are Stockade's advantage: for rates, Stockade's median / the peer's; for times
and memory, the peer's median / Stockade's. Above 1, Stockade is better.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys

from _common import Table, table_from_json

RATIO_TEXT = (
    "Ratios are Stockade's advantage computed from medians: for rates (tasks/s) Stockade's figure "
    "divided by the peer's, for times and memory the peer's divided by Stockade's; above 1 means "
    "Stockade is better. In a peer's row the ratio is against the table's reference Stockade row "
    "(the first one); in a Stockade row, against the best peer of that column."
)


# -- numbers ---------------------------------------------------------------------------------


def med(xs):
    return statistics.median(xs) if xs else None


def advantage(ours: float | None, peer: float | None, better: str, floor: float = 0.0) -> float | None:
    """How many times better `ours` is than `peer`; None when a ratio means nothing
    (a missing figure, or a figure at or under `floor`, such as a memory increase under
    1 MB)."""
    if ours is None or peer is None or ours <= floor or peer <= floor:
        return None
    return ours / peer if better == "higher" else peer / ours


def floor_of(m) -> float:
    return 1.0 if m.unit == "MB" else 0.0


def best_peer(table: Table, key: str, better: str):
    peers = [(r.label, med(r.samples.get(key, []))) for r in table.rows if not r.ours and r.error is None]
    peers = [(n, v) for n, v in peers if v is not None]
    if not peers:
        return None, None
    return (max if better == "higher" else min)(peers, key=lambda p: p[1])


def fmt(v: float | None, digits: int) -> str:
    if v is None:
        return "n/a"
    if abs(v) >= 10_000:
        return f"{v:,.0f}".replace(",", "\u202f")
    return f"{v:.{digits}f}"


def fmt_ratio(r: float | None) -> str:
    return "n/a" if r is None else (f"{r:.2f}x" if r < 100 else f"{r:.0f}x")


# -- markdown --------------------------------------------------------------------------------


def table_md(t: Table) -> list[str]:
    ratio_metrics = [m for m in t.metrics if m.better and t.reference]
    head = ["backend"] + [f"{m.label} ({m.unit})" for m in t.metrics]
    head += [f"Stockade's advantage: {m.label}" for m in ratio_metrics] + ["speed probe (ms)"]
    head[0] = t.row_header
    lines = [f"#### {t.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ref = next((r for r in t.rows if r.label == t.reference), None)
    for r in t.rows:
        if r.error is not None and not r.samples:
            cells = [f"**{r.label}**" if r.ours else r.label, r.error] + [""] * (len(head) - 2)
            lines.append("| " + " | ".join(cells) + " |")
            continue
        cells = [f"**{r.label}**" if r.ours else r.label]
        for m in t.metrics:
            xs = r.samples.get(m.key, [])
            if not xs:
                cells.append("n/a")
            elif len(xs) == 1:
                cells.append(fmt(xs[0], m.digits))
            else:
                cells.append(f"{fmt(med(xs), m.digits)} [{fmt(min(xs), m.digits)} – {fmt(max(xs), m.digits)}]")
        for m in ratio_metrics:
            v = med(r.samples.get(m.key, []))
            if r.ours:
                name, pv = best_peer(t, m.key, m.better)
                rr = advantage(v, pv, m.better, floor_of(m))
                cells.append("" if name is None else f"{fmt_ratio(rr)} over the best peer ({name})")
            else:
                rv = med(ref.samples.get(m.key, [])) if ref is not None and ref.error is None else None
                cells.append(fmt_ratio(advantage(rv, v, m.better, floor_of(m))))
        p = r.probes_ms
        cells.append(f"{med(p):.1f} [{min(p):.1f} – {max(p):.1f}]" if len(p) > 1 else (f"{p[0]:.1f}" if p else ""))
        lines.append("| " + " | ".join(cells) + " |")
        if r.error is not None:  # failed after some repetitions
            lines.append(f"| | {r.label}: {r.error} (after {len(r.probes_ms)} repetitions) |" + " |" * (len(head) - 2))
    lines.append("")
    for n in t.notes:
        lines += [n, ""]
    return lines


def summary_md(sections: list[dict]) -> list[str]:
    rows = []
    for s in sections:
        for t in s.get("tables", []):
            if not t.reference:
                continue
            ref = next((r for r in t.rows if r.label == t.reference), None)
            for m in t.metrics:
                if not m.better:
                    continue
                name, pv = best_peer(t, m.key, m.better)
                if ref is None or ref.error is not None:
                    ours = ref.error if ref is not None else "n/a"
                    ours, ratio = (ours[:90] + " ...") if len(ours) > 90 else ours, "n/a"
                else:
                    v = med(ref.samples.get(m.key, []))
                    ours, ratio = fmt(v, m.digits), fmt_ratio(advantage(v, pv, m.better, floor_of(m)))
                peer = "n/a" if name is None else f"{name}: {fmt(pv, m.digits)}"
                rows.append(f"| {s['title'].split('.')[0]}. {t.title} | {m.label} ({m.unit}) | {ours} | {peer} | "
                            f"{ratio} |")
    if not rows:
        return []
    return ["## Summary: Stockade against the best peer (medians)", "",
            "| workload | measure | Stockade | best peer | Stockade's advantage |", "|---|---|---|---|---|",
            *rows, ""]


def render_md(data: dict, order: list[str], png_name: str | None) -> str:
    sections = [dict(data["sections"][k], tables=[table_from_json(t) for t in data["sections"][k].get("tables", [])])
                for k in order if k in data["sections"]]
    out = ["# Stockade benchmarks, side by side with loky, dask.distributed and Ray", "",
           "Written by `just bench` (bench/suite.py); raw samples in results.json beside this file. "
           "Stockade runs as two workers of one slot each; loky, dask.distributed "
           "(LocalCluster, 2 processes x 1 thread) and Ray (num_cpus=2) run with n_jobs=2. Repetitions are "
           "interleaved and rotated (A B C D, B C D A, ...), each started once the machine is quiet, because "
           "this machine's speed drifts; the pure-Python speed probe "
           "(a fixed 200 000-iteration loop, in ms: higher means a slower moment) is recorded beside every "
           "figure. Figures are medians [min – max] over the repetitions. Compare ratios, not absolute times.",
           "", RATIO_TEXT, ""]
    if png_name:
        out += [f"![throughput, latency, time and memory]({png_name})", ""]
    out += summary_md(sections)
    for s in sections:
        m = s.get("machine", {})
        if s.get("error") and not s["tables"]:
            out += [f"## {s['title']}", "", f"**{s['error']}** ({s.get('date', '?')})", ""]
            continue
        out += [f"## {s['title']}", "",
                f"Finished {s.get('date', '?')}, {s.get('reps', '?')} repetitions, in {s.get('seconds', 0):.0f} s, "
                f"on {m.get('cores', '?')} cores of {m.get('cpu', '?')} with {m.get('memory_gb', '?')} GB "
                f"(code {m.get('commit', 'not recorded')}; Python {m.get('python', '?')}; "
                + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()) + ").", ""]
        if s.get("error"):
            out += [f"**{s['error']}**", ""]
        for t in s["tables"]:
            out += table_md(t)
        for n in s.get("notes", []):
            out += [n, ""]
    return "\n".join(out)


# -- the plot --------------------------------------------------------------------------------

# (panel title, log scale, [(legend, section id, table index, metric key)])
PANELS = [
    ("no-op tasks (tasks/s, higher is better)", True,
     [("batch_size=1", "overhead", 0, "tps"), ("auto batching", "overhead", 1, "tps")]),
    ("one-task Parallel call (ms, lower is better)", True,
     [("median", "overhead", 2, "p50"), ("p99", "overhead", 2, "p99")]),
    ("Client.submit().result() (ms)", False,
     [("median", "overhead", 3, "p50"), ("p99", "overhead", 3, "p99")]),
    ("randomized SVC search: wall time (s, lower is better)", False,
     [("n_iter=50", "search", 0, "wall"), ("n_iter=200", "search", 1, "wall"), ("smoke", "search", 0, "wall")]),
    ("large array, 64 tasks: wall time (s)", True,
     [("200 MB", "scatter", 0, "wall"), ("1 GB", "scatter", 1, "wall")]),
    ("large array: peak PSS over baseline (MB)", False,
     [("200 MB", "scatter", 0, "mem"), ("1 GB", "scatter", 1, "mem")]),
    ("cold start to first result (s, lower is better)", False,
     [("first result", "coldstart", 0, "total")]),
    ("zero-work scheduler throughput (tasks/s)", False,
     [("no-op, Rust client", "scheduler", 0, "tps")]),
    ("WebAssembly and built-in no-op tasks through the cluster (tasks/s)", False,
     [("tasks/s", "wasm", 0, "tps")]),
    ("one ridge fit: sandbox, native Rust, numpy (ms of CPU, lower is better)", False,
     [("fit and score", "wasm", 1, "ms")]),
]


def render_png(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sections = data["sections"]

    def table(sid, i):
        s = sections.get(sid)
        if not s or i >= len(s.get("tables", [])):
            return None
        return table_from_json(s["tables"][i])

    panels = []
    for title, log, series in PANELS:
        got = []
        for legend, sid, i, key in series:
            t = table(sid, i)
            if t is None or not any(m.key == key for m in t.metrics):
                continue
            if sid == "search" and (legend == "smoke") != ("digits)" in t.title):
                continue
            got.append((legend, t, key))
        if got:
            panels.append((title, log, got))
    if not panels:
        return
    ncols = 2
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(15, 4.3 * nrows), squeeze=False)
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    for ax, (title, log, series) in zip(axes.flat, panels):
        labels = list(dict.fromkeys(r.label for _, t, _ in series for r in t.rows))
        width = 0.8 / len(series)
        drawn: list[float] = []
        for si, (legend, t, key) in enumerate(series):
            rows = {r.label: r for r in t.rows}
            legend_pending = True
            for li, label in enumerate(labels):
                x = li - 0.4 + width * (si + 0.5)
                r = rows.get(label)
                xs = r.samples.get(key, []) if r is not None else []
                if not xs:
                    if r is not None:
                        ax.text(x, 0.03, "not available", transform=ax.get_xaxis_transform(), ha="center",
                                va="bottom", fontsize=8, color="dimgray", rotation=90)
                    continue
                m = med(xs)
                drawn.append(m)
                ax.bar(x, m, width, color=colors[si % len(colors)], edgecolor="black" if r.ours else "none",
                       linewidth=1.2, label=legend if legend_pending else None)
                legend_pending = False
                ax.errorbar(x, m, yerr=[[m - min(xs)], [max(xs) - m]], color="black", capsize=2, linewidth=0.8)
                ax.text(x, max(xs), f" {m:.3g}" if m < 1000 else f" {m:,.0f}", ha="center", va="bottom",
                        fontsize=7, rotation=90)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(labels) - 0.4)
        positive = [m for m in drawn if m > 0]
        if log and positive and max(positive) / min(positive) > 30:
            ax.set_yscale("log")
        ax.margins(y=0.25)
        if len(series) > 1:
            ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("Stockade (2 workers x 1 slot, bars outlined) vs loky, dask, Ray (n_jobs=2): medians, "
                 "whiskers min-max", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.975))
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    from suite import ORDER

    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results.json")
    with open(path) as f:
        data = json.load(f)
    base = os.path.splitext(path)[0]
    render_png(data, base + ".png")
    with open(base + ".md", "w") as f:
        f.write(render_md(data, ORDER, os.path.basename(base + ".png")))


if __name__ == "__main__":
    main()
