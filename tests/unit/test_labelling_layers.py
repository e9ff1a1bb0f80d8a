"""The labelling's structure: no import circle among its modules, and whole-shard reads through
the format layer (``ShardFormat.scan``) give back every row as written."""

import ast
from pathlib import Path

import pytest

import quadmix_stream.labelling as labelling
from quadmix_stream.formats import ShardSpec, get_format, writer_backend
from quadmix_stream.formats.mds import mds_index


def _import_graph() -> dict[str, set[str]]:
    """Module → the labelling modules it imports (at the top or inside functions)."""
    folder = Path(labelling.__file__).parent
    mods = {
        f"{labelling.__name__}.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"
    }
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            deps.update(n for n in names if n in mods and n != mod)
        graph[mod] = deps
    return graph


def test_labelling_modules_import_no_circle():
    graph = _import_graph()
    assert "quadmix_stream.labelling.pipeline" in graph  # the graph was built
    done: set[str] = set()

    def visit(mod: str, path: list[str]) -> None:
        if mod in path:
            cycle = path[path.index(mod) :] + [mod]
            pytest.fail("import circle: " + " -> ".join(m.rsplit(".", 1)[1] for m in cycle))
        if mod in done:
            return
        for dep in sorted(graph[mod]):
            visit(dep, [*path, mod])
        done.add(mod)

    for mod in sorted(graph):
        visit(mod, [])


@pytest.mark.parametrize("fmt", ["mds", "tar", "jsonl", "parquet", "arrow"])
def test_scan_gives_every_row_as_written(tmp_path, fmt):
    docs = [(f"doc-{i}", f"text {i} " * i, {"n": i}) for i in range(7)]
    backend = writer_backend(tmp_path, fmt)
    spans = [backend.add(*d) for d in docs]
    name = backend.end_shard()
    backend.close()
    entry = mds_index(tmp_path)[name] if fmt == "mds" else None
    got = get_format(fmt).scan(tmp_path / name, ShardSpec(name, 0, "", 0, mds_entry=entry))
    texts = [d["text"].decode() if isinstance(d["text"], bytes) else d["text"] for d in got.docs]
    assert [str(d["id"]) for d in got.docs] == [d[0] for d in docs]
    assert texts == [d[1] for d in docs]
    assert [d["meta"] for d in got.docs] == [d[2] for d in docs]
    if fmt == "tar":  # the byte spans a sidecar records: those the writer reported
        assert list(zip(got.offset, got.length, strict=True)) == spans
        assert got.keys is not None and len(got.keys) == len(docs)
    else:
        assert got.offset is None and got.keys is None
