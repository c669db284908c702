"""The adaptive layer search: its rule, its bookkeeping, and agreement with the exhaustive sweep."""

from __future__ import annotations

import numpy as np
import pytest

from textloc.apps.localize.search import (
    AdaptiveRule,
    adaptive_search,
    clopper_pearson,
    curve_ks,
    exhaustive_generations,
    exhaustive_search,
)
from textloc.apps.localize.simulate import Profile, _evaluator, simulate
from textloc.errors import InputError


def test_clopper_pearson_brackets_the_rate() -> None:
    lo, hi = clopper_pearson(0, 20, 0.05)
    assert lo == 0.0 and 0.1 < hi < 0.2  # 0/20: exact upper bound 0.168
    lo, hi = clopper_pearson(20, 20, 0.05)
    assert hi == 1.0 and 0.8 < lo < 0.9
    lo, hi = clopper_pearson(10, 20, 0.05)
    assert lo < 0.5 < hi


def test_rounds_end_at_the_pair_count() -> None:
    rule = AdaptiveRule(first_round=4, growth=2.0)
    assert rule.rounds(32) == [4, 8, 16, 32]
    assert rule.rounds(3) == [3]
    assert rule.rounds(20) == [4, 8, 16, 20]


@pytest.mark.parametrize("kwargs", [{"delta": 0}, {"delta": 1.5}, {"race_top": 0}, {"growth": 1.0}])
def test_bad_rule_is_an_input_error(kwargs) -> None:
    with pytest.raises(InputError):
        AdaptiveRule(**kwargs)


def _matrix(rates: list[float], pairs: int, seed: int) -> tuple[list[str], np.ndarray]:
    rng = np.random.default_rng(seed)
    return [f"L{i}" for i in range(len(rates))], rng.random((pairs, len(rates))) < np.array(rates)


def test_zero_layers_are_dropped_and_the_strong_one_is_not() -> None:
    names, outcomes = _matrix([0.0] * 10 + [0.95] + [0.0] * 9, 64, seed=1)
    result = adaptive_search(names, 64, _evaluator(outcomes, names))
    assert "L10" not in result.dropped_after and result.pairs_seen["L10"] == 64
    assert len(result.dropped_after) == 19  # every zero-rate layer stopped early
    assert result.chosen == ["L10"]
    assert result.generations < result.generations_exhaustive / 2


def test_adaptive_equals_exhaustive_on_the_same_draws() -> None:
    names, outcomes = _matrix([0.0] * 5 + [0.7, 0.5] + [0.05] * 3 + [0.0] * 6, 100, seed=3)
    evaluate = _evaluator(outcomes, names)
    ref = exhaustive_search(names, 100, evaluate)
    ada = adaptive_search(names, 100, evaluate)
    assert ada.chosen == ref.chosen
    assert ref.generations == exhaustive_generations(16, 100, curve_ks(16)) == ada.generations_exhaustive
    assert ada.generations < ref.generations


def test_search_is_deterministic_and_replayable() -> None:
    """Replaying the search over recorded outcomes asks for the same variants in the same order (resume)."""
    names, outcomes = _matrix([0.0] * 8 + [0.9], 40, seed=5)
    asked: list[list[tuple[str, tuple[int, ...]]]] = [[], []]
    for run in range(2):
        inner = _evaluator(outcomes, names)

        def evaluate(variants, pairs, run=run, inner=inner):
            asked[run].append([(v, tuple(pairs)) for v, _ in variants])
            return inner(variants, pairs)

        adaptive_search(names, 40, evaluate)
    assert asked[0] == asked[1]


def test_simulation_reports_agreement_and_cost() -> None:
    profile = Profile("one-strong", 24, {10: 0.9})
    result = simulate(profile, 64, seeds=5)
    assert result["same_chosen"] == 1.0
    assert 0 < result["generations_share_mean"] < 1
