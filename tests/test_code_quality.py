"""The code stays ruff- and mypy-clean (configuration in pyproject.toml), and its
layers import only downward: protocol <- fs <- smb <- node <- cli, with the bus
knowing nothing of the gateway (docs/architecture.md draws them)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

PACKAGES = ("gateway", "oplock_bus", "clients")

# (importing layer, imported layer): imports that must not exist. A layer is a
# module name prefix; "gateway.node" also covers what only the node composes.
FORBIDDEN = [
    ("gateway.protocol", "gateway.fs"),
    ("gateway.protocol", "gateway.smb"),
    ("gateway.protocol", "gateway.node"),
    ("gateway.fs", "gateway.smb"),
    ("gateway.fs", "gateway.node"),
    ("gateway.smb", "gateway.node"),
    ("gateway.smb", "gateway.cli"),
    ("gateway.smb", "gateway.cluster"),
    ("oplock_bus", "gateway"),
    # The project's clients speak the wire, never through the server's own code.
    ("clients", "gateway.smb"),
    ("clients", "gateway.fs"),
    ("clients", "gateway.node"),
]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_ruff() -> None:
    result = _run("ruff", "check", "gateway", "oplock_bus", "clients", "tests", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy() -> None:
    result = _run("mypy", "gateway", "oplock_bus", "clients", "bench")
    assert result.returncode == 0, result.stdout + result.stderr


# -- the import graph ----------------------------------------------------------------


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in sorted((REPO / pkg).rglob("*.py"))}


def _imports(name: str, is_package: bool, source: str, known: set[str]) -> set[str]:
    """Every project module ``name`` imports, wherever the import stands: at the
    top, inside a function (lazy) or under ``if TYPE_CHECKING``."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # ``from pkg import mod`` imports the module; ``from mod import name`` the module.
            targets = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known]
            targets.append(module)
        else:
            continue
        for target in targets:
            # An unknown tail is a name in a module, not a module.
            while target and target not in known:
                target = target.rpartition(".")[0]
            # A module's own packages are initialised before it runs: no edge.
            if target and not _in(name, target):
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {
        name: _imports(name, path.name == "__init__.py", path.read_text(), known)
        for name, path in modules.items()
    }


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None (a depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def _in(module: str, layer: str) -> bool:
    return module == layer or module.startswith(layer + ".")


def test_import_graph_has_no_cycle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_layers_import_only_downward() -> None:
    wrong = sorted(
        f"{src} imports {dst}"
        for src, targets in _graph().items()
        for dst in targets
        for low, high in FORBIDDEN
        if _in(src, low) and _in(dst, high)
    )
    assert not wrong, "\n".join(wrong)


def test_the_graph_check_sees_lazy_and_type_checking_imports() -> None:
    """The checks above would pass on a parser that missed imports: prove it does not."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from ..smb import state\n"
        "def f():\n    from ..node import Node\n"
        "from . import vfs\n"
        "import gateway.protocol.wire\n"
    )
    found = _imports("gateway.fs.caseindex", False, source, set(_modules()))
    assert found == {
        "gateway.smb",
        "gateway.smb.state",
        "gateway.node",
        "gateway.fs.vfs",
        "gateway.protocol.wire",
    }
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
