"""Offline parameter search (DESIGN.md §3, §6): proposals → proxy trainings → regressor → θ*.

A search lives in one *run folder* (:mod:`.runfolder`). Its steps are separate and resumable:

``propose``  freeze the recipe, check the dataset and target set, train (or copy) a tokenizer,
             draw θ proposals (Algorithm 1, or Dirichlet domain mixtures for the RegMix baseline);
``proxies``  train one small causal LM per θ on the QuaDMix stream for a fixed token budget and
             measure its mean per-token loss on the target set (:mod:`.proxy`, several at once
             with :mod:`.batched`; spread over ``torchrun`` ranks by ``quadmix_stream.trainers.proxy``);
``fit``      LightGBM θ → loss with held-out and k-fold metrics against a linear baseline
             (:mod:`.regressor`);
``select``   100k fresh proposals, predict, θ* = mean of the best k, params.json (:mod:`.select`)
             plus the baselines of DESIGN.md §3 (:mod:`.baselines`);
``evaluate`` train proxies on θ* and the baselines (the check that the prediction holds);
``report``   markdown + PNG plots (:mod:`.report`).

:mod:`.pipeline` runs the steps; ``quadmix-stream search …`` is the command line.
"""

from quadmix_stream.search.config import SearchConfig, SearchConfigError

__all__ = ["SearchConfig", "SearchConfigError"]
