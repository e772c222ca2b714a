"""Two-phase audit (reference cached on disk, then one condition at a time) against the
one-phase audit, on the same workload, in one process.

    .venv/bin/python benchmarks/bench_two_phase.py                    # 8192 tokens
    .venv/bin/python benchmarks/bench_two_phase.py --tokens 4096 --lenses --repeats 3

Workload: the bundled model (qdm-tiny, 6 layers, d_model 128, float32) read out by its
2048-feature TopK SAE (k = 32) at blocks.4.hook_resid_post, RTN INT8..INT4, builtin
corpus. Without ``--lenses`` the token lenses are off, so the cache holds the sparse codes
(4 + 8 x 32 bytes per token against 512 for the float32 residual); with them it holds the
residual. The drill-down is on in both modes. Each mode runs ``--repeats`` times,
alternating, after one warm-up of each; prints the best and median seconds, the ratio
two-phase / one-phase, the cache's size on disk and whether every per-feature r is equal.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

BITS = (8, 7, 6, 5, 4)


def main() -> None:
    import pytest_qdm as qdm
    from pytest_qdm import zoo
    from pytest_qdm.load.tokens import load_tokens

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lenses", action="store_true", help="token lenses on (residual cache)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, sae = zoo.load_tiny_model(), zoo.load_tiny_sae()
    tokens = load_tokens(
        "builtin", zoo.load_tiny_tokenizer(), context_length=zoo.TINY_CONTEXT_LENGTH,
        max_tokens=args.tokens, prepend_bos=True,
    ).tokens  # fmt: skip
    conditions = [qdm.RTN(b) for b in BITS]
    base = dict(progress=False, batch_size=args.batch_size, token_lenses=args.lenses)

    with tempfile.TemporaryDirectory() as folder:
        kept = qdm.AuditConfig(**base, two_phase=True, two_phase_dir=folder, two_phase_keep=True)
        modes = {
            "one-phase": qdm.AuditConfig(**base),
            "two-phase": qdm.AuditConfig(**base, two_phase=True, two_phase_dir=folder),
        }
        results = {name: qdm.audit(model, sae, tokens, conditions, c) for name, c in modes.items()}
        qdm.audit(model, sae, tokens, conditions, kept)  # once more, keeping its files
        (cache,) = Path(folder).glob("qdm-reference-*")
        files = sorted(cache.iterdir())
        size = sum(f.stat().st_size for f in files)
        kinds = _kinds(files)

        seconds = {name: [] for name in modes}
        for _ in range(args.repeats):
            for name, config in modes.items():
                start = time.perf_counter()
                qdm.audit(model, sae, tokens, conditions, config)
                seconds[name].append(time.perf_counter() - start)

    n_tokens = tokens.numel()
    print(
        f"qdm-tiny, {n_tokens} tokens, batch {args.batch_size}, RTN INT8..INT4, "
        f"token lenses {'on' if args.lenses else 'off'}, {args.threads} thread(s), "
        f"{args.repeats} repeats"
    )
    for name, times in seconds.items():
        print(f"{name}: best {min(times):6.2f} s  median {statistics.median(times):6.2f} s")
    ratio = min(seconds["two-phase"]) / min(seconds["one-phase"])
    median = statistics.median(seconds["two-phase"]) / statistics.median(seconds["one-phase"])
    print(f"two-phase / one-phase: {ratio:.2f} (best), {median:.2f} (median)")
    print(
        f"cache: {len(files)} files, {size / 2**20:.2f} MiB ({size / n_tokens:.0f} bytes per "
        f"token), {kinds}; residual would be {model.cfg.d_model * 4} bytes per token"
    )
    one, two = results["one-phase"], results["two-phase"]
    equal = all(
        np.array_equal(one.conditions[n].correlation, two.conditions[n].correlation, equal_nan=True)
        for n in one.conditions
    )
    print(f"per-feature r identical: {equal}")


def _kinds(files) -> str:
    from safetensors import safe_open

    counts: dict[str, int] = {}
    for path in files:
        with safe_open(path, "pt") as file:
            kind = "residual" if "residual" in file.keys() else "codes"  # noqa: SIM118
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} x {k}" for k, n in counts.items())


if __name__ == "__main__":
    main()
