"""The core install: the loader imports none of the lab's packages, DataLoader workers import no
third-party package the rank did not, and a missing extra is one line naming what to install."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from quadmix_stream.extras import MissingExtraError, require

pytestmark = pytest.mark.core

#: What the lab (labelling, search, trainer, benchmarks) imports and the loader must not.
LAB = [
    "lightgbm",
    "fasttext",
    "matplotlib",
    "sentence_transformers",
    "sklearn",
    "scipy",
    "streaming",
    "transformers",
    "tokenizers",
    "webdataset",
    "fsspec",
    "torchdata",
]


def _python(code: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
    )


@pytest.mark.slow
def test_importing_the_loader_imports_no_lab_package():
    r = _python(
        f"""
        import sys
        import quadmix_stream
        from quadmix_stream import QuaDMixDataset, PackedDataset, SamplingParams, Manifest
        print([m for m in {LAB!r} if m in sys.modules])
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["mds", "jsonl", "parquet"])
def test_dataloader_workers_import_no_new_package(request, fmt):
    """Every third-party package a worker uses is imported by the rank before it forks: a lazy
    import in a worker is a copy per worker (~250 MiB for `streaming`), not shared memory."""
    ds = request.getfixturevalue(f"{fmt}_ds")
    r = _python(
        f"""
        import json, sys
        from torch.utils.data import DataLoader, IterableDataset
        from quadmix_stream import QuaDMixDataset, SamplingParams, Manifest

        class Probe(IterableDataset):
            def __init__(self, ds, before):
                self.ds, self.before = ds, before
            def __iter__(self):
                n = sum(1 for _ in self.ds)
                new = sorted({{m.split(".")[0] for m in sys.modules}} - self.before)
                yield json.dumps({{"items": n, "new": new}})

        m = Manifest.load({str(ds)!r})
        params = SamplingParams.keep_all(m.domains, m.scorer_names)
        ds = QuaDMixDataset({str(ds)!r}, params, seed=0)
        before = {{m.split(".")[0] for m in sys.modules}}
        loader = DataLoader(Probe(ds, before), batch_size=None, num_workers=2,
                            multiprocessing_context="fork")
        print(json.dumps([json.loads(x) for x in loader]))
        """
    )
    assert r.returncode == 0, r.stderr
    workers = json.loads(r.stdout)
    assert sum(w["items"] for w in workers) > 0
    stdlib = set(sys.stdlib_module_names)
    for w in workers:
        assert [m for m in w["new"] if m not in stdlib and not m.startswith("_")] == []


def test_require_names_the_extra():
    with pytest.raises(MissingExtraError, match=r"^the search needs 'lightgbm_nope', which is not"):
        require("lightgbm_nope", "the search", "search")
    with pytest.raises(MissingExtraError, match=r"pip install 'quadmix-stream\[search\]'$"):
        require("lightgbm_nope", "the search", "search")
    assert isinstance(MissingExtraError("x"), ImportError)  # `except ImportError` still works


@pytest.mark.slow
def test_cli_says_which_extra_to_install(mds_ds, tmp_path):
    """A command whose extra is missing exits 2 with one line (the package is hidden here by a
    ``None`` in ``sys.modules``, which is what an absent package looks like to ``import``)."""
    r = _python(
        f"""
        import sys
        sys.modules["matplotlib"] = None
        from quadmix_stream.cli import main
        from quadmix_stream import Manifest, SamplingParams
        m = Manifest.load({str(mds_ds)!r})
        SamplingParams.keep_all(m.domains, m.scorer_names).save({str(tmp_path / "p.json")!r})
        argv = ["inspect", {str(mds_ds)!r}, "--params", {str(tmp_path / "p.json")!r}]
        sys.exit(main(argv + ["--plot", {str(tmp_path / "p.png")!r}]))
        """
    )
    assert r.returncode == 2, r.stderr
    last = r.stderr.strip().splitlines()
    assert last == [
        "quadmix-stream inspect: error: inspect --plot needs 'matplotlib', which is not "
        "installed: pip install 'quadmix-stream[plot]'"
    ]
