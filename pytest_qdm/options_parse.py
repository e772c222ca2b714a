"""Raw option values to a checked :class:`~pytest_qdm.options.QdmOptions`: command-line and
ini strings parsed as each field expects (:func:`build_options`), pydantic errors as one line
naming the option (:func:`one_line`), and validated marker or keyword overrides."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from pytest_qdm.options import QdmOptions, option_fields
from pytest_qdm.options_values import Kind


def _split(value: Any) -> list[str]:
    return [v.strip() for v in str(value).split(",") if v.strip()]


def _parse(flag: str, kind: Kind, value: Any) -> Any:
    """The raw command-line/ini value of ``--qdm-<flag>`` as the field expects it."""
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "ints":
            return tuple(int(v) for v in _split(value))
        if kind == "floats":
            return tuple(float(v) for v in _split(value))
        if kind == "names":
            return tuple(v.lower() for v in _split(value))
        if kind == "list":
            return (value,) if isinstance(value, str) else tuple(value)
        if kind == "not-flag":
            return not value
        return bool(value) if kind == "flag" else str(value)
    except ValueError:
        example = {"int": "an integer", "float": "a number", "ints": "integers like 8,6,4"}
        wanted = example.get(kind, "numbers like 0.1,0.25")
        raise ValueError(f"--qdm-{flag} expects {wanted}, got {value!r}") from None


def build_options(raw: dict[str, Any], **extra: Any) -> QdmOptions:
    """QdmOptions from raw values keyed by flag (None or empty: not given); ValueError with
    one line naming the option otherwise."""
    settings = dict(extra)
    flags = {}
    for name, meta, _ in option_fields():
        flags[name] = meta["flag"]
        value = raw.get(meta["flag"])
        if _blank(value) and meta["kind"] not in ("flag", "not-flag"):
            raise ValueError(
                f"--qdm-{meta['flag']} was given an empty value: give a value "
                "(see pytest --help) or leave the option out"
            )
        if value in (None, []) or (meta["kind"] in ("flag", "not-flag") and not value):
            continue
        settings[name] = _parse(meta["flag"], meta["kind"], value)
    if settings.get("match_bits") == 0:
        settings["match_bits"] = None
    try:
        return QdmOptions(**settings)
    except ValidationError as error:
        raise ValueError(one_line(error, flags)) from None


def _blank(value: Any) -> bool:
    """An option given with nothing in it ("" or a list with a blank entry)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return any(isinstance(v, str) and not v.strip() for v in values)


def one_line(error: ValidationError, flags: dict[str, str] | None = None) -> str:
    """The first pydantic error as one line that names its option."""
    first = error.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    field = first["loc"][0] if first["loc"] else None
    if message.startswith("--qdm-") or field is None:
        return message
    name = f"--qdm-{flags[field]}" if flags and field in flags else str(field)
    given = first.get("input")
    items = given if isinstance(given, (tuple, list)) else (given,)
    if isinstance(given, (dict, BaseModel)) or all(str(i) in message for i in items):
        return f"{name}: {message}"  # the message quotes what was given
    shown = ",".join(map(str, items)) if isinstance(given, (tuple, list)) else given
    return f"{name}: {message} (got {shown!r})"  # the user's text, not a tuple


def validated_overrides(
    config: BaseModel, overrides: dict[str, Any], where: str, also: tuple[str, ...] = ()
) -> BaseModel:
    """``config`` with ``overrides`` applied and validated (``model_copy(update=)`` would
    skip validation); an unknown key is refused with the closest valid name (``also``:
    further keys the caller handles itself)."""
    fields = [*also, *type(config).model_fields]
    for key in overrides:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(fields)}"
            raise ValueError(f"{where}: unknown setting {key!r}{hint}")
    try:
        return type(config).model_validate({**config.model_dump(), **overrides})
    except ValidationError as error:
        raise ValueError(f"{where}: {one_line(error)}") from None
