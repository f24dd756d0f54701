"""The layers point one way: model <- hw <- sim <- host <- bench.

Every .py file of the five folders is read with `ast` (nothing is imported, so this is fast):
each import — at module level or inside a function, absolute (``hmtx.host.x``, ``bench.x``) or
relative (``from . import x``, ``from ..model import y``) — may only reach its own layer or one
below it, and no two modules of the package may import each other, directly or round a loop
(strongly connected components of the module graph).
"""

import ast
from pathlib import Path

import pytest

from hmtx.model.paths import REPO

# Lowest first: a layer may import itself and the layers before it, never one after it.
LAYERS = ("model", "hw", "sim", "host", "bench")
RANK = {name: i for i, name in enumerate(LAYERS)}


def _module_name(root: Path, path: Path) -> str:
    """``hw/top.py`` -> ``hmtx.hw.top``; ``sim/tests/__init__.py`` -> ``hmtx.sim.tests``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(["hmtx", *parts])


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def _imported_names(tree: ast.AST, module: str, is_package: bool):
    """(line, dotted name) of every import in the tree, relative ones resolved, ``bench.x`` read
    as ``hmtx.bench.x``. ``from a import b`` yields ``a.b`` (b may be a module or a name in a;
    the caller resolves that against the modules that exist)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module
            for alias in node.names:
                yield node.lineno, base if alias.name == "*" else f"{base}.{alias.name}"


def _normalize(name: str) -> str:
    return "hmtx." + name if name == "bench" or name.startswith("bench.") else name


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest prefix of ``name`` that is a module of the package, or None (not ours)."""
    parts = name.split(".")
    while parts:
        cand = ".".join(parts)
        if cand in modules:
            return cand
        parts.pop()
    return None


def _layer(module: str) -> str:
    return module.split(".")[1]


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; only components of more than one module are returned."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def check_layers(root: Path) -> list[str]:
    """Every upward import (``file:line``) and every import cycle under ``root``'s five folders."""
    root = Path(root)
    files = {}
    for layer in LAYERS:
        for path in sorted((root / layer).rglob("*.py")):
            files[_module_name(root, path)] = path
    modules = set(files)
    problems, graph = [], {m: set() for m in modules}
    for module, path in sorted(files.items()):
        rel = path.relative_to(root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(rel))
        upward = {}
        for line, name in _imported_names(tree, module, _is_package(path)):
            full = _normalize(name)
            parts = full.split(".")
            if parts[0] != "hmtx" or len(parts) < 2 or parts[1] not in RANK:
                continue                                  # not one of ours
            target = _resolve(full, modules)
            if RANK[parts[1]] > RANK[_layer(module)]:
                upward.setdefault((line, target or full), parts[1])
            if target is not None and target != module:
                graph[module].add(target)
        for (line, target), layer in sorted(upward.items()):
            problems.append(f"{rel}:{line}: {_layer(module)} imports {target} ({layer} is above {_layer(module)})")
    for comp in _strongly_connected(graph):
        problems.append("import cycle: " + " <-> ".join(comp))
    return problems


# Cycles known and not yet broken, each with the reason; the test fails when one disappears, so
# that the entry goes with it.
KNOWN_CYCLES: set[str] = set()


def test_layers_point_one_way():
    problems = check_layers(REPO)
    new = [p for p in problems if p not in KNOWN_CYCLES]
    assert not new, "imports against the layer order model <- hw <- sim <- host <- bench:\n" + "\n".join(new)
    assert KNOWN_CYCLES <= set(problems), f"no longer a cycle, remove from KNOWN_CYCLES: {KNOWN_CYCLES - set(problems)}"


def test_command_line_names_only_existing_commands_and_bench_above_host():
    """host/cli.py imports its subcommands by name (importlib), which the walk above cannot see:
    every name is a module of the package, and the one above host/ is `hmtx bench`'s."""
    tree = ast.parse((REPO / "host" / "cli.py").read_text(encoding="utf-8"))
    names = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "COMMAND_MODULES" for t in node.targets))
    for name in names:
        layer, *rest = name.split(".")[1:]
        assert name.startswith("hmtx.") and (REPO / layer / ("/".join(rest) + ".py")).is_file(), name
    assert [n for n in names if RANK[n.split(".")[1]] > RANK["host"]] == ["hmtx.bench.cmd_bench"]


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for layer in LAYERS:
        (tmp_path / layer).mkdir(exist_ok=True)
        (tmp_path / layer / "__init__.py").touch()
    for rel, text in files.items():
        (tmp_path / rel).write_text(text)
    return tmp_path


def test_checker_catches_upward_imports(tmp_path):
    root = _tree(tmp_path, {
        "model/fixed.py": "X = 1\n",
        "host/protocol.py": "from hmtx.model import fixed\n",
        "hw/top.py": "import os\n\nfrom hmtx.host.protocol import X\n",                 # absolute, module level
        "hw/slip.py": "def f():\n    from ..host import protocol\n",                        # relative, in a function
        "sim/bridge.py": "def g():\n    import hmtx.bench.suite\n",                         # a module that isn't there
        "host/cli.py": "from bench import suite\n",                                          # bench/ as a top-level name
        "bench/suite.py": "from hmtx.host import protocol\nfrom hmtx.model.fixed import X\n",  # fine: downward
    })
    problems = check_layers(root)
    assert "hw/top.py:3: hw imports hmtx.host.protocol (host is above hw)" in problems, problems
    assert "hw/slip.py:2: hw imports hmtx.host.protocol (host is above hw)" in problems, problems
    assert "sim/bridge.py:2: sim imports hmtx.bench.suite (bench is above sim)" in problems, problems
    assert "host/cli.py:1: host imports hmtx.bench.suite (bench is above host)" in problems, problems
    assert len(problems) == 4, problems


def test_checker_catches_cycles(tmp_path):
    root = _tree(tmp_path, {
        "hw/synth.py": "def f():\n    from .hierarchy import h\n",
        "hw/hierarchy.py": "from . import synth\n\ndef h(): pass\n",
        "host/a.py": "from hmtx.host import b\n",
        "host/b.py": "from . import c\n",
        "host/c.py": "import hmtx.host.a\n",
        "host/d.py": "from . import a\n",                                                    # into a loop, not in it
    })
    problems = check_layers(root)
    assert "import cycle: hmtx.hw.hierarchy <-> hmtx.hw.synth" in problems, problems
    assert "import cycle: hmtx.host.a <-> hmtx.host.b <-> hmtx.host.c" in problems, problems
    assert len(problems) == 2, problems


@pytest.mark.parametrize("text", ["from . import fixed\n", "from hmtx.model.fixed import X\n", "import numpy\n"])
def test_checker_passes_downward_and_outside_imports(tmp_path, text):
    assert check_layers(_tree(tmp_path, {"model/fixed.py": "X = 1\n", "hw/engine.py": text})) == []
