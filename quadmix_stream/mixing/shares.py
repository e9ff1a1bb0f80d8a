"""Domain shares of the output tokens as a function of θ, and θ for target shares.

In the multiplicative form of Eq. 3 a document's expected copies are η·g + ε (or ε past the
cut-off), so scaling a domain's η and ε by the same factor f scales the expected copies of every
document of that domain, and so its expected output tokens, by exactly f; the selection *within*
the domain (α, λ, ω: which documents, in which proportions) is unchanged. That makes domain
shares a separate knob on top of any θ: :func:`scale_to_shares` turns target shares into θ by
one multiplication per domain, with no pass over the pool, given the base θ's per-domain
expected tokens (``QuaDMixDataset.expected_mixture()``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from quadmix_stream.mixing.params import ParamsError, SamplingParams

#: the most expected copies a scaled θ may give a document (realised copies: at most 255)
MAX_EXPECTED = 254.0


def token_shares(tokens: np.ndarray) -> np.ndarray:
    """Per-domain token counts as shares summing to 1 (all zeros stay zeros)."""
    t = np.asarray(tokens, dtype=np.float64)
    total = t.sum()
    return t / total if total > 0 else np.zeros_like(t)


def scale_factors(
    base_tokens: np.ndarray, target: np.ndarray, max_factor: float = np.inf
) -> np.ndarray:
    """Per-domain factors f that move the base shares to ``target`` at the same total tokens.

    ``f_d = target_d / base_share_d``, so that Σ_d base_d·f_d equals the base total: the run
    trains on as many tokens per epoch as the base θ gives. A domain the base θ selects nothing
    from cannot be scaled up (f = 0). ``max_factor`` caps f (copies per document grow with it);
    where it binds, the realised shares fall short of ``target`` for that domain.
    """
    s = token_shares(base_tokens)
    t = np.asarray(target, dtype=np.float64)
    if t.shape != s.shape:
        raise ValueError(f"target shares: shape {t.shape}, expected {s.shape}")
    f = np.divide(t, s, out=np.zeros_like(s), where=s > 0)
    return np.minimum(f, max_factor)


def capped_factors(
    base: SamplingParams, base_tokens: np.ndarray, target: np.ndarray, max_factor: float = np.inf
) -> np.ndarray:
    """:func:`scale_factors`, also capped where a document's expected copies would exceed
    :data:`MAX_EXPECTED` (S ≤ 2η + ε; the stream refuses more than 255 copies of a document)."""
    f = scale_factors(base_tokens, target, max_factor)
    top = 2.0 * base.eta + base.eps
    return np.minimum(f, np.divide(MAX_EXPECTED, top, out=np.full_like(f, np.inf), where=top > 0))


def cap_shares(shares: np.ndarray, cap: np.ndarray) -> np.ndarray:
    """Shares (rows) held at or below ``cap``, what a cap takes handed to the uncapped domains.

    Water-filling: each round clips the domains above their cap and spreads the excess over the
    domains still below theirs, in proportion to their shares, so uncapped domains keep their
    ratios to each other (a domain at 0 stays at 0). When the caps of a row sum to less than its total, every domain ends
    at its cap and the row sums to less (the caps win over the total).
    """
    w = np.array(np.atleast_2d(shares), dtype=np.float64)
    cap = np.broadcast_to(np.asarray(cap, dtype=np.float64), w.shape)
    for _ in range(w.shape[1]):
        excess = np.clip(w - cap, 0.0, None).sum(axis=1, keepdims=True)
        if not np.any(excess > 0):
            break
        w = np.minimum(w, cap)
        free = np.where(w < cap, w, 0.0)
        room = free.sum(axis=1, keepdims=True)
        w = w + np.divide(excess * free, room, out=np.zeros_like(w), where=room > 0)
    return np.minimum(w, cap)


def scale_to_shares(
    base: SamplingParams, base_tokens: np.ndarray, target: np.ndarray, max_factor: float = np.inf
) -> SamplingParams:
    """``base`` with each domain's η and ε scaled so its expected token share becomes ``target``.

    Args:
        base: the params whose selection within each domain is kept (multiplicative form).
        base_tokens: per domain, the expected output tokens under ``base`` (same order).
        target: per domain, the wanted share of the output tokens (summing to 1).
        max_factor: at most this multiple of the base's η and ε for any domain.

    The factors are :func:`capped_factors`: where a cap binds, that domain's share falls short.
    """
    if base.form != "multiplicative":
        raise ParamsError(
            f"form: domain shares scale only the multiplicative form of Eq. 3, got {base.form!r}"
        )
    f = capped_factors(base, base_tokens, target, max_factor)
    return replace(base, eta=base.eta * f, eps=base.eps * f)


__all__ = ["cap_shares", "capped_factors", "scale_factors", "scale_to_shares", "token_shares"]
