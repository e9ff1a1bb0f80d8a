"""Offline parameter search (docs/design.md, "The search"): proposals → proxy trainings → regressor → θ*.

A search lives in one *run folder* (:mod:`.runfolder`). Its steps are separate and resumable:

``propose``  freeze the recipe, check the dataset and target set, train (or copy) a tokenizer,
             draw θ proposals (Algorithm 1, or Dirichlet domain mixtures for the RegMix baseline);
``proxies``  train one small causal LM per θ on the QuaDMix stream for a fixed token budget and
             measure its mean per-token loss on each evaluation set (:mod:`.proxy`, several at
             once with :mod:`.batched`; spread over ``torchrun`` ranks by
             ``quadmix_stream.trainers.proxy``); the objective is a weighted sum of those losses;
rounds       (optional) refit, draw θ near the best, train them, repeat (``pipeline.step_round``);
``fit``      LightGBM, ridge and a Gaussian process on θ and on the selection profile, scored by
             held-out and k-fold Spearman; the best predicts (:mod:`.regressor`);
``select``   100k fresh proposals, predict, θ* = mean of the best k, the best few candidates
             (:mod:`.select`) plus the baselines of docs/design.md, "The search" (:mod:`.baselines`);
``evaluate`` train proxies on θ*, the candidates and the baselines; the best *measured* ships
             as params.json;
``report``   markdown + PNG plots (:mod:`.report`).

:mod:`.pipeline` runs the steps; ``quadmix-stream search …`` is the command line.
"""

from quadmix_stream.search.config import SearchConfig, SearchConfigError

__all__ = ["SearchConfig", "SearchConfigError"]
