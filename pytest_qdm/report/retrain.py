"""The retrained-SAE baseline in the reports: the three-way table, the lost/moved split per
band, the lost features, and their JUnit properties (docs/retrained-sae.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_qdm.report._format import TitledTable, num

if TYPE_CHECKING:
    from pytest_qdm.schema.protocol import ProtocolReport

THREE_WAY_HEADERS = ("SAE", "features", "EV", "L0", "Δloss spliced", "loss rec.", "dead")
SPLIT_HEADERS = ("band (frozen SAE)", "features", "moved", "lost")
COLUMN_LABELS = {
    "transfer": "frozen reference SAE (transfer)",
    "retrained": "retrained on the condition",
    "pruned": "reference SAE pruned, no retraining",
}
LOST_SHOWN = 20


def three_way_table(report: ProtocolReport) -> TitledTable | None:
    """Frozen vs retrained vs pruned SAE on the condition's model; None when not run."""
    r = report.retrain
    if r is None:
        return None
    rows = [
        [
            COLUMN_LABELS[row.sae],
            f"{row.n_features:,}",
            num(row.explained_variance, ".3f"),
            num(row.mean_l0, ".1f"),
            num(row.spliced_loss_change, "+.3f"),
            num(row.loss_recovered, ".3f"),
            f"{row.dead_latents:,}",
        ]
        for row in r.table
    ]
    return f"Retrained SAE baseline on {r.condition}", THREE_WAY_HEADERS, rows


def retrain_caption(report: ProtocolReport) -> str | None:
    """How the SAE was retrained and evaluated, in one line."""
    r = report.retrain
    if r is None:
        return None
    return (
        f"sae_lens trainer, init {r.init}, seed {r.seed}: {r.trained_tokens:,} of a "
        f"{r.budget_tokens:,}-token budget ({r.epochs:.1f} passes over {r.train_rows} rows), "
        f"lr {r.lr:g}, batch {r.batch_size}; measured on {r.eval_tokens:,} held-out tokens "
        f"of {r.condition} in {r.elapsed_seconds:.0f} s. Δloss spliced is nats/token over the "
        "clean loss; dead latents fire on none of those tokens; the pruned SAE keeps as many "
        "features as the retrained SAE has alive."
    )


def lost_moved_table(report: ProtocolReport) -> TitledTable | None:
    """The reference-active features per band, moved or lost; None when not run."""
    r = report.retrain
    if r is None:
        return None
    rows = [[s.band, f"{s.count:,}", f"{s.moved:,}", f"{s.lost:,}"] for s in r.bands]
    title = f"Lost or moved under {r.condition} ({r.matching} matching)"
    return title, SPLIT_HEADERS, rows


def lost_caption(report: ProtocolReport) -> str | None:
    """The rule, and the lost non-surviving features (lowest decoder cosine first)."""
    r = report.retrain
    if r is None:
        return None
    shown = ", ".join(str(f) for f in r.lost[:LOST_SHOWN]) or "none"
    more = f" and {len(r.lost) - LOST_SHOWN:,} more" if len(r.lost) > LOST_SHOWN else ""
    return (
        f"Moved: the matched retrained feature has decoder cosine >= {r.min_cosine:g} and "
        f"activation r >= {r.min_correlation:g} with the reference feature (the compressed "
        f"model still represents it; the frozen encoder misreads it); lost: no such match. "
        f"Lost features that did not survive: {shown}{more}."
    )


def feature_verdicts(report: ProtocolReport, condition: str) -> dict[int, str]:
    """``{feature id: "moved" | "lost"}`` for the retrained condition (empty otherwise)."""
    r = report.retrain
    if r is None or r.condition != condition:
        return {}
    return {f.feature: "moved" if f.moved else "lost" for f in r.features}


def retrain_properties(report: ProtocolReport) -> list[tuple[str, float | int | str]]:
    """``qdm.retrain.<column>.<metric>`` and ``qdm.retrain.<band>.moved|lost``."""
    r = report.retrain
    if r is None:
        return []
    out: list[tuple[str, float | int | str]] = [
        ("qdm.retrain.condition", r.condition),
        ("qdm.retrain.trained_tokens", r.trained_tokens),
        ("qdm.retrain.matching", r.matching),
    ]
    for row in r.table:
        metrics = {
            "sae_ev": row.explained_variance,
            "mean_l0": row.mean_l0,
            "spliced_loss_change": row.spliced_loss_change,
            "loss_recovered": row.loss_recovered,
            "dead_latents": row.dead_latents,
            "n_features": row.n_features,
        }
        out += [(f"qdm.retrain.{row.sae}.{k}", v) for k, v in metrics.items() if v is not None]
    for split in r.bands:
        out += [(f"qdm.retrain.{split.band}.moved", split.moved)]
        out += [(f"qdm.retrain.{split.band}.lost", split.lost)]
    return out
