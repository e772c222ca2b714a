"""Survival / perplexity audit of a qdm-tiny v2 folder with the pytest_qdm audit engine.

    python training/eval_tiny.py DIR [--max-tokens 50000]

Held-out rows: the builtin held-out prose corpus, [BOS] + 127 tokens, first ``max_tokens``
tokens. Conditions RTN INT8..INT3 (per output channel). Perplexity = exp(mean NLL) on the
same rows (the audit's ``compute_loss``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

BITS = (8, 7, 6, 5, 4, 3)


def heldout_rows(tokenizer, max_tokens: int | None, domain: str = "prose"):
    import torch
    from corpus import domain_text

    from pytest_qdm.load import tokens as data

    text, _ = domain_text(domain, "heldout")
    ids = torch.tensor(data.encode_text(tokenizer, text), dtype=torch.long)
    return data.chunk_tokens(ids, 128, bos_token_id=0, max_tokens=max_tokens)


def evaluate(folder: Path, max_tokens: int = 50000, hook: str | None = None) -> dict:
    import torch
    from hf_to_tl import load_tl
    from sae_lens import SAE

    import pytest_qdm

    t0 = time.perf_counter()
    model = load_tl(folder)
    report = json.loads((folder / "training_report.json").read_text())
    hook = hook or report["default_hook"]
    sae = SAE.load_from_disk(str(folder / f"sae_{hook}"))
    load_s = time.perf_counter() - t0
    rows = heldout_rows(model.tokenizer, max_tokens)
    t1 = time.perf_counter()
    res = pytest_qdm.audit(
        model,
        sae,
        rows,
        conditions=[pytest_qdm.RTN(b) for b in BITS],
        config=pytest_qdm.AuditConfig(compute_loss=True, progress=False, token_lenses=False),
    )
    audit_s = time.perf_counter() - t1
    ref_ppl = math.exp(res.reference_mean_nll)
    table = {}
    for name, c in res.conditions.items():
        ppl = math.exp(c.mean_nll)
        table[name] = {
            "survived_pct": c.summary.survived_pct,
            "n_active": c.summary.n_active,
            "non_surviving": c.summary.n_active - c.summary.survived_count,
            "mean_correlation": c.summary.mean_correlation,
            "perplexity": ppl,
            "perplexity_change_pct": 100 * (ppl / ref_ppl - 1),
        }
    del torch
    return {
        "hook": hook,
        "pytest_qdm_file": pytest_qdm.__file__,
        "n_tokens": int(rows.numel()),
        "reference_perplexity": ref_ppl,
        "conditions": table,
        "load_seconds": load_s,
        "audit_seconds": audit_s,
    }


def print_table(ev: dict) -> None:
    print(f"hook {ev['hook']}  tokens {ev['n_tokens']}  ref ppl {ev['reference_perplexity']:.3f}")
    print(f"{'cond':8s} {'surv%':>7s} {'nonsurv':>8s} {'active':>7s} {'ppl':>9s} {'dppl%':>7s}")
    for name, c in ev["conditions"].items():
        print(
            f"{name:8s} {c['survived_pct']:7.1f} {c['non_surviving']:8d} {c['n_active']:7d} "
            f"{c['perplexity']:9.3f} {c['perplexity_change_pct']:7.2f}"
        )
    print(f"load {ev['load_seconds']:.1f}s audit {ev['audit_seconds']:.1f}s")


def main() -> None:
    import torch

    torch.set_num_threads(1)
    p = argparse.ArgumentParser()
    p.add_argument("folder", type=Path)
    p.add_argument("--max-tokens", type=int, default=50000)
    p.add_argument("--hook", default=None)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    ev = evaluate(a.folder, a.max_tokens, a.hook)
    print_table(ev)
    if a.json:
        a.json.write_text(json.dumps(ev, indent=2) + "\n")


if __name__ == "__main__":
    main()
