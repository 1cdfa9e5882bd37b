"""The package's architecture, checked from its source: layers import one way only (bottom to top),
no module imports another's private names, and the imports have no cycle.

The layers, bottom first (README, "Architecture"); a module may import its own layer and the ones
below it, never one above.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "streamclust"

#: Bottom first.  ``streamclust/__init__.py`` sits outside the order: it names the public API
#: lazily (by module path strings) and imports nothing at import time but ``importlib``.
LAYERS = [
    ("errors",),
    ("core",),
    ("io",),
    ("estimators",),
    ("analysis",),
    ("model",),
    ("report",),
    ("study",),
    ("datasets",),
    ("cli", "__main__"),
]
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, imported module, imported names)`` of every import in the module, at any depth
    (a function-level import is an import too); relative imports resolved."""
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([module] if module else []))
            names = [alias.name for alias in node.names]
            # "from streamclust.study import steps": the module streamclust.study.steps
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            found += [(node.lineno, sub, []) for sub in subs]
            found.append((node.lineno, module, [n for n in names if f"{module}.{n}" not in MODULES]))
    return [(line, mod, names) for line, mod, names in found if mod.split(".")[0] == "streamclust"]


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_has_a_layer():
    assert {m for m in MODULES if m != "streamclust" and _layer(m) not in RANK} == set()


def test_layers_import_downwards_only():
    upward = []
    for name, path in MODULES.items():
        if name == "streamclust":
            continue
        for line, module, _ in _imports(name, path):
            target = _layer(module)
            if target is None:  # "from streamclust import __version__"
                continue
            if RANK[target] > RANK[_layer(name)]:
                upward.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {module} ({target} is above "
                              f"{_layer(name)})")
    assert upward == []


def test_no_private_name_imported_across_modules():
    private = []
    for name, path in MODULES.items():
        for line, module, names in _imports(name, path):
            if module == name:
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            private += [f"{where} imports {module}.{n}" for n in names if n.startswith("_") and not n.startswith("__")]
            if any(part.startswith("_") and not part.startswith("__") for part in module.split(".")):
                private.append(f"{where} imports from the private module {module}")
    assert private == []


def test_no_import_cycle():
    graph = {name: {m for _, m, _ in _imports(name, path) if m in MODULES and m != name}
             for name, path in MODULES.items()}
    # a package's __init__ re-exporting its modules is not a cycle with them
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_function_over_120_lines(name):
    """Long functions hide their steps; the CLI's declarative parser is the one exception."""
    long = []
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > 120 and (name, node.name) != ("streamclust.cli", "build_parser"):
                long.append(f"{node.name}: {lines} lines")
    assert long == []
