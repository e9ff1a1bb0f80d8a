"""Summaries of a search run folder: coverage of the proxies and eval sets, best per round, ``status``.

Read-only views of the run folder's tables, shared by the steps' logs, the report and the
``status`` command.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from quadmix_stream.search.data import load_target_texts
from quadmix_stream.search.runfolder import RunFolder, read_jsonl

Log = Callable[[str], None]


def log_eval_coverage(folder: RunFolder, log: Log) -> dict:
    """How many documents of each evaluation set the proxies are scored on (kept in search.json)."""
    from quadmix_stream.search.data import eval_coverage
    from quadmix_stream.search.tokenizer import TextTokenizer

    p = folder.config.proxy
    tok = TextTokenizer(folder.tokenizer_path, folder.config.tokenizer.eos_token)
    out = {}
    for name, path in folder.eval_paths.items():
        texts = load_target_texts(path)
        c = eval_coverage(texts, tok, p.eval_max_tokens, p.eval_doc_tokens, p.data_seed)
        out[name] = c
        how = f"at most {p.eval_doc_tokens} tokens each" if p.eval_doc_tokens else "in file order"
        log(
            f"eval set {name}: proxies are scored on {c['tokens']:,} tokens from {c['docs_used']} "
            f"of its {c['docs']} documents ({how})"
        )
        if c["docs_used"] < min(c["docs"], 50):
            log(
                f"WARNING: eval set {name}: only {c['docs_used']} of {c['docs']} documents are "
                "scored; set proxy.eval_doc_tokens (e.g. 64) or raise proxy.eval_max_tokens"
            )
    folder.update_meta(eval_coverage=out)
    return out


def coverage_lines(folder: RunFolder) -> list[str]:
    """Documents per proxy (min/median), and a warning when the median is below the threshold."""
    cov = folder.coverage()
    if cov is None:
        return []
    out = [
        f"documents per proxy: min {cov['min']}, median {cov['median']:.0f}, max {cov['max']} "
        f"({cov['proxies']} proxies)"
    ]
    if cov["median"] < cov["threshold"]:
        cap = folder.config.proxy.doc_tokens
        fix = (
            f"lower proxy.doc_tokens (now {cap})"
            if cap
            else "set proxy.doc_tokens (e.g. 128) so each proxy trains on windows of many documents"
        )
        out.append(
            f"WARNING: proxies saw a median of {cov['median']:.0f} documents (< "
            f"coverage_min_docs={cov['threshold']}): a proxy's loss then reflects which few "
            f"documents were drawn more than θ; {fix}, or raise proxy.tokens"
        )
    return out


def best_per_round(folder: RunFolder) -> dict[int, float]:
    """The lowest actual objective of each round's proxies (round 0: the recipe's proposals)."""
    _, y, recs = folder.table()
    out: dict[int, float] = {}
    for v, rec in zip(y, recs, strict=True):
        out[rec["round"]] = min(out.get(rec["round"], np.inf), float(v))
    return dict(sorted(out.items()))


def summary(path: str | Path) -> dict:
    """A small status of a run folder (what the `status` step prints)."""
    folder = RunFolder(path)
    ids, _, _ = folder.proposals()
    done = folder.finished()
    failed = {k: v.get("reason") for k, v in done.items() if v.get("status") != "ok"}
    return {
        "run_folder": str(folder.path),
        "space": folder.config.space,
        "proposals": int(len(ids)),
        "finished": len(done),
        "ok": len(done) - len(failed),
        "failed": failed,
        "fitted": (folder.path / "model" / "metrics.json").exists(),
        "rounds": {str(k): v for k, v in best_per_round(folder).items()},
        "coverage": folder.coverage(),
        "selected": (folder.path / "params.json").exists(),
        "evaluated": sorted(folder.finished("evals")),
        "results_rows": len(read_jsonl(folder.path / "results.jsonl")),
        "invocations": len(folder.logs()),
    }
