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


def _recording(outcomes: np.ndarray, names: list[str]):
    asked: list[tuple[str, tuple[int, ...]]] = []
    inner = _evaluator(outcomes, names)

    def evaluate(variants, pairs):
        asked.extend((v, tuple(pairs)) for v, _ in variants)
        return inner(variants, pairs)

    return evaluate, asked


def test_generations_count_what_was_asked_and_the_target_row_runs_on_round_one_only() -> None:
    names, outcomes = _matrix([0.0] * 10 + [0.95] + [0.0] * 9, 64, seed=1)
    evaluate, asked = _recording(outcomes, names)
    result = adaptive_search(names, 64, evaluate)
    assert result.generations == sum(len(pairs) for _, pairs in asked)
    rows = {v: sorted(i for name, pairs in asked if name == v for i in pairs) for v in ("none", "all", "target")}
    assert rows["none"] == rows["all"] == list(range(64))  # the bounds: every pair, once
    assert rows["target"] == list(range(AdaptiveRule().first_round))  # the reference row: the first round only
    # the curve stopped at k = 1 (the chosen set) and is closed by the all-layers point, measured for free
    assert [p["k"] for p in result.curve] == [0, 1, 20] and result.curve[-1]["variant"] == "all"
    assert not any(name.startswith("top:") for name, _ in asked)


def test_exhaustive_until_full_stops_at_the_full_score_set() -> None:
    names, outcomes = _matrix([0.6, 0.5, 0.0, 0.0], 40, seed=2)
    evaluate, asked = _recording(outcomes, names)
    full = exhaustive_search(names, 40, evaluate, ks=range(5), until="full")
    whole = exhaustive_search(names, 40, _evaluator(outcomes, names), ks=range(5))
    assert full.full_score == whole.full_score and full.chosen == whole.chosen
    assert full.curve[-1]["exact"] >= full.all_score and full.curve == whole.curve[: len(full.curve)]
    assert full.generations == sum(len(pairs) for _, pairs in asked) <= whole.generations
