"""Results as safetensors bytes and back, without pickle: what the gate writes and reads
again (partial runs, payloads exchanged between torch.distributed ranks) can hold no code.

:func:`dumps` splits a value into a JSON tree and its tensors and writes one safetensors
container whose metadata holds the tree, a format version and the sha256 of the whole
content. :func:`loads` checks all three before building anything, and builds only what the
tree names: JSON values, tuples, lists, dicts, paths, tensors, numpy arrays and scalars, and
the dataclasses, pydantic models and enums of this package (by module and name, each through
its own constructor or validator). Anything else, a digest that does not match, or a newer
format is a :class:`StoredValueError`.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib
import json
import struct
from pathlib import Path, PurePath
from typing import Any

FORMAT = "pytest-qdm/tensorfile"
FORMAT_VERSION = 1
_PACKAGE = "pytest_qdm."


class StoredValueError(ValueError):
    """Stored bytes that are not a value this version wrote (corrupt, foreign, newer)."""


def dumps(value: Any) -> bytes:
    """``value`` as safetensors bytes (TypeError for a type :func:`loads` cannot build)."""
    from safetensors.torch import save

    tensors: dict = {}
    tree = json.dumps(_encode(value, tensors), sort_keys=True)
    metadata = {
        "format": FORMAT,
        "version": str(FORMAT_VERSION),
        "tree": tree,
        "sha256": _digest(tree, tensors),
    }
    return save(tensors, metadata=metadata)


def loads(data: bytes, device=None) -> Any:
    """The value :func:`dumps` wrote; tensors on ``device`` (None: where they were)."""
    from safetensors.torch import load

    metadata = _metadata(data)
    if metadata.get("format") != FORMAT:
        raise StoredValueError("not a pytest-qdm result file")
    if not metadata.get("version", "").isdigit() or int(metadata["version"]) > FORMAT_VERSION:
        raise StoredValueError(f"written by a newer pytest-qdm (format {metadata['version']!r})")
    try:
        tensors = load(data)
    except Exception as error:  # safetensors' own checks of offsets and sizes
        raise StoredValueError(f"unreadable tensors ({error})") from None
    if _digest(metadata["tree"], tensors) != metadata.get("sha256"):
        raise StoredValueError("content does not match its sha256 (corrupt or edited)")
    return _decode(json.loads(metadata["tree"]), tensors, device)


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's metadata, read as JSON (8-byte length, then the header)."""
    if len(data) < 8:
        raise StoredValueError("truncated (no header)")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8:
        raise StoredValueError("truncated (header runs past the end)")
    try:
        header = json.loads(data[8 : 8 + size])
    except ValueError as error:
        raise StoredValueError(f"header is not JSON ({error})") from None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict):
        raise StoredValueError("not a pytest-qdm result file (no metadata)")
    return metadata


def _digest(tree: str, tensors: dict) -> str:
    import torch

    digest = hashlib.sha256(tree.encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _encode(value: Any, tensors: dict) -> Any:
    import numpy as np
    import torch
    from pydantic import BaseModel

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        key = str(len(tensors))
        tensors[key] = value.detach().cpu().contiguous().clone()
        return {"kind": "tensor", "key": key, "device": str(value.device)}
    if isinstance(value, np.ndarray):
        key = str(len(tensors))
        tensors[key] = torch.from_numpy(np.ascontiguousarray(value)).clone()
        return {"kind": "ndarray", "key": key}
    if isinstance(value, np.generic):
        return {"kind": "scalar", "value": value.item(), "dtype": str(value.dtype)}
    if isinstance(value, (list, tuple)):
        kind = "list" if isinstance(value, list) else "tuple"
        return {"kind": kind, "items": [_encode(v, tensors) for v in value]}
    if isinstance(value, dict):
        items = [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]
        return {"kind": "dict", "items": items}
    if isinstance(value, PurePath):
        return {"kind": "path", "value": str(value)}
    if isinstance(value, torch.dtype):
        return {"kind": "dtype", "value": str(value).removeprefix("torch.")}
    if isinstance(value, enum.Enum):
        return {"kind": "enum", "type": _name(type(value)), "value": _encode(value.value, tensors)}
    if isinstance(value, BaseModel):
        fields = {k: _encode(getattr(value, k), tensors) for k in type(value).model_fields}
        return {"kind": "model", "type": _name(type(value)), "fields": fields}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: _encode(getattr(value, f.name), tensors) for f in _init_fields(value)}
        return {"kind": "dataclass", "type": _name(type(value)), "fields": fields}
    raise TypeError(f"cannot store a {type(value).__qualname__} without pickle")


def _name(cls: type) -> str:
    if not cls.__module__.startswith(_PACKAGE):
        raise TypeError(f"cannot store {cls.__module__}.{cls.__qualname__}: not a pytest-qdm type")
    return f"{cls.__module__}:{cls.__qualname__}"


def _init_fields(value) -> list:
    return [f for f in dataclasses.fields(value) if f.init]


def _decode(node: Any, tensors: dict, device) -> Any:
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    kind = node.get("kind") if isinstance(node, dict) else None
    rebuild = _DECODERS.get(kind) if isinstance(kind, str) else None
    if rebuild is None:
        raise StoredValueError(f"unexpected node {str(node)[:40]!r}")
    try:
        return rebuild(node, lambda child: _decode(child, tensors, device), tensors, device)
    except StoredValueError:
        raise
    except Exception as error:  # a well-formed file whose values our types refuse
        raise StoredValueError(f"{kind} node does not rebuild ({error})") from None


def _class(name: str, accepts) -> type:
    """A class of this package named ``module:qualname``, if ``accepts`` it; never imports
    or touches anything outside the package."""
    module, _, qualname = name.partition(":")
    if not module.startswith(_PACKAGE):
        raise StoredValueError(f"{name!r} is not a pytest-qdm type")
    cls: Any = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if not isinstance(cls, type) or not accepts(cls):
        raise StoredValueError(f"{name!r} is not a stored kind of value")
    return cls


def _tensor(node, _, tensors, device):
    import torch

    tensor = tensors[node["key"]]
    target = device if device is not None else torch.device(node["device"])
    return tensor.to(target)


def _ndarray(node, _, tensors, __):
    return tensors[node["key"]].numpy()


def _scalar(node, _, __, ___):
    import numpy as np

    return np.dtype(node["dtype"]).type(node["value"])


def _dtype(node, _, __, ___):
    import torch

    dtype = getattr(torch, node["value"])
    if not isinstance(dtype, torch.dtype):
        raise StoredValueError(f"{node['value']!r} is not a torch dtype")
    return dtype


def _model(node, decode, _, __):
    from pydantic import BaseModel

    cls = _class(node["type"], lambda c: issubclass(c, BaseModel))
    return cls.model_validate({k: decode(v) for k, v in node["fields"].items()})


def _dataclass(node, decode, _, __):
    cls = _class(node["type"], dataclasses.is_dataclass)
    return cls(**{k: decode(v) for k, v in node["fields"].items()})


def _enum(node, decode, _, __):
    return _class(node["type"], lambda c: issubclass(c, enum.Enum))(decode(node["value"]))


_DECODERS = {
    "tensor": _tensor,
    "ndarray": _ndarray,
    "scalar": _scalar,
    "dtype": _dtype,
    "list": lambda node, decode, _, __: [decode(v) for v in node["items"]],
    "tuple": lambda node, decode, _, __: tuple(decode(v) for v in node["items"]),
    "dict": lambda node, decode, _, __: {decode(k): decode(v) for k, v in node["items"]},
    "path": lambda node, _, __, ___: Path(node["value"]),
    "enum": _enum,
    "model": _model,
    "dataclass": _dataclass,
}
