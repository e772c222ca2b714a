"""Shared pieces of the JSON contract: a frozen pydantic base and numpy-array fields that
serialize as lists (NaN as null).
"""

from __future__ import annotations

from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, PlainSerializer, PlainValidator, WithJsonSchema


def _float_array(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value.astype(float, copy=False)
    return np.array([np.nan if v is None else v for v in value], dtype=float)


def _bool_array(value: Any) -> np.ndarray:
    return np.asarray(value, dtype=bool)


def _float_list(array: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in array.tolist()]


FloatArray = Annotated[
    np.ndarray,
    PlainValidator(_float_array),
    PlainSerializer(_float_list, when_used="json"),
    WithJsonSchema({"type": "array", "items": {"type": ["number", "null"]}}),
]


BoolArray = Annotated[
    np.ndarray,
    PlainValidator(_bool_array),
    PlainSerializer(lambda a: a.tolist(), when_used="json"),
    WithJsonSchema({"type": "array", "items": {"type": "boolean"}}),
]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True, extra="forbid")
