"""Behavioural agreement with the reference, from the perplexity forwards (no extra pass).

Per scored position t (the positions perplexity scores), with p = softmax(reference logits)
and q = softmax(compressed logits), both in float64 (docs/definitions.md, "Behaviour"):

- ``kl``: KL(p || q) = sum_v p_v (log p_v - log q_v), nats, mean over positions;
- ``kl_reverse``: KL(q || p), nats;
- ``top1_agreement``: the share of positions where argmax p == argmax q (1 - flip rate);
- ``topk_token_overlap``: |top-k(p) ∩ top-k(q)| / k, mean (k = :data:`TOP_K`);
- ``top_prob_change``: q - p at the reference's top token, mean.

The reference's pass keeps its logits (float32, as its forward returned them) batch by batch
(:class:`ReferenceLogits`; spilled to a temporary folder above :data:`IN_MEMORY_BYTES`);
each condition's pass compares its logits with them, chunked over positions so that at
most :data:`CHUNK` positions x vocab are held in float64 at once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from pytest_qdm.schema.behaviour import BehaviourResult

TOP_K = 10
CHUNK = 256  # positions per float64 step
IN_MEMORY_BYTES = 1 << 30
METRICS = ("kl", "kl_reverse", "top1_agreement", "topk_token_overlap", "top_prob_change")


class ReferenceLogits:
    """The reference forward's logits [b, pos, vocab] per batch, in the order they came."""

    def __init__(self, in_memory_bytes: int = IN_MEMORY_BYTES) -> None:
        self._batches: list[tuple[torch.Tensor, torch.Tensor | Path, tuple[int, ...]]] = []
        self._room = in_memory_bytes
        self._folder: tempfile.TemporaryDirectory | None = None

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, tokens: torch.Tensor, logits: torch.Tensor) -> None:
        logits = logits.detach().to(device="cpu", dtype=torch.float32)
        kept: torch.Tensor | Path = logits.clone()
        if logits.numel() * 4 > self._room:  # beyond the memory share: a raw file
            if self._folder is None:
                self._folder = tempfile.TemporaryDirectory(prefix="qdm-logits-")
            kept = Path(self._folder.name) / f"batch{len(self._batches)}.f32"
            logits.numpy().tofile(kept)
        else:
            self._room -= logits.numel() * 4
        self._batches.append((tokens.detach().cpu().clone(), kept, tuple(logits.shape)))

    def get(self, index: int, tokens: torch.Tensor) -> torch.Tensor:
        """The logits of batch ``index``; ValueError if its tokens differ from ``tokens``."""
        if index >= len(self._batches):
            raise ValueError(f"batch {index} was not seen by the reference's pass")
        kept_tokens, kept, shape = self._batches[index]
        if not torch.equal(kept_tokens, tokens.detach().cpu()):
            raise ValueError(f"batch {index} holds other tokens than the reference's pass")
        if isinstance(kept, Path):
            return torch.from_numpy(np.fromfile(kept, dtype=np.float32).reshape(shape))
        return kept

    def close(self) -> None:
        self._batches.clear()
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None


def position_metrics(reference: torch.Tensor, compressed: torch.Tensor, top_k: int = TOP_K):
    """Per-position metrics (float64 [n] each, in :data:`METRICS` order) of logits [n, vocab],
    :data:`CHUNK` positions at a time."""
    parts = []
    for start in range(0, reference.shape[0], CHUNK):
        log_p = torch.log_softmax(reference[start : start + CHUNK].double(), dim=-1)
        log_q = torch.log_softmax(compressed[start : start + CHUNK].to(log_p).double(), dim=-1)
        p, q = log_p.exp(), log_q.exp()
        kl = (p * (log_p - log_q)).sum(-1)
        kl_reverse = (q * (log_q - log_p)).sum(-1)
        top_p, top_q = log_p.argmax(-1), log_q.argmax(-1)
        k = min(top_k, log_p.shape[-1])
        ids_p, ids_q = log_p.topk(k, dim=-1).indices, log_q.topk(k, dim=-1).indices
        overlap = (ids_p[:, :, None] == ids_q[:, None, :]).any(-1).sum(-1).double() / k
        at_top = (q - p).gather(-1, top_p[:, None]).squeeze(-1)
        parts.append(torch.stack([kl, kl_reverse, (top_p == top_q).double(), overlap, at_top]))
    return torch.cat(parts, dim=1).cpu()


class BehaviourSums:
    """A perplexity observer: records the reference's logits (``record=True``) or sums,
    per row, the metrics of a condition's logits against them."""

    def __init__(self, reference: ReferenceLogits, *, record: bool, top_k: int = TOP_K) -> None:
        self.reference, self.record, self.top_k = reference, record, top_k
        self._seen = 0
        self._rows: list[torch.Tensor] = []  # [b, metrics] sums per row
        self._positions: list[torch.Tensor] = []  # [b] positions per row

    def fwd_hooks(self) -> list:
        return []

    def observe(self, batch: torch.Tensor, nll: torch.Tensor) -> None:
        pass

    def observe_logits(self, batch: torch.Tensor, logits: torch.Tensor) -> None:
        """``logits`` [b, pos, vocab] of the scored positions of ``batch``."""
        index, self._seen = self._seen, self._seen + 1
        if self.record:
            self.reference.add(batch, logits)
            return
        reference = self.reference.get(index, batch).to(logits.device)
        b, pos, vocab = logits.shape
        metrics = position_metrics(reference.reshape(-1, vocab), logits.reshape(-1, vocab))
        self._rows.append(metrics.reshape(len(METRICS), b, pos).sum(-1).T)
        self._positions.append(torch.full((b,), pos, dtype=torch.float64))

    def sum_over_ranks(self) -> None:
        from pytest_qdm.stream.distributed import gathered

        if self.record:
            return
        parts = gathered(lambda: (self._rows, self._positions), "cpu")
        self._rows = [r for rows, _ in parts for r in rows]
        self._positions = [p for _, positions in parts for p in positions]

    def result(self, confidence: float = 0.95, seed: int = 0) -> BehaviourResult:
        """Means over positions, each with a bootstrap interval over rows."""
        rows = torch.cat(self._rows).numpy()
        positions = torch.cat(self._positions).numpy()
        means = rows.sum(0) / positions.sum()
        return BehaviourResult(
            **dict(zip(METRICS, map(float, means), strict=True)),
            kl_ci=_row_interval(rows[:, 0], positions, confidence, seed),
            top1_ci=_row_interval(rows[:, 2], positions, confidence, seed),
            top_k=self.top_k,
            n_positions=int(positions.sum()),
            confidence=confidence,
        )


def _row_interval(sums: np.ndarray, positions: np.ndarray, confidence: float, seed: int):
    """Percentile bootstrap (scipy) of a position-weighted mean, rows resampled; None
    for fewer than two rows."""
    from scipy.stats import bootstrap

    if sums.shape[0] < 2:
        return None
    found = bootstrap(
        (sums, positions),
        lambda total, count, axis=-1: total.sum(axis) / count.sum(axis),
        paired=True,
        vectorized=True,
        confidence_level=confidence,
        n_resamples=999,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(found.confidence_interval.low), float(found.confidence_interval.high)


class Observers:
    """Several perplexity observers on the same forwards."""

    def __init__(self, *observers) -> None:
        self.observers = [o for o in observers if o is not None]

    def fwd_hooks(self) -> list:
        return [hook for o in self.observers for hook in o.fwd_hooks()]

    def observe(self, batch: torch.Tensor, nll: torch.Tensor) -> None:
        for o in self.observers:
            o.observe(batch, nll)

    def observe_logits(self, batch: torch.Tensor, logits: torch.Tensor) -> None:
        for o in self.observers:
            if hasattr(o, "observe_logits"):
                o.observe_logits(batch, logits)

    def sum_over_ranks(self) -> None:
        for o in self.observers:
            o.sum_over_ranks()


def joined(*observers):
    """One observer for the non-None ``observers`` (None when there is none)."""
    present = [o for o in observers if o is not None]
    return None if not present else present[0] if len(present) == 1 else Observers(*present)


def behaviour_fields(result: BehaviourResult | None) -> dict[str, object]:
    """The SweepRow fields of ``result`` (none for a condition measured without it)."""
    if result is None:
        return {}
    return result.model_dump(include={*METRICS, "kl_ci", "top1_ci"})


def behaviour_findings(rows, cfg) -> list:
    """``behaviour_masks_damage`` for each row whose mean KL and top-1 agreement stay within
    ``cfg.masks_kl_bound`` / ``cfg.masks_top1_bound`` while survival is below
    ``cfg.masks_survival_bound`` (docs/definitions.md, "Behaviour masks damage")."""
    from pytest_qdm.schema.protocol import BEHAVIOUR_MASKS, Finding

    findings = []
    for row in rows:
        if row.kind == "NoiseFloor" or None in (row.kl, row.top1_agreement, row.survived_pct):
            continue
        held = row.kl <= cfg.masks_kl_bound and row.top1_agreement >= cfg.masks_top1_bound
        if held and row.survived_pct < 100 * cfg.masks_survival_bound:
            message = (
                f"{row.condition}: next-token KL {row.kl:.3g} nats and top-1 agreement "
                f"{row.top1_agreement:.1%} stay within {cfg.masks_kl_bound:g} / "
                f"{cfg.masks_top1_bound:.0%} while only {row.survived_pct:.1f}% of active SAE "
                "features survived: behaviour masks feature damage."
            )
            findings.append(Finding(kind=BEHAVIOUR_MASKS, condition=row.condition, message=message))
    return findings
