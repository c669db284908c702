"""One patched run: what the plan fixes (``PatchSetup``), what the run records and does (``PatchRun``), and
the named hooks that connect it to a model (``patch_hooks``).

The split keeps the plan apart from run state. ``PatchSetup`` is frozen: the plan, its resolved layers, the
image count, the per-row layer sets of a batched sweep and the one-pass layout; ``PatchSetup.rows(call)`` is a
pure function of it and one ``DenoiserCall``. ``PatchRun`` holds what changes while the pipeline runs: the
phase (record the target, then replace in the source), the recording, the current call's rows and which
(layer, step) fired. The step and the CFG branch label come from ``core.steps`` via the denoiser hook.

Hooks (all registered by name through ``core.hooks.attach_hooks``, removed on exit):
* ``ENGINE_DENOISER_HOOK`` on the denoiser: tracks the call, decides the rows, swaps the pooled embedding;
* ``ENGINE_TEXT_KV_HOOK`` on each planned layer's text K/V projections: records or replaces their rows;
* ``ENGINE_POOLED_HOOK`` on DeepFloyd IF's ``add_embedding`` (where IF pools text), for ``pooled=True``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import torch
from torch import nn

from textloc.core.hooks import DenoiserCallHook, OutputHook, attach_hooks
from textloc.core.layers import SINGLE_STREAM, TextLayer, architecture_of, get_denoiser
from textloc.core.plan import PatchPlan
from textloc.core.steps import COND, DenoiserCall, StepTracker
from textloc.errors import InputError, PlanMismatchError

ENGINE_DENOISER_HOOK = "textloc.engine.denoiser"
ENGINE_TEXT_KV_HOOK = "textloc.engine.text_kv"
ENGINE_POOLED_HOOK = "textloc.engine.pooled"
POOLED = "<pooled>"  # the name `fired` reports the pooled path under


class RecordingDone(Exception):
    """Raised inside the target run once everything the plan needs is recorded (saves the rest of the run)."""


class Phase(Enum):
    RECORD = "record"  # two-pass, first pass: the target prompt runs, its text K/V are kept
    REPLACE = "replace"  # the source runs with the target's text K/V in the planned rows


@dataclass(frozen=True)
class PatchSetup:
    """What the plan and the call fix for one run; never changes while the pipeline runs.

    ``row_layers`` (batched sweeps): layer name -> image indices it patches. ``one_pass``: the pipeline sees
    ``[sources, targets]`` and each source row takes its text K/V from its target row inside the forward.
    """

    plan: PatchPlan
    layers: tuple[TextLayer, ...]
    n_images: int | None
    row_layers: Mapping[str, frozenset[int]] | None = None
    one_pass: bool = False

    def rows(self, call: DenoiserCall) -> tuple[list[int], list[int] | None]:
        """(rows to patch in this call, the target row feeding each in one-pass, else ``None``)."""
        if self.one_pass:
            return self._paired_rows(call)
        return self._rows(call), None

    def _branch_rows(self, call: DenoiserCall, n: int) -> list[int]:
        """Halves (0 = uncond/only, 1 = cond) of a batch of ``n``-row halves to patch, per the CFG policy.

        A call the pipeline labels (``cache_context``) is one branch: the label decides. Otherwise the batch
        layout does: ``2n`` rows = diffusers' ``[uncond, cond]``; ``n`` unlabelled rows = the conditional
        branch alone (guidance off). Call order is never read: a scheduler may repeat a timestep (PNDM), and
        pipelines that run the branches as separate calls label them.
        """
        cond_only = self.plan.branches == COND
        if call.batch == n and call.branch is not None:
            return [0] if not cond_only or call.branch == COND else []
        if call.batch == 2 * n:
            return [1] if cond_only else [0, 1]
        if call.batch == n:
            return [0]
        raise PlanMismatchError(f"Expected a denoiser batch of {n} or {2 * n} rows, but got {call.batch}")

    def _rows(self, call: DenoiserCall) -> list[int]:
        if self.plan.branches == "both":
            return list(range(call.batch))
        if self.n_images is None:
            raise InputError("branches='cond' needs to know the number of images; use textloc.generate")
        n = self.n_images
        return [h * n + i for h in self._branch_rows(call, n) for i in range(n)]

    def _paired_rows(self, call: DenoiserCall) -> tuple[list[int], list[int]]:
        """One-pass layout: ``2N`` images (``N`` sources, then their ``N`` targets), so a denoiser batch is
        ``[src, tgt]`` without CFG in the batch and ``[src, tgt | src, tgt]`` (uncond, cond) with it."""
        n = self.n_images or 0
        total = 2 * n
        try:
            halves = self._branch_rows(call, total)
        except PlanMismatchError:
            raise PlanMismatchError(
                f"Expected a one-pass denoiser batch of {total} or {2 * total} rows, but got {call.batch}"
            ) from None
        rows = [h * total + i for h in halves for i in range(n)]
        return rows, [r + n for r in rows]


@dataclass
class Recording:
    """The target's text K/V and pooled embeddings, recorded in the first pass of a two-pass run."""

    static: dict[tuple[str, str, int], torch.Tensor] = field(default_factory=dict)  # (layer, k|v, call)
    dynamic: dict[tuple[str, str, int, int], torch.Tensor] = field(default_factory=dict)  # (…, step, call)
    pooled: dict[int, torch.Tensor] = field(default_factory=dict)  # per call within a step
    first_step: int | None = None
    static_calls: int = 0  # denoiser calls in the target run's first step


class PatchRun:
    """The mutable side of one ``generate`` call; lives as long as the call, never on the model."""

    def __init__(self, setup: PatchSetup, scheduler: Any, phase: Phase) -> None:
        self.setup = setup
        self.tracker = StepTracker(scheduler)
        self.phase = phase
        self.recording = Recording()
        self.fired: dict[str, set[int]] = {}
        self.rows: list[int] = []
        self.partners: list[int] | None = None
        self.n_text_tokens: int | None = None
        self.needs_all_steps = any(not layer.static for layer in setup.layers)

    @property
    def step(self) -> int:
        return self.tracker.step

    def start(self, phase: Phase) -> None:
        """Begin the next pipeline call (the source after recording the target)."""
        self.phase = phase
        self.tracker.reset()
        self.rows, self.partners = [], None

    def _active(self) -> bool:
        return self.setup.plan.active(self.step) and bool(self.rows)

    def _fire(self, name: str) -> None:
        self.fired.setdefault(name, set()).add(self.step)

    # -- the denoiser hook -------------------------------------------------------------------------------
    def enter_call(self, call: DenoiserCall, args: tuple, kwargs: dict, pooled_key: str | None
                   ) -> tuple[tuple, dict] | None:
        """Per denoiser call: stop a finished recording, pick the rows, swap the pooled embedding."""
        rec = self.recording
        if self.phase is Phase.RECORD:
            if rec.first_step is None:
                rec.first_step = call.step
            if call.step == rec.first_step:
                rec.static_calls = call.call + 1
            # Static K/V and pooled embeddings are complete once every call of the first step has run;
            # dynamic ones once the window's last step has.
            end = self.setup.plan.end_step
            done_static = not self.needs_all_steps and call.step != rec.first_step
            done_dynamic = self.needs_all_steps and end is not None and call.step > end - 1
            if done_static or done_dynamic:
                raise RecordingDone
        self.rows, self.partners = self.setup.rows(call)
        text = kwargs.get("encoder_hidden_states")
        self.n_text_tokens = text.shape[1] if isinstance(text, torch.Tensor) else None
        if pooled_key is None:
            return None
        current = _get_pooled(kwargs, pooled_key)
        if self.phase is Phase.RECORD:
            if current is not None and call.call not in rec.pooled:
                rec.pooled[call.call] = current.detach().clone()
            return None
        if not self._active():
            return None
        _set_pooled(kwargs, pooled_key, self._swap_pooled(current))
        return args, kwargs

    def _swap_pooled(self, current: torch.Tensor | None) -> torch.Tensor:
        """``current`` with the planned rows' pooled embedding taken from the target."""
        call = self.tracker.current.call if self.tracker.current is not None else 0
        if self.setup.one_pass and current is not None:
            recorded, rows = current, self.partners
        else:
            recorded, rows = self.recording.pooled.get(call), self.rows
        if current is None or recorded is None or current.shape != recorded.shape:
            raise PlanMismatchError("The pooled text embedding of the target run does not fit the source")
        new = current.clone()
        new[self.rows] = recorded[rows].to(current.dtype)
        self._fire(POOLED)
        return new

    # -- the IF pooled-module hook -----------------------------------------------------------------------
    def pooled_output(self, output: torch.Tensor) -> torch.Tensor | None:
        call = self.tracker.current.call if self.tracker.current is not None else 0
        if self.phase is Phase.RECORD:
            self.recording.pooled.setdefault(call, output.detach().clone())
            return None
        return self._swap_pooled(output) if self._active() else None

    # -- the text K/V hooks ------------------------------------------------------------------------------
    def text_kv(self, layer: TextLayer, which: str, heads: int, output: torch.Tensor) -> torch.Tensor | None:
        """Record (first pass) or replace (patched rows, active steps) one text K/V projection's output."""
        call = self.tracker.current
        if call is None:
            return None
        rec = self.recording
        if self.phase is Phase.RECORD:
            if layer.static:
                rec.static.setdefault((layer.name, which, call.call), output.detach().clone())
            elif self.setup.plan.active(call.step):
                rec.dynamic[(layer.name, which, call.step, call.call)] = output[:, self._tokens(layer)].detach().clone()
            return None
        if not self._active():
            return None
        if self.setup.one_pass:
            source = None
        elif layer.static:
            # A repeated timestep (PNDM) shows up as an extra call; static K/V are the same for it.
            source = rec.static.get((layer.name, which, call.call % max(1, rec.static_calls)))
        else:
            source = rec.dynamic.get((layer.name, which, call.step, call.call))
        if source is None and not self.setup.one_pass:
            raise PlanMismatchError(
                f"No recorded target K/V for {layer.name} at step {call.step} (call {call.call}); the target "
                "run took a different path than the source run"
            )
        self._fire(layer.name)
        return self._replace_rows(layer, heads, output, source)

    def _tokens(self, layer: TextLayer) -> slice:
        return slice(0, self.n_text_tokens) if layer.kind == SINGLE_STREAM else slice(None)

    def _replace_rows(self, layer: TextLayer, heads: int, output: torch.Tensor,
                      source: torch.Tensor | None) -> torch.Tensor:
        """``output`` with the planned rows' text K/V taken from ``source`` (same rows) or, one-pass, from the
        partner target rows of ``output`` itself."""
        tokens = self._tokens(layer)
        current = output[:, tokens]
        if source is not None and source.shape != current.shape:
            raise PlanMismatchError(
                f"{layer.name}: recorded text K/V of shape {tuple(source.shape)} do not fit this run's "
                f"{tuple(current.shape)} (a different batch layout, prompt length or model)"
            )
        rows = self.rows
        partners = self.partners if source is None else rows
        setup = self.setup
        if setup.row_layers is not None:
            # Batched sweeps: this layer patches only the images whose plan includes it.
            wanted = setup.row_layers.get(layer.name, frozenset())
            n = setup.n_images or output.shape[0]
            period = 2 * n if setup.one_pass else n
            keep = [i for i, r in enumerate(rows) if (r % period) in wanted]
            rows, partners = [rows[i] for i in keep], [partners[i] for i in keep]
            if not rows:
                return output
        new = output.clone()
        patch = (current if source is None else source)[partners].to(output.dtype)
        if setup.plan.heads is not None:
            head_dim = output.shape[-1] // heads
            bad = [h for h in setup.plan.heads if h >= heads]
            if bad:
                raise InputError(f"Expected head indices < {heads} for {layer.name}, but got {bad}")
            mask = torch.zeros(output.shape[-1], dtype=torch.bool, device=output.device)
            for h in setup.plan.heads:
                mask[h * head_dim : (h + 1) * head_dim] = True
            patch = torch.where(mask, patch, current[rows])
        new[rows, tokens] = patch
        return new


def _get_pooled(kwargs: dict, key: str) -> torch.Tensor | None:
    if key == "text_embeds":
        return (kwargs.get("added_cond_kwargs") or {}).get("text_embeds")
    return kwargs.get(key)


def _set_pooled(kwargs: dict, key: str, value: torch.Tensor) -> None:
    if key == "text_embeds":
        kwargs["added_cond_kwargs"] = {**kwargs["added_cond_kwargs"], "text_embeds": value}
    else:
        kwargs[key] = value


def _pooled_path(denoiser: nn.Module, pooled_kwarg: str | None) -> tuple[str | None, nn.Module | None]:
    """Where the pooled text embedding enters: a call kwarg, or (DeepFloyd IF) the module that pools text."""
    config = getattr(denoiser, "config", None)
    addition = getattr(config, "addition_embed_type", None)
    if addition == "text":  # IF: `add_embedding` pools encoder_hidden_states into the time embedding
        return "add_embedding", denoiser.add_embedding
    if addition == "text_time" or (pooled_kwarg and pooled_kwarg != "text_embeds"):
        return pooled_kwarg, None
    raise InputError(f"{type(denoiser).__name__} has no pooled text embedding; set pooled=False")


@contextmanager
def patch_hooks(pipe: Any, run: PatchRun) -> Iterator[PatchRun]:
    """Register the engine's named hooks for ``run`` on ``pipe``'s denoiser; always removes them on exit."""
    denoiser = get_denoiser(pipe)
    modules = dict(denoiser.named_modules())
    pooled_key, pooled_module = (None, None)
    if run.setup.plan.pooled:
        pooled_key, pooled_module = _pooled_path(denoiser, architecture_of(denoiser).pooled_kwarg)
    kwarg_key = pooled_key if pooled_module is None else None

    def on_call(call: DenoiserCall, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return run.enter_call(call, args, kwargs, kwarg_key)

    entries = [(denoiser, ENGINE_DENOISER_HOOK, DenoiserCallHook(run.tracker, on_call))]
    if pooled_module is not None:
        entries.append((pooled_module, ENGINE_POOLED_HOOK, OutputHook(run.pooled_output)))
    for layer in run.setup.layers:
        attn = modules[layer.name]
        for which, proj in (("k", layer.key_proj), ("v", layer.value_proj)):
            hook = OutputHook(_kv_fn(run, layer, which, attn.heads))
            entries.append((getattr(attn, proj), ENGINE_TEXT_KV_HOOK, hook))
    with attach_hooks(entries, root=denoiser):
        yield run


def _kv_fn(run: PatchRun, layer: TextLayer, which: str, heads: int):
    def fn(output: torch.Tensor) -> torch.Tensor | None:
        return run.text_kv(layer, which, heads, output)

    return fn
