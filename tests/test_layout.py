"""The package layout: no import cycle inside gateway/, and no test double in the wheel.

Every import counts, wherever it is written (module level, under TYPE_CHECKING, inside a
function): a cycle that only type hints close still ties two modules into one.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "gateway"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the gateway modules it imports (a `from pkg import mod` names the module)."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # `from pkg import mod` imports the module mod; `from mod import name`, mod
                targets = [
                    f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names
                ]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_sees_a_type_only_cycle(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(graph) == [["a", "b"]]


def test_no_import_cycle_inside_gateway() -> None:
    graph = import_graph()
    assert "gateway.proxy" in graph and "gateway.accounting.pricing" in graph["gateway.proxy"]
    assert cycles(graph) == [], "import cycles inside gateway/ (each list is one cycle)"


def test_the_wheel_holds_no_test_double() -> None:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = cfg["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = find_packages(str(ROOT), include=include)
    assert "gateway" in packages and "gateway.routing" in packages
    assert not [p for p in packages if p.startswith("tests") or "testing" in p.split(".")]
    shipped = [p for pkg in packages for p in (ROOT / pkg.replace(".", "/")).glob("*.py")]
    assert not [p for p in shipped if "class FakeUpstream" in p.read_text()]


def test_architecture_names_every_module() -> None:
    """ARCHITECTURE.md's module table names every module and folder of the package."""
    text = (ROOT / "ARCHITECTURE.md").read_text()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if path.name == "__init__.py" or any(part in text for part in _names(rel)):
            continue
        missing.append(str(rel))
    assert missing == [], "modules missing from ARCHITECTURE.md"


def _names(rel: Path) -> list[str]:
    """The ways the table may name a module: its path, or a folder it sits in."""
    names = [str(rel)]
    for parent in rel.parents:
        if parent != Path(".") and parent != Path("gateway"):
            names.append(f"{parent}/`")
    return names
