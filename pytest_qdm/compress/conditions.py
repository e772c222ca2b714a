"""The conditions an audit compares with the reference: RTN, magnitude pruning, the null
condition and a user's compressed checkpoint (:class:`Candidate`), each a map of compressed
weights (:meth:`Condition.compressed_weights`) swapped in for its forward passes
(:func:`pytest_qdm.compress.swap.applied`). Which weights: :mod:`pytest_qdm.compress.targets`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from pytest_qdm.compress.operators import (
    RTN_AXES,
    check_bits,
    prune_smallest,
    rtn_reference_axes,
    rtn_rows,
)
from pytest_qdm.compress.swap import applied
from pytest_qdm.compress.targets import architecture_of, is_bridge, target_weights
from pytest_qdm.schema.audit import CheckpointSpec, ConditionSpec

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


class Condition:
    """One compressed version of the model, identified by a stable ``name``."""

    name: str

    def compressed_weights(
        self, model: HookedTransformer, layers: Iterable[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """New tensors for the parameters this condition changes (model untouched)."""
        raise NotImplementedError

    def describe(self) -> ConditionSpec:
        """Typed parameters of this condition, for reports and fingerprints."""
        return ConditionSpec(kind=type(self).__name__, name=self.name)

    @contextmanager
    def running(self, model: HookedTransformer, weights: dict[str, torch.Tensor]):
        """The model this condition's forward passes run on, for the body of the ``with``:
        ``model`` with ``weights`` (from :meth:`compressed_weights`) swapped in and restored
        on exit. A candidate on the forward path yields its own model instead."""
        with applied(model, weights):
            yield model


@dataclass(frozen=True)
class RTN(Condition):
    """Round-to-nearest quantization per output channel (or per group of ``group_size``).

    ``axes="reference"`` reproduces the reference study's code, which shared one scale
    across attention heads for W_Q/W_K/W_V (named ``rtn-intB-refcode``); the default
    ``"channel"`` is the contract: per-row RTN of every Hugging Face ``nn.Linear``.
    """

    bits: int
    group_size: int | None = None
    axes: str = "channel"

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.group_size is not None and (
            not isinstance(self.group_size, int) or self.group_size < 1
        ):
            raise ValueError(f"group_size must be a positive integer, got {self.group_size!r}")
        if self.axes not in RTN_AXES:
            raise ValueError(f"axes must be one of {RTN_AXES}, got {self.axes!r}")
        if self.axes == "reference" and self.group_size is not None:
            raise ValueError("axes='reference' is per channel; it takes no group_size")

    @property
    def name(self) -> str:
        suffix = "" if self.group_size is None else f"-g{self.group_size}"
        if self.axes == "reference":
            suffix = "-refcode"
        return f"rtn-int{self.bits}{suffix}"

    def compressed_weights(self, model, layers=None):
        if self.axes == "reference":
            if is_bridge(model):
                raise ValueError(
                    f"{self.name} reproduces a scale shared across TransformerLens' attention "
                    "heads [heads, d_model, d_head], which a TransformerBridge (Hugging Face "
                    f"[out, in] weights) does not have; use rtn-int{self.bits} (per row)"
                )
            return {
                name: rtn_reference_axes(target, self.bits)
                for name, target in target_weights(model, layers).items()
            }
        return {
            name: target.from_rows(rtn_rows(target.to_rows(), self.bits, self.group_size))
            for name, target in target_weights(model, layers).items()
        }

    def describe(self):
        update = {"bits": self.bits, "group_size": self.group_size}
        if self.axes != "channel":
            update["axes"] = self.axes
        return super().describe().model_copy(update=update)


@dataclass(frozen=True)
class MagnitudePrune(Condition):
    """Unstructured magnitude pruning, per tensor, at ``sparsity`` in [0, 1)."""

    sparsity: float

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, bool) or not 0 <= float(self.sparsity) < 1:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity!r}")

    @property
    def name(self) -> str:
        return f"prune-{self.sparsity:.4g}"

    def compressed_weights(self, model, layers=None):
        return {
            name: target.per_matrix(lambda w: prune_smallest(w, self.sparsity))
            for name, target in target_weights(model, layers).items()
        }

    def describe(self):
        return super().describe().model_copy(update={"sparsity": float(self.sparsity)})


@dataclass(frozen=True)
class Reference(Condition):
    """The null condition: the reference weights themselves (every active r must be 1)."""

    name: str = "reference"

    def compressed_weights(self, model, layers=None):
        return {}


@dataclass(frozen=True, eq=False)
class Candidate(Condition):
    """A compressed model the user already has, with the reference's architecture.

    On the ``dequantize`` path ``model`` is a HookedTransformer whose parameters replace the
    reference's (names and shapes must match: :meth:`check_compatible`, before any forward
    pass). On the ``forward`` path ``model`` is a TransformerLens ``TransformerBridge``
    around the deployed quantized model: the audit runs it in place of the reference and
    reads the same hook names from it. ``checkpoint`` records the format it was loaded from
    and the path (:meth:`from_pretrained`).
    """

    model: Any = field(repr=False)
    name: str = "candidate"
    checkpoint: CheckpointSpec | None = None

    @classmethod
    def from_pretrained(
        cls,
        path_or_name: str,
        name: str | None = None,
        path: str | None = None,
        **load_kwargs,
    ):
        """Load a checkpoint as a candidate: a local folder, a ``.gguf`` file or a Hub name,
        dense or quantized (bitsandbytes, torchao, compressed-tensors, GGUF, HQQ). ``path``:
        ``"dequantize"`` (the format's own library dequantizes the weights), ``"forward"``
        (the deployed quantized forward, read through a TransformerBridge) or None, the
        scheme's own: forward where the deployed kernel quantizes activations
        (:mod:`pytest_qdm.load.checkpoints`). Named ``candidate:<folder>`` unless ``name``
        is given."""
        from pytest_qdm.load.candidate import read_candidate

        model, checkpoint, default_name = read_candidate(path_or_name, path=path, **load_kwargs)
        return cls(model=model, name=name or default_name, checkpoint=checkpoint)

    @property
    def forward(self) -> bool:
        """Whether the audit runs this candidate's own forward (the forward path, or llama.cpp's
        on the served path)."""
        return self.checkpoint is not None and self.checkpoint.path in ("forward", "served")

    def describe(self):
        return super().describe().model_copy(update={"checkpoint": self.checkpoint})

    def check_compatible(self, reference: HookedTransformer, hook: str | None = None) -> None:
        """ValueError (one line) unless this is a compressed copy of ``reference``; on the
        forward path also unless its model has ``hook`` (the read-out, when given)."""
        for key, what in (
            ("original_architecture", "architecture"),
            ("n_layers", "layer count"),
            ("d_model", "width d_model"),
            ("d_vocab", "vocabulary size"),
        ):
            a, b = (
                architecture_of(m) if key == "original_architecture" else getattr(m.cfg, key, None)
                for m in (reference, self.model)
            )
            if a != b:
                raise ValueError(
                    f"candidate {self.name!r} is not a compressed copy of the reference: "
                    f"{what} {b!r} vs the reference's {a!r}; audit a checkpoint of the same model"
                )
        if not self.forward and is_bridge(self.model) != is_bridge(reference):
            backends = ("a TransformerBridge", "a HookedTransformer")
            raise ValueError(
                f"candidate {self.name!r} is {backends[not is_bridge(self.model)]} but the "
                f"reference is {backends[not is_bridge(reference)]}; load both with the same "
                "backend (load_model(..., backend=...), Candidate.from_pretrained(..., "
                "backend=...))"
            )
        if self.forward:  # quantized modules: their parameters are not the reference's
            if hook is not None and hook not in self.model.hook_dict:
                raise ValueError(
                    f"candidate {self.name!r} (forward path): its TransformerBridge has no "
                    f"hook {hook!r}, the read-out; use --qdm-candidate-path dequantize "
                    "(path='dequantize')"
                )
            return
        ours = {n: tuple(p.shape) for n, p in self.model.named_parameters()}
        theirs = {n: tuple(p.shape) for n, p in reference.named_parameters()}
        if ours != theirs:
            missing = sorted(set(theirs) - set(ours))[:3]
            extra = sorted(set(ours) - set(theirs))[:3]
            shapes = [(n, theirs[n], ours[n]) for n in theirs if n in ours and theirs[n] != ours[n]]
            raise ValueError(
                f"candidate {self.name!r} does not match the reference architecture: "
                f"missing {missing}, unexpected {extra}, shape (name, reference, candidate) "
                f"mismatches {shapes[:3]}; audit a checkpoint of the same model"
            )

    def compressed_weights(self, model, layers=None):
        """Every candidate parameter (in ``layers`` for block parameters), not only the
        block linear weights: a user's checkpoint may differ anywhere. Nothing on the forward
        path, which runs its own model (:meth:`running`)."""
        self.check_compatible(model)
        if self.forward:
            return {}
        wanted = None if layers is None else set(layers)
        weights = {}
        for name, param in self.model.named_parameters():
            block = re.match(r"^blocks\.(\d+)\.", name)
            if block and wanted is not None and int(block.group(1)) not in wanted:
                continue
            weights[name] = param.data
        return weights

    @contextmanager
    def running(self, model, weights):
        if not self.forward:
            with super().running(model, weights) as swapped:
                yield swapped
            return
        yield self.model
