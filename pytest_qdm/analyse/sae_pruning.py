"""SAE pruning without retraining: drop the least important features, measure what is lost.

A feature's importance comes from an audit's reference statistics (over ALL tokens,
:class:`pytest_qdm.schema.audit.ReferenceResult`) and the decoder W_dec [d_sae, d_in]:

- ``"decoder_norm_x_mean"``: ||W_dec[i]||_2 * mean_t f_i(t), the average size of feature i's
  contribution to the reconstruction.
- ``"wanda"``: Wanda-style weight x activation score of the decoder, whose inputs are the
  features: sum_j |W_dec[i, j]| * rms_activation[i] = ||W_dec[i]||_1 * ||f_i||_2 / sqrt(T).

Pruning removes the ``round(fraction * d_sae)`` lowest-scoring features (ties: lower index goes
first) and returns a new SAE of the same class holding only the kept features, in their
original order. For SAEs whose features activate independently (ReLU, JumpReLU, gated) the
pruned SAE's activations equal the original's kept columns; a TopK SAE re-selects its top k
among the kept features. The user's SAE and model are never modified.
"""

from __future__ import annotations

import copy
import dataclasses
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from numbers import Real

import numpy as np
import torch

from pytest_qdm.analyse.transfer import sae_transfers
from pytest_qdm.compress.conditions import Candidate, Condition
from pytest_qdm.progress import progress_bar
from pytest_qdm.schema.analyses import SaePruningRow, SaePruningSweep
from pytest_qdm.schema.audit import AuditResult, ReferenceResult
from pytest_qdm.settings import SAE_PRUNE_METHODS as METHODS
from pytest_qdm.settings import AuditConfig
from pytest_qdm.stream.hooks import resolve_hook

#: Metadata key of a pruned SAE: the original feature ids of its features, in order.
KEPT_FEATURES_KEY = "kept_features"
_ROW_FIELDS = {"explained_variance", "mse", "mean_l0", "spliced_loss", "loss_recovered"}


def _reference(reference) -> ReferenceResult:
    if isinstance(reference, AuditResult):
        return reference.reference
    if not isinstance(reference, ReferenceResult):
        raise TypeError(
            "reference must be a pytest_qdm ReferenceResult (audit(...).reference) or an "
            f"AuditResult, got {type(reference).__name__}"
        )
    return reference


def _check_fraction(fraction, sae) -> int:
    """Number of features ``fraction`` removes, after checking it leaves a usable SAE."""
    d_sae = int(sae.cfg.d_sae)
    if isinstance(fraction, bool) or not isinstance(fraction, Real):
        raise TypeError(f"fraction must be a number in [0, 1), got {fraction!r}")
    if not 0 <= float(fraction) < 1:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    n_keep = d_sae - round(float(fraction) * d_sae)
    if n_keep < 1:
        raise ValueError(
            f"fraction={fraction!r} removes all {d_sae} features; at least one must be kept"
        )
    k = getattr(sae.cfg, "k", None)
    if isinstance(k, Real) and n_keep < k:
        raise ValueError(
            f"fraction={fraction!r} keeps {n_keep} features, fewer than the TopK SAE's "
            f"k={k}; keep at least k features"
        )
    return d_sae - n_keep


def check_prune_fractions(sae, fractions: Sequence[float]) -> None:
    """Raise TypeError/ValueError unless every fraction leaves a usable SAE (run this before
    long work whose end is a pruning sweep)."""
    if isinstance(fractions, (Real, str)):
        raise TypeError(f"fractions must be a sequence of numbers, got {fractions!r}")
    for fraction in fractions:
        _check_fraction(fraction, sae)


def feature_importance(sae, reference, method: str = "decoder_norm_x_mean") -> np.ndarray:
    """Importance of every feature, float64 [d_sae] (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown importance method {method!r}; expected one of {METHODS}")
    reference = _reference(reference)
    d_sae = int(sae.cfg.d_sae)
    n_ref = len(reference.mean_activation)
    if n_ref != d_sae:
        raise ValueError(
            f"reference statistics cover {n_ref} features, but the SAE has d_sae={d_sae}; "
            "pass the reference of an audit of this SAE"
        )
    w_dec = sae.W_dec.detach().to(device="cpu", dtype=torch.float64).numpy()
    if method == "decoder_norm_x_mean":
        scores = np.linalg.norm(w_dec, axis=1) * np.asarray(reference.mean_activation, float)
    else:
        if reference.rms_activation is None:
            raise ValueError(
                "method 'wanda' needs reference.rms_activation, which this result lacks "
                "(recorded by newer audits); rerun the audit or use 'decoder_norm_x_mean'"
            )
        scores = np.abs(w_dec).sum(axis=1) * np.asarray(reference.rms_activation, float)
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise ValueError(f"importance is not finite for features {bad[:5].tolist()}")
    return scores


def kept_features(
    sae, fraction: float, reference, method: str = "decoder_norm_x_mean"
) -> np.ndarray:
    """Sorted ids of the features that pruning ``fraction`` of them by importance keeps."""
    scores = feature_importance(sae, reference, method)
    n_remove = _check_fraction(fraction, sae)
    order = np.argsort(scores, kind="stable")  # ascending score, ties by ascending index
    return np.sort(order[n_remove:])


def _feature_axes(old: tuple, new: tuple, d_sae: int, n_keep: int) -> list[int] | None:
    """The axes where a d_sae-wide tensor became n_keep-wide (None: another change)."""
    if len(old) != len(new):
        return None
    axes = [d for d in range(len(old)) if old[d] != new[d]]
    return None if any((old[d], new[d]) != (d_sae, n_keep) for d in axes) else axes


def select_features(sae, features):
    """A new SAE of the same class with only ``features`` (original ids, in the given order).

    Every tensor with a d_sae axis (W_enc, b_enc, W_dec, JumpReLU threshold, gating
    parameters, ...) is sliced along it; the rest is copied. Config, metadata, device and
    dtype are kept; the result is in eval mode, and ``cfg.metadata.kept_features`` lists its
    features' ids in the original, never-pruned SAE.
    """
    d_sae = int(sae.cfg.d_sae)
    ids = np.asarray(features)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"features must be a 1-d array of integer ids, got {features!r}")
    if ids.size == 0 or ids.min() < 0 or ids.max() >= d_sae or np.unique(ids).size < ids.size:
        raise ValueError(f"features must be distinct ids in [0, {d_sae}), got {features!r}")
    n_keep = int(ids.size)
    try:
        config = dataclasses.replace(copy.deepcopy(sae.cfg), d_sae=n_keep, device="meta")
        with warnings.catch_warnings():  # the user has seen sae_lens' load-time warnings
            warnings.simplefilter("ignore", UserWarning)
            pruned = type(sae)(config)  # on the meta device: no memory, no RNG draw
    except (TypeError, ValueError) as error:  # e.g. Matryoshka widths that no longer fit
        raise ValueError(
            f"cannot rebuild the {type(sae).__name__} with d_sae={n_keep}: {error}"
        ) from error
    original = sae.state_dict()
    state = {}
    for name, like in pruned.state_dict().items():
        tensor = original[name].detach()
        axes = _feature_axes(tuple(tensor.shape), tuple(like.shape), d_sae, n_keep)
        if axes is None:
            raise ValueError(
                f"cannot prune {type(sae).__name__}.{name}: shape {tuple(tensor.shape)} "
                f"is {tuple(like.shape)} at d_sae={n_keep}, not a d_sae axis sliced"
            )
        index = torch.as_tensor(ids, dtype=torch.long, device=tensor.device)
        for dim in axes:
            tensor = tensor.index_select(dim, index)
        state[name] = tensor if axes else tensor.clone()
    pruned.load_state_dict(state, assign=True)
    pruned.cfg.device, pruned.device = sae.cfg.device, sae.device
    pruned.cfg.dtype, pruned.dtype = sae.cfg.dtype, sae.dtype
    pruned._use_error_term = getattr(sae, "_use_error_term", False)
    ancestry = sae.cfg.metadata.get(KEPT_FEATURES_KEY)
    kept = ids.tolist() if ancestry is None else [ancestry[i] for i in ids.tolist()]
    pruned.cfg.metadata[KEPT_FEATURES_KEY] = kept
    return pruned.eval()


def prune_sae(sae, fraction: float, reference, method: str = "decoder_norm_x_mean"):
    """A new SAE without the ``round(fraction * d_sae)`` least important features."""
    return select_features(sae, kept_features(sae, fraction, reference, method))


def _check_conditions(model, conditions: Sequence[Condition]) -> None:
    names = ["reference"]
    for condition in conditions:
        if not isinstance(condition, Condition):
            raise TypeError(
                f"conditions must be qdm.RTN/MagnitudePrune/Candidate, got {condition!r}"
            )
        names.append(condition.name)
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"condition names must be unique and not 'reference' (the unmodified model is "
            f"always measured), got duplicates {duplicates}"
        )
    for condition in conditions:
        if isinstance(condition, Candidate):
            condition.check_compatible(model)


def sae_pruning_sweep(
    model,
    sae,
    tokens,
    reference,
    fractions: Sequence[float] = (0.1, 0.25, 0.5),
    conditions: Sequence[Condition] = (),
    method: str = "decoder_norm_x_mean",
    hook: str | None = None,
    batch_size: int = 8,
    progress: bool = True,
) -> SaePruningSweep:
    """Prune the SAE at each fraction (and 0) and measure it on the reference model and on
    each condition with :func:`pytest_qdm.analyse.transfer.sae_transfers` (one clean forward per
    batch and condition serves every fraction). Everything is validated
    before the first forward pass; the model and SAE are left bit-identical."""
    tokens = getattr(tokens, "tokens", tokens)  # a TokenSet or a LongTensor [n, ctx]
    hook = resolve_hook(model, sae, AuditConfig(hook_name=hook))
    check_prune_fractions(sae, fractions)
    fractions = list(dict.fromkeys([0.0, *fractions]))  # 0 first, once
    conditions = list(conditions)
    _check_conditions(model, conditions)
    saes = [(f, select_features(sae, kept_features(sae, f, reference, method))) for f in fractions]
    found: dict[tuple[float, str], SaePruningRow] = {}
    total = len(saes) * (1 + len(conditions))
    with progress_bar("SAE pruning sweep", total, progress) as advance:
        for condition in [None, *conditions]:
            name = "reference" if condition is None else condition.name
            if condition is None:
                running = nullcontext(model)
            else:
                running = condition.running(model, condition.compressed_weights(model))
            with running as run:
                qualities = sae_transfers(run, [p for _, p in saes], tokens, hook, batch_size)
            for (fraction, pruned), quality in zip(saes, qualities, strict=True):
                found[fraction, name] = SaePruningRow(
                    fraction=float(fraction),
                    n_features_kept=int(pruned.cfg.d_sae),
                    condition=name,
                    **quality.model_dump(include=_ROW_FIELDS),
                )
            advance(len(saes))
    names = ["reference", *(c.name for c in conditions)]
    rows = [found[f, n] for f in fractions for n in names]
    return SaePruningSweep(method=method, hook_name=hook, rows=rows)
