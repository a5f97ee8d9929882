"""The package's layout keeps its promises: imports point one way and files stay small."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "assl"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (at run time or for type checking)."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    out: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = (base + "." + node.module if node.module else base) if node.level else (node.module or "")
                candidates = [target, *(f"{target}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            found.update(c for c in candidates if c in modules and c != name)
        out[name] = found
    return out


def test_no_import_cycle_inside_the_package():
    graph = _imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if nxt == "assl" or nxt == node.rpartition(".")[0]:
                continue  # a package's __init__ re-exports its modules; importing it is not a cycle
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*path, node, nxt])
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_the_graph_and_the_slimmer_import_nothing_of_tracing_or_the_pruner():
    graph = _imports()
    for module in ("assl.graph", "assl.slim", "assl.layers", "assl.io"):
        bad = {m for m in graph[module] if m.startswith(("assl.tracing", "assl.pruner"))}
        assert not bad, f"{module} imports {bad}"
    rules = [m for m in graph if m.startswith("assl.tracing.") and m.endswith(("_rules", "elementwise", "spatial"))]
    assert len(rules) == 6  # layer, shape, size and param rules, elementwise, spatial
    for module in rules:
        assert "assl.tracing.tracer" not in graph[module], f"{module} imports the tracer back"


def test_no_module_over_400_lines_and_no_class_over_300():
    for path in PACKAGE.rglob("*.py"):
        source = path.read_text()
        assert source.count("\n") <= 400, f"{path.name} has {source.count(chr(10))} lines"
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                assert length <= 300, f"class {node.name} in {path.name} has {length} lines"


def test_only_the_integrations_import_their_frameworks():
    """``import assl`` must work, and stay light, without Lightning installed."""
    frameworks = ("lightning", "pytorch_lightning")
    for path in PACKAGE.rglob("*.py"):
        name = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
            else:
                continue
            for target in targets:
                if target.split(".")[0] in frameworks:
                    assert name == "assl.integrations.lightning", f"{name} imports {target}"
    graph = _imports()
    assert not any(m.startswith("assl.integrations") for m in graph["assl"])
