"""CPU time of the engine's work after the forward, for one batch: encode, statistics,
token lenses, drill-down. Synthetic read-outs, no model: quick, and (as CPU time of one
thread) little disturbed by other jobs on a shared machine.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_bookkeeping.py            # this tree
    PYTHONPATH=/path/to/old/tree .venv/bin/python benchmarks/bench_bookkeeping.py

A batch of 4,096 read-out rows (8 x 512) of width 512 is encoded by a 512 -> 32768
StandardSAE whose biases are set so that each row has about 128 active features (workload
P's L0); five conditions are the same rows plus Gaussian noise of growing size. Prints,
best of ``--repeats``, the CPU seconds of: the SAE encode alone (the matmul floor), the
bare engine work (encode + sparse statistics) and the default (+ token lenses and
drill-down), for the first batch (empty drill-down buffers: every entry is a candidate)
and a later batch (buffers full).
"""

from __future__ import annotations

import argparse
import time

import torch

import pytest_qdm.stream.engine as engine
from pytest_qdm.settings import AuditConfig
from pytest_qdm.stream.drilldown import DrilldownState

NOISE = (0.02, 0.05, 0.1, 0.2, 0.4)


def setup(rows: int, ctx: int, l0: int):
    from sae_lens import StandardSAE, StandardSAEConfig

    torch.manual_seed(0)
    sae = StandardSAE(StandardSAEConfig(d_in=512, d_sae=32768)).eval()
    act = torch.randn(rows, 512)
    with torch.no_grad():
        sae.W_enc.normal_(0, 512**-0.5)
        pre = act[:512] @ sae.W_enc
        sae.b_enc.copy_(-pre.quantile(1 - l0 / 32768, dim=0))
    tokens = torch.randint(0, 50000, (rows // ctx, ctx))
    return sae, batch(act), batch(torch.randn(rows, 512)), tokens


def batch(act: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Reference read-outs and the conditions' (the same plus noise)."""
    return act, [act + s * torch.randn_like(act) for s in NOISE]


def one_batch(sae, act, conditions, tokens, config: AuditConfig, drilldown) -> None:
    names = [f"c{i}" for i in range(len(conditions))]
    state = engine.EngineState(None, {n: None for n in names})
    state.drilldown = drilldown
    reference = engine.BatchReference(sae, act, config.lens_k)
    drilled = drilldown.batch(tokens, reference.entries) if drilldown is not None else None
    for name, y in zip(names, conditions, strict=True):
        keep = drilled is not None
        _, _, entries = reference.paired(sae, y, keep)
        if keep:
            drilled.add_condition(name, entries)
    if drilled is not None:
        drilled.finish()


def cpu(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        fn()
        best = min(best, time.process_time() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sae, (act, conditions), later, tokens = setup(args.rows, args.ctx, 128)
    default, bare = AuditConfig(), AuditConfig(token_lenses=False, drilldown_features=0)
    names = [f"c{i}" for i in range(len(conditions))]
    full = DrilldownState.empty(32768, default.drilldown_contexts, names, "cpu")
    with torch.inference_mode():
        one_batch(sae, act, conditions, tokens, default, full)  # fills the buffers
        encode = lambda: [list(engine.encode_blocks(sae, a)) for a in [act, *conditions]]  # noqa: E731
        runs = {
            "SAE encode only": encode,
            "bare (encode + statistics)": lambda: one_batch(
                sae, act, conditions, tokens, bare, None
            ),
            "default, first batch": lambda: one_batch(
                sae,
                act,
                conditions,
                tokens,
                default,
                DrilldownState.empty(32768, default.drilldown_contexts, names, "cpu"),
            ),  # fmt: skip
            "default, later batch": lambda: one_batch(sae, *later, tokens, default, full),
        }
        for label, fn in runs.items():
            print(f"{label:28s} {cpu(fn, args.repeats):7.3f} s CPU")


if __name__ == "__main__":
    main()
