"""Multimodal checkpoints audited through their text decoder.

Gemma-3 4B, 12B and 27B ship as ``Gemma3ForConditionalGeneration``: a vision tower, a
projector and a Gemma-3 text decoder. SAEs (Gemma Scope 2) read the text decoder's residual
stream, and on text alone the model is that decoder: the same embedding, blocks, final norm
and (tied) unembedding. So the checkpoint is loaded as transformers writes it (a quantized
one dequantized by its own library) and its text decoder's modules, not copies, are wrapped
in the text architecture's own causal-LM class, which TransformerLens converts like any
``Gemma3ForCausalLM``. The vision tower is left out of the audit.

TransformerLens' multimodal ``TransformerBridge`` is not used: when it cannot load an image
processor it pip-installs torchvision, which replaced this machine's torch with another
build (TransformerLens 3.9).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# multimodal architecture -> (its text decoder's causal-LM architecture, attribute path of
# the decoder's model inside the multimodal model)
TEXT_DECODERS = {"Gemma3ForConditionalGeneration": ("Gemma3ForCausalLM", "model.language_model")}


def text_architecture(architecture: str | None) -> str | None:
    """The architecture a checkpoint is audited as: its text decoder's for a multimodal one."""
    decoder = TEXT_DECODERS.get(architecture or "")
    return decoder[0] if decoder else architecture


def text_decoder(hf_model: Any) -> Any:
    """``hf_model`` itself, or for a multimodal model its text decoder as a causal LM that
    shares its modules (no weight is copied)."""
    import torch
    import transformers

    decoder = TEXT_DECODERS.get(type(hf_model).__name__)
    if decoder is None:
        return hf_model
    architecture, path = decoder
    config = hf_model.config.get_text_config()
    config.architectures = [architecture]
    config._attn_implementation = hf_model.config._attn_implementation
    with torch.device("meta"):
        text = getattr(transformers, architecture)(config)
    text.model = hf_model.get_submodule(path)
    text.lm_head = hf_model.lm_head
    return text.eval()


@contextmanager
def explained_load_failure(info: Any) -> Iterator[None]:
    """Around loading checkpoint ``info``: a compressed-tensors multimodal checkpoint that
    transformers fails to build becomes one line that says what and what to do.

    Seen with transformers 5.17 and compressed-tensors 0.19: a Gemma-3 checkpoint quantized
    by llm-compressor with its vision tower left unquantized (the usual recipe) loads with
    the tower's dense weights reported unexpected and its packed ones missing, then fails
    initialising a vision-tower ``Linear`` that has no ``weight``."""
    try:
        yield
    except AttributeError as error:
        if info.architecture not in TEXT_DECODERS or info.quant_method != "compressed-tensors":
            raise
        import transformers

        raise ValueError(
            f"{str(info.folder)!r}: transformers {transformers.__version__} could not load this "
            f"compressed-tensors {info.architecture} ({error}); a vision tower left "
            "unquantized fails this way. Audit a checkpoint of the text decoder alone "
            "(quantize a Gemma3ForCausalLM), or a bitsandbytes one"
        ) from error
