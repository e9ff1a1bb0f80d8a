"""SamplingParams: validation, JSON round trip, vectors, Algorithm 1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quadmix_stream.mixing.params import DEFAULT_RANGES, ParamsError, SamplingParams

pytestmark = pytest.mark.core

D, S = ["web", "code", "news"], ["dclm", "edu"]


def make(**kw):
    base = dict(
        domains=D,
        scorers=S,
        alpha=np.array([[0.5, 0.5], [1.0, 0.0], [0.2, 0.8]]),
        lam=np.array([10.0, 20.0, 30.0]),
        omega=np.array([0.1, 0.2, 0.3]),
        eta=np.array([0.5, 1.0, 0.1]),
        eps=np.array([0.001, 0.0, 0.0]),
    )
    base.update(kw)
    return SamplingParams(**base)


def test_round_trip(tmp_path):
    p = make(form="exponent", provenance="hand-made")
    p.save(tmp_path / "p.json")
    q = SamplingParams.load(tmp_path / "p.json")
    assert q.to_dict() == p.to_dict()
    assert np.array_equal(q.to_vector(), p.to_vector())
    assert q.form == "exponent" and q.provenance == "hand-made"


@settings(max_examples=25)
@given(seed=st.integers(0, 2**32 - 1), m=st.integers(1, 6), n=st.integers(1, 4))
def test_algorithm1_ranges_and_simplex(seed, m, n):
    doms, scs = [f"d{i}" for i in range(m)], [f"s{j}" for j in range(n)]
    props = SamplingParams.propose(5, doms, scs, seed)
    for p in props:
        assert np.allclose(p.alpha.sum(axis=1), 1.0) and np.all(p.alpha >= 0)
        for k, (lo, hi) in DEFAULT_RANGES.items():
            v = getattr(p, k)
            assert np.all((v >= lo) & (v <= hi))
        v = p.to_vector()
        assert v.shape == ((n + 4) * m,)
        back = SamplingParams.from_vector(v, doms, scs)
        assert np.array_equal(back.to_vector(), v)
    assert len(SamplingParams.vector_names(doms, scs)) == (n + 4) * m


def test_algorithm1_alpha_shares_global_weights():
    # α[d,n] ∝ a_n·b[d,n]: a scorer with a tiny global weight is small in every domain
    v = SamplingParams.propose_vectors(20_000, 4, 3, seed=0)
    alpha = v[:, :12].reshape(-1, 4, 3)
    small = alpha[:, :, 0].max(axis=1) < 0.05
    assert small.mean() > 0.01  # happens with global a_0 small, never with independent rows
    assert (
        SamplingParams.propose_vectors(3, 2, 2, seed=1, ranges={"lam": (0, 0)})[:, 4:6].max() == 0
    )


def test_vector_order_is_documented():
    p = make()
    names = SamplingParams.vector_names(D, S)
    v = dict(zip(names, p.to_vector(), strict=True))
    assert v["alpha[code,dclm]"] == 1.0 and v["lam[news]"] == 30.0 and v["eps[web]"] == 0.001
    assert names[:2] == ["alpha[web,dclm]", "alpha[web,edu]"] and names[6] == "lam[web]"


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        (
            dict(alpha=np.array([[0.5, 0.6], [1, 0], [0.2, 0.8]])),
            r"alpha: row of domain 'web' sums to 1\.1",
        ),
        (
            dict(alpha=np.array([[0.5, 0.5], [1.5, -0.5], [0.2, 0.8]])),
            r"alpha: negative value -0\.5 for domain 'code'",
        ),
        (dict(lam=np.array([1.0, np.nan, 1.0])), r"lam: NaN/inf value nan for domain 'code'"),
        (dict(eta=np.array([1.0, 1.0, np.inf])), r"eta: NaN/inf value inf for domain 'news'"),
        (dict(omega=np.array([-0.1, 0.1, 0.1])), r"omega: negative value -0\.1 for domain 'web'"),
        (dict(eps=np.array([0.0, 0.0])), r"eps: shape \(2,\), expected \(3,\)"),
        (
            dict(alpha=np.ones((3, 3)) / 3),
            r"alpha: shape \(3, 3\), expected \(domains=3, scorers=2\)",
        ),
        (dict(form="power"), r"form: must be one of"),
        (dict(domains=["a", "a", "b"]), r"domains: duplicate names \['a'\]"),
    ],
)
def test_validation_errors_name_field_and_domain(kw, match):
    with pytest.raises(ParamsError, match=match):
        make(**kw)


def test_names_checked_against_dataset():
    p = make()
    p.check_names(D, S)
    with pytest.raises(ParamsError, match=r"domains: .*missing \['math'\].*unknown \['news'\]"):
        p.check_names(["web", "code", "math"], S)
    with pytest.raises(ParamsError, match="same names in another order"):
        p.check_names(["code", "web", "news"], S)
    q = p.reorder(["code", "web", "news"], ["edu", "dclm"])
    assert q.alpha[0, 1] == 1.0 and q.lam[1] == 10.0


def test_load_errors(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        SamplingParams.load(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ParamsError, match="not valid JSON"):
        SamplingParams.load(tmp_path / "bad.json")
    d = make().to_dict()
    d["version"] = 99
    (tmp_path / "v.json").write_text(json.dumps(d))
    with pytest.raises(ParamsError, match="version"):
        SamplingParams.load(tmp_path / "v.json")
    d = make().to_dict()
    d["per_domain"]["web"]["alpha"]["dclm"] = "high"
    (tmp_path / "s.json").write_text(json.dumps(d))
    with pytest.raises(ParamsError, match=r"alpha\['web'\]\['dclm'\]: expected a number"):
        SamplingParams.load(tmp_path / "s.json")
    d = make().to_dict()
    del d["per_domain"]["news"]["lam"]
    (tmp_path / "m.json").write_text(json.dumps(d))
    with pytest.raises(ParamsError, match=r"lam: missing for domain 'news'"):
        SamplingParams.load(tmp_path / "m.json")


def test_keep_all_is_one_copy_everywhere():
    from quadmix_stream.mixing.sampling import expected_copies

    p = SamplingParams.keep_all(D, S)
    s = expected_copies(np.linspace(0, 1, 11), p.lam[0], p.omega[0], p.eta[0], p.eps[0])
    assert np.allclose(s, 1.0)
