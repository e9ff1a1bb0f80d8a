"""Labelling sub-commands: ``label`` (recipe-driven, resumable, torchrun-aware) and ``train-labeler``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quadmix_stream.executors import add_executor_arguments


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``label`` and ``train-labeler`` sub-commands."""
    _register_label(sub)
    _register_train(sub)


def _register_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "label",
        help="label documents or existing shards (domain, quality scores, tokens) → dataset",
        description=(
            "Label documents with a domain labeller, quality scorers and a token counter, driven by "
            "a YAML recipe (see recipes/label_*.yaml) and/or flags. Raw JSONL/JSONL.gz/JSONL.zst/"
            "Parquet documents become new MDS/tar/JSONL shards with sidecars; existing shards "
            "(input.shards / --shards: MDS, WebDataset .tar/.tar.gz, JSONL.zst, a folder of Parquet "
            "files, a datasets save_to_disk folder) get sidecars beside them without being "
            "rewritten; existing columns become labels with field labellers. The "
            "manifest (σ tables over the whole pool) is written last. Resumable: re-running skips "
            "finished shards, and recomputes only columns whose labeller changed. Distributed: "
            "`torchrun --nproc_per_node N -m quadmix_stream.cli label RECIPE`, or on a Ray "
            "cluster: --executor ray (--ray-address auto joins the cluster this machine is in; "
            "each unit is a task, retried if its worker dies). "
            "Object storage: --shards, --input and --out also take URLs (s3://bucket/prefix, "
            "gs://... with gcsfs; credentials from the client's usual configuration, an "
            "S3-compatible endpoint from AWS_ENDPOINT_URL). Shards in a bucket are labelled in "
            "place: each is fetched into the local cache, read and deleted, and its sidecar is "
            "written beside it; the run's records (.quadmix-label/) live in the bucket too, so "
            "a killed run resumes from any machine, and the manifest is written last."
        ),
    )
    p.add_argument("recipe", nargs="?", help="YAML recipe (optional when flags say everything)")
    p.add_argument(
        "--out", metavar="DIR|URL", help="output folder or s3://… prefix (overrides output.dir)"
    )
    g = p.add_argument_group("input (each replaces the recipe's input)")
    g.add_argument(
        "--input",
        nargs="+",
        metavar="GLOB",
        help='raw document files; URLs are globbed remotely and streamed ("s3://b/raw/*.jsonl.gz")',
    )
    g.add_argument(
        "--shards",
        metavar="DIR|URL",
        help="existing shards to label in place: a folder or an s3://… prefix",
    )
    g.add_argument(
        "--text-field", help="text field of raw documents / Parquet/Arrow column (default: text)"
    )
    g.add_argument(
        "--id-field", help="id field of raw documents / Parquet/Arrow column (default: id)"
    )
    g.add_argument("--limit", type=int, help="read at most N rows per input file")
    g = p.add_argument_group("output")
    g.add_argument("--format", choices=("mds", "tar", "jsonl"), help="new shard format")
    g.add_argument("--rows-per-shard", type=int)
    g.add_argument("--compression", choices=("none", "zstd"), help="MDS compression")
    g = p.add_argument_group(
        "labellers (key=value lists, e.g. type=fasttext,path=m.bin,label=hq,name=dclm)"
    )
    g.add_argument("--domain", metavar="SPEC", help="domain labeller")
    g.add_argument("--scorer", metavar="SPEC", action="append", help="quality scorer (repeat)")
    g.add_argument("--tokens", metavar="SPEC", help="token counter (whitespace, bytes, tokenizer)")
    g.add_argument("--domains", help="comma-separated domain list")
    g = p.add_argument_group("run")
    g.add_argument("--status", action="store_true", help="show done/stale/pending shards only")
    g.add_argument("--retrain", action="store_true", help="rerun the recipe's training jobs")
    g.add_argument("--io-workers", type=int, choices=(0, 1), help="1: read/write in a helper")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")
    g.add_argument("--throttle", type=float, default=0.0, help=argparse.SUPPRESS)
    add_executor_arguments(g)
    p.set_defaults(func=_label)


def _register_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train-labeler",
        help="train a labeller (fasttext domain/quality, embedding + linear head)",
        description=(
            "Train a labeller from a small labelled seed set and report held-out accuracy/AUC. "
            "fasttext-domain: documents with a domain field. fasttext-quality: DCLM style, "
            "positives (target-like documents) vs a uniform sample of pool documents. embedding: "
            "a logistic-regression head on a local sentence-embedding model, for a domain or a "
            "quality label. Inputs are JSONL/JSONL.gz/JSONL.zst/Parquet globs."
        ),
    )
    p.add_argument("type", choices=("fasttext-domain", "fasttext-quality", "embedding"))
    p.add_argument("--out", required=True, help="model file to write (.bin / .npz)")
    p.add_argument("--input", nargs="+", metavar="GLOB", help="documents with a domain field")
    p.add_argument("--field", default="domain", help="domain field (dotted path)")
    p.add_argument("--where", action="append", metavar="FIELD=V1,V2", help="filter --input")
    p.add_argument("--positives", nargs="+", metavar="GLOB", help="target-like documents")
    p.add_argument("--positives-where", action="append", metavar="FIELD=V1,V2")
    p.add_argument("--negatives", nargs="+", metavar="GLOB", help="pool documents")
    p.add_argument("--negatives-where", action="append", metavar="FIELD=V1,V2")
    p.add_argument("--max-negatives", type=int, help="negatives sampled (default: #positives)")
    p.add_argument("--max-per-class", type=int, help="cap training docs per domain class")
    p.add_argument("--kind", choices=("domain", "quality"), default="quality", help="embedding")
    p.add_argument("--model", help="embedding: sentence-embedding model folder (package:// ok)")
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epoch", type=int, help="fasttext epochs")
    p.add_argument("--eval", nargs="+", metavar="GLOB", help="quality: external labelled set")
    p.add_argument("--eval-field", help="quality: its binary label field, e.g. meta.label")
    p.add_argument("--eval-positive", default="1", help="value of --eval-field that is positive")
    p.add_argument("--limit", type=int, help="read at most N documents per input file")
    p.add_argument("--max-length", type=int, default=256, help="embedding: tokens per document")
    p.add_argument("--force", action="store_true", help="retrain even if the model is current")
    p.set_defaults(func=_train)


def _where(items: list[str] | None) -> dict | None:
    if not items:
        return None
    out = {}
    for it in items:
        k, _, v = it.partition("=")
        out[k] = v.split(",")
    return out


def _label(a: argparse.Namespace) -> int:
    from quadmix_stream.labelling.pipeline import run_label
    from quadmix_stream.labelling.recipe import Recipe, load_recipe, parse_kv
    from quadmix_stream.labelling.run_report import RunResult
    from quadmix_stream.storage.store import is_remote

    def where(x: str) -> str:
        return x.rstrip("/") if is_remote(x) else str(Path(x).resolve())

    r = load_recipe(a.recipe) if a.recipe else Recipe(base=Path.cwd())
    if a.input or a.shards:
        from quadmix_stream.labelling.inputs import InputSpec

        r.input = InputSpec(paths=[x if is_remote(x) else where(x) for x in a.input or []])
        if a.shards:
            r.input = InputSpec(shards=where(a.shards))
    for flag, attr in (("text_field", "text_field"), ("id_field", "id_field"), ("limit", "limit")):
        if getattr(a, flag) is not None:
            setattr(r.input, attr, getattr(a, flag))
    if a.out:
        r.out = where(a.out) if is_remote(a.out) else Path(a.out).resolve()
    if a.format:
        r.format = a.format
    if a.rows_per_shard:
        r.rows_per_shard = a.rows_per_shard
    if a.compression:
        r.compression = None if a.compression == "none" else a.compression
    if a.domain:
        r.domain = parse_kv(a.domain)
    if a.scorer:
        r.scorers = [parse_kv(s) for s in a.scorer]
    if a.tokens:
        r.tokens = parse_kv(a.tokens)
    if a.domains:
        r.domains = [d.strip() for d in a.domains.split(",") if d.strip()]
    if a.io_workers is not None:
        r.io_workers = a.io_workers
    if a.no_progress:
        r.progress = False
    r.executor = r.executor.with_overrides(a.executor, a.ray_address)
    res = run_label(r, status_only=a.status, retrain=a.retrain, throttle_s=a.throttle)
    if isinstance(res, list):
        counts = {k: sum(s.status == k for s in res) for k in ("done", "stale", "pending")}
        print(f"{r.out}: {len(res)} units: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
        for s in res:
            if s.status != "done":
                extra = f" columns {s.stale}" if s.stale else ""
                print(f"  unit {s.unit}: {s.status}{extra} {s.why}".rstrip())
        return 0
    assert isinstance(res, RunResult)
    if res.manifest is not None:  # rank 0
        print(res.summary())
        print(f"next: quadmix-stream inspect {r.out}")
    return 0


def _train(a: argparse.Namespace) -> int:
    from quadmix_stream.labelling.train import format_report, report_path, run_train_job

    def paths(globs: list[str] | None) -> dict | None:
        if not globs:
            return None
        spec: dict = {"paths": [str(Path(g).resolve()) for g in globs]}
        if a.limit:
            spec["limit"] = a.limit
        return spec

    job: dict = {"type": a.type, "out": str(Path(a.out).resolve()), "seed": a.seed}
    job["holdout"] = a.holdout
    if a.epoch:
        job["fasttext"] = {"epoch": a.epoch}
    if a.type == "fasttext-domain" or (a.type == "embedding" and a.kind == "domain"):
        if not a.input:
            print("train-labeler: --input is required for a domain labeller", file=sys.stderr)
            return 2
        job.update(input=paths(a.input), field=a.field)
        if a.where:
            job["where"] = _where(a.where)
        if a.max_per_class:
            job["max_per_class"] = a.max_per_class
    else:
        if not a.positives or not a.negatives:
            print("train-labeler: --positives and --negatives are required", file=sys.stderr)
            return 2
        job.update(positives=paths(a.positives), negatives=paths(a.negatives))
        for k in ("positives_where", "negatives_where"):
            if getattr(a, k):
                job[k] = _where(getattr(a, k))
        if a.max_negatives:
            job["max_negatives"] = a.max_negatives
        if a.eval and a.type == "fasttext-quality":
            job["eval"] = {
                "input": paths(a.eval),
                "field": a.eval_field,
                "positive": a.eval_positive,
            }
    if a.type == "embedding":
        if not a.model:
            print("train-labeler: --model is required for an embedding head", file=sys.stderr)
            return 2
        job.update(kind=a.kind, model=a.model, max_length=a.max_length)
        job.pop("fasttext", None)
    model, rep, trained = run_train_job(job, Path.cwd(), force=a.force)
    print(
        ("trained " if trained else "reusing (same job; --force retrains) ")
        + format_report(model, rep)
    )
    print(f"  full report (JSON): {report_path(model)}")
    return 0
