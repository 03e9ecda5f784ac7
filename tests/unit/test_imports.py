"""The import rules of the house, checked on the source with ``ast`` (no import runs, no server, no torch).

- ``producer`` never imports ``workers``, not even inside a function: the producer installs and
  runs without the worker side; ``segq`` joins the worker's commands through entry points.
- ``segq`` (the contract) imports neither side, nor an ML or media library.
- No import cycles among the project's modules: neither among the imports that run when a module
  is imported, nor once the imports inside functions count too (a circle hidden in a function is
  still two modules that need each other).
- ``producer`` and ``segq`` never import torch, transformers or OpenCV, and no PyAV, Pillow or
  numpy when they are imported; nor do the modules ``segq worker``'s parent process loads.

Every import counts: at module level, inside functions and classes, under ``try``. Importing
``a.b.c`` also runs the ``__init__`` of ``a`` and ``a.b``, so the graph has edges to those too
(except to the importing module's own packages, which are already being imported).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("segq", "producer", "workers")
#: Never imported by producer or segq, at any level.
ML_LIBRARIES = ("torch", "transformers", "cv2")
#: Not imported by producer or segq when they are imported (the base install lacks them).
WORKER_LIBRARIES = (*ML_LIBRARIES, "av", "PIL", "numpy")
#: Not imported by the contract at any level.
NOT_IN_CONTRACT = ("producer", "workers", "torch", "transformers", "cv2", "av")
#: What the `segq worker` parent process (the launcher) imports: never torch.
LAUNCHER_MODULES = ("workers.host.cli", "workers.host.launcher")


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    target: str  # the imported module (or, for `from x import name`, x.name when that is a module)
    line: int
    runtime: bool  # runs when the module is imported: not inside a function, not under TYPE_CHECKING

    @property
    def top(self) -> str:
        return self.target.split(".")[0]

    def where(self) -> str:
        return f"{module_files()[self.module].relative_to(ROOT)}:{self.line}"


@cache
def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _package_of(module: str) -> str:
    is_package = module_files()[module].name == "__init__.py"
    return module if is_package else module.rpartition(".")[0]


def _imports_in(module: str, node: ast.AST, runtime: bool) -> list[Import]:
    found = []
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import):
            found += [Import(module, alias.name, child.lineno, runtime) for alias in child.names]
        elif isinstance(child, ast.ImportFrom):
            base = child.module or ""
            if child.level:
                package = _package_of(module).split(".")
                package = package[:len(package) - (child.level - 1)]
                base = ".".join(package + ([child.module] if child.module else []))
            for alias in child.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if candidate in module_files() else base
                found.append(Import(module, target, child.lineno, runtime))
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            found += _imports_in(module, child, False)
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for stmt in child.body:
                found += _imports_in(module, ast.Module(body=[stmt], type_ignores=[]), False)
            for stmt in child.orelse:
                found += _imports_in(module, ast.Module(body=[stmt], type_ignores=[]), runtime)
        else:
            found += _imports_in(module, child, runtime)
    return found


@cache
def all_imports() -> tuple[Import, ...]:
    out = []
    for module, path in module_files().items():
        out += _imports_in(module, ast.parse(path.read_text(), filename=str(path)), True)
    return tuple(out)


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _ancestors(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts))}


@cache
def runtime_graph(lazy: bool = False) -> dict[str, dict[str, Import]]:
    """module -> {project module it imports when imported: the import statement}; with ``lazy``,
    the imports inside functions (and under ``TYPE_CHECKING``) too."""
    graph: dict[str, dict[str, Import]] = {m: {} for m in module_files()}
    for imp in all_imports():
        if not (imp.runtime or lazy) or imp.top not in PACKAGES:
            continue
        parts = imp.target.split(".")
        # Importing a.b.c runs a, a.b and a.b.c, except the importer's own (already running) packages.
        for i in range(1, len(parts) + 1):
            target = ".".join(parts[:i])
            if target in module_files() and target != imp.module and target not in _ancestors(imp.module):
                graph[imp.module].setdefault(target, imp)
    return graph


def _cycles(lazy: bool = False) -> list[list[str]]:
    """One cycle per strongly connected component (Tarjan) that has one."""
    graph = {m: sorted(t) for m, t in runtime_graph(lazy).items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(v: str) -> None:  # the graph is small: recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)

    cycles = []
    for component in components:
        members, start = set(component), component[0]
        # Shortest way back to start, inside the component (breadth first).
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in graph[v]:
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w in members and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle)
    return cycles


def _describe(cycle: list[str], lazy: bool = False) -> str:
    graph = runtime_graph(lazy)
    steps = [f"{a} -> {b} ({graph[a][b].where()})" for a, b in zip(cycle, cycle[1:])]
    return "\n    ".join(steps)


# ------------------------------------------------------------------------------------------------


def test_the_walk_sees_every_package_and_the_imports_inside_functions():
    modules = module_files()
    assert {"segq", "producer", "producer.cli", "producer.cli.jobs", "workers", "workers.host.cli"} <= set(modules)
    lazy = [i for i in all_imports() if i.module == "workers.host.cli" and not i.runtime]
    assert any(i.target == "workers.host.launcher" for i in lazy)  # `from workers import launcher` in a function


def test_the_producer_never_imports_workers():
    bad = [f"{i.where()}: {i.module} imports {i.target}" for i in all_imports()
           if _inside(i.module, "producer") and i.top == "workers"]
    assert not bad, "producer must not import workers (join commands via the segq.commands entry points):\n" \
        + "\n".join(bad)


def test_the_contract_imports_neither_side_nor_ml_or_media_libraries():
    bad = [f"{i.where()}: {i.module} imports {i.target}" for i in all_imports()
           if _inside(i.module, "segq") and i.top in NOT_IN_CONTRACT]
    assert not bad, "segq is the contract both sides share; it must not import:\n" + "\n".join(bad)


def test_no_import_cycles():
    cycles = _cycles()
    assert not cycles, "import cycles (imports that run at import time):\n" + "\n".join(
        f"  {' -> '.join(c)}\n    {_describe(c)}" for c in cycles)


def test_no_import_cycles_even_through_imports_inside_functions():
    cycles = _cycles(lazy=True)
    assert not cycles, "import cycles (counting the imports inside functions):\n" + "\n".join(
        f"  {' -> '.join(c)}\n    {_describe(c, lazy=True)}" for c in cycles)


def test_the_cycle_finder_finds_a_cycle_hidden_in_a_function(monkeypatch):
    """The check above can fail: a lazy import from segq.protocol back to segq.settings (which imports
    segq.protocol at module level) is a cycle of the full graph, not of the runtime one."""
    import sys

    real = all_imports()
    fake = Import("segq.protocol", "segq.settings", 1, runtime=False)
    monkeypatch.setattr(sys.modules[__name__], "all_imports", lambda: real + (fake,))
    runtime_graph.cache_clear()
    try:
        assert not _cycles()
        assert any({"segq.protocol", "segq.settings"} <= set(c) for c in _cycles(lazy=True))
    finally:
        runtime_graph.cache_clear()


def test_producer_and_contract_never_import_ml_libraries_and_no_worker_library_at_import():
    bad = []
    for i in all_imports():
        if not (_inside(i.module, "producer") or _inside(i.module, "segq")):
            continue
        if i.top in ML_LIBRARIES or (i.runtime and i.top in WORKER_LIBRARIES):
            bad.append(f"{i.where()}: {i.module} imports {i.target}" + ("" if i.runtime else " (in a function)"))
    assert not bad, "the producer and the contract run without the worker extra:\n" + "\n".join(bad)


def test_the_worker_launcher_parent_process_imports_no_ml_library():
    graph = runtime_graph()
    seen, todo = set(), list(LAUNCHER_MODULES)
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo += graph[module]
    bad = [f"{i.where()}: {i.module} imports {i.target}" for i in all_imports()
           if i.module in seen and i.runtime and i.top in WORKER_LIBRARIES]
    assert not bad, "`segq worker` (the launcher's parent) must not load torch and friends:\n" + "\n".join(bad)
