"""A ``.gguf`` file (llama.cpp) as a model: read and checked from its metadata, dequantized
by transformers once, and kept as a safetensors folder keyed by the file's sha256.

:func:`read_gguf` reads only the header (numpy memory map, no torch), so a truncated file,
a file that is not GGUF or an architecture transformers cannot dequantize is refused in one
line before any work. :func:`dequantized_folder` returns a Hugging Face checkpoint folder
(config.json, model.safetensors, tokenizer) that every loader of the project reads; the
first call dequantizes (transformers' GGUF integration, minutes for a 100M-parameter
model on a loaded CPU), later calls find the folder under the cache and take seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

GGUF_MAGIC = b"GGUF"
DIGEST_FILE = "gguf.json"


@dataclass(frozen=True)
class GgufHeader:
    """What a GGUF file's header says: its architecture, widths and block weight type."""

    file: Path
    architecture: str
    d_model: int | None
    n_layers: int | None
    scheme: str


def read_gguf(file: str | Path, what: str = "GGUF file") -> GgufHeader:
    """The header of ``file``; ValueError with one line for a file that is not a readable
    GGUF or whose architecture transformers cannot dequantize."""
    from pytest_qdm.load.formats import require_library

    file = Path(file).expanduser()
    with file.open("rb") as stream:
        magic = stream.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(
            f"{what} {str(file)!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF'); "
            "name a .gguf file written by llama.cpp or the gguf package"
        )
    require_library("gguf")
    stat = file.stat()
    return _read_header(str(file.resolve()), stat.st_size, stat.st_mtime_ns, what)


@lru_cache(maxsize=16)
def _read_header(file: str, size: int, mtime_ns: int, what: str) -> GgufHeader:  # noqa: ARG001
    """gguf's reader parses every metadata array (a 49k-token vocabulary: seconds): once per
    (path, size, mtime)."""
    from collections import Counter

    from gguf import GGUFReader

    file = Path(file)
    try:
        reader = GGUFReader(str(file))
    except Exception as error:  # numpy/struct errors of a cut-off file, all kinds
        raise ValueError(
            f"{what} {str(file)!r} is truncated or damaged ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:120] if str(error) else 'no detail'}); "
            "download or write it again"
        ) from None
    arch = _field(reader, "general.architecture")
    supported = gguf_architectures()
    if arch not in supported:
        raise ValueError(
            f"{what} {str(file)!r}: GGUF architecture {arch!r} cannot be dequantized by "
            f"transformers; supported: {', '.join(sorted(supported))}"
        )
    types = Counter(
        t.tensor_type.name for t in reader.tensors if ".attn_" in t.name or ".ffn_" in t.name
    )
    scheme = types.most_common(1)[0][0] if types else "unknown"
    d_model, n_layers = (
        _field(reader, f"{arch}.{key}") for key in ("embedding_length", "block_count")
    )
    return GgufHeader(file, arch, d_model, n_layers, scheme)


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    return (
        bytes(value).decode() if value.dtype.kind == "u" and value.itemsize == 1 else int(value[0])
    )


def gguf_architectures() -> set[str]:
    """GGUF architectures transformers' GGUF integration dequantizes."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    return set(GGUF_CONFIG_MAPPING)


def file_sha256(file: str | Path) -> str:
    """The file's sha256 (hex), computed once per (path, size, mtime)."""
    stat = Path(file).stat()
    return _sha256(str(Path(file).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256(file: str, size: int, mtime_ns: int) -> str:  # noqa: ARG001 (cache key)
    digest = hashlib.sha256()
    with Path(file).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/pytest-qdm`` (``~/.cache/pytest-qdm``): the Python API's cache."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "pytest-qdm"


def dequantized_folder(file: str | Path, cache_dir: str | Path | None = None) -> Path:
    """A Hugging Face checkpoint folder of ``file``'s weights dequantized to float32 by
    transformers, under ``cache_dir/gguf/<sha256>`` (written once, atomically)."""
    file = Path(file).expanduser()
    digest = file_sha256(file)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = root / "gguf" / digest
    if (folder / DIGEST_FILE).is_file():
        return folder
    header = read_gguf(file)
    from pytest_qdm.load.formats import quiet_loading

    partial = folder.with_name(f"{digest}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with quiet_loading():
        _write_dequantized(header.file, partial)
    (partial / DIGEST_FILE).write_text(json.dumps({"file": header.file.name, "sha256": digest}))
    try:
        partial.rename(folder)
    except OSError:  # another process wrote it first
        shutil.rmtree(partial, ignore_errors=True)
    return folder


def _write_dequantized(file: Path, out: Path) -> None:
    """transformers refuses ``save_pretrained`` on a GGUF-dequantized model: write its float
    state (a tied unembedding once, as the embedding) and a config without the quantization
    block, naming the architecture the folder loaders dispatch on."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        file.parent, gguf_file=file.name, local_files_only=True
    )
    tied = {
        name
        for name, tensor in model.state_dict().items()
        if name.endswith("lm_head.weight") and model.config.tie_word_embeddings
    }
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k not in tied}
    save_file(state, out / "model.safetensors", metadata={"format": "pt"})
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["architectures"] = [type(model).__name__]
    (out / "config.json").write_text(json.dumps(config, indent=1))
    tokenizer = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    tokenizer.save_pretrained(out)
