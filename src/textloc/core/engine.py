"""The patching engine: run any supported pipeline under a ``PatchPlan``.

Design, in one paragraph. Every text-reading attention layer makes its text keys and values with two linear
projections (``to_k``/``to_v`` for cross-attention and FLUX single-stream blocks, ``add_k_proj``/
``add_v_proj`` for MMDiT joint attention and DeepFloyd IF). The engine puts a forward hook on exactly those
projections and, at the planned steps, replaces their output rows (and, for single-stream blocks, only the
leading text tokens; optionally only some heads' columns) with the values the *target* prompt produced.
Queries and image-token K/V are never touched, attention processors are never replaced, so any processor
(SDPA, sliced, xformers, a user's own) keeps working. The current step is *pushed in* by the pipeline itself:
a pre-hook on the denoiser reads the ``timestep`` argument and looks it up in ``scheduler.timesteps`` -- no
global counters, no counting of layer calls.

Where the target values come from:
* static layers (U-Net/DiT cross-attention, IF added K/V): text K/V depend on the prompt only, so one
  denoiser call of the target prompt records them and they are reused at every step (= *injection* of the
  target embeddings, as in the paper);
* dynamic layers (MMDiT joint attention, FLUX single-stream): text tokens evolve with the image, so the
  target prompt runs with the same noise (= *patching*). By default it runs *in the same batch*: the batch is
  ``[sources, targets]`` (each target row with its source's noise) and, inside every forward, the hook copies
  the target rows' text K/V into the source rows -- no per-step cache, no second pass (``mode="one-pass"``).
  ``mode="two-pass"`` instead runs the target first and records its K/V per (layer, step, call).

All hooks live inside a context manager and are removed in ``finally``, also when the pipeline raises.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from textloc.core.layers import (
    SINGLE_STREAM,
    TextLayer,
    architecture_of,
    get_denoiser,
    model_fingerprint,
    resolve_layers,
)
from textloc.core.plan import PatchPlan
from textloc.core.prefix import PrefixCache, denoising_step, timestep_arg
from textloc.errors import InputError, PlanMismatchError, PlanNeverFiredError


class _RecordingDone(Exception):
    """Raised inside the target run once everything the plan needs is recorded (saves the rest of the run)."""


@dataclass
class PatchState:
    """Everything one patched run needs; lives for one ``generate`` call, never on the model."""

    plan: PatchPlan
    layers: list[TextLayer]
    scheduler: Any
    n_images: int | None
    mode: str = "off"  # "record" | "replace" | "off"
    step: int = -1
    call: int = 0
    calls_seen: int = 0
    n_text_tokens: int | None = None
    rows: list[int] | None = None
    static: dict[tuple[str, str, int], torch.Tensor] = field(default_factory=dict)
    dynamic: dict[tuple[str, str, int, int], torch.Tensor] = field(default_factory=dict)
    pooled: dict[int, torch.Tensor] = field(default_factory=dict)  # per call within a step
    first_step: int | None = None
    static_calls: int = 0  # denoiser calls recorded in the target run's first step
    fired: dict[str, set[int]] = field(default_factory=dict)
    row_layers: dict[str, set[int]] | None = None  # layer -> image indices it patches (batched sweeps)
    one_pass: bool = False  # the batch is [sources, targets]; target rows feed the source rows in-forward
    partners: list[int] | None = None  # one-pass: for each row in ``rows``, the target row that feeds it

    # -- step bookkeeping ---------------------------------------------------------------------------------
    def step_of(self, timestep: Any) -> int:
        """The denoising-loop index of this call (``prefix.denoising_step``)."""
        return denoising_step(self.scheduler, timestep)

    def enter_call(self, timestep: Any, batch: int) -> None:
        step = self.step_of(timestep)
        self.call = self.call + 1 if step == self.step else 0
        self.step = step
        self.calls_seen += 1
        if self.one_pass:
            self.rows, self.partners = self._paired_rows(batch)
        else:
            self.rows = self._rows(batch)

    def _rows(self, batch: int) -> list[int]:
        """Batch rows to patch at this call, following the plan's CFG branch policy."""
        if self.plan.branches == "both":
            return list(range(batch))
        if self.n_images is None:
            raise InputError("branches='cond' needs to know the number of images; use textloc.generate")
        if batch == 2 * self.n_images:  # diffusers' layout: [uncond, cond]
            return list(range(self.n_images, batch))
        if batch == self.n_images:  # no CFG in the batch: guidance off, or separate calls (cond first)
            return list(range(batch)) if self.call == 0 else []
        raise PlanMismatchError(
            f"Expected a denoiser batch of {self.n_images} or {2 * self.n_images} rows, but got {batch}"
        )

    def _paired_rows(self, batch: int) -> tuple[list[int], list[int]]:
        """One-pass layout: (source rows to patch, the target row feeding each), per CFG branch policy.

        The pipeline sees ``2N`` images (``N`` sources, then their ``N`` targets), so a denoiser batch is
        ``[src, tgt]`` without CFG in the batch and ``[src, tgt | src, tgt]`` (uncond half, cond half) with it.
        """
        n = self.n_images or 0
        total = 2 * n
        if batch == 2 * total:
            halves = [1] if self.plan.branches == "cond" else [0, 1]
        elif batch == total:
            halves = [0] if self.plan.branches == "both" or self.call == 0 else []
        else:
            raise PlanMismatchError(
                f"Expected a one-pass denoiser batch of {total} or {2 * total} rows, but got {batch}"
            )
        rows = [h * total + i for h in halves for i in range(n)]
        return rows, [r + n for r in rows]


def _batch_arg(args: tuple, kwargs: dict) -> int:
    for value in (*args[:1], kwargs.get("sample"), kwargs.get("hidden_states")):
        if isinstance(value, torch.Tensor):
            return value.shape[0]
    raise PlanMismatchError("Cannot find the denoiser's input batch")


def _get_pooled(kwargs: dict, key: str) -> torch.Tensor | None:
    if key == "text_embeds":
        return (kwargs.get("added_cond_kwargs") or {}).get("text_embeds")
    return kwargs.get(key)


def _set_pooled(kwargs: dict, key: str, value: torch.Tensor) -> None:
    if key == "text_embeds":
        kwargs["added_cond_kwargs"] = {**kwargs["added_cond_kwargs"], "text_embeds": value}
    else:
        kwargs[key] = value


def _replace_rows(state: PatchState, layer: TextLayer, module: nn.Module, output: torch.Tensor,
                  source: torch.Tensor | None) -> torch.Tensor:
    """``output`` with the planned rows' text K/V taken from ``source`` (same rows) or, one-pass, from the
    partner target rows of ``output`` itself."""
    tokens = slice(0, state.n_text_tokens) if layer.kind == SINGLE_STREAM else slice(None)
    current = output[:, tokens]
    if source is not None and source.shape != current.shape:
        raise PlanMismatchError(
            f"{layer.name}: recorded text K/V of shape {tuple(source.shape)} do not fit this run's "
            f"{tuple(current.shape)} (a different batch layout, prompt length or model)"
        )
    rows = state.rows or []
    partners = state.partners if source is None else rows
    if state.row_layers is not None:
        # Batched sweeps: this layer patches only the images whose plan includes it.
        wanted = state.row_layers.get(layer.name, set())
        n = state.n_images or output.shape[0]
        period = 2 * n if state.one_pass else n
        keep = [i for i, r in enumerate(rows) if (r % period) in wanted]
        rows, partners = [rows[i] for i in keep], [partners[i] for i in keep]
        if not rows:
            return output
    new = output.clone()
    patch = (current if source is None else source)[partners].to(output.dtype)
    if state.plan.heads is not None:
        heads = module._textloc_heads
        head_dim = output.shape[-1] // heads
        bad = [h for h in state.plan.heads if h >= heads]
        if bad:
            raise InputError(f"Expected head indices < {heads} for {layer.name}, but got {bad}")
        mask = torch.zeros(output.shape[-1], dtype=torch.bool, device=output.device)
        for h in state.plan.heads:
            mask[h * head_dim : (h + 1) * head_dim] = True
        patch = torch.where(mask, patch, current[rows])
    new[rows, tokens] = patch
    return new


def _kv_hook(state: PatchState, layer: TextLayer, which: str):
    def hook(module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if state.mode == "record":
            if layer.static:
                state.static.setdefault((layer.name, which, state.call), output.detach().clone())
            elif state.plan.active(state.step):
                tokens = slice(0, state.n_text_tokens) if layer.kind == SINGLE_STREAM else slice(None)
                state.dynamic[(layer.name, which, state.step, state.call)] = output[:, tokens].detach().clone()
            return None
        if state.mode != "replace" or not state.plan.active(state.step) or not state.rows:
            return None
        if state.one_pass:
            state.fired.setdefault(layer.name, set()).add(state.step)
            return _replace_rows(state, layer, module, output, None)
        if layer.static:
            # A repeated timestep (PNDM) shows up as an extra call; static K/V are the same for it.
            source = state.static.get((layer.name, which, state.call % max(1, state.static_calls)))
        else:
            source = state.dynamic.get((layer.name, which, state.step, state.call))
        if source is None:
            raise PlanMismatchError(
                f"No recorded target K/V for {layer.name} at step {state.step} (call {state.call}); the target "
                "run took a different path than the source run"
            )
        state.fired.setdefault(layer.name, set()).add(state.step)
        return _replace_rows(state, layer, module, output, source)

    return hook


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
def patch_hooks(pipe: Any, state: PatchState) -> Iterator[PatchState]:
    """Install the engine's hooks for ``state`` on ``pipe``'s denoiser; always removes them on exit."""
    denoiser = get_denoiser(pipe)
    arch = architecture_of(denoiser)
    modules = dict(denoiser.named_modules())
    handles = []
    pooled_key, pooled_module = _pooled_path(denoiser, arch.pooled_kwarg) if state.plan.pooled else (None, None)
    needs_all_steps = any(not layer.static for layer in state.layers)
    last_step = None if state.plan.end_step is None else state.plan.end_step - 1

    def pre_hook(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if state.mode == "off":
            return None
        step_before = state.step
        state.enter_call(timestep_arg(args, kwargs), _batch_arg(args, kwargs))
        if state.mode == "record":
            if state.first_step is None:
                state.first_step = state.step
            if state.step == state.first_step:
                state.static_calls = state.call + 1
            # Static K/V and pooled embeddings are complete once every call of the first step has run;
            # dynamic ones once the window's last step has.
            done_static = not needs_all_steps and state.step != state.first_step
            done_dynamic = needs_all_steps and last_step is not None and state.step > last_step
            if done_static or done_dynamic:
                state.step = step_before
                raise _RecordingDone
        text = kwargs.get("encoder_hidden_states")
        state.n_text_tokens = text.shape[1] if isinstance(text, torch.Tensor) else None
        if pooled_key is None or pooled_module is not None:
            return None
        if state.mode == "record":
            pooled = _get_pooled(kwargs, pooled_key)
            if pooled is not None and state.call not in state.pooled:
                state.pooled[state.call] = pooled.detach().clone()
            return None
        if state.mode == "replace" and state.plan.active(state.step) and state.rows:
            current = _get_pooled(kwargs, pooled_key)
            if state.one_pass and current is not None:
                recorded, rows = current, state.partners
            else:
                recorded, rows = state.pooled.get(state.call), state.rows
            if current is None or recorded is None or current.shape != recorded.shape:
                raise PlanMismatchError("The pooled text embedding of the target run does not fit the source")
            new = current.clone()
            new[state.rows] = recorded[rows].to(current.dtype)
            _set_pooled(kwargs, pooled_key, new)
            state.fired.setdefault("<pooled>", set()).add(state.step)
            return args, kwargs
        return None

    def pooled_module_hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor | None:
        if state.mode == "record":
            state.pooled.setdefault(state.call, output.detach().clone())
            return None
        if state.mode == "replace" and state.plan.active(state.step) and state.rows:
            if state.one_pass:
                recorded, rows = output, state.partners
            else:
                recorded, rows = state.pooled.get(state.call), state.rows
            if recorded is None or recorded.shape != output.shape:
                raise PlanMismatchError("The pooled text embedding of the target run does not fit the source")
            new = output.clone()
            new[state.rows] = recorded[rows].to(output.dtype)
            state.fired.setdefault("<pooled>", set()).add(state.step)
            return new
        return None

    try:
        handles.append(denoiser.register_forward_pre_hook(pre_hook, with_kwargs=True))
        if pooled_module is not None:
            handles.append(pooled_module.register_forward_hook(pooled_module_hook))
        for layer in state.layers:
            attn = modules[layer.name]
            for which, proj in (("k", layer.key_proj), ("v", layer.value_proj)):
                proj_module = getattr(attn, proj)
                proj_module._textloc_heads = attn.heads
                handles.append(proj_module.register_forward_hook(_kv_hook(state, layer, which)))
        yield state
    finally:
        for handle in handles:
            handle.remove()
        for layer in state.layers:
            for proj in (layer.key_proj, layer.value_proj):
                proj_module = getattr(modules[layer.name], proj)
                if hasattr(proj_module, "_textloc_heads"):
                    del proj_module._textloc_heads


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
    if one_pass:
        state = PatchState(plan, layers, pipe.scheduler, n_images, row_layers=by_layer, one_pass=True)
        with patch_hooks(pipe, state):
            state.mode = "replace"
            output = pipe(prompts + targets, **_one_pass_kwargs(call_kwargs, len(prompts), n_images))
        images = output.images[:n_images]
        return _result(images, plan, layers, state, by_layer)
    saved = _generator_state(generator)
    state = PatchState(plan, layers, pipe.scheduler, n_images, row_layers=by_layer)
    with patch_hooks(pipe, state):
        state.mode = "record"
        try:
            pipe(targets, **call_kwargs)
        except _RecordingDone:
            pass
        _restore_generator(generator, saved)
        state.mode, state.step, state.call = "replace", -1, 0
        reuse = prefix.attach(pipe, lambda step: step < plan.start_step) if prefix is not None else nullcontext()
        with reuse:
            output = pipe(prompts, **call_kwargs)
    return _result(output.images, plan, layers, state, by_layer)


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


def _result(images: Any, plan: PatchPlan, layers: list[TextLayer], state: PatchState,
            by_layer: dict[str, set[int]] | None) -> PatchResult:
    never = [layer.name for layer in layers if layer.name not in state.fired
             and (by_layer is None or by_layer[layer.name])]
    if never:
        raise PlanNeverFiredError(f"These layers were never patched during the run: {never}")
    fired = {name: sorted(steps) for name, steps in state.fired.items()}
    return PatchResult(images, plan, layers, fired)

