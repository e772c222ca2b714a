"""Typed results of the retrained-SAE baseline (docs/retrained-sae.md): the three-way table
of arXiv 2507.15977 and which reference features are lost or only moved. Pydantic only."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr

#: The three columns: the frozen reference SAE (transfer), the SAE retrained on the
#: condition's activations, and the reference SAE pruned without retraining to the
#: retrained SAE's live width.
COLUMNS = ("transfer", "retrained", "pruned")
BANDS = ("survived", "degraded", "damaged")


class ThreeWayRow(BaseModel):
    """One SAE measured on the condition's model, on the evaluation tokens."""

    model_config = ConfigDict(frozen=True)

    sae: Literal["transfer", "retrained", "pruned"]
    n_features: int
    explained_variance: float | None
    mean_l0: float
    clean_loss: float
    spliced_loss: float
    spliced_loss_change: float  # spliced - clean, nats/token
    loss_recovered: float | None
    dead_latents: int  # features that fire on none of the evaluation tokens


class BandSplit(BaseModel):
    """Lost or moved among the reference-active features of one band."""

    model_config = ConfigDict(frozen=True)

    band: Literal["survived", "degraded", "damaged"]
    count: int
    moved: int
    lost: int


class FeatureMatch(BaseModel):
    """A reference feature, its match in the retrained SAE, and the verdict."""

    model_config = ConfigDict(frozen=True)

    feature: int
    band: Literal["survived", "degraded", "damaged"]
    frozen_correlation: float  # the audit's r under the frozen SAE
    match: int  # the retrained SAE's feature
    decoder_cosine: float
    activation_correlation: float  # reference SAE on reference vs match on the condition
    moved: bool


class RetrainResult(BaseModel):
    """The retrained-SAE baseline of one condition (docs/retrained-sae.md).

    ``features`` holds every reference-active feature; ``lost`` lists the non-surviving
    ones without a match (lowest decoder cosine first).
    """

    model_config = ConfigDict(frozen=True)

    condition: str
    hook_name: str
    init: Literal["reference", "random"]
    seed: int
    budget_tokens: int
    trained_tokens: int  # whole training batches the trainer consumed
    train_rows: int
    epochs: float  # trained tokens / tokens in the training rows
    eval_tokens: int
    batch_size: int
    lr: float
    matching: Literal["hungarian", "greedy"]
    min_cosine: float
    min_correlation: float
    table: list[ThreeWayRow]
    bands: list[BandSplit]
    features: list[FeatureMatch]
    lost: list[int]
    elapsed_seconds: float
    _sae: object = PrivateAttr(default=None)

    @property
    def sae(self):
        """The retrained sae_lens SAE (inference class of the reference's architecture;
        not part of the JSON)."""
        return self._sae

    def column(self, name: str) -> ThreeWayRow:
        return next(row for row in self.table if row.sae == name)

    @property
    def moved_count(self) -> int:
        return sum(split.moved for split in self.bands if split.band != "survived")

    @property
    def lost_count(self) -> int:
        return sum(split.lost for split in self.bands if split.band != "survived")
