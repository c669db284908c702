"""What localizing a LoRA saves: trainable share, step time and memory, localized vs all-cross-attention.

Runs a few LoRA training steps (forward + backward + AdamW) on the embedded model (its trained weights if
shipped, else the untrained pipeline -- the cost does not depend on the weights) and on a tiny diffusers
pipeline, once with the adapter on the localized layers and once on every cross-attention layer, and prints:

* trainable parameters and their share of the denoiser,
* step time, min / median / max over ``--repeats`` timed steps (after ``--warmup`` untimed ones),
* peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the sampled peak RSS increase
  (noisy: the allocator keeps freed memory) and, exact on every device, the bytes autograd saves for backward.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_lora.py --repeats 5
    python benchmarks/bench_lora.py --device cuda --batch-size 64 --repeats 20
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import statistics
import time
from typing import Any

import torch

from textloc.apps.finetune import (
    PeakMemory,
    SavedTensorMeter,
    SyntheticData,
    add_lora,
    objective_for,
    parameter_share,
    resolve_layer_spec,
)
from textloc.core.layers import get_denoiser
from textloc.errors import TextlocError


def embedded_pipeline() -> tuple[Any, str]:
    """The shipped embedded model, or the untrained one when its weights are not there yet."""
    from textloc.models.embedded.pipeline import build_untrained
    from textloc.models.loading import load_pipeline

    try:
        return load_pipeline("embedded"), "embedded"
    except TextlocError:
        return build_untrained(), "embedded (untrained: no shipped weights)"


def localized_layers(pipe: Any, spec: str, fallback: str) -> tuple[list[str], str]:
    """``spec`` (e.g. ``preset``), or ``fallback`` indices when the model has no preset or localization yet."""
    try:
        return resolve_layer_spec(pipe, spec), spec
    except TextlocError:
        return resolve_layer_spec(pipe, fallback), f"{fallback} (fallback: no {spec!r} for this model)"


def measure(base: Any, layers: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Time ``args.repeats`` LoRA training steps on a copy of ``base`` with the adapter on ``layers``."""
    pipe = copy.deepcopy(base)
    add_lora(pipe, layers, rank=args.rank)
    device = torch.device(args.device)
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.to(device)
    denoiser = get_denoiser(pipe)
    denoiser.train()
    objective = objective_for(pipe)
    params = [p for p in denoiser.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    prompts, images = SyntheticData(seed=0).batch(0, args.batch_size, objective.image_size,
                                                  crop=objective.crop_images)

    def step(meter: SavedTensorMeter | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        with meter if meter is not None else contextlib.nullcontext():
            loss = objective.loss(denoiser, prompts, images, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(args.warmup):
        step()
    meter = SavedTensorMeter([m for m in pipe.components.values() if isinstance(m, torch.nn.Module)])
    step(meter)
    times = []
    gc.collect()
    with PeakMemory(device) as memory:
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - began)
    trainable, total = parameter_share(pipe)
    return {"layers": len(layers), "trainable": trainable, "share": trainable / total, "times": times,
            "peak": memory.peak_bytes, "saved": meter.bytes}


def report(title: str, rows: dict[str, dict[str, Any]], device: str) -> None:
    from textloc.runs.tables import markdown_table

    memory = "peak CUDA MB" if device.startswith("cuda") else "peak RSS +MB"
    headers = ["variant", "layers", "trainable params", "share", "step ms min / median / max", memory,
               "autograd-saved MB"]
    table = []
    for name, row in rows.items():
        ms = [t * 1000 for t in row["times"]]
        table.append([name, row["layers"], row["trainable"], row["share"],
                      f"{min(ms):.1f} / {statistics.median(ms):.1f} / {max(ms):.1f}", row["peak"] / 2**20,
                      row["saved"] / 2**20])
    print(f"\n## {title}\n")
    print(markdown_table(headers, table, formats=[None, None, "{:,}", "{:.3%}", None, "{:.1f}", "{:.2f}"],
                         align="lrrrlrr"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--localized", default="preset",
                        help="localized layers of the embedded model (preset, summary.json, names or indices)")
    parser.add_argument("--fallback", default="3,4", help="indices used when --localized does not resolve")
    parser.add_argument("--tiny", default="sd15", help="tiny diffusers pipeline to compare on too ('' to skip)")
    parser.add_argument("--tiny-localized", default="3", help="'localized' layers of the tiny pipeline")
    args = parser.parse_args()

    pipe, label = embedded_pipeline()
    layers, how = localized_layers(pipe, args.localized, args.fallback)
    print(f"embedded: {label}; localized layers = {how}: {', '.join(layers)}")
    rows = {"localized": measure(pipe, layers, args),
            "all-cross-attn": measure(pipe, resolve_layer_spec(pipe, "all-cross-attn"), args)}
    report(f"{label}, batch {args.batch_size}, rank {args.rank}, {args.device}", rows, args.device)

    if args.tiny:
        from textloc.models.tiny import build_tiny_pipeline

        tiny = build_tiny_pipeline(args.tiny)
        layers = resolve_layer_spec(tiny, args.tiny_localized)
        rows = {"localized": measure(tiny, layers, args),
                "all-cross-attn": measure(tiny, resolve_layer_spec(tiny, "all-cross-attn"), args)}
        report(f"tiny:{args.tiny} (localized = {args.tiny_localized}), batch {args.batch_size}, rank {args.rank}, "
               f"{args.device}", rows, args.device)


if __name__ == "__main__":
    main()
