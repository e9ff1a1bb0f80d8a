"""Running realised-vs-expected mixture counters a training loop can log."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


class MixtureMeter:
    """Counts realised documents and tokens per domain from batches; compares with expectation.

    Works with document batches (``collate_docs``: lists ``domain_id`` and ``tokens``) and packed
    batches (``domain_tokens``: ``[batch, M]``). Under DDP, all-reduce :attr:`tokens` /
    :attr:`docs` (or log per rank) — the meter itself does no communication.

    Args:
        domains: domain names.
        expected: per domain, expected ``{"tokens": …, "docs": …}`` (``dataset.expected_mixture()``).
    """

    def __init__(
        self, domains: Sequence[str], expected: Mapping[str, Mapping[str, float]] | None = None
    ) -> None:
        self.domains = list(domains)
        self.docs = np.zeros(len(self.domains), dtype=np.int64)
        self.tokens = np.zeros(len(self.domains), dtype=np.int64)
        self.expected = expected

    def update(self, batch: Mapping[str, Any]) -> None:
        if "domain_tokens" in batch:
            t = np.asarray(batch["domain_tokens"])
            self.tokens += t.reshape(-1, len(self.domains)).sum(0).astype(np.int64)
            return
        dom = np.asarray(batch["domain_id"], dtype=np.int64)
        self.docs += np.bincount(dom, minlength=len(self.domains))
        self.tokens += np.bincount(
            dom, weights=np.asarray(batch["tokens"], dtype=np.float64), minlength=len(self.domains)
        ).astype(np.int64)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per domain: realised docs/tokens, realised token share and (if known) expected share."""
        total = max(int(self.tokens.sum()), 1)
        exp_total = sum(v["tokens"] for v in self.expected.values()) if self.expected else 0.0
        out = {}
        for i, d in enumerate(self.domains):
            row = {
                "docs": int(self.docs[i]),
                "tokens": int(self.tokens[i]),
                "share": self.tokens[i] / total,
            }
            if self.expected and exp_total > 0:
                row["expected_share"] = self.expected[d]["tokens"] / exp_total
            out[d] = row
        return out
