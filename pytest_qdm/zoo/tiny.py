"""The bundled tiny model ("qdm-tiny"): its files, hook names, tokenizer and SAEs.

qdm-tiny is a small Llama-style language model (RMSNorm, rotary attention, SwiGLU MLP,
untied embeddings), saved as a Hugging Face ``LlamaForCausalLM`` checkpoint and trained
from scratch by this project on text every Python install has (CPython's documentation
and its standard-library source code), with a byte-level BPE tokenizer and two sae_lens
TopK SAEs on residual-stream hooks. It loads like any local checkpoint
(:func:`pytest_qdm.load.models.load_model_from_disk`), so every real quantizer can
quantize it too. Everything is read from ``weights_dir()``; nothing touches the network.
``python training/train_tiny.py`` in the repository reproduces the weights;
``MODEL_CARD.md`` beside this file has the measured quality.

This module sits below ``load/`` (which reads its paths and hook names) and imports no
other part of the package; sae_lens and transformers are imported inside the loaders.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "TINY_CONTEXT_LENGTH",
    "TINY_HOOK",
    "TINY_HOOKS",
    "TINY_MODEL_NAME",
    "TINY_SECOND_HOOK",
    "load_tiny_sae",
    "load_tiny_saes",
    "load_tiny_tokenizer",
    "sae_dir",
    "weights_dir",
]

TINY_MODEL_NAME = "qdm-tiny-v2"
#: The default read-out site: the residual stream after block 4 of 6 (late, so five
#: quantized blocks sit upstream of the SAE).
TINY_HOOK = "blocks.4.hook_resid_post"
#: A second read-out site, for the layer-sensitivity check.
TINY_SECOND_HOOK = "blocks.1.hook_resid_post"
TINY_HOOKS = (TINY_HOOK, TINY_SECOND_HOOK)
#: The model's n_ctx; the SAEs were trained on rows of this length with a BOS at column 0.
TINY_CONTEXT_LENGTH = 128

MODEL_WEIGHTS_FILE = "model.safetensors"
MODEL_CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
TRAINING_REPORT_FILE = "training_report.json"


def weights_dir() -> Path:
    """The folder that holds the shipped weights (package data)."""
    return Path(__file__).resolve().parent / "weights"


def sae_dir(hook_name: str) -> Path:
    """The sae_lens disk folder of the shipped SAE on ``hook_name``."""
    return weights_dir() / f"sae_{hook_name}"


def require(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(
            f"bundled qdm-tiny file missing: {path} (a broken install? "
            "`python training/train_tiny.py` in the repository regenerates the weights)"
        )
    return path


def load_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """The byte-level BPE tokenizer (``<|endoftext|>`` id 0 is BOS/EOS, ``<|padding|>`` id 1)."""
    from transformers import PreTrainedTokenizerFast

    folder = weights_dir()
    require(folder / TOKENIZER_FILE)
    require(folder / TOKENIZER_CONFIG_FILE)
    return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)


def load_tiny_sae(hook_name: str = TINY_HOOK, device: str = "cpu") -> SAE:
    """One shipped SAE (sae_lens ``TopKSAE``), by hook name."""
    if hook_name not in TINY_HOOKS:
        raise ValueError(
            f"no bundled qdm-tiny SAE for hook {hook_name!r}; expected one of {TINY_HOOKS}"
        )
    from sae_lens import SAE

    return SAE.load_from_disk(require(sae_dir(hook_name)), device=str(device))


def load_tiny_saes(device: str = "cpu") -> dict[str, SAE]:
    """Every shipped SAE, keyed by hook name (``TINY_HOOK`` first)."""
    return {hook: load_tiny_sae(hook, device) for hook in TINY_HOOKS}
