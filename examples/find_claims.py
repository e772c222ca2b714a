"""Find real claims for the bundled model and write examples/qdm-claims.toml.

A documented, reproducible search on the REFERENCE model only (no compressed model is
looked at, so the claims are not chosen for surviving):

1. Texts: lines of 30..120 characters from the built-in corpus' held-out split, code
   (standard-library source) and prose (CPython's documentation), the first 240 of each
   in sha256 order. The first 200 of each are the search set; the other 40 are written
   to examples/claims/{code,prose}.txt and used by the claims (a search-set AUROC is
   the best of 2048 and optimistic: the claims are judged on texts it never saw).
2. detects: the feature with the highest AUROC (max activation per line) of code against
   prose on the search set.
3. steers: the same feature's decoder row; targets: the 3 single tokens with the largest
   direct logit effect W_dec[k] @ W_U; alpha: 4 x the feature's mean max activation on
   code lines; prompts: the prose evaluation lines.
4. ablates: the 5 features whose mean activation on code lines exceeds their mean on
   prose lines the most (search set); texts: the first 16 code lines.
5. probe: code vs prose on all evaluation lines; survives: the features above.
Bounds are fixed here, before any compressed model is measured.

    python examples/find_claims.py        # rewrites examples/qdm-claims.toml
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SEARCH = 200  # lines per domain to search on; the next 40 are the claims' texts


def corpus_lines(domain: str, n: int = 240) -> list[str]:
    from pytest_qdm.load.corpus import builtin_corpus

    text = builtin_corpus("heldout", domain).text
    lines = {line.strip() for line in text.splitlines() if 30 <= len(line.strip()) <= 120}
    return sorted(lines, key=lambda s: hashlib.sha256(s.encode()).hexdigest())[:n]


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from pytest_qdm.claims.activations import text_codes
    from pytest_qdm.claims.base import ClaimContext
    from pytest_qdm.zoo import TINY_HOOK, load_tiny_model, load_tiny_sae

    torch.manual_seed(0)
    model, sae = load_tiny_model(), load_tiny_sae()
    ctx = ClaimContext(sae=sae, hook=TINY_HOOK, reference=model)
    code, prose = corpus_lines("code"), corpus_lines("prose")
    search = {"code": code[:SEARCH], "prose": prose[:SEARCH]}
    held = {"code": code[SEARCH:], "prose": prose[SEARCH:]}
    codes = {d: [text_codes(ctx, model, t) for t in texts] for d, texts in search.items()}
    maxes = {d: np.stack([c.max(0).values.numpy() for c in cs]) for d, cs in codes.items()}
    means = {d: np.stack([c.mean(0).numpy() for c in cs]) for d, cs in codes.items()}
    labels = np.r_[np.ones(len(maxes["code"])), np.zeros(len(maxes["prose"]))]
    scores = np.concatenate([maxes["code"], maxes["prose"]])
    live = np.flatnonzero(scores.max(0) > 0)
    aurocs = {int(k): roc_auc_score(labels, scores[:, k]) for k in live}
    detector = max(aurocs, key=aurocs.get)
    ablated = np.argsort(-(means["code"].mean(0) - means["prose"].mean(0)))[:5].tolist()
    direct = sae.W_dec[detector].detach() @ model.W_U.detach()
    targets = []
    for token in torch.argsort(direct, descending=True).tolist():
        text = model.tokenizer.decode([token])
        if text.strip() and model.to_tokens(text, prepend_bos=False)[0].tolist() == [token]:
            targets.append(text)
        if len(targets) == 3:
            break
    alpha = round(4 * float(maxes["code"][:, detector].mean()), 2)
    for domain, texts in held.items():
        (HERE / "claims" / f"{domain}.txt").write_text("\n".join(texts) + "\n")
    print(f"detector #{detector} (search AUROC {aurocs[detector]:.3f}), ablated {ablated}")
    print(f"steering targets {targets!r}, alpha {alpha}")
    (HERE / "qdm-claims.toml").write_text(TEMPLATE.format(
        detector=detector, auroc=aurocs[detector], alpha=alpha, targets=targets,
        ablated=ablated, survivors=sorted({detector, *ablated}),
    ).replace("'", '"'))  # fmt: skip


TEMPLATE = """\
# Claims about the bundled qdm-tiny model, found by examples/find_claims.py on the
# reference model only (search AUROC of the detector: {auroc:.3f}). Texts: held-out lines.
#   pytest --qdm-model tiny --qdm-claims examples/qdm-claims.toml

[[claim]]
id = "code-detector"
kind = "detects"
feature = {detector}
positive = "claims/code.txt"
negative = "claims/prose.txt"
min_auroc = 0.8
max_drop = 0.05

[[claim]]
id = "code-steering"
kind = "steers"
feature = {detector}
alpha = {alpha}
prompts = "claims/prose.txt"
targets = {targets}
min_ratio = 0.8

[[claim]]
id = "code-ablation"
kind = "ablates"
features = {ablated}
texts = "claims/code.txt"
min_ratio = 0.8

[[claim]]
id = "code-vs-prose-probe"
kind = "probe"
metric = "accuracy"
min_score = 0.85

[claim.classes]
code = "claims/code.txt"
prose = "claims/prose.txt"

[[claim]]
id = "code-features-survive"
kind = "survives"
features = {survivors}
min_r = 0.9
"""

if __name__ == "__main__":
    main()
