"""Input files checked before any model loads, each problem one line (run by preflight).

Config files that are not JSON (named, with the parser's message), a model folder holding
only pickled weights, a candidate whose vocabulary, layer count or width is not the model's
(both config files read), dataset files that are empty, binary or not UTF-8 (with the
encoding they look like), and a token budget larger than the corpus can hold (at least one
byte of text per token, so the bound never refuses a budget the corpus can fill).
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from pytest_qdm.options import QdmOptions

SHAPE_KEYS = {
    "vocab_size": "vocabulary",
    "num_hidden_layers": "layer count",
    "hidden_size": "width",
}
PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
CHUNK = 1 << 20


def check_input_files(options: QdmOptions) -> None:
    """Raise ValueError with one line for the first problem in the run's input files."""
    model = _model_folder(options.model)
    model_config = read_config(model / "config.json", "--qdm-model") if model else None
    if model is not None and options.model != "tiny":
        _check_safetensors(model)
    if options.sae and (sae := _folder(options.sae)) is not None:
        read_config(sae / "cfg.json", "--qdm-sae")
    for candidate in options.candidates:
        folder = _folder(candidate)
        if folder is None:
            continue
        config = read_config(folder / "config.json", "--qdm-candidate")
        if model_config and config:
            _check_same_shape(candidate, _text_config(config), _text_config(model_config))
    _check_dataset_files(options)


def read_config(path: Path, option: str) -> dict | None:
    """A config file's JSON object (None when there is none); not JSON: one line naming it."""
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_bytes())
    except ValueError as error:
        raise ValueError(
            f"{option}: {path} is not valid JSON ({error}); the file is truncated or "
            "corrupt: restore it from its source"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"{option}: {path} holds a JSON {type(config).__name__}, not an object")
    return config


def _folder(spec: str) -> Path | None:
    path = Path(str(spec)).expanduser()
    return path if path.is_dir() else None


def _model_folder(spec: str | None) -> Path | None:
    if spec is None:
        return None
    from pytest_qdm.load.presets import get_preset, preset_names

    name = get_preset(spec).model if spec in preset_names() else spec
    if name == "tiny":
        from pytest_qdm.zoo.tiny import weights_dir

        return weights_dir()
    return _folder(name)


def _check_safetensors(folder: Path) -> None:
    if any(folder.glob("*.safetensors")) or any(folder.glob("*.gguf")):
        return
    pickled = sorted(p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern))
    if pickled:
        raise ValueError(
            f"--qdm-model {str(folder)!r} holds only pickled weights ({', '.join(pickled[:3])}), "
            "which can run code when loaded; pytest-qdm reads safetensors only. Convert once "
            "where you trust the file: AutoModelForCausalLM.from_pretrained(folder)"
            ".save_pretrained(new_folder) writes model.safetensors"
        )


def _text_config(config: dict) -> dict:
    """The language model's part of a (possibly multimodal) config."""
    return config.get("text_config") or config


def _check_same_shape(candidate: str, config: dict, model: dict) -> None:
    for key, what in SHAPE_KEYS.items():
        ours, theirs = config.get(key), model.get(key)
        if ours is not None and theirs is not None and ours != theirs:
            raise ValueError(
                f"--qdm-candidate {candidate!r} has {what} {ours} ({key}) but the model has "
                f"{theirs}: a candidate must be this model compressed, not another model"
            )


def _check_dataset_files(options: QdmOptions) -> None:
    source = options.token_source
    sources = source.items() if isinstance(source, dict) else [(None, source)]
    for label, each in sources:
        path = Path(str(each)).expanduser() if each else None
        if path is not None and path.is_file():
            problem = text_problem(path)
            if problem:
                raise ValueError(f"--qdm-dataset {label + '=' if label else ''}{path}: {problem}")
    if not isinstance(source, dict) and options.tokens is not None:
        _check_budget(options, source or "builtin")


def text_problem(path: Path) -> str | None:
    """Why ``path`` is no UTF-8 text corpus (empty, binary, another encoding), or None."""
    decoder, offset, blank = codecs.getincrementaldecoder("utf-8")(), 0, True
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            if (nul := chunk.find(b"\0")) >= 0:
                return f"binary data (a NUL byte at offset {offset + nul}), not a text file"
            try:
                blank = not decoder.decode(chunk).strip() and blank
            except UnicodeDecodeError as error:
                found = _encoding(path)
                return (
                    f"not UTF-8 (byte {chunk[error.start]:#04x} at offset "
                    f"{offset + error.start}; it looks like {found}): convert it, e.g. "
                    f"iconv -f {found} -t utf-8"
                )
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "not UTF-8 (the file ends inside a character): it is truncated or not text"
    return "empty (no text to tokenize)" if blank else None


def _encoding(path: Path) -> str:
    from charset_normalizer import from_bytes

    with path.open("rb") as file:
        best = from_bytes(file.read(CHUNK)).best()
    return best.encoding if best is not None else "an unknown encoding"


def _check_budget(options: QdmOptions, source: str) -> None:
    from pytest_qdm.load.corpus import BUILTIN_SOURCES, builtin_source_files

    if source in BUILTIN_SOURCES:
        size = sum(p.stat().st_size for p in builtin_source_files(BUILTIN_SOURCES[source]))
    elif Path(source).expanduser().is_file():
        size = Path(source).expanduser().stat().st_size
    else:
        return  # a Hub dataset: its size is known when it loads
    context = options.context_length or 2
    needed = options.tokens - options.tokens // context  # the BOS of each row is not text
    if needed > size:
        raise ValueError(
            f"--qdm-tokens {options.tokens} is more than the corpus {source!r} can give: its "
            f"{size} bytes make at most {size} tokens; lower --qdm-tokens or give a larger "
            "--qdm-dataset"
        )
