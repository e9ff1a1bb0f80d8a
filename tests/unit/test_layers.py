"""The package's layers: each imports only the layers below it, and no two modules import each other.

Layers, lowest first (docs/design.md, "Layout"). A module may import its own layer and the
layers below; never a layer above. Imports inside functions count too: a lazy import is still a
dependency.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

pytestmark = pytest.mark.core

REPO = Path(__file__).resolve().parents[2]
SOURCES = {
    "quadmix_stream": REPO / "quadmix_stream",
    "quadmix_stream.loaders": REPO / "loaders",
    "quadmix_stream.trainers": REPO / "trainers",
}
LAYERS: list[tuple[str, ...]] = [
    # the base: errors, the one log, extras, typed JSON checks, the config loader, progress
    ("errors", "extras", "logs", "progress", "validate", "recipe", "synth.text"),
    ("executors",),  # where offline units of work run: local, or tasks on a Ray cluster
    ("storage",),  # local and object-store files, atomic writes, locations
    ("mixing",),  # the pure math: hashing, the sampling function, params
    ("formats",),  # shard formats, label sidecars, the manifest, the dataset writer
    ("training", "synth"),  # tokenizer, model, LR schedule, evaluation sets; the synthetic corpus
    ("stream",),  # selection, order, state, the dataset, packing
    ("control",),  # params controllers: per-domain training signals in, new params out
    ("labelling",),
    ("search",),
    ("loaders",),
    ("trainers",),
    # the tools on top: dry runs, plots, benchmarks, the whole flow, the CLI
    ("inspect", "plots", "benchmarks", "flow", "commands", "cli", "__init__"),
]
RANK = {name: i for i, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    mods = {}
    for prefix, root in SOURCES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__" and len(parts) > 1:
                parts = parts[:-1]
            mods[".".join([prefix, *parts])] = path
    return mods


def _group(module: str) -> str:
    parts = module.split(".")[1:]
    if parts[:2] == ["synth", "text"]:
        return "synth.text"
    return parts[0] if parts else "__init__"


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found.update(n for n in names if n.split(".")[0] == "quadmix_stream")
    return found


def test_every_group_has_a_layer():
    groups = {_group(m) for m in _modules()}
    assert groups <= set(RANK), f"put these in a layer: {sorted(groups - set(RANK))}"


def test_no_module_imports_a_layer_above_its_own():
    breaks = []
    for module, path in _modules().items():
        own = RANK[_group(module)]
        for dep in _imports(path):
            if dep == "quadmix_stream":
                dep = "quadmix_stream.__init__"
            if RANK[_group(dep)] > own:
                breaks.append(f"{module} imports {dep}")
    assert not breaks, "\n".join(sorted(breaks))


def test_no_import_cycle_between_groups():
    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in _modules().items():
        for dep in _imports(path):
            a = _group(module)
            b = _group("quadmix_stream.__init__" if dep == "quadmix_stream" else dep)
            if a != b:
                edges[a].add(b)
    seen: dict[str, int] = {}  # 1 = on the path, 2 = done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(edges[node]):
            if seen.get(nxt) == 1:
                pytest.fail("import cycle: " + " → ".join([*path, node, nxt]))
            if nxt not in seen:
                visit(nxt, [*path, node])
        seen[node] = 2

    for node in sorted(edges):
        if node not in seen:
            visit(node, [])
