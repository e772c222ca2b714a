"""The options reference as Markdown, generated from :class:`~pytest_qdm.options.QdmOptions`
(flag, metavar, default, help and ini key come from the fields, as ``--help`` does), so the
documentation cannot drift from the code. ``docs/options.md`` carries :data:`MARKER`; the
MkDocs hook ``tools/mkdocs_hooks.py`` replaces it with :func:`options_table`."""

from __future__ import annotations

from pytest_qdm.options import dest, help_text, option_fields

MARKER = "<!-- qdm-options-table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def options_table() -> str:
    """One row per ``--qdm-*`` option: flag and metavar, ini key, default, meaning."""
    rows = ["| option | ini key | default | meaning |", "|---|---|---|---|"]
    for _, meta, info in option_fields():
        flag = f"--qdm-{meta['flag']}" + (f" {meta['metavar']}" if meta["metavar"] else "")
        text = help_text(meta, info)
        meaning, _, default = text.rpartition(" (default: ")
        rows.append(
            f"| `{_cell(flag)}` | `{dest(meta['flag'])}` | {_cell(default.removesuffix(')'))} "
            f"| {_cell(meaning)} |"
        )
    return "\n".join(rows)


def render(markdown: str) -> str:
    """``markdown`` with :data:`MARKER` replaced by the generated table."""
    return markdown.replace(MARKER, options_table())
