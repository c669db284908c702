"""Adaptive layer search: spend validation pairs only where they can still change the chosen layers.

The exhaustive sweep patches every text layer on every pair: ``L x P`` generations (70 x 200 = 14,000 for SDXL).
Almost every layer scores 0 on the first few pairs and never recovers. The adaptive search races the layers:

1. **Rounds.** Pairs are taken in their fixed order in rounds of growing size (``first_round`` pairs, then
   x ``growth``: 4, 6, 9, 14, 21, 32, ... up to ``P``). Each round runs every *active* layer alone, plus the bounds
   ``none`` (the source itself, which every preservation score needs anyway) and ``all``, on the round's new
   pairs. The ``target`` row (the target prompt's own generation) is a reference the rule never reads: it runs on
   the first round's pairs only.
2. **Drop rule.** After each round, every active layer gets a Clopper-Pearson interval on its exact-match rate.
   A layer is dropped when its *upper* bound is below what the selection could still need:

   * if the best layer's lower bound already reaches ``fraction`` x the upper bound of the all-layers score,
     the selection needs one layer, and any layer whose upper bound is below the best's lower bound can never
     rank first;
   * otherwise the selection may need several layers, and a layer is dropped only when its upper bound is below
     the lower bound of the ``race_top``-th best layer (it can then never reach the top ``race_top``).
     The default ``race_top = 1`` protects the first place only; a dropped layer keeps an unbiased rate from the
     pairs it saw, so the places after the first are ranked on at least those pairs.

   Dropped layers keep the rate measured on the pairs they saw; active layers end with all ``P`` pairs, so they
   are scored exactly as in the exhaustive sweep.
3. **Curve.** Layers are ranked as the sweep ranks them (exact rate, then F1, then execution order), and only the
   candidate top-k sets are evaluated, in increasing k, until one reaches ``fraction`` of the all-layers score
   (``until="chosen"``, the default: the chosen set is then decided) or the all-layers score itself
   (``until="full"``: the full-score set, which editing uses, is decided too). The ``k = L`` point (all layers)
   is measured by every round, so it always closes the curve at no cost.

**Error probability.** The rule uses one side of each interval (a dropped layer's upper bound, the best layer's
lower bound), each at level ``delta / (2 L R)`` (``R`` rounds), so by the union bound the probability that
*any* bound of the run misses its layer's true rate is at most ``delta``. When no
interval misses, no layer that could rank within the top ``race_top`` (or first, in the one-layer case) is
dropped, so the ranked top of the list is scored on all ``P`` pairs exactly as the exhaustive sweep scores it.
The remaining way to disagree with the exhaustive sweep is a chosen set deeper than ``race_top`` layers, whose
tail is ranked on partial data; the simulator (``simulate.py``) measures how often that happens.

Everything here is pure Python on counts: the same code drives the real sweep (``sweep.py``) and the simulator,
and a run is deterministic for a given seed and resumable from its records.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from textloc.errors import InputError

#: Rows the exhaustive sweep measures on every pair (reference bounds of the report).
FIXED_VARIANTS = ("none", "all", "target")
#: Rows the adaptive search measures on every pair; ``target`` (never read by the rule) only on the first round.
BOUND_VARIANTS = ("none", "all")
UNTIL = ("chosen", "full")


def clopper_pearson(successes: float, n: int, alpha: float) -> tuple[float, float]:
    """Two-sided Clopper-Pearson interval at level ``1 - alpha`` for ``successes`` out of ``n`` (exact, conservative).

    ``successes`` may be fractional only in the degenerate sense of a mean times ``n``; it is rounded.
    """
    if n <= 0:
        return 0.0, 1.0
    return _clopper_pearson(int(round(successes)), n, alpha)


@functools.lru_cache(maxsize=65536)
def _clopper_pearson(k: int, n: int, alpha: float) -> tuple[float, float]:
    # Cached: a search asks for the same (k, n, alpha) many times (every zero-rate layer at every round), and
    # the simulator replays thousands of searches; scipy's beta quantile is the cost.
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


@dataclass(frozen=True)
class AdaptiveRule:
    """Parameters of the racing rule (stored in the run's config; see the module docstring)."""

    delta: float = 0.05
    race_top: int = 1
    first_round: int = 4
    growth: float = 1.5

    def __post_init__(self) -> None:
        if not 0 < self.delta < 1:
            raise InputError(f"Expected the adaptive search's delta in (0, 1), but got {self.delta!r}")
        if self.race_top < 1 or self.first_round < 1 or not self.growth > 1:
            raise InputError("Expected race_top >= 1, first_round >= 1 and growth > 1 for the adaptive search")

    def rounds(self, n_pairs: int) -> list[int]:
        """Cumulative pair counts after each round, ending at ``n_pairs``."""
        out, n = [], self.first_round
        while n < n_pairs:
            out.append(n)
            n = max(n + 1, math.ceil(n * self.growth))
        return out + [n_pairs]

    def interval_alpha(self, n_layers: int, n_pairs: int) -> float:
        return self.delta / (2 * max(1, n_layers) * len(self.rounds(n_pairs)))

    def keep(self, stats: Mapping[str, tuple[float, int]], all_stat: tuple[float, int], *, n_layers: int,
             n_pairs: int, fraction: float) -> list[str]:
        """The layers (keys of ``stats``: successes, pairs seen) that race on."""
        alpha = 2 * self.interval_alpha(n_layers, n_pairs)  # two-sided at 2a = each side at a (one side is used)
        bounds = {name: clopper_pearson(s, n, alpha) for name, (s, n) in stats.items()}
        if not bounds:
            return []
        lows = sorted((lo for lo, _ in bounds.values()), reverse=True)
        _, all_hi = clopper_pearson(all_stat[0], all_stat[1], alpha)
        if lows[0] >= fraction * all_hi:
            need = lows[0]  # one layer will do: only the first place matters
        else:
            need = lows[min(self.race_top, len(lows)) - 1]
        return [name for name, (_, hi) in bounds.items() if hi >= need]


#: ``evaluate(variants, pair_indices) -> {variant name: [(exact, f1) per pair]}``; variants are (name, layers).
Evaluate = Callable[[list[tuple[str, list[str]]], list[int]], Mapping[str, Sequence[tuple[float, float]]]]


@dataclass
class SearchResult:
    """What a search measured and decided (``summary.json`` of the sweep carries these fields)."""

    ranking: list[tuple[str, float]]
    curve: list[dict[str, Any]]
    chosen: list[str]
    full_score: list[str]
    all_score: float
    generations: int
    generations_exhaustive: int
    pairs_seen: dict[str, int] = field(default_factory=dict)
    dropped_after: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def curve_ks(n_layers: int, requested: Sequence[int] | None = None) -> list[int]:
    """The k of the k-best curve: the sweep's defaults (0..8, 10, 30, L) or the user's, always with 0, 1 and L."""
    ks = list(requested) if requested else [0, 1, 2, 3, 10, 30, n_layers]
    return sorted({k for k in ks if 0 <= k <= n_layers} | {0, 1, n_layers} | set(range(1, min(n_layers, 8) + 1)))


def exhaustive_generations(n_layers: int, n_pairs: int, ks: Sequence[int]) -> int:
    """Denoising runs of the exhaustive sweep: every layer, the fixed rows and every curve set, on every pair."""
    curve_sets = sum(1 for k in ks if 1 < k < n_layers)
    return n_pairs * (n_layers + len(FIXED_VARIANTS) + curve_sets)


def rank(layers: Sequence[str], scores: Mapping[str, Sequence[tuple[float, float]]]) -> list[tuple[str, float]]:
    """Layers by exact rate, then F1, then execution order (the order of ``layers``): the sweep's ranking."""
    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    rows = []
    for index, name in enumerate(layers):
        seen = scores.get(f"layer:{name}", [])
        exact, f1 = mean([e for e, _ in seen]), mean([f for _, f in seen])
        rows.append((name, exact, f1, index))
    rows.sort(key=lambda r: (-_nan_low(r[1]), -_nan_low(r[2]), r[3]))
    return [(name, exact) for name, exact, _, _ in rows]


def _nan_low(value: float) -> float:
    return -1.0 if math.isnan(value) else value


def select(curve: Sequence[dict[str, Any]], all_score: float, fraction: float, n_layers: int,
           ranking: Sequence[tuple[str, float]]) -> tuple[list[str], list[str]]:
    """(chosen set, full-score set) from a measured curve: the smallest k reaching ``fraction`` of / all of the
    all-layers score (the full set when none does)."""
    def first(threshold: float) -> int:
        return next((p["k"] for p in curve if p["k"] > 0 and p["exact"] >= threshold), n_layers)

    names = [name for name, _ in ranking]
    return names[: first(fraction * all_score)], names[: first(all_score)]


def adaptive_search(layers: Sequence[str], n_pairs: int, evaluate: Evaluate, *, rule: AdaptiveRule | None = None,
                    fraction: float = 0.9, ks: Sequence[int] | None = None, until: str = "chosen",
                    progress: Callable[[str], None] | None = None) -> SearchResult:
    """Race ``layers`` over ``n_pairs`` pairs (see the module docstring); ``evaluate`` runs and scores variants.

    ``evaluate`` is called with the variants still needed on a range of pair indices; the real sweep answers
    from its records when they exist (resume), so replaying the search over finished records makes no
    generation and reaches the same decisions.
    """
    if until not in UNTIL:
        raise InputError(f"Expected until in {', '.join(UNTIL)}, but got {until!r}")
    rule = rule or AdaptiveRule()
    layers = list(layers)
    n_layers = len(layers)
    scores: dict[str, list[tuple[float, float]]] = {}
    active = list(layers)
    dropped_after: dict[str, int] = {}
    generations, done = 0, 0
    for upto in rule.rounds(n_pairs):
        pairs = list(range(done, upto))
        bounds = FIXED_VARIANTS if done == 0 else BOUND_VARIANTS
        variants = [(v, [] if v != "all" else list(layers)) for v in bounds]
        variants += [(f"layer:{name}", [name]) for name in active]
        measured = evaluate(variants, pairs)
        for name, _ in variants:
            scores.setdefault(name, []).extend(measured[name])
        generations += len(variants) * len(pairs)
        done = upto
        if upto == n_pairs:
            break
        stats = {name: (sum(e for e, _ in scores[f"layer:{name}"]), done) for name in active}
        all_stat = (sum(e for e, _ in scores["all"]), done)
        keep = set(rule.keep(stats, all_stat, n_layers=n_layers, n_pairs=n_pairs, fraction=fraction))
        for name in active:
            if name not in keep:
                dropped_after[name] = done
        active = [name for name in active if name in keep]
        if progress is not None:
            progress(f"{done}/{n_pairs} pairs: {len(active)} of {n_layers} layers still racing")

    ranking = rank(layers, scores)
    all_score = _mean_exact(scores["all"])
    ks = curve_ks(n_layers, ks)
    curve, made = _curve(ranking, scores, evaluate, n_pairs, ks, stop=all_score if until == "full" else
                         fraction * all_score)
    generations += made
    chosen, full = select(curve, all_score, fraction, n_layers, ranking)
    if until == "chosen" and not (curve[-1]["exact"] >= all_score):
        full = []  # not decided: the curve stopped at the chosen set
    if curve[-1]["k"] < n_layers:  # the all-layers point was measured by every round: close the curve with it
        curve.append({"k": n_layers, "variant": "all", "exact": all_score, "layers": [n for n, _ in ranking]})
    return SearchResult(
        ranking=ranking, curve=curve, chosen=chosen, full_score=full, all_score=all_score,
        generations=generations, generations_exhaustive=exhaustive_generations(n_layers, n_pairs, ks),
        pairs_seen={name: len(scores.get(f"layer:{name}", [])) for name in layers}, dropped_after=dropped_after,
    )


def exhaustive_search(layers: Sequence[str], n_pairs: int, evaluate: Evaluate, *, fraction: float = 0.9,
                      ks: Sequence[int] | None = None, until: str | None = None) -> SearchResult:
    """The full sweep through the same interface: every layer on every pair, then the curve (the reference).

    ``until=None`` scores the whole curve, as the sweep does; ``"chosen"``/``"full"`` stop it as the adaptive
    search does (head localization's greedy set: ``"full"``).
    """
    if until is not None and until not in UNTIL:
        raise InputError(f"Expected until in {', '.join(UNTIL)}, but got {until!r}")
    layers = list(layers)
    n_layers = len(layers)
    variants = [(v, [] if v != "all" else list(layers)) for v in FIXED_VARIANTS]
    variants += [(f"layer:{name}", [name]) for name in layers]
    scores = {name: list(values) for name, values in evaluate(variants, list(range(n_pairs))).items()}
    ranking = rank(layers, scores)
    all_score = _mean_exact(scores["all"])
    ks = curve_ks(n_layers, ks)
    stop = None if until is None else all_score if until == "full" else fraction * all_score
    curve, made = _curve(ranking, scores, evaluate, n_pairs, ks, stop=stop)
    chosen, full = select(curve, all_score, fraction, n_layers, ranking)
    if until == "chosen" and not (curve[-1]["exact"] >= all_score):
        full = []
    return SearchResult(ranking=ranking, curve=curve, chosen=chosen, full_score=full, all_score=all_score,
                        generations=len(variants) * n_pairs + made,
                        generations_exhaustive=exhaustive_generations(n_layers, n_pairs, ks),
                        pairs_seen={name: n_pairs for name in layers})


def _curve(ranking: Sequence[tuple[str, float]], scores: Mapping[str, Sequence[tuple[float, float]]],
           evaluate: Evaluate, n_pairs: int, ks: Sequence[int], *, stop: float | None
           ) -> tuple[list[dict[str, Any]], int]:
    """The k-best curve in increasing k (stopping at the first k > 0 reaching ``stop``) and the generations it
    made: k = 0, 1 and L reuse the rows already measured; every other k runs its set on all pairs."""
    n_layers, made, curve = len(ranking), 0, []
    for k in ks:
        top = [name for name, _ in ranking[:k]]
        variant = "none" if k == 0 else f"layer:{top[0]}" if k == 1 else "all" if k == n_layers else f"top:{k}"
        if variant in scores and len(scores[variant]) < n_pairs:
            # a layer dropped early can still rank first when the racing ones fall later: finish its pairs
            seen = len(scores[variant])
            rest = evaluate([(variant, top)], list(range(seen, n_pairs)))[variant]
            values = list(scores[variant]) + list(rest)
            made += n_pairs - seen
        elif variant in scores:
            values = scores[variant]
        else:
            values = list(evaluate([(variant, top)], list(range(n_pairs)))[variant])
            made += n_pairs
        curve.append({"k": k, "variant": variant, "exact": _mean_exact(values), "layers": top})
        if stop is not None and k > 0 and curve[-1]["exact"] >= stop:
            break
    return curve, made


def _mean_exact(values: Sequence[tuple[float, float]]) -> float:
    return sum(e for e, _ in values) / len(values) if values else float("nan")
