"""Compressed checkpoints as teams ship them: which format a checkpoint is in, which
library reads it, and the two ways the audit reaches the compressed computation.

A checkpoint is a Hugging Face folder whose ``config.json`` names a
``quantization_config.quant_method`` (bitsandbytes, torchao, compressed-tensors), an hqq
``save_quantized`` folder, a dense folder, or a ``.gguf`` file (or a folder holding one).
:func:`inspect_checkpoint` reads only metadata (no torch, no weights), so a bad candidate
is refused before any model loads.

Two paths (:attr:`CheckpointInfo.path`, forced with :func:`choose_path`): ``dequantize``
(:func:`dequantized_model`, plain ``nn.Linear`` weights swapped into the reference) for
weight-only schemes, and ``forward`` (:func:`deployed_model`, loaded as it deploys and read
through a TransformerLens bridge) for schemes that quantize activations. Which scheme takes
which path and why: docs/formats.md.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_qdm.load.formats import (
    FORMAT_LIBRARIES,
    quiet_loading,
    require_library,
)

DENSE = "none"
PATHS = ("dequantize", "forward", "served")
SERVED_FORMATS = ("gguf",)  # llama.cpp runs them: pytest_qdm.load.served
# formats whose quantized forward transformers runs here (GGUF: dequantized at load; HQQ:
# hqq's standalone loader)
FORWARD_FORMATS = (DENSE, "bitsandbytes", "torchao", "compressed-tensors")
HQQ_WEIGHTS = "qmodel.pt"  # hqq's BaseHQQModel.get_weight_file


@dataclass(frozen=True)
class CheckpointInfo:
    """What :func:`inspect_checkpoint` read: where the weights are and how they are stored."""

    folder: Path
    quant_method: str  # a key of FORMAT_LIBRARIES, or "none"
    scheme: str  # e.g. "nf4 double-quant", "int W4 group 128 (pack-quantized)", "Q8_0"
    activations_quantized: bool
    gguf_file: str | None = None
    architecture: str | None = None

    @property
    def location(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder

    @property
    def path(self) -> str:
        """The path its scheme takes by default: ``forward`` where the deployed kernel
        quantizes activations and transformers runs it here, else ``dequantize``."""
        forward = self.activations_quantized and self.quant_method in FORWARD_FORMATS
        return "forward" if forward else "dequantize"


def choose_path(info: CheckpointInfo, path: str | None = None) -> str:
    """``path`` (None: the scheme's own, :attr:`CheckpointInfo.path`); ValueError with one
    line for a path this checkpoint cannot take."""
    if path is None:
        return info.path
    if path not in PATHS:
        raise ValueError(f"candidate path must be one of {', '.join(PATHS)}, got {path!r}")
    if path == "served":
        if info.quant_method not in SERVED_FORMATS:
            raise ValueError(
                f"candidate {str(info.location)!r}: the served path runs a .gguf file in "
                f"llama.cpp; this one is {info.quant_method} ({info.scheme}): use the "
                "dequantize or forward path"
            )
        from pytest_qdm.load.served import require_llama_cpp

        require_llama_cpp()
        return path
    if path == "forward" and info.quant_method not in FORWARD_FORMATS:
        why = {
            "gguf": "transformers dequantizes GGUF at load; llama.cpp's own forward is the "
            "served path (--qdm-candidate-path served)",
            "hqq": "hqq checkpoints load with hqq's standalone loader, whose forward is "
            "its dequantized weights",
        }[info.quant_method]
        raise ValueError(
            f"candidate {str(info.location)!r}: no forward path for {info.quant_method}: "
            f"{why}; use the dequantize path"
        )
    return path


def candidate_name(location: str | Path) -> str:
    """``candidate:<folder or .gguf stem>``, lower case, other characters as ``-``."""
    stem = Path(str(location).rstrip("/")).name
    stem = stem.removesuffix(".gguf")
    return "candidate:" + (re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-") or "model")


def inspect_checkpoint(location: str | Path) -> CheckpointInfo:
    """Read a local checkpoint's format from its metadata; ValueError / FileNotFoundError /
    MissingFormatLibrary with one line for anything the audit could not load."""
    location = Path(location).expanduser()
    if not location.exists():
        raise FileNotFoundError(f"candidate {str(location)!r} does not exist")
    if location.is_file():
        if location.suffix != ".gguf":
            raise ValueError(
                f"candidate {str(location)!r} is a file but not a .gguf; name a Hugging Face "
                "checkpoint folder or a .gguf file"
            )
        return _inspect_gguf(location)
    ggufs = sorted(location.glob("*.gguf"))
    if not (location / "config.json").is_file():
        if len(ggufs) == 1:
            return _inspect_gguf(ggufs[0])
        found = f"{len(ggufs)} .gguf files (name one)" if ggufs else "no .gguf file"
        raise FileNotFoundError(
            f"candidate {str(location)!r} has no config.json and {found}; expected a Hugging "
            "Face checkpoint folder (save_pretrained) or a .gguf file"
        )
    config = json.loads((location / "config.json").read_text())
    architecture = (config.get("architectures") or [None])[0]
    quant = config.get("quantization_config") or {}
    method = quant.get("quant_method", DENSE)
    if method == DENSE and (location / HQQ_WEIGHTS).is_file():
        require_library("hqq")
        scheme = _hqq_scheme(location / HQQ_WEIGHTS)
        return CheckpointInfo(location, "hqq", scheme, False, architecture=architecture)
    if method == DENSE:
        return CheckpointInfo(location, DENSE, "dense", False, architecture=architecture)
    if method == "hqq":  # transformers' HqqConfig layout, which transformers 5 no longer reads
        raise ValueError(
            f"candidate {str(location)!r}: quant_method 'hqq' (transformers' HqqConfig) is not "
            "supported; save with hqq's AutoHQQHFModel.save_quantized (config.json + qmodel.pt)"
        )
    if method not in FORMAT_LIBRARIES:
        raise ValueError(
            f"candidate {str(location)!r}: quant_method {method!r} is not supported; supported: "
            f"{', '.join(FORMAT_LIBRARIES)} (or a dense checkpoint)"
        )
    require_library(method)
    scheme, activations = _DESCRIBE[method](quant)
    return CheckpointInfo(location, method, scheme, activations, architecture=architecture)


def _bitsandbytes(quant: dict) -> tuple[str, bool]:
    if quant.get("load_in_4bit"):
        double = " double-quant" if quant.get("bnb_4bit_use_double_quant") else ""
        return f"{quant.get('bnb_4bit_quant_type', 'fp4')}{double}", False
    threshold = float(quant.get("llm_int8_threshold", 6.0))
    # LLM.int8: int8 activations times int8 weights, outlier columns (|x| > threshold) in 16 bit
    return f"llm-int8 threshold {threshold:g}", True


def _torchao(quant: dict) -> tuple[str, bool]:
    kind = quant.get("quant_type")
    if isinstance(kind, dict):  # serialized AOBaseConfig: {"default": {"_type": ...}}
        inner = next(iter(kind.values()), {})
        kind = inner.get("_type", "config") if isinstance(inner, dict) else str(inner)
    kind = str(kind)
    return kind, "activation" in kind.lower()


def _compressed_tensors(quant: dict) -> tuple[str, bool]:
    parts, activations = [], False
    for group in (quant.get("config_groups") or {}).values():
        weights = group.get("weights") or {}
        size = weights.get("group_size")
        detail = f"group {size}" if size else weights.get("strategy", "")
        parts.append(
            f"{weights.get('type', 'int')} W{weights.get('num_bits')} {detail} "
            f"({group.get('format') or quant.get('format')})".replace("  ", " ")
        )
        activations |= bool(group.get("input_activations"))
    return "; ".join(parts) or str(quant.get("format")), activations


_DESCRIBE = {
    "bitsandbytes": _bitsandbytes,
    "torchao": _torchao,
    "compressed-tensors": _compressed_tensors,
}


def _hqq_scheme(weights: Path) -> str:
    """``W<nbits> group <size>`` of the first quantized layer, read from the opcodes of the
    torch.save pickle (no torch, no tensors): each key is followed by its int value."""
    import pickletools
    import zipfile

    with zipfile.ZipFile(weights) as archive:
        pickle = archive.read(next(n for n in archive.namelist() if n.endswith("data.pkl")))
    found, key = {}, None
    for opcode, arg, _ in pickletools.genops(pickle):
        if "PUT" in opcode.name:  # memo bookkeeping between a key and its value
            continue
        if key is not None:
            found.setdefault(key, arg)
        key = arg if arg in ("nbits", "group_size") else None
        if len(found) == 2:
            break
    if "nbits" not in found:
        return "hqq"
    group = found.get("group_size")
    return f"W{found['nbits']} " + (f"group {group}" if group else "channel")


def _inspect_gguf(file: Path) -> CheckpointInfo:
    from pytest_qdm.load.gguf import read_gguf

    header = read_gguf(file, "candidate")
    # llama.cpp multiplies quantized weights with q8-quantized activations
    return CheckpointInfo(
        file.parent,
        "gguf",
        header.scheme,
        True,
        gguf_file=file.name,
        architecture=header.architecture,
    )


def dequantized_model(info: CheckpointInfo, dtype: Any, cache_dir: str | Path | None = None):
    """The checkpoint as a transformers model whose block linears are plain dense weights,
    dequantized by the format's own library (on CPU; the audit moves it). GGUF: once, then
    from its safetensors copy under ``cache_dir`` (:func:`pytest_qdm.load.gguf.dequantized_folder`)."""
    from transformers import AutoModelForCausalLM

    with quiet_loading():
        kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
        if info.quant_method == "gguf":
            from pytest_qdm.load.gguf import dequantized_folder

            folder = dequantized_folder(info.location, cache_dir)
            model = AutoModelForCausalLM.from_pretrained(folder, **kwargs)
        elif info.quant_method == "compressed-tensors":
            model = _compressed_tensors_model(info.folder, kwargs)
        elif info.quant_method == "bitsandbytes":
            model = AutoModelForCausalLM.from_pretrained(info.folder, device_map="cpu", **kwargs)
            model = model.dequantize(dtype=dtype)
        elif info.quant_method == "hqq":
            model = _hqq_dequantized(info.folder, dtype)
        elif info.quant_method == "torchao":
            model = AutoModelForCausalLM.from_pretrained(info.folder, device_map="cpu", **kwargs)
            _dequantize_tensor_subclasses(model, dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(info.folder, **kwargs)
    return model.eval()


def deployed_model(info: CheckpointInfo, dtype: Any, device: str):
    """The checkpoint as it deploys, for the forward path: transformers' quantized modules
    with their own kernels (bitsandbytes, torchao), compressed-tensors modules with their
    quantized forward (input activations fake-quantized per token), on ``device``."""
    from transformers import AutoModelForCausalLM

    choose_path(info, "forward")
    kwargs: dict[str, Any] = {"local_files_only": True, "dtype": dtype}
    with quiet_loading():
        if info.quant_method in ("bitsandbytes", "torchao"):
            model = AutoModelForCausalLM.from_pretrained(
                info.folder, device_map={"": device}, **kwargs
            )
        elif info.quant_method == "compressed-tensors":
            model = _compressed_tensors_model(info.folder, kwargs).to(device)
        else:
            model = AutoModelForCausalLM.from_pretrained(info.folder, **kwargs).to(device)
    return model.eval()


def _compressed_tensors_model(folder: Path, kwargs: dict):
    """Decompressed at load (``run_compressed=False``'s successor): float weights, each module
    keeping compressed-tensors' quantized forward (weights and, per the scheme, input
    activations fake-quantized)."""
    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    config = CompressedTensorsConfig(dequantize=True)
    return AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, **kwargs)


def _dequantize_tensor_subclasses(model, dtype) -> None:
    """torchao stores quantized weights as tensor subclasses; each has ``dequantize()``."""
    import torch

    for module in model.modules():
        weight = getattr(module, "weight", None)
        if isinstance(module, torch.nn.Linear) and type(weight.data) is not torch.Tensor:
            dense = weight.data.dequantize().to(dtype)
            module.weight = torch.nn.Parameter(dense, requires_grad=False)


def _hqq_dequantized(folder: Path, dtype):
    """hqq's own loader, then each ``HQQLinear`` replaced by an ``nn.Linear`` holding
    ``HQQLinear.dequantize()``."""
    import contextlib
    import io

    import torch
    from hqq.core.quantize import HQQLinear
    from hqq.models.hf.base import AutoHQQHFModel

    with contextlib.redirect_stderr(io.StringIO()):  # hqq's per-module progress bars
        model = AutoHQQHFModel.from_quantized(str(folder), compute_dtype=dtype, device="cpu")
    for name, module in list(model.named_modules()):
        if isinstance(module, HQQLinear):
            dense = torch.nn.Linear(
                module.in_features, module.out_features, bias=module.bias is not None
            )
            dense.weight = torch.nn.Parameter(module.dequantize().to(dtype), requires_grad=False)
            if module.bias is not None:
                dense.bias = torch.nn.Parameter(module.bias.to(dtype), requires_grad=False)
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, dense)
    return model
