"""``quadmix-stream bench scale``: memory per pool document and start-up as the pool grows.

For each pool size N it builds (once, reused) a labelled MDS dataset of N tiny documents and
measures, each in a fresh process with a 2-worker DataLoader, for QuaDMixDataset and for
mosaicml-streaming's ``StreamingDataset`` on the same shards:

* proportional set size (PSS: shared pages counted once) of the rank and its workers: the whole
  tree with each library's own imports (what a training rank pays), and above those imports,
  steady (after a few hundred batches) and peak (sampled every 50 ms);
* time to the first batch (QuaDMix: cold caches, then warm), of an epoch boundary, and from
  ``load_state_dict`` to the first batch mid-epoch.

It prints the slope of PSS against N (bytes per pool document per rank, workers included) and
the extrapolation to 1B documents.

How the pools are built fast: one 16,384-row shard (``--rows-per-shard``) is encoded with
fixed-width ids by the MDS encoder of the format layer (:func:`quadmix_stream.formats.mds.encode_shard`,
``MDSWriter``'s bytes); every other shard is a byte copy with its ids rewritten in place (numpy),
so each shard is a valid MDS shard with distinct ids. Labels are random (12 domains, 3 scorers,
token counts 20-2,000); document keys are ``doc_key`` of the ids (the stream checks each read
against it); σ tables come from the first shard's scores (all shards are drawn alike).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROWS = 16_384
DOMAINS = 12
SCORERS = 3
ID_WIDTH = 13
ID_START = "d"  # ids are "d" + 13 digits


# ---------------------------------------------------------------- building a pool
def build_pool(root: Path, n_docs: int, seed: int = 0, per_shard: int = ROWS) -> Path:
    """A labelled MDS dataset of ``n_docs`` tiny documents (reused when already complete)."""
    from quadmix_stream.formats import sidecar_name
    from quadmix_stream.formats.labels import (
        Manifest,
        ScorerInfo,
        ShardEntry,
        ShardLabels,
        write_sidecar,
    )
    from quadmix_stream.formats.mds import encode_shard
    from quadmix_stream.mixing.hashing import doc_key
    from quadmix_stream.mixing.sampling import build_sigma_tables
    from quadmix_stream.storage.io import sha256_file

    done = root / "bench-pool.json"
    spec = {
        "n_docs": n_docs,
        "rows": per_shard,
        "domains": DOMAINS,
        "scorers": SCORERS,
        "seed": seed,
    }
    spec["keys"] = "doc_key(id)"  # pools from before the stream checked keys are rebuilt
    if done.exists() and json.loads(done.read_text()) == spec:
        return root
    shutil.rmtree(root, ignore_errors=True)
    # one template shard (the bytes MDSWriter writes); every shard is it with other ids
    raw, _stored, entry = encode_shard(
        [(f"{ID_START}{i:0{ID_WIDTH}d}", "tiny document text", {}) for i in range(per_shard)]
    )
    data = np.frombuffer(raw, dtype=np.uint8)
    offsets = np.frombuffer(data, np.uint32, count=per_shard + 1, offset=4).astype(np.int64)
    first = bytes(data[offsets[0] : offsets[1]])
    rel = first.index(f"{ID_START}{0:0{ID_WIDTH}d}".encode()) + len(ID_START)
    pos = (offsets[:-1] + rel)[:, None] + np.arange(ID_WIDTH)[None, :]
    powers = 10 ** np.arange(ID_WIDTH - 1, -1, -1, dtype=np.int64)

    rng = np.random.default_rng(seed)
    n_shards = -(-n_docs // per_shard)
    scorers = [ScorerInfo(f"s{j}", True) for j in range(SCORERS)]
    names = [s.name for s in scorers]
    index, entries, sigma = [], [], {}
    t0 = time.monotonic()
    for s in range(n_shards):
        rows = min(per_shard, n_docs - s * per_shard)
        g = s * per_shard + np.arange(rows, dtype=np.int64)
        buf = data.copy()
        buf[pos[:rows]] = ((g[:, None] // powers) % 10 + 48).astype(np.uint8)
        if rows < per_shard:  # a short last shard: cut the offsets table and the samples
            head = np.concatenate([[rows], offsets[: rows + 1] - 4 * (per_shard - rows)]).astype(
                np.uint32
            )
            config = buf[4 + 4 * (per_shard + 1) : offsets[0]]  # MDS column config between the two
            buf = np.concatenate([head.view(np.uint8), config, buf[offsets[0] : offsets[rows]]])
        name = f"shard.{s:05d}.mds"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        buf.tofile(root / name)
        e = json.loads(json.dumps(entry))
        e["raw_data"] = {"basename": name, "bytes": int(buf.size), "hashes": {}}
        e["samples"] = rows
        index.append(e)
        lab = ShardLabels(
            # the stream checks every document read against its sidecar key
            key=np.array([doc_key(f"{ID_START}{i:0{ID_WIDTH}d}") for i in g], dtype=np.uint64),
            domain=rng.integers(0, DOMAINS, rows).astype(np.int32),
            tokens=rng.integers(20, 2000, rows).astype(np.int64),
            scores=rng.normal(size=(rows, SCORERS)),
        )
        if s == 0:
            sigma = build_sigma_tables(lab.scores, lab.tokens, scorers)
        side = sidecar_name(name)
        h = write_sidecar(root / side, lab, names)
        entries.append(ShardEntry(name, side, rows, sha256_file(root / name), h, int(buf.size)))
        if time.monotonic() - t0 > 5:
            t0 = time.monotonic()
            print(f"  building {root.name}: {s + 1}/{n_shards} shards", flush=True)
    (root / "index.json").write_text(json.dumps({"shards": index, "version": 2}))
    Manifest("mds", [f"dom{d}" for d in range(DOMAINS)], scorers, entries, sigma).save(root)
    done.write_text(json.dumps(spec))
    return root


# ---------------------------------------------------------------- one measurement (child)
def _pss(pids: list[int]) -> int:
    import psutil

    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total


def _family() -> list[int]:
    import psutil

    me = psutil.Process()
    return [me.pid] + [c.pid for c in me.children(recursive=True)]


class _Peak(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.stop = 0, False

    def run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, _pss(_family()))
            time.sleep(0.05)


def child(lib: str, root: str, method: str, steps: int, cache: str) -> dict:
    """Measure one library on one pool in this (fresh) process; returns the figures."""
    import torch  # noqa: F401

    # each library imports only what it needs: a training script's rank holds those imports too
    if lib == "quadmix":
        from torchdata.stateful_dataloader import StatefulDataLoader

        from quadmix_stream.formats.labels import Manifest
        from quadmix_stream.mixing.params import SamplingParams
        from quadmix_stream.stream.dataset import QuaDMixDataset, collate_docs
    else:
        from streaming import StreamingDataLoader, StreamingDataset

    base = _pss([os.getpid()])
    peak = _Peak()
    peak.start()
    batch = 64

    def make(epoch: int = 0):
        if lib == "quadmix":
            m = Manifest.load(root)
            ds = QuaDMixDataset(
                root,
                SamplingParams.keep_all(m.domains, m.scorer_names),
                rank=0,
                world_size=2,
                cache_dir=cache,
            )
            ds.set_epoch(epoch)
            return StatefulDataLoader(
                ds,
                batch_size=batch,
                num_workers=2,
                collate_fn=collate_docs,
                multiprocessing_context=method,
            )
        ds = StreamingDataset(local=root, batch_size=batch, shuffle=True, num_canonical_nodes=1)
        return StreamingDataLoader(
            ds, batch_size=batch, num_workers=2, multiprocessing_context=method
        )

    out: dict = {"lib": lib, "method": method}
    t0 = time.perf_counter()
    loader = make()
    it = iter(loader)
    next(it)
    out["first_batch_s"] = time.perf_counter() - t0
    for _ in range(steps):
        next(it)
    out["total_pss"] = _pss(_family())  # the whole tree, imports included
    out["steady_pss"] = out["total_pss"] - base
    state = loader.state_dict()
    del it, loader
    t0 = time.perf_counter()
    loader = make(1)  # the next epoch (StreamingDataset advances its epoch by itself)
    it = iter(loader)
    next(it)
    out["epoch_boundary_s"] = time.perf_counter() - t0
    del it, loader
    t0 = time.perf_counter()
    loader = make()
    loader.load_state_dict(state)
    it = iter(loader)
    next(it)
    out["resume_s"] = time.perf_counter() - t0
    del it, loader
    peak.stop = True
    peak.join()
    out["peak_pss"] = peak.peak - base
    out["import_pss"] = base
    return out


# ---------------------------------------------------------------- the command
def _run_child(lib: str, root: Path, method: str, steps: int, cache: Path) -> dict:
    cmd = [sys.executable, "-m", "quadmix_stream.benchmarks.scale", lib, str(root), method]
    cmd += [str(steps), str(cache)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(f"{lib}/{method} on {root} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def run(
    sizes: list[int],
    work: str | Path,
    steps: int = 300,
    spawn: bool = True,
    rows_per_shard: int = ROWS,
) -> list[dict]:
    """Build pools of ``sizes`` documents under ``work`` and measure both libraries on each."""
    work = Path(work)
    rows: list[dict] = []
    tag = "" if rows_per_shard == ROWS else f"-r{rows_per_shard}"
    for n in sizes:
        root = build_pool(work / f"pool-{n}{tag}", n, per_shard=rows_per_shard)
        cache = work / f"cache-{n}{tag}"
        shutil.rmtree(cache, ignore_errors=True)  # the first QuaDMix run starts cold
        cold = _run_child("quadmix", root, "fork", steps, cache)
        runs = [
            {**cold, "cache": "cold"},
            {**_run_child("quadmix", root, "fork", steps, cache), "cache": "warm"},
        ]
        if spawn:
            runs.append({**_run_child("quadmix", root, "spawn", steps, cache), "cache": "warm"})
        runs.append({**_run_child("streaming", root, "fork", steps, cache), "cache": "-"})
        for r in runs:
            r["n_docs"] = n
            rows.append(r)
            print(_line(r), flush=True)
    _summary(rows)
    (work / "scale-results.json").write_text(json.dumps(rows, indent=1))
    return rows


def _line(r: dict) -> str:
    mb = 1 << 20
    return (
        f"{r['n_docs']:>12,} {r['lib']:<10} {r['method']:<6} {r['cache']:<5} "
        f"first {r['first_batch_s']:7.2f} s  epoch {r['epoch_boundary_s']:7.2f} s  "
        f"resume {r['resume_s']:7.2f} s  PSS steady {r['steady_pss'] / mb:8.1f} MiB  "
        f"peak {r['peak_pss'] / mb:8.1f} MiB  ({r['steady_pss'] / r['n_docs']:6.2f} B/doc)  "
        f"whole tree {r['total_pss'] / mb:8.1f} MiB"
    )


def _summary(rows: list[dict]) -> None:
    print(
        "\nwhole process tree (rank + 2 fork workers, imports included), QuaDMix warm ÷ Streaming:"
    )
    for n in sorted({r["n_docs"] for r in rows}):
        q = [
            r
            for r in rows
            if (r["n_docs"], r["lib"], r["method"], r["cache"]) == (n, "quadmix", "fork", "warm")
        ]
        s = [r for r in rows if (r["n_docs"], r["lib"]) == (n, "streaming")]
        if q and s:
            mb = 1 << 20
            print(
                f"  {n:>12,} documents: {q[0]['total_pss'] / mb:8.1f} MiB ÷ "
                f"{s[0]['total_pss'] / mb:8.1f} MiB = {q[0]['total_pss'] / s[0]['total_pss']:.2f}"
            )
    print("\nslope of PSS (rank + 2 workers, above imports) against pool documents:")
    for lib, method, cache in sorted({(r["lib"], r["method"], r["cache"]) for r in rows}):
        pts = sorted(
            (r["n_docs"], r["steady_pss"], r["peak_pss"])
            for r in rows
            if (r["lib"], r["method"], r["cache"]) == (lib, method, cache)
        )
        if len(pts) < 2:
            continue
        n = np.array([p[0] for p in pts], dtype=np.float64)
        for i, what in ((1, "steady"), (2, "peak")):
            y = np.array([p[i] for p in pts], dtype=np.float64)
            slope, icpt = np.polyfit(n, y, 1)
            at_1b = (icpt + slope * 1e9) / (1 << 30)
            print(
                f"  {lib:<10} {method:<6} {cache:<5} {what:<6} {slope:8.3f} B/doc  "
                f"→ {at_1b:8.2f} GiB at 1B documents"
            )


def main(argv: list[str]) -> None:
    lib, root, method, steps, cache = argv
    print(json.dumps(child(lib, root, method, int(steps), cache)))


if __name__ == "__main__":
    main(sys.argv[1:])
