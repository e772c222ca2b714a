"""Compression operators and the context that applies and restores weights.

Only transformer-block linear weights are compressed (docs/definitions.md, "Compressed weights"):
attention W_Q, W_K, W_V, W_O (``_W_K``/``_W_V`` under grouped-query attention) and MLP
W_in, W_out, W_gate. Every operator works on the Hugging Face ``nn.Linear`` layout
[out, in]: TransformerLens tensors are viewed as rows of output channels, compressed row by
row, and viewed back, so per-channel RTN here equals per-row RTN of the HF checkpoint.

On a TransformerLens ``TransformerBridge`` (a Hugging Face model run as it is) the targets
are the decoder blocks' own Hugging Face weights under the bridge's parameter names: every
``nn.Linear`` in a block (attention and MLP projections; not embeddings, norms, lm_head or
an MoE router), GPT-2's ``Conv1D`` ([in, out], viewed transposed) and fused MoE expert
stacks ([experts, out, in], or [experts, in, out] where transformers marks them
transposed), each expert's matrix compressed as its own ``nn.Linear`` would be.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from pytest_qdm.schema.audit import CheckpointSpec, ConditionSpec

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

# Group 1 is the block index. A mixture-of-experts MLP (TransformerLens' MoE, e.g. Mixtral)
# holds each expert's W_in/W_gate/W_out as nn.Linear modules
# (blocks.N.mlp.experts.E.W_gate.weight, already [out, in]); its router,
# blocks.N.mlp.W_gate.weight, is not matched: deployed quantizers keep it in full precision.
_TARGET = re.compile(
    r"^blocks\.(\d+)\.(attn\.(W_Q|_?W_K|_?W_V|W_O)|mlp\.(W_in|W_out|W_gate)"
    r"|mlp\.experts\.\d+\.(W_in|W_out|W_gate)\.weight)$"
)


# Leaf module names of MoE routers / expert gates, kept in full precision as deployed
# quantizers keep them (an MLP's gate_proj is not one; "gate" is one only beside "experts").
_ROUTERS = ("router", "shared_expert_gate")

# Bridge -> ids of the modules its forward calls (see _live_modules).
_LIVE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def is_bridge(model: Any) -> bool:
    """Whether ``model`` is a TransformerLens ``TransformerBridge`` (a Hugging Face model
    with TransformerLens hook names), not a HookedTransformer."""
    return hasattr(model, "original_model") and hasattr(model, "adapter")


def architecture_of(model: Any) -> str | None:
    """The Hugging Face architecture (``LlamaForCausalLM``) a model was made from."""
    if is_bridge(model):
        return type(model.original_model).__name__
    return getattr(model.cfg, "original_architecture", None)


@dataclass(frozen=True)
class Target:
    """A weight that compression touches: its parameter, its layout and its block.

    ``kind`` says how the tensor maps to the Hugging Face ``nn.Linear`` layout [out, in]:
    TransformerLens' W_Q, W_K, W_V [heads, d_model, d_head], W_O [heads, d_head, d_model],
    W_in, W_gate, W_out [in, out]; "linear" [out, in]; GPT-2's "conv1d" [in, out]; fused MoE
    expert stacks "experts" [experts, out, in] and "experts_t" [experts, in, out].
    """

    param: torch.nn.Parameter
    kind: str
    block: int

    def to_rows(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        """``weight`` (default: the parameter's tensor), in this layout, viewed as [out, in]
        rows (each expert's rows one after another)."""
        return _to_rows(self.kind, self.param.data if weight is None else weight)

    def from_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_rows`: ``rows`` back in the parameter's layout."""
        return _from_rows(self.kind, rows, self.param)

    def per_matrix(self, operator) -> torch.Tensor:
        """``operator`` (a per-tensor operation: pruning, per-tensor INT8) applied to each
        [out, in] matrix of the parameter: each expert of a fused expert stack on its own, as
        if it were an nn.Linear; any other weight whole."""
        weight = self.param.data
        if self.kind in ("experts", "experts_t"):
            return torch.stack([operator(matrix) for matrix in weight]).contiguous()
        return operator(weight)


def target_weights(
    model: HookedTransformer, layers: Iterable[int] | None = None
) -> dict[str, Target]:
    """The block linear weights that compression touches, by parameter name.

    ``layers`` restricts the result to those block indices (None: every block).
    """
    if is_bridge(model):
        return _bridge_targets(model, layers)
    wanted = None if layers is None else set(layers)
    found = {}
    for name, param in model.named_parameters():
        match = _TARGET.match(name)
        if match and (wanted is None or int(match.group(1)) in wanted):
            kind = (match.group(3) or match.group(4) or "linear").lstrip("_")
            found[name] = Target(param, kind, int(match.group(1)))
    return found


def _bridge_targets(model: Any, layers: Iterable[int] | None) -> dict[str, Target]:
    """:func:`target_weights` of a TransformerBridge: each block's Hugging Face linear
    weights under the bridge's own parameter names (a bridge name does not say whether its
    tensor is an nn.Linear, a Conv1D or a stack of experts: the module does)."""
    from transformers.pytorch_utils import Conv1D

    names = {id(param): name for name, param in model.named_parameters()}
    live = _live_modules(model)
    wanted = None if layers is None else set(layers)
    found = {}
    for block, bridge_block in enumerate(model.blocks):
        if wanted is not None and block not in wanted:
            continue
        layer = getattr(bridge_block, "original_component", bridge_block)
        for path, module in layer.named_modules():
            if id(module) not in live or _is_router(layer, path):
                continue
            if isinstance(module, (torch.nn.Linear, Conv1D)):
                params = {"weight": ("conv1d" if isinstance(module, Conv1D) else "linear")}
            elif hasattr(module, "is_transposed"):  # transformers' fused MoE experts
                kind = "experts_t" if module.is_transposed else "experts"
                params = {n: kind for n, p in module.named_parameters(recurse=False) if p.ndim == 3}
            else:
                continue
            for attribute, kind in params.items():
                param = getattr(module, attribute, None)
                if isinstance(param, torch.nn.Parameter) and id(param) in names:
                    found[names[id(param)]] = Target(param, kind, block)
    return found


def _is_router(layer: torch.nn.Module, path: str) -> bool:
    """Whether the module at ``path`` in ``layer`` routes tokens to experts (a router, a
    shared expert's gate, or a "gate" beside an "experts" module)."""
    parts = [p for p in path.split(".") if p != "_original_component"]
    leaf = parts[-1] if parts else ""
    if leaf in _ROUTERS or leaf.endswith("_router"):
        return True
    if leaf == "gate":
        parent = layer.get_submodule(path.rsplit(".", 1)[0]) if "." in path else layer
        return hasattr(parent, "experts")
    return False


def _live_modules(model: Any) -> frozenset[int]:
    """Ids of the modules a forward of ``model`` calls. The bridge splits some fused
    weights into its own modules (GPT-2's c_attn into q, k, v; Phi-3's qkv_proj and
    gate_up_proj) and runs those: the fused originals it keeps are never called, and
    rounding them would change nothing. One two-token forward, once per model."""
    if model in _LIVE:
        return _LIVE[model]
    called: set[int] = set()
    handles = [
        module.register_forward_hook(lambda m, *_: called.add(id(m))) for module in model.modules()
    ]
    try:
        device = next(model.parameters()).device
        with torch.inference_mode():
            model(torch.zeros(1, 2, dtype=torch.long, device=device))
    finally:
        for handle in handles:
            handle.remove()
    _LIVE[model] = frozenset(called)
    return _LIVE[model]


def _to_rows(kind: str, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` of layout ``kind`` (:class:`Target`) viewed as [out, in] rows."""
    if kind in ("W_Q", "W_K", "W_V"):  # [heads, d_model, d_head] -> [heads*d_head, d_model]
        heads, d_model, d_head = weight.shape
        return weight.permute(0, 2, 1).reshape(heads * d_head, d_model)
    if kind == "W_O":  # [heads, d_head, d_model] -> [d_model, heads*d_head]
        return weight.reshape(-1, weight.shape[-1]).T
    if kind in ("W_in", "W_gate", "W_out"):  # [in, out] -> [out, in]
        return weight.T
    if kind == "linear":  # an nn.Linear weight (MoE experts): already [out, in]
        return weight
    if kind == "conv1d":  # GPT-2's Conv1D: [in, out]
        return weight.T
    if kind == "experts":  # [experts, out, in]: every expert's rows, one after another
        return weight.reshape(-1, weight.shape[-1])
    if kind == "experts_t":  # [experts, in, out]
        return weight.transpose(1, 2).reshape(-1, weight.shape[1])
    raise ValueError(f"{kind!r} is not a compressible weight layout")


def _from_rows(kind: str, rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_to_rows`: back to the layout ``kind`` of ``like``."""
    if kind in ("W_Q", "W_K", "W_V"):
        heads, d_model, d_head = like.shape
        return rows.reshape(heads, d_head, d_model).permute(0, 2, 1).contiguous()
    if kind == "W_O":
        return rows.T.reshape(like.shape).contiguous()
    if kind in ("linear", "experts"):
        return rows.reshape(like.shape).contiguous()
    if kind == "experts_t":
        experts, d_in, d_out = like.shape
        return rows.reshape(experts, d_out, d_in).transpose(1, 2).contiguous()
    return rows.T.contiguous()  # W_in, W_gate, W_out, conv1d


def rtn_rows(
    rows: torch.Tensor, bits: int, group_size: int | None = None, own_dtype: bool = False
) -> torch.Tensor:
    """Symmetric round-to-nearest of a [out, in] matrix, one scale per row (or per group).

    qmax = 2^(bits-1) - 1; scale = max|w| / qmax; w' = clamp(round(w / scale), -qmax, qmax)
    * scale, computed in float32 (``own_dtype``: in the input's dtype, as the reference
    study's code did) and returned in the input dtype. All-zero rows stay zero.
    """
    out_features, in_features = rows.shape
    group = in_features if group_size is None else group_size
    if in_features % group:
        raise ValueError(
            f"group_size={group_size} does not divide the input width {in_features}; "
            "choose a divisor of every compressed weight's input width"
        )
    qmax = 2 ** (bits - 1) - 1
    work = rows if own_dtype else rows.float()
    grouped = work.reshape(out_features, in_features // group, group)
    scale = grouped.abs().amax(dim=-1, keepdim=True) / qmax
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    quantized = torch.clamp(torch.round(grouped / safe), -qmax, qmax) * scale
    return quantized.reshape(out_features, in_features).to(rows.dtype)


def prune_smallest(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Zero the ``round(sparsity * numel)`` smallest-magnitude entries (stable ties)."""
    count = round(sparsity * weight.numel())
    flat = weight.flatten().clone()
    if count:
        order = torch.argsort(flat.abs().float(), stable=True)
        flat[order[:count]] = 0
    return flat.reshape(weight.shape)


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


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 2..8, got {bits!r}")


RTN_AXES = ("channel", "reference")


def rtn_reference_axes(target: Target, bits: int) -> torch.Tensor:
    """RTN as the reference study's code computed it: in the weight's own dtype (bfloat16
    for a bf16 model), W_Q/W_K/W_V [heads, d_model, d_head] reduced over every dim but the
    last, one scale per d_head index shared across heads (a known flaw, kept to reproduce its
    tables); other weights per output channel."""
    if target.kind not in ("W_Q", "W_K", "W_V"):
        return target.from_rows(rtn_rows(target.to_rows(), bits, own_dtype=True))
    weight = target.param.data
    heads, d_model, d_head = weight.shape
    per_index = weight.permute(2, 0, 1).reshape(d_head, heads * d_model)  # a row per d_head
    rounded = rtn_rows(per_index, bits, own_dtype=True)
    return rounded.reshape(d_head, heads, d_model).permute(1, 2, 0).contiguous()


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
        _check_bits(self.bits)
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
        """Whether the audit runs this candidate's own forward (the forward path)."""
        return self.checkpoint is not None and self.checkpoint.path == "forward"

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
