"""What the claims cost the default gate on the bundled model.

Runs the gate's protocol (as bench_lenses.py: the ``tiny`` preset, RTN INT8..INT4,
pruning matched to INT6, the gate's token budget) and then ``check_claims`` with
examples/qdm-claims.toml on the gate's RTN conditions (the audit's r reused, the first 16
audit rows for top contexts, as the plugin does), alternating, and prints the median
times and the ratio (protocol + claims) / protocol.

    .venv/bin/python benchmarks/bench_claims.py --repeats 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_lenses import run_gate  # noqa: E402

import pytest_qdm as qdm  # noqa: E402
from pytest_qdm.claims.session import OVERLAP_ROWS  # noqa: E402
from pytest_qdm.compress.conditions import RTN  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=None, help="default: the preset's budget")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=HERE / "results/claims.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = qdm.load_preset("tiny")
    tokens = bundle.tokens(args.tokens) if args.tokens else bundle.tokens()
    claims = qdm.load_claims(HERE.parent / "examples" / "qdm-claims.toml", bundle.sae.cfg.d_sae)
    times: dict[str, list[float]] = {"protocol": [], "claims": []}
    for _ in range(args.repeats):
        seconds, report = run_gate(bundle, tokens.tokens, lenses=True, schemes=False)
        times["protocol"].append(seconds)
        started = time.perf_counter()
        qdm.check_claims(
            bundle.model,
            bundle.sae,
            claims,
            [RTN(b) for b in (8, 7, 6, 5, 4)],
            tokens=tokens.tokens[:OVERLAP_ROWS],
            correlations={n: c.correlation for n, c in report.audit.conditions.items()},
        )
        times["claims"].append(time.perf_counter() - started)
    protocol, extra = (statistics.median(times[k]) for k in ("protocol", "claims"))
    result = {
        "tokens": int(tokens.tokens.numel()),
        "claims": len(claims),
        "conditions": 5,
        "threads": torch.get_num_threads(),
        "protocol_s": protocol,
        "claims_s": extra,
        "ratio_with_claims": (protocol + extra) / protocol,
        "runs": times,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
