"""Params for an anneal: one θ's domain shares with another θ's selection within each domain.

    python scripts/anneal_params.py DATASET BASE.json WITHIN.json OUT.json

OUT keeps WITHIN's choice of documents inside every domain (α, λ, ω: e.g. a top-k baseline's
best 30% by one scorer) and scales each domain's η and ε so that its expected share of the
output tokens is BASE's (e.g. what a search shipped), at WITHIN's total tokens per epoch
(:func:`quadmix_stream.mixing.shares.scale_to_shares`). Used as ``data.params_schedule`` for the
last part of a run, it trains on the best documents of the same mixture
(``scripts/mixing_schedules.py`` compares such an anneal with the static θ).
"""

from __future__ import annotations

import sys
from dataclasses import replace

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.mixing.shares import scale_to_shares, token_shares
from quadmix_stream.stream.dataset import QuaDMixDataset


def expected_tokens(dataset: str, params: SamplingParams) -> list[float]:
    mix = QuaDMixDataset(dataset, params).expected_mixture()
    return [mix[d]["tokens"] for d in params.domains]


def main(dataset: str, base_path: str, within_path: str, out: str) -> None:
    base, within = SamplingParams.load(base_path), SamplingParams.load(within_path)
    shares = token_shares(expected_tokens(dataset, base))
    anneal = scale_to_shares(within, expected_tokens(dataset, within), shares)
    anneal = replace(
        anneal,
        provenance=f"anneal: the domain shares of {base_path}, the selection of {within_path}",
        extra={},
    )
    anneal.save(out)
    got = token_shares(expected_tokens(dataset, anneal))
    for d, want, have in zip(anneal.domains, shares, got, strict=True):
        print(f"{d:<16} share {want:.4f} → {have:.4f}")
    print(f"→ {out}")


if __name__ == "__main__":
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    main(*sys.argv[1:])
