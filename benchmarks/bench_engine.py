"""Engine benchmarks, side by side in one run; prints ratios with min/median/max over repeats.

1. Identity-patch overhead: an empty plan, and a plan that patches *every* text layer with the source's own
   prompt (hooks fire, values unchanged), against the plain pipeline.
2. Editing: an edit (localized layers, default start step) against one plain generation, and
   Prompt-to-Prompt against the edit (U-Net models). On models with dynamic layers (MMDiT) also the two-pass
   method (record the target, then patch) against one-pass (targets as extra rows of the batch).
3. Start-step sweep (what `textloc edit-tune` does): the source plus one edit per candidate start step,
   naive (every edit from step 0) against prefix reuse (the edits branch off the source run).
4. Localization sweep: textloc's batched sweep (every variant x pair of a chunk as rows of one batch) against
   the naive loop (one generation per layer per pair).

Usage: python benchmarks/bench_engine.py [--model embedded|tiny:sd15|…] [--repeats 3] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from textloc.apps.edit import default_start_step
from textloc.core.engine import generate
from textloc.core.layers import list_text_layers
from textloc.core.plan import PatchPlan
from textloc.core.prefix import PrefixCache
from textloc.data.pairs import text_pairs
from textloc.errors import TextlocError
from textloc.models.loading import load_pipeline
from textloc.models.presets import choose_layers

WORDS = ["CAT", "DOG", "SUN", "MAP", "ICE", "OWL", "FOX", "TEA"]


def timed(fn: Callable[[], object], repeats: int, warm: bool = True) -> list[float]:
    if warm:
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(time.perf_counter() - start)
    return out


def paired(fn_a: Callable[[], object], fn_b: Callable[[], object], repeats: int) -> tuple[list[float], list[float]]:
    """Time A and B alternately (A, B, A, B …) so load drift on a shared machine hits both alike."""
    fn_a(), fn_b()  # warm-up
    a, b = [], []
    for _ in range(repeats):
        a += timed(fn_a, 1, warm=False)
        b += timed(fn_b, 1, warm=False)
    return a, b


def ratio_line(name: str, ours: list[float], base: list[float]) -> str:
    ratios = sorted(o / b for o, b in zip(ours, base, strict=True))
    return (f"{name:<72} ratio min {ratios[0]:.3f}  median {statistics.median(ratios):.3f}  max {ratios[-1]:.3f}"
            f"   ({statistics.median(ours):.3f}s vs {statistics.median(base):.3f}s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)

    def extra(batch: int = 1) -> dict:
        """Call arguments a tiny pipeline needs (sized per batch: Flux's true-CFG negative prompts)."""
        if not args.model.startswith("tiny:"):
            return {}
        from textloc.models.tiny import tiny_call_kwargs

        return tiny_call_kwargs(args.model.split(":", 1)[1], batch_size=batch)
    names = [layer.name for layer in list_text_layers(pipe)]
    print(f"model {args.model} ({len(names)} text layers), {args.steps} steps, device {args.device}, "
          f"{platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}")
    prompt = 'a sign that says "CAT"'

    def kwargs() -> dict:
        return {**extra(), "num_inference_steps": args.steps, "generator": torch.Generator().manual_seed(0)}

    def plain_run() -> object:
        return pipe(prompt, **kwargs())

    empty, plain = paired(lambda: generate(pipe, prompt, PatchPlan(), **kwargs()), plain_run, args.repeats)
    print(ratio_line("empty plan / plain (goal <= 1.03)", empty, plain))
    identity, plain = paired(
        lambda: generate(pipe, prompt, PatchPlan(layers=names, target_prompt=prompt), **kwargs()), plain_run,
        args.repeats)
    print(ratio_line("identity patch, all layers / plain", identity, plain))

    edit_rows(pipe, names, prompt, kwargs, plain_run, args)
    sweep_start_steps(pipe, names, prompt, kwargs, args)

    pairs = text_pairs([f'a sign that says "{w}"' for w in WORDS], args.pairs, seed=0)
    variants = [[]] + [[n] for n in names] + [names]

    def naive() -> None:
        for layer_set in variants:
            for p in pairs:
                k = {**kwargs(), "generator": torch.Generator().manual_seed(p.seed)}
                if layer_set:
                    generate(pipe, p.source, PatchPlan(layers=layer_set), target_prompt=p.target, **k)
                else:
                    pipe(p.source, **k)

    def batched() -> None:
        rows = [(s, p) for s in variants for p in pairs]
        k = {**kwargs(), **extra(len(rows)), "generator": [torch.Generator().manual_seed(p.seed) for _, p in rows]}
        generate(pipe, [p.source for _, p in rows], PatchPlan(layers=names), target_prompt=[p.target for _, p in rows],
                 row_layers=[s for s, _ in rows], **k)

    naive_t, batched_t = paired(naive, batched, max(1, args.repeats - 1))
    print(ratio_line(f"sweep naive / batched ({len(variants)} variants x {len(pairs)} pairs; goal >= 4)",
                     naive_t, batched_t))


def edit_layers(pipe: object, names: list[str]) -> list[str]:
    try:
        return choose_layers(pipe, "preset", full_score=True)  # what `textloc edit` uses
    except TextlocError:  # tiny models have no preset: the middle layer stands in
        return [names[len(names) // 2]]


def edit_rows(pipe: object, names: list[str], prompt: str, kwargs: Callable[[], dict], plain_run: Callable,
              args: argparse.Namespace) -> None:
    from textloc.apps.p2p import P2PConfig, check_supported, p2p_edit

    target = 'a sign that says "DOG"'
    layers = edit_layers(pipe, names)
    plan = PatchPlan(layers=layers, target_prompt=target, start_step=default_start_step(pipe, args.steps))

    def ours() -> object:
        return generate(pipe, prompt, plan, **kwargs())

    edit_t, plain = paired(ours, plain_run, args.repeats)
    print(ratio_line(f"edit ({len(layers)} layers, start {plan.start_step}) / plain (goal <= 1.1 U-Net, 1.6 MMDiT)",
                     edit_t, plain))
    if any(not layer.static for layer in list_text_layers(pipe) if layer.name in layers):
        two, one = paired(lambda: generate(pipe, prompt, plan, mode="two-pass", **kwargs()), ours, args.repeats)
        print(ratio_line("edit two-pass / one-pass", two, one))
    try:
        check_supported(pipe)
    except TextlocError:
        print("Prompt-to-Prompt: not implemented for this architecture (U-Net models only)")
        return
    p2p, edit_t = paired(lambda: p2p_edit(pipe, prompt, target, config=P2PConfig(), **kwargs()), ours, args.repeats)
    print(ratio_line("Prompt-to-Prompt / edit (goal >= 3)", p2p, edit_t))


def sweep_start_steps(pipe: object, names: list[str], prompt: str, kwargs: Callable[[], dict],
                      args: argparse.Namespace) -> None:
    target = 'a sign that says "DOG"'
    layers = edit_layers(pipe, names)
    candidates = sorted({0, *range(args.steps // 8, args.steps // 2 + 1, max(1, args.steps // 8))})
    plans = [PatchPlan(layers=layers, target_prompt=target, start_step=k) for k in candidates]

    def naive() -> None:
        pipe(prompt, **kwargs())
        for plan in plans:
            generate(pipe, prompt, plan, mode="two-pass", **kwargs())

    def reuse() -> None:
        cache = PrefixCache(until_step=max(candidates))
        generate(pipe, prompt, None, prefix=cache, **kwargs())
        for plan in plans:
            generate(pipe, prompt, plan, mode="two-pass", prefix=cache, **kwargs())

    naive_t, reuse_t = paired(naive, reuse, max(1, args.repeats - 1))
    print(ratio_line(f"start-step sweep naive / prefix reuse (source + starts {candidates})", naive_t, reuse_t))


if __name__ == "__main__":
    main()
