"""A self-contained HTML page of a protocol report (``qdm-report/index.html``).

One file that needs no network and no script: inline CSS, plots embedded as base64 PNG,
``<details>`` to fold each feature's drill-down. Every text from the results goes through
:func:`html.escape`. Tokens are shaded by the feature's activation, the reference beside
the compressed model, on one colour scale per feature.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

from pytest_qdm.report import _breakdowns as breakdown
from pytest_qdm.report import _drilldown as drill
from pytest_qdm.report import _format as fmt
from pytest_qdm.report.behaviour import BEHAVIOUR_LEGEND, behaviour_table
from pytest_qdm.report.claims import claims_html
from pytest_qdm.report.retrain import (
    feature_verdicts,
    lost_caption,
    lost_moved_table,
    retrain_caption,
    three_way_table,
)

if TYPE_CHECKING:
    from pytest_qdm.schema.drilldown import Context, FeatureDrilldown
    from pytest_qdm.schema.protocol import ProtocolReport

Verdict = tuple[str, bool, str]

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 72em; padding: 0 1em;
  color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { padding: .2em .6em; border-bottom: 1px solid #ddd; text-align: right; }
th { white-space: pre; background: #f4f4f4; }
td { white-space: nowrap; }
td:first-child, th:first-child { text-align: left; }
.pass { color: #17702b; font-weight: bold; } .fail { color: #b00020; font-weight: bold; }
.finding { border-left: 4px solid #b00020; padding: .3em .8em; background: #fff4f4; }
.plots img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
details.feature { border: 1px solid #ddd; border-radius: 4px; margin: .4em 0; padding: .3em .6em; }
details.feature summary { cursor: pointer; }
.contexts th { text-align: left; }
.contexts td { text-align: left; font: 13px/1.6 ui-monospace, monospace; white-space: pre-wrap; }
.contexts span { border-radius: 2px; }
.ref span { background: rgba(31, 119, 180, var(--a)); }
.cmp span { background: rgba(255, 127, 14, var(--a)); }
.contexts span.p { outline: 2px solid #333; }
.muted { color: #777; }
"""


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], classes=None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = []
    for i, row in enumerate(rows):
        cells = []
        for j, cell in enumerate(row):
            cls = classes[i][j] if classes and classes[i][j] else None
            attr = f' class="{cls}"' if cls else ""
            cells.append(f"<td{attr}>{escape(cell)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _shaded(context: Context, side: list[float], scale: float) -> str:
    """The context's tokens, each shaded by ``side``'s activation (CSS variable --a)."""
    spans = []
    for i, (token, value) in enumerate(zip(drill.token_texts(context), side, strict=True)):
        alpha = 0.0 if scale <= 0 else min(max(value / scale, 0.0), 1.0)
        peak = ' class="p"' if i == context.peak else ""
        spans.append(
            f'<span{peak} style="--a:{alpha:.2g}" title="{value:.3g}">{escape(token)}</span>'
        )
    return "".join(spans)


def _contexts(title: str, contexts: Sequence[Context], scale: float, condition: str) -> str:
    if not contexts:
        return f'<p class="muted">{escape(title)}: none (the feature never fired)</p>'
    rows = [
        f'<tr class="context"><td class="ref">{_shaded(c, c.reference, scale)}</td>'
        f'<td class="cmp">{_shaded(c, c.compressed, scale)}</td></tr>'
        for c in contexts
    ]
    head = f"<tr><th>reference</th><th>{escape(condition)}</th></tr>"
    return (
        f"<h4>{escape(title)}</h4>"
        f'<table class="contexts"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table>'
    )


def element_id(condition: str, feature: int) -> str:
    """The HTML id of a feature's drill-down under ``condition``."""
    return f"drill-{re.sub(r'[^A-Za-z0-9_-]', '_', condition)}-{feature}"


def _feature(condition: str, feature: FeatureDrilldown, verdict: str | None = None) -> str:
    contexts = [*feature.reference_top, *feature.compressed_top]
    scale = max((v for c in contexts for v in (*c.reference, *c.compressed)), default=0.0)
    link = ""
    if feature.url:
        link = f' · <a href="{escape(feature.url, quote=True)}">Neuronpedia</a>'
    return (
        f'<details class="feature" id="{element_id(condition, feature.feature)}">'
        f"<summary>feature <b>#{feature.feature}</b>, r = {feature.correlation:+.3f}{link}"
        + (f" · <b>{verdict}</b> after retraining" if verdict else "")
        + "</summary>"
        + _contexts("Where the reference fires most", feature.reference_top, scale, condition)
        + _contexts(f"Where {condition} fires most now", feature.compressed_top, scale, condition)
        + "</details>"
    )


def _drilldown(report: ProtocolReport) -> str:
    parts = []
    for name, condition in report.audit.conditions.items():
        if not condition.drilldown:
            continue
        verdicts = feature_verdicts(report, name)
        features = "".join(_feature(name, f, verdicts.get(f.feature)) for f in condition.drilldown)
        parts.append(f"<h3>{escape(name)}</h3>{features}")
    if not parts:
        return ""
    legend = (
        '<p class="muted">The active features with the lowest r per condition. Each context is '
        "a window around one peak (outlined); shading is the feature's activation (reference "
        "blue, compressed orange, one scale per feature; hover for the value).</p>"
    )
    return "<h2>Most damaged features</h2>" + legend + "".join(parts)


def _plots(paths: Sequence[Path]) -> str:
    images = []
    for path in paths:
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        alt = escape(Path(path).stem.replace("_", " "), quote=True)
        images.append(f'<img alt="{alt}" src="data:image/png;base64,{data}">')
    return f'<h2>Plots</h2><div class="plots">{"".join(images)}</div>' if images else ""


def _findings(report: ProtocolReport) -> str:
    if not report.findings:
        return "<p>No condition held perplexity while its SAE features degraded.</p>"
    return "".join(f'<p class="finding">{escape(f.message)}</p>' for f in report.findings)


def _verdicts(verdicts: Sequence[Verdict]) -> str:
    if not verdicts:
        return f"<h2>Gate verdicts</h2><p>{escape(fmt.NOTHING_GATED)}</p>"
    rows = [[name, fmt.verdict_word(passed), message] for name, passed, message in verdicts]
    classes = [[None, "pass" if passed else "fail", None] for _, passed, _ in verdicts]
    return "<h2>Gate verdicts</h2>" + _table(("gate", "result", "detail"), rows, classes)


def html_report(
    report: ProtocolReport, verdicts: Sequence[Verdict] = (), plots: Sequence[Path] = ()
) -> str:
    """The report as one HTML page: headline, verdicts, findings, survival table, lenses,
    one-line analyses, plots (``plots``: PNG files to embed) and the drill-down."""
    title = f"QDM audit: {report.audit.hook_name}"
    sections = [
        f"<h1>{escape(title)}</h1>",
        "".join(f"<p>{escape(line)}</p>" for line in fmt.headline(report)),
        _verdicts(verdicts),
        "<h2>Findings</h2>" + _findings(report),
        "<h2>Survival</h2>" + _table(fmt.WIDE_HEADERS, [fmt.sweep_cells(r) for r in report.sweep]),
    ]
    per_domain = breakdown.domain_table(report)
    if per_domain is not None:
        domain_title, headers, rows = per_domain
        caption = f'<p class="muted">{escape(breakdown.domain_caption(report))}</p>'
        sections.append(f"<h2>{escape(domain_title)}</h2>" + _table(headers, rows) + caption)
    lens = fmt.lens_table(report)
    if lens is not None:
        lens_title, headers, rows = lens
        legend = f'<p class="muted">{escape(fmt.LENS_LEGEND)}</p>'
        sections.append(f"<h2>{escape(lens_title)}</h2>" + _table(headers, rows) + legend)
    behaviour = behaviour_table(report)
    if behaviour is not None:
        behaviour_title, headers, rows = behaviour
        legend = f'<p class="muted">{escape(BEHAVIOUR_LEGEND)}</p>'
        sections.append(f"<h2>{escape(behaviour_title)}</h2>" + _table(headers, rows) + legend)
    sensitivity = breakdown.sensitivity_table(report)
    if sensitivity is not None:
        sens_title, headers, rows = sensitivity
        plan = f"<p>{escape(breakdown.sensitivity_plan_line(report))}</p>"
        sections.append(f"<h2>{escape(sens_title)}</h2>" + _table(headers, rows) + plan)
    sections.append(claims_html(report.claims, _table))
    for table, caption in [
        (three_way_table(report), retrain_caption(report)),
        (lost_moved_table(report), lost_caption(report)),
    ]:
        if table is not None:
            note = f'<p class="muted">{escape(caption)}</p>'
            sections.append(f"<h2>{escape(table[0])}</h2>" + _table(*table[1:]) + note)
    details = [
        ("Matched pruning", fmt.pruning_line(report)),
        ("Overlap", fmt.overlap_line(report)),
        (f"Predictor (survival under {report.predictor_condition})", fmt.predictor_line(report)),
        *fmt.stability_lines(report),
    ]
    items = "".join(
        f"<li><b>{escape(label)}:</b> {escape(text)}</li>" for label, text in details if text
    )
    sections += [f"<h2>Analyses</h2><ul>{items}</ul>", _plots(plots), _drilldown(report)]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{''.join(sections)}</body></html>\n"
    )


def write_html(
    report: ProtocolReport, path: Path, verdicts: Sequence[Verdict] = (), plots=()
) -> Path:
    """Write :func:`html_report` to ``path`` (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(html_report(report, verdicts, plots), encoding="utf-8")
    return path
