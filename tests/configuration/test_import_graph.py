"""The house's import rules, read from the checkout's source (ast: nothing is imported).

(a) The sandbox stands alone: no file under sandbox/ imports the pipeline (`shipyard.*`, or the
    folders `flows`, `tasks`, `blocks`, `deployments` by their checkout names), anywhere in
    the file: it checks the pipeline, it does not share it.
(b) The layers point one way: tasks/ (one module per outside system) imports no block, flow or
    deployment; blocks/ no flow or deployment; flows/ no deployment. Shipped code never imports
    the checkout-only `sandbox`, except the CLI's sandbox/demo commands (deployments/cli/,
    deployments/demo/), lazily: inside a function (or for types only, under TYPE_CHECKING), so
    a wheel without the sandbox still loads every module.
(c) No import cycle among the shipped modules, counting what runs at import time: imports at
    module level (class bodies and try blocks included), not those inside functions or under
    `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ("flows", "tasks", "blocks", "deployments")  # folders installed as shipyard.<folder>
PIPELINE = ("shipyard", *SHIPPED)  # what the sandbox must not import, by either name
SANDBOX_ALLOWED_IN = ("deployments/cli/", "deployments/demo/")
# layer -> the shipyard packages it must not import
LAYERS = {
    "tasks": ("shipyard.blocks", "shipyard.flows", "shipyard.deployments"),
    "blocks": ("shipyard.flows", "shipyard.deployments"),
    "flows": ("shipyard.deployments",),
}


@dataclass(frozen=True)
class Import:
    file: str  # relative to the checkout
    line: int
    module: str  # absolute, as the import names it (relative imports resolved)
    names: tuple[str, ...]  # `from module import names` (empty for `import module`)
    in_function: bool
    type_checking: bool

    @property
    def targets(self) -> list[str]:
        """What it may load, under the wheel's names: the module, and `module.name` for each
        name (a submodule when there is one: `from shipyard import blocks` imports blocks)."""
        module = _shipyard_name(self.module)
        return [module, *(f"{module}.{name}" for name in self.names)]

    @property
    def at_import_time(self) -> bool:
        return not (self.in_function or self.type_checking)

    def __str__(self) -> str:
        what = f"from {self.module} import {', '.join(self.names)}" if self.names else self.module
        where = " (in a function)" if self.in_function else ""
        where += " (under TYPE_CHECKING)" if self.type_checking else ""
        return f"{self.file}:{self.line}: {what}{where}"


def _module_name(path: Path) -> str:
    """The import name of a checkout file: shipped folders under `shipyard.`."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    if parts[0] in SHIPPED:
        parts.insert(0, "shipyard")
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _dynamic_import(node: ast.Call) -> str | None:
    """`importlib.import_module("x")` / `__import__("x")` with a literal name: an import too."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if name not in ("import_module", "__import__") or not node.args:
        return None
    first = node.args[0]
    return first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else None


def imports_of(path: Path) -> Iterator[Import]:
    """Every import of a file, with where it sits (function body, TYPE_CHECKING block)."""
    rel = path.relative_to(ROOT).as_posix()
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(), filename=rel)

    def visit(node: ast.AST, in_function: bool, type_checking: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(rel, node.lineno, alias.name, (), in_function, type_checking)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            names = tuple(alias.name for alias in node.names)
            yield Import(rel, node.lineno, base, names, in_function, type_checking)
        elif isinstance(node, ast.Call) and (name := _dynamic_import(node)):
            yield Import(rel, node.lineno, name, (), in_function, type_checking)
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from visit(child, in_function, True)
            for child in node.orelse:
                yield from visit(child, in_function, type_checking)
            return
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, inner, type_checking)

    yield from visit(tree, False, False)


def _files(*folders: str) -> list[Path]:
    return sorted(
        path
        for folder in folders
        for path in (ROOT / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    )


def _top(module: str) -> str:
    return module.split(".", 1)[0]


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _shipyard_name(module: str) -> str:
    """`flows.x` (a checkout name that ruff's TID rule bans) counts as `shipyard.flows.x`."""
    return f"shipyard.{module}" if _top(module) in SHIPPED else module


def _failures(problems: list[str], rule: str) -> str:
    return f"{rule}:\n  " + "\n  ".join(problems)


# -- (a) ----------------------------------------------------------------------------------------


def test_the_sandbox_imports_nothing_of_the_pipeline():
    problems = [
        f"{imp}: the sandbox must not import the pipeline ({_top(imp.module)})"
        for path in _files("sandbox")
        for imp in imports_of(path)
        if _top(imp.module) in PIPELINE
    ]
    assert not problems, _failures(problems, "sandbox/ imports the pipeline")


# -- (b) ----------------------------------------------------------------------------------------


def test_the_layers_import_one_way():
    problems = []
    for layer, banned in LAYERS.items():
        for path in _files(layer):
            for imp in imports_of(path):
                hit = next((b for b in banned for t in imp.targets if _under(t, b)), None)
                if hit is not None:
                    problems.append(f"{imp}: {layer}/ must not import {hit}")
    assert not problems, _failures(problems, "a layer imports one above it")


def test_only_the_cli_imports_the_sandbox_and_only_inside_functions():
    problems = []
    for path in _files(*SHIPPED):
        rel = path.relative_to(ROOT).as_posix()
        for imp in imports_of(path):
            if _top(imp.module) != "sandbox":
                continue
            if not rel.startswith(SANDBOX_ALLOWED_IN):
                problems.append(
                    f"{imp}: only the CLI's sandbox/demo commands ({', '.join(SANDBOX_ALLOWED_IN)}) "
                    "may import the checkout-only sandbox"
                )
            elif imp.at_import_time:
                problems.append(
                    f"{imp}: import the sandbox inside the function that needs it (a wheel has "
                    "no sandbox: the module must load without it)"
                )
    assert not problems, _failures(problems, "shipped code imports the sandbox")


# -- (c) ----------------------------------------------------------------------------------------


def import_graph() -> dict[str, set[str]]:
    """Shipped module -> the shipped modules it imports at import time. `from pkg import name`
    goes to pkg.name when that is a module, else to pkg (its __init__)."""
    files = {_module_name(path): path for path in _files(*SHIPPED)}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        for imp in imports_of(path):
            if not imp.at_import_time:
                continue
            module = _shipyard_name(imp.module)
            targets = [f"{module}.{n}" for n in imp.names if f"{module}.{n}" in files]
            if not targets or len(targets) < len(imp.names):
                targets.append(module)
            graph[name].update(t for t in targets if t in files and t != name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a path back to its start) per strongly connected component (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
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

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return [_cycle_in(graph, set(component), component[0]) for component in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str], start: str) -> list[str]:
    """The shortest path from `start` back to itself inside its component (breadth first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    return [start]


def test_find_cycles_reports_the_path():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_the_shipped_modules():
    cycles = find_cycles(import_graph())
    problems = [" -> ".join(cycle) for cycle in cycles]
    assert not problems, _failures(problems, "import cycles (module-level imports)")
