"""
The layout's promises, checked on the source with the standard library's ast.

- core/ is pure: it imports nothing that does I/O, nothing of hastaple outside
  core/ but ``hastaple.errors``, and calls no method that touches the disk;
- each package imports only the packages below it (``ALLOWED``), so the tree
  in docs/architecture.md is also the dependency order;
- that tree lists exactly the modules there are.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "hastaple"

#: Modules that do I/O, or start it: none may be imported by core/.
IO_MODULES = frozenset({
    "aiohttp", "asyncio", "fcntl", "ftplib", "glob", "http", "io", "mmap", "os", "pty",
    "select", "selectors", "shutil", "signal", "socket", "socketserver", "sqlite3", "ssl",
    "subprocess", "tempfile", "urllib", "uvloop", "watchfiles", "OpenSSL", "yarl",
    "prometheus_client", "rich", "click", "ctypes", "logging", "tomllib", "pwd",
})  # fmt: skip
#: Path methods that touch the disk: core/ may hold paths, never use them.
DISK_METHODS = frozenset({
    "read_bytes", "read_text", "write_bytes", "write_text", "open", "stat", "lstat",
    "exists", "is_dir", "is_file", "iterdir", "glob", "rglob", "mkdir", "unlink", "rmdir",
    "rename", "touch", "chmod", "resolve", "readlink", "symlink_to",
})  # fmt: skip

#: What each part of hastaple may import from hastaple (besides itself).
ALLOWED: dict[str, frozenset[str]] = {
    "errors": frozenset(),
    "core": frozenset({"errors"}),
    "config": frozenset({"errors", "core"}),
    "haproxy": frozenset({"errors", "core"}),
    "stores": frozenset({"errors", "core", "config"}),
    "sources": frozenset({"errors", "core", "haproxy", "stores"}),
    "sinks": frozenset({"errors", "core", "haproxy"}),
    "engine": frozenset({"errors", "core", "config", "haproxy", "stores", "sources", "sinks"}),
    "daemon": frozenset(
        {"errors", "core", "config", "haproxy", "stores", "sources", "sinks", "engine"}
    ),
    "testing": frozenset(),
    "app": frozenset(
        {
            "errors",
            "core",
            "config",
            "haproxy",
            "stores",
            "sources",
            "sinks",
            "engine",
            "daemon",
            "testing",
        }
    ),
    "__init__": frozenset(),
    "__main__": frozenset({"app"}),
}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _part(path: Path) -> str:
    first = path.relative_to(PACKAGE).parts[0]
    return first.removesuffix(".py")


def _imports(tree: ast.AST) -> list[str]:
    """Every module named by an import statement anywhere in ``tree`` (functions included)."""
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            if node.module == "hastaple":  # from hastaple import config, errors
                names += [f"hastaple.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_run_downward_only(path):
    part = _part(path)
    allowed = ALLOWED[part] | {part, "__version__"}  # from hastaple import __version__
    wrong = sorted(
        name
        for name in _imports(ast.parse(path.read_text()))
        if name.startswith("hastaple.") and name.split(".")[1] not in allowed
    )
    assert wrong == [], f"{part}/ may import only {sorted(allowed)}"


CORE = [p for p in _modules() if _part(p) == "core"]


@pytest.mark.parametrize("path", CORE, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_core_does_no_io(path):
    tree = ast.parse(path.read_text())
    io = sorted(n for n in _imports(tree) if n.split(".")[0] in IO_MODULES)
    assert io == [], "core/ must not import modules that do I/O"
    calls = sorted(
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in DISK_METHODS
    )
    assert calls == [], "core/ must not touch the disk"
    builtins = [
        n.func.id
        for n in ast.walk(tree)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Name)
        and n.func.id in {"open", "print", "input"}
    ]
    assert builtins == []


def test_the_checks_catch_what_they_forbid():
    """The two checks above can fail: an I/O import and an upward import are seen."""
    tree = ast.parse(
        "import os\ndef f():\n    from hastaple.engine import fetch\n    open('x').read()\n"
    )
    assert _imports(tree) == ["os", "hastaple.engine"]
    assert "engine" not in ALLOWED["core"]
    assert "os" in IO_MODULES


def _listed_tree(text: str) -> set[str]:
    """The module paths of the tree block in docs/architecture.md (two spaces per level)."""
    block = text.split("<!-- tree -->", 2)[1]
    stack: list[str] = []
    listed: set[str] = set()
    for line in block.splitlines():
        match = re.match(r"^( *)(\S+)", line)
        if match is None or line.startswith("```"):
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        del stack[depth:]
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
        elif name.endswith(".py"):
            listed.add("/".join([*stack, name]))
    return listed


def test_the_documented_tree_is_the_code():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    listed = _listed_tree(doc)
    actual = {"/".join(("hastaple", *p.relative_to(PACKAGE).parts)) for p in _modules()}
    assert sorted(actual - listed) == [], "modules missing from docs/architecture.md"
    assert sorted(listed - actual) == [], "docs/architecture.md lists modules that do not exist"
