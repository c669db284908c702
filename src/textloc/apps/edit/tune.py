"""Tuning the edit start step (``textloc edit-tune``) on validation pairs.

An earlier start step gives the new text more steps (it renders more often); a later one keeps more of the
source (its layout and colours are decided early). The tuned step is the trade-off between the two: the
highest OCR exact rate among the steps that keep the background in at least ``min_preservation`` of edits.
Steps before a candidate's start are the plain source run's, so each chunk's are computed once (prefix reuse).
Each candidate's row can be handed to a run folder as it is done, so a killed tuning resumes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from textloc.apps.edit.calls import call_kwargs
from textloc.apps.edit.scoring import Scorer
from textloc.core.engine import generate
from textloc.core.plan import PatchPlan
from textloc.core.prefix import PrefixCache
from textloc.data.pairs import PromptPair
from textloc.errors import InputError


@dataclass
class TuneResult:
    """Per-candidate exact rate and preservation, and the chosen start step."""

    best: int
    rows: list[dict[str, Any]]
    min_preservation: float
    satisfied: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose(rows: Sequence[Mapping[str, Any]], min_preservation: float) -> tuple[int, bool]:
    """The best start step of ``rows`` and whether it met ``min_preservation``.

    Best: max exact rate among rows with preservation >= ``min_preservation`` (ties: more preservation, then
    the later step); if none qualifies, the most preserving one (ties: exact rate, then the later step).
    """
    ok = [r for r in rows if r["preservation"] >= min_preservation]
    if ok:
        best = max(ok, key=lambda r: (r["exact"], r["preservation"], r["start_step"]))
    else:
        best = max(rows, key=lambda r: (r["preservation"], r["exact"], r["start_step"]))
    return int(best["start_step"]), bool(ok)


def tune_start_step(
    pipe: Any,
    pairs: Sequence[PromptPair],
    layers: Sequence[str | int],
    candidates: Sequence[int],
    *,
    ocr: Any = "rapidocr",
    min_preservation: float = 0.9,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    batch_size: int = 8,
    progress: bool = True,
    done: Mapping[int, Mapping[str, Any]] | None = None,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> TuneResult:
    r"""Pick the start step that renders the target text most often while keeping the background.

    For every candidate, each validation pair's source prompt is edited towards its target (same seed as
    its plain generation). Score: OCR exact rate against ``pair.target_value``; preservation: share of
    edits that keep the source's background (``apps.edit.scoring``: the model's colour reader, else SSIM).

    Args:
        done: rows of candidates already scored (a resumed run), by start step; they are not run again.
        on_row: called with each newly scored row (a run folder appends it).
    """
    from tqdm.auto import tqdm

    from textloc.models.profiles import profile_for

    if not pairs:
        raise InputError("Expected at least one validation pair to tune the start step on")
    if not candidates:
        raise InputError("Expected at least one candidate start step")
    done = dict(done or {})
    todo = [int(c) for c in candidates if int(c) not in done]
    rows_by_step: dict[int, dict[str, Any]] = {int(k): dict(v) for k, v in done.items()}
    if todo:
        rows_by_step.update(_score_candidates(pipe, pairs, layers, todo, Scorer(profile=profile_for(pipe), ocr=ocr),
                                              call_kwargs(pipe, 0, num_inference_steps, guidance_scale, {}),
                                              batch_size, tqdm if progress else None, on_row))
    rows = [rows_by_step[int(c)] for c in candidates]
    best, satisfied = choose(rows, min_preservation)
    return TuneResult(best, rows, min_preservation, satisfied)


def _score_candidates(pipe: Any, pairs: Sequence[PromptPair], layers: Sequence[str | int], candidates: list[int],
                      scorer: Scorer, base: dict[str, Any], batch_size: int, bar_factory: Any,
                      on_row: Callable[[dict[str, Any]], None] | None) -> dict[int, dict[str, Any]]:
    chunks = [list(pairs[i : i + batch_size]) for i in range(0, len(pairs), batch_size)]

    def gens(chunk: list[PromptPair]) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(p.seed) for p in chunk]

    caches = [PrefixCache(until_step=max(candidates)) for _ in chunks]
    sources = [np.asarray(generate(pipe, [p.source for p in c], None, prefix=cache, **{**base, "generator": gens(c)})
                          .images) for c, cache in zip(chunks, caches, strict=True)]
    bar = bar_factory(total=len(candidates) * len(pairs), desc="edit-tune", dynamic_ncols=True) \
        if bar_factory is not None else None
    out = {}
    for start in candidates:
        exact, kept = [], []
        for chunk, source, cache in zip(chunks, sources, caches, strict=True):
            plan = PatchPlan(layers=list(layers), start_step=int(start))
            edited = np.asarray(generate(pipe, [p.source for p in chunk], plan, target_prompt=[p.target for p in chunk],
                                         prefix=cache, **{**base, "generator": gens(chunk)}).images)
            reads = scorer.read(list(edited))
            for pair, e, s, read in zip(chunk, edited, source, reads, strict=True):
                row = scorer.score(e, s, pair.target_value, pair.target, read)
                exact.append(bool(row.get("exact", False)))
                kept.append(bool(row["background_kept"]))
            if bar is not None:
                bar.update(len(chunk))
        out[start] = {"start_step": int(start), "exact": float(np.mean(exact)), "preservation": float(np.mean(kept))}
        if on_row is not None:
            on_row(out[start])
    if bar is not None:
        bar.close()
    return out
