"""Replay the layer search against per-layer success probabilities instead of a model.

Why: the adaptive search's savings and error rate matter most where a sweep costs GPU-days (70 SDXL layers,
57 FLUX layers, 200 pairs), which cannot be run here. The simulator draws, once per seed, a pair x layer
matrix of Bernoulli outcomes (layer ``l`` turns pair ``j`` into the target with probability ``p_l``) and answers
both searches from the *same* draws, so the exhaustive sweep's chosen set is the reference the adaptive one must
reproduce.

Outcome model (documented, deliberately simple): a set of layers succeeds on a pair when any of its members
succeeds alone on that pair (so the all-layers row is the OR of every layer); the none row fails; the target
row succeeds. F1 is taken equal to the exact outcome, so ties are broken by execution order, as in the sweep.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from textloc.apps.localize.search import AdaptiveRule, adaptive_search, exhaustive_search


@dataclass(frozen=True)
class Profile:
    """Per-layer success probabilities of a model (layer index -> p; every other layer 0)."""

    name: str
    n_layers: int
    rates: Mapping[int, float]
    note: str = ""

    def probabilities(self) -> np.ndarray:
        p = np.zeros(self.n_layers)
        for index, rate in self.rates.items():
            p[index] = rate
        return p


#: Paper-like profiles. SDXL: the content sits in cross-attention layers 55-57 of 70, each partly effective
#: alone (the three together reach the all-layers score), with a few weak neighbours. SD3-medium: joint block 10
#: of 24 alone reaches almost the all-layers score. The 38- and 57-layer profiles (SD3.5-large, FLUX.1) have no
#: published per-layer numbers; they follow the same shape (one to three strong layers, a few weak ones).
PROFILES: tuple[Profile, ...] = (
    Profile("sd3-medium-like", 24, {10: 0.85, 9: 0.05, 11: 0.10}, "one strong block (10), two weak"),
    Profile("sd3.5-large-like", 38, {14: 0.70, 15: 0.30, 13: 0.05, 16: 0.05}, "two strong, two weak"),
    Profile("flux-like", 57, {17: 0.60, 18: 0.45, 12: 0.05, 30: 0.08, 40: 0.03}, "two strong, three weak"),
    Profile("sdxl-like", 70, {55: 0.55, 56: 0.70, 57: 0.40, 52: 0.05, 53: 0.03, 58: 0.08, 61: 0.02},
            "three strong (55-57), four weak"),
)


def _evaluator(outcomes: np.ndarray, names: Sequence[str]):
    index = {name: i for i, name in enumerate(names)}

    def evaluate(variants, pairs):
        out = {}
        rows = outcomes[pairs]
        for variant, layers in variants:
            if variant == "none":
                values = np.zeros(len(pairs))
            elif variant == "target":
                values = np.ones(len(pairs))
            else:
                cols = [index[name] for name in layers]
                values = rows[:, cols].any(axis=1).astype(float)
            out[variant] = [(float(v), float(v)) for v in values]
        return out

    return evaluate


def simulate(profile: Profile, n_pairs: int, seeds: int, rule: AdaptiveRule | None = None,
             fraction: float = 0.9, until: str = "chosen") -> dict[str, float]:
    """Run both searches on ``seeds`` independent draws; agreement and cost of the adaptive one."""
    rule = rule or AdaptiveRule()
    names = [f"L{i:02d}" for i in range(profile.n_layers)]
    p = profile.probabilities()
    same_chosen = same_full = 0
    shares, dropped_strong = [], 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        outcomes = rng.random((n_pairs, profile.n_layers)) < p
        evaluate = _evaluator(outcomes, names)
        ref = exhaustive_search(names, n_pairs, evaluate, fraction=fraction)
        ada = adaptive_search(names, n_pairs, evaluate, rule=rule, fraction=fraction, until=until)
        same_chosen += ref.chosen == ada.chosen
        same_full += ref.full_score == ada.full_score if until == "full" else 0
        shares.append(ada.generations / ref.generations)
        dropped_strong += any(name in ada.dropped_after for name in ref.chosen)
    return {
        "profile": profile.name, "layers": profile.n_layers, "pairs": n_pairs, "seeds": seeds,
        "until": until, "same_chosen": same_chosen / seeds,
        "same_full_score": same_full / seeds if until == "full" else None,
        "generations_share_mean": float(np.mean(shares)), "generations_share_max": float(np.max(shares)),
        "chosen_layer_dropped": dropped_strong / seeds,
    }
