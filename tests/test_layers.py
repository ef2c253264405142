"""The import graph of src/dpokit runs one way.

Every import counts: at module level, inside functions and under ``TYPE_CHECKING``. Importing
``a.b.c`` runs the ``__init__`` of ``a`` and ``a.b`` too, so an edge to a module is also an edge to
each package above it. The graph must have no cycle, ``config`` and ``errors`` import nothing of
dpokit, ``eval`` never reaches ``train`` or ``online``, and the lower layers never import the upper.
"""

import ast
import os

import pytest

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "dpokit")


def module_name(path):
    rel = os.path.relpath(path, os.path.dirname(SRC))[:-3].split(os.sep)
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def modules():
    out = {}
    for root, _, files in os.walk(SRC):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(root, name)
                out[module_name(path)] = path
    return out


def resolve(current, is_package, node, known):
    """Modules of dpokit an import statement executes (the module and the packages above it)."""
    targets = []
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    elif node.level == 0:
        base = node.module or ""
        targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
    else:
        parts = current.split(".") if is_package else current.split(".")[:-1]
        parts = parts[:len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
        targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in targets:
        if not target.startswith("dpokit"):
            continue
        pieces = target.split(".")
        for i in range(2, len(pieces) + 1):  # the packages above run first; "dpokit" itself is trivial
            prefix = ".".join(pieces[:i])
            if prefix in known:
                found.add(prefix)
    return found


def import_graph():
    known = modules()
    graph = {}
    for name, path in known.items():
        tree = ast.parse(open(path, encoding="utf-8").read())
        edges = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= resolve(name, path.endswith("__init__.py"), node, known)
        edges.discard(name)
        # a module's own package runs before it: not a dependency of the module on its package
        graph[name] = {e for e in edges if not name.startswith(e + ".")}
    return graph


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def reaches(graph, start):
    seen, todo = set(), [start]
    while todo:
        for w in graph.get(todo.pop(), ()):
            if w not in seen:
                seen.add(w)
                todo.append(w)
    return seen


GRAPH = import_graph()


def in_package(module, package):
    return module == package or module.startswith(package + ".")


def test_the_graph_is_read():
    assert len(GRAPH) > 60
    assert "dpokit.scoring.lm.engine" in GRAPH["dpokit.train.trainer"] or \
        "dpokit.scoring" in GRAPH["dpokit.train.trainer"]
    assert "dpokit.config" in GRAPH["dpokit.preflight"]


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("leaf", ["dpokit.config", "dpokit.errors"])
def test_leaves_import_nothing_of_dpokit_but_errors(leaf):
    allowed = {"dpokit.errors"}
    assert GRAPH[leaf] <= allowed, GRAPH[leaf] - allowed


# lower -> what it must never reach (directly or through others)
FORBIDDEN = [
    ("dpokit.eval", ("dpokit.train", "dpokit.online", "dpokit.cli", "dpokit.tasks")),
    ("dpokit.losses", ("dpokit.scoring", "dpokit.train", "dpokit.online", "dpokit.eval", "dpokit.data",
                       "dpokit.reference", "dpokit.cli")),
    ("dpokit.data", ("dpokit.scoring", "dpokit.losses", "dpokit.train", "dpokit.online", "dpokit.eval",
                     "dpokit.reference", "dpokit.cli")),
    ("dpokit.scoring", ("dpokit.train", "dpokit.online", "dpokit.eval", "dpokit.reference", "dpokit.cli",
                        "dpokit.tasks")),
    ("dpokit.reference", ("dpokit.train", "dpokit.online", "dpokit.eval", "dpokit.cli", "dpokit.tasks")),
    ("dpokit.preference", ("dpokit.train", "dpokit.online", "dpokit.eval", "dpokit.tasks", "dpokit.cli")),
    ("dpokit.distributed", ("dpokit.reference", "dpokit.scoring", "dpokit.train", "dpokit.online", "dpokit.data")),
    ("dpokit.train", ("dpokit.online.loop", "dpokit.online.refresh", "dpokit.cli", "dpokit.tasks")),
    ("dpokit.online", ("dpokit.cli", "dpokit.tasks")),
]


@pytest.mark.parametrize("lower, upper", FORBIDDEN, ids=[lower for lower, _ in FORBIDDEN])
def test_imports_run_one_way(lower, upper):
    bad = []
    for module in GRAPH:
        if not in_package(module, lower):
            continue
        for target in reaches(GRAPH, module):
            if any(in_package(target, u) for u in upper):
                bad.append(f"{module} -> {target}")
    assert bad == []


def test_a_forbidden_edge_would_be_seen():
    graph = {k: set(v) for k, v in GRAPH.items()}
    graph["dpokit.eval.metrics"].add("dpokit.train.trainer")
    assert any(in_package(t, "dpokit.train") for t in reaches(graph, "dpokit.eval.metrics"))
