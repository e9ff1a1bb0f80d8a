"""The labelled pool seen from the search: labels loaded once, θ → expected selection profile."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from quadmix_stream.labels import DatasetLabels, Manifest, load_labels
from quadmix_stream.locations import dataset_location
from quadmix_stream.params import SamplingParams
from quadmix_stream.selection import RankConfig, Reference, Selection, sigma_scores
from quadmix_stream.storage import Store


class Pool:
    """Manifest, labels and σ-normalised scores of a dataset (label sidecars only, no payload).

    Args:
        dataset: the dataset's folder, or its URL (``s3://bucket/ds``: the sidecars are fetched
            into the node-local cache once).
    """

    def __init__(self, dataset: str | Path) -> None:
        self.root = dataset_location(dataset)
        # one store for the manifest and the sidecars: a remote one opens one client, not two
        self.store = Store(self.root)
        self.manifest = Manifest.load(self.store)
        self.domains = list(self.manifest.domains)
        self.scorers = list(self.manifest.scorer_names)

    @cached_property
    def labels(self) -> DatasetLabels:
        return load_labels(self.store, self.manifest)

    @cached_property
    def sigma(self) -> np.ndarray:
        return sigma_scores(self.labels.scores, self.manifest)

    @cached_property
    def domain_tokens(self) -> np.ndarray:
        lab = self.labels
        return np.bincount(lab.domain, weights=lab.tokens, minlength=len(self.domains))

    @cached_property
    def reference(self) -> Reference:
        """Eq. 2's reference sample, as the stream builds it (once per pool, not per θ)."""
        return Reference.of_labels(self.labels, self.manifest, RankConfig())

    def selection(self, params: SamplingParams, seed: int = 0) -> Selection:
        params = params.reorder(self.domains, self.scorers)
        return Selection(
            self.labels, self.manifest, params, seed, sigma=self.sigma, reference=self.reference
        )

    def profile(self, params: SamplingParams) -> dict:
        """Expected selection of θ per epoch: tokens, per-domain token share, and per scorer the
        token-weighted mean σ (0 = best) of the selected tokens, overall and per domain."""
        s = self.selection(params).expected
        w = s * self.labels.tokens
        tot = float(w.sum())
        dom = self.labels.domain
        per_dom = np.bincount(dom, weights=w, minlength=len(self.domains))
        out: dict = {
            "tokens": tot,
            "docs": float(s.sum()),
            "token_share": {
                d: float(per_dom[i] / tot) if tot > 0 else 0.0 for i, d in enumerate(self.domains)
            },
            "sigma_mean": {},
            "sigma_mean_by_domain": {},
        }
        for j, name in enumerate(self.scorers):
            sig = self.sigma[:, j]
            out["sigma_mean"][name] = float((w * sig).sum() / tot) if tot > 0 else float("nan")
            num = np.bincount(dom, weights=w * sig, minlength=len(self.domains))
            out["sigma_mean_by_domain"][name] = {
                d: float(num[i] / per_dom[i]) if per_dom[i] > 0 else float("nan")
                for i, d in enumerate(self.domains)
            }
        return out

    def pool_profile(self) -> dict:
        return self.profile(SamplingParams.keep_all(self.domains, self.scorers))
