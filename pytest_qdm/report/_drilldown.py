"""The drill-down as text: which condition the terminal shows, each most damaged feature's
top context cropped to a width around its peak token, tokens with breaks made visible."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pytest_qdm.report._format import MISSING

if TYPE_CHECKING:
    from pytest_qdm.schema.drilldown import Context
    from pytest_qdm.schema.protocol import ProtocolReport


DRILLDOWN_SHOWN = 5  # features in the terminal's "most damaged features"
_VISIBLE = str.maketrans({"\n": "↵", "\r": "", "\t": "⇥"})


def drilldown_condition(report: ProtocolReport) -> str | None:
    """The condition whose drill-down the terminal shows: the focus condition, else the
    first that has one; None when the report has none."""
    conditions = report.audit.conditions
    names = [report.predictor_condition, *conditions]
    return next((n for n in names if n in conditions and conditions[n].drilldown), None)


def visible(token: str) -> str:
    """A token with line breaks and tabs shown as symbols."""
    return token.translate(_VISIBLE)


def token_texts(context: Context) -> list[str]:
    """A context's tokens as shown: decoded, or " <id>" each where there is no tokenizer."""
    if context.tokens is not None:
        return [visible(t) for t in context.tokens]
    return [f" {i}" for i in context.token_ids]


def _crop(text: str, width: int, keep_end: bool) -> str:
    if len(text) <= width:
        return text
    if width <= 0:
        return ""
    return "…" + text[len(text) - width + 1 :] if keep_end else text[: width - 1] + "…"


def context_line(context: Context, width: int) -> str:
    """A context in at most ``width`` characters, the peak token in brackets and centred
    as far as the text around it allows."""
    tokens = token_texts(context)
    peak = _crop(f"[{tokens[context.peak]}]", width, keep_end=False)
    before, after = "".join(tokens[: context.peak]), "".join(tokens[context.peak + 1 :])
    room = width - len(peak)
    left = min(len(before), max(room // 2, room - len(after)))
    return _crop(before, left, keep_end=True) + peak + _crop(after, room - left, keep_end=False)


def drilldown_lines(report: ProtocolReport, width: int, n: int = DRILLDOWN_SHOWN) -> list[str]:
    """The ``n`` most damaged features of :func:`drilldown_condition`: id, r and the
    reference's top context, each line at most ``width`` characters."""
    name = drilldown_condition(report)
    if name is None:
        return []
    lines = []
    for feature in report.audit.conditions[name].drilldown[:n]:
        label = f"#{feature.feature:<6} r {feature.correlation:+.3f}  "
        top = feature.reference_top
        text = context_line(top[0], width - len(label)) if top else MISSING
        lines.append(label + text)
    return lines
