"""Identical numbers before and after a refactor: ``qdm.audit``, ``qdm.run_protocol`` on a
seeded config-built model, and the default gate (``pytest --qdm-model tiny``).

    python benchmarks/identical_numbers.py write before/      # on the old code
    python benchmarks/identical_numbers.py write after/       # on the new code
    python benchmarks/identical_numbers.py compare before/ after/

Only the public API is used, so the same script runs on both sides. Timings, paths and
library versions are dropped before comparing; every number must be equal (NaN == NaN).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

VOLATILE = {"elapsed_seconds", "wall_seconds", "versions", "path", "created", "cached_at"}


def _model_sae_tokens():
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=3, d_model=64, n_ctx=32, d_head=16, n_heads=4, d_mlp=256, d_vocab=97,
        act_fn="gelu", normalization_type="LN", positional_embedding_type="rotary",
        rotary_dim=8, parallel_attn_mlp=True, seed=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = HookedTransformer(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, 0.5 / p.shape[-2] ** 0.5 if p.ndim == 2 else 0.1)
    model.eval()
    hook = "blocks.1.hook_resid_post"
    sae_cfg = StandardSAEConfig(d_in=64, d_sae=128)
    sae_cfg.metadata.hook_name = hook
    torch.manual_seed(0)
    sae = StandardSAE(sae_cfg)
    tokens = torch.randint(0, 97, (64, 32), generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(tokens[:16], names_filter=hook)
    acts = cache[hook].reshape(-1, 64)
    with torch.no_grad():
        sae.W_enc.normal_(0, 1 / 8)
        pre = (acts - sae.b_dec) @ sae.W_enc
        sae.b_enc.copy_(-torch.quantile(pre, 0.9, dim=0))
    return model, sae.eval(), tokens


def write(out: Path) -> None:
    import torch

    import pytest_qdm as qdm

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    model, sae, tokens = _model_sae_tokens()
    config = qdm.AuditConfig(progress=False)
    result = qdm.audit(model, sae, tokens, [qdm.RTN(b) for b in (8, 6, 4, 3)], config)
    (out / "audit.json").write_text(result.model_dump_json())
    try:
        from pytest_qdm import ProtocolConfig
    except ImportError:  # before the layered package exported it
        from pytest_qdm.settings import ProtocolConfig
    protocol_config = ProtocolConfig(min_explained_variance=None, ppl_tokens=512, n_bootstrap=20)
    report = qdm.run_protocol(
        model, sae, tokens, bits=(8, 6, 4, 3), match_bits=4, config=config,
        protocol=protocol_config,
    )  # fmt: skip
    (out / "protocol.json").write_text(report.model_dump_json())
    with tempfile.TemporaryDirectory() as empty:
        report_dir = out / "gate"
        cmd = [sys.executable, "-m", "pytest", "--qdm-model", "tiny", "--qdm-no-cache",
               f"--qdm-report-dir={report_dir}", "-p", "no:cacheprovider", "-q"]  # fmt: skip
        subprocess.run(cmd, cwd=empty, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _diff(a, b, where="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _diff(x, y, f"{where}[{i}]")
        ]
    both_nan = isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b)
    return [] if a == b or both_nan else [f"{where}: {a!r} != {b!r}"]


def compare(before: Path, after: Path) -> int:
    problems = []
    for name in ("audit.json", "protocol.json", "gate/qdm-report.json"):
        a = _strip(json.loads((before / name).read_text()))
        b = _strip(json.loads((after / name).read_text()))
        found = _diff(a, b, name)
        print(f"{name}: {'identical' if not found else f'{len(found)} differences'}")
        problems += found
    for line in problems[:30]:
        print("  ", line)
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("write").add_argument("out", type=Path)
    cmp = sub.add_parser("compare")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "write":
        write(args.out)
        return 0
    return compare(args.before, args.after)


if __name__ == "__main__":
    raise SystemExit(main())
