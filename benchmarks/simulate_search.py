"""Adaptive vs exhaustive layer search, simulated at the layer counts of real models (issue #17).

Replays both searches against per-layer Bernoulli success rates (``textloc.apps.localize.simulate``) and prints
a Markdown table: how often the adaptive search returns the exhaustive sweep's chosen set (and its full-score
set) and what share of the exhaustive sweep's denoising runs it makes.

    python benchmarks/simulate_search.py --seeds 200 --pairs 200 > docs/results/search_simulation.md
"""

from __future__ import annotations

import argparse

from textloc.apps.localize.search import AdaptiveRule
from textloc.apps.localize.simulate import PROFILES, simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--delta", type=float, default=AdaptiveRule.delta)
    parser.add_argument("--race-top", type=int, default=AdaptiveRule.race_top)
    args = parser.parse_args()
    rule = AdaptiveRule(delta=args.delta, race_top=args.race_top)
    print(f"Simulated layer search: {args.pairs} pairs, {args.seeds} seeds, rule {rule}\n")
    print("| profile | layers | curve until | same chosen set | same full-score set | generations (mean share) "
          "| max share |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for until in ("chosen", "full"):
        for profile in PROFILES:
            r = simulate(profile, args.pairs, args.seeds, rule, until=until)
            full = "–" if r["same_full_score"] is None else f"{100 * r['same_full_score']:.1f} %"
            print(f"| {profile.name} ({profile.note}) | {r['layers']} | {until} | {100 * r['same_chosen']:.1f} % | "
                  f"{full} | {100 * r['generations_share_mean']:.1f} % | {100 * r['generations_share_max']:.1f} % |",
                  flush=True)


if __name__ == "__main__":
    main()
