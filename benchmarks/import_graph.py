"""The file-level import graph of imagewise: circles among a package's files, and sizes.

Every module under src/imagewise is parsed with ``ast`` (nothing is imported). An import of an
imagewise module is an edge wherever it stands: at module level, inside a function or class, or
under ``if TYPE_CHECKING:``. Relative imports are resolved, and ``from pkg import name`` is an
edge to ``pkg.name`` when that is a module, else to ``pkg`` (its ``__init__.py``). Importing
``a.b.c`` is an edge to ``a.b.c`` only, not to the packages above it.

Reported: the strongly connected components of more than one file (the circles), each under the
innermost package that holds all its files, with the imports inside it; the longest module and
the longest function (lines, ``def`` to its last line).

    .venv/bin/python benchmarks/import_graph.py                  # the report
    .venv/bin/python benchmarks/import_graph.py --json           # the same as JSON
    .venv/bin/python benchmarks/import_graph.py --fail-on-cycles # exit 1 when a circle exists
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent.parent / "src" / "imagewise"


@dataclass(frozen=True)
class Edge:
    """One import statement's import of a module of the tree by another."""

    importer: str
    imported: str
    line: int
    where: str  # "module", "function" (or class body) or "type_checking"


@dataclass
class Graph:
    """The modules of one package tree, their imports of each other and their sizes."""

    package: str
    files: dict[str, Path] = field(default_factory=dict)  # module name -> file
    edges: list[Edge] = field(default_factory=list)
    module_lines: dict[str, int] = field(default_factory=dict)
    function_lines: dict[str, int] = field(default_factory=dict)  # "module:Class.func" -> lines


def module_names(root: Path) -> dict[str, Path]:
    """Every ``.py`` file under ``root`` by its dotted module name (``root``'s name first)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Imports(ast.NodeVisitor):
    """Collects (target, line, where) for every import statement, resolving relative ones."""

    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.found: list[tuple[str, int, str]] = []
        self.depth = 0  # functions and classes entered
        self.type_checking = 0

    def _where(self) -> str:
        if self.type_checking:
            return "type_checking"
        return "function" if self.depth else "module"

    def _add(self, target: str, line: int) -> None:
        if target in self.known:
            self.found.append((target, line, self._where()))

    def _scope(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = visit_Lambda = _scope

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self.type_checking += 1
            for child in node.body:
                self.visit(child)
            self.type_checking -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            parts = self.package.split(".")
            base = ".".join(parts[: len(parts) - (node.level - 1)])
            source = f"{base}.{node.module}" if node.module else base
        else:
            source = node.module or ""
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            self._add(submodule if submodule in self.known else source, node.lineno)


def _function_sizes(module: str, tree: ast.Module) -> dict[str, int]:
    sizes = {}

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    last = child.end_lineno or child.lineno
                    sizes[f"{module}:{name}"] = last - child.lineno + 1
                walk(child, f"{name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return sizes


def build_graph(root: Path = SOURCE) -> Graph:
    """Parses every module under ``root`` (a package folder) into the import graph."""
    graph = Graph(root.name, module_names(root))
    known = set(graph.files)
    for module, path in graph.files.items():
        text = path.read_text(encoding="utf-8")
        tree = ast.parse(text, filename=str(path))
        graph.module_lines[module] = len(text.splitlines())
        graph.function_lines.update(_function_sizes(module, tree))
        visitor = _Imports(module, path.name == "__init__.py", known)
        visitor.visit(tree)
        graph.edges += sorted(  # one edge per statement and module imported
            {Edge(module, t, line, where) for t, line, where in visitor.found if t != module},
            key=lambda e: (e.line, e.imported),
        )
    return graph


def strongly_connected(nodes: list[str], edges: list[Edge]) -> list[list[str]]:
    """Tarjan's components of more than one node, each sorted, in a stable order."""
    successors: dict[str, set[str]] = defaultdict(set)
    for edge in edges:
        successors[edge.importer].add(edge.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []

    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(sorted(successors[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(successors[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        components.append(sorted(component))
    return sorted(components)


def _common_package(modules: list[str], packages: set[str]) -> str:
    parts = [m.split(".") for m in modules]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) > 1:
            break
        common.append(level[0])
    while ".".join(common) not in packages:  # a module's name shared by all: its package
        common.pop()
    return ".".join(common)


def report(root: Path = SOURCE) -> dict[str, Any]:
    """The circles per package, the counts, and the longest module and function."""
    graph = build_graph(root)
    packages = {m for m, p in graph.files.items() if p.name == "__init__.py"}
    cycles: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for component in strongly_connected(sorted(graph.files), graph.edges):
        members = set(component)
        inside = [e for e in graph.edges if e.importer in members and e.imported in members]
        cycles[_common_package(component, packages)].append(
            {
                "modules": component,
                "imports": [
                    f"{e.importer}:{e.line} -> {e.imported} ({e.where})"
                    for e in sorted(inside, key=lambda e: (e.importer, e.line, e.imported))
                ],
            }
        )
    longest_module = max(graph.module_lines, key=lambda m: (graph.module_lines[m], m))
    longest_function = max(graph.function_lines, key=lambda f: (graph.function_lines[f], f))
    where = defaultdict(int)
    for edge in graph.edges:
        where[edge.where] += 1
    return {
        "package": graph.package,
        "modules": len(graph.files),
        "imports": len(graph.edges),
        "imports_by_place": dict(sorted(where.items())),
        "cycles": sum(len(c) for c in cycles.values()),
        "cycles_by_package": {p: cycles[p] for p in sorted(cycles)},
        "longest_module": {"module": longest_module, "lines": graph.module_lines[longest_module]},
        "longest_function": {
            "function": longest_function,
            "lines": graph.function_lines[longest_function],
        },
    }


def format_report(result: dict[str, Any], show_imports: bool) -> str:
    places = ", ".join(f"{n} {w}" for w, n in result["imports_by_place"].items())
    lines = [
        f"{result['package']}: {result['modules']} modules, {result['imports']} imports of its "
        f"modules ({places})",
        f"cycles: {result['cycles']}",
    ]
    for package, components in result["cycles_by_package"].items():
        for component in components:
            short = [m.removeprefix(package + ".") for m in component["modules"]]
            lines.append(f"  {package}: {', '.join(short)}")
            if show_imports:
                lines += [f"      {i}" for i in component["imports"]]
    module, function = result["longest_module"], result["longest_function"]
    lines.append(f"longest module: {module['module']} ({module['lines']} lines)")
    lines.append(f"longest function: {function['function']} ({function['lines']} lines)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=SOURCE, help="the package folder")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--imports", action="store_true", help="list the imports in each cycle")
    parser.add_argument(
        "--fail-on-cycles", action="store_true", help="exit with status 1 when a cycle exists"
    )
    args = parser.parse_args(argv)
    result = report(args.root)
    print(json.dumps(result, indent=2) if args.json else format_report(result, args.imports))
    return 1 if args.fail_on_cycles and result["cycles"] else 0


if __name__ == "__main__":
    sys.exit(main())
