"""Scaling of the default audit with work: time and peak memory against tokens and conditions.

    .venv/bin/python benchmarks/bench_scaling.py --tokens 8192 32768 131072 --conditions 1 5 10

Workload P (bench_audit.py), ``qdm.audit`` with the default config (token lenses and
drill-down on). Each point runs in a fresh child process, one after the other: it builds
the workload, resets the kernel's peak-RSS mark, runs the audit and reports wall seconds,
CPU seconds (user + system: less disturbed by other jobs on a shared machine) and peak RSS
(VmHWM). The token sweep uses 5 conditions (RTN INT8..INT4); the condition sweep uses the
smallest token budget (1: INT4; 5: INT8..INT4; 10: those and the same with groups of 64).
Writes ``results/scaling.json`` and plots ``results/scaling.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

BITS = (8, 7, 6, 5, 4)


def conditions(count: int) -> list:
    import pytest_qdm as qdm

    pool = [qdm.RTN(b) for b in BITS] + [qdm.RTN(b, group_size=64) for b in BITS]
    return [qdm.RTN(4)] if count == 1 else pool[:count]


def child(tokens: int, count: int, ctx: int, threads: int) -> dict:
    import torch
    from bench_audit import _maxrss_mib, _reset_peak_rss
    from workloads import workload_p

    import pytest_qdm as qdm

    torch.set_num_threads(threads)
    workload = workload_p(tokens, ctx)
    audit_tokens = workload.tokens.reshape(-1)[:tokens].reshape(-1, ctx)
    reset = _reset_peak_rss()
    config = qdm.AuditConfig(progress=False)
    cpu, start = _cpu_seconds(), time.perf_counter()
    qdm.audit(workload.model, workload.sae, audit_tokens, conditions(count), config)
    return {
        "tokens": audit_tokens.numel(),
        "conditions": count,
        "threads": threads,
        "wall_s": time.perf_counter() - start,
        "cpu_s": _cpu_seconds() - cpu,
        "peak_rss_mib": _maxrss_mib(),
        "peak_reset": reset,
    }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_point(tokens: int, count: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(tokens), str(count)]
    cmd += ["--ctx", str(args.ctx), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    point = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    print(json.dumps(point), flush=True)
    return point


def plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    by_tokens = sorted((p for p in points if p["sweep"] == "tokens"), key=lambda p: p["tokens"])
    by_count = sorted(
        (p for p in points if p["sweep"] == "conditions"), key=lambda p: p["conditions"]
    )
    panels = [
        (axes[0], by_tokens, "tokens", ("wall_s", "cpu_s"), "seconds", "tokens (5 conditions)"),
        (
            axes[1],
            by_tokens,
            "tokens",
            ("peak_rss_mib",),
            "peak RSS (MiB)",
            "tokens (5 conditions)",
        ),
        (axes[2], by_count, "conditions", ("wall_s", "cpu_s"), "seconds", "conditions"),
    ]
    for ax, series, x, ys, ylabel, xlabel in panels:
        for y in ys:
            ax.plot([p[x] for p in series], [p[y] for p in series], "o-", label=y)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.legend()
    axes[0].set_xscale("log", base=2)
    axes[1].set_xscale("log", base=2)
    fig.suptitle("qdm.audit (lenses and drill-down on), workload P")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--conditions", type=int, nargs="+", default=[1, 5, 10])
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "scaling.json")
    parser.add_argument("--child", type=int, nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child, args.ctx, args.threads)))
        return
    points = [dict(run_point(t, 5, args), sweep="tokens") for t in args.tokens]
    smallest = min(args.tokens)
    for count in args.conditions:
        found = [p for p in points if p["tokens"] == smallest and p["conditions"] == count]
        point = found[0] if found else run_point(smallest, count, args)
        points.append(dict(point, sweep="conditions"))
    args.out.write_text(json.dumps(points, indent=2) + "\n")
    plot(points, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
