"""Benchmark guard: has the one-pass engine fallen behind the machine's matmul rate?

    .venv/bin/python benchmarks/guard.py                 # check against the recorded fraction
    .venv/bin/python benchmarks/guard.py --record        # record this machine's fraction

Runs the default ``qdm.audit`` (token lenses and drill-down on) of workload P
(bench_audit.py) on ``--tokens`` tokens, measures the dense float32 matmul rate in the same
process right before and after (best of both), and compares the engine's fraction of that
rate (analytic matmul FLOPs of the pass / wall time / matmul rate) with the one recorded in
``results/guard.json``. A fraction, not a time: it carries from one machine to another far
better than seconds do. Exits 1 when the fraction fell by more than ``--tolerance`` of the
recorded one (default 15%: a loaded machine moves it by about that much; rerun to confirm).
Run on demand (CI: ``python benchmarks/guard.py``); never collected by pytest.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from roofline import engine_flops, matmul_flops_per_s  # noqa: E402
from workloads import workload_p  # noqa: E402

import pytest_qdm as qdm  # noqa: E402

BITS = (8, 7, 6, 5, 4)
RECORD = HERE / "results" / "guard.json"


def measure(tokens: int, ctx: int, threads: int, repeats: int) -> dict:
    """Fraction of the matmul rate of the default audit (best of ``repeats`` runs)."""
    torch.set_num_threads(threads)
    workload = workload_p(tokens, ctx)
    audit_tokens = workload.tokens.reshape(-1)[:tokens].reshape(-1, ctx)
    config = qdm.AuditConfig(progress=False)
    conditions = [qdm.RTN(b) for b in BITS]
    rate = matmul_flops_per_s()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        qdm.audit(workload.model, workload.sae, audit_tokens, conditions, config)
        best = min(best, time.perf_counter() - start)
    rate = max(rate, matmul_flops_per_s())
    read_layer = int(workload.hook.split(".")[1])
    per_token = engine_flops(workload.model.cfg, ctx, read_layer, workload.sae.cfg.d_sae)
    work = per_token * (1 + len(BITS)) * audit_tokens.numel()
    return {
        "tokens": audit_tokens.numel(),
        "threads": threads,
        "seconds": best,
        "matmul_gflops": rate / 1e9,
        "fraction": work / best / rate,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="engine runs; the best counts")
    parser.add_argument("--tolerance", type=float, default=0.15)
    parser.add_argument("--record", action="store_true", help="write the measured fraction")
    parser.add_argument("--file", type=Path, default=RECORD)
    args = parser.parse_args()
    if not args.record and not args.file.exists():
        print(f"no recorded fraction in {args.file}; run with --record first on a quiet machine")
        return 2
    now = measure(args.tokens, args.ctx, args.threads, args.repeats)
    print(
        f"engine {now['seconds']:.1f} s on {now['tokens']} tokens, {now['threads']} thread(s); "
        f"matmul {now['matmul_gflops']:.0f} GFLOP/s; fraction {now['fraction']:.3f}"
    )
    if args.record:
        args.file.write_text(json.dumps(now, indent=2) + "\n")
        print(f"recorded in {args.file}")
        return 0
    recorded = json.loads(args.file.read_text())
    floor = recorded["fraction"] * (1 - args.tolerance)
    verdict = "ok" if now["fraction"] >= floor else "REGRESSION"
    print(
        f"{verdict}: fraction {now['fraction']:.3f} vs recorded {recorded['fraction']:.3f} "
        f"(floor {floor:.3f} = recorded - {args.tolerance:.0%})"
    )
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    raise SystemExit(main())
