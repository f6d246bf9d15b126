"""How the package holds together: no import cycles (imports inside functions count),
dependencies that point down the stages, the environment read in one place, and an
`imgrag --help` that loads nothing heavy."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import imgrag

SRC = Path(imgrag.__file__).resolve().parent
# Lower stages first: a module may import its own package and anything of a lower stage.
STAGES = {
    "errors": 0, "config": 0.5, "priority": 0,
    "photos": 1, "store": 1.5,
    "providers": 2,
    "describe": 3,
    "index": 4,
    "search": 5, "status": 5,
    "library": 5.5,
    "ask": 6, "pipeline": 6, "demo": 6,
    "watch": 6.5,
    "cli": 7, "web": 7, "mcp_server": 7,
    "__main__": 8,
}
ALSO_ALLOWED = {
    ("cli", "web"),  # `imgrag serve` starts the server
    ("cli", "mcp_server"),  # `imgrag mcp` starts the MCP server
    ("mcp_server", "web"),  # the MCP server is `imgrag serve`'s state, guard and thumbnails without the page
}
HEAVY = {"numpy", "faiss", "fastapi", "torch", "onnxruntime", "PIL", "sentence_transformers", "starlette"}


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The imgrag modules `path` imports anywhere in its code (not under TYPE_CHECKING)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.update(f"{node.module}.{a.name}" for a in node.names)
    out = set()
    for name in names:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name.startswith("imgrag."):
            out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_dependencies_point_down_the_stages():
    wrong = []
    for a, targets in graph().items():
        for b in targets:
            stage_a, stage_b = a.split(".")[1] if "." in a else "", b.split(".")[1] if "." in b else ""
            if not stage_a or not stage_b or stage_a == stage_b or (stage_a, stage_b) in ALSO_ALLOWED:
                continue
            if STAGES[stage_b] >= STAGES[stage_a]:
                wrong.append(f"{a} -> {b}")
    assert not wrong, "imports against the stages: " + ", ".join(sorted(wrong))


def test_the_environment_is_read_in_config_only():
    reads = re.compile(r"os\.environ\.get\(|os\.getenv\(|os\.environ\[|environ\.get\(")
    found = [f"{path.relative_to(SRC)}:{n}" for path in SRC.rglob("*.py") if path.name != "config.py"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1) if reads.search(line)]
    assert not found, f"environment read outside config.py: {found}"


def test_help_loads_nothing_heavy(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGRAG_")}
    code = "import runpy, sys\nsys.argv = ['imgrag', '--help']\ntry:\n    runpy.run_module('imgrag', run_name='__main__')\n" \
           "except SystemExit:\n    pass\nprint(' '.join(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    loaded = set(proc.stderr.split())
    assert "Usage" in proc.stdout and "typer" in loaded
    assert not loaded & HEAVY, f"imgrag --help loaded {sorted(loaded & HEAVY)}"
