"""Contenders whose proxies would read the same stream are trained once.

Copies per document are integers, so two θ that differ in the 4th decimal (θ\\* beside a
candidate it was averaged from, a round's best beside a near copy) often realise exactly the same
copies of every document at a seed. Their proxies then read the same documents in the same order
and measure the same loss: training both spends a proxy on a duplicate. Pairs are compared only
when their parameters are close (cheap), and then exactly, by the copies they realise at the
job's seed in every shard over the epochs a proxy may read (the stream's order is a function of
the seed and these copies, not of θ). A copy is taken only when the trained twin read no more
epochs than were compared; otherwise the job is trained after all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search.config import ProxyConfig
from quadmix_stream.search.data import epoch_tokens, expected_selection, open_stream
from quadmix_stream.search.proxy import ProxyJob, stream_fingerprint

#: parameters this close (relative) are compared by their realised copies
CLOSE = 1e-2


def close(a: SamplingParams, b: SamplingParams, rtol: float = CLOSE) -> bool:
    """Whether ``a`` and ``b`` have the same names and form and parameters within ``rtol``."""
    if (a.domains, a.scorers, a.form) != (b.domains, b.scorers, b.form):
        return False
    return all(
        np.allclose(getattr(a, k), getattr(b, k), rtol=rtol, atol=1e-9)
        for k in ("alpha", "lam", "omega", "eta", "eps")
    )


def epochs_read(ds, proxy: ProxyConfig) -> int:
    """Epochs of θ's stream a proxy may read: twice the label-token estimate, plus one (the
    proxy's tokenizer differs from the labels'); at most ``max_epochs``."""
    per_epoch = epoch_tokens(expected_selection(ds), proxy.doc_tokens, proxy.pool_fraction)
    if per_epoch <= 0:
        return 0
    return min(proxy.max_epochs, 2 * math.ceil(proxy.tokens / per_epoch) + 1)


def same_copies(
    dataset: str | Path, a: SamplingParams, b: SamplingParams, seed: int, epochs: int
) -> bool:
    """Whether ``a`` and ``b`` realise the same copies of every document at ``seed`` in epochs
    ``< epochs`` (shard by shard, stopping at the first difference: most close pairs differ in
    the first shard compared, and twins cost what the proxies' own count passes cost)."""
    da, db = open_stream(dataset, a, seed), open_stream(dataset, b, seed)
    return all(
        np.array_equal(da.counts(s, e), db.counts(s, e))
        for e in range(epochs)
        for s in range(len(da.manifest.shards))
    )


def find_twins(
    jobs: Sequence[ProxyJob], dataset: str | Path, proxy: ProxyConfig
) -> dict[str, tuple[str, int]]:
    """``{job name: (name of an earlier job with the same stream, epochs compared)}``.

    Jobs at different seeds are never twins; within a seed, only jobs whose θ are
    :func:`close` are compared, so a batch of distinct contenders costs nothing here."""
    twins: dict[str, tuple[str, int]] = {}

    def seed(job: ProxyJob) -> int:
        return proxy.data_seed if job.data_seed is None else int(job.data_seed)

    for i, job in enumerate(jobs):
        for first in jobs[:i]:
            if first.name in twins or seed(first) != seed(job):
                continue
            if not close(first.params, job.params):
                continue
            if stream_fingerprint(first.params) == stream_fingerprint(job.params):
                n = proxy.max_epochs  # the same θ: the same stream, however far it is read
            else:
                n = epochs_read(open_stream(dataset, first.params, seed(first)), proxy)
                if n == 0 or not same_copies(dataset, first.params, job.params, seed(job), n):
                    continue
            twins[job.name] = (first.name, n)
            break
    return twins


def twin_record(job: ProxyJob, trained: dict | None, epochs: int) -> dict | None:
    """The record of ``job`` copied from its twin's, or None when the twin failed or read more
    epochs than were compared (then ``job`` is trained itself)."""
    if trained is None or trained.get("status") != "ok":
        return None
    if int(trained.get("epochs", epochs + 1)) > epochs:
        return None
    return {
        **trained,
        **job.info,
        "name": job.name,
        "params_fingerprint": job.params.fingerprint(),
        "stream_fingerprint": stream_fingerprint(job.params),
        "same_stream_as": trained["name"],
    }
