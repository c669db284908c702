"""Prefix reuse: the denoising steps before a patch's start step are the same for every variant of a source.

An edit that patches from step ``k`` on, or a sweep of start steps, computes steps ``0..k-1`` exactly as the
plain source run does. ``PrefixCache`` memoises the denoiser over those steps: a run records each call's
inputs and output, and a later run whose call has *identical* inputs (compared tensor by tensor, so a
different seed, prompt or batch simply misses) gets the recorded output without running the denoiser. The
scheduler, text encoder and decoder still run, so nothing about the pipeline has to be re-implemented, and
a hit returns exactly what the computation would have returned: results stay bit-identical.

The engine (``generate(..., prefix=cache)``) consults the cache only at steps where its plan is not yet
active, and never while it records a target, so patched outputs never enter the cache.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from textloc.core.layers import get_denoiser
from textloc.errors import PlanMismatchError


def denoising_step(scheduler: Any, timestep: Any) -> int:
    """The denoising-loop index of a denoiser call.

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


def _flatten(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [item for key in sorted(value) for item in (key, *_flatten(value[key]))]
    if isinstance(value, (list, tuple)):
        return [item for v in value for item in _flatten(v)]
    return [value]


def _same(a: list[Any], b: list[Any]) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if isinstance(x, torch.Tensor) or isinstance(y, torch.Tensor):
            if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
                return False
            if x.shape != y.shape or x.dtype != y.dtype or x.device != y.device or not torch.equal(x, y):
                return False
        elif x != y:
            return False
    return True


def _copy(value: Any) -> Any:
    """A copy the pipeline may modify in place without touching the cache."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_copy(v) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict) and type(value) is dict:
        return {k: _copy(v) for k, v in value.items()}
    if hasattr(value, "to_tuple") and hasattr(value, "keys"):  # diffusers BaseOutput
        return type(value)(**{k: _copy(value[k]) for k in value.keys()})
    return value


@dataclass
class PrefixCache:
    r"""Denoiser outputs of the steps before ``until_step``, reusable by runs with identical inputs.

    Args:
        until_step: steps ``0 .. until_step - 1`` are recorded and served (the largest start step that will
            reuse this prefix; a run patched from an earlier step is served only up to its own start).

    ``hits`` and ``misses`` count denoiser calls served from the cache and computed (at cacheable steps).
    """

    until_step: int
    entries: dict[int, list[tuple[list[Any], Any]]] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0

    def lookup(self, step: int, inputs: list[Any]) -> Any | None:
        for cached_inputs, output in self.entries.get(step, []):
            if _same(cached_inputs, inputs):
                self.hits += 1
                return _copy(output)
        return None

    def store(self, step: int, inputs: list[Any], output: Any) -> None:
        self.misses += 1
        kept = [v.detach().clone() if isinstance(v, torch.Tensor) else v for v in inputs]
        self.entries.setdefault(step, []).append((kept, _copy(output)))

    def clear(self) -> None:
        self.entries.clear()

    @contextmanager
    def attach(self, pipe: Any, usable: Callable[[int], bool] = lambda step: True) -> Iterator[PrefixCache]:
        """Serve/record ``pipe``'s denoiser calls at steps below ``until_step`` for which ``usable(step)``.

        The denoiser's ``forward`` is wrapped on the instance (module hooks still run around it) and always
        restored on exit.
        """
        denoiser = get_denoiser(pipe)
        original = denoiser.forward
        own = denoiser.__dict__.get("forward")  # e.g. accelerate's offload hook wraps forward on the instance
        scheduler = pipe.scheduler

        def forward(*args: Any, **kwargs: Any) -> Any:
            step = denoising_step(scheduler, timestep_arg(args, kwargs))
            if step >= self.until_step or not usable(step):
                return original(*args, **kwargs)
            inputs = _flatten((args, kwargs))
            hit = self.lookup(step, inputs)
            if hit is not None:
                return hit
            output = original(*args, **kwargs)
            self.store(step, inputs, output)
            return output

        denoiser.forward = forward
        try:
            yield self
        finally:
            if own is None:
                del denoiser.forward
            else:
                denoiser.forward = own
