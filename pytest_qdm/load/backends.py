"""How a transformers causal LM becomes what the audit runs: a HookedTransformer (weights
converted by TransformerLens' own converter for its architecture) or a TransformerBridge (the
model itself with TransformerLens hook names), and which of the two an architecture takes.
Neither processes weights (docs/definitions.md, "Weight processing")."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pytest_qdm.load.architectures import SUPPORTED_ARCHITECTURES, _converters
from pytest_qdm.load.hub import quiet_deprecations

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer


BACKENDS = ("hooked", "bridge")


def check_backend(backend: str | None) -> None:
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} or None, got {backend!r}")


def bridge_architectures() -> tuple[str, ...]:
    """The decoder (causal LM) architectures the installed TransformerLens'
    TransformerBridge has an adapter for."""
    from transformer_lens.factories.architecture_adapter_factory import (
        SUPPORTED_ARCHITECTURES as BRIDGED,
    )

    decoders = (n for n in BRIDGED if n.endswith(("ForCausalLM", "LMHeadModel")))
    return tuple(sorted(n for n in decoders if not n.startswith("Bert")))


def choose_backend(
    architecture: str | None, path: str | Path, backend: str | None, placed: bool = False
) -> str:
    """The backend ``architecture`` loads with: ``backend`` where given and possible, else
    "hooked" for ``SUPPORTED_ARCHITECTURES`` (unless ``placed``: a device_map or max_memory
    was given), "bridge" for the bridge's other decoders; ValueError (one line, listing
    both) for anything else."""
    if backend == "hooked" and placed:
        raise ValueError("device_map / max_memory need backend='bridge' (or None)")
    if architecture in SUPPORTED_ARCHITECTURES and backend != "bridge" and not placed:
        return "hooked"
    if backend != "hooked" and architecture in bridge_architectures():
        return "bridge"
    hooked = ", ".join(SUPPORTED_ARCHITECTURES)
    bridged = ", ".join(a for a in bridge_architectures() if a not in SUPPORTED_ARCHITECTURES)
    raise ValueError(
        f"{str(path)!r}: architecture {architecture!r} is not supported by "
        f"load_model_from_disk{'' if backend is None else f' with backend={backend!r}'}; "
        f"supported: {hooked} (HookedTransformer or TransformerBridge), and through "
        f"TransformerLens' TransformerBridge: {bridged}"
    )


def hooked_from_hf(hf_model, name: str, tokenizer, device: str, dtype) -> HookedTransformer:
    """A transformers causal LM as a HookedTransformer, weights converted by TransformerLens'
    own converter for its architecture and never processed."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    architecture = type(hf_model).__name__
    to_config, convert = _converters(architecture)
    cfg = HookedTransformerConfig(
        **to_config(hf_model.config),
        original_architecture=architecture,
        model_name=name,
        tokenizer_name=None,  # never fetched: the tokenizer comes from the folder
        init_weights=False,
        device=device,
        dtype=dtype,
    )
    with quiet_deprecations():
        model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    # load_and_process_state_dict with every processing step off, in one load_state_dict
    # (TransformerLens loads key by key, walking the whole module tree for each: a minute
    # for a 30-layer model on a loaded CPU)
    model.load_state_dict(model.fill_missing_keys(convert(hf_model, cfg)), strict=False)
    model.move_model_modules_to_device()
    return model.eval()


def bridge_from_hf(hf_model, folder: Path, tokenizer):
    """A transformers causal LM, run as it is (quantized modules and their kernels), with
    TransformerLens hook names: a ``TransformerBridge`` (no weight processing, so its hooks
    read what an unprocessed HookedTransformer reads)."""
    with quiet_deprecations():
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(
            str(folder), hf_model=hf_model, tokenizer=tokenizer, dtype=hf_model.dtype
        )
    return bridge.eval()
