"""Prefix reuse: the denoising steps before a patch's start step are the same for every variant of a source.

An edit that patches from step ``k`` on, or a sweep of start steps, computes steps ``0..k-1`` exactly as the
plain source run does. ``PrefixCache`` memoises the denoiser over those steps: a run records each call's
inputs and output, and a later run whose call has *identical* inputs (compared tensor by tensor, so a
different seed, prompt or batch simply misses) gets the recorded output without running the denoiser. The
scheduler, text encoder and decoder still run, so nothing about the pipeline has to be re-implemented, and
a hit returns exactly what the computation would have returned: results stay bit-identical.

The engine (``generate(..., prefix=cache)``) consults the cache only at steps where its plan is not yet
active, and never while it records a target, so patched outputs never enter the cache.

The cache sits on the denoiser as a named ``ModelHook`` (``PREFIX_HOOK``) with a ``new_forward``: a hit
returns without running the denoiser, a miss runs the forward below it (the engine's own hooks included).
It is registered and removed through ``core.hooks.attach_hooks``, like every other textloc hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from textloc.core.hooks import attach_hooks
from textloc.core.layers import get_denoiser
from textloc.core.steps import denoising_step, timestep_arg

#: The registry name of the prefix-reuse hook on the denoiser.
PREFIX_HOOK = "textloc.prefix"


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

        The hook is registered on the denoiser for the duration of the block and always removed on exit.
        """
        denoiser = get_denoiser(pipe)
        with attach_hooks([(denoiser, PREFIX_HOOK, _PrefixHook(self, pipe.scheduler, usable))], root=denoiser):
            yield self


class _PrefixHook(ModelHook):
    """Serves a denoiser call from the cache when its step is cacheable and its inputs were seen before."""

    def __init__(self, cache: PrefixCache, scheduler: Any, usable: Callable[[int], bool]) -> None:
        super().__init__()
        self.cache = cache
        self.scheduler = scheduler
        self.usable = usable

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        step = denoising_step(self.scheduler, timestep_arg(args, kwargs))
        if step >= self.cache.until_step or not self.usable(step):
            return self.fn_ref.original_forward(*args, **kwargs)
        inputs = _flatten((args, kwargs))
        hit = self.cache.lookup(step, inputs)
        if hit is not None:
            return hit
        output = self.fn_ref.original_forward(*args, **kwargs)
        self.cache.store(step, inputs, output)
        return output
