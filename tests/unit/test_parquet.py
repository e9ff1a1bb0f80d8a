"""Parquet files and Hugging Face ``save_to_disk`` Arrow folders as shards of their own: labelled
in place from their existing columns, streamed with the same guarantees as MDS/tar/JSONL, and
read row group by row group (an unselected row group is never read)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from quadmix_stream.cli import main
from quadmix_stream.formats import ShardReadError, open_shard
from quadmix_stream.formats.labels import LabelError, Manifest, read_sidecar
from quadmix_stream.formats.table import ParquetShardReader
from quadmix_stream.mixing.hashing import doc_key
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.storage.io import sha256_file
from quadmix_stream.stream.dataset import QuaDMixDataset
from quadmix_stream.synth import make_text
from tests.support.streamutil import wide_params

pytestmark = pytest.mark.core

DUMPS = ("CC-MAIN-2024-10", "CC-MAIN-2024-18")
GROUP_ROWS = 20
GROUPS = 5
HOT_GROUP = 1  # the row group of each file whose rows have the best edu scores


def fineweb_edu_table(file_no: int, dump: str, rows: int = GROUP_ROWS * GROUPS) -> pa.Table:
    """Rows laid out like FineWeb-Edu (its columns, its types); group HOT_GROUP scores best."""
    rng = np.random.default_rng(file_no)
    kinds = ("facts", "story", "code")
    texts = [make_text(kinds[i % 3], i % 4, rng, int(rng.integers(20, 90))) for i in range(rows)]
    group = np.arange(rows) // GROUP_ROWS
    score = np.where(group == HOT_GROUP, rng.uniform(4.0, 5.0, rows), rng.uniform(0.5, 3.0, rows))
    return pa.table(
        {
            "text": texts,
            "id": [f"<urn:uuid:{file_no:04d}-{i:06d}>" for i in range(rows)],
            "dump": [dump] * rows,
            "url": [f"https://example{file_no}.org/page/{i}" for i in range(rows)],
            "score": score,
            "int_score": np.rint(score).astype(np.int64),
            "token_count": np.array([len(t.split()) + 3 for t in texts], dtype=np.int64),
        }
    )


def write_fineweb_edu(root: Path) -> list[Path]:
    """Three Parquet files in per-dump subfolders (as the FineWeb-Edu repository has them)."""
    paths = []
    for i, dump in enumerate((DUMPS[0], DUMPS[0], DUMPS[1])):
        p = root / "data" / dump / f"{i:03d}_00000.parquet"
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(fineweb_edu_table(i, dump), p, row_group_size=GROUP_ROWS)
        paths.append(p)
    return paths


LABEL_FROM_COLUMNS = [
    "--domain",
    "type=field,field=dump",
    "--domains",
    ",".join(DUMPS),
    "--scorer",
    "type=field,field=score,name=edu",
    "--scorer",
    "type=field,field=int_score,name=edu_int",
    "--tokens",
    "type=field,field=token_count",
    "--io-workers",
    "0",
    "--no-progress",
]


@pytest.fixture
def fineweb(tmp_path: Path) -> tuple[Path, list[Path]]:
    """A FineWeb-Edu-like folder, labelled in place from its columns (no model, no re-scoring)."""
    root = tmp_path / "fineweb-edu"
    paths = write_fineweb_edu(root)
    before = [sha256_file(p) for p in paths]
    assert main(["label", "--shards", str(root), *LABEL_FROM_COLUMNS]) == 0
    assert [sha256_file(p) for p in paths] == before  # labelled in place: payload untouched
    return root, paths


def sample_counts(root: Path, params: SamplingParams, tmp: Path, seed: int, epoch: int) -> Counter:
    params.save(tmp / "p.json")
    args = ["sample", str(root), "--params", str(tmp / "p.json"), "--out", str(tmp / "s.jsonl")]
    assert main([*args, "--seed", str(seed), "--epoch", str(epoch)]) == 0
    want: Counter = Counter()
    for line in (tmp / "s.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["count"]:
            want[r["key"]] = r["count"]
    return want


def test_label_in_place_takes_columns_as_labels(fineweb):
    root, paths = fineweb
    m = Manifest.load(root)
    assert m.format == "parquet" and m.domains == list(DUMPS)
    assert [s.name for s in m.shards] == [p.relative_to(root).as_posix() for p in paths]
    assert m.extra["columns"] == {"text_column": "text", "id_column": "id"}
    for entry, path in zip(m.shards, paths, strict=True):
        assert (root / entry.sidecar).parent == path.parent  # the sidecar sits beside its file
        lab = read_sidecar(root / entry.sidecar, entry.name, m.scorer_names)
        t = pq.read_table(path)
        assert lab.rows == entry.rows == t.num_rows
        assert lab.key.tolist() == [doc_key(i) for i in t.column("id").to_pylist()]
        assert lab.tokens.tolist() == t.column("token_count").to_pylist()
        np.testing.assert_array_equal(lab.scores[:, 0], t.column("score").to_numpy())
        np.testing.assert_array_equal(lab.scores[:, 1], t.column("int_score").to_numpy())
        assert [m.domains[d] for d in lab.domain] == t.column("dump").to_pylist()


def test_stream_matches_sample_command_and_the_files(fineweb, tmp_path):
    root, paths = fineweb
    p = wide_params(root)
    want = sample_counts(root, p, tmp_path, seed=3, epoch=1)
    ds = QuaDMixDataset(root, p, seed=3, balance=None, shuffle_block_shards=2)
    ds.set_epoch(1)
    items = list(ds)
    assert Counter(it["key"] for it in items) == want
    assert any(it["copy"] > 0 for it in items)  # repeats happen
    rows = {}
    for path in paths:
        for r in pq.read_table(path).to_pylist():
            rows[r["id"]] = r
    for it in items:  # the payload is the file's row, labels travel with it
        r = rows[it["id"]]
        assert it["text"] == r["text"] and it["key"] == doc_key(r["id"])
        assert it["meta"]["url"] == r["url"] and it["meta"]["score"] == r["score"]
        assert it["domain"] == r["dump"] and it["tokens"] == r["token_count"]


@pytest.mark.parametrize("stop", [0, 7, 61])
def test_exact_resume(fineweb, stop):
    root, _ = fineweb

    def make() -> QuaDMixDataset:
        return QuaDMixDataset(root, wide_params(root), seed=5, rank=1, world_size=2)

    want = [(it["key"], it["copy"]) for it in make()]
    ds = make()
    it = iter(ds)
    head = [next(it) for _ in range(stop)]
    state = json.loads(json.dumps(ds.state_dict()))
    fresh = make()
    fresh.load_state_dict(state)
    got = [(x["key"], x["copy"]) for x in head] + [(x["key"], x["copy"]) for x in fresh]
    assert got == want and len(want) > 61


def best_edu_only(m: Manifest) -> SamplingParams:
    """Keep the top ~10 % of each dump by edu score (the hot row groups), nothing else."""
    k, n = len(m.domains), len(m.scorer_names)
    alpha = np.zeros((k, n))
    alpha[:, m.scorer_names.index("edu")] = 1.0
    return SamplingParams(
        m.domains,
        m.scorer_names,
        alpha,
        np.full(k, 200.0),
        np.full(k, 0.1),
        np.ones(k),
        np.zeros(k),
    )


def corrupt_row_group_text(path: Path, group: int) -> None:
    """Overwrite the text column chunk of one row group with garbage (same file size)."""
    md = pq.ParquetFile(path).metadata
    col = md.row_group(group).column(0)
    assert col.path_in_schema == "text"
    start = col.data_page_offset
    if col.has_dictionary_page and col.dictionary_page_offset:
        start = min(start, col.dictionary_page_offset)
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(b"\xff" * col.total_compressed_size)


def test_sparse_selection_reads_only_the_row_groups_it_needs(fineweb, tmp_path):
    root, paths = fineweb
    m = Manifest.load(root)
    p = best_edu_only(m)
    want = sample_counts(root, p, tmp_path, seed=0, epoch=0)
    assert 0 < len(want) <= len(paths) * GROUP_ROWS
    # every selected row lies in a hot group: the other groups are not needed
    rows = json.loads("[" + ",".join((tmp_path / "s.jsonl").read_text().splitlines()) + "]")
    assert {r["row"] // GROUP_ROWS for r in rows if r["count"]} == {HOT_GROUP}
    for path in paths:
        for g in range(GROUPS):
            if g != HOT_GROUP:
                corrupt_row_group_text(path, g)
    ParquetShardReader.clear_cache()
    ds = QuaDMixDataset(root, p, seed=0, balance=None)
    assert Counter(it["key"] for it in ds) == want
    # reading a corrupted group fails loudly, so the stream above never read one
    everything = QuaDMixDataset(root, SamplingParams.keep_all(m.domains, m.scorer_names))
    with pytest.raises(ShardReadError, match=r"shard '.*', row \d+: cannot be read"):
        list(everything)  # one error type naming the shard and the row


def test_reader_reads_each_needed_row_group_once(fineweb, monkeypatch):
    root, _ = fineweb
    m = Manifest.load(root)
    ParquetShardReader.clear_cache()
    r = open_shard(root, m, 1)
    assert isinstance(r, ParquetShardReader) and r.groups_read == []
    wanted = [65, 3, 61, 79, 0, 64]  # rows of groups 3, 0, 3, 3, 0, 3
    docs = [r.read(i) for i in wanted]
    assert r.groups_read == [3, 0] and r.rows_read == len(wanted)
    table = pq.read_table(root / m.shards[1].name)
    assert [d["text"] for d in docs] == [table.column("text")[i].as_py() for i in wanted]
    with pytest.raises(LabelError, match="out of range"):
        r.read(GROUP_ROWS * GROUPS)
    r.close()
    # a cache too small for two groups reads a group again after another evicted it
    monkeypatch.setenv("QUADMIX_PARQUET_CACHE_MB", "0.001")
    ParquetShardReader.clear_cache()
    r = open_shard(root, m, 1)
    for i in wanted:
        r.read(i)
    assert r.groups_read == [3, 0, 3, 0, 3]
    r.close()


def test_other_id_and_text_columns(tmp_path, capsys):
    root = tmp_path / "dclm"
    root.mkdir()
    t = fineweb_edu_table(0, DUMPS[0]).rename_columns(
        ["content", "doc_id", "dump", "url", "fasttext_score", "int_score", "token_count"]
    )
    pq.write_table(t, root / "part-0.parquet", row_group_size=GROUP_ROWS)
    args = ["label", "--text-field", "content", "--id-field", "doc_id"]
    dclm = [
        "--domain",
        "type=field,field=dump",
        "--domains",
        DUMPS[0],
        "--scorer",
        "type=field,field=fasttext_score,name=dclm",
        "--io-workers",
        "0",
        "--no-progress",
    ]
    assert main([*args, "--shards", str(root), *dclm]) == 0
    m = Manifest.load(root)
    assert m.extra["columns"] == {"text_column": "content", "id_column": "doc_id"}
    ds = QuaDMixDataset(root, SamplingParams.keep_all(m.domains, m.scorer_names), balance=None)
    got = {it["id"]: it["text"] for it in ds}
    ids, texts = t.column("doc_id").to_pylist(), t.column("content").to_pylist()
    assert got == dict(zip(ids, texts, strict=True))
    # an id column that a file lacks is an error naming the file and its columns
    other = tmp_path / "no-id"
    other.mkdir()
    pq.write_table(t.drop_columns(["doc_id"]), other / "part-1.parquet", row_group_size=50)
    assert main([*args, "--shards", str(other), *dclm]) != 0
    assert "shard 'part-1.parquet': no id column 'doc_id'" in capsys.readouterr().err


def write_save_to_disk(root: Path, tables: list[pa.Table]) -> None:
    """The folder layout of ``datasets.Dataset.save_to_disk``: Arrow IPC streams + state.json."""
    root.mkdir(parents=True)
    names = [f"data-{i:05d}-of-{len(tables):05d}.arrow" for i in range(len(tables))]
    for name, t in zip(names, tables, strict=True):
        with pa.OSFile(str(root / name), "wb") as sink, pa.ipc.new_stream(sink, t.schema) as w:
            w.write_table(t, max_chunksize=30)
    state = {"_data_files": [{"filename": n} for n in names], "_split": "train"}
    (root / "state.json").write_text(json.dumps(state))
    (root / "dataset_info.json").write_text(json.dumps({"features": {}}))


def test_hf_save_to_disk_folder_in_place(tmp_path):
    root = tmp_path / "hf"
    tables = [fineweb_edu_table(i, DUMPS[i % 2]) for i in range(3)]
    write_save_to_disk(root, tables)
    assert main(["label", "--shards", str(root), *LABEL_FROM_COLUMNS]) == 0
    m = Manifest.load(root)
    assert m.format == "arrow"
    assert [s.name for s in m.shards] == [f"data-0000{i}-of-00003.arrow" for i in range(3)]
    p = wide_params(root)
    want = sample_counts(root, p, tmp_path, seed=1, epoch=0)
    ds = QuaDMixDataset(root, p, seed=1, balance=None)
    items = list(ds)
    assert Counter(it["key"] for it in items) == want
    texts = {}
    for t in tables:
        texts.update(zip(t["id"].to_pylist(), t["text"].to_pylist(), strict=True))
    assert all(it["text"] == texts[it["id"]] for it in items)
    assert ds.reads == sum(want.values())  # only the selected rows were read


@pytest.mark.parametrize("fmt", ["parquet", "arrow"])
def test_synth_writes_parquet_and_arrow(tmp_path, fmt):
    out = tmp_path / fmt
    assert main(["synth", str(out), "--format", fmt, "--docs-per-domain", "30"]) == 0
    m = Manifest.load(out)
    assert m.format == fmt and m.rows == 150
    r = open_shard(out, m, 0)
    doc = r.read(3)
    assert set(doc) == {"id", "text", "meta"} and set(doc["meta"]) == {"domain", "quality_level"}
    r.close()


def test_ranks_and_dataloader_workers_cover_the_sample_exactly(fineweb, tmp_path):
    from tests.support.streamutil import walk_loader

    root, _ = fineweb
    p = wide_params(root)
    want = sample_counts(root, p, tmp_path, seed=0, epoch=0)
    got: Counter = Counter()
    for rank in range(2):
        ds = QuaDMixDataset(root, p, seed=0, balance=None, rank=rank, world_size=2)
        ds.read_row(0)  # pyarrow in use in the parent before the workers fork
        got.update(k for k, _ in walk_loader(ds, workers=2))
    assert got == want
