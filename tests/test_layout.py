"""The package's layout keeps the promises docs/architecture.md makes.

Imports point one way, down the layers its table lists; every error raised for the user is an
``assl.ASSLError``; layer types are declared in one place; the public API is ``assl.__all__`` and
no public name hides a submodule.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import assl

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "assl"


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


def _layers() -> list[list[str]]:
    """The layers of docs/architecture.md's table, top first: each a list of module prefixes."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    block = text.split("<!-- layers -->")[1].split("<!-- end layers -->")[0]
    rows = [line for line in block.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    return [re.findall(r"`([\w.]+)`", row.split("|")[2]) for row in rows]


def _place(module: str, layers: list[list[str]]) -> tuple[int, str]:
    """The layer of ``module`` and the table entry (longest prefix) it belongs to."""
    best: tuple[int, str] | None = None
    for i, entries in enumerate(layers):
        for entry in entries:
            if (module == entry or module.startswith(entry + ".")) and (best is None or len(entry) > len(best[1])):
                best = (i, entry)
    assert best is not None, f"{module} is in no layer of docs/architecture.md: add it to the table"
    return best


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


def _violations(imports: dict[str, set[str]], layers: list[list[str]]) -> list[str]:
    """Imports that do not point down ``layers`` (top first); imports inside one entry are free."""
    bad = []
    for module, targets in imports.items():
        mine, entry = _place(module, layers)
        for target in targets:
            theirs, other = _place(target, layers)
            if entry != other and theirs <= mine:
                bad.append(f"{module} (layer {mine + 1}) imports {target} (layer {theirs + 1})")
    return sorted(bad)


def test_the_graph_and_the_slimmer_import_nothing_of_tracing_or_the_pruner():
    graph = _imports()
    for module in ("assl.graph", "assl._slim", "assl.layers", "assl.serialization._format"):
        bad = {m for m in graph[module] if m.startswith(("assl.tracing", "assl.pruning"))}
        assert not bad, f"{module} imports {bad}"
    rules = [m for m in graph if m.startswith("assl.tracing.") and m.endswith(("_rules", "elementwise", "spatial"))]
    assert len(rules) == 6  # layer, shape, size and param rules, elementwise, spatial
    for module in rules:
        assert "assl.tracing.tracer" not in graph[module], f"{module} imports the tracer back"


def test_every_import_points_down_the_layers_of_the_architecture_doc():
    layers = _layers()
    assert len(layers) >= 5 and all(layers), layers
    bad = _violations(_imports(), layers)
    assert not bad, "imports that do not point down docs/architecture.md's layers:\n" + "\n".join(bad)


def test_the_direction_check_catches_an_import_up_or_sideways():
    layers = [["assl.top"], ["assl.mid", "assl.side"], ["assl.low"]]
    assert _violations({"assl.top": {"assl.mid", "assl.low"}, "assl.mid.a": {"assl.mid.b"}}, layers) == []
    assert _violations({"assl.low": {"assl.top"}}, layers) == ["assl.low (layer 3) imports assl.top (layer 1)"]
    assert _violations({"assl.mid": {"assl.side.x"}}, layers) == ["assl.mid (layer 2) imports assl.side.x (layer 2)"]


def test_errors_raised_for_the_user_are_assl_errors():
    """No ``raise ValueError(...)`` and the like: every raised class derives from ASSLError.

    ``ImportError`` (a missing optional framework) and ``AttributeError`` (a module's ``__getattr__``)
    keep their meaning and are allowed.
    """
    builtin_errors = {"Exception", "ValueError", "TypeError", "RuntimeError", "KeyError", "IndexError", "LookupError"}
    bad = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and isinstance(node.exc.func, ast.Name):
                name = node.exc.func.id
                if name in builtin_errors:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} raises {name}")
    assert not bad, "\n".join(bad)
    for name in assl.__all__:
        obj = getattr(assl, name)
        if isinstance(obj, type) and issubclass(obj, Exception) and not issubclass(obj, Warning):
            assert issubclass(obj, assl.ASSLError), name
            assert obj is assl.ASSLError or issubclass(obj, (ValueError, TypeError)), name


def test_layer_types_are_declared_only_in_layers_py():
    """A tuple of torch layer classes is written once, in assl/layers.py."""
    bad = []
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "layers.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Tuple):
                layer_classes = [
                    e
                    for e in node.elts
                    if isinstance(e, ast.Attribute)
                    and isinstance(e.value, ast.Name)
                    and e.value.id == "nn"
                    and e.attr[0].isupper()
                ]
                if len(layer_classes) >= 2:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not bad, "tuples of layer classes outside assl/layers.py: " + ", ".join(bad)


def test_the_public_api_fits_one_list_and_hides_no_submodule():
    assert sorted(assl.__all__) == sorted(set(assl.__all__))
    for name in assl.__all__:
        assert hasattr(assl, name), name
    submodules = {p.stem for p in PACKAGE.glob("*.py")} | {p.name for p in PACKAGE.iterdir() if p.is_dir()}
    for name in submodules - {"__init__", "__pycache__"}:
        value = getattr(assl, name, None)
        assert value is None or type(value).__name__ == "module", f"assl.{name} hides the submodule {name}"


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
