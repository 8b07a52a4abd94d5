"""The seams between the fetch and storage modules that their users rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_storage_writer_modules_load_no_aiohttp() -> None:
    """A writer's child process imports its module: it shares the fetcher's plain data
    (crawler.response) but must not pay for aiohttp (nor for a copy of its constants)."""
    code = "import sys, crawler.bodies, crawler.warc; print('aiohttp' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The crawler modules ``path`` imports anywhere (top level, functions, TYPE_CHECKING)."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules
            found |= subs
            if node.module in modules and len(subs) < len(node.names):
                found.add(node.module)
    found.discard(module)
    return found


def test_no_import_cycles() -> None:
    """The modules import each other one way only, even inside functions: a cycle is two
    modules that cannot be understood (or split) apart. The package itself (``crawler``)
    only re-exports, loaded on first use: it is not followed."""
    files = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
        for p in (ROOT / "crawler").rglob("*.py")
    }
    names = set(files)
    graph = {m: _imports(p, m, names) for m, p in files.items()}
    graph["crawler"] = set()
    state: dict[str, int] = {}  # 1: on the path being walked, 2: done

    def walk(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                cycle = [*path[path.index(other) :], other] if other in path else [other]
                raise AssertionError(f"import cycle: {' -> '.join(cycle)}")
            if other not in state:
                walk(other, [*path, other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            walk(module, [module])
