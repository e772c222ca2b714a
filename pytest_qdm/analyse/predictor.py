"""Fragility predictor: can reference statistics alone tell which features survive?

A logistic regression on four inputs from each feature's reference statistics: rarity,
log mean, log max and log concentration (docs/definitions.md, "Reference statistics and
fragility predictor", has the formulas and floors). The inputs are collinear by
construction (log concentration = log max - log mean), so only the cross-validated AUC is
interpretable, not the coefficients; the variance inflation factors in the result show it.
Standardization is fitted inside each fold (a scikit-learn Pipeline).
"""

from __future__ import annotations

import numpy as np

from pytest_qdm.schema.analyses import PredictorResult, QuartileSurvival

INPUT_NAMES = ("rarity", "log_mean", "log_max", "log_concentration")
FLOOR = 1e-8


def _vector(name: str, values, dtype=float) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    if dtype is float:
        if array.dtype == bool or not np.issubdtype(array.dtype, np.number):
            raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
        array = array.astype(np.float64)
        if not np.isfinite(array).all():
            raise ValueError(f"{name} holds {int((~np.isfinite(array)).sum())} non-finite values")
    return array


def predictor_inputs(firing_rate, mean_activation, max_activation) -> np.ndarray:
    """The [n, 4] input matrix, columns in :data:`INPUT_NAMES` order (see module doc)."""
    p = _vector("firing_rate", firing_rate)
    mean = np.maximum(_vector("mean_activation", mean_activation), FLOOR)
    peak = np.maximum(_vector("max_activation", max_activation), FLOOR)
    if not (len(p) == len(mean) == len(peak)):
        raise ValueError(
            f"inputs must have equal lengths, got firing_rate {len(p)}, "
            f"mean_activation {len(mean)}, max_activation {len(peak)}"
        )
    rarity = -np.log(np.maximum(p, FLOOR))
    concentration = np.log(np.maximum(peak / mean, 1.0))
    return np.column_stack([rarity, np.log(mean), np.log(peak), concentration])


def quantile_bins(values: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    """np.quantile edges (n_bins + 1) and the bin index of each value.

    Bins are [edges[k], edges[k+1]), the last closed; ties at an edge go up.
    """
    edges = np.quantile(values, np.linspace(0.0, 1.0, n_bins + 1))
    return edges, np.searchsorted(edges[1:-1], values, side="right")


def _quartiles(x: np.ndarray, y: np.ndarray) -> list[QuartileSurvival]:
    out = []
    for j, name in enumerate(INPUT_NAMES):
        edges, index = quantile_bins(x[:, j], 4)
        counts = np.bincount(index, minlength=4)
        hits = np.bincount(index, weights=y, minlength=4)
        out.append(
            QuartileSurvival(
                input=name,
                edges=[float(e) for e in edges],
                counts=[int(c) for c in counts],
                survival_rate=[
                    float(h / c) if c else None for h, c in zip(hits, counts, strict=True)
                ],
            )
        )
    return out


def variance_inflation(x: np.ndarray) -> dict[str, float | None]:
    """VIF of each column of ``x`` (ordinary least squares on the other columns)."""
    from sklearn.linear_model import LinearRegression

    vif: dict[str, float | None] = {}
    for j, name in enumerate(INPUT_NAMES[: x.shape[1]]):
        target = x[:, j]
        others = np.delete(x, j, axis=1)
        total = float(((target - target.mean()) ** 2).sum())
        if len(target) < 2 or total <= 0:
            vif[name] = None
            continue
        fitted = LinearRegression().fit(others, target).predict(others)
        unexplained = float(((target - fitted) ** 2).sum()) / total
        vif[name] = 1.0 / unexplained if unexplained >= 1e-9 else None
    return vif


def _pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("logistic", LogisticRegression(C=1.0))])


def _labels(survived, n_features: int) -> np.ndarray:
    """``survived`` checked (1-D, boolean or 0/1, one per feature) as int64 labels."""
    labels = np.asarray(survived)
    if labels.ndim != 1 or len(labels) != n_features:
        raise ValueError(
            f"survived must be 1-D with one entry per feature ({n_features}), "
            f"got shape {labels.shape}"
        )
    if labels.dtype != bool and not np.isin(labels, (0, 1)).all():
        raise ValueError("survived must be boolean or 0/1")
    return labels.astype(np.int64)


def _collinearity_note(vif: dict[str, float | None]) -> str:
    """A sentence warning that the coefficients are not separable, where a VIF is over 10."""
    values = list(vif.values())
    if not any(v is None or v > 10 for v in values):
        return ""
    shown = ", ".join("inf" if v is None else f"{v:.3g}" for v in values)
    return f" Inputs are collinear (VIF {shown}): do not read coefficients one by one."


def fit_survival_predictor(
    firing_rate,
    mean_activation,
    max_activation,
    survived,
    *,
    n_splits: int = 5,
    seed: int = 0,
) -> PredictorResult:
    """Cross-validated logistic regression of survival on the four reference inputs.

    Pass the active features only (one entry per feature). ``survived`` is boolean (or
    0/1). Pipeline(StandardScaler, LogisticRegression(C=1)) scored by ROC AUC over
    StratifiedKFold(n_splits, shuffle=True, random_state=seed); coefficients come from
    refitting the pipeline on all data. Deterministic for fixed inputs.
    """
    if isinstance(n_splits, bool) or not isinstance(n_splits, int) or n_splits < 2:
        raise ValueError(f"n_splits must be an integer >= 2, got {n_splits!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    x = predictor_inputs(firing_rate, mean_activation, max_activation)
    y = _labels(survived, len(x))
    n, n_pos = len(y), int(y.sum())
    base = {
        "inputs": list(INPUT_NAMES),
        "n_features": n,
        "n_survived": n_pos,
        "n_splits": n_splits,
        "seed": seed,
        "quartiles": _quartiles(x, y.astype(float)) if n else [],
        "vif": variance_inflation(x),
    }
    collinear = _collinearity_note(base["vif"])
    if n_pos in (0, n):
        return PredictorResult(
            status="one_class",
            message=f"{n_pos} of {n} features survived: one class, nothing to predict." + collinear,
            auc_mean=None,
            auc_std=None,
            fold_aucs=None,
            coefficients=None,
            intercept=None,
            **base,
        )
    model = _pipeline().fit(x, y)
    logistic = model.named_steps["logistic"]
    fitted = {
        "coefficients": {k: float(c) for k, c in zip(INPUT_NAMES, logistic.coef_[0], strict=True)},
        "intercept": float(logistic.intercept_[0]),
    }
    smallest = min(n_pos, n - n_pos)
    if smallest < n_splits:
        return PredictorResult(
            status="too_few",
            message=(
                f"the smaller class has {smallest} features, fewer than n_splits={n_splits}: "
                "no cross-validated AUC (coefficients are from one fit on all data)." + collinear
            ),
            auc_mean=None,
            auc_std=None,
            fold_aucs=None,
            **fitted,
            **base,
        )
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    aucs = cross_val_score(_pipeline(), x, y, cv=folds, scoring="roc_auc")
    return PredictorResult(
        status="ok",
        message=(
            f"AUC {aucs.mean():.3f} +/- {aucs.std():.3f} over {n_splits} folds "
            f"({n_pos} of {n} survived)." + collinear
        ),
        auc_mean=float(aucs.mean()),
        auc_std=float(aucs.std()),
        fold_aucs=[float(a) for a in aucs],
        **fitted,
        **base,
    )
