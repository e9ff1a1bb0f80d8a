"""Property tests of the QuaDMix math (docs/design.md, "The math")."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quadmix_stream.mixing.hashing import doc_key, hash64, text_digest, text_digests, uniform
from quadmix_stream.mixing.sampling import (
    apply_sigma,
    build_rank_table,
    build_sigma_table,
    expected_copies,
    merge_quality,
    rank_exact,
    rank_from_table,
    realize,
    sample_rows_per_domain,
)

pytestmark = pytest.mark.core

forms = st.sampled_from(["multiplicative", "exponent"])
pos = st.floats(0.0, 1000.0, allow_nan=False)
unit = st.floats(0.0, 1.0, allow_nan=False)


@given(lam=pos, omega=unit, eta=st.floats(0.0, 2.0), eps=st.floats(0.0, 0.01), form=forms)
def test_eq3_non_increasing_in_rank(lam, omega, eta, eps, form):
    r = np.linspace(0.0, 1.0, 501)
    s = expected_copies(r, lam, omega, eta, eps, form)
    assert np.all(np.diff(s) <= 1e-12)
    assert np.all(s >= eps - 1e-12)


@given(
    lam=pos,
    omega=st.floats(0.0, 0.999),
    eta=st.floats(0.0, 2.0),
    eps=st.floats(0.0, 0.01),
    form=forms,
)
def test_eq3_at_and_beyond_omega(lam, omega, eta, eps, form):
    at = expected_copies(np.array([omega]), lam, omega, eta, eps, form)[0]
    # at r = ω the sigmoid term is exactly 2·(1/2) = 1, so S = η·1 + ε (both forms: 1^η = 1)
    assert at == pytest.approx((eta if form == "multiplicative" else 1.0) + eps)
    beyond = expected_copies(np.array([omega + 1e-9, 1.0]), lam, omega, eta, eps, form)
    assert np.allclose(beyond, eps)


def test_eq3_known_values():
    # λ=0: 2/(1+1)=1 for r ≤ ω; exponent form 1^η = 1
    assert expected_copies(np.array([0.1]), 0.0, 0.5, 0.7, 0.01)[0] == pytest.approx(0.71)
    assert expected_copies(np.array([0.1]), 0.0, 0.5, 0.7, 0.01, "exponent")[0] == pytest.approx(
        1.01
    )
    # r=0, large λ: sigmoid → 1, so 2η + ε (multiplicative) and 2^η + ε (exponent)
    assert expected_copies(np.array([0.0]), 1000.0, 0.1, 0.5, 0.0)[0] == pytest.approx(1.0)
    assert expected_copies(np.array([0.0]), 1000.0, 0.1, 0.5, 0.0, "exponent")[0] == pytest.approx(
        2**0.5
    )
    with pytest.raises(ValueError, match="form"):
        expected_copies(np.array([0.0]), 1, 1, 1, 0, "power")


def _brute_rank(q, d, t):
    w = np.maximum(t, 1).astype(float)
    return np.array(
        [w[(d == d[i]) & (q <= q[i])].sum() / w[d == d[i]].sum() for i in range(q.size)]
    )


@settings(max_examples=60)
@given(
    data=st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 12), st.integers(0, 50)),
        min_size=1,
        max_size=60,
    )
)
def test_eq2_exact_matches_definition_with_ties(data):
    d = np.array([x[0] for x in data])
    q = np.array([x[1] / 4.0 for x in data])  # coarse values → many ties
    t = np.array([x[2] for x in data])
    r = rank_exact(q, d, t)
    assert np.allclose(r, _brute_rank(q, d, t))
    assert np.all((r > 0) & (r <= 1))
    for dom in np.unique(d):  # the worst document of every domain has rank exactly 1
        assert r[d == dom].max() == pytest.approx(1.0)


def test_eq2_is_token_weighted():
    q = np.array([0.1, 0.2, 0.3])
    d = np.zeros(3, dtype=int)
    assert np.allclose(rank_exact(q, d, np.array([8, 1, 1])), [0.8, 0.9, 1.0])


def test_eq2_table_within_1e3_of_exact_on_1e5_docs():
    rng = np.random.default_rng(0)
    n = 100_000
    d = rng.integers(0, 5, n)
    q = rng.beta(2, 5, n)
    t = rng.integers(1, 2000, n)
    exact = rank_exact(q, d, t)
    table = build_rank_table(q, d, t, 5)  # whole pool: only the grid approximates
    assert np.abs(rank_from_table(table, q, d) - exact).max() < 1e-3


def test_eq2_table_from_a_sample_is_statistically_close():
    rng = np.random.default_rng(1)
    n = 200_000
    d = rng.integers(0, 4, n)
    q, t = rng.uniform(size=n), rng.integers(1, 100, n)
    keys = rng.integers(0, 2**63, n).astype(np.uint64)
    idx = sample_rows_per_domain(d, keys, 10_000)
    assert 4 * 9_000 < idx.size < 4 * 11_000
    table = build_rank_table(q[idx], d[idx], t[idx], 4)
    err = np.abs(rank_from_table(table, q, d) - rank_exact(q, d, t))
    assert err.max() < 0.03 and err.mean() < 0.006  # ~1/sqrt(10k) sampling error


@settings(max_examples=30)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=200), st.booleans())
def test_sigma_is_oriented_monotone_percentile(raw, higher):
    raw = np.array(raw)
    tab = build_sigma_table(raw, np.ones(raw.size), higher)
    s = apply_sigma(tab, raw)
    assert np.all((s >= 0) & (s <= 1))
    order = np.argsort(raw)
    diffs = np.diff(s[order])
    assert np.all(diffs <= 1e-12) if higher else np.all(diffs >= -1e-12)
    if np.unique(raw).size > 1:  # best document has the smallest σ
        best = raw.argmax() if higher else raw.argmin()
        assert s[best] == s.min()


def test_sigma_token_weighted_and_rejects_nan():
    tab = build_sigma_table(np.array([1.0, 2.0]), np.array([3, 1]), higher_is_better=False)
    assert apply_sigma(tab, np.array([1.0, 2.0])) == pytest.approx([0.375, 0.875])
    with pytest.raises(ValueError, match="NaN"):
        build_sigma_table(np.array([1.0, np.nan]), np.ones(2), True)


def test_merge_quality_eq1():
    sig = np.array([[0.0, 1.0], [0.5, 0.5]])
    alpha = np.array([[0.25, 0.75], [1.0, 0.0]])
    assert np.allclose(merge_quality(sig, np.array([0, 1]), alpha), [0.75, 0.5])


@settings(max_examples=20)
@given(s=st.floats(0.0, 4.0), seed=st.integers(0, 2**31), epoch=st.integers(0, 50))
def test_realize_mean_matches_expected(s, seed, epoch):
    n = 20_000
    keys = np.arange(n, dtype=np.uint64) * np.uint64(7919)
    c = realize(np.full(n, s), keys, seed, epoch)
    assert set(np.unique(c)) <= {int(np.floor(s)), int(np.floor(s)) + 1}
    frac = s - np.floor(s)
    assert abs(c.mean() - s) < 5 * np.sqrt(frac * (1 - frac) / n) + 1e-12


def test_realize_is_order_independent_and_epoch_dependent():
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 2**63, 1000).astype(np.uint64)
    s = rng.uniform(0, 3, 1000)
    c = realize(s, keys, 5, 0)
    perm = rng.permutation(1000)
    assert np.array_equal(realize(s[perm], keys[perm], 5, 0), c[perm])
    assert np.array_equal(
        np.concatenate([realize(s[:10], keys[:10], 5, 0), realize(s[10:], keys[10:], 5, 0)]), c
    )
    assert not np.array_equal(realize(s, keys, 5, 1), c)
    assert not np.array_equal(realize(s, keys, 6, 0), c)


def test_hash_same_in_another_process():
    keys = np.array([doc_key("a"), doc_key("b"), 2**64 - 1], dtype=np.uint64)
    here = uniform(keys, 3, 9).tolist()
    code = (
        "import json, numpy as np;from quadmix_stream.mixing.hashing import uniform, doc_key;"
        "k=np.array([doc_key('a'),doc_key('b'),2**64-1],dtype=np.uint64);"
        "print(json.dumps(uniform(k,3,9).tolist()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == here
    assert hash64(keys, 1, 2).tolist() != hash64(keys, 2, 1).tolist()


@pytest.mark.parametrize("form", ["multiplicative", "exponent"])
def test_prepared_pipeline_equals_equations(form):
    from quadmix_stream.mixing.params import SamplingParams
    from quadmix_stream.stream.selection import RankConfig, RankModel, Reference, expected_of

    rng = np.random.default_rng(0)
    n, m = 30_000, 4
    dom, tok = rng.integers(0, m, n), rng.integers(0, 300, n)
    keys, sig = rng.integers(0, 2**63, n).astype(np.uint64), rng.uniform(size=(n, 2))
    p = SamplingParams.propose(
        1, [f"d{i}" for i in range(m)], ["a", "b"], 0, ranges={"omega": (0.2, 0.9)}, form=form
    )[0]
    r = rank_exact(merge_quality(sig, dom, p.alpha), dom, tok)
    want = expected_copies(r, p.lam[dom], p.omega[dom], p.eta[dom], p.eps[dom], form)
    exact = RankConfig()  # every domain (≤ 50,000 documents) fits in the reference: exact Eq. 2
    ref = Reference.of_arrays(sig, dom, tok, keys, m, exact)
    assert ref.complete.all()
    got = expected_of(sig, dom, p, RankModel.build(ref, p, exact))
    assert np.allclose(got, want, rtol=0, atol=1e-9)  # equal up to float summation order
    cfg = RankConfig(method="table", sample_per_domain=n)  # whole pool: only the grid approximates
    ref_t = Reference.of_arrays(sig, dom, tok, keys, m, cfg)
    approx = expected_of(sig, dom, p, RankModel.build(ref_t, p, cfg))
    assert np.abs(approx - want).mean() < 0.01
    small = RankConfig(sample_per_domain=2_000)  # a bounded sample: the paper's approximation
    ref_s = Reference.of_arrays(sig, dom, tok, keys, m, small)
    assert not ref_s.complete.any() and ref_s.domain.size < 3 * 2_000 * m
    sampled = expected_of(sig, dom, p, RankModel.build(ref_s, p, small))
    assert np.abs(sampled - want).mean() < 0.05


def test_realize_keeps_absurd_expected_counts_large():
    """η ≥ ~5e18 once wrapped around int64 to 0 or negative copies, past the 255-copies check."""
    from quadmix_stream.mixing.sampling import realize

    keys = np.arange(4, dtype=np.uint64)
    c = realize(np.array([5e18, 1e300, np.inf, 2.5]), keys, seed=0, epoch=0)
    assert (c[:3] > 255).all() and c[3] in (2, 3)


def test_text_digest_is_a_fixed_function_of_the_utf8_text():
    """Sidecars store these values: they must never change between versions or processes."""
    assert text_digest("") == 953390274
    assert text_digest("abc") == 2301573456
    assert text_digest("héllo") == 2069142303
    assert text_digest("lone \ud800 x") == 1449983070  # a lone surrogate is hashed as is
    assert text_digest("abc") != text_digest("abd") and text_digest("a") != text_digest("a ")
    got = text_digests(["abc", "héllo"])
    assert got.dtype == np.uint32 and got.tolist() == [2301573456, 2069142303]
