"""A compressed checkpoint read as an audit candidate: its model, what its format says about
it (:class:`~pytest_qdm.schema.audit.CheckpointSpec`) and its default name."""

from __future__ import annotations

from typing import Any

from pytest_qdm.load.checkpoints import candidate_name
from pytest_qdm.load.models import load_candidate
from pytest_qdm.schema.audit import CheckpointSpec


def read_candidate(
    path_or_name: str, path: str | None = None, **load_kwargs: Any
) -> tuple[Any, CheckpointSpec, str]:
    """(model, checkpoint spec, ``candidate:<folder>`` name) of a local folder, a ``.gguf``
    file or a Hub name; ``path`` and ``load_kwargs`` as :func:`load_candidate`."""
    model, info, chosen = load_candidate(path_or_name, path=path, **load_kwargs)
    checkpoint = CheckpointSpec(
        location=str(path_or_name),
        quant_method=info.quant_method,
        scheme=info.scheme,
        path=chosen,
        activations_quantized=info.activations_quantized,
    )
    return model, checkpoint, candidate_name(path_or_name)
