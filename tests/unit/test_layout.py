"""The package layout keeps the architecture: who may import whom, and no import cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ledger", "scheduler")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue  # Alembic scripts are loaded by Alembic, not imported
            found[_module_name(path)] = path
    return found


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _imports(module: str, path: Path, *, top_level_only: bool) -> Iterator[str]:
    """Modules `module` imports (at top level only, or anywhere, e.g. lazily in a function)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    is_package = path.name == "__init__.py"
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, is_package)
            yield target
            yield from (f"{target}.{alias.name}" for alias in node.names)


def _internal(name: str, modules: dict[str, Path]) -> str | None:
    """The project module `name` refers to (a module, or the package of an imported name)."""
    while name:
        if name in modules:
            return name
        name, _, _ = name.rpartition(".")
    return None


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {_internal(n, modules) for n in _imports(module, path, top_level_only=True)}
        if not top_level_only:
            targets |= {_internal(n, modules) for n in _imports(module, path, top_level_only=False)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def test_ledger_never_imports_scheduler() -> None:
    """`ledger/` is the durable record; it knows nothing of the daemon, provider or command."""
    offenders = {
        (module, target)
        for module, targets in _graph(top_level_only=False).items()
        if module.split(".")[0] == "ledger"
        for target in targets
        if target.split(".")[0] == "scheduler"
    }
    assert offenders == set()


def test_provider_never_imports_ledger() -> None:
    """`scheduler.provider` speaks iletiMerkezi only; it can be used without a ledger."""
    offenders = {
        (module, target)
        for module, targets in _graph(top_level_only=False).items()
        if module.startswith("scheduler.provider")
        for target in targets
        if target.split(".")[0] == "ledger"
    }
    assert offenders == set()


def test_no_import_cycles_between_modules() -> None:
    """Top-level imports form no cycle (lazy imports inside functions are the way out)."""
    graph = _graph(top_level_only=True)
    # A package's __init__ re-exporting its own modules is the usual shape, not a cycle.
    edges = {
        module: {t for t in targets if not (module.endswith(t) or t.startswith(module + "."))}
        for module, targets in graph.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = iter(range(10**6))

    def visit(node: str) -> None:
        index[node] = low[node] = next(counter)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    assert cycles == []


@pytest.mark.parametrize("module", ["scheduler.provider.client", "scheduler.provider"])
def test_provider_client_loads_no_database_stack(module: str) -> None:
    """Importing the provider client does not load SQLAlchemy (nor the ledger)."""
    code = (
        f"import sys, {module}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'sqlmodel', "
        "'ledger')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    assert out.strip() == "[]"
