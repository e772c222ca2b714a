"""Reports of an audit: terminal (rich), JSON, markdown and HTML files, PNG plots, JUnit
properties.

Importing this package loads rich and numpy only: matplotlib is imported inside
:func:`plot_report`, and no module here imports torch.
"""

from __future__ import annotations

from pytest_qdm.jsonfile import write_json
from pytest_qdm.report.files import append_github_step_summary, markdown_summary
from pytest_qdm.report.html import html_report, write_html
from pytest_qdm.report.plots import plot_report
from pytest_qdm.report.properties import audit_properties, junit_properties, suite_properties
from pytest_qdm.report.terminal import render_audit, render_report

__all__ = [
    "append_github_step_summary",
    "audit_properties",
    "html_report",
    "junit_properties",
    "markdown_summary",
    "plot_report",
    "render_audit",
    "render_report",
    "suite_properties",
    "write_html",
    "write_json",
]
