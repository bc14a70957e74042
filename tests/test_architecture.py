"""The layering of the package (docs/architecture.md): which subpackage may import which, no
import cycle (function-level imports included), and ``import eqpdenet`` stays a library import."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import eqpdenet

SRC = Path(eqpdenet.__file__).resolve().parent

#: What each part may import from eqpdenet (besides itself); ``eqpdenet`` is the facade.
ALLOWED = {
    "errors": set(),
    "files": set(),
    "process_state": {"errors"},
    "registry": {"errors"},
    "checks": {"errors"},
    "geometry": {"checks", "errors"},
    "kernels": {"errors", "process_state", "registry", "checks"},
    "pde": {"errors", "process_state", "registry", "checks", "geometry", "kernels"},
    "data": {"errors", "files", "process_state", "registry", "checks", "geometry"},
    "models": {"errors", "process_state", "registry", "checks", "geometry", "kernels", "pde"},
    "analysis": {"errors", "process_state", "registry", "checks", "geometry", "kernels", "pde",
                 "models", "data"},
    "export": {"errors", "files", "process_state", "registry", "checks", "geometry", "kernels",
               "pde", "models"},
    "app": {"eqpdenet", "errors", "files", "process_state", "registry", "checks", "geometry",
            "kernels", "pde", "data", "models", "analysis", "export"},
    "eqpdenet": {"errors", "process_state", "registry", "checks", "geometry", "kernels", "pde",
                 "data", "models"},
    "__main__": {"app"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every eqpdenet module imported anywhere in the file (function bodies included)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "eqpdenet"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "eqpdenet":
                continue
            # "from pkg import mod" imports a submodule when one exists
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                if (SRC.parent / Path(*candidate.split("."))).with_suffix(".py").exists() or (
                        SRC.parent / Path(*candidate.split(".")) / "__init__.py").exists():
                    found.add(candidate)
                else:
                    found.add(target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in SRC.rglob("*.py")}


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "eqpdenet"


def test_every_import_respects_the_layering():
    bad = []
    for module, targets in graph().items():
        for target in targets:
            if part(target) != part(module) and part(target) not in ALLOWED[part(module)]:
                bad.append(f"{module} imports {target}")
    assert not bad, "\n".join(sorted(bad))


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Cycles of a directed graph, by depth-first search."""
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle_anywhere():
    cycles = find_cycles(graph())
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_finder_finds_cycles():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_checker_sees_function_level_imports(tmp_path):
    """The graph includes imports inside functions (a cycle hidden there is still a cycle)."""
    assert "eqpdenet.pde.symbolic" not in graph()["eqpdenet.pde"]
    assert "eqpdenet.kernels" in graph()["eqpdenet.pde.layer"]
    assert any(t.startswith("eqpdenet.app") for t in graph()["eqpdenet.app.cli"])


def test_import_eqpdenet_loads_no_application_module_and_no_matplotlib():
    code = ("import sys, eqpdenet\n"
            "mods = sorted(m for m in sys.modules if m.startswith('eqpdenet'))\n"
            "assert not [m for m in mods if m.startswith('eqpdenet.app')], mods\n"
            "assert 'matplotlib' not in sys.modules\n"
            "assert 'sympy' not in sys.modules\n"
            "assert 'triton' not in sys.modules  # optional; imported when a GPU kernel runs\n")
    env = dict(os.environ, PYTHONPATH=str(SRC.parent))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
