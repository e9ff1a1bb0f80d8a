"""``quadmix-stream bench control``: what a params controller costs as the pool grows.

For each pool size N (the labelled MDS pools of ``bench scale``, built once and reused) it
measures, in one process with a 2-worker ``StatefulDataLoader`` of 64-document batches:

* the controller's own work per step: :class:`~quadmix_stream.control.ODMController` updating
  every step (its worst case), against the time of one batch from the loader;
* the loader reading the same batches without a switch (the baseline) and with a switch every
  ``every`` batches to new domain shares (:func:`~quadmix_stream.loaders.stateful.switch_params`:
  gather the state, re-deal under the new params, new workers), interleaved, best of
  ``repeat``. The difference per switch is what a switch costs;
* the smallest ``every`` that keeps the switches under 1 % of the training time at a given step
  time (``--step-s``, default 1 s).

A switch re-deals the rest of the epoch exactly, which needs the new params' per-shard totals: a
pass over every label of the pool (split between the ranks of a node, cached per params). Its
cost grows with N; the controller's own work does not.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

BATCH = 64


def _controller_ms(base, tokens, steps: int = 500) -> float:
    from quadmix_stream.control import DomainSignals, ODMConfig, ODMController

    ctl = ODMController(ODMConfig(every=1, prior="uniform"), base, tokens)
    rng = np.random.default_rng(0)
    m = len(tokens)
    signals = [
        DomainSignals(np.full(m, 100), rng.uniform(1, 5, m) * 100, np.full(m, 100.0))
        for _ in range(steps)
    ]
    t = time.perf_counter()
    for s, sig in enumerate(signals, 1):
        ctl.observe(s, sig)
    return (time.perf_counter() - t) / steps * 1e3


def _read(root: Path, base, tokens, batches: int, every: int | None, seed: int) -> float:
    """Seconds to read ``batches`` batches, switching to new shares every ``every`` batches."""
    from quadmix_stream.loaders.stateful import make_loader, switch_params
    from quadmix_stream.mixing.shares import scale_to_shares
    from quadmix_stream.stream.dataset import QuaDMixDataset

    ds = QuaDMixDataset(root, base, seed=0, infinite=True)
    loader = make_loader(ds, BATCH, 2)
    it = iter(loader)
    next(it)  # start-up is not what is measured
    rng = np.random.default_rng(seed)
    t = time.perf_counter()
    for b in range(1, batches + 1):
        if every and b % every == 0:
            del it
            target = rng.dirichlet(np.ones(len(tokens)))
            loader = switch_params(loader, ds, scale_to_shares(base, tokens, target, 8.0), BATCH, 2)
            it = iter(loader)
        next(it)
    out = time.perf_counter() - t
    del it, loader
    return out


def run(
    sizes: list[int],
    work: str | Path,
    every: int = 20,
    switches: int = 3,
    repeat: int = 2,
    step_s: float = 1.0,
) -> list[dict]:
    from quadmix_stream.benchmarks.scale import build_pool
    from quadmix_stream.formats.labels import Manifest
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.stream.dataset import QuaDMixDataset

    rows = []
    batches = every * switches
    print(
        f"2-worker loader, {BATCH}-document batches; {batches} batches, a switch every {every} "
        f"(best of {repeat}, interleaved)",
        flush=True,
    )
    for n in sizes:
        root = build_pool(Path(work) / f"pool-{n}", n)
        m = Manifest.load(root)
        base = SamplingParams.propose(
            1, m.domains, m.scorer_names, seed=1, ranges={"eta": (0.2, 1.5)}
        )[0]
        mix = QuaDMixDataset(root, base, seed=0).expected_mixture()
        tokens = np.array([v["tokens"] for v in mix.values()])
        static, switched = [], []
        for r in range(repeat):
            static.append(_read(root, base, tokens, batches, None, r))
            switched.append(_read(root, base, tokens, batches, every, r))
        t0, t1 = min(static), min(switched)
        per_batch = t0 / batches
        per_switch = max(t1 - t0, 0.0) / switches
        row = {
            "n_docs": n,
            "controller_ms": _controller_ms(base, tokens),
            "batch_ms": per_batch * 1e3,
            "static_s": t0,
            "switched_s": t1,
            "ratio": t0 / t1,
            "switch_s": per_switch,
            "every_for_1pct": int(np.ceil(per_switch / (0.01 * step_s))),
        }
        rows.append(row)
        print(
            f"{n:>12,} docs: controller {row['controller_ms']:.3f} ms/update "
            f"({row['controller_ms'] / row['batch_ms']:.3f}× a batch of {row['batch_ms']:.1f} ms); "
            f"static {t0:.2f} s, with {switches} switches {t1:.2f} s (static ÷ switched "
            f"{row['ratio']:.2f}); {per_switch:.2f} s per switch → every ≥ "
            f"{row['every_for_1pct']} steps for ≤ 1 % at {step_s:g} s per step",
            flush=True,
        )
    return rows
