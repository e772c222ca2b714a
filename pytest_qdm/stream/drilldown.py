"""Per-feature drill-down: each feature's top contexts, streamed in the one pass and mergeable.

For every feature the engine keeps the k contexts where the reference fires most and, per
condition, the k where the compressed model fires most now. A context is a window of
tokens around the peak (``WINDOW_BEFORE`` before, ``WINDOW_AFTER`` after, clipped to its
sequence) with both models' activations of that feature on every token of the window.

Everything comes from the sparse entries the engine already has (no dense [tokens x d_sae]
matrix, no second pass): per batch, the entries that beat a buffer's current k-th value
are ranked, their windows gathered, and only the features they touch are re-sorted.
Memory is O(d_sae x k x window) per buffer, whatever the token count. Ties keep the earlier
context, so shards merged in token order equal one pass over their concatenation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import torch

from pytest_qdm.schema.drilldown import Context, FeatureDrilldown
from pytest_qdm.stream.stats import Entries

WINDOW_BEFORE = 8  # tokens kept before a context's peak
WINDOW_AFTER = 4  # and after it
PAD = -1  # token id (and row) of a window position outside the sequence
TOKENS, REFERENCE, COMPRESSED = "tokens", "reference", "compressed"
NEURONPEDIA = "https://neuronpedia.org"


@dataclass(frozen=True)
class Labels:
    """How the drill-down names things: token strings and the SAE's Neuronpedia id."""

    decode: Callable[[list[int]], list[str]] | None = None
    neuronpedia_id: str | None = None

    @classmethod
    def of(cls, model, sae) -> Labels:
        """From ``model.tokenizer`` (may be None) and ``sae.cfg.metadata.neuronpedia_id``."""
        tokenizer = getattr(model, "tokenizer", None)
        metadata = getattr(getattr(sae, "cfg", None), "metadata", None)
        decode = None
        if tokenizer is not None:
            one = lru_cache(maxsize=None)(lambda i: tokenizer.decode([i]))
            decode = lambda ids: [one(i) for i in ids]  # noqa: E731
        return cls(decode, getattr(metadata, "neuronpedia_id", None))


NO_LABELS = Labels()


@dataclass
class Candidates:
    """Contexts that may enter a buffer: feature, peak value and windows, one row each."""

    features: torch.Tensor  # [m] int64
    values: torch.Tensor  # [m] float32
    windows: dict[str, torch.Tensor]  # name -> [m, window]


@dataclass
class TopContexts:
    """Per feature, the k contexts with the largest peak activation, best first.

    ``windows`` holds the token ids (``"tokens"``) and each side's activations on them,
    [d_sae, k, window]; an empty slot has value -inf.
    """

    values: torch.Tensor  # [d_sae, k] float32
    windows: dict[str, torch.Tensor]

    @classmethod
    def empty(cls, d_sae: int, k: int, names: Sequence[str], device) -> TopContexts:
        width = WINDOW_BEFORE + 1 + WINDOW_AFTER
        values = torch.full((d_sae, k), -torch.inf, device=device)
        windows = {TOKENS: torch.full((d_sae, k, width), PAD, dtype=torch.long, device=device)}
        windows |= {n: torch.zeros(d_sae, k, width, device=device) for n in names}
        return cls(values, windows)

    @property
    def threshold(self) -> torch.Tensor:
        """[d_sae]: the value a new context must exceed to enter (the k-th kept)."""
        return self.values[:, -1]

    def add(self, new: Candidates) -> None:
        """Insert ``new`` in place; among equal values the kept ones stay first."""
        if new.features.numel() == 0:
            return
        k = self.values.shape[1]
        order = new.values.argsort(descending=True, stable=True)
        order = order[new.features[order].argsort(stable=True)]
        features, slots = _ranks(new.features[order])
        order, features, slots = order[slots < k], features[slots < k], slots[slots < k]
        touched, row = torch.unique(features, return_inverse=True)
        values = torch.full((len(touched), k), -torch.inf, device=self.values.device)
        values[row, slots] = new.values[order]
        values = torch.cat([self.values[touched], values], dim=1)
        best = values.argsort(dim=1, descending=True, stable=True)[:, :k]
        self.values[touched] = values.gather(1, best)
        for name, window in self.windows.items():
            incoming = torch.full_like(window[touched], PAD if name == TOKENS else 0)
            incoming[row, slots] = new.windows[name][order]
            merged = torch.cat([window[touched], incoming], dim=1)
            window[touched] = merged.gather(1, best[..., None].expand(-1, -1, merged.shape[2]))

    def merge(self, other: TopContexts) -> TopContexts:
        merged = TopContexts(self.values.clone(), {n: w.clone() for n, w in self.windows.items()})
        features, slots = torch.nonzero(other.values > -torch.inf, as_tuple=True)
        windows = {n: w[features, slots] for n, w in other.windows.items()}
        merged.add(Candidates(features, other.values[features, slots], windows))
        return merged


def _ranks(sorted_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(features, rank of each within its feature) of a feature-sorted id list."""
    if sorted_features.numel() == 0:
        return sorted_features, sorted_features
    counts = torch.bincount(sorted_features)
    starts = counts.cumsum(0) - counts
    position = torch.arange(len(sorted_features), device=sorted_features.device)
    return sorted_features, position - starts[sorted_features]


class _Lookup:
    """Values of a batch's sparse entries in windows of consecutive rows; 0 where there is none."""

    def __init__(self, entries: Entries, n_rows: int):
        # Feature-major order (rows ascending within a feature): a window's entries are
        # consecutive, so one binary search per window finds them all.
        order = entries.cols.argsort(stable=True)
        self.n_rows = n_rows
        self.keys = entries.cols[order] * n_rows + entries.rows[order]
        self.values = entries.values[order].float()

    def at(self, rows: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """[m, window] activations of ``features`` [m] at ``rows`` [m, window] (PAD: 0):
        each window's rows run consecutively from column 0, peak at ``WINDOW_BEFORE``."""
        out = torch.zeros(rows.shape, device=rows.device)
        if self.keys.numel() == 0 or rows.shape[0] == 0:
            return out
        width, last = rows.shape[1], len(self.keys) - 1
        first = rows[:, WINDOW_BEFORE] - WINDOW_BEFORE  # the row of column 0 (may be < 0)
        base = features * self.n_rows + first
        start = torch.searchsorted(self.keys, base - first.clamp(max=0))
        end = base + (first + width - 1).clamp(max=self.n_rows - 1) - first
        for step in range(width):  # a feature has at most ``width`` entries in the window
            index = start + step
            inside = index.clamp(max=last)
            key = self.keys[inside]
            hit = (key <= end) & (index <= last)
            column = (key - base).clamp_(0, width - 1).unsqueeze(1)
            values = torch.where(hit, self.values[inside], 0.0)
            out.scatter_add_(1, column, values.unsqueeze(1))
        return torch.where(rows != PAD, out, 0.0)


def _top_entries(entries: Entries, k: int, threshold: torch.Tensor):
    """(features, rows, values) of the entries that can enter a buffer: positive, above the
    feature's threshold, and among the feature's k largest here (earlier rows first)."""
    values = entries.values.float()
    keep = (values > 0) & (values > threshold[entries.cols])
    features, rows, values = entries.cols[keep], entries.rows[keep], values[keep]
    order = values.argsort(descending=True, stable=True)
    order = order[features[order].argsort(stable=True)]
    _, rank = _ranks(features[order])
    order = order[rank < k]
    return features[order], rows[order], values[order]


@dataclass
class DrilldownState:
    """Mergeable top contexts of every feature: the reference's (with each condition's
    activations on the same windows) and each condition's own."""

    reference: TopContexts  # windows: tokens, "reference" and one per condition
    compressed: dict[str, TopContexts] = field(default_factory=dict)  # tokens, both sides

    @classmethod
    def empty(cls, d_sae: int, k: int, conditions: Sequence[str], device) -> DrilldownState:
        return cls(
            TopContexts.empty(d_sae, k, [REFERENCE, *conditions], device),
            {n: TopContexts.empty(d_sae, k, [REFERENCE, COMPRESSED], device) for n in conditions},
        )

    def merge(self, other: DrilldownState | None) -> DrilldownState:
        if other is None:
            return self
        return DrilldownState(
            self.reference.merge(other.reference),
            {n: top.merge(other.compressed[n]) for n, top in self.compressed.items()},
        )

    def batch(self, tokens: torch.Tensor, x: Entries) -> BatchDrilldown:
        return BatchDrilldown(self, tokens, x)

    def result(
        self, condition: str, features: Sequence[tuple[int, float]], labels: Labels = NO_LABELS
    ) -> list[FeatureDrilldown]:
        """The drill-down of ``features`` ((id, r) pairs) under ``condition``."""
        own, decode, page = self.compressed[condition], labels.decode, labels.neuronpedia_id
        out = []
        for feature, r in features:
            url = f"{NEURONPEDIA}/{page}/{feature}" if page else None
            out.append(
                FeatureDrilldown(
                    feature=feature,
                    correlation=r,
                    url=url,
                    reference_top=_contexts(self.reference, feature, condition, decode),
                    compressed_top=_contexts(own, feature, COMPRESSED, decode),
                )
            )
        return out


def _contexts(top: TopContexts, feature: int, compressed: str, decode) -> list[Context]:
    values = top.values[feature].cpu()
    tokens = top.windows[TOKENS][feature].cpu().numpy()
    reference = top.windows[REFERENCE][feature].cpu().numpy()
    other = top.windows[compressed][feature].cpu().numpy()
    contexts = []
    for slot in np.flatnonzero(np.isfinite(values.numpy())):
        inside = tokens[slot] != PAD
        ids = tokens[slot][inside].tolist()
        contexts.append(
            Context(
                token_ids=ids,
                tokens=decode(ids) if decode else None,
                peak=int(WINDOW_BEFORE - (~inside[:WINDOW_BEFORE]).sum()),
                reference=reference[slot][inside].tolist(),
                compressed=other[slot][inside].tolist(),
            )
        )
    return contexts


class BatchDrilldown:
    """One batch's contribution: the reference side at construction, then one call of
    :meth:`add_condition` per condition, then :meth:`finish`."""

    def __init__(self, state: DrilldownState, tokens: torch.Tensor, x: Entries):
        self.state, self.context = state, tokens.shape[1]
        self.flat_tokens = tokens.reshape(-1)
        self.d_sae = state.reference.values.shape[0]
        self.x = _Lookup(x, self.flat_tokens.numel())
        k = state.reference.values.shape[1]
        features, rows, values = _top_entries(x, k, state.reference.threshold)
        self.rows = self._window_rows(rows)
        self.reference = Candidates(features, values, self._windows(self.rows, features, self.x))

    def add_condition(self, name: str, y: Entries) -> None:
        """Add condition ``name``'s batch entries ``y`` (row-major, batch rows)."""
        y_lookup = _Lookup(y, self.flat_tokens.numel())
        self.reference.windows[name] = y_lookup.at(self.rows, self.reference.features)
        own = self.state.compressed[name]
        features, rows, values = _top_entries(y, own.values.shape[1], own.threshold)
        rows = self._window_rows(rows)
        windows = self._windows(rows, features, self.x)
        windows[COMPRESSED] = y_lookup.at(rows, features)
        own.add(Candidates(features, values, windows))

    def finish(self) -> None:
        self.state.reference.add(self.reference)

    def _window_rows(self, peaks: torch.Tensor) -> torch.Tensor:
        """[m, window] batch rows around each peak row; PAD outside the peak's sequence."""
        offsets = torch.arange(-WINDOW_BEFORE, WINDOW_AFTER + 1, device=peaks.device)
        position = (peaks % self.context)[:, None] + offsets
        inside = (position >= 0) & (position < self.context)
        return torch.where(inside, peaks[:, None] + offsets, PAD)

    def _windows(self, rows: torch.Tensor, features: torch.Tensor, x: _Lookup) -> dict:
        tokens = torch.where(rows != PAD, self.flat_tokens[rows.clamp(min=0)], PAD)
        return {TOKENS: tokens, REFERENCE: x.at(rows, features)}
