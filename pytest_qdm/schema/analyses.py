"""Typed results of the analyses (perplexity, SAE fit and transfer, predictor, matched
pruning and overlap, stability, SAE pruning): part of the JSON contract, no torch.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from pytest_qdm.schema.audit import AuditResult
from pytest_qdm.schema.base import _Frozen


class DomainPerplexity(BaseModel):
    """Chunked perplexity over one labelled domain's rows (same forwards as the total)."""

    model_config = ConfigDict(frozen=True)

    perplexity: float | None
    mean_nll: float | None
    n_scored_tokens: int


class PerplexityResult(BaseModel):
    """One perplexity measurement and the protocol that produced it.

    Attributes:
        protocol: "chunked" or "sliding".
        perplexity: exp(mean_nll); None only if it overflows a float.
        mean_nll: mean next-token negative log-likelihood (nats) over the scored positions.
        n_scored_tokens: number of positions whose NLL entered the mean.
        context_length: the block length (chunked) or the window length (sliding), BOS
            included when there is one.
        stride: the window advance in corpus tokens (sliding); None for chunked.
        prepend_bos: whether each block/window starts with a BOS token.
        bos_token_id: that BOS id, or None.
        note: which tokens were scored, in words.
        by_domain: per labelled domain (chunked only), from the same forwards.
    """

    model_config = ConfigDict(frozen=True)

    protocol: Literal["chunked", "sliding"]
    perplexity: float | None
    mean_nll: float
    n_scored_tokens: int
    context_length: int
    stride: int | None
    prepend_bos: bool
    bos_token_id: int | None
    note: str
    by_domain: dict[str, DomainPerplexity] = {}


class TransferQuality(BaseModel):
    model_config = ConfigDict(frozen=True)

    explained_variance: float | None
    mse: float
    mean_l0: float
    clean_loss: float
    spliced_loss: float
    zero_ablation_loss: float
    loss_recovered: float | None
    n_tokens: int


class SaeFit(BaseModel):
    """How well ``sae`` reconstructs ``model``'s activations at ``hook_name``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hook_name: str
    n_tokens: int
    d_sae: int
    explained_variance: float
    mean_l0: float
    activation_norm: float  # mean ||x|| at the hook
    reconstruction_norm: float  # mean ||x_hat||
    norm_ratio: float  # reconstruction_norm / activation_norm
    b_dec_norm: float  # ||b_dec||, the point the SAE reconstructs around
    min_explained_variance: float | None  # None: measured, never refused
    n_massive_tokens: int = 0  # left out of the sums: norm > MASSIVE_NORM x the median
    ok: bool
    reason: str


class QuartileSurvival(BaseModel):
    """Survival rate by quartile of one input.

    Bins are [edges[k], edges[k+1]), the last one closed, with edges from np.quantile.
    Tied values at an edge go to the upper bin, so ties can leave a bin empty (count 0,
    survival rate None).
    """

    model_config = ConfigDict(frozen=True)

    input: str
    edges: list[float]
    counts: list[int]
    survival_rate: list[float | None]


class PredictorResult(BaseModel):
    """Cross-validated fragility predictor.

    Attributes:
        status: "ok"; "one_class" when every feature survived or none did; "too_few" when
            a class has fewer members than ``n_splits``. Only "ok" has AUC fields.
        message: what happened, in words (includes a collinearity warning).
        inputs: the input names, in coefficient order.
        n_features, n_survived: sample size and positives (survived = 1).
        n_splits, seed: the StratifiedKFold settings.
        auc_mean, auc_std, fold_aucs: ROC AUC over the folds (std with ddof=0).
        coefficients, intercept: the logistic regression on standardized inputs, refitted
            on all data (None for one class).
        quartiles: survival rate by quartile of each input.
        vif: VIF_j = 1 / (1 - R^2_j) of input j regressed on the others; None when the
            input is constant or perfectly collinear (1 - R^2 < 1e-9).
    """

    model_config = ConfigDict(frozen=True)

    status: Literal["ok", "one_class", "too_few"]
    message: str
    inputs: list[str]
    n_features: int
    n_survived: int
    n_splits: int
    seed: int
    auc_mean: float | None
    auc_std: float | None
    fold_aucs: list[float] | None
    coefficients: dict[str, float] | None
    intercept: float | None
    quartiles: list[QuartileSurvival]
    vif: dict[str, float | None]


class PruningStep(BaseModel):
    """One perplexity evaluation of the search, in evaluation order."""

    model_config = ConfigDict(frozen=True)

    sparsity: float
    perplexity: float
    rel_error: float


class PruningMatch(BaseModel):
    """Outcome of :func:`match_sparsity`.

    Attributes:
        target: the perplexity to match (e.g. that of RTN at ``match_bits``).
        achieved, sparsity: perplexity and sparsity of the closest step evaluated.
        abs_error, rel_error: achieved - target and achieved / target - 1.
        steps: every evaluation, the two bracket ends first.
        converged: |rel_error| <= rel_tolerance.
        monotone: False if any two evaluations have perplexity falling as sparsity rises.
        status: "converged"; "not_converged" (max_steps used up); "below_range" /
            "above_range" when the target is outside the perplexities at the bracket ends.
        message: the same, in words.
        rel_tolerance, max_steps: the settings used.
        tokens_used: number of tokens the search and the final run were scored on (given
            by the caller; None when not recorded).
    """

    model_config = ConfigDict(frozen=True)

    target: float
    achieved: float
    sparsity: float
    abs_error: float
    rel_error: float
    steps: list[PruningStep]
    converged: bool
    monotone: bool
    status: Literal["converged", "not_converged", "below_range", "above_range"]
    message: str
    rel_tolerance: float
    max_steps: int
    tokens_used: int | None


class DecileNonSurvival(BaseModel):
    """Non-survival of both methods in one reference firing-rate decile.

    The bin is [low, high), the last one closed; rates are None for an empty bin.
    """

    model_config = ConfigDict(frozen=True)

    low: float
    high: float
    count: int
    non_survived_a: int
    non_survived_b: int
    rate_a: float | None
    rate_b: float | None


class OverlapResult(BaseModel):
    """How alike two compression methods damage the active features.

    Jaccard = |A & B| / |A | B|; it is None when both sets are empty (undefined, rather
    than a misleading 1.0). Correlations of the damage scores 1 - r are None when either
    side is constant or fewer than two features are active.
    """

    model_config = ConfigDict(frozen=True)

    label_a: str
    label_b: str
    survival_threshold: float
    damage_threshold: float
    n_active: int
    n_not_survived_a: int
    n_not_survived_b: int
    n_not_survived_both: int
    n_not_survived_either: int
    jaccard_not_survived: float | None
    n_damaged_a: int
    n_damaged_b: int
    n_damaged_both: int
    n_damaged_either: int
    jaccard_damaged: float | None
    pearson_damage: float | None
    spearman_damage: float | None
    by_firing_rate_decile: list[DecileNonSurvival] | None


class NullCheck(_Frozen):
    """Reference vs reference: every active r must be 1 within ``tolerance``."""

    condition: str
    max_abs_deviation: float | None
    n_damaged: int
    tolerance: float
    passed: bool


class SurvivalSpread(_Frozen):
    """Survival % per condition on several token sets, and their spread."""

    label: str
    tokens: list[int]
    survived_pct: dict[str, list[float | None]]
    spread: dict[str, float | None]  # max - min, percentage points


class GridCell(_Frozen):
    survival_threshold: float
    damage_threshold: float
    survived_pct: float | None
    damaged_pct: float | None


class ConfidenceInterval(_Frozen):
    low: float | None
    high: float | None
    level: float
    n_resamples: int


class StabilityReport(_Frozen):
    null: NullCheck | None
    budget: SurvivalSpread
    subsets: SurvivalSpread
    threshold_grid: dict[str, list[GridCell]]
    bootstrap: dict[str, ConfidenceInterval]
    second_layer: AuditResult | None = None


class SaePruningRow(BaseModel):
    """The pruned SAE at one fraction, measured on one condition's model."""

    model_config = ConfigDict(frozen=True)

    fraction: float
    n_features_kept: int
    condition: str  # "reference" for the unmodified model
    explained_variance: float | None
    mse: float
    mean_l0: float
    spliced_loss: float
    loss_recovered: float | None


class SaePruningSweep(BaseModel):
    """Transfer quality of the pruned SAE per (fraction, condition); fraction 0 first."""

    model_config = ConfigDict(frozen=True)

    method: str
    hook_name: str
    rows: list[SaePruningRow]

    def row(self, fraction: float, condition: str = "reference") -> SaePruningRow:
        for row in self.rows:
            if math.isclose(row.fraction, fraction, abs_tol=1e-12) and row.condition == condition:
                return row
        raise KeyError(f"no row for fraction={fraction!r}, condition={condition!r}")


class BlockSensitivity(_Frozen):
    """One transformer block quantized alone at the focus width, the rest reference.

    ``above_readout``: the block comes after the read-out hook, so it cannot change the
    features; only its perplexity is measured (survival and mean r are None).
    """

    block: int
    condition: str
    above_readout: bool
    survived_pct: float | None
    mean_correlation: float | None
    ppl_chunked_change: float | None


class SensitivityPlan(_Frozen):
    """Greedy mixed precision: every block at ``focus_bits`` but ``raised_blocks`` at
    ``raised_bits``; ``survived_pct`` and ``ppl_chunked_change`` are measured on that
    condition (``predicted_survived_pct``: what the greedy search expected)."""

    condition: str
    focus_bits: int
    raised_bits: int
    raised_blocks: list[int]
    target_survived_pct: float
    max_raised: int | None
    predicted_survived_pct: float | None
    n_audits: int  # passes that audited a plan (0: no block raised, the focus condition)
    survived_pct: float | None
    mean_correlation: float | None
    ppl_chunked_change: float | None
    focus_survived_pct: float | None  # every block at focus_bits (the focus condition)
    focus_ppl_chunked_change: float | None
    target_met: bool


class SensitivityResult(_Frozen):
    """Which blocks to keep at higher precision (ProtocolConfig.sensitivity)."""

    focus_condition: str
    focus_bits: int
    hook_name: str
    last_feature_block: int  # the last block that can change the features at the hook
    blocks: list[BlockSensitivity]
    plan: SensitivityPlan
