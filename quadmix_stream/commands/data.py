"""Data sub-commands: ``synth``, ``inspect``, ``sample``."""

from __future__ import annotations

import argparse
import json

from quadmix_stream.errors import UserError
from quadmix_stream.formats.labels import FORMATS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "synth",
        help="write the planted synthetic corpus (labelled shards + target/eval sets)",
        description=(
            "Write a synthetic multi-domain corpus with planted structure: 5 domains with their own "
            "generative processes, 4 quality levels (increasing word corruption), 3 scorers "
            "(noisy measurements of quality, and one uninformative), ground-truth labels in the "
            "label format, plus eval_sets/target.jsonl (clean text of the target domains "
            "'arith' and 'facts': the planted optimum) and eval_sets/eval.jsonl (clean text of "
            "every domain)."
        ),
    )
    p.add_argument("out", help="output folder (must be empty or absent)")
    p.add_argument("--format", choices=FORMATS, default="mds", help="shard format (default: mds)")
    p.add_argument(
        "--docs-per-domain", type=int, default=2000, help="documents per domain (default 2000)"
    )
    p.add_argument(
        "--rows-per-shard", type=int, default=500, help="documents per shard (default 500)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_synth)

    p = sub.add_parser(
        "inspect",
        help="per-domain statistics from metadata alone (with --params: what they select)",
        description=(
            "Read only the manifest and label sidecars (no payload) and print, per domain, documents "
            "and tokens; with --params also expected and realised selected tokens, the repeat "
            "histogram and unique coverage for one (seed, epoch)."
        ),
    )
    p.add_argument(
        "dataset",
        help="labelled dataset: a folder or a URL such as s3://bucket/ds (has quadmix.json)",
    )
    p.add_argument("--params", help="params.json to evaluate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--plot", help="with --params: write a PNG of the sampling curves and mixtures")
    p.set_defaults(func=_inspect)

    p = sub.add_parser(
        "sample",
        help="materialise the realised copy count of every document",
        description=(
            "Write key, shard, row and realised count of every document for (params, seed, epoch): "
            "JSONL, or Parquet when --out ends in .parquet. The loader emits exactly these counts "
            "(over all ranks and workers, with balance=None)."
        ),
    )
    p.add_argument("dataset")
    p.add_argument("--params", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--out", required=True, help="output .jsonl or .parquet")
    p.add_argument("--selected-only", action="store_true", help="omit documents with count 0")
    p.set_defaults(func=_sample)


def _synth(a: argparse.Namespace) -> int:
    from quadmix_stream.synth import synth

    m = synth(a.out, a.format, a.docs_per_domain, a.seed, a.rows_per_shard)
    print(f"wrote {m.rows} documents in {len(m.shards)} {a.format} shards to {a.out}")
    print(
        f"target set: {a.out}/eval_sets/target.jsonl; broad eval set: {a.out}/eval_sets/eval.jsonl"
    )
    return 0


def _inspect(a: argparse.Namespace) -> int:
    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.inspect import format_report, inspect_dataset
    from quadmix_stream.mixing.params import SamplingParams

    params = None
    if a.params:
        m = Manifest.load(a.dataset)
        params = SamplingParams.load(a.params).reorder(m.domains, m.scorer_names)
    rep = inspect_dataset(a.dataset, params, a.seed, a.epoch)
    print(json.dumps(rep, indent=1) if a.json else format_report(rep))
    if a.plot:
        if params is None:
            raise UserError("--plot needs --params")
        from quadmix_stream.plots import plot_selection

        print(f"wrote {plot_selection(a.dataset, params, a.plot, a.seed, a.epoch)}")
    return 0


def _sample(a: argparse.Namespace) -> int:
    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.stream.materialize import write_sample

    m = Manifest.load(a.dataset)
    params = SamplingParams.load(a.params).reorder(m.domains, m.scorer_names)
    n = write_sample(a.dataset, params, a.seed, a.epoch, a.out, keep_zero=not a.selected_only)
    print(f"wrote {n} rows to {a.out}")
    return 0
