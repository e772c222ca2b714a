"""The package's layer order (docs/architecture.md), checked over every import, function-level
and ``TYPE_CHECKING`` ones included: no import circle between modules, and no import runs back
up the layers except the few listed in ``ALLOWED_UPWARD``."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pytest_qdm"

# Bottom first. A module belongs to the longest entry that prefixes it; modules of one layer may
# import each other (without a circle).
LAYERS: list[tuple[str, ...]] = [
    (
        "settings",
        "progress",
        "quiet",
        "tensorfile",
        "jsonfile",
        "schema",
        "zoo.tiny",
        "zoo.smollm2",
    ),
    ("cachefiles",),
    ("load",),
    ("zoo",),
    ("compress",),
    ("stream",),
    ("analyse",),
    ("run",),
    ("claims",),
    ("report",),
    ("gate.thresholds", "gate.confidence"),
    ("options", "options_values", "options_families", "options_parse", "options_doc"),
    ("gate", "assertions"),
    ("plugin", ""),
]

# (importer, imported) pairs allowed to run back up, each with its reason.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {
    ("progress", "stream.distributed"): "only rank 0 draws progress bars (lazy import)",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """Every package module that ``path`` imports, anywhere in the file."""
    name = module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" for a in node.names] + [module]
        else:
            continue
        for target in targets:
            target = target.removeprefix("pytest_qdm").lstrip(".")
            if target in modules and target != name:
                found.add(target)
                break  # `from pkg import module` names the module, not also the package
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) for name, path in files.items()}


def layer_of(module: str) -> int:
    best, level = -1, -1
    for index, entries in enumerate(LAYERS):
        for entry in entries:
            inside = module == entry or (entry != "" and module.startswith(entry + "."))
            if inside and len(entry) > best:
                best, level = len(entry), index
    return level


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, bs in graph.items() for b in bs if layer_of(b) > layer_of(a))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_every_module_has_a_layer():
    assert [m for m in import_graph() if layer_of(m) < 0] == []


def test_no_import_circles():
    assert circles(import_graph()) == []


def test_imports_run_down_the_layers():
    upward = upward_imports(import_graph())
    assert [pair for pair in upward if pair not in ALLOWED_UPWARD] == []
    assert len(ALLOWED_UPWARD) <= 3


def test_load_sits_below_run():
    assert layer_of("load.subject") < layer_of("run.audit") < layer_of("gate.session")
