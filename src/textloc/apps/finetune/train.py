"""Localized LoRA fine-tuning: train low-rank adapters on only the attention layers that decide rendered text.

Why
---
The paper's point is that a handful of attention layers decide *what text* a diffusion model renders. If so,
a LoRA restricted to those layers should fix text rendering about as well as a LoRA on every cross-attention
layer, with a fraction of the trainable parameters, less memory and faster steps -- and leave everything else
(backgrounds, colours, composition) alone. :func:`finetune` trains such an adapter; ``bench.py`` tests it.

How (one concept per file of this package)
-------------------------------------------
* ``lora.py``: the layers (``--layers``) -> exact PEFT ``target_modules``; the frozen pipeline gets the
  adapter; the diffusers-format file that ``pipe.load_lora_weights(out_dir)`` reads back.
* ``data.py``: ``batch(step, batch_size, size)`` over a model's renderer, image folders and JSONL files.
* ``objectives.py``: the model's own loss (its profile's training recipe, or its diffusers family's).
* ``resume.py``: the pickle-free checkpoint (``textloc.runs.checkpoint``) and what must match on resume.
* ``measure.py``: peak memory and autograd-saved activation bytes.
* this file: the run folder (``textloc.runs.folder.RunFolder``: lock, config + input fingerprint, fsync'd
  log) and the step loop under ``accelerate`` (device placement, mixed precision, gradient sync), so the same
  code runs under ``accelerate launch``; files are written by the main process only.

Outputs in ``out_dir``: ``pytorch_lora_weights.safetensors``, ``checkpoint/`` (adapter, optimizer, step, RNG),
``config.json``, ``log.jsonl``, ``samples/step_NNNNNN.png`` and ``finetune_summary.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from textloc.apps.finetune import resume as state
from textloc.apps.finetune.config import LOG_NAME, LORA_WEIGHT_NAME, SUMMARY_NAME, FinetuneConfig, FinetuneResult
from textloc.apps.finetune.data import TrainingData, load_data
from textloc.apps.finetune.lora import (
    add_lora,
    lora_target_modules,
    parameter_share,
    resolve_layer_spec,
    save_lora,
    trainable_parameters,
)
from textloc.apps.finetune.measure import PeakMemory, SavedTensorMeter
from textloc.apps.finetune.objectives import Objective, objective_for
from textloc.core.layers import get_denoiser, model_fingerprint
from textloc.errors import InputError
from textloc.runs.folder import CONFIG_NAME, LOCK_NAME, RunFolder
from textloc.runs.grids import auto_scale, chunk, image_grid

try:  # POSIX only; elsewhere the folder is not locked (as in runs.folder)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

COMMAND = "finetune"


def finetune(
    pipe: Any,
    layers: str | Sequence[str | int],
    data: str | TrainingData,
    out_dir: str | Path,
    *,
    rank: int = 4,
    alpha: float | None = None,
    lr: float = 1e-4,
    steps: int = 500,
    batch_size: int = 8,
    mixed_precision: str = "no",
    resume: bool = True,
    seed: int = 0,
    checkpoint_every: int = 100,
    sample_every: int = 250,
    target: str = "attn",
    caption_dropout: float = 0.1,
    sample_steps: int = 20,
    device: str | None = None,
    progress: bool = True,
) -> FinetuneResult:
    r"""Train a LoRA on the chosen text layers of ``pipe`` (in place) and save it in diffusers' format.

    Args:
        pipe: a supported pipeline (see ``objectives.objective_for``); it is frozen, gets the adapter, and is
            left with it (trained) on return.
        layers: a ``--layers`` value for :func:`resolve_layer_spec` or explicit layer names / indices.
        data: a ``--data`` value for :func:`load_data` or a ``TrainingData``.
        out_dir: run folder: LoRA file, ``checkpoint/``, ``config.json``, ``log.jsonl``, ``samples/``, summary.
        rank, alpha: LoRA rank and alpha (default alpha = rank).
        lr: AdamW learning rate (constant, so resuming with a larger ``steps`` continues the same run).
        steps: total optimizer steps of the run (not of this call).
        resume: continue from ``out_dir/checkpoint/`` if present (settings and data must match); ``False``
            starts over. A pickle ``checkpoint.pt`` is never loaded.
        seed: seeds the adapter init, the data order, noise and timesteps, and ``random-K`` layers.
        checkpoint_every, sample_every: cadence in steps (0: checkpoint only at the end / no sample grids).
        target: ``"attn"`` (all attention projections of the layers) or ``"text_kv"`` (text K/V only).
        caption_dropout: fraction of prompts replaced by ``""`` (keeps classifier-free guidance working).
        sample_steps: denoising steps of the progress sample grids.
        device: ``"cpu"`` forces the CPU; default lets accelerate choose.

    Returns:
        A :class:`FinetuneResult`.
    """
    # 1. Validate everything before anything is written or the pipeline is touched.
    config = FinetuneConfig(rank=rank, alpha=alpha, lr=lr, steps=steps, batch_size=batch_size,
                            mixed_precision=mixed_precision, seed=seed, target=target,
                            checkpoint_every=checkpoint_every, sample_every=sample_every,
                            caption_dropout=caption_dropout, sample_steps=sample_steps)
    out = Path(out_dir)
    objective = objective_for(pipe)
    layer_names = resolve_layer_spec(pipe, layers if isinstance(layers, str) else list(layers), seed)
    dataset = load_data(data, seed)
    denoiser = get_denoiser(pipe)
    if getattr(denoiser, "peft_config", None):
        raise InputError(
            f"Expected a pipeline without LoRA adapters, but its {type(denoiser).__name__} already has "
            f"{sorted(denoiser.peft_config)}; load a fresh pipeline"
        )
    targets = sorted(lora_target_modules(pipe, layer_names, config.target))
    run_key = {"model": model_fingerprint(pipe), "layers": layer_names, "target_modules": targets,
               "data": dataset.describe(), **config.resume_key()}
    accelerator = _make_accelerator(config.mixed_precision, None if device is None else device == "cpu")
    main = accelerator.is_main_process

    # 2. The run folder: a fresh start forgets the previous run's state; a resume must match it.
    if main and not resume:
        _start_over(out)
    # A damaged or mismatched checkpoint stops the run here, before the run folder writes anything.
    meta = state.read_checkpoint_meta(out, run_key, config.steps) if resume else None
    folder = RunFolder(out, command=COMMAND, config=run_key, inputs=dataset.inputs) if main else None
    with folder if folder is not None else contextlib.nullcontext():
        accelerator.wait_for_everyone()
        if main:
            logger.info("data: %s", dataset.report.summary())
            if meta is None:  # nothing to resume: a log or state left by a run killed before its first save
                state.discard(out)
                (out / LOG_NAME).unlink(missing_ok=True)

        # 3. Adapter, placement, optimizer; restore the checkpoint.
        lora_config = add_lora(pipe, layer_names, rank=config.rank, alpha=config.alpha, target=config.target,
                               seed=config.seed)
        _place(pipe, accelerator)
        params = [p for _, p in trainable_parameters(denoiser)]
        optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        model, optimizer = accelerator.prepare(denoiser, optimizer)
        start = 0
        if meta is not None:
            start = state.restore(out, denoiser, optimizer)
            if folder is not None:
                _truncate_log(folder, start)

        # 4. Train.
        loop = _TrainingLoop(config, objective, model, optimizer, accelerator, dataset, params, out, run_key,
                             folder)
        with PeakMemory(accelerator.device) as memory:
            loop.run(start, progress)
        trainable, total = parameter_share(pipe)
        result = FinetuneResult(
            out_dir=out, lora_path=out / LORA_WEIGHT_NAME, layers=layer_names, target_modules=targets,
            steps=config.steps, resumed_from=start, trainable_params=trainable, denoiser_params=total,
            final_loss=loop.loss,
            step_time_s=float(np.median(loop.step_times[1:] or loop.step_times)) if loop.step_times else None,
            peak_memory_bytes=memory.peak_bytes, activation_bytes=loop.activation_bytes,
            data=dataset.report.to_dict(),
        )
        if folder is not None:
            save_lora(pipe, out, lora_config)
            folder.write_json(SUMMARY_NAME, result.to_dict())
    model.eval()
    return result


def _start_over(out: Path) -> None:
    """``--no-resume``: forget the previous run's settings, state and log (its other outputs are overwritten).

    Done under the run folder's lock, so a live run in the same folder is refused, never robbed of its state.
    """
    if not out.is_dir():
        return
    if fcntl is None:  # pragma: no cover
        state.discard(out)
        for name in (CONFIG_NAME, LOG_NAME):
            (out / name).unlink(missing_ok=True)
        return
    with (out / LOCK_NAME).open("a") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # released when the handle closes
        except OSError:
            raise InputError(f"{out} is in use by another textloc process; wait for it to finish or use "
                             "another --out folder") from None
        state.discard(out)
        for name in (CONFIG_NAME, LOG_NAME):
            (out / name).unlink(missing_ok=True)


def _truncate_log(folder: RunFolder, last_step: int) -> None:
    """Drop log records written after the checkpoint a run resumes from (a killed run logged past it)."""
    kept = [r for r in folder.records(LOG_NAME) if r.get("step", 0) <= last_step]
    folder.write_text(LOG_NAME, "".join(json.dumps(r) + "\n" for r in kept))


def _make_accelerator(mixed_precision: str, cpu: bool | None) -> Any:
    """An ``Accelerator``; in a single process, a second run with other settings resets accelerate's singleton.

    accelerate keeps one process-wide ``AcceleratorState`` and refuses a new mixed-precision or device setting;
    a notebook or benchmark that trains twice with different settings would otherwise have to restart Python.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    kwargs: dict[str, Any] = {"mixed_precision": mixed_precision}
    if cpu is not None:
        kwargs["cpu"] = cpu
    try:
        return Accelerator(**kwargs)
    except ValueError as err:
        if "already been initialized" not in str(err) or PartialState().num_processes > 1:
            raise InputError(f"Expected settings that match this accelerate launch, but got {err}") from None
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


def _modules(pipe: Any) -> list[torch.nn.Module]:
    return [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]


def _place(pipe: Any, accelerator: Any) -> None:
    """Move the pipeline to the accelerator's device; under mixed precision cast frozen weights down.

    As in diffusers' LoRA scripts, the frozen weights use the half dtype and only the adapter stays in
    float32 (AdamW on half-precision weights loses small updates).
    """
    from diffusers.training_utils import cast_training_params

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for component in _modules(pipe):
        component.to(accelerator.device)
        if dtype != torch.float32:
            component.to(dtype=dtype)
    if dtype != torch.float32:
        cast_training_params(get_denoiser(pipe), dtype=torch.float32)


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Noise, timesteps and caption dropout of one step: a function of (seed, step, process) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 8191 + rank)


@dataclass
class _TrainingLoop:
    """The step loop of :func:`finetune`: train, log, checkpoint and sample on the configured cadence."""

    config: FinetuneConfig
    objective: Objective
    model: torch.nn.Module
    optimizer: Any
    accelerator: Any
    dataset: TrainingData
    params: list[torch.nn.Parameter]
    out: Path
    run_key: dict[str, Any]
    folder: RunFolder | None  # the main process's run folder (None on the other processes)
    step_times: list[float] = field(default_factory=list)
    loss: float | None = None
    activation_bytes: int | None = None

    def run(self, start: int, progress: bool) -> None:
        steps = self.config.steps
        bar = tqdm(total=steps, initial=min(start, steps), desc="finetune", dynamic_ncols=True,
                   disable=not (progress and self.folder is not None))
        if start == 0:
            self._log({"step": 0, "event": "start", "data": self.dataset.report.to_dict(),
                       "layers": self.run_key["layers"]})
        self.model.train()
        for step in range(start, steps):
            self._step(step, measure=step == start)  # activations are measured on one step per call
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{self.loss:.4f}")
            self._log({"step": done, "loss": self.loss, "lr": self.config.lr, "step_time_s": self.step_times[-1],
                       "time": time.time()})
            if (self.config.checkpoint_every and done % self.config.checkpoint_every == 0) or done == steps:
                self._checkpoint(done)
            if self.folder is not None and self.config.sample_every and done % self.config.sample_every == 0:
                self._sample(f"samples/step_{done:06d}.png")
        bar.close()
        self.accelerator.wait_for_everyone()

    def _step(self, step: int, measure: bool) -> None:
        meter = SavedTensorMeter(_modules(self.objective.pipe)) if measure else None
        began = time.perf_counter()
        self.loss = self._train_step(step, meter)
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        self.step_times.append(time.perf_counter() - began)
        if meter is not None:
            self.activation_bytes = meter.bytes

    def _train_step(self, step: int, meter: SavedTensorMeter | None) -> float:
        config, accelerator = self.config, self.accelerator
        rank = accelerator.process_index
        prompts, images = self.dataset.batch(step, config.batch_size, self.objective.image_size,
                                             crop=self.objective.crop_images, rank=rank,
                                             world=accelerator.num_processes)
        generator = _step_generator(config.seed, step, rank)
        drop = torch.rand(len(prompts), generator=generator) < config.caption_dropout
        prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
        with accelerator.autocast(), meter if meter is not None else contextlib.nullcontext():
            loss = self.objective.loss(self.model, prompts, images, generator)
        self.optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if accelerator.sync_gradients and config.grad_clip:
            accelerator.clip_grad_norm_(self.params, config.grad_clip)
        self.optimizer.step()
        return float(accelerator.gather(loss.detach()[None]).mean())

    def _log(self, record: dict[str, Any]) -> None:
        if self.folder is not None:
            self.folder.append(record, name=LOG_NAME)

    def _checkpoint(self, done: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.folder is not None:
            state.save(self.out, get_denoiser(self.objective.pipe), self.optimizer, done, self.run_key)

    def _sample(self, name: str) -> None:
        pipe = self.objective.pipe
        progress = dict(getattr(pipe, "_progress_bar_config", {}))
        pipe.set_progress_bar_config(disable=True)  # one bar (training) at a time
        self.model.eval()
        try:
            images = self.objective.sample(self.dataset.sample_prompts(8), seed=self.config.seed,
                                           steps=self.config.sample_steps)
            if images:
                self.folder.save_image(name, image_grid(chunk(images, 4), scale=auto_scale(images, 128)))
        finally:
            self.model.train()
            pipe.set_progress_bar_config(**progress)
