"""Math and data never import communication (checked in a fresh interpreter): nn, optim and
data must run, and be tested, with no MPI or Ray installed."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.parametrize("package", ["distnn.nn", "distnn.optim", "distnn.data"])
def test_no_communication_imports(package):
    code = (
        f"import sys, {package}\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('mpi4py', 'ray')\n"
        "       or m.startswith(('distnn.comm', 'distnn.train'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def import_graph() -> dict[str, set[str]]:
    """module -> the distnn modules it imports anywhere in its source (function bodies too:
    an import hidden inside a function is still an arrow)."""
    root = Path(__file__).resolve().parents[1]
    modules = {}
    for path in (root / "distnn").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                edges.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                    + ([node.module] if node.module else []))
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    edges.add(sub if sub in modules else base)
        graph[name] = {e for e in edges if e in modules and e != name}
    return graph


def test_no_import_cycles():
    graph = import_graph()
    assert "distnn.launch.commands" in graph and "distnn.data.hdf5" in graph
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_only_the_entry_points_import_launch():
    """launch starts runs: it may import everything, and only the two entry points import it:
    cli.py (the command line) and api.py (the Python API, distnn.train)."""
    graph = import_graph()
    users = sorted(m for m, edges in graph.items() if not m.startswith("distnn.launch")
                   and any(e.startswith("distnn.launch") for e in edges))
    assert users == ["distnn.api", "distnn.cli"], users


def test_train_never_imports_watch():
    """watch reads what train writes; a run must not depend on the reading commands."""
    graph = import_graph()
    assert "distnn.watch.trace" in graph and "distnn.train.telemetry" in graph
    users = sorted(m for m, edges in graph.items() if m.startswith(("distnn.train", "distnn.nn"))
                   and any(e.startswith("distnn.watch") for e in edges))
    assert users == [], users


def test_only_the_entry_point_and_evaluate_import_sweep():
    """sweep starts runs as child processes: a run (train, nn, watch, ...) never depends on it;
    cli.py registers it and launch's `evaluate --ensemble-top` reads its records."""
    graph = import_graph()
    assert "distnn.sweep.ray_tune" in graph and "distnn.sweep.trial" in graph
    users = sorted({m.rsplit(".", 1)[0] if m != "distnn.cli" else m
                    for m, edges in graph.items() if not m.startswith("distnn.sweep")
                    and any(e.startswith("distnn.sweep") for e in edges)})
    assert users == ["distnn.cli", "distnn.launch"], users


def test_only_the_entry_point_imports_transfer():
    """`distnn features` and `distnn knn` read checkpoints and datasets; a run never depends on
    them (train.init_from lives in train/transfer.py)."""
    graph = import_graph()
    assert "distnn.transfer.features" in graph
    users = sorted(m for m, edges in graph.items() if not m.startswith("distnn.transfer")
                   and any(e.startswith("distnn.transfer") for e in edges))
    assert users == ["distnn.cli"], users
