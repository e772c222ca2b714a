"""Threshold expressions, parsed into small checks whose failure names metric, value, bound.

Gate expressions (``--qdm-min-survived int6:0.6``): ``CONDITION:BOUND`` where CONDITION is
``int6`` / ``rtn-int6`` (any condition name, e.g. ``candidate:llama-w4a16``), ``*`` for every
RTN condition or ``candidate`` for every ``--qdm-candidate``, and BOUND is a
fraction (``0.6``) or a percentage (``60%``). Perplexity change bounds are relative
(``int6:0.05`` or ``int6:5%`` = at most +5%); KL bounds are nats per token (``int6:0.01``)
and top-1 agreement bounds fractions (``int6:0.95`` or ``int6:95%``).
``CONDITION@DOMAIN:BOUND`` (``int6@code:0.6``) bounds the condition on one labelled domain of ``--qdm-dataset LABEL=SOURCE``.

Baseline expressions (``--qdm-baseline-fail survived:-2%``): ``[CONDITION.]METRIC:±AMOUNT``;
the sign says which direction is bad (``-``: a drop, ``+``: a rise) and AMOUNT is in the
metric's own unit (percentage points for ``*_pct`` metrics, so ``-2%`` and ``-2`` agree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pytest_qdm.compress.names import BIT_WIDTHS, condition_name, valid_bits
from pytest_qdm.load.tokens import LABEL_PATTERN
from pytest_qdm.schema.metrics import BASELINE_METRICS

GATE_METRICS = {
    "min_survived": ("survived_pct", "min"),
    "max_damaged": ("damaged_pct", "max"),
    "max_ppl_change": ("ppl_chunked_change", "max"),
    "max_kl": ("kl", "max"),  # nats per token
    "min_top1": ("top1_agreement", "min"),  # a fraction, shown in percent
}
_NUMBER = r"[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?"
_CANDIDATE = r"candidate(?::[\w-]+)?"
_GATE = re.compile(
    rf"^(?P<cond>\*|{_CANDIDATE}|[\w.-]+)(?:@(?P<domain>{LABEL_PATTERN}))?"
    rf":(?P<value>{_NUMBER})(?P<pct>%?)$"
)
_BASELINE = re.compile(
    rf"^(?:(?P<cond>{_CANDIDATE}|[\w-]+)\.)?(?P<metric>\w+):(?P<sign>[-+])(?P<value>{_NUMBER})%?$"
)


@dataclass(frozen=True)
class GateCheck:
    """A bound on one metric of one condition (``*``: every RTN condition)."""

    option: str
    condition: str
    metric: str
    direction: Literal["min", "max"]
    bound: float  # in the metric's unit (percent for *_pct, a fraction for ppl change)
    domain: str | None = None  # a labelled domain; None: all tokens

    def describe(
        self, value: float | None, condition: str | None = None, note: str = ""
    ) -> tuple[bool, str]:
        """(passed, message) for an observed ``value`` of ``condition`` (default: the
        check's own), each in the metric's unit; ``note`` says what ``value`` is."""
        condition = condition or self.condition
        bound = self.shown(self.bound)
        if value is None:
            return False, f"{condition} {self.metric} is missing (bound {bound})"
        ok = value >= self.bound if self.direction == "min" else value <= self.bound
        relation = ">=" if self.direction == "min" else "<="
        verdict = "ok" if ok else "FAILED"
        shown = self.shown(value)
        return (
            ok,
            f"{condition} {self.metric} = {shown}{note}, required {relation} {bound}: {verdict}",
        )

    def shown(self, value: float) -> str:
        """``value`` in the metric's unit: percent, a signed relative change, or nats."""
        if self.metric == "kl":
            return f"{value:.4g} nats"
        if self.metric.endswith("_pct"):
            return f"{value:.4g}%"
        sign = "+" if self.metric.endswith("_change") else ""
        return f"{value * 100:{sign}.4g}%"


def parse_gate(option: str, text: str) -> GateCheck:
    """Parse one gate expression for ``option`` (a key of GATE_METRICS)."""
    metric, direction = GATE_METRICS[option]
    match = _GATE.match(text.strip())
    if not match:
        raise ValueError(
            f"--qdm-{option.replace('_', '-')} {text!r} is not CONDITION[@DOMAIN]:BOUND "
            "(e.g. int6:0.6, int6:60% or int6@code:0.6)"
        )
    value = float(match["value"]) / (100 if match["pct"] else 1)
    if metric == "kl" and match["pct"]:
        raise ValueError(f"{text!r}: a KL bound is in nats per token, e.g. int6:0.01")
    if match["domain"] and metric in ("kl", "top1_agreement"):
        raise ValueError(f"{text!r}: {metric} is measured over all tokens, not per domain")
    if metric.endswith("_pct") or metric == "top1_agreement":
        if value > 1:
            raise ValueError(
                f"{text!r}: the bound is a fraction in [0, 1] or a percentage, "
                "e.g. int6:0.6 or int6:60%"
            )
        value *= 100 if metric.endswith("_pct") else 1
    condition = "*" if match["cond"] == "*" else condition_name(match["cond"])
    _check_bits_in_name(condition, text)
    return GateCheck(option, condition, metric, direction, value, match["domain"])


def as_fraction(name: str, value: object) -> float:
    """A bound given as in Python (0.6) or as on the command line ("0.6", "60%"), as a
    fraction in [0, 1]; ValueError naming ``name`` otherwise."""
    text = str(value).strip()
    number = None if isinstance(value, bool) else re.fullmatch(rf"({_NUMBER})(%?)", text)
    if number is None:
        raise ValueError(
            f"{name} must be a fraction like 0.6 or a percentage like '60%', got {value!r}"
        )
    fraction = float(number[1]) / (100 if number[2] else 1)
    if not 0 <= fraction <= 1:
        raise ValueError(f"{name} must lie in [0, 1] (or 0%..100%), got {value!r}")
    return fraction


def _check_bits_in_name(condition: str, text: str) -> None:
    bits = re.fullmatch(r"rtn-int(\d+)(-g\d+)?", condition)
    if bits and not valid_bits(int(bits[1])):
        raise ValueError(f"{text!r}: bits must be in {BIT_WIDTHS}")


@dataclass(frozen=True)
class BaselineCheck:
    """Allowed movement of one metric against the saved baseline."""

    text: str
    condition: str | None  # None: every condition present in both
    metric: str  # a key of BASELINE_METRICS
    bad_direction: Literal["-", "+"]
    amount: float
    significant: bool = False  # fail only if the paired test also finds the change (p < 0.05)

    def compare(self, name: str, current: float | None, baseline: float | None) -> str | None:
        """None if fine, else a message naming the metric, both values and the bound."""
        if current is None or baseline is None:
            return None
        moved = current - baseline
        if (self.bad_direction == "-" and moved < -self.amount) or (
            self.bad_direction == "+" and moved > self.amount
        ):
            return (
                f"{name} {self.metric}: {current:.4g} vs baseline {baseline:.4g} "
                f"({moved:+.4g}, allowed {self.bad_direction}{self.amount:g}) [{self.text}]"
            )
        return None


SIGNIFICANT = ":significant"
#: baseline metrics a ``:significant`` check can test feature by feature (analyse/paired.py)
PAIRED_TESTS = {"survived": "mcnemar_p", "mean_r": "wilcoxon_p"}


def parse_baseline(text: str) -> BaselineCheck:
    """``[CONDITION.]METRIC:±AMOUNT[:significant]``, or ``[CONDITION.]METRIC:significant``
    (any drop the paired test finds)."""
    body = text.strip()
    significant = body.endswith(SIGNIFICANT)
    if significant:
        body = body.removesuffix(SIGNIFICANT)
        if ":" not in body:
            body += ":-0"
        metric = body.partition(":")[0].rpartition(".")[2]
        if metric not in PAIRED_TESTS:
            raise ValueError(
                f"--qdm-baseline-fail {text!r}: ':significant' tests {sorted(PAIRED_TESTS)} "
                "feature by feature; other metrics have no paired test"
            )
    check = _parse_baseline(text, body)
    return BaselineCheck(*(check.text, check.condition, check.metric), check.bad_direction,
                         check.amount, significant)  # fmt: skip


def _parse_baseline(text: str, body: str) -> BaselineCheck:
    match = _BASELINE.match(body)
    if not match or match["metric"] not in BASELINE_METRICS:
        raise ValueError(
            f"--qdm-baseline-fail {text!r} is not [CONDITION.]METRIC:±AMOUNT with METRIC in "
            f"{sorted(BASELINE_METRICS)} (e.g. survived:-2%, int6.damaged:+3, auc:-0.02, "
            "int6.survived:-2:significant)"
        )
    condition = condition_name(match["cond"]) if match["cond"] else None
    if condition:
        _check_bits_in_name(condition, text)
    return BaselineCheck(text, condition, match["metric"], match["sign"], float(match["value"]))
