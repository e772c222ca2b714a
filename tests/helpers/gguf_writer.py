"""Test scaffolding: a Llama Hugging Face checkpoint written as llama.cpp's
convert_hf_to_gguf.py writes it (LlamaModel), with the ``gguf`` package alone.

Block linear weights are quantized with ``gguf.quants.quantize``; norms, the embedding and
the unembedding stay F32. Q and K are permuted for llama.cpp's rotary layout (transformers'
GGUF loader reverses it). The tokenizer goes in as llama.cpp's "gpt2" BPE vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """llama.cpp's LlamaModel.permute: HF's half-split rotary rows to interleaved pairs."""
    if n_head_kv != n_head:
        n_head = n_head_kv
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def unpermute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """The inverse of :func:`permute`."""
    if n_head_kv != n_head:
        n_head = n_head_kv
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, rows // n_head // 2, 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def gguf_layout(hf_name: str, weight: np.ndarray, config: dict, inverse: bool = False):
    """An HF tensor as the GGUF file stores it (Q/K permuted, everything else as is);
    ``inverse``: a GGUF tensor back in the HF layout."""
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    move = unpermute if inverse else permute
    if hf_name.endswith("q_proj.weight"):
        return move(weight, heads, heads)
    if hf_name.endswith("k_proj.weight"):
        return move(weight, heads, kv_heads)
    return weight


def is_block_linear(hf_name: str) -> bool:
    return ".layers." in hf_name and hf_name.endswith("_proj.weight")


FILE_TYPES = {
    "F32": "ALL_F32",
    "Q8_0": "MOSTLY_Q8_0",
    "Q5_0": "MOSTLY_Q5_0",
    "Q4_0": "MOSTLY_Q4_0",
    "Q4_1": "MOSTLY_Q4_1",
}


def write_llama_gguf(folder: str | Path, out_file: str | Path, qtype) -> dict[str, str]:
    """Write the Llama checkpoint in ``folder`` to ``out_file`` with block linears in
    ``qtype`` (a ``gguf.GGMLQuantizationType``: F32 or a key of FILE_TYPES); a tied
    unembedding (no lm_head in the folder) stays tied (llama.cpp reuses token_embd).
    Returns HF name -> GGUF tensor name."""
    import gguf
    from safetensors.numpy import load_file

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    n_layers = config["num_hidden_layers"]
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    writer = gguf.GGUFWriter(str(out_file), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])

    writer.add_name(Path(out_file).stem)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_freq_base(config["rope_parameters"]["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    writer.add_vocab_size(config["vocab_size"])
    writer.add_file_type(getattr(gguf.LlamaFileType, FILE_TYPES[qtype.name]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_gpt2_tokenizer(writer, folder)

    names = {}
    for hf_name, weight in load_file(folder / "model.safetensors").items():
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        data = gguf_layout(hf_name, weight.astype(np.float32), config)
        if is_block_linear(hf_name) and qtype != gguf.GGMLQuantizationType.F32:
            writer.add_tensor(gguf_name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name, data)
        names[hf_name] = gguf_name

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return names


def add_gpt2_tokenizer(writer, folder: Path) -> None:
    """The folder's byte-level BPE tokenizer.json as llama.cpp's "gpt2" vocabulary."""
    import gguf

    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    settings = json.loads((folder / "tokenizer_config.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    special = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", []) if t["special"]}
    types = [
        gguf.TokenType.CONTROL if token in special else gguf.TokenType.NORMAL for token in tokens
    ]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(special[settings["bos_token"]])
    writer.add_eos_token_id(special[settings["eos_token"]])
    if settings.get("pad_token") in special:
        writer.add_pad_token_id(special[settings["pad_token"]])
    writer.add_add_bos_token(bool(settings.get("add_bos_token")))
