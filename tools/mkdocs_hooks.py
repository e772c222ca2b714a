"""MkDocs hooks (mkdocs.yml ``hooks:``): the options reference is generated from the option
model at build time (pytest_qdm/options_doc.py)."""

from __future__ import annotations


def on_page_markdown(markdown, page, config, files):
    from pytest_qdm.options_doc import MARKER, render

    return render(markdown) if MARKER in markdown else markdown
