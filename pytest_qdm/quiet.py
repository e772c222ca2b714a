"""Quiet by default: third-party lines a user cannot act on are held back during a gate run.

:func:`third_party_quiet` filters, for the body only and restored afterwards:

- the warnings those libraries raise at import or load time (torch's ``_pytree``
  ``register_constant()``, ``torch.jit.script_method``, sae_lens' deprecated ``utils``
  module, transformers' "You passed ``quantization_config``"), matched by message or by
  the library module they are attributed to;
- their loggers' warnings (torch ``_pytree``, torchao's "Failed to load ..._C_mxfp8",
  bitsandbytes' "Failed to load CPU gemm_4bit_forward", transformers, compressed-tensors);
- progress bars (tqdm) opened by those libraries (compressed-tensors' decompression bars,
  transformers' loading bars, hqq, llm-compressor); a Hub download keeps its bar.

Errors still show. ``--qdm-verbose`` (``verbose=True``) shows everything.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

LIBRARIES = (
    "torch",
    "torchao",
    "bitsandbytes",
    "transformers",
    "compressed_tensors",
    "llmcompressor",
    "hqq",
    "sae_lens",
    "transformer_lens",
    "accelerate",
)
# their loggers, held at ERROR ("torch.utils._pytree" rather than "torch": torch's own
# errors and warnings about the user's code keep their level)
LOGGERS = (
    "torch.utils._pytree",
    "torchao",
    "bitsandbytes",
    "transformers",
    "compressed_tensors",
    "llmcompressor",
    "hqq",
    "sae_lens",
    "accelerate",
)
MESSAGES = (
    r".*register_constant\(\) on Enum subclasses is deprecated",
    r".*torch\.jit\.script_method",
    r".*The 'utils' module has been deprecated",
    r".*You passed `quantization_config`",
    r".*HookedTransformer is deprecated",
    r".*from_pretrained is deprecated",
)
_MODULES = r"(" + "|".join(LIBRARIES) + r")(\..*)?$"


def _from_library(module: str) -> bool:
    return module.split(".")[0] in LIBRARIES


@contextmanager
def _quiet_bars() -> Iterator[None]:
    """tqdm bars opened from a module of :data:`LIBRARIES` start disabled."""
    try:
        from tqdm import std
    except ImportError:
        yield
        return
    original = std.tqdm.__init__

    def init(self, *args, **kwargs):
        frame, depth = sys._getframe(1), 0
        while frame is not None and depth < 4:  # past tqdm's own subclasses' __init__
            module = frame.f_globals.get("__name__", "")
            if not module.startswith("tqdm"):
                if _from_library(module):
                    kwargs["disable"] = True
                break
            frame, depth = frame.f_back, depth + 1
        original(self, *args, **kwargs)

    std.tqdm.__init__ = init
    try:
        yield
    finally:
        std.tqdm.__init__ = original


@contextmanager
def third_party_quiet(verbose: bool = False) -> Iterator[None]:
    """Hold back the listed libraries' warnings, log warnings and progress bars in the body
    (nothing when ``verbose``); everything is restored afterwards."""
    if verbose:
        yield
        return
    loggers = [logging.getLogger(name) for name in LOGGERS]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings(), _quiet_bars():
        for message in MESSAGES:
            warnings.filterwarnings("ignore", message=message)
        for category in (DeprecationWarning, FutureWarning, UserWarning):
            warnings.filterwarnings("ignore", category=category, module=_MODULES)
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)
