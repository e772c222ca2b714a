"""One table of metric names: the SweepRow field, its JUnit property name, and its name in
``--qdm-baseline-fail`` expressions (None: not baselined). Report-level metrics are paths
into the :class:`~pytest_qdm.schema.protocol.ProtocolReport`.
"""

from __future__ import annotations

from typing import NamedTuple


class Metric(NamedTuple):
    field: str  # SweepRow attribute, or "owner.attribute" of the report
    junit: str | None  # qdm.<condition>.<junit> (None: not a per-row property)
    baseline: str | None  # [COND.]<baseline>:±AMOUNT (None: not baselined)


METRICS = (
    Metric("survived_pct", "survived_pct", "survived"),
    Metric("degraded_pct", "degraded_pct", "degraded"),
    Metric("damaged_pct", "damaged_pct", "damaged"),
    Metric("mean_correlation", "mean_r", "mean_r"),
    Metric("median_correlation", "median_r", None),
    Metric("silenced_count", "silenced_count", None),
    Metric("emergent_count", "emergent_count", None),
    Metric("ppl_chunked", "ppl_chunked", None),
    Metric("ppl_sliding", "ppl_sliding", None),
    Metric("ppl_chunked_change", "ppl_chunked_change", "ppl_change"),
    Metric("ppl_sliding_change", "ppl_sliding_change", None),
    Metric("sae_explained_variance", "sae_ev", "sae_ev"),
    Metric("sae_loss_recovered", "sae_loss_recovered", None),
    Metric("sample_correlation", "sample_r", "sample_r"),
    Metric("topk_agreement", "topk_agreement", "topk"),
    Metric("procrustes_error", "procrustes_error", "procrustes"),
    Metric("unaligned_error", "unaligned_error", None),
    Metric("kl", "kl", "kl"),
    Metric("kl_reverse", "kl_reverse", None),
    Metric("top1_agreement", "top1_agreement", "top1"),
    Metric("topk_token_overlap", "topk_token_overlap", None),
    Metric("top_prob_change", "top_prob_change", None),
    Metric("predictor.auc_mean", None, "auc"),
    Metric("overlap.jaccard_not_survived", None, "jaccard"),
    Metric("overlap.spearman_damage", None, "spearman"),
)

#: JUnit property name -> SweepRow field, per condition.
ROW_PROPERTIES = {m.junit: m.field for m in METRICS if m.junit}
#: baseline expression metric -> SweepRow field or report path.
BASELINE_METRICS = {m.baseline: m.field for m in METRICS if m.baseline}
