"""Does correlation survival predict claim survival? (issue 26, item 5)

On the bundled model, for the 200 most active SAE features (mean activation on the audit
tokens, reference model): each feature's Pearson r under RTN INT6 and INT4 (the project's
audit), its steering effect ratio (a ``steers`` claim per feature: alpha = 4 x its mean
nonzero activation, targets = its 3 largest direct-logit tokens W_dec[k] @ W_U, prompts =
8 held-out prose lines) and its detection AUROC drop (positives: the 10 windows of 16
audit tokens where the reference activates it most, negatives: 30 seeded random windows
where it is silent in the reference; a window's score is the feature's max activation over
it, in its row's context). Writes claims_vs_survival.png and .json and prints the Spearman
correlations (scipy) and the features where r and the claims disagree.

    python examples/claims_vs_survival.py [OUT_DIR] [--features 200] [--prompts 8] [--tokens 8192]
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
N_FEATURES, N_TOKENS, N_PROMPTS, WINDOW = 200, 8192, 8, 16


def window_scores(codes: torch.Tensor, rows: int, context: int) -> np.ndarray:
    """Max activation per 16-token window: [n_windows, d_sae]."""
    per_row = codes.reshape(rows, context // WINDOW, WINDOW, -1).amax(2)
    return per_row.reshape(-1, codes.shape[-1]).numpy()


def main(out: Path) -> None:
    from pytest_qdm.claims.activations import encode
    from pytest_qdm.claims.base import ClaimContext
    from pytest_qdm.claims.detects import auroc
    from pytest_qdm.claims.files import read_texts
    from pytest_qdm.compress.conditions import RTN
    from pytest_qdm.load.tokens import load_tokens
    from pytest_qdm.run.audit import audit
    from pytest_qdm.settings import AuditConfig
    from pytest_qdm.stream.hooks import hook_activations
    from pytest_qdm.zoo import TINY_HOOK, load_tiny_model, load_tiny_sae

    model, sae = load_tiny_model(), load_tiny_sae()
    tokens = load_tokens("builtin", model.tokenizer, context_length=128, max_tokens=N_TOKENS,
                         prepend_bos=True, split="heldout").tokens  # fmt: skip
    conditions = [RTN(6), RTN(4)]
    result = audit(model, sae, tokens, conditions, AuditConfig(hook_name=TINY_HOOK, progress=False))
    ctx = ClaimContext(sae=sae, hook=TINY_HOOK, reference=model)
    ref_codes = encode(ctx, hook_activations(model, tokens, TINY_HOOK))
    features = torch.argsort(ref_codes.mean(0), descending=True)[:N_FEATURES].tolist()
    prompts = read_texts(HERE / "claims" / "prose.txt", "prose")[:N_PROMPTS]
    claims = [steering_claim(model, sae, ref_codes, k, prompts) for k in features]
    rng = np.random.default_rng(0)
    ref_windows = window_scores(ref_codes, *tokens.shape)
    reference = {c.id: c.measure(ctx, model) for c in claims}
    rows = {k: {"feature": k} for k in features}
    for condition in conditions:
        weights = condition.compressed_weights(model)
        with condition.running(model, weights) as compressed:
            codes = encode(ctx, hook_activations(compressed, tokens, TINY_HOOK))
            windows = window_scores(codes, *tokens.shape)
            for claim in claims:
                k, row = claim.feature, rows[claim.feature]
                steered = claim.measure(ctx, compressed)
                row[f"r_{condition.name}"] = float(result.conditions[condition.name].correlation[k])
                row[f"steer_ratio_{condition.name}"] = float(
                    steered.mean() / reference[claim.id].mean()
                )
                pos = np.argsort(-ref_windows[:, k])[:10]
                silent = np.flatnonzero(ref_windows[:, k] == 0)
                neg = rng.choice(silent, 30, replace=False) if len(silent) >= 30 else silent
                drop = auroc(ref_windows[pos, k], ref_windows[neg, k]) - auroc(
                    windows[pos, k], windows[neg, k]
                )
                row[f"auroc_drop_{condition.name}"] = float(drop)
                row["reference_steering_effect"] = float(reference[claim.id].mean())
    table = list(rows.values())
    summary = summarize(table, [c.name for c in conditions])
    out.mkdir(parents=True, exist_ok=True)
    (out / "claims_vs_survival.json").write_text(
        json.dumps({"summary": summary, "features": table}, indent=1)
    )
    plot(table, [c.name for c in conditions], out / "claims_vs_survival.png")
    print(json.dumps(summary, indent=1, default=float))


def summarize(table: list[dict], names: list[str]) -> dict:
    """Spearman correlations (scipy, NaN pairs omitted: a feature with no silent window
    has no AUROC) and the features where r and the claims disagree."""
    from scipy.stats import spearmanr

    summary = {}
    for name in names:
        r, ratio, drop = (
            np.array([t[f"{key}_{name}"] for t in table], dtype=float)
            for key in ("r", "steer_ratio", "auroc_drop")
        )
        summary[name] = {
            "spearman_r_vs_steer_ratio": spearmanr(r, ratio, nan_policy="omit").statistic,
            "spearman_r_vs_auroc_drop": spearmanr(r, drop, nan_policy="omit").statistic,
            "features_with_auroc": int(np.isfinite(drop).sum()),
            "median_r": float(np.nanmedian(r)),
            "median_steer_ratio": float(np.nanmedian(ratio)),
            "median_auroc_drop": float(np.nanmedian(drop)),
            "high_r_but_steering_lost": [t["feature"] for t in table
                                         if t[f"r_{name}"] >= 0.9 and t[f"steer_ratio_{name}"] < 0.8],
            "high_r_but_detection_lost": [t["feature"] for t in table
                                          if t[f"r_{name}"] >= 0.9 and t[f"auroc_drop_{name}"] > 0.1],
            "low_r_but_steering_kept": [t["feature"] for t in table
                                        if t[f"r_{name}"] < 0.7 and 0.9 <= t[f"steer_ratio_{name}"] <= 1.1],
        }  # fmt: skip
    return summary


def steering_claim(model, sae, ref_codes, k: int, prompts: list[str]):
    from pytest_qdm.claims.steers import Steers

    direct = sae.W_dec[k].detach() @ model.W_U.detach()
    targets = []
    for token in torch.argsort(direct, descending=True).tolist():
        text = model.tokenizer.decode([token])
        if text.strip() and model.to_tokens(text, prepend_bos=False)[0].tolist() == [token]:
            targets.append(text)
        if len(targets) == 3:
            break
    active = ref_codes[:, k][ref_codes[:, k] > 0]
    alpha = 4 * float(active.mean())
    return Steers(id=f"f{k}", feature=k, alpha=alpha, prompts=prompts, targets=targets)


def plot(table, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, marker in zip(names, "os", strict=False):
        r = [t[f"r_{name}"] for t in table]
        for ax, key in zip(axes, ("steer_ratio", "auroc_drop"), strict=True):
            ax.scatter(r, [t[f"{key}_{name}"] for t in table], s=10, marker=marker, label=name)
    axes[0].set(xlabel="Pearson r (feature survival)", ylabel="steering effect ratio")
    axes[1].set(xlabel="Pearson r (feature survival)", ylabel="detection AUROC drop")
    for ax in axes:
        ax.legend()
    fig.suptitle("qdm-tiny: correlation survival vs claim survival (200 most active features)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("claims_vs_survival"))
    parser.add_argument("--features", type=int, default=N_FEATURES)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=N_TOKENS)
    parser.add_argument("--from-json", type=Path, help="re-summarize and re-plot a saved run")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())["features"]
        names = [k.removeprefix("r_") for k in saved[0] if k.startswith("r_")]
        print(json.dumps(summarize(saved, names), indent=1, default=float))
        plot(saved, names, args.out / "claims_vs_survival.png")
        raise SystemExit
    N_FEATURES, N_TOKENS, N_PROMPTS = args.features, args.tokens, args.prompts
    main(args.out)
