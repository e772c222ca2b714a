"""What the extra lenses cost the default gate on the bundled model.

Runs the gate's protocol (``run_protocol`` on the ``tiny`` preset, RTN INT8..INT4, pruning
matched to INT6, the gate's token budget) with the lenses on (token-level agreement and SAE
transfer quality, the default) and off, alternating, and prints the median times and
their ratio. The target: lenses on <= 1.25 x lenses off. Optional: ``--schemes`` adds the
NF4 / FP8 / absmax-INT8 conditions to both runs.

    .venv/bin/python benchmarks/bench_lenses.py --repeats 2 --threads 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

import pytest_qdm as qdm
from pytest_qdm.compress.schemes import scheme_condition
from pytest_qdm.settings import ProtocolConfig

SCHEMES = ("nf4-b64", "fp8-e4m3", "fp8-e5m2", "absmax-int8")


def run_gate(bundle, tokens, lenses: bool, schemes: bool) -> tuple[float, qdm.ProtocolReport]:
    config = qdm.AuditConfig(progress=False, token_lenses=lenses)
    started = time.perf_counter()
    report = qdm.run_protocol(
        bundle.model,
        bundle.sae,
        tokens,
        bits=(8, 7, 6, 5, 4),
        match_bits=6,
        config=config,
        protocol=ProtocolConfig(sae_transfer=lenses),
        second_sae=bundle.saes.get("blocks.1.hook_resid_post"),
        extra_conditions=[scheme_condition(s) for s in SCHEMES] if schemes else (),
    )
    return time.perf_counter() - started, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=None, help="default: the preset's budget")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--schemes", action="store_true", help="add NF4/FP8/absmax-INT8")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results/lenses.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bundle = qdm.load_preset("tiny")
    tokens = bundle.tokens(args.tokens) if args.tokens else bundle.tokens()
    times: dict[str, list[float]] = {"on": [], "off": []}
    report = None  # of a run with the lenses on
    for repeat in range(args.repeats):
        for mode in ("on", "off") if repeat % 2 == 0 else ("off", "on"):
            seconds, run = run_gate(bundle, tokens, mode == "on", args.schemes)
            times[mode].append(seconds)
            if mode == "on":
                report = run
            print(f"repeat {repeat} lenses {mode}: {seconds:.1f} s", flush=True)
    on, off = (statistics.median(times[m]) for m in ("on", "off"))
    rows = {
        r.condition: {
            "survived_pct": r.survived_pct,
            "ppl_chunked_change": r.ppl_chunked_change,
            "sample_correlation": r.sample_correlation,
            "topk_agreement": r.topk_agreement,
            "procrustes_error": r.procrustes_error,
            "sae_explained_variance": r.sae_explained_variance,
            "sae_loss_recovered": r.sae_loss_recovered,
        }
        for r in report.sweep
    }
    result = {
        "n_tokens": report.audit.tokens.n_tokens,
        "threads": torch.get_num_threads(),
        "schemes": args.schemes,
        "seconds": times,
        "median_on": on,
        "median_off": off,
        "ratio_on_over_off": on / off,
        "target_ratio": 1.25,
        "rows_of_a_run_with_lenses": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"lenses on {on:.1f} s, off {off:.1f} s: ratio {on / off:.3f} (target <= 1.25)")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
