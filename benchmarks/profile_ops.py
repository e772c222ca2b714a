"""Which torch operators the default audit spends its CPU time in (torch.profiler).

    .venv/bin/python benchmarks/profile_ops.py --tokens 4096 --threads 1 --rows 20

Workload P (bench_audit.py), ``qdm.audit`` with the default config (token lenses and
drill-down on), reference + RTN INT8..INT4. Prints the top operators by self CPU time
(share of the total, calls, time per call) as a markdown table for benchmarks/README.md.
``--lenses-off`` profiles the bare pass instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402
from workloads import workload_p  # noqa: E402

import pytest_qdm as qdm  # noqa: E402

BITS = (8, 7, 6, 5, 4)


def top_ops(prof, rows: int) -> str:
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    lines = [
        f"total self CPU time: {total / 1e6:.2f} s",
        "",
        "| operator | share | calls | ms per call |",
        "|---|---|---|---|",
    ]
    for e in events[:rows]:
        share = e.self_cpu_time_total / total
        per_call = e.self_cpu_time_total / e.count / 1e3
        lines.append(f"| `{e.key}` | {share:.1%} | {e.count} | {per_call:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", type=int, default=20)
    parser.add_argument("--lenses-off", action="store_true", help="token lenses and drill-down off")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workload = workload_p(args.tokens, args.ctx)
    tokens = workload.tokens.reshape(-1)[: args.tokens].reshape(-1, args.ctx)
    extra = dict(token_lenses=False, drilldown_features=0) if args.lenses_off else {}
    config = qdm.AuditConfig(progress=False, **extra)
    run = lambda: qdm.audit(workload.model, workload.sae, tokens, conditions, config)  # noqa: E731
    conditions = [qdm.RTN(b) for b in BITS]
    run()  # warm up (first-call allocations, lazy imports)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    print(top_ops(prof, args.rows))


if __name__ == "__main__":
    main()
