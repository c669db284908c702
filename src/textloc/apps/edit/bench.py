"""The editing benchmark (``textloc bench edit``): the method against three baselines under one set of metrics.

Baselines: prompt swap (regenerate with the target prompt, same seed), patching *all* text layers, and
Prompt-to-Prompt word swap (``textloc.apps.p2p``). Every (pair, method) is one record in the run folder's
``results.jsonl`` (``textloc.runs.folder.RunFolder``: locked, fingerprinted, resumable); the patched methods
branch off the source run after ``start_step`` (prefix reuse). See docs/editing.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from textloc.apps.edit.calls import call_kwargs, first_image, fresh, to_pil
from textloc.apps.edit.scoring import Scorer
from textloc.apps.edit.summary import GRID_METHODS, METHODS, make_grid, results_table, summarise
from textloc.core.engine import generate
from textloc.core.layers import list_text_layers, model_fingerprint
from textloc.core.plan import PatchPlan
from textloc.core.prefix import PrefixCache
from textloc.data.pairs import PromptPair
from textloc.errors import InputError

#: Methods that branch off the source run after ``start_step`` and so reuse its prefix (``prefix.PrefixCache``).
PREFIX_METHODS = ("ours", "patch-all")
RESULTS = "results.jsonl"


@dataclass
class BenchConfig:
    """What determines a benchmark run's records (stored in the run folder's ``config.json``; a resume must match).

    The number of pairs and the methods are not part of it: a resume with more of either runs only what is new.
    """

    model: str
    benchmark: str
    seed: int = 0
    split: str = "test"
    layers: list[str] = field(default_factory=list)
    start_step: int = 0
    steps: int = 20
    guidance: float | None = None
    ocr: str = "rapidocr"
    clip: str | None = None
    p2p_cross: float = 0.8
    p2p_self: float = 0.4
    height: int | None = None
    width: int | None = None

    def call_extra(self) -> dict[str, Any]:
        """Pipeline arguments beyond steps and guidance (the image size of latent models)."""
        return {k: v for k, v in (("height", self.height), ("width", self.width)) if v is not None}


def _method_runner(pipe: Any, method: str, config: BenchConfig, all_layers: list[str]) -> Callable:
    """A function ``(pair, call_kwargs[, prefix]) -> edited float image`` for ``method``."""
    from textloc.apps.p2p import P2PConfig, p2p_edit

    def patched(layers: list[str]) -> Callable:
        def run(pair: PromptPair, call: dict[str, Any], prefix: PrefixCache | None = None) -> np.ndarray:
            plan = PatchPlan(layers=list(layers), target_prompt=pair.target, start_step=config.start_step)
            return first_image(generate(pipe, pair.source, plan, prefix=prefix, **call).images)

        return run

    if method == "ours":
        return patched(config.layers)
    if method == "patch-all":
        return patched(all_layers)
    if method == "prompt-swap":
        return lambda pair, call: first_image(pipe(pair.target, **call).images)
    if method == "p2p":
        p2p_config = P2PConfig(cross_replace_steps=config.p2p_cross, self_replace_steps=config.p2p_self)
        return lambda pair, call: np.asarray(p2p_edit(pipe, pair.source, pair.target, config=p2p_config,
                                                      **call).edited_image, dtype=np.float32)
    raise InputError(f"Expected methods from {list(METHODS)}, but got {method!r}")


def parse_methods(spec: str | Sequence[str] | None, pipe: Any) -> list[str]:
    """``--methods`` -> method names; by default all, without P2P where the model does not support it."""
    from textloc.apps.p2p import check_supported
    from textloc.errors import UnsupportedModelError

    if spec is None:
        methods = list(METHODS)
        try:
            check_supported(pipe)
        except UnsupportedModelError:
            methods.remove("p2p")
        return methods
    methods = [m.strip() for m in spec.split(",")] if isinstance(spec, str) else list(spec)
    methods = [m for m in methods if m]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise InputError(f"Expected --methods from {','.join(METHODS)}, but got {spec!r}")
    if "p2p" in methods:
        check_supported(pipe)
    return list(dict.fromkeys(methods))


def run_edit_bench(
    pipe: Any,
    pairs: Sequence[PromptPair],
    config: BenchConfig,
    out: str | Path,
    *,
    methods: Sequence[str] = METHODS,
    ocr_backend: Any = None,
    inputs: Mapping[str, Path | str | bytes] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Run every method on every pair, appending one record per (pair, method) to ``results.jsonl``.

    A rerun with the same ``config`` skips the (pair, method) records already written, so a killed run
    resumes; adding pairs (larger ``n``) or methods only runs what is new. Afterwards the summary is written:
    ``results.md`` (Markdown table), ``summary.json`` and ``grid.png`` (source | ours | prompt swap | p2p).

    Args:
        ocr_backend: an object with ``read(list_of_PIL)`` used instead of ``config.ocr`` (tests, custom OCR).
        inputs: files whose content the run depends on (the benchmark's prompt files, ``pairs.bench_inputs``).
    """
    from tqdm.auto import tqdm

    from textloc.models.profiles import profile_for
    from textloc.runs.folder import RunFolder

    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise InputError(f"Expected methods from {list(METHODS)}, but got {bad}")
    base = call_kwargs(pipe, 0, config.steps, config.guidance, config.call_extra())
    PatchPlan(layers=list(config.layers), start_step=config.start_step).validate_steps(base["num_inference_steps"])
    profile = profile_for(pipe)
    scorer = Scorer(profile=profile, ocr=ocr_backend if ocr_backend is not None else config.ocr, clip=config.clip)
    all_layers = [layer.name for layer in list_text_layers(pipe)]
    runners = {m: _method_runner(pipe, m, config, all_layers) for m in methods}
    run_config = {**asdict(config), "model_fingerprint": model_fingerprint(pipe)}
    with RunFolder(out, command="bench edit", config=run_config, inputs=dict(inputs or {})) as run:
        done = {(r["key"], r["method"]): r for r in run.records(RESULTS)}
        todo = [(pair, [m for m in methods if (pair.key, m) not in done]) for pair in pairs]
        todo = [(pair, missing) for pair, missing in todo if missing]
        bar = tqdm(total=sum(len(m) for _, m in todo), desc="bench edit", disable=not progress, dynamic_ncols=True)
        for pair, missing in todo:
            # The edits start from the source's own first `start_step` steps: computed once, here (prefix reuse).
            prefix = PrefixCache(until_step=config.start_step)
            source = first_image(generate(pipe, pair.source, None, prefix=prefix, **fresh(base, pair.seed)).images)
            (source_read,) = scorer.read([source])
            run.save_image(f"images/{pair.key}/source.png", to_pil(source))
            for method in missing:
                start, hits = time.perf_counter(), prefix.hits
                if method in PREFIX_METHODS:
                    edited = runners[method](pair, fresh(base, pair.seed), prefix)
                else:
                    edited = runners[method](pair, fresh(base, pair.seed))
                seconds = time.perf_counter() - start
                (read,) = scorer.read([edited])
                record = {"key": pair.key, "method": method, "source_prompt": pair.source,
                          "target_prompt": pair.target, "source_text": pair.source_value,
                          "target_text": pair.target_value, "seed": pair.seed,
                          "source_read": None if source_read is None else _normalize(source_read),
                          "seconds": seconds, "prefix_calls_reused": prefix.hits - hits,
                          **scorer.score(edited, source, pair.target_value, pair.target, read)}
                run.save_image(f"images/{pair.key}/{method}.png", to_pil(edited))
                run.append(record, RESULTS)
                done[(pair.key, method)] = record
                bar.update(1)
        bar.close()
        keys = {pair.key for pair in pairs}
        records = [r for (key, method), r in done.items() if key in keys and method in methods]
        summary = summarise(records, methods, colours=scorer.judges_colours)
        summary["config"] = asdict(config)
        summary["n_pairs"] = len(pairs)
        run.write_json("summary.json", summary)
        run.write_text("results.md", results_table(summary))
        examples = [(p.key, f'"{p.source_value}" -> "{p.target_value}"') for p in pairs[:6]]
        grid = make_grid(run.path, examples, [m for m in GRID_METHODS if m in methods])
        if grid is not None:
            run.save_image("grid.png", grid)
    return summary


def _normalize(text: str) -> str:
    from textloc.eval.scoring import normalize_text

    return normalize_text(text)
