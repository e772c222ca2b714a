"""Compressed weights swapped into a model by parameter name, and restored bit for bit."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    pass


@contextmanager
def applied(
    model: torch.nn.Module,
    weights: Mapping[str, torch.Tensor] | Iterable[Mapping[str, torch.Tensor]],
    park: torch.device | None = None,
) -> Iterator[None]:
    """Swap ``weights`` into ``model`` by parameter name; restore the originals on exit.

    ``weights`` is one dict, or dicts in parts (e.g. block by block, each computed only
    when it is swapped in; a name already swapped in by an earlier part is skipped). The
    original tensors are kept, not copied, so restoring is bit-exact, also when the body
    raises. With ``park`` (a device), each replaced tensor waits there as a copy instead, so
    the model's own device holds about one set of weights, and comes back bit for bit.
    """
    params = dict(model.named_parameters())
    parts = [weights] if isinstance(weights, Mapping) else weights
    originals: dict[str, torch.Tensor] = {}
    try:
        for part in parts:
            unknown = sorted(set(part) - set(params))
            if unknown:
                raise ValueError(f"no parameters named {unknown[:3]} in the model")
            for name, tensor in part.items():
                if name in originals:
                    continue
                param = params[name]
                if tensor.shape != param.shape:
                    raise ValueError(
                        f"weight {name!r} has shape {tuple(tensor.shape)}, "
                        f"expected {tuple(param.shape)}"
                    )
                original = param.data
                originals[name] = original if park is None else original.to(park, copy=True)
                param.data = tensor.to(device=original.device, dtype=original.dtype)
                del original
        yield
    finally:
        for name, original in originals.items():
            device = params[name].data.device
            params[name].data = original if park is None else original.to(device)
