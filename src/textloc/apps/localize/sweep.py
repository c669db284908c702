"""Localization: find the smallest set of text layers whose patching turns the rendered text into the target.

The sweep, as in the paper: for every text layer *alone*, generate each validation source prompt with the
target prompt patched into that layer, read the image (OCR for text; pixel readers for the embedded model's
style and colours) and score it against the target. The bounds are patching *no* layer (the source itself)
and *all* layers; the target prompt's own generation is recorded as a reference. Layers are ranked by score,
and the cumulative sets "k best layers" are scored too; the chosen set is the smallest k whose score reaches
``fraction`` (default 0.9) of the all-layers score.

Two searches decide which (variant, pair) records are made (``config.search``): ``"exhaustive"`` scores every
layer on every pair and the whole curve (the paper's sweep); ``"adaptive"`` (the default) drives the same
generation through :func:`textloc.apps.localize.search.adaptive_search`, which races the layers over rounds of
pairs and stops scoring a layer once it can no longer rank first (see ``search.py`` for the rule and its error
bound). Its ``evaluate`` callback answers from existing records (resume) and otherwise generates, scores and
appends them, batched exactly like the exhaustive sweep's items.

The output folder is a :class:`textloc.runs.folder.RunFolder` (locked; its fingerprint covers the config, the
model and the pairs, plus a prompts file's content). Records are appended to ``results.jsonl`` one work item
(variant x chunk of pairs) at a time, each item with fixed pair boundaries and per-pair seeds, so a run killed
at any point resumes where it stopped and ends with exactly the records an uninterrupted run writes. Under
``accelerate launch`` the work items are sharded across processes (``item % world_size``); rank files are
merged into ``results.jsonl``.

Readers and scores come from one place each: the model's profile picks the OCR backend (``profile.reader``) or
the pixel reader of an attribute (``profile.attribute_reader``); :mod:`textloc.eval.scoring` scores. PSNR to the
source follows its one rule (identical images: 100 dB).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from textloc import __version__
from textloc.apps.localize.scoring import ATTRIBUTES, Reader, make_reader, score_attribute, score_text
from textloc.apps.localize.search import (
    UNTIL,
    AdaptiveRule,
    SearchResult,
    adaptive_search,
    curve_ks,
    exhaustive_generations,
)
from textloc.core.engine import default_steps, generate
from textloc.core.layers import TextLayer, get_denoiser, list_text_layers, model_fingerprint, resolve_layers
from textloc.core.plan import PatchPlan
from textloc.core.prefix import PrefixCache
from textloc.data.pairs import PromptPair
from textloc.errors import InputError
from textloc.models.profiles import profile_for
from textloc.runs.folder import RunFolder
from textloc.runs.io import read_jsonl

__all__ = ["ATTRIBUTES", "SEARCHES", "LocalizationResult", "LocalizeConfig", "Localizer", "localize"]

RESULTS = "results.jsonl"
SEARCHES = ("adaptive", "exhaustive")
#: Settings of the adaptive search: they decide which records are made, so they enter the fingerprint then.
SEARCH_KEYS = ("search", "delta", "race_top", "first_round", "growth", "until")


@dataclass
class LocalizeConfig:
    """Everything that determines a localization run's records (stored in ``config.json`` for resume)."""

    model: str = "embedded"
    prompts: str = "embedded"
    attribute: str = "text"
    n_pairs: int = 32
    seed: int = 0
    steps: int | None = None
    guidance: float | None = None
    start_step: int = 0
    branches: str = "both"
    ocr: str = "rapidocr"
    fraction: float = 0.9
    chunk_size: int = 8
    batch_size: int = 64  # prompts per pipeline call: variants x pairs of a chunk run as rows of one batch
    layers: list[str] | None = None
    curve: list[int] | None = None
    clip: str | None = None  # local CLIP folder: adds CLIP-T of each image against the target prompt
    prefix_reuse: bool = True  # with start_step > 0: batches of one pair chunk share their first steps
    search: str = "adaptive"  # adaptive | exhaustive (see the module docstring)
    delta: float = 0.05  # adaptive: probability that any confidence bound of the run misses
    race_top: int = 1  # adaptive: places protected when several layers may be needed
    first_round: int = 4  # adaptive: pairs of the first round
    growth: float = 1.5  # adaptive: round size factor
    until: str = "chosen"  # adaptive: curve until the chosen set, or the full-score set ("full")

    def rule(self) -> AdaptiveRule:
        """The adaptive search's rule (validated: a bad value is an ``InputError``)."""
        return AdaptiveRule(delta=self.delta, race_top=self.race_top, first_round=self.first_round,
                            growth=self.growth)

    def record_settings(self) -> dict[str, Any]:
        """Every setting that changes a record. Prefix reuse never does (bit-identical); the selection fraction
        and the adaptive rule do only under the adaptive search (they decide which records are made). An
        exhaustive run's settings are exactly those of the sweep before the adaptive search existed, so its
        run folders resume unchanged."""
        drop = {"prefix_reuse", "fraction", *SEARCH_KEYS} if self.search == "exhaustive" else {"prefix_reuse"}
        return {k: v for k, v in asdict(self).items() if k not in drop}

    def fingerprint(self) -> str:
        return hashlib.sha1(json.dumps(self.record_settings(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class LocalizationResult:
    """What a localization run found; ``summary`` is what ``summary.json`` holds."""

    summary: dict[str, Any]
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def chosen_layers(self) -> list[str]:
        return list(self.summary["chosen_layers"])


# ------------------------------------------------------------------------------------------------------------
# Work items and the results file


def _variants(layers: list[TextLayer]) -> list[tuple[str, list[str]]]:
    """Phase-1 variants: no patch, each layer alone, all layers, and the target's own generation."""
    out = [("none", []), ("target", [])]
    out += [(f"layer:{layer.name}", [layer.name]) for layer in layers]
    out.append(("all", [layer.name for layer in layers]))
    return out


def _read_records(out: Path) -> list[dict[str, Any]]:
    records = {(r["variant"], r["pair"]): r for path in sorted(out.glob("results*.jsonl")) for r in read_jsonl(path)}
    return list(records.values())


def _distributed() -> tuple[int, int, Callable[[], None]]:
    """(rank, world size, barrier) from accelerate when launched with it; (0, 1, no-op) otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1, lambda: None
    from accelerate import PartialState

    state = PartialState()
    return state.process_index, state.num_processes, state.wait_for_everyone


class Localizer:
    """Runs the sweep for one pipeline; see the module docstring."""

    def __init__(self, pipe: Any, pairs: list[PromptPair], config: LocalizeConfig, out: str | Path | None,
                 reader: Reader | None = None, call_kwargs: dict[str, Any] | None = None) -> None:
        # Every option is validated here, before the run folder is created (nothing is written on bad input).
        if len(pairs) == 0:
            raise InputError("No prompt pairs to localize with")
        if not 0 < config.fraction <= 1:
            raise InputError(f"Expected 0 < fraction <= 1, but got {config.fraction}")
        if config.chunk_size < 1 or config.batch_size < 1:
            raise InputError(f"Expected chunk and batch sizes >= 1, but got {config.chunk_size}, {config.batch_size}")
        if config.search not in SEARCHES:
            raise InputError(f"Expected --search in {', '.join(SEARCHES)}, but got {config.search!r}")
        if config.until not in UNTIL:
            raise InputError(f"Expected --until in {', '.join(UNTIL)}, but got {config.until!r}")
        self.rule = config.rule()
        self.pipe, self.pairs, self.config = pipe, pairs, config
        self.out = Path(out) if out is not None else None
        self.profile = profile_for(pipe)
        self.reader = reader or make_reader(config.attribute, config.ocr, self.profile)
        self.scorer = score_text if config.attribute == "text" else score_attribute
        self.layers = resolve_layers(pipe, config.layers) if config.layers else list_text_layers(pipe)
        self.steps = config.steps or default_steps(pipe)
        self.profile.check_steps(self.steps)
        PatchPlan(layers=[], start_step=config.start_step, branches=config.branches).validate_steps(self.steps)
        self.folder: RunFolder | None = None
        self.call_kwargs = dict(call_kwargs or {})
        self.call_kwargs["num_inference_steps"] = self.steps
        if config.guidance is not None:
            self.call_kwargs["guidance_scale"] = config.guidance
        self.rank, self.world, self.barrier = _distributed()
        # pair key -> (variants, pairs) of the work item that made its unpatched source image
        self._none_items: dict[str, tuple[list[tuple[str, list[str]]], list[PromptPair]]] = {}
        self.records: dict[tuple[str, str], dict[str, Any]] = {}
        self.images: dict[tuple[str, str], Any] = {}
        # Every batch of one pair chunk has the same prompts and noise before the start step, whatever layers
        # its rows patch: those denoiser calls are computed once (prefix.PrefixCache; kept per chunk).
        self.prefix = PrefixCache(config.start_step) if config.prefix_reuse and config.start_step > 0 else None
        self._prefix_chunk: tuple[str, ...] = ()

    # -- generation ---------------------------------------------------------------------------------------
    def _generate(self, variant: str, names: list[str], pairs: list[PromptPair]) -> list[Any]:
        images = self._generate_batch([(variant, names)], pairs)
        return [images[(variant, p.key)] for p in pairs]

    def _generate_batch(self, variants: list[tuple[str, list[str]]], pairs: list[PromptPair]) -> dict:
        """Every (variant, pair) of the group as one row of one batched call; each row has its own noise."""
        rows = [(v, names, p) for v, names in variants for p in pairs]
        if self.prefix is not None and tuple(p.key for p in pairs) != self._prefix_chunk:
            self.prefix.clear()
            self._prefix_chunk = tuple(p.key for p in pairs)
        prompts = [p.target if v == "target" else p.source for v, _, p in rows]
        kwargs = {**self.call_kwargs, "generator": [torch.Generator().manual_seed(p.seed) for _, _, p in rows]}
        union = sorted({name for _, names, _ in rows for name in names})
        if not union:
            images = list(generate(self.pipe, prompts, None, prefix=self.prefix, **kwargs).images)
        else:
            plan = PatchPlan(layers=union, start_step=self.config.start_step, branches=self.config.branches)
            images = list(generate(self.pipe, prompts, plan, target_prompt=[p.target for _, _, p in rows],
                                   row_layers=[names for _, names, _ in rows], prefix=self.prefix,
                                   **kwargs).images)
        return {(v, p.key): image for (v, _, p), image in zip(rows, images, strict=True)}

    def _source_images(self, pairs: list[PromptPair]) -> list[Any]:
        """The unpatched source images, exactly as the item holding the "none" rows of their pairs made them.

        After a resume they are regenerated with that item's batch composition (its variants and its pairs), so
        preservation scores are bit-identical to an uninterrupted run's.
        """
        for pair in pairs:
            if ("none", pair.key) not in self.images:
                variants, item_pairs = self._none_items.get(pair.key, ([("none", [])], [pair]))
                self.images.update(self._generate_batch(variants, item_pairs))
        return [self.images[("none", p.key)] for p in pairs]

    def _results_name(self) -> str:
        return RESULTS if self.world == 1 else f"results.rank{self.rank}.jsonl"

    def _run_item(self, variants: list[tuple[str, list[str]]], pairs: list[PromptPair]) -> None:
        start = time.perf_counter()
        images = self._generate_batch(variants, pairs)
        seconds = (time.perf_counter() - start) / len(images)
        self.images.update(images)
        sources = self._source_images(pairs)
        clip_scores = self._clip_t(images, variants, pairs)
        records = []
        for variant, names in variants:
            batch = [images[(variant, p.key)] for p in pairs]
            reads = self.reader(batch, pairs)
            for pair, image, source, read in zip(pairs, batch, sources, reads, strict=True):
                record = {"variant": variant, "pair": pair.key, "layers": names, "k": len(names),
                          "target_value": pair.target_value, "source_value": pair.source_value,
                          "seconds_per_image": seconds, **self.scorer(image, read, pair, source)}
                if clip_scores is not None:
                    record["clip_t"] = clip_scores[(variant, pair.key)]
                records.append(record)
                self.records[(variant, pair.key)] = record
        if self.folder is not None:
            self.folder.extend(records, name=self._results_name())

    def _run_variants(self, variants: list[tuple[str, list[str]]], desc: str,
                      pairs: list[PromptPair] | None = None, chunk: int | None = None, fill: bool = False) -> None:
        """Make every missing (variant, pair) record of ``variants`` x ``pairs`` (default: all pairs).

        Work items are fixed by the arguments alone (chunks of ``chunk`` pairs x groups of variants filling a
        batch), so a resumed run makes the same items with the same batch composition. The sweep sizes groups
        for a full chunk; ``fill`` sizes them for each chunk's actual pairs (the adaptive search's short
        rounds then still fill a batch of ``batch_size`` rows).
        """
        pairs = self.pairs if pairs is None else pairs
        chunk = max(1, chunk or self.config.chunk_size)
        items = []
        for i in range(0, len(pairs), chunk):
            chunk_pairs = pairs[i : i + chunk]
            group = max(1, self.config.batch_size // (len(chunk_pairs) if fill else chunk))
            items += [(variants[g : g + group], chunk_pairs) for g in range(0, len(variants), group)]
        for group_variants, item_pairs in items:
            if any(v == "none" for v, _ in group_variants):
                for pair in item_pairs:
                    self._none_items[pair.key] = (group_variants, item_pairs)
        todo = [(i, item) for i, item in enumerate(items) if i % self.world == self.rank
                and not all((v, p.key) in self.records for v, _ in item[0] for p in item[1])]
        for _, (group_variants, pairs) in tqdm(todo, desc=desc, disable=not todo or self.rank != 0,
                                               dynamic_ncols=True):
            self._run_item(group_variants, pairs)
        self.barrier()
        if self.out is not None and self.world > 1:
            for record in _read_records(self.out):
                self.records.setdefault((record["variant"], record["pair"]), record)

    # -- the sweep ----------------------------------------------------------------------------------------
    def run(self) -> LocalizationResult:
        if self.out is None:
            return self._sweep()
        command, config, inputs = self._folder_spec()
        if self.rank == 0:  # the main process locks the folder and writes (or checks) config.json
            with RunFolder(self.out, command=command, config=config, inputs=inputs) as self.folder:
                self._load_records()
                self.barrier()
                return self._sweep()
        self.barrier()  # other ranks of one launch check the same config.json, under the main rank's lock
        with RunFolder(self.out, command=command, config=config, inputs=inputs, lock=False) as self.folder:
            self._load_records()
            return self._sweep()

    def _sweep(self) -> LocalizationResult:
        if self.config.search == "adaptive":
            return self._finish(self._summary(self._adaptive()))
        self._run_variants(_variants(self.layers), "localize: single layers")
        ranking = self._ranking()
        ks = self._curve_ks()
        cumulative = [(f"top:{k}", [name for name, _ in ranking[:k]]) for k in ks if 1 < k < len(self.layers)]
        self._run_variants(cumulative, "localize: k best layers")
        return self._finish(self._summary(self._exhaustive_result(ranking, ks)))

    def evaluate(self, variants: list[tuple[str, list[str]]], indices: list[int],
                 desc: str = "localize: adaptive round") -> dict[str, list[tuple[float, float]]]:
        """The search's callback: (exact, F1) of every variant on the pairs ``indices``, from the records where
        they exist (resume), else generated, scored and appended (same items and batching as the sweep)."""
        pairs = [self.pairs[i] for i in indices]
        self._run_variants(variants, desc, pairs, fill=True)
        return {v: [(float(self.records[(v, p.key)]["exact"]), float(self.records[(v, p.key)]["f1"]))
                    for p in pairs] for v, _ in variants}

    def _adaptive(self) -> SearchResult:
        names = [layer.name for layer in self.layers]
        say = tqdm.write if self.rank == 0 else None
        return adaptive_search(names, len(self.pairs), self.evaluate, rule=self.rule, fraction=self.config.fraction,
                               ks=self.config.curve, until=self.config.until, progress=say)

    def _exhaustive_result(self, ranking: list[tuple[str, float]], ks: list[int]) -> SearchResult:
        """The exhaustive sweep's decisions in the search's terms (its records, unchanged, decide them)."""
        n = len(self.layers)
        variant_of = {0: "none", 1: f"layer:{ranking[0][0]}", n: "all"}
        curve = [{"k": k, "variant": variant_of.get(k, f"top:{k}"), "exact": self._score(variant_of.get(k, f"top:{k}")),
                  "layers": [name for name, _ in ranking[:k]]} for k in ks]
        all_score = self._score("all")
        chosen_k = next((p["k"] for p in curve if p["k"] > 0 and p["exact"] >= self.config.fraction * all_score), n)
        full_k = next((p["k"] for p in curve if p["k"] > 0 and p["exact"] >= all_score), n)
        gens = exhaustive_generations(n, len(self.pairs), ks)
        return SearchResult(ranking=ranking, curve=curve, chosen=[name for name, _ in ranking[:chosen_k]],
                            full_score=[name for name, _ in ranking[:full_k]], all_score=all_score,
                            generations=gens, generations_exhaustive=gens,
                            pairs_seen={layer.name: len(self.pairs) for layer in self.layers})

    def _finish(self, summary: dict[str, Any]) -> LocalizationResult:
        if self.folder is not None and self.rank == 0:
            from textloc.apps.localize.report import write_report

            self._ensure_examples([r["name"] for r in (summary["ranking"][0], summary["ranking"][-1])])
            self.folder.write_json("summary.json", summary)
            write_report(self.folder, summary, self.images, self.pairs)
        return LocalizationResult(summary, sorted(self.records.values(), key=lambda r: (r["variant"], r["pair"])))

    def _clip_t(self, images: dict, variants: list[tuple[str, list[str]]], pairs: list[PromptPair]) -> dict | None:
        """CLIP-T of every image against its target prompt, when the user gave CLIP weights (never downloaded)."""
        if not self.config.clip:
            return None
        from textloc.eval.metrics import clip_t_score, load_clip

        model, processor = load_clip(self.config.clip)
        keys = [(v, p.key) for v, _ in variants for p in pairs]
        targets = {p.key: p.target for p in pairs}
        scores = clip_t_score([images[k] for k in keys], [targets[k[1]] for k in keys], model, processor)
        return dict(zip(keys, scores, strict=True))

    def _ensure_examples(self, layer_names: list[str], n: int = 6) -> None:
        """Regenerate (deterministically) example images a resumed run no longer holds in memory."""
        pairs = self.pairs[:n]
        for variant, names in [("none", []), ("target", [])] + [(f"layer:{x}", [x]) for x in layer_names]:
            missing = [p for p in pairs if (variant, p.key) not in self.images]
            if missing:
                for pair, image in zip(missing, self._generate(variant, names, missing), strict=True):
                    self.images[(variant, pair.key)] = image

    def _folder_spec(self) -> tuple[str, dict[str, Any], dict[str, Path]]:
        """What the run folder's fingerprint covers: every setting that changes a record (not the selection
        fraction and search rule of an exhaustive run, not prefix reuse, which is bit-identical), the model, the
        pairs, and a prompts file's content."""
        config = {**self.config.record_settings(), "model_fingerprint": model_fingerprint(self.pipe),
                  "pairs": [p.key for p in self.pairs]}
        prompts = Path(self.config.prompts)
        inputs = {"prompts": prompts} if prompts.is_file() else {}
        return "localize", config, inputs

    def _load_records(self) -> None:
        if self.out is not None:
            for record in _read_records(self.out):
                self.records[(record["variant"], record["pair"])] = record

    def _score(self, variant: str, key: str = "exact") -> float:
        values = [float(r[key]) for (v, _), r in self.records.items() if v == variant and r.get(key) is not None]
        return float(np.mean(values)) if values else float("nan")

    def _ranking(self) -> list[tuple[str, float]]:
        scored = [(layer.name, self._score(f"layer:{layer.name}"), self._score(f"layer:{layer.name}", "f1"))
                  for layer in self.layers]
        # Rank by exact-match rate, break ties by F1, then by execution order (stable sort).
        scored.sort(key=lambda item: (-item[1], -item[2]))
        return [(name, score) for name, score, _ in scored]

    def _curve_ks(self) -> list[int]:
        return curve_ks(len(self.layers), self.config.curve)

    def search_info(self) -> dict[str, Any]:
        """The search and its rule's parameters, as ``summary.json`` reports them."""
        if self.config.search == "exhaustive":
            return {"method": "exhaustive"}
        return {"method": "adaptive", **asdict(self.rule), "until": self.config.until,
                "fraction": self.config.fraction}

    def _summary(self, result: SearchResult) -> dict[str, Any]:
        n = len(self.layers)
        curve = [{**{k: v for k, v in p.items() if k != "layers"}, "f1": self._score(p["variant"], "f1"),
                  "layers": p["layers"]} for p in result.curve]
        all_score = result.all_score
        threshold = self.config.fraction * all_score
        chosen = list(result.chosen)
        by_name = {layer.name: layer for layer in self.layers}
        denoiser_params = sum(p.numel() for p in get_denoiser(self.pipe).parameters())
        chosen_params = sum(by_name[name].params for name in chosen)
        per_layer = []
        for layer in self.layers:
            variant = f"layer:{layer.name}"
            per_layer.append({
                "index": layer.index, "name": layer.name, "kind": layer.kind, "params": layer.params,
                **{metric: self._score(variant, metric) for metric in ("exact", "f1", "cer", "source_exact", "mse",
                                                                       "ssim", "psnr", "clip_t")},
                "pairs_seen": result.pairs_seen.get(layer.name, 0),
                "dropped_after": result.dropped_after.get(layer.name),
            })
        bounds = {v: {m: self._score(v, m) for m in ("exact", "f1", "cer", "source_exact", "mse", "ssim", "psnr")}
                  for v in ("none", "all", "target")}
        for v in bounds:
            bounds[v]["pairs"] = sum(1 for variant, _ in self.records if variant == v)
        return {
            "model_fingerprint": model_fingerprint(self.pipe),
            "chosen_layers": chosen,
            "chosen_indices": [by_name[name].index for name in chosen],
            "chosen_params": chosen_params,
            "chosen_share": chosen_params / denoiser_params,
            "full_score_layers": list(result.full_score),
            "all_layers_score": all_score,
            "threshold": threshold,
            "fraction": self.config.fraction,
            "ranking": [{"name": name, "exact": score} for name, score in result.ranking],
            "curve": curve,
            "per_layer": per_layer,
            "bounds": bounds,
            "search": self.search_info(),
            "generations": result.generations,
            "generations_exhaustive": result.generations_exhaustive,
            "pairs_seen": dict(result.pairs_seen),
            "dropped_after": dict(result.dropped_after),
            "n_pairs": len(self.pairs),
            "n_layers": n,
            "config": asdict(self.config),
            "versions": _versions(),
        }


def _versions() -> dict[str, str]:
    import diffusers
    import transformers

    return {"textloc": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine()}


def localize(pipe: Any, pairs: list[PromptPair], config: LocalizeConfig | None = None, *,
             out: str | Path | None = None, reader: Reader | None = None, **call_kwargs: Any) -> LocalizationResult:
    r"""Find the text layers of ``pipe`` that control ``config.attribute``.

    Args:
        pipe: a supported diffusers pipeline.
        pairs: (source, target) prompt pairs, e.g. from ``prompts.load_pairs``.
        config: sweep settings (steps, start step, CFG branches, OCR backend, selection fraction …).
        out: folder for ``results.jsonl``, ``summary.json``, plots and ``report.html``; resumes a compatible run.
        reader: images, pairs -> strings; defaults to OCR (text) or the embedded pixel readers.
        call_kwargs: extra pipeline call arguments (e.g. ``height``/``width`` for a latent model).

    Returns:
        ``LocalizationResult`` whose ``summary`` is the content of ``summary.json``.
    """
    return Localizer(pipe, pairs, config or LocalizeConfig(), out, reader, call_kwargs).run()
