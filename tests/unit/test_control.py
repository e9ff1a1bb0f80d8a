"""Controllers: domain shares as a knob on θ, ODM's EXP3 update, state that resumes exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quadmix_stream.control import (
    DomainSignals,
    ODMConfig,
    ODMController,
    ScheduleController,
    build_controller,
    controller_config,
)
from quadmix_stream.control.odm import exp3_update
from quadmix_stream.errors import UserError
from quadmix_stream.formats.labels import Manifest
from quadmix_stream.mixing.params import ParamsError, SamplingParams
from quadmix_stream.mixing.sampling import expected_copies
from quadmix_stream.mixing.shares import (
    cap_shares,
    scale_factors,
    scale_to_shares,
    token_shares,
)
from quadmix_stream.stream.dataset import QuaDMixDataset

pytestmark = pytest.mark.core


def _params(ds, seed: int = 3) -> SamplingParams:
    m = Manifest.load(ds)
    return SamplingParams.propose(
        1, m.domains, m.scorer_names, seed=seed, ranges={"eta": (0.2, 1.5), "eps": (0, 0.05)}
    )[0]


def _tokens(ds, params) -> np.ndarray:
    mix = QuaDMixDataset(ds, params, seed=0).expected_mixture()
    return np.array([v["tokens"] for v in mix.values()])


# ---------------------------------------------------------------- shares
@settings(max_examples=50, deadline=None)
@given(
    st.floats(0.0, 1.0),
    st.floats(0.0, 1000.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 2.0),
    st.floats(0.0, 0.01),
    st.floats(0.0, 20.0),
)
def test_scaling_eta_and_eps_scales_expected_copies_exactly(r, lam, omega, eta, eps, f):
    base = expected_copies(r, lam, omega, eta, eps)
    assert expected_copies(r, lam, omega, eta * f, eps * f) == pytest.approx(f * base, rel=1e-12)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scaled_params_give_the_target_shares_at_the_same_total(mds_ds, seed):
    base = _params(mds_ds, seed)
    tokens = _tokens(mds_ds, base)
    target = np.random.default_rng(seed).dirichlet(np.ones(len(tokens)))
    # no cap: every domain reaches its target, and the pool pass agrees with the arithmetic
    got = _tokens(mds_ds, scale_to_shares(base, tokens, target))
    assert token_shares(got) == pytest.approx(target, abs=1e-9)
    assert got.sum() == pytest.approx(tokens.sum(), rel=1e-9)
    # a cap binds where target/base share exceeds it; those domains stop at cap × base tokens
    f = scale_factors(tokens, target, max_factor=1.5)
    capped = _tokens(mds_ds, scale_to_shares(base, tokens, target, max_factor=1.5))
    assert capped == pytest.approx(tokens * f, rel=1e-9)


@settings(max_examples=200, deadline=None)
@given(st.integers(2, 9), st.integers(0, 2**31), st.floats(0.05, 3.0))
def test_capped_shares_keep_the_caps_the_total_and_the_ratios(m, seed, tight):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(m), size=4)
    cap = rng.uniform(0.0, tight, size=(4, m))
    got = cap_shares(w, cap)
    assert np.all(got <= cap + 1e-12) and np.all(got >= 0)
    for row, c, orig in zip(got, cap, w, strict=True):
        if c.sum() >= 1.0:  # feasible: the total is kept…
            assert row.sum() == pytest.approx(1.0, abs=1e-9)
        else:  # …else every domain sits at its cap
            np.testing.assert_allclose(row, c, atol=1e-12)
        free = row < c - 1e-9  # domains below their caps keep their ratios to each other
        if free.sum() >= 2:
            ratio = row[free] / orig[free]
            np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)
    np.testing.assert_array_equal(cap_shares(w, np.ones_like(w)), w)  # no cap binds: unchanged


def test_a_domain_the_base_leaves_out_stays_out():
    f = scale_factors(np.array([0.0, 10.0, 30.0]), np.array([0.2, 0.4, 0.4]))
    assert f.tolist() == [0.0, pytest.approx(1.6), pytest.approx(0.4 / 0.75)]


def test_only_the_multiplicative_form_scales(mds_ds):
    base = _params(mds_ds)
    expo = SamplingParams.from_dict({**base.to_dict(), "form": "exponent"})
    with pytest.raises(ParamsError, match="multiplicative"):
        scale_to_shares(expo, np.ones(len(base.domains)), np.full(len(base.domains), 0.25))
    with pytest.raises(UserError, match="multiplicative"):
        ODMController(ODMConfig(), expo, np.ones(len(base.domains)))


# ---------------------------------------------------------------- ODM's update
def _odm_reference(rewards, probs, losses, t, eps):
    """ODM's update as its authors' code writes it, one arm at a time (cumulative reward, uniform
    prior), for every arm observed: the reference the vectorised update is checked against."""
    k = len(rewards)
    rewards = list(rewards)
    for d in range(k):
        rewards[d] += losses[d] / 10 / probs[d]
    prev_eps = eps
    eps = min(1 / k, math.sqrt(math.log(k) / (k * t)))
    total = sum(math.exp(r * prev_eps) for r in rewards)
    weights = [math.exp(r * prev_eps) * (1 - k * eps) / total + eps for r in rewards]
    return rewards, [w / sum(weights) for w in weights], eps


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 8), st.integers(1, 30), st.integers(0, 2**31))
def test_exp3_update_is_odms(k, updates, seed):
    rng = np.random.default_rng(seed)
    r_ref, p_ref, e_ref = [0.0] * k, [1 / k] * k, 1 / k
    r, p, e = np.zeros(k), np.full(k, 1 / k), 1 / k
    for t in range(1, updates + 1):
        losses = rng.uniform(1, 9, k)
        r_ref, p_ref, e_ref = _odm_reference(r_ref, p_ref, losses, t, e_ref)
        r, p, e = exp3_update(r, p, np.ones(k, bool), losses / 10, t, e, np.full(k, 1 / k), 1.0)
        assert p == pytest.approx(p_ref, rel=1e-9) and e == e_ref
        assert p.sum() == pytest.approx(1.0) and (p >= e - 1e-15).all()


def test_the_hardest_domain_gains_and_unobserved_ones_keep_their_reward():
    k = 3
    r, p, e = np.zeros(k), np.full(k, 1 / k), 1 / k
    prior = np.full(k, 1 / k)
    for t in range(1, 50):
        r, p, e = exp3_update(
            r, p, np.array([True, True, False]), np.array([0.8, 0.2, 5.0]), t, e, prior, 1.0
        )
    assert p[0] > p[1] and r[2] == 0.0


# ---------------------------------------------------------------- the controller
def _signals(m: int, rng, zero: int | None = None) -> DomainSignals:
    tokens = rng.integers(10, 100, m)
    if zero is not None:
        tokens[zero] = 0
    loss = rng.uniform(2, 6, m) * tokens
    return DomainSignals(tokens, loss, tokens.astype(float))


def test_odm_starts_from_the_base_and_updates_every_k_steps_after_warmup(mds_ds):
    base = _params(mds_ds)
    tokens = _tokens(mds_ds, base)
    ctl = ODMController(ODMConfig(every=5, warmup=3), base, tokens)
    assert (
        ctl.params().fingerprint()
        == scale_to_shares(base, tokens, token_shares(tokens)).fingerprint()
    )
    rng = np.random.default_rng(0)
    got = [s for s in range(1, 30) if ctl.observe(s, _signals(len(tokens), rng)) is not None]
    assert got == [8, 13, 18, 23, 28]
    shares = ctl.target_shares()
    assert shares.sum() == pytest.approx(1.0) and (shares > 0).all()
    p = ctl.params()
    assert token_shares(_tokens(mds_ds, p)) == pytest.approx(
        token_shares(tokens * scale_factors(tokens, shares, ctl.config.max_factor)), abs=1e-9
    )
    # only η and ε move: the selection within each domain is the base's
    assert (p.alpha == base.alpha).all() and (p.lam == base.lam).all()
    assert (p.omega == base.omega).all()


def test_odm_state_resumes_bit_identically(mds_ds):
    base = _params(mds_ds)
    tokens = _tokens(mds_ds, base)
    cfg = ODMConfig(every=4, smoothing=0.9, prior="uniform")
    rng = np.random.default_rng(7)
    signals = [_signals(len(tokens), rng, zero=s % 3) for s in range(40)]
    a = ODMController(cfg, base, tokens)
    whole = [a.observe(s, signals[s - 1]) for s in range(1, 41)]
    b = ODMController(cfg, base, tokens)
    first = [b.observe(s, signals[s - 1]) for s in range(1, 19)]  # "killed" after step 18
    c = build_controller(
        {"name": "odm", "every": 4, "smoothing": 0.9, "prior": "uniform"}, base, [1]
    )
    c.load_state_dict(b.state_dict())  # the saved base and its tokens come back with the state
    rest = [c.observe(s, signals[s - 1]) for s in range(19, 41)]
    fp = [None if x is None else x.fingerprint() for x in whole]
    assert fp == [None if x is None else x.fingerprint() for x in first + rest]
    assert a.state_dict() == c.state_dict()


def test_domains_without_base_tokens_are_not_arms(mds_ds):
    base = _params(mds_ds)
    tokens = _tokens(mds_ds, base)
    tokens[1] = 0.0
    ctl = ODMController(ODMConfig(every=1, prior="uniform"), base, tokens)
    rng = np.random.default_rng(1)
    for s in range(1, 6):
        p = ctl.observe(s, _signals(len(tokens), rng))
    assert ctl.target_shares()[1] == 0.0 and p.eta[1] == 0.0 and p.eps[1] == 0.0


def test_schedule_controller_answers_at_its_steps(mds_ds):
    p = _params(mds_ds)
    ctl = ScheduleController({8: p})
    sig = DomainSignals(np.zeros(1), np.zeros(1), np.zeros(1))
    assert [s for s in range(1, 20) if ctl.observe(s, sig) is not None] == [8]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"every": 3}, "a mapping with a name"),
        ({"name": "doremi"}, r"name must be one of \('odm',\)"),
        ({"name": "odm", "evry": 3}, "unknown key"),
        ({"name": "odm", "prior": "flat"}, "prior"),
        ({"name": "odm", "smoothing": 0}, "smoothing"),
    ],
)
def test_bad_controller_specs_are_one_line_errors(spec, message):
    with pytest.raises(UserError, match=message) as e:
        controller_config(spec, "data.controller")
    assert "\n" not in str(e.value)


def test_a_recipe_with_a_schedule_and_a_controller_is_refused():
    from quadmix_stream.trainers.pretrain import DataConfig

    with pytest.raises(UserError, match="one controller"):
        DataConfig(params_schedule={4: "a.json"}, controller={"name": "odm"})


def test_a_schedule_keyed_by_tokens_switches_after_the_step_that_reaches_them():
    from quadmix_stream.trainers.pretrain import (
        DataConfig,
        PretrainConfig,
        TrainConfig,
        schedule_steps,
    )

    def steps(sched: dict, batch: int = 8, seq_len: int = 32) -> dict:
        data = DataConfig(seq_len=seq_len, params_schedule=sched)
        return schedule_steps(PretrainConfig(data=data, train=TrainConfig(batch_size=batch)))

    # 256 tokens per step: 2,000 tokens are reached by step 8 (2,048), 2,048 exactly by step 8
    assert steps({"2000 tokens": "a.json", 12: "b.json"}) == {
        8: ("2000 tokens", "a.json"),
        12: ("12", "b.json"),
    }
    assert list(steps({"2048 tokens": "a"})) == [8] and list(steps({"2049 tokens": "a"})) == [9]
    assert list(steps({"1.5k tokens": "a"})) == [6]  # 1,500 / 256
    assert list(steps({"1.5k tokens": "a"}, batch=1024, seq_len=1024)) == [1]
    assert list(steps({"3M tokens": "a"}, batch=64, seq_len=1024)) == [46]  # 3e6 / 65,536
    with pytest.raises(UserError, match="both switch after step 8"):
        steps({"2000 tokens": "a", 8: "b"})
    for bad in ({0: "a"}, {"0 tokens": "a"}, {"ten tokens": "a"}, {"5 steps": "a"}, {True: "a"}):
        with pytest.raises(UserError, match="'N tokens'"):
            DataConfig(params_schedule=bad)


def test_shares_never_ask_for_more_copies_than_the_stream_takes(mds_ds):
    """Whatever the target, a scaled θ keeps every document under 255 copies (S ≤ 2η + ε)."""
    base = _params(mds_ds)
    m = len(base.domains)
    big = SamplingParams.from_dict(
        {
            **base.to_dict(),
            "per_domain": {
                d: {**base.to_dict()["per_domain"][d], "eta": 50.0} for d in base.domains
            },
        }
    )
    tokens = np.r_[1.0, np.full(m - 1, 1000.0)]  # domain 0: a tiny share of the base's output
    target = np.r_[0.9, np.full(m - 1, 0.1 / (m - 1))]
    p = scale_to_shares(big, tokens, target)  # asks domain 0 for ~9,000× its tokens
    assert (2 * p.eta + p.eps <= 254.0 + 1e-9).all() and p.eta[0] > big.eta[0]
    # the factors a controller logs are the ones it applies, caps included
    ctl = ODMController(ODMConfig(every=1, prior="uniform", max_factor=1e9), big, tokens)
    applied = ctl.observe(1, DomainSignals(np.ones(m), np.ones(m), np.ones(m)))
    logged = ctl.describe()["factor"][base.domains[0]]
    assert logged == pytest.approx(applied.eta[0] / big.eta[0], rel=1e-5)
    assert logged < ctl.target_shares()[0] / token_shares(tokens)[0]  # the cap bound
