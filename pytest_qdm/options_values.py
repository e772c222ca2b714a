"""What an option's value may be: the ``cli`` metadata that makes a field a ``--qdm-*`` flag
(its kind of raw value), and the checks and conversions of values pydantic cannot express
(gate bounds, baseline checks, schemes, labelled datasets, ``max_memory``, lenses)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BeforeValidator

from pytest_qdm.compress.names import scheme_name
from pytest_qdm.gate.thresholds import BaselineCheck, GateCheck, parse_baseline, parse_gate
from pytest_qdm.load.tokens import DOMAIN_LABEL
from pytest_qdm.settings import LENSES

Kind = Literal["str", "int", "float", "flag", "not-flag", "list", "ints", "floats", "names"]


def cli(flag: str, kind: Kind = "str", metavar: str | None = None, shown: str | None = None):
    """Metadata that makes a field a ``--qdm-<flag>`` option (``shown``: the default as
    the help prints it, when the field's own default would not say it)."""
    return {"cli": {"flag": flag, "kind": kind, "metavar": metavar, "shown": shown}}


def parse_gate_checks(option: str):
    def parse(values: Any) -> tuple[GateCheck, ...]:
        return tuple(v if isinstance(v, GateCheck) else parse_gate(option, v) for v in values)

    return BeforeValidator(parse)


def parse_baseline_checks(values: Any) -> tuple[BaselineCheck, ...]:
    return tuple(v if isinstance(v, BaselineCheck) else parse_baseline(v) for v in values)


def parse_schemes(values: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(scheme_name(v) for v in values))


def parse_datasets(values: Any) -> tuple[str, ...]:
    values = (values,) if isinstance(values, str) else tuple(values or ())
    labelled = [domain_label(v) is not None for v in values]
    if len(values) > 1 and not all(labelled):
        raise ValueError(
            f"several sources {list(values)} need a domain label each, "
            "e.g. --qdm-dataset prose=builtin --qdm-dataset code=builtin:code"
        )
    labels = [domain_label(v) for v in values]
    repeated = sorted({x for x in labels if x and labels.count(x) > 1})
    if repeated:
        raise ValueError(f"domain labels must be unique, got {repeated} more than once")
    return values


def domain_label(value: str) -> str | None:
    """The label of a ``LABEL=SOURCE`` dataset entry, or None (an unlabelled source)."""
    label, sep, _ = value.partition("=")
    if not sep or not DOMAIN_LABEL.match(label) or Path(value).expanduser().exists():
        return None
    return label


def parse_max_memory(value: Any) -> dict[str | int, str] | None:
    """``0=20GiB,cpu=64GiB`` as transformers' max_memory (GPU ids as ints)."""
    if value is None or isinstance(value, dict):
        return value
    memory: dict[str | int, str] = {}
    for part in str(value).split(","):
        device, sep, size = part.strip().partition("=")
        if not sep or not device or not re.fullmatch(r"\d+(\.\d+)?\s*[KMGT]i?B", size.strip()):
            raise ValueError(
                f"{part.strip()!r} is not DEVICE=SIZE; write e.g. 0=20GiB,1=20GiB,cpu=64GiB"
            )
        memory[int(device) if device.isdigit() else device] = size.strip()
    return memory


def parse_bound_or_none(value: Any) -> float | None:
    """``none`` (measure only) or a number, as --qdm-min-explained-variance takes it."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "none"):
        return None
    return float(value)


def parse_lenses(values: Any) -> tuple[str, ...]:
    lenses = tuple(v for v in values if v != "none")
    unknown = sorted(set(lenses) - set(LENSES))
    if unknown:
        raise ValueError(f"unknown {unknown}; use {','.join(LENSES)} or none")
    return lenses
