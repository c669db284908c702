"""Step tracking: which denoising step (and which call within it) a denoiser call belongs to. One home.

The step is *pushed in* by the pipeline, never counted: every denoiser call carries its ``timestep``, and the
scheduler says which loop index that is (``denoising_step``). Counting layer or denoiser calls would break as
soon as a pipeline calls the denoiser twice per step (separate CFG branches, PNDM's repeated timestep) or a
call is skipped (prefix reuse serves it from a cache).

``StepTracker`` turns a stream of denoiser calls into ``DenoiserCall`` records: the step, the index of the call
within that step, the batch size and the CFG branch label when the pipeline sets one (diffusers pipelines that
run the branches as separate calls wrap them in ``denoiser.cache_context("cond" | "uncond")``; ``core.hooks``
reads that label). Everything that intercepts a model (engine, prefix reuse, Prompt-to-Prompt) asks here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from textloc.errors import PlanMismatchError

#: The CFG branches a call can belong to, as diffusers pipelines name them in ``cache_context``.
COND, UNCOND = "cond", "uncond"


def cfg_branch(label: str | None) -> str | None:
    """The CFG branch a ``cache_context`` label names: ``COND``, ``UNCOND`` or ``None`` (unknown or mixed).

    diffusers pipelines label separate branch calls ``"cond"`` and ``"uncond"`` (guidance variants:
    ``"uncond_stg"``, ``"uncond_modality"``) and a batch holding both ``"cond_uncond"``; for the last, and for
    unlabelled calls, only the batch layout can tell the rows apart.
    """
    if label == COND:
        return COND
    if label is not None and label.startswith(UNCOND):
        return UNCOND
    return None


def denoising_step(scheduler: Any, timestep: Any) -> int:
    r"""The denoising-loop index of a denoiser call made with ``timestep``.

    Args:
        scheduler: the pipeline's scheduler (after ``set_timesteps``).
        timestep: the ``timestep`` argument the denoiser was called with (tensor or number).

    Schedulers that count their own steps (``step_index``: Euler, DPM-Solver, flow matching …) are asked
    directly; it is ``None`` until their first ``step()``, i.e. during step ``begin_index``. Others (DDIM,
    PNDM …) are looked up by timestep; FLUX passes ``t / 1000``, so both scales are tried.
    """
    if "step_index" in dir(type(scheduler)):
        index = scheduler.step_index
        if index is None:
            index = getattr(scheduler, "begin_index", None) or 0
        return int(index)
    timesteps = getattr(scheduler, "timesteps", None)
    if timesteps is None or len(timesteps) == 0:
        raise PlanMismatchError("The pipeline has no scheduler timesteps; cannot tell which step runs")
    t = torch.as_tensor(timestep).flatten()[0].to(torch.float64).cpu()
    ts = torch.as_tensor(timesteps).to(torch.float64).cpu()
    best = min((torch.abs(ts * scale - t) for scale in (1.0, 1e-3)), key=lambda d: float(d.min()))
    return int(torch.argmin(best))


def timestep_arg(args: tuple, kwargs: dict) -> Any:
    """The ``timestep`` a denoiser was called with (keyword or second positional argument)."""
    if "timestep" in kwargs:
        return kwargs["timestep"]
    if len(args) > 1:
        return args[1]
    raise PlanMismatchError("The denoiser was called without a timestep; cannot tell which step runs")


def batch_size(args: tuple, kwargs: dict) -> int:
    """The batch size of a denoiser call (its first tensor input: ``sample`` or ``hidden_states``)."""
    for value in (*args[:1], kwargs.get("sample"), kwargs.get("hidden_states")):
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise PlanMismatchError("Cannot find the denoiser's input batch")


@dataclass(frozen=True)
class DenoiserCall:
    """One denoiser call, as the step tracker saw it.

    ``call`` counts the calls within ``step`` (0 for the first): separate CFG branches, or PNDM's repeated
    timestep. ``label`` is the pipeline's ``cache_context`` name, ``None`` when the pipeline sets none.
    """

    step: int
    call: int
    batch: int
    label: str | None = None

    @property
    def branch(self) -> str | None:
        """``COND``/``UNCOND`` when the label says which CFG branch this whole call is, else ``None``."""
        return cfg_branch(self.label)


class StepTracker:
    r"""Turns denoiser calls into ``DenoiserCall`` records, the step always read from the scheduler.

    Args:
        scheduler: the pipeline's scheduler.

    ``current`` is the last call seen (``None`` before the first). ``reset()`` starts a new pipeline run.
    """

    def __init__(self, scheduler: Any) -> None:
        self.scheduler = scheduler
        self.current: DenoiserCall | None = None
        self.calls = 0

    def enter(self, args: tuple, kwargs: dict, label: str | None = None) -> DenoiserCall:
        """Record one denoiser call made with ``args``/``kwargs`` and return what it is."""
        step = denoising_step(self.scheduler, timestep_arg(args, kwargs))
        previous = self.current
        call = previous.call + 1 if previous is not None and previous.step == step else 0
        self.current = DenoiserCall(step, call, batch_size(args, kwargs), label)
        self.calls += 1
        return self.current

    @property
    def step(self) -> int:
        """The current step, ``-1`` before the first call."""
        return -1 if self.current is None else self.current.step

    def reset(self) -> None:
        self.current = None
