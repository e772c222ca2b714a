"""The drill-down of a condition's most damaged features: their top contexts, both sides."""

from __future__ import annotations

from pytest_qdm.schema.base import _Frozen


class Context(_Frozen):
    """A window of tokens around one peak, with the feature's activation in each model."""

    token_ids: list[int]
    tokens: list[str] | None  # each id decoded alone; None when the model has no tokenizer
    peak: int  # index in the window of the token this context was chosen for
    reference: list[float]  # the reference's activation of the feature, per token
    compressed: list[float]  # the compressed model's, on the same tokens


class FeatureDrilldown(_Frozen):
    """One damaged feature: where the reference fired most and where the compressed fires now."""

    feature: int
    correlation: float  # r of this feature under the condition
    url: str | None = None  # its Neuronpedia page, when the SAE has a Neuronpedia id
    reference_top: list[Context]  # the reference's top contexts (compressed on the same tokens)
    compressed_top: list[Context]  # the compressed model's top contexts
