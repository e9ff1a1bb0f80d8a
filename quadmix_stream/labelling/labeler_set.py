"""The run's labellers as one set: the domain labeller, the token counter and the scorers, with
the dataset's domain list; each column's fingerprint decides whether a unit is current."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

from quadmix_stream.formats.labels import ScorerInfo
from quadmix_stream.labelling.labeler import Labeler
from quadmix_stream.labelling.paths import require_readable
from quadmix_stream.labelling.recipe import Recipe
from quadmix_stream.labelling.registry import build_labeler
from quadmix_stream.recipe import RecipeError
from quadmix_stream.storage.locations import resolve_path


@dataclass
class LabelerSet:
    """The domain labeller, the token counter and the scorers, with the dataset's domain list."""

    domain: Labeler
    tokens: Labeler
    scorers: list[Labeler]
    domains: list[str]
    unknown_domain: str = "error"

    @property
    def all(self) -> list[Labeler]:
        return [self.domain, self.tokens, *self.scorers]

    @property
    def scorer_names(self) -> list[str]:
        return [s.name for s in self.scorers]

    def columns(self) -> dict[str, str]:
        """Column → fingerprint; the domain column also depends on the domain list and policy."""
        dom = hashlib.sha256(
            json.dumps([self.domain.fingerprint(), self.domains, self.unknown_domain]).encode()
        ).hexdigest()[:16]
        cols = {"domain": f"domain:{dom}", "tokens": self.tokens.fingerprint()}
        cols.update({s.name: s.fingerprint() for s in self.scorers})
        return cols

    def scorer_infos(self) -> list[ScorerInfo]:
        return [ScorerInfo(s.name, s.higher_is_better, s.fingerprint()) for s in self.scorers]

    def describe(self) -> dict[str, Any]:
        return {
            "domain": self.domain.describe(),
            "tokens": self.tokens.describe(),
            "scorers": {s.name: s.describe() for s in self.scorers},
            "unknown_domain": self.unknown_domain,
        }


def build_labelers(recipe: Recipe) -> LabelerSet:
    """Load every labeller of a recipe (models from local paths) and fix the domain list."""
    base = recipe.base
    assert recipe.domain is not None
    domain = build_labeler(recipe.expand(recipe.domain), "domain", "domain", base)
    tokens = build_labeler(recipe.expand(recipe.tokens), "tokens", "tokens", base)
    scorers = [build_labeler(recipe.expand(s), "quality", s["name"], base) for s in recipe.scorers]
    classes = domain.classes()
    domains = list(recipe.domains) if recipe.domains else classes
    if not domains:
        raise RecipeError(
            "domains: the domain labeller does not list its classes (field labeller without a "
            "'map'); give the domain list: --domains a,b,c on the command line, or 'domains:' "
            "in the recipe"
        )
    if len(set(domains)) != len(domains):
        raise RecipeError(f"domains: duplicate names in {domains}")
    pol = recipe.unknown_domain
    if pol != "error" and pol not in domains:
        raise RecipeError(f"unknown_domain: {pol!r} is not one of the domains {domains}")
    extra = sorted(set(classes) - set(domains))
    if extra and pol == "error":
        raise RecipeError(
            f"domains: the domain labeller can return {extra}, which are not in {domains}; add "
            "them (--domains or the recipe's 'domains:'), or set unknown_domain to the domain "
            "that should take them"
        )
    return LabelerSet(domain, tokens, scorers, domains, pol)


def check_model_paths(recipe: Recipe) -> None:
    """Refuse a recipe whose labeller model files are missing, before anything is written.

    A path that one of the recipe's training jobs writes (its ``out``) may be missing: it is
    made before labelling starts. Raises :class:`LabelerError` naming the labeller and the path.
    """

    def norm(p: object) -> str:
        return os.path.normpath(resolve_path(str(recipe.expand(p)), recipe.base))

    made = {norm(j["out"]) for j in recipe.train if isinstance(j, dict) and "out" in j}
    specs = [("domain", recipe.domain), ("tokens", recipe.tokens)]
    specs += [(str(s.get("name")), s) for s in recipe.scorers]
    for name, spec in specs:
        if not isinstance(spec, dict):
            continue
        for key in ("path", "model", "head"):
            if isinstance(spec.get(key), str) and norm(spec[key]) not in made:
                p = resolve_path(str(recipe.expand(spec[key])), recipe.base)
                what = spec.get("type") if key == "path" else f"{spec.get('type')} {key}"
                require_readable(p, f"labeller {name!r} ({what})")


__all__ = ["LabelerSet", "build_labelers", "check_model_paths"]
