"""The package's shape (issue 12): layers import downwards only, no cycles, small modules.

Every module is given a layer below; a module may import modules of its own
layer or lower ones, never higher. ``hessian/`` is math only and imports
nothing of spectralyzer outside itself; nothing imports the CLI. Imports made
inside functions count too: a function-local import is still a dependency.
"""

from __future__ import annotations

import ast
import hashlib
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "spectralyzer"
MAX_LINES = 400

# Lowest first. The first dotted part below spectralyzer decides a module's layer.
LAYERS = (
    # no spectralyzer imports
    {"errors", "escaping", "budget", "interrupts", "choices", "threads", "variants"},
    {"io", "outputs", "render", "render_table", "hessian", "runs", "workers", "ray_runner"},
    {
        "layers",
        "layouts",
        "roles",
        "fit",
        "top_eigen",
        "windows",
        "allocation",
    },  # tensors -> matrices; math
    {
        "engine",
        "batching",
        "shuffle",
        "randomized",
        "prefetch",
        "metrics",
        "flow",
        "farms",
        "low_rank",
        "cache",
    },  # matrices -> ESDs -> rows
    {
        "tables",
        "listing",
        "agreement",
        "alarms",
        "analysis_options",
        "analysis_result",
    },  # rows -> DataFrame, summary; correlations
    {"pipeline"},  # the weight-analysis pipeline
    {
        "series",
        "layer_diff",
        "probe_pipeline",
        "probe_records",
        "probe_lines",
        "probe_batching",
        "fanout",
    },
    {"run_table", "watch", "monitor"},  # training runs: series table, watch loop, Monitor
    {"allocate_settings", "allocate_pipeline"},  # alphas -> per-layer settings
    {"gate_policy"},  # built on diff
    {"demo", "demo_nets", "report"},  # demos, figures and report folders
    {"cli"},  # the command line, on top
)
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}


def modules() -> dict[str, Path]:
    """Dotted module name (below spectralyzer) -> file, ``__init__`` of the package itself left out."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts == ("__init__",):
            continue  # the public API re-exports everything lazily
        if parts[-1] in ("__init__", "__main__"):
            parts = parts[:-1] if parts[-1] == "__init__" else parts
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """The spectralyzer modules ``name`` imports (absolute dotted names below spectralyzer)."""
    package = name.split(".")[:-1] if path.name != "__init__.py" else name.split(".")
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if not (node.module or "").startswith("spectralyzer"):
                    continue
                base = (node.module or "").split(".")[1:]
            else:
                up = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                base = [*up, *(node.module.split(".") if node.module else [])]
            if node.module is None or node.level and not node.module:
                found.update(".".join([*base, alias.name]) for alias in node.names)
            found.add(".".join(base))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("spectralyzer."):
                    found.add(alias.name.split(".", 1)[1])
    return {f for f in found if f}


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and getattr(child.test, "id", None) == "TYPE_CHECKING":
                stack.extend(child.orelse)
            else:
                stack.append(child)


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges = {}
    for name, path in mods.items():
        targets = set()
        for target in imports_of(name, path):
            while target and target not in mods:  # `from .io import open_checkpoint` -> io
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
        edges[name] = targets
    return edges


def top(name: str) -> str:
    return name.split(".")[0]


def test_every_module_has_a_layer():
    assert {top(m) for m in modules()} <= set(RANK), set(map(top, modules())) - set(RANK)


def test_imports_go_down_the_layers():
    upward = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        for target in targets
        if RANK[top(target)] > RANK[top(source)]
    ]
    assert not upward, upward


def test_hessian_is_math_only():
    outside = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        if top(source) == "hessian"
        for target in targets
        if top(target) != "hessian"
    ]
    assert not outside, outside


def test_nothing_imports_the_cli():
    users = [
        s
        for s, targets in graph().items()
        if top(s) != "cli" and any(top(t) == "cli" for t in targets)
    ]
    assert not users, users


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = defaultdict(int)  # 0 new, 1 on the path, 2 done
    cycles = []

    for start in edges:
        if state[start]:
            continue
        stack = [(start, iter(sorted(edges[start])))]
        path = [start]
        state[start] = 1
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                state[node] = 2
            elif state[child] == 1:
                cycles.append(path[path.index(child) :] + [child])
            elif state[child] == 0:
                state[child] = 1
                path.append(child)
                stack.append((child, iter(sorted(edges.get(child, ())))))
    assert not cycles, cycles


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_stay_small(name):
    lines = len(modules()[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines"


def _code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the lines that carry code: no blanks, comments, lone brackets."""
    keep = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#") or re.fullmatch(r"[\[\](){},]*", text):
            continue
        if re.fullmatch(r"\*{0,2}\w+(: [^=]+?)?( ?= ?.+)?,", text):  # one parameter or argument
            continue
        keep.append((number, text))
    return keep


def test_no_repeated_blocks_of_code():
    """No run of 6 identical code lines in two places (copy-paste between modules or commands)."""
    seen: dict[str, str] = {}
    repeated = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = _code_lines(path)
        for i in range(len(lines) - 5):
            window = [text for _, text in lines[i : i + 6]]
            if sum(len(t) for t in window) < 120:  # short runs of closing lines, imports
                continue
            key = hashlib.sha1("\n".join(window).encode()).hexdigest()
            where = f"{path.relative_to(PACKAGE)}:{lines[i][0]}"
            if (
                key in seen
                and seen[key].split(":")[0] != where.split(":")[0]
                or (key in seen and int(where.split(":")[1]) - int(seen[key].split(":")[1]) > 6)
            ):
                repeated.append(f"{seen[key]} ~ {where}")
            seen.setdefault(key, where)
    assert not repeated, repeated


def test_a_planted_upward_import_is_caught(tmp_path, monkeypatch):
    """The graph reader sees a function-local relative import (the kind that hid hessian -> pipeline)."""
    path = tmp_path / "probe_stub.py"
    path.write_text("def f():\n    from ..pipeline import analyze\n    return analyze\n")
    assert "pipeline" in imports_of("hessian.probe_stub", path)


def test_public_names_are_functions_not_modules():
    """Importing every module first must not turn a public name into a module (a clash of names)."""
    import importlib

    import spectralyzer

    for name in modules():
        if not name.endswith("__main__"):  # that one runs the command line
            importlib.import_module(f"spectralyzer.{name}")
    assert set(spectralyzer.__all__) == {"__version__", *spectralyzer._PUBLIC}
    for name in spectralyzer._PUBLIC:
        assert callable(getattr(spectralyzer, name)), name
