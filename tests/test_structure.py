"""The package's import graph: no module imports, at load time, a module that imports it back (directly or
through others). Imports inside functions (deferred until called, e.g. torch-free config validation reading the
task readers) are not load-time edges and are left out."""

from __future__ import annotations

import ast

from tests.conftest import REPO


def _module_graph() -> dict[str, set[str]]:
    pkg = REPO / "harness"
    names = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__") for p in pkg.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for p in pkg.rglob("*.py"):
        name = ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        deps: set[str] = set()
        for node in ast.parse(p.read_text(encoding="utf-8")).body:  # module level only
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "harness":
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names} & names  # `from harness import x` (a module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "harness"}
        graph[name] = (deps & names) - {name}  # a package importing its own submodules is no cycle
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of the graph as a path (its first module repeated at the end), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep, path + [dep])):
                return found
        state[node] = 2
        return None

    for mod in sorted(graph):
        if mod not in state and (found := visit(mod, [mod])):
            return found
    return None


def test_no_module_imports_itself_back_at_load_time():
    graph = _module_graph()
    assert "harness.report.render" in graph and "harness.config" in graph  # the walk found the package
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    # the check itself finds a cycle two modules away
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_entry_points_are_thin_and_no_library_code_imports_one():
    """harness/run.py is the command line only (its one function is main); builders live in harness.runner, so
    the benchmarks, the search and the evaluation-only path import a library module, never an entry point."""
    run = ast.parse((REPO / "harness" / "run.py").read_text(encoding="utf-8"))
    assert [n.name for n in run.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))] == ["main"]
    offenders = []
    for folder in ("harness", "bench"):
        for p in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.ImportFrom) and node.module == "harness.run") or (
                        isinstance(node, ast.Import) and any(a.name == "harness.run" for a in node.names)):
                    offenders.append(str(p.relative_to(REPO)))
    assert not offenders, offenders
