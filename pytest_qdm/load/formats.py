"""The libraries of quantized checkpoint formats: one line naming the extra when one is
missing, and no progress bars while a checkpoint loads."""

from __future__ import annotations

import importlib.util
from contextlib import contextmanager

# quant_method -> (module the format needs, the pytest-qdm extra that installs it)
FORMAT_LIBRARIES = {
    "bitsandbytes": ("bitsandbytes", "bnb"),
    "torchao": ("torchao", "torchao"),
    "compressed-tensors": ("compressed_tensors", "llmcompressor"),
    "gguf": ("gguf", "gguf"),
    "hqq": ("hqq", "hqq"),
}


class MissingFormatLibrary(ImportError):
    """The library of a checkpoint's format is not installed (the message names the extra)."""


def require_library(method: str) -> None:
    module, extra = FORMAT_LIBRARIES[method]
    if importlib.util.find_spec(module) is None:
        raise MissingFormatLibrary(
            f"{method} checkpoints need the {module} package: pip install 'pytest-qdm[{extra}]'"
        )


@contextmanager
def quiet_loading():
    """No transformers progress bars while a checkpoint loads."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars:
            hf_logging.enable_progress_bar()
