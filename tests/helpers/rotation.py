"""A test-only condition: the model's read-out rotated by a known orthogonal matrix."""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from pytest_qdm.compress.conditions import Condition


def uniform_rotation(d: int, cosine: float, seed: int = 0) -> torch.Tensor:
    """An orthogonal Q [d, d] (d even) that turns EVERY vector by the same angle:
    cos(v, v @ Q) == ``cosine`` for all v (a rotation by that angle in each of d/2
    orthogonal planes of a random basis)."""
    generator = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
    angle = math.acos(cosine)
    turn = torch.tensor([[math.cos(angle), math.sin(angle)], [-math.sin(angle), math.cos(angle)]])
    blocks = torch.block_diag(*[turn.double()] * (d // 2))
    return basis @ blocks @ basis.T


@dataclass(frozen=True, eq=False)
class RotatedReadout(Condition):
    """The reference weights, with the activation at ``hook`` multiplied by ``rotation``
    (x -> x @ Q) in every forward this condition runs."""

    hook: str = ""
    rotation: torch.Tensor = field(default=None, repr=False)
    name: str = "rotated"

    def compressed_weights(self, model, layers=None):
        return {}

    @contextmanager
    def running(self, model, weights):
        def rotate(activation, hook):  # noqa: ARG001 (TransformerLens hook signature)
            return activation @ self.rotation.to(activation.device, activation.dtype)

        with model.hooks(fwd_hooks=[(self.hook, rotate)]):
            yield model
