"""Which weights a condition compresses, and their [out, in] rows.

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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

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
