"""The patching engine: run any supported pipeline under a ``PatchPlan``.

Design, in one paragraph. Every text-reading attention layer makes its text keys and values with two linear
projections (``to_k``/``to_v`` for cross-attention and FLUX single-stream blocks, ``add_k_proj``/
``add_v_proj`` for MMDiT joint attention and DeepFloyd IF). The engine puts a named hook (diffusers'
``HookRegistry``, see ``core.hooks``) on exactly those projections and, at the planned steps, replaces their
output rows (and, for single-stream blocks, only the leading text tokens; optionally only some heads'
columns) with the values the *target* prompt produced. Queries and image-token K/V are never touched,
attention processors are never replaced, so any processor (SDPA, sliced, xformers, a user's own) keeps
working. The current step is *pushed in* by the pipeline itself: a hook on the denoiser reads the
``timestep`` argument and asks the scheduler (``core.steps``) -- no global counters, no counting of layer
calls. The CFG branch of a call comes from the pipeline's ``cache_context`` label where it sets one, from the
batch layout otherwise. The run's state (``core.patch_run.PatchRun``) is kept apart from what the plan fixes
(``PatchSetup``).

Where the target values come from:
* static layers (U-Net/DiT cross-attention, IF added K/V): text K/V depend on the prompt only, so one
  denoiser call of the target prompt records them and they are reused at every step (= *injection* of the
  target embeddings, as in the paper);
* dynamic layers (MMDiT joint attention, FLUX single-stream): text tokens evolve with the image, so the
  target prompt runs with the same noise (= *patching*). By default it runs *in the same batch*: the batch is
  ``[sources, targets]`` (each target row with its source's noise) and, inside every forward, the hook copies
  the target rows' text K/V into the source rows -- no per-step cache, no second pass (``mode="one-pass"``).
  ``mode="two-pass"`` instead runs the target first and records its K/V per (layer, step, call).

All hooks live inside a context manager and are removed in ``finally``, also when the pipeline raises; nothing
written onto the model outlives the call.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from textloc.core.layers import TextLayer, model_fingerprint, resolve_layers
from textloc.core.patch_run import PatchRun, PatchSetup, Phase, RecordingDone, patch_hooks
from textloc.core.plan import PatchPlan
from textloc.core.prefix import PrefixCache
from textloc.errors import InputError, PlanMismatchError, PlanNeverFiredError

# ------------------------------------------------------------------------------------------------------------
# The public entry point


@dataclass
class PatchResult:
    """What a patched run produced and what actually fired."""

    images: Any
    plan: PatchPlan
    layers: list[TextLayer]
    fired: dict[str, list[int]]


def default_steps(pipe: Any) -> int:
    """The pipeline's default ``num_inference_steps`` (read from its ``__call__`` signature)."""
    parameter = inspect.signature(pipe.__call__).parameters.get("num_inference_steps")
    if parameter is None or not isinstance(parameter.default, int):
        raise InputError("Pass num_inference_steps explicitly for this pipeline")
    return parameter.default


def _generator_state(generator: Any) -> Any:
    if generator is None:
        return None
    if isinstance(generator, torch.Generator):
        return generator.get_state()
    return [g.get_state() for g in generator]


def _restore_generator(generator: Any, saved: Any) -> None:
    if generator is None:
        return
    if isinstance(generator, torch.Generator):
        generator.set_state(saved)
    else:
        for g, s in zip(generator, saved, strict=True):
            g.set_state(s)


def _as_list(prompt: str | Sequence[str]) -> list[str]:
    return [prompt] if isinstance(prompt, str) else list(prompt)


def generate(
    pipe: Any,
    prompt: str | Sequence[str],
    plan: PatchPlan | None = None,
    *,
    target_prompt: str | Sequence[str] | None = None,
    row_layers: Sequence[Sequence[str | int]] | None = None,
    mode: str = "auto",
    prefix: PrefixCache | None = None,
    **call_kwargs: Any,
) -> PatchResult:
    r"""Run ``pipe(prompt, **call_kwargs)`` with the target's text information patched in as ``plan`` says.

    Args:
        pipe: a supported diffusers pipeline.
        prompt: the source prompt(s).
        plan: the patch plan; ``None`` or an empty plan runs the plain pipeline (bit-identical).
        target_prompt: overrides ``plan.target_prompt``.
        row_layers: for batched sweeps, one layer list per prompt (each a subset of ``plan.layers``; empty =
            that prompt is not patched). Many plans then run as rows of one batch.
        mode: ``"one-pass"`` runs the targets as extra rows of the source batch (same noise) and patches
            inside each forward; ``"two-pass"`` runs the target first and records what the plan needs;
            ``"auto"`` picks one-pass when a layer is dynamic (MMDiT: no per-step cache) and two-pass for
            static layers only (the target then costs a single denoiser call, cheaper than doubling the
            batch). One-pass needs one generator per image when more than one image is made.
        prefix: a ``PrefixCache`` shared by runs of the same source (seed, prompt, settings): the source run's
            denoiser calls before ``plan.start_step`` are served from it or recorded into it (two-pass and
            plain runs; a one-pass batch has other inputs and does not use it).
        call_kwargs: passed unchanged to both the target and the source run (seed via ``generator``).

    Returns:
        ``PatchResult`` with the pipeline's images and, per layer, the steps at which the patch fired.

    Raises:
        UnknownLayerError, StepWindowError, PlanMismatchError, PlanNeverFiredError, InputError.
    """
    plan = plan or PatchPlan()
    if plan.empty:
        with prefix.attach(pipe) if prefix is not None else nullcontext():
            return PatchResult(pipe(prompt, **call_kwargs).images, plan, [], {})
    for banned in ("prompt_embeds", "latents_callback"):
        if banned in call_kwargs:
            raise InputError(f"`{banned}` is not supported under a patch plan; pass prompts instead")
    layers = resolve_layers(pipe, plan.layers)
    if plan.model is not None and plan.model != model_fingerprint(pipe):
        raise PlanMismatchError(
            f"This plan was made for {plan.model}, but the model is {model_fingerprint(pipe)}"
        )
    steps = call_kwargs.get("num_inference_steps") or default_steps(pipe)
    plan.validate_steps(steps)
    target = target_prompt if target_prompt is not None else plan.target_prompt
    if target is None:
        raise InputError("A patch plan needs a target prompt (plan.target_prompt or target_prompt=...)")
    prompts, targets = _as_list(prompt), _as_list(target)
    if len(targets) == 1 and len(prompts) > 1:
        targets = targets * len(prompts)
    if len(targets) != len(prompts):
        raise InputError(f"Expected {len(prompts)} target prompts, but got {len(targets)}")
    per_prompt = call_kwargs.get("num_images_per_prompt", 1)
    n_images = len(prompts) * per_prompt
    by_layer: dict[str, set[int]] | None = None
    if row_layers is not None:
        if len(row_layers) != len(prompts):
            raise InputError(f"Expected {len(prompts)} row layer lists, but got {len(row_layers)}")
        planned = {layer.name for layer in layers}
        by_layer = {name: set() for name in planned}
        for i, refs in enumerate(row_layers):
            for layer in resolve_layers(pipe, list(refs)) if refs else []:
                if layer.name not in planned:
                    raise InputError(f"Row {i} patches {layer.name}, which is not in the plan's layers")
                by_layer[layer.name].update(range(i * per_prompt, (i + 1) * per_prompt))

    if mode not in MODES:
        raise InputError(f"Expected mode in {MODES}, but got {mode!r}")
    generator = call_kwargs.get("generator")
    dynamic = any(not layer.static for layer in layers)
    one_pass_ok = not isinstance(generator, torch.Generator) or n_images == 1
    if mode == "one-pass" and not one_pass_ok:
        raise InputError("One-pass patching of several images needs one generator per image (a list)")
    one_pass = mode == "one-pass" or (mode == "auto" and dynamic and one_pass_ok)
    if generator is None and "latents" not in call_kwargs and (dynamic or one_pass):
        # The target rows/run must see the *same* noise as the source: seed it explicitly.
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        generator = call_kwargs["generator"] = [torch.Generator("cpu").manual_seed(seed + i)
                                                for i in range(n_images)]
    rows = None if by_layer is None else {name: frozenset(images) for name, images in by_layer.items()}
    setup = PatchSetup(plan, tuple(layers), n_images, row_layers=rows, one_pass=one_pass)
    if one_pass:
        run = PatchRun(setup, pipe.scheduler, Phase.REPLACE)
        with patch_hooks(pipe, run):
            output = pipe(prompts + targets, **_one_pass_kwargs(call_kwargs, len(prompts), n_images))
        return _result(output.images[:n_images], run)
    saved = _generator_state(generator)
    run = PatchRun(setup, pipe.scheduler, Phase.RECORD)
    with patch_hooks(pipe, run):
        try:
            pipe(targets, **call_kwargs)
        except RecordingDone:
            pass
        _restore_generator(generator, saved)
        run.start(Phase.REPLACE)
        reuse = prefix.attach(pipe, lambda step: step < plan.start_step) if prefix is not None else nullcontext()
        with reuse:
            output = pipe(prompts, **call_kwargs)
    return _result(output.images, run)


MODES = ("auto", "one-pass", "two-pass")
_PER_PROMPT_KWARGS = ("negative_prompt", "negative_prompt_2", "negative_prompt_3", "prompt_2", "prompt_3")
_PER_PROMPT_IMAGES = ("image", "control_image", "mask_image")  # IF stage II, img2img, ControlNet


def _clone_generator(generator: torch.Generator) -> torch.Generator:
    clone = torch.Generator(device=generator.device)
    clone.set_state(generator.get_state())
    return clone


def _one_pass_kwargs(call_kwargs: dict[str, Any], n_prompts: int, n_images: int) -> dict[str, Any]:
    """The call arguments for ``[sources, targets]``: every per-image input is repeated for the targets.

    Each target row gets a copy of its source row's generator (so the same noise, also for stochastic
    samplers), its latents and its per-prompt strings.
    """
    kwargs = dict(call_kwargs)
    generator = kwargs.get("generator")
    if isinstance(generator, torch.Generator):  # one image: a generator list of one draws the same noise
        generator = [generator]
    if generator is not None:
        kwargs["generator"] = list(generator) + [_clone_generator(g) for g in generator]
    latents = kwargs.get("latents")
    if isinstance(latents, torch.Tensor):
        if latents.shape[0] != n_images:
            raise InputError(f"Expected latents with {n_images} rows for one-pass patching, got {latents.shape[0]}")
        kwargs["latents"] = torch.cat([latents, latents])
    for key in _PER_PROMPT_KWARGS:
        if isinstance(kwargs.get(key), list):
            kwargs[key] = kwargs[key] * 2
    for key in _PER_PROMPT_IMAGES:
        value = kwargs.get(key)
        if value is None:
            continue
        if isinstance(value, list):
            kwargs[key] = value * 2
        elif isinstance(value, torch.Tensor) and value.ndim == 4 and value.shape[0] == n_prompts:
            kwargs[key] = torch.cat([value, value])
        elif not isinstance(value, torch.Tensor) or value.ndim == 3:
            kwargs[key] = [value] * (2 * n_prompts)  # one image for every prompt, sources and targets
    return kwargs


def _result(images: Any, run: PatchRun) -> PatchResult:
    setup = run.setup
    never = [layer.name for layer in setup.layers if layer.name not in run.fired
             and (setup.row_layers is None or setup.row_layers[layer.name])]
    if never:
        raise PlanNeverFiredError(f"These layers were never patched during the run: {never}")
    fired = {name: sorted(steps) for name, steps in run.fired.items()}
    return PatchResult(images, setup.plan, list(setup.layers), fired)
