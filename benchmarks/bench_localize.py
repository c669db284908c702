"""Exhaustive vs adaptive layer search on a real model, side by side in one run (issue #17).

Both searches localize the same model on the same pairs and seed, each into a fresh run folder (nothing is
resumed, so the wall times are whole runs), one after the other in this process. Printed: wall time,
generations (denoising runs behind the records), chosen layers, the k-best curve, and the adaptive run's
shares of the exhaustive one's generations and wall time (the acceptance of issue #17: same chosen layers,
<= 50 % of both).

    python benchmarks/bench_localize.py                  # the real settings: embedded model, 32 pairs, 20 steps
    python benchmarks/bench_localize.py --small          # smoke test: 8 pairs, 4 steps
    python benchmarks/bench_localize.py --model tiny:sd15 --small --ocr rapidocr

Timings depend on what else runs on the machine; the script prints its thread count and the load average
before and after so a reader can judge.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from textloc.apps.localize.sweep import LocalizeConfig, Localizer
from textloc.models.loading import load_pipeline
from textloc.models.profiles import load_pairs


def run(search: str, args: argparse.Namespace, pipe: Any, pairs: list, out: Path) -> dict[str, Any]:
    config = LocalizeConfig(model=args.model, prompts=args.prompts, n_pairs=args.n_pairs, seed=args.seed,
                            steps=args.steps, ocr=args.ocr, search=search)
    start = time.perf_counter()
    summary = Localizer(pipe, pairs, config, out / search).run().summary
    seconds = time.perf_counter() - start
    return {"search": search, "seconds": seconds, "generations": summary["generations"],
            "generations_exhaustive": summary["generations_exhaustive"], "chosen": summary["chosen_layers"],
            "chosen_indices": summary["chosen_indices"], "all_layers_score": summary["all_layers_score"],
            "curve": [(p["k"], p["exact"]) for p in summary["curve"]], "dropped_after": summary["dropped_after"],
            "search_rule": summary["search"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--prompts", default="embedded")
    parser.add_argument("--n-pairs", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--ocr", default="rapidocr")
    parser.add_argument("--small", action="store_true", help="smoke test: 8 pairs, 4 steps")
    parser.add_argument("--out", type=Path, default=None, help="folder for both run folders (default: a temp dir)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = parser.parse_args()
    if args.small:
        args.n_pairs, args.steps = min(args.n_pairs, 8), args.steps or 4
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_localize_"))
    if any((out / s).exists() for s in ("exhaustive", "adaptive")):
        parser.error(f"{out} already holds a run; the benchmark times fresh runs only")
    pipe = load_pipeline(args.model)
    pairs = load_pairs(args.prompts, args.n_pairs, args.seed, "text")
    load_before = os.getloadavg()
    rows = [run(search, args, pipe, pairs, out) for search in ("exhaustive", "adaptive")]
    load_after = os.getloadavg()
    ref, ada = rows
    print(f"# bench_localize: {args.model}, {len(pairs)} pairs, seed {args.seed}, steps {args.steps or 'default'}, "
          f"OCR {args.ocr}; torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after\n")
    print("| search | wall time (s) | generations | chosen layers (indices) | all layers | curve (k → exact) |")
    print("|---|---:|---:|---|---:|---|")
    for r in rows:
        curve = ", ".join(f"{k}→{v:.3f}" for k, v in r["curve"])
        print(f"| {r['search']} | {r['seconds']:.1f} | {r['generations']} | {r['chosen_indices']} | "
              f"{r['all_layers_score']:.3f} | {curve} |")
    gen_share = ada["generations"] / ref["generations"]
    time_share = ada["seconds"] / ref["seconds"]
    same = ada["chosen"] == ref["chosen"]
    print(f"\nadaptive / exhaustive: generations {gen_share:.1%}, wall time {time_share:.1%}; same chosen layers: "
          f"{same}; dropped early (layer: after pairs): {ada['dropped_after']}")
    print(f"rule: {ada['search_rule']}")
    print(f"acceptance (same chosen, <= 50 % generations and wall time): "
          f"{'met' if same and gen_share <= 0.5 and time_share <= 0.5 else 'NOT met'}")
    if args.json is not None:
        args.json.write_text(json.dumps({"runs": rows, "generations_share": gen_share, "wall_time_share": time_share,
                                         "same_chosen": same, "n_pairs": len(pairs), "model": args.model,
                                         "load_average": [load_before, load_after]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
