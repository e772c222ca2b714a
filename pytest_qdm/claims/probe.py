"""``probe``: a logistic-regression probe on mean-pooled SAE activations, fitted on the
reference model's activations of the training split, frozen, reads the labels of the
held-out split on each compressed model.

Features of a text = its SAE codes averaged over its tokens. The split is scikit-learn's
stratified ``train_test_split(test_fraction, seed)``; the probe is ``LogisticRegression``
(scikit-learn's defaults: L2, C = 1). Holds if the held-out accuracy (or AUROC, two classes) on the
compressed model >= ``min_score``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import model_validator

from pytest_qdm.claims.base import (
    Claim,
    ClaimContext,
    bootstrap_ci,
    clearly_above,
    judged,
    no_reference_effect,
    ratio,
    verdict,
)
from pytest_qdm.claims.detects import auroc_u
from pytest_qdm.schema.claims import ClaimResult


class Probe(Claim):
    kind: ClassVar[str] = "probe"
    classes: dict[str, list[str]]
    metric: Literal["accuracy", "auroc"] = "accuracy"
    min_score: float
    test_fraction: float = 0.3
    seed: int = 0

    @model_validator(mode="after")
    def _two_classes(self):
        if len(self.classes) < 2:
            raise ValueError(
                f"a probe needs at least two classes, got {sorted(self.classes)}; add texts "
                "of another label under classes"
            )
        if self.metric == "auroc" and len(self.classes) != 2:
            raise ValueError("metric = 'auroc' needs exactly two classes; use 'accuracy'")
        return self

    def text_sets(self) -> dict[str, list[str]]:
        return {f"classes.{label}": texts for label, texts in self.classes.items()}

    def labelled(self) -> tuple[list[str], np.ndarray]:
        texts = [t for group in self.classes.values() for t in group]
        labels = np.concatenate([np.full(len(g), i) for i, g in enumerate(self.classes.values())])
        return texts, labels

    def split(self) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the training and held-out texts (stratified, seeded)."""
        from sklearn.model_selection import train_test_split

        texts, labels = self.labelled()
        return train_test_split(
            np.arange(len(texts)),
            test_size=self.test_fraction,
            random_state=self.seed,
            stratify=labels,
        )

    def measure(self, ctx: ClaimContext, model) -> np.ndarray:
        """Mean-pooled SAE codes of every text [n_texts, d_sae]."""
        from pytest_qdm.claims.activations import text_codes

        texts, _ = self.labelled()
        return np.stack([text_codes(ctx, model, t).mean(0).numpy() for t in texts])

    def fitted(self, reference: np.ndarray):
        """The probe, fitted on the reference's training split (deterministic)."""
        from sklearn.linear_model import LogisticRegression

        train, _ = self.split()
        _, labels = self.labelled()
        return LogisticRegression(max_iter=2000).fit(reference[train], labels[train])

    def judge(self, ctx, reference, compressed, condition) -> ClaimResult:
        probe, (_, test) = self.fitted(reference), self.split()
        labels = self.labelled()[1][test]
        metric = self.metric_on(labels)
        ref_scores, scores = (self.scores(probe, x[test]) for x in (reference, compressed))
        ref_value, effect = float(metric.value(ref_scores)), float(metric.value(scores))
        ref_ci = bootstrap_ci(metric.resampled(ref_scores), metric.sizes, self.resamples)
        common = dict(
            effect=effect,
            ratio=ratio(effect, ref_value),
            gated=self.metric,
            bound=f">= {self.min_score:g}",
            detail={"chance": metric.chance, "held_out": len(test)},
        )
        if not clearly_above(ref_ci, metric.chance):
            what = f"held-out {self.metric}"
            return no_reference_effect(
                self, condition, ref_value, ref_ci, metric.chance, what, **common
            )
        ci = bootstrap_ci(metric.resampled(scores), metric.sizes, self.resamples)
        outcome = verdict(
            self, condition=condition, value=effect, ci=ci, bound=self.min_score,
            at_least=True, gated=self.metric,
        )  # fmt: skip
        return judged(self, condition, ref_value, ref_ci, outcome, ci=ci, **common)

    def scores(self, probe, features: np.ndarray) -> np.ndarray:
        """Predicted labels (accuracy) or positive-class probabilities (AUROC)."""
        if self.metric == "accuracy":
            return probe.predict(features)
        return probe.predict_proba(features)[:, 1]

    def metric_on(self, labels: np.ndarray) -> _HeldOut:
        return _HeldOut(self.metric, labels)


@dataclass
class _HeldOut:
    """The probe's metric on the held-out labels: its value, chance level, and the
    vectorized statistic for the bootstrap (accuracy: texts resampled; AUROC: each class
    resampled on its own)."""

    metric: str
    labels: np.ndarray

    @property
    def chance(self) -> float:
        if self.metric == "auroc":
            return 0.5
        return float(np.bincount(self.labels).max() / len(self.labels))

    @property
    def sizes(self) -> tuple[int, ...]:
        if self.metric == "auroc":
            return (int((self.labels == 1).sum()), int((self.labels == 0).sum()))
        return (len(self.labels),)

    def value(self, scores: np.ndarray) -> float:
        from sklearn.metrics import accuracy_score, roc_auc_score

        if self.metric == "accuracy":
            return accuracy_score(self.labels, scores)
        return roc_auc_score(self.labels, scores)

    def resampled(self, scores: np.ndarray):
        if self.metric == "accuracy":
            hits = (scores == self.labels).astype(float)
            return lambda i: hits[i].mean(-1)
        positive, negative = scores[self.labels == 1], scores[self.labels == 0]
        return lambda p, n: auroc_u(positive[p], negative[n])
