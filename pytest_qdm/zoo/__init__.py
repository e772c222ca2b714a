"""The bundled tiny model ("qdm-tiny"), its tokenizer and its SAEs: an audit with nothing to download.

qdm-tiny is a small GPT-NeoX/Pythia-style language model (rotary attention, parallel
attention + MLP, LayerNorm, GELU) trained from scratch by this project on the built-in
corpus (Python's own documentation, see ``pytest_qdm.load.corpus``), with a byte-level BPE tokenizer
and two sae_lens ``StandardSAE``s on residual-stream hooks. Everything is read from
``weights_dir()``; nothing touches the network. ``python -m pytest_qdm.zoo.train``
reproduces the weights; ``MODEL_CARD.md`` beside this file has the measured quality.

Heavy libraries (torch, transformer_lens, sae_lens, transformers) are imported inside the
loaders, so importing this package is cheap.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "TINY_CONTEXT_LENGTH",
    "TINY_HOOK",
    "TINY_HOOKS",
    "TINY_MODEL_NAME",
    "TINY_SECOND_HOOK",
    "load_tiny_model",
    "load_tiny_sae",
    "load_tiny_saes",
    "load_tiny_tokenizer",
    "sae_dir",
    "weights_dir",
]

TINY_MODEL_NAME = "qdm-tiny"
#: The default read-out site: the residual stream after block 3 of 6 (a middle layer).
TINY_HOOK = "blocks.3.hook_resid_post"
#: A second read-out site, for the layer-sensitivity check.
TINY_SECOND_HOOK = "blocks.1.hook_resid_post"
TINY_HOOKS = (TINY_HOOK, TINY_SECOND_HOOK)
#: The model's n_ctx; the SAEs were trained on rows of this length with a BOS at column 0.
TINY_CONTEXT_LENGTH = 128

MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "model_config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TRAINING_REPORT_FILE = "training_report.json"


def weights_dir() -> Path:
    """The folder that holds the shipped weights (package data)."""
    return Path(__file__).resolve().parent / "weights"


def sae_dir(hook_name: str) -> Path:
    """The sae_lens disk folder of the shipped SAE on ``hook_name``."""
    return weights_dir() / f"sae_{hook_name}"


def _require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"bundled qdm-tiny file missing: {path} (a broken install? "
            "`python -m pytest_qdm.zoo.train` regenerates the weights)"
        )
    return path


def load_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level BPE tokenizer (``<|endoftext|>`` id 0 is BOS/EOS, ``<|padding|>`` id 1)."""
    from transformers import PreTrainedTokenizerFast

    folder = weights_dir()
    _require(folder / TOKENIZER_FILE)
    _require(folder / TOKENIZER_CONFIG_FILE)
    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def load_tiny_model(device: str = "cpu") -> HookedTransformer:
    """qdm-tiny as a ``HookedTransformer``, exactly as the checkpoint has it, in eval mode.

    The weights are loaded with ``load_state_dict``: no layer-norm folding, no centring and
    no value-bias folding, so compression operates on the stored numbers.
    """
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    folder = weights_dir()
    kwargs = json.loads(_require(folder / MODEL_CONFIG_FILE).read_text(encoding="utf-8"))
    cfg = HookedTransformerConfig(**{**kwargs, "device": str(device), "init_weights": False})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*HookedTransformer is deprecated.*")
        model = HookedTransformer(
            cfg, tokenizer=load_tiny_tokenizer(), default_padding_side="right"
        )
    state = load_file(str(_require(folder / MODEL_WEIGHTS_FILE)), device="cpu")
    missing, unexpected = model.load_state_dict(state, strict=False)
    buffers = {name for name, _ in model.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise RuntimeError(
            f"qdm-tiny checkpoint does not match its config: missing {sorted(set(missing) - buffers)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.to(str(device), print_details=False)  # TransformerLens prints unless told not to
    return model.eval()


def load_tiny_sae(hook_name: str = TINY_HOOK, device: str = "cpu") -> SAE:
    """One shipped SAE (sae_lens ``StandardSAE``), by hook name."""
    if hook_name not in TINY_HOOKS:
        raise ValueError(
            f"no bundled qdm-tiny SAE for hook {hook_name!r}; expected one of {TINY_HOOKS}"
        )
    from sae_lens import SAE

    return SAE.load_from_disk(_require(sae_dir(hook_name)), device=str(device))


def load_tiny_saes(device: str = "cpu") -> dict[str, SAE]:
    """Every shipped SAE, keyed by hook name (``TINY_HOOK`` first)."""
    return {hook: load_tiny_sae(hook, device) for hook in TINY_HOOKS}
