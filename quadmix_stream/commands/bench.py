"""``quadmix-stream bench …``: speed measured against a baseline in the same run."""

from __future__ import annotations

import argparse
import time

import numpy as np


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="benchmarks (each prints a ratio against a same-run baseline)")
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    c = bsub.add_parser(
        "compile",
        help="params → counts for N synthetic label rows (rows/s)",
        description=(
            "Time σ normalisation + Eq.1 + Eq.2 + Eq.3 + realize over N synthetic label rows on one "
            "core, with exact and table-based ranks, against a baseline of one np.sort of N floats."
        ),
    )
    c.add_argument("--rows", type=int, default=10_000_000)
    c.add_argument("--domains", type=int, default=26)
    c.add_argument("--scorers", type=int, default=3)
    c.set_defaults(func=_bench_compile)
    __import__("quadmix_stream.labelling.bench", fromlist=["_"]).add_bench(bsub)
    __import__("quadmix_stream.commands.search", fromlist=["_"]).register_bench(bsub)
    __import__("quadmix_stream.benchmarks.gpu_smoke", fromlist=["_"]).add_parser(bsub)

    lo = bsub.add_parser(
        "loader",
        help="items/s of QuaDMixDataset vs raw MDS reads, StreamingDataset and WebDataset",
        description=(
            "Write the same documents as zstd MDS and as WebDataset tar (the real corpus with "
            "--corpus, else the synthetic one), then measure in one run: (a) raw sequential "
            "StreamingDataset.get_item, (b) StreamingDataset in a 2-worker DataLoader, (c) plain "
            "WebDataset, (d) QuaDMixDataset keeping everything (2-worker DataLoader and in-process), "
            "(e) QuaDMixDataset at ~10% selection, (f) read everything then filter at 10%."
        ),
    )
    lo.add_argument("--corpus", help="folder of *.jsonl.gz documents, e.g. ../shared/data/corpus")
    lo.add_argument("--work", help="folder for the written shards (reused when present)")
    lo.add_argument("--docs-per-domain", type=int, default=4000, help="synthetic corpus size")
    lo.add_argument("--repeat", type=int, default=2, help="best of N timings")
    lo.add_argument(
        "--rows-per-shard", type=int, default=2000, help="documents per written shard (2,000)"
    )
    lo.set_defaults(func=_bench_loader)

    sc = bsub.add_parser(
        "scale",
        help="memory per pool document and start-up time as the pool grows, vs StreamingDataset",
        description=(
            "Build labelled MDS pools of N tiny documents (reused when present), then measure in "
            "fresh processes with a 2-worker DataLoader, for QuaDMixDataset (cold and warm caches, "
            "fork and spawn workers) and mosaicml-streaming's StreamingDataset on the same "
            "shards: PSS of the rank and its workers above imports (steady and peak), time to the "
            "first batch, of an epoch boundary and of a resume. Prints the slope of PSS against N "
            "and its extrapolation to 1B documents. N = 100M needs ~10 GB of disk."
        ),
    )
    sc.add_argument(
        "--docs",
        default="1000000,10000000,100000000",
        help="comma-separated pool sizes (default 1M,10M,100M)",
    )
    sc.add_argument("--work", required=True, help="folder for the pools and caches (reused)")
    sc.add_argument("--steps", type=int, default=300, help="batches before the steady PSS")
    sc.add_argument("--no-spawn", action="store_true", help="skip the spawn-worker runs")
    sc.add_argument(
        "--rows-per-shard",
        type=int,
        default=16_384,
        help="documents per shard (16,384; ~111,000 is a 4 MiB MDS shard of short documents)",
    )
    sc.set_defaults(func=_bench_scale)

    ct = bsub.add_parser(
        "control",
        help="what a params controller costs per update and per switch as the pool grows",
        description=(
            "On the labelled MDS pools of `bench scale` (built once under --work and reused), "
            "with a 2-worker loader: the ODM controller's work per update, and the loader "
            "reading the same batches without a switch and with a switch to new domain shares "
            "every --every batches (interleaved, best of --repeat). Prints the cost of one "
            "switch and the smallest controller period that keeps switches under 1% of the "
            "training time at --step-s seconds per step."
        ),
    )
    ct.add_argument("--docs", default="100000,1000000", help="comma-separated pool sizes")
    ct.add_argument("--work", required=True, help="folder for the pools (reused)")
    ct.add_argument("--every", type=int, default=20, help="batches between switches")
    ct.add_argument("--switches", type=int, default=3, help="switches per timed read")
    ct.add_argument("--repeat", type=int, default=2, help="best of N timings")
    ct.add_argument("--step-s", type=float, default=1.0, help="a training step's seconds")
    ct.set_defaults(func=_bench_control)

    rm = bsub.add_parser(
        "remote",
        help="reading shards from an S3 endpoint: items/s and bytes per item vs StreamingDataset",
        description=(
            "Start a real S3 API (moto) on the loopback interface behind a proxy that adds a "
            "per-request latency and counts bytes, upload the same uncompressed MDS shards, and "
            "read them with a fresh cache each time: (a) StreamingDataset(remote=…), (b) "
            "QuaDMixDataset keeping everything, (c) QuaDMixDataset at ~10% selection (with the default "
            "request_bytes, then 8 KiB), all in a "
            "2-worker DataLoader. Prints items/s, bytes and requests per delivered item, and the "
            "ratios (b)/(a) items/s, (c)/(b) bytes, (c)/(b) items/s. Needs the dev extra (moto)."
        ),
    )
    rm.add_argument("--corpus", help="folder of *.jsonl.gz documents, e.g. ../shared/data/corpus")
    rm.add_argument("--work", help="folder for the shards and caches (shards reused when present)")
    rm.add_argument("--docs-per-domain", type=int, default=4000, help="synthetic corpus size")
    rm.add_argument("--rows-per-shard", type=int, default=2000, help="documents per MDS shard")
    rm.add_argument(
        "--latency-ms",
        default="0,20,50",
        help="comma-separated per-request latencies to add (default 0,20,50: loopback, and "
        "round trips like a real object store's)",
    )
    rm.set_defaults(func=_bench_remote)


def _bench_remote(a: argparse.Namespace) -> int:
    from quadmix_stream.benchmarks.remote import run

    lat = [float(x) / 1000 for x in a.latency_ms.split(",") if x.strip()]
    run(a.work, a.docs_per_domain, a.rows_per_shard, lat, a.corpus)
    return 0


def _bench_control(a: argparse.Namespace) -> int:
    from quadmix_stream.benchmarks.control import run

    run(_counts(a.docs), a.work, a.every, a.switches, a.repeat, a.step_s)
    return 0


def _bench_scale(a: argparse.Namespace) -> int:
    from quadmix_stream.benchmarks.scale import run

    run(_counts(a.docs), a.work, a.steps, spawn=not a.no_spawn, rows_per_shard=a.rows_per_shard)
    return 0


def _counts(text: str) -> list[int]:
    """``"1M,10M,2.5e6"`` → document counts (suffixes K, M, B as in the help)."""
    from quadmix_stream.errors import UserError

    scale = {"K": 10**3, "M": 10**6, "B": 10**9}
    out = []
    for x in (x.strip().upper() for x in text.split(",") if x.strip()):
        try:
            out.append(int(float(x[:-1]) * scale[x[-1]]) if x[-1] in scale else int(float(x)))
        except ValueError:
            raise UserError(f"--docs: {x!r} is not a count (e.g. 1M,10M or 1000000)") from None
    return out


def _bench_loader(a: argparse.Namespace) -> int:
    from quadmix_stream.benchmarks.loader import run

    run(a.corpus, a.work, a.docs_per_domain, a.repeat, a.rows_per_shard)
    return 0


def _bench_compile(a: argparse.Namespace) -> int:
    from quadmix_stream.formats.labels import ScorerInfo
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.mixing.sampling import build_sigma_table, realize
    from quadmix_stream.stream.selection import RankConfig, RankModel, Reference, expected_of

    rng = np.random.default_rng(0)
    n, m, k = a.rows, a.domains, a.scorers
    domain = rng.integers(0, m, n).astype(np.int32)
    tokens = rng.integers(50, 2000, n)
    keys = rng.integers(0, 2**63, n, dtype=np.int64).astype(np.uint64)
    raw = rng.normal(size=(n, k))
    scorers = [ScorerInfo(f"s{j}") for j in range(k)]
    tables = [build_sigma_table(raw[:, j], tokens, True) for j in range(k)]
    params = SamplingParams.propose(1, [f"d{i}" for i in range(m)], [s.name for s in scorers], 0)[0]
    from quadmix_stream.mixing.sampling import apply_sigma

    t0 = time.perf_counter()
    np.sort(raw[:, 0])
    base = time.perf_counter() - t0
    print(
        f"rows={n:,} domains={m} scorers={k}; baseline: one np.sort of {n:,} floats = {base:.3f}s"
    )
    t0 = time.perf_counter()
    sig = np.column_stack([apply_sigma(tables[j], raw[:, j]) for j in range(k)])
    print(
        f"  per dataset, once (σ tables applied, cached by the loader): {time.perf_counter() - t0:.3f}s"
    )
    for method in ("exact", "table"):
        cfg = RankConfig(method=method)
        t0 = time.perf_counter()
        ref = Reference.of_arrays(sig, domain, tokens, keys, m, cfg)
        print(
            f"  rank={method:<6} per dataset, once (reference of {ref.domain.size:,} rows): "
            f"{time.perf_counter() - t0:.3f}s"
        )
        t0 = time.perf_counter()
        s = expected_of(sig, domain, params, RankModel.build(ref, params, cfg))
        t1 = time.perf_counter()
        c = realize(s, keys, seed=0, epoch=0)
        t2 = time.perf_counter()
        dt = t2 - t0
        print(
            f"  rank={method:<6} params→S {t1 - t0:6.3f}s + realize {t2 - t1:5.3f}s = {dt:6.3f}s  "
            f"{n / dt / 1e6:6.2f}M rows/s  ({dt / base:.1f}× one sort; {int(c.sum()):,} copies)"
        )
    return 0
