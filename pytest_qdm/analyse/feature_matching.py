"""Lost or moved: match each reference feature to a retrained SAE's features.

A reference feature i is matched to one feature j of the retrained SAE by decoder cosine
similarity cos(W_dec_ref[i], W_dec_new[j]): ``"hungarian"`` solves the one-to-one
assignment that maximises the summed cosine (scipy.optimize.linear_sum_assignment);
``"greedy"`` takes each feature's own best j (two features may share one). The pair's
activation correlation r is Pearson's r, over the same tokens, between feature i of the
reference SAE on the reference model and feature j of the retrained SAE on the compressed
model. A feature is *moved* when cos >= ``min_cosine`` and r >= ``min_correlation`` (the
compressed model still represents it; the frozen encoder misreads it), else *lost*.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from pytest_qdm.schema.retrain import BANDS, BandSplit, FeatureMatch

MATCHINGS = ("hungarian", "greedy")
MOVED_COSINE = 0.9
MOVED_CORRELATION = 0.9


def decoder_cosines(reference: np.ndarray, retrained: np.ndarray) -> np.ndarray:
    """Cosine similarity of every reference decoder row with every retrained one
    [n_reference, n_retrained] (a zero row has cosine 0 with everything)."""

    def unit(rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.float64)
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)

    return unit(reference) @ unit(retrained).T


def match_features(cosines: np.ndarray, method: str = "hungarian") -> np.ndarray:
    """The retrained feature matched to each reference row of ``cosines`` (see module doc)."""
    if method not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}, got {method!r}")
    if method == "greedy":
        return cosines.argmax(axis=1)
    if cosines.shape[0] > cosines.shape[1]:
        raise ValueError(
            f"a one-to-one (hungarian) matching needs at least as many retrained features "
            f"({cosines.shape[1]}) as reference features ({cosines.shape[0]}); use 'greedy'"
        )
    rows, cols = linear_sum_assignment(cosines, maximize=True)
    match = np.empty(cosines.shape[0], dtype=np.int64)
    match[rows] = cols
    return match


def band_names(correlation: np.ndarray, survival: float, damage: float) -> np.ndarray:
    """Each feature's band by its frozen-SAE r (docs/definitions.md, "Bands")."""
    return np.where(
        correlation > survival, "survived", np.where(correlation < damage, "damaged", "degraded")
    )


def lost_or_moved(
    features: np.ndarray,
    frozen_correlation: np.ndarray,
    match: np.ndarray,
    cosine: np.ndarray,
    activation_r: np.ndarray,
    thresholds: tuple[float, float],
    min_cosine: float = MOVED_COSINE,
    min_correlation: float = MOVED_CORRELATION,
) -> tuple[list[FeatureMatch], list[BandSplit], list[int]]:
    """Per-feature verdicts, the split per band, and the lost non-surviving features
    (lowest cosine first). All arrays are aligned with ``features`` (reference ids);
    ``thresholds`` is (survival, damage)."""
    bands = band_names(frozen_correlation, *thresholds)
    r = np.nan_to_num(activation_r, nan=0.0)
    moved = (cosine >= min_cosine) & (r >= min_correlation)
    matches = [
        FeatureMatch(
            feature=int(f),
            band=str(b),
            frozen_correlation=float(c),
            match=int(j),
            decoder_cosine=float(cos),
            activation_correlation=float(rr),
            moved=bool(m),
        )
        for f, b, c, j, cos, rr, m in zip(
            features, bands, frozen_correlation, match, cosine, r, moved, strict=True
        )
    ]
    splits = [
        BandSplit(
            band=band,
            count=int((bands == band).sum()),
            moved=int(((bands == band) & moved).sum()),
            lost=int(((bands == band) & ~moved).sum()),
        )
        for band in BANDS
    ]
    failing = np.flatnonzero((bands != "survived") & ~moved)
    lost = [int(features[i]) for i in failing[np.argsort(cosine[failing], kind="stable")]]
    return matches, splits, lost
