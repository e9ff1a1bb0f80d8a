"""The search's parts, one at a time: config, spaces, features, baselines, regressor, proxies."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from quadmix_stream.mixing.params import SamplingParams
from quadmix_stream.search import batched as batched_mod
from quadmix_stream.search.baselines import all_baselines
from quadmix_stream.search.batched import train_group
from quadmix_stream.search.config import ModelConfig, ProxyConfig, SearchConfig, SearchConfigError
from quadmix_stream.search.data import (
    SelectionError,
    TokenStream,
    check_selection,
    eval_coverage,
    in_proxy_pool,
    load_target_texts,
    open_stream,
    target_blocks,
)
from quadmix_stream.search.features import Featurizer, featurizer_for
from quadmix_stream.search.pool import Pool
from quadmix_stream.search.proxy import ProxyContext, ProxyJob, train_one
from quadmix_stream.search.regressor import Predictor, fit, save
from quadmix_stream.search.space import (
    mixture_vectors,
    mixture_weights,
    space_of,
    to_params,
)
from quadmix_stream.search.tokenizer import TextTokenizer, prepare_tokenizer

REPO = Path(__file__).resolve().parents[2]
RANGES = {"lam": (0.0, 100.0), "omega": (0.2, 1.0), "eta": (0.2, 1.0), "eps": (0.0, 0.02)}


@pytest.fixture(scope="module")
def pool(mds_ds) -> Pool:
    return Pool(mds_ds)


@pytest.fixture(scope="module")
def tok(mds_ds, tmp_path_factory) -> TextTokenizer:
    from quadmix_stream.search.config import TokenizerConfig

    run_dir = tmp_path_factory.mktemp("tok")
    info = prepare_tokenizer(TokenizerConfig(vocab_size=320, max_docs=600), mds_ds, run_dir)
    assert info["vocab_size"] == 320 and info["eos_token"] == "<|endoftext|>"
    return TextTokenizer(run_dir / "tokenizer.json")


def tiny_proxy(**kw) -> ProxyConfig:
    base = dict(
        model=ModelConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
        ),
        seq_len=32,
        batch_size=4,
        tokens=4 * 32 * 8,  # 8 steps
        lr=3e-3,
        eval_max_tokens=1024,
        device="cpu",
        threads=1,
        max_epochs=200,
    )
    return ProxyConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def ctx(mds_ds, tok) -> ProxyContext:
    return ProxyContext.create(mds_ds, tok, tiny_proxy(), mds_ds / "eval_sets" / "target.jsonl")


def jobs_for(pool: Pool, n: int, seed: int = 5) -> list[ProxyJob]:
    vecs = SamplingParams.propose_vectors(n, len(pool.domains), len(pool.scorers), seed, RANGES)
    return [
        ProxyJob(f"j{i}", to_params(v, pool.domains, pool.scorers, "multiplicative"))
        for i, v in enumerate(vecs)
    ]


def nothing(pool: Pool) -> SamplingParams:
    """θ that selects no document at all (η = ε = 0)."""
    m = len(pool.domains)
    keep = SamplingParams.keep_all(pool.domains, pool.scorers)
    return dataclasses.replace(keep, eta=np.zeros(m), provenance="selects nothing")


# ---------------------------------------------------------------- config
def test_shipped_recipes_parse():
    syn = SearchConfig.load(REPO / "recipes" / "search_synthetic.yaml")
    assert syn.space == "quadmix" and syn.regmix is not None and syn.proposals.n >= 32
    assert syn.proxy.steps >= 16 and syn.regressor.features == "auto"
    assert syn.rounds.k >= 1 and syn.select.verify >= 1
    from quadmix_stream.flow.run import _search_config

    flow_evals = {"general_search": "general_search.jsonl"}  # the flow passes its `evals:`
    for name in ("search_shared_corpus.yaml", "search_table1.yaml", "search_table1_repeat.yaml"):
        shared = _search_config(REPO / "recipes" / name, flow_evals)  # long documents
        assert 0 < shared.proxy.doc_tokens <= shared.proxy.tokens // 100, name
    gpu = SearchConfig.load(REPO / "recipes" / "search_gpu_paper_scale.yaml")
    assert gpu.proposals.n == 3000 and gpu.select.n == 100_000 and gpu.select.top_k == 10
    assert gpu.regressor.features == "theta" and gpu.proxy.group > 1
    assert gpu.proxy.tokens >= 1_000_000_000 and gpu.proxy.model.hidden_size == 256


def test_config_errors_name_the_key(tmp_path):
    with pytest.raises(SearchConfigError, match="unknown key.*'lr_typo'"):
        SearchConfig.from_dict({"dataset": "d", "proxy": {"lr_typo": 1}})
    with pytest.raises(SearchConfigError, match="proxy.batch_size: expected an integer"):
        SearchConfig.from_dict({"dataset": "d", "proxy": {"batch_size": "big"}})
    with pytest.raises(SearchConfigError, match="ranges.omega: need 0 ≤ low ≤ high"):
        SearchConfig.from_dict({"dataset": "d", "proposals": {"ranges": {"omega": [1, 0]}}})
    with pytest.raises(SearchConfigError, match="space"):
        SearchConfig.from_dict({"dataset": "d", "space": "nope"})
    bad = tmp_path / "r.yaml"
    bad.write_text("search: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(SearchConfigError, match="not valid YAML"):
        SearchConfig.load(bad)  # safe_load refuses to construct Python objects


# ---------------------------------------------------------------- spaces, features, baselines
def test_profile_features_match_the_exact_selection(pool):
    space = space_of("quadmix", SearchConfig(dataset="x").proposals, pool.domains, pool.scorers)
    vecs = space.propose(6, 3)
    feats = Featurizer("profile", pool)(vecs)
    for v, f in zip(vecs, feats, strict=True):
        p = pool.profile(to_params(v, pool.domains, pool.scorers, "multiplicative"))
        exact = [*p["token_share"].values(), math.log1p(p["tokens"]), *p["sigma_mean"].values()]
        np.testing.assert_allclose(f, exact, rtol=1e-6, atol=1e-9)
    both = Featurizer("theta+profile", pool)
    assert both(vecs).shape == (6, vecs.shape[1] + len(pool.domains) + 1 + len(pool.scorers))


def test_featurizer_chunks_threads_and_memo_change_nothing(pool):
    space = space_of("quadmix", SearchConfig(dataset="x").proposals, pool.domains, pool.scorers)
    vecs = space.propose(40, 5)
    feat = featurizer_for("profile", pool)
    assert featurizer_for("profile", pool) is feat  # one per pool and settings: shared
    assert featurizer_for("theta+profile", pool) is not feat
    in_order = np.concatenate([feat.profile(vecs[i : i + 7]) for i in range(0, 40, 7)])
    chunked = feat(vecs, chunk=7)  # 6 chunks on threads
    np.testing.assert_array_equal(chunked, in_order)
    chunked[:] = 0.0  # the caller's copy: the memo is untouched
    np.testing.assert_array_equal(feat(vecs, chunk=7), in_order)
    np.testing.assert_array_equal(feat(vecs[:5], chunk=7), in_order[:5])  # another input


def test_domain_mixture_space_realises_the_weights(pool):
    w = np.random.default_rng(0).dirichlet(np.ones(len(pool.domains)), size=4)
    vecs = mixture_vectors(w, pool.domain_tokens, len(pool.scorers))
    np.testing.assert_allclose(mixture_weights(vecs, pool.domain_tokens, len(pool.scorers)), w)
    for wi, v in zip(w, vecs, strict=True):
        p = to_params(v, pool.domains, pool.scorers, "multiplicative")
        assert np.all(p.lam == 0) and np.all(p.omega == 1) and np.all(p.eps == 0)
        prof = pool.profile(p)
        np.testing.assert_allclose(list(prof["token_share"].values()), wi, atol=1e-9)
        assert prof["tokens"] == pytest.approx(pool.domain_tokens.sum())


def _shares_space(pool, **kw):
    from quadmix_stream.search.config import ProposalConfig

    cfg = ProposalConfig(ranges=RANGES, **kw)
    return space_of("shares", cfg, pool.domains, pool.scorers, pool=pool)


def test_shares_space_realises_its_shares_with_its_quality(pool):
    space = _shares_space(pool)
    assert _shares_space(pool) is space  # one per pool and settings
    pts = space.propose(6, 11)
    m, n = len(pool.domains), len(pool.scorers)
    a = m * n
    w, rho = pts[:, a + 2 * m : a + 3 * m], pts[:, a + 3 * m :]
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    assert space.names[a + 2 * m] == f"share[{pool.domains[0]}]"
    for pt, wi, ri in zip(pts, w, rho, strict=True):
        p = space.params(pt)
        prof = pool.profile(p)
        # the small pool is its own label sample: the shares are exact, and so is the total
        np.testing.assert_allclose(list(prof["token_share"].values()), wi, atol=1e-9)
        assert prof["tokens"] == pytest.approx(pool.domain_tokens.sum(), rel=1e-9)
        # the quality parameters are the point's own; ε is ρ·η
        np.testing.assert_allclose(p.alpha.ravel(), pt[:a], rtol=1e-12)
        np.testing.assert_array_equal(p.lam, pt[a : a + m])
        np.testing.assert_array_equal(p.omega, pt[a + m : a + 2 * m])
        np.testing.assert_allclose(p.eps, ri * p.eta, rtol=1e-12)
    # θ → point → θ: the coordinates of a point's θ are the point
    np.testing.assert_allclose(space.coords(space.theta(pts)), pts, rtol=1e-9, atol=1e-12)
    # a θ outside the space (Random: η = 1, no quality) maps to the point of the same stream
    keep = SamplingParams.keep_all(pool.domains, pool.scorers).to_vector()
    back = space.theta(space.coords(keep[None]))[0]
    got = pool.profile(to_params(back, pool.domains, pool.scorers, "multiplicative"))
    np.testing.assert_allclose(
        list(got["token_share"].values()), pool.domain_tokens / pool.domain_tokens.sum()
    )
    # the featurizer reads points: "theta" features are the points, profile shares are theirs
    feat = featurizer_for("theta+profile", pool, space=space)
    f = feat(pts)
    np.testing.assert_array_equal(f[:, : pts.shape[1]], pts)
    np.testing.assert_allclose(f[:, pts.shape[1] : pts.shape[1] + m], w, atol=1e-9)
    assert feat.names[: pts.shape[1]] == space.names


def test_shares_space_settings_are_checked():
    with pytest.raises(SearchConfigError, match="only the shares space has caps"):
        SearchConfig.from_dict({"dataset": "x", "proposals": {"max_copies": 2}})
    with pytest.raises(SearchConfigError, match="final_tokens: set it with proposals.max_copies"):
        SearchConfig.from_dict(
            {"dataset": "x", "space": "shares", "proposals": {"final_tokens": 9}}
        )
    with pytest.raises(SearchConfigError, match="max_share_ratio: 0.5 < 1"):
        SearchConfig.from_dict(
            {"dataset": "x", "space": "shares", "proposals": {"max_share_ratio": 0.5}}
        )
    with pytest.raises(SearchConfigError, match="needs form: multiplicative"):
        SearchConfig.from_dict({"dataset": "x", "space": "shares", "form": "exponent"})


def test_shares_space_caps_shares_and_copies(pool):
    share = pool.domain_tokens / pool.domain_tokens.sum()
    capped = _shares_space(pool, max_share_ratio=1.2, dirichlet=0.3)
    m, a = len(pool.domains), len(pool.domains) * len(pool.scorers)
    pts = capped.propose(40, 2)
    w = pts[:, a + 2 * m : a + 3 * m]
    assert np.all(w <= 1.2 * share + 1e-12)
    np.testing.assert_allclose(w.sum(axis=1), 1.0)
    free = _shares_space(pool, dirichlet=0.3).propose(40, 2)
    assert np.any(free[:, a + 2 * m : a + 3 * m] > 1.2 * share)  # the cap did something
    np.testing.assert_array_equal(free[:, :a], pts[:, :a])  # same quality draws
    # at most 3 expected copies of any document over a final run of 5 epochs' tokens
    total = pool.domain_tokens.sum()
    few = _shares_space(pool, max_copies=3.0, final_tokens=5 * total, dirichlet=0.3)
    most = [pool.selection(few.params(p)).expected.max() for p in few.propose(20, 4)]
    assert max(most) * 5 <= 3.0 + 1e-9 and max(most) * 5 > 2.0  # binds, and is kept
    # a point off the caps (a mean, a round's step) is held to them when it becomes θ
    wild = pts[:1].copy()
    wild[0, a + 2 * m : a + 3 * m] = np.r_[0.9, np.full(m - 1, 0.1 / (m - 1))]
    realised = capped.coords(capped.theta(wild))[0, a + 2 * m : a + 3 * m]
    assert realised[0] == pytest.approx(1.2 * share[0]) and realised.sum() == pytest.approx(1.0)


def test_a_staged_search_proposes_shares_first_then_quality_with_the_best_shares(pool):
    share = pool.domain_tokens / pool.domain_tokens.sum()
    staged = _shares_space(pool, staged=True, max_share_ratio=3.0, dirichlet=0.3)
    m, n = len(pool.domains), len(pool.scorers)
    a = m * n
    first = staged.first_batch(12, 5)
    # stage 1: the shares vary (the same Dirichlet draws as an unstaged search, capped), every
    # document of a domain is selected alike (domain weights, as RegMix draws them)
    np.testing.assert_allclose(
        first[:, a + 2 * m : a + 3 * m], staged.propose(12, 5)[:, a + 2 * m : a + 3 * m]
    )
    for pt in first:
        p = staged.params(pt)
        sel = pool.selection(p).expected
        for d in range(m):
            rows = pool.labels.domain == d
            np.testing.assert_allclose(sel[rows], sel[rows][0])  # alike within the domain
        np.testing.assert_allclose(
            list(pool.profile(p)["token_share"].values()), staged.shares(pt)[0], atol=1e-9
        )
        assert np.all(staged.shares(pt) <= 3.0 * share + 1e-12)
    assert len({tuple(np.round(x, 6)) for x in first[:, a + 2 * m : a + 3 * m]}) == 12
    # stage 2: chosen shares with other quality parameters, held to the caps
    quality = staged.propose(3, 9)
    paired = staged.with_shares(quality, staged.shares(first[:3]))
    np.testing.assert_array_equal(paired[:, : a + 2 * m], quality[:, : a + 2 * m])
    np.testing.assert_array_equal(paired[:, a + 3 * m :], quality[:, a + 3 * m :])
    np.testing.assert_allclose(staged.shares(paired), staged.shares(first[:3]))
    # not staged: the first batch is the proposals
    np.testing.assert_array_equal(
        _shares_space(pool).first_batch(4, 5), _shares_space(pool).propose(4, 5)
    )
    with pytest.raises(SearchConfigError, match="staged search needs space: shares"):
        SearchConfig.from_dict({"dataset": "x", "proposals": {"staged": True}, "rounds": {"k": 1}})
    with pytest.raises(SearchConfigError, match=r"rounds.k ≥ 1"):
        SearchConfig.from_dict({"dataset": "x", "space": "shares", "proposals": {"staged": True}})


def test_baselines(pool):
    b = all_baselines(pool, fraction=0.3, grid=6)
    assert set(b) == {"random", "topk-clean", "topk-noise_rate", "topk-length", "criteria-mix"}
    full = pool.profile(b["random"])
    assert full["tokens"] == pytest.approx(pool.domain_tokens.sum())
    top = pool.profile(b["topk-clean"])
    assert 0.25 < top["tokens"] / full["tokens"] < 0.35
    assert top["sigma_mean"]["clean"] < 0.5 * full["sigma_mean"]["clean"]  # the cleanest 30%
    mix = pool.profile(b["criteria-mix"])
    assert mix["tokens"] > top["tokens"]  # a union of three top-30% sets is larger
    jac = b["criteria-mix"].extra["criteria_mix"]["jaccard"]
    assert set(jac) == set(pool.domains) and min(jac.values()) > 0.5


# ---------------------------------------------------------------- regressor
def test_regressor_recovers_a_planted_function(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(160, 8))
    y = 3 * (x[:, 0] - 0.5) ** 2 + x[:, 3] + rng.normal(0, 0.05, 160)
    names = [f"f{i}" for i in range(8)]
    cfg = dataclasses.replace(SearchConfig(dataset="x").regressor, model="auto")
    res = fit({"theta": x}, y, {"theta": names}, cfg)
    rep, sc = res.report, res.report["scores"]
    assert set(sc) == {"lgbm/theta", "linear/theta", "gp/theta"}
    assert all(s["kfold"]["n"] == 160 and s["holdout"]["n"] == 32 for s in sc.values())
    lg = sc["lgbm/theta"]["kfold"]
    assert lg["spearman"] > 0.8 and lg["mae"] < 0.5 * lg["mae_of_mean"]
    # the quadratic term defeats the linear model; LightGBM and the GP get it
    assert lg["mae"] < sc["linear/theta"]["kfold"]["mae"]
    assert sc["gp/theta"]["kfold"]["mae"] < sc["linear/theta"]["kfold"]["mae"]
    best = max(sc, key=lambda k: sc[k]["kfold"]["spearman"])
    assert rep["chosen"] == best and best != "linear/theta"
    assert {r["feature"] for r in rep["importance"][:2]} == {"f0", "f3"}
    curve = rep["learning_curve"]
    assert curve[0]["runs"] == 8 and curve[-1]["lgbm_mae"] < curve[0]["lgbm_mae"]
    save(res, tmp_path / "model")
    pred = Predictor(tmp_path / "model", cfg=cfg)
    np.testing.assert_allclose(pred.predict(x[:5]), res.model.predict(x[:5]), rtol=1e-6)
    assert not list((tmp_path / "model").glob("*.pkl"))


def test_the_regressor_inputs_are_picked_by_kfold(tmp_path):
    """Raw inputs that are noise, a profile that carries the signal: the profile is chosen."""
    rng = np.random.default_rng(1)
    theta, profile = rng.uniform(size=(60, 6)), rng.uniform(size=(60, 3))
    y = profile[:, 0] - 0.5 * profile[:, 2] + rng.normal(0, 0.02, 60)
    cfg = dataclasses.replace(SearchConfig(dataset="x").regressor, model="auto")
    xs = {"theta": theta, "profile": profile}
    names = {"theta": [f"t{i}" for i in range(6)], "profile": ["p0", "p1", "p2"]}
    res = fit(xs, y, names, cfg)
    assert res.report["features"] == "profile" and len(res.report["scores"]) == 6
    assert res.report["scores"]["linear/theta"]["kfold"]["spearman"] < 0.5
    assert res.report["scores"][res.chosen]["kfold"]["spearman"] > 0.9
    # a recipe that allows only θ and LightGBM gets them, whatever scores better
    only = dataclasses.replace(cfg, model="lgbm")
    assert fit(xs, y, names, only, ["theta"]).chosen == "lgbm/theta"
    save(res, tmp_path / "model")
    np.testing.assert_allclose(
        Predictor(tmp_path / "model", cfg=cfg).predict(profile[:4]), res.model.predict(profile[:4])
    )


def test_regressor_needs_runs():
    with pytest.raises(ValueError, match="at least 8"):
        fit(
            {"theta": np.zeros((5, 3))},
            np.arange(5.0),
            {"theta": ["a", "b", "c"]},
            SearchConfig(dataset="x").regressor,
        )


# ---------------------------------------------------------------- data
def test_target_sets_without_text_are_refused(tmp_path, tok):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.jsonl"
    blank.write_text('{"text": ""}\n{"text": "   "}\n{"id": 3}\n')
    for f in (empty, blank):
        with pytest.raises(ValueError, match="no text"):
            load_target_texts(f)
    with pytest.raises(FileNotFoundError):
        load_target_texts(tmp_path / "absent.jsonl")
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"text": "1 plus 2 equals 3 ."}\n{"text": ""}\n')
    texts = load_target_texts(ok)
    ids, mask = target_blocks(texts, tok, seq_len=8, max_tokens=100)
    assert ids.shape[1] == 8 and mask.sum() == len(tok.encode_docs(texts)[0])


def test_token_stream_repeats_small_selections_and_refuses_empty_ones(mds_ds, pool, tok):
    with pytest.raises(SelectionError, match="selects nothing"):
        check_selection(open_stream(mds_ds, nothing(pool), 0), 1000, 10)
    tiny = dataclasses.replace(
        SamplingParams.keep_all(pool.domains, pool.scorers),
        omega=np.full(len(pool.domains), 0.01),
        eta=np.full(len(pool.domains), 0.5),
    )
    ds = open_stream(mds_ds, tiny, 0)
    sel = check_selection(ds, 20_000, 1000)
    with pytest.raises(SelectionError, match="max_epochs"):
        check_selection(ds, 20_000, max(1, int(20_000 / sel["tokens"]) // 2))
    stream = TokenStream(ds, tok, batch_size=4, seq_len=32, max_epochs=1000)
    batches = [stream.next_batch() for _ in range(20)]
    assert all(b.shape == (4, 32) and b.dtype == torch.long for b in batches)
    assert stream.epochs > 1 and stream.docs > len(stream.unique)  # repeated to fill the budget
    with pytest.raises(SelectionError, match="within 2 epochs"):
        s2 = TokenStream(open_stream(mds_ds, tiny, 0), tok, 4, 32, max_epochs=2)
        for _ in range(100):
            s2.next_batch()


# ---------------------------------------------------------------- proxies
def test_proxy_learns_and_is_deterministic(ctx, pool):
    job = jobs_for(pool, 1)[0]
    a, b = train_one(job, ctx), train_one(job, ctx)
    assert a["status"] == "ok" and a["loss"] == b["loss"]
    assert a["loss"] < math.log(ctx.tokenizer.vocab_size)  # better than uniform
    assert a["tokens"] == 8 * 4 * 32 and a["steps"] == 8


def test_batched_proxies_match_one_at_a_time(ctx, pool):
    jobs = jobs_for(pool, 3)
    seq = [train_one(j, ctx) for j in jobs]
    bat = train_group(jobs, ctx)
    assert [r["name"] for r in bat] == [j.name for j in jobs]
    for s, b in zip(seq, bat, strict=True):
        assert b["status"] == "ok" and b["mode"] == "batched" and b["group"] == 3
        assert b["loss"] == pytest.approx(s["loss"], rel=1e-4)
        assert b["docs"] == s["docs"] and b["unique_docs"] == s["unique_docs"]
    assert len({round(r["loss"], 4) for r in seq}) == 3  # θ matters


def test_group_with_an_empty_selection(ctx, pool):
    jobs = jobs_for(pool, 2)
    jobs.insert(1, ProxyJob("empty", nothing(pool)))
    out = train_group(jobs, ctx)
    assert out[1]["status"] == "failed" and "selects nothing" in out[1]["reason"]
    for i in (0, 2):
        assert out[i]["loss"] == pytest.approx(train_one(jobs[i], ctx)["loss"], rel=1e-4)


def test_contenders_on_the_same_stream_are_found_and_read_the_same_documents(ctx, pool, mds_ds):
    from quadmix_stream.search.twins import close, find_twins, twin_record

    base = jobs_for(pool, 2)
    a = base[0].params
    nudged = dataclasses.replace(a, eta=a.eta * (1 + 1e-7), lam=a.lam * (1 + 1e-7))
    moved = dataclasses.replace(a, eta=a.eta * 1.005)  # close, but other copies
    assert close(a, nudged) and close(a, moved) and not close(a, base[1].params)
    jobs = [
        ProxyJob("a", a, data_seed=3),
        ProxyJob("other", base[1].params, data_seed=3),
        ProxyJob("nudged", nudged, data_seed=3),
        ProxyJob("moved", moved, data_seed=3),
        ProxyJob("a-seed4", nudged, data_seed=4),  # another seed: another stream
    ]
    twins = find_twins(jobs, mds_ds, ctx.cfg)
    assert set(twins) == {"nudged"} and twins["nudged"][0] == "a"
    epochs = twins["nudged"][1]

    # what makes them twins: the same documents in the same order, epoch after epoch
    def keys(p: SamplingParams, seed: int) -> list[int]:
        ds, out = open_stream(mds_ds, p, seed), []
        for e in range(epochs):
            ds.set_epoch(e)
            out += [int(d["key"]) for d in ds]
        return out

    assert keys(a, 3) == keys(nudged, 3) != keys(moved, 3)
    first, second = train_one(jobs[0], ctx), train_one(jobs[2], ctx)
    assert first["loss"] == second["loss"] and first["epochs"] <= epochs
    copy = twin_record(jobs[2], first, epochs)
    assert copy["name"] == "nudged" and copy["same_stream_as"] == "a"
    assert copy["stream_fingerprint"] == second["stream_fingerprint"] != first["stream_fingerprint"]
    # a twin that read further than was compared is trained after all
    assert twin_record(jobs[2], {**first, "epochs": epochs + 1}, epochs) is None


def test_divergence_is_a_failed_proxy_not_a_crash(mds_ds, tok, pool):
    hot = ProxyContext.create(
        mds_ds, tok, tiny_proxy(lr=1e6, warmup_fraction=0.0), mds_ds / "eval_sets" / "target.jsonl"
    )
    jobs = jobs_for(pool, 2)
    r = train_one(jobs[0], hot)
    assert r["status"] == "failed" and r["reason"].startswith("diverged")
    assert all(
        x["status"] == "failed" and "diverged" in x["reason"] for x in train_group(jobs, hot)
    )


def test_one_diverging_member_leaves_the_others_untouched(ctx, pool, monkeypatch):
    """NaN injected into exactly one member's loss (its batches carry a marker token)."""
    jobs = jobs_for(pool, 3)
    marker = ctx.tokenizer.vocab_size - 1
    real_stream, real_loss = ProxyContext.stream, batched_mod.lm_loss

    def stream(self, job):
        st, sel = real_stream(self, job)
        if job.name == "j1":
            st.next_batch = lambda: torch.full((4, 32), marker, dtype=torch.long)
        return st, sel

    def poisoned(logits, ids, mask=None):
        s, c = real_loss(logits, ids, mask)
        bad = (ids == marker).all() if mask is None else torch.zeros((), dtype=torch.bool)
        return torch.where(bad, torch.full_like(s, float("nan")), s), c

    monkeypatch.setattr(ProxyContext, "stream", stream)
    monkeypatch.setattr(batched_mod, "lm_loss", poisoned)
    out = train_group(jobs, ctx)
    monkeypatch.undo()
    assert (
        out[1]["status"] == "failed" and "diverged: training loss nan at step 0" in out[1]["reason"]
    )
    for i in (0, 2):
        assert out[i]["status"] == "ok"
        assert out[i]["loss"] == pytest.approx(train_one(jobs[i], ctx)["loss"], rel=1e-4)


def test_bench_proxies_prints_both_rates(mds_ds, capsys):
    from quadmix_stream.cli import main

    args = ["bench", "proxies", "--dataset", str(mds_ds), "--proxies", "2", "--group", "2"]
    assert main(args + ["--steps", "2", "--threads", "1", "--vocab", "320", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "one at a time" in out and "batched (G=2" in out and "proxies/hour" in out
    assert "max |Δ loss|" in out


# ---------------------------------------------------------------- coverage, eval sets, progress
def test_document_windows_spread_a_budget_over_many_documents(mds_ds, pool, tok):
    keep = SamplingParams.keep_all(pool.domains, pool.scorers)

    def stream(cap: int) -> TokenStream:
        ds = open_stream(mds_ds, keep, 0)
        return TokenStream(ds, tok, 4, 32, 100, doc_tokens=cap, window_seed=0)

    whole, capped = stream(0), stream(6)
    for s in (whole, capped):
        for _ in range(6):
            s.next_batch()
    assert len(capped.unique) > 2 * len(whole.unique)  # same tokens, more documents
    s = stream(6)
    pieces = list(itertools.islice(s._docs, 50))
    assert all(len(p) <= 7 and p[-1] == tok.eos_id for p in pieces)  # window + end-of-text
    again = list(itertools.islice(stream(6)._docs, 50))
    assert pieces == again  # seeded: the same windows every time
    full = tok.encode_docs(["x " * 400])[0]
    w = [s._window(full, key, epoch) for key, epoch in ((1, 0), (1, 1), (2, 0))]
    assert all(len(x) == 7 for x in w) and len({tuple(x) for x in w}) > 1  # offsets vary


def test_a_proxy_pool_fraction_is_one_fixed_subsample_for_every_theta(mds_ds, pool, tok):
    """pool_fraction keeps the same hash-chosen documents whatever θ, about that fraction of
    them, and makes a small selection repeat within a budget it would not repeat in whole."""
    keep = SamplingParams.keep_all(pool.domains, pool.scorers)
    tight = SamplingParams.propose(1, pool.domains, pool.scorers, seed=3, ranges=RANGES)[0]

    def keys(params: SamplingParams, fraction: float) -> list[int]:
        s = TokenStream(open_stream(mds_ds, params, 0), tok, 4, 32, 100, pool_fraction=fraction)
        out = []
        for key, _, epoch in s._texts():
            if epoch:
                return out
            out.append(key)
        return out

    whole, part = keys(keep, 1.0), keys(keep, 0.25)
    assert set(part) == {k for k in whole if in_proxy_pool(k, 0.25)}
    assert 0.18 < len(part) / len(whole) < 0.32
    sel = keys(tight, 1.0)
    assert set(keys(tight, 0.25)) == {k for k in sel if in_proxy_pool(k, 0.25)}  # same subsample
    need = check_selection(open_stream(mds_ds, keep, 0), 4 * 32 * 40, 100)
    small = check_selection(open_stream(mds_ds, keep, 0), 4 * 32 * 40, 100, pool_fraction=0.25)
    assert small == need  # the expected selection is θ's; only the epochs it needs change
    with pytest.raises(SelectionError, match="epochs"):
        check_selection(open_stream(mds_ds, keep, 0), 10**9, 100, pool_fraction=0.01)
    with pytest.raises(SearchConfigError, match="pool_fraction"):
        SearchConfig.from_dict({"dataset": "d", "proxy": {"pool_fraction": 0}})


def test_proxies_score_every_eval_set_and_print_progress(mds_ds, tok, pool, tmp_path):
    general = tmp_path / "general.jsonl"
    general.write_text("".join(f'{{"text": "the cat sat on mat {i} ."}}\n' for i in range(40)))
    target = mds_ds / "eval_sets" / "target.jsonl"
    lines: list[str] = []
    ctx2 = ProxyContext.create(mds_ds, tok, tiny_proxy(), target, {"general": general})
    ctx2.progress, ctx2.progress_every = lines.append, 0.0
    jobs = jobs_for(pool, 2)
    seq = train_one(jobs[0], ctx2)
    assert set(seq["losses"]) == {"target", "general"} and seq["loss"] == seq["losses"]["target"]
    assert seq["losses"]["general"] != seq["losses"]["target"]
    assert len(lines) == 8 and "step 8/8" in lines[-1] and "ETA" in lines[-1]
    lines.clear()
    bat = train_group(jobs, ctx2)
    assert bat[0]["losses"]["general"] == pytest.approx(seq["losses"]["general"], rel=1e-4)
    assert "group of 2" in lines[0] and "tokens/s" in lines[0]
    only = ProxyContext.create(mds_ds, tok, tiny_proxy(), target)
    assert train_one(jobs[0], only)["loss"] == pytest.approx(seq["loss"], rel=1e-6)


def test_evaluation_can_spread_over_every_document(tok):
    long_docs = [f"document {i} " + "word " * 300 for i in range(40)]
    first = eval_coverage(long_docs, tok, max_tokens=2000)
    spread = eval_coverage(long_docs, tok, max_tokens=2000, doc_tokens=40)
    assert first["docs_used"] <= 8 and spread["docs_used"] == 40  # file order: a few documents
    ids, mask = target_blocks(long_docs, tok, 32, 2000, doc_tokens=40)
    assert int(mask.sum()) == spread["tokens"] == 40 * 41  # 40 tokens + end-of-text each
    assert (ids == tok.eos_id).sum() >= 40
    again, _ = target_blocks(long_docs, tok, 32, 2000, doc_tokens=40)
    assert torch.equal(ids, again)  # seeded order
    old, _ = target_blocks(long_docs, tok, 32, 2000)
    head = [t for d in tok.encode_docs(long_docs[:8]) for t in d][:2000]
    assert old.flatten()[: len(head)].tolist() == head  # doc_tokens=0: as before, file order


def test_the_trainers_evaluation_can_spread_over_every_document(tok, tmp_path):
    from quadmix_stream.training.evaluation import full_blocks

    path = tmp_path / "set.jsonl"
    path.write_text(
        "".join(json.dumps({"text": f"doc {i} " + "word " * 300}) + "\n" for i in range(40))
    )
    first, cov = full_blocks(path, tok, 32, 60)
    assert cov["docs_used"] <= 8 and cov["tokens"] == first.numel() == 60 * 32
    blocks, cov = full_blocks(path, tok, 32, 60, doc_tokens=40)
    assert cov == {"docs": 40, "docs_used": 40, "tokens": blocks.numel()}
    assert blocks.shape == (40 * 41 // 32, 32)  # whole blocks only: the last part is dropped


def test_a_broken_constraint_is_said_in_numbers():
    from quadmix_stream.search.select import _fails, check_constraints, constraint_bounds

    measured = {
        "random": _contender([7.0, 7.1], [5.4315, 5.4315]),
        "a": _contender([6.9, 7.0], [5.4554, 5.4554]),
        "b": _contender([6.9, 7.0], [5.4315, 5.4315]),
    }
    measured["b"]["seed_losses"] = {}  # no loss on the constrained set
    bounds, _ = constraint_bounds({"general": "random"}, measured)
    said = _fails(check_constraints(measured["a"], bounds))
    assert said == ["general 5.4554 > 5.4315 (random): +0.0239 ± 0.0000, p 0.000"]
    assert _fails(check_constraints(measured["random"], bounds)) == []
    assert _fails(check_constraints(measured["b"], bounds)) == ["general: no loss measured"]


# ---------------------------------------------------------------- noise-aware decisions
def _contender(objectives, general):
    return {
        "objective": float(np.mean(objectives)),
        "objectives": list(objectives),
        "losses": {"general": float(np.mean(general))},
        "seed_losses": {"general": list(general)},
    }


def _noise(sd: float, seed: int, n: int = 16) -> np.ndarray:
    """``n`` values of mean exactly 0 and standard deviation exactly ``sd``."""
    z = np.random.default_rng(seed).normal(size=n)
    return sd * (z - z.mean()) / z.std(ddof=1)


def test_constraints_and_the_runner_up_allow_for_the_seeds_noise():
    from quadmix_stream.search.select import (
        above,
        check_constraints,
        constraint_bounds,
        runner_up,
    )

    general = 5.0 + _noise(0.03, 0)
    measured = {
        "random": _contender(7.0 + _noise(0.03, 1), general),
        # 0.009 ± 0.0075 worse (sd 0.03 over 16 seeds): t = 1.2, within the noise, it passes
        "close": _contender(6.9 + _noise(0.03, 1), general + 0.009 + _noise(0.03, 2)),
        # 0.009 ± 0.00075 worse: t = 12, beyond the noise, it fails
        "worse": _contender(6.8 + _noise(0.03, 1), general + 0.009 + _noise(0.003, 3)),
    }
    bounds, notes = constraint_bounds({"general": "random"}, measured)
    assert notes == [] and bounds["general"]["from"] == "random"
    close = check_constraints(measured["close"], bounds)["general"]
    worse = check_constraints(measured["worse"], bounds)["general"]
    assert not close["fails"] and close["mean"] == pytest.approx(0.009)
    assert close["se"] == pytest.approx(0.0075) and close["p"] == pytest.approx(0.1244, abs=1e-3)
    assert worse["fails"] and worse["se"] == pytest.approx(0.00075) and worse["p"] < 1e-6
    # a number as the bound: the per-seed losses against it
    fixed, _ = constraint_bounds({"general": 5.5}, measured)
    assert not check_constraints(measured["worse"], fixed)["general"]["fails"]
    # the runner-up 0.1 worse on every seed (the same noise) is separable; 0.02 worse in noise
    # of sd 0.3 is not
    sep = runner_up({"a": measured["close"], "b": measured["random"]}, "a")
    assert sep["name"] == "b" and sep["separable"] and sep["mean"] == pytest.approx(0.1)
    blur = _contender(6.92 + _noise(0.3, 4), general)
    assert runner_up({"a": measured["close"], "b": blur}, "a")["separable"] is False
    # a contender on another's stream (the same measurements) is not another contender
    from quadmix_stream.search.decide import distinct

    objs = {"s": [1.0, 2.0], "t": [1.0, 2.0], "a": [1.5, 2.0], "b": [1.5, 2.0], "c": [3.0, 1.0]}
    assert distinct(["t", "a", "b", "c"], objs, 2, ["s"]) == ["a", "c"]
    assert distinct(["t", "a", "b", "c"], objs, 5, []) == ["t", "a", "c"]
    # a contender on the winner's stream (the same measurements) is not its runner-up
    twin = {"a": measured["close"], "t": measured["close"], "b": measured["random"]}
    assert (
        runner_up(twin, "a")["name"] == "b"
        and runner_up({"a": twin["a"], "t": twin["t"]}, "a") is None
    )
    # one seed: no noise estimate, so the means decide and separability is not claimed
    one = {
        k: _contender(v["objectives"][:1], v["seed_losses"]["general"][:1])
        for k, v in measured.items()
    }
    b1, _ = constraint_bounds({"general": "random"}, one)
    assert check_constraints(one["worse"], b1)["general"]["fails"] == (
        one["worse"]["losses"]["general"] > one["random"]["losses"]["general"]
    )
    assert runner_up({"a": one["close"], "b": one["random"]}, "a")["separable"] is None
    assert above([1.0, 1.0], [1.0, 1.0]) == {"mean": 0.0, "se": 0.0, "p": 1.0, "above": False}


def test_deciding_settings_inherit_the_proxys_and_are_fingerprinted():
    from quadmix_stream.search.decide import decide_seeds, fidelity

    base = {
        "dataset": "x",
        "proxy": {"model": {"hidden_size": 32, "num_layers": 2}, "tokens": 1000, "seq_len": 64},
    }
    cfg = SearchConfig.from_dict({**base, "decide": {"proxy": {"model": {"hidden_size": 64}}}})
    d = cfg.decide.proxy
    assert (d.model.hidden_size, d.model.num_hidden_layers, d.tokens, d.seq_len) == (
        64,
        2,
        1000,
        64,
    )
    assert SearchConfig.from_dict(cfg.to_dict()) == cfg  # search.json reads back the same
    assert decide_seeds(cfg) == [0, 1, 2]
    more = SearchConfig.from_dict({**base, "decide": {"proxy": {"tokens": 4000}}})
    moved = SearchConfig.from_dict(
        {**base, "decide": {"proxy": {"model": {"hidden_size": 64}, "device": "cpu", "threads": 1}}}
    )
    assert fidelity(cfg) != fidelity(more) and fidelity(cfg) == fidelity(moved)
    with pytest.raises(SearchConfigError, match="decide.proxy.model: hidden_size 30"):
        SearchConfig.from_dict({**base, "decide": {"proxy": {"model": {"hidden_size": 30}}}})


def test_partial_dependence_finds_the_inputs_the_prediction_moves_with():
    from quadmix_stream.search.regressor import partial_dependence

    x = np.random.default_rng(0).uniform(size=(200, 4))
    values, pred = partial_dependence(lambda v: 3 * v[:, 0] - v[:, 2] ** 2, x, grid=5)
    assert values.shape == pred.shape == (4, 5)
    np.testing.assert_allclose(values[:, 0], np.percentile(x, 5, axis=0))
    np.testing.assert_allclose(np.diff(pred[0]), 3 * np.diff(values[0]))  # linear in x0
    assert np.ptp(pred[1]) == 0 and np.ptp(pred[3]) == 0  # inputs it ignores are flat
    assert np.all(np.diff(pred[2]) < 0)  # −x2² falls along x2
