"""The noise floor: changes that are not compression, audited as ordinary conditions.

Each :class:`NoiseFloor` runs the reference's own weights another way, so whatever it
moves (bands, r, KL) is what the audit sees without any compression
(docs/definitions.md, "Noise floor"):

- ``bfloat16`` / ``float16``: the whole reference model cast to that dtype (weights and
  arithmetic), as a model deployed in half precision runs;
- ``batch``: every forward runs a batch of twice the rows (the batch, then itself again),
  and the first half is read: other kernel shapes, same tokens;
- ``attention``: the other attention implementation (eager vs sdpa) of a Hugging Face
  model run through a TransformerBridge (a HookedTransformer has one);
- ``backend``: the same checkpoint loaded with the other backend (hooked vs bridge),
  given as ``model``.
"""

from __future__ import annotations

import copy
import inspect
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from pytest_qdm.compress.conditions import Condition
from pytest_qdm.compress.targets import is_bridge
from pytest_qdm.schema.audit import ConditionSpec

CHANGES = ("bfloat16", "float16", "batch", "attention", "backend")
FLOOR_PREFIX = "floor-"


@dataclass(frozen=True, eq=False)
class NoiseFloor(Condition):
    """The reference run another way (one of :data:`CHANGES`); changes no weight."""

    change: str
    model: Any = field(default=None, repr=False)  # "backend": the other backend's model
    _copies: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.change not in CHANGES:
            raise ValueError(f"NoiseFloor change must be one of {CHANGES}, got {self.change!r}")
        if (self.change == "backend") != (self.model is not None):
            raise ValueError(
                "NoiseFloor('backend', model=...) takes the reference loaded with the other "
                "backend (load_model(..., backend='bridge' or 'hooked')); other changes take "
                "no model"
            )

    @property
    def name(self) -> str:
        return FLOOR_PREFIX + self.change

    def compressed_weights(self, model, layers=None):
        return {}

    def describe(self) -> ConditionSpec:
        return ConditionSpec(kind="NoiseFloor", name=self.name)

    @contextmanager
    def running(self, model, weights):
        if self.change in ("bfloat16", "float16"):
            yield self._cast(model, getattr(torch, self.change))
        elif self.change == "batch":
            yield DoubledBatch(model)
        elif self.change == "attention":
            with other_attention(model):
                yield model
        else:
            yield self.model

    def _cast(self, model, dtype: torch.dtype):
        """A copy of ``model`` in ``dtype``, made once per reference model."""
        key = id(model)
        if key not in self._copies:
            cast = copy.deepcopy(model)
            quiet = "print_details" in inspect.signature(cast.to).parameters  # TransformerLens
            cast = cast.to(dtype, print_details=False) if quiet else cast.to(dtype)
            if hasattr(cast, "cfg"):
                cast.cfg.dtype = dtype
            self._copies.clear()  # one reference per audit: keep one copy
            self._copies[key] = cast
        return self._copies[key]


def noise_floor(model, other_backend=None) -> list[NoiseFloor]:
    """The noise-floor conditions that apply to ``model``: both half-precision dtypes (those
    that differ from the model's own), another batch size, the other attention
    implementation where the model has one, the other backend when ``other_backend`` (the
    same checkpoint loaded with it) is given."""
    own = getattr(getattr(model, "cfg", None), "dtype", None)
    floors = [NoiseFloor(d) for d in ("bfloat16", "float16") if getattr(torch, d) != own]
    floors.append(NoiseFloor("batch"))
    if attention_implementation(model) is not None:
        floors.append(NoiseFloor("attention"))
    if other_backend is not None:
        floors.append(NoiseFloor("backend", model=other_backend))
    return floors


def attention_implementation(model) -> str | None:
    """``eager`` or ``sdpa`` for a bridged Hugging Face model; None where there is no choice."""
    if not is_bridge(model):
        return None
    found = getattr(model.original_model.config, "_attn_implementation", None)
    return found if found in ("eager", "sdpa") else None


@contextmanager
def other_attention(model):
    """``model`` (a bridge) running the other attention implementation; restored on exit."""
    own = attention_implementation(model)
    if own is None:
        raise ValueError("NoiseFloor('attention') needs a bridged model with eager or sdpa")
    hf = model.original_model
    hf.set_attn_implementation("sdpa" if own == "eager" else "eager")
    try:
        yield model
    finally:
        hf.set_attn_implementation(own)


class DoubledBatch:
    """``model`` as the forwards see it, but each batch runs twice as tall (itself twice)
    and every hook and output sees the first half."""

    def __init__(self, model) -> None:
        self._model = model

    def __getattr__(self, name: str):
        return getattr(self._model, name)

    def __call__(self, batch: torch.Tensor, *args, **kwargs):
        return self._first_half(self._model(torch.cat([batch, batch]), *args, **kwargs), batch)

    def run_with_hooks(self, batch: torch.Tensor, *args, fwd_hooks=(), **kwargs):
        n = batch.shape[0]
        hooks = [(name, _on_first_half(hook, n)) for name, hook in fwd_hooks]
        out = self._model.run_with_hooks(
            torch.cat([batch, batch]), *args, fwd_hooks=hooks, **kwargs
        )
        return self._first_half(out, batch)

    @staticmethod
    def _first_half(out, batch: torch.Tensor):
        if isinstance(out, torch.Tensor) and out.ndim and out.shape[0] == 2 * batch.shape[0]:
            return out[: batch.shape[0]]
        return out


def _on_first_half(inner, n: int):
    def first_half(activation, hook):
        result = inner(activation[:n], hook=hook)
        if result is None:
            return None
        return torch.cat([result, activation[n:]])

    return first_half
