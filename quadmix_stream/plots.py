"""Pictures of a selection: sampling curves per domain and token shares before/after."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.mixing.sampling import expected_copies
from quadmix_stream.storage.store import Store, as_store


def plot_selection(
    root: str | Path | Store,
    params: SamplingParams,
    out: str | Path,
    seed: int = 0,
    epoch: int = 0,
    report: dict | None = None,
) -> Path:
    """Write a PNG: left, S(r) per domain (Eq. 3); right, pool vs expected vs realised token shares.

    ``root``: the dataset's folder, its URL (labels only are fetched) or an open store.
    ``report``: :func:`~quadmix_stream.inspect.inspect_dataset`'s result for the same params,
    seed and epoch, when the caller has it (saves a pass over the sidecars).
    """
    from quadmix_stream.extras import pyplot
    from quadmix_stream.inspect import inspect_dataset

    plt = pyplot("inspect --plot")

    store = as_store(root)  # a remote dataset: one client for the manifest and the sidecars
    m = Manifest.load(store)
    rep = (report or inspect_dataset(store, params, seed, epoch))["domains"]  # shard by shard
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    r = np.linspace(0, 1, 1001)
    for i, d in enumerate(m.domains):
        s = expected_copies(
            r, params.lam[i], params.omega[i], params.eta[i], params.eps[i], params.form
        )
        a.plot(r, s, label=d)
    a.set_xlabel("in-domain rank r (0 = best)")
    a.set_ylabel("expected copies S(r)")
    a.set_title(f"Sampling curves ({params.form})")
    a.set_xscale("symlog", linthresh=0.01)
    a.legend(fontsize=8)
    pool, exp, real = (
        np.array([float(rep[d][k]) for d in m.domains])
        for k in ("tokens", "expected_tokens", "realised_tokens")
    )
    x = np.arange(len(m.domains))
    w = 0.27
    for k, (name, v) in enumerate(
        (("pool", pool), ("expected", exp), (f"realised (epoch {epoch})", real))
    ):
        b.bar(x + (k - 1) * w, v / max(v.sum(), 1), w, label=name)
    b.set_xticks(x, m.domains, rotation=45, ha="right")
    b.set_ylabel("token share")
    b.set_title("Domain mixture")
    b.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
