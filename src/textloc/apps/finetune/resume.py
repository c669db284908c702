"""Resumable training state of a LoRA run: saved and restored through ``textloc.runs.checkpoint``.

Why: ``--resume`` used to ``torch.load`` ``OUT/checkpoint.pt``, a pickle, and unpickling runs arbitrary
code -- a run folder someone hands you was a program. The state now lives in a checkpoint *folder*
(``OUT/checkpoint/``: ``tensors.safetensors`` + ``meta.json``) holding the adapter's weights, the AdamW
state, the step, the settings it was made with and the RNG states. Nothing is ever unpickled; a
``checkpoint.pt`` left by an older version (or planted) is never opened, only mentioned in the log.

A resumed run must have been made with the same settings (``FinetuneConfig.resume_key`` plus model, layers
and data); that is checked against the checkpoint's own record before the pipeline is touched.
"""

from __future__ import annotations

import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from textloc.apps.finetune.config import CHECKPOINT_NAME, LEGACY_CHECKPOINT_NAME
from textloc.apps.finetune.lora import trainable_parameters
from textloc.errors import InputError
from textloc.runs.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint

logger = logging.getLogger(__name__)

#: the module name of the adapter's weights inside the checkpoint
LORA_MODULE = "lora"


def lora_module(denoiser: torch.nn.Module) -> torch.nn.Module:
    """The adapter's parameters as one module, sharing the denoiser's ``Parameter`` objects.

    Why: ``save_checkpoint`` / ``load_checkpoint`` take modules; the full denoiser would store every frozen
    base weight (gigabytes for a real model) when only the adapter changes. Loading copies into these very
    parameters, so the optimizer keeps pointing at the right tensors. Module names cannot hold dots, so
    ``a.b.lora_A.default.weight`` is stored as ``a:b:lora_A:default:weight``.
    """
    return torch.nn.ParameterDict({name.replace(".", ":"): p for name, p in trainable_parameters(denoiser)})


def _rng_meta() -> dict[str, Any]:
    """Python, NumPy and CUDA RNG states as JSON (``save_checkpoint`` stores torch's own CPU RNG)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {"python": [version, list(mt), gauss],
                             "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_meta(state: dict[str, Any]) -> None:
    if "python" in state:
        version, mt, gauss = state["python"]
        random.setstate((version, tuple(mt), gauss))
    if "numpy" in state:
        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def read_checkpoint_meta(out: Path, run_key: dict[str, Any], steps: int) -> dict[str, Any] | None:
    """The record of ``out/checkpoint/`` if there is one, after checking it fits this run; ``None`` if none.

    The whole checkpoint is read and verified (size, checksum) here, before the pipeline is touched, so a
    corrupt one stops the run with one line. Only the safetensors + JSON checkpoint is considered.
    """
    legacy = out / LEGACY_CHECKPOINT_NAME
    if legacy.exists():
        logger.warning("ignoring %s: pickle checkpoints (older textloc versions) are never loaded", legacy)
    path = out / CHECKPOINT_NAME
    if not checkpoint_exists(path):
        return None
    with torch.random.fork_rng(devices=[]):  # load_checkpoint restores the RNG; that waits for apply
        meta = load_checkpoint(path, modules={})
    step = int(meta.get("step", 0))
    if step > steps:
        raise InputError(
            f"Expected --steps >= {step} (the checkpoint in {out} is at step {step}), but got "
            f"{steps}; pass --no-resume to start over"
        )
    saved = meta.get("run", {})
    changed = sorted(k for k in set(saved) | set(run_key) if saved.get(k) != run_key.get(k))
    if "layers" in changed and "target_modules" in changed:
        changed.remove("target_modules")  # follows from the layers; listing both only repeats them
    if changed:
        raise InputError(
            f"Expected the settings of the checkpoint in {out} ({', '.join(f'{k}={saved.get(k)!r}' for k in changed)})"
            f", but got {', '.join(f'{k}={run_key.get(k)!r}' for k in changed)}; pass --no-resume or another --out"
        )
    return meta


def restore(out: Path, denoiser: torch.nn.Module, optimizer: Any) -> int:
    """Restore the adapter, the optimizer and every RNG from ``out/checkpoint/``; returns the step to continue."""
    meta = load_checkpoint(out / CHECKPOINT_NAME, modules={LORA_MODULE: lora_module(denoiser)}, optimizer=optimizer)
    _set_rng_meta(meta.get("rng", {}))
    logger.info("resuming from step %d", meta["step"])
    return int(meta["step"])


def save(out: Path, denoiser: torch.nn.Module, optimizer: Any, step: int, run_key: dict[str, Any]) -> None:
    """Write ``out/checkpoint/`` atomically (a kill during the save leaves the previous one loadable)."""
    save_checkpoint(out / CHECKPOINT_NAME, modules={LORA_MODULE: lora_module(denoiser)}, optimizer=optimizer,
                    meta={"step": step, "run": run_key, "rng": _rng_meta()})


def discard(out: Path) -> None:
    """Forget a previous run's training state (``--no-resume``): the checkpoint and its temp/old copies."""
    for name in (CHECKPOINT_NAME, f"{CHECKPOINT_NAME}.tmp", f"{CHECKPOINT_NAME}.old"):
        shutil.rmtree(out / name, ignore_errors=True)
