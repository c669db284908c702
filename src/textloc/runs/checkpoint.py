"""Pickle-free training checkpoints: one folder with ``tensors.safetensors`` and ``meta.json``.

Why: ``torch.load`` of a pickle runs arbitrary code, so a checkpoint folder someone hands you is a program.
Here every tensor (model weights, AdamW moments, EMA shadow weights, the torch RNG state) lives in a
safetensors file and everything else (step, optimizer hyper-parameters, EMA scalars, the caller's meta) in
JSON; nothing is ever unpickled, and files such as a stray ``checkpoint.pt`` are never opened.

Layout of ``tensors.safetensors``::

    {module}.{state_dict key}                 e.g. unet.conv_in.weight, text_encoder.token_codes
    optimizer.state.{param_index}.{name}      e.g. optimizer.state.3.exp_avg, optimizer.state.3.step
    ema.shadow.{i}                            diffusers EMAModel.shadow_params[i]
    rng.torch                                 torch.get_rng_state()

``meta.json`` holds ``{"format": ..., "meta": <caller's dict>, "optimizer": {"param_groups": ...,
"scalars": ...}, "ema": {decay, optimization_step, ...}, "tensors_sha256": ..., "tensors_bytes": ...}``.

Atomicity: the folder is written as ``NAME.tmp/`` (files fsync'd), the old ``NAME/`` is renamed to
``NAME.old/``, ``NAME.tmp/`` to ``NAME/``, and ``NAME.old/`` removed. A kill at any point leaves either the
old or the new checkpoint loadable (``load_checkpoint`` falls back to ``NAME.old/`` when ``NAME/`` is gone).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from textloc.errors import InputError

FORMAT = "textloc-checkpoint-v1"
TENSORS = "tensors.safetensors"
META = "meta.json"
_EMA_SCALARS = ("decay", "min_decay", "optimization_step", "update_after_step", "use_ema_warmup", "inv_gamma",
                "power")


class CheckpointError(InputError):
    """A training checkpoint is missing, truncated, corrupt or does not fit the model being resumed."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _plain(t: torch.Tensor) -> torch.Tensor:
    # safetensors refuses views that share storage; a detached contiguous copy is always safe.
    return t.detach().cpu().contiguous().clone()


def checkpoint_exists(path: str | Path) -> bool:
    """Whether ``path`` (or its ``.old`` fallback left by a kill during a save) holds a checkpoint."""
    return _resolve(Path(path)) is not None


def _resolve(path: Path) -> Path | None:
    if (path / META).exists() or (path / TENSORS).exists():
        return path
    old = path.with_name(path.name + ".old")
    if not path.exists() and ((old / META).exists() or (old / TENSORS).exists()):
        return old
    return None


def save_checkpoint(
    path: str | Path,
    *,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    ema: Any = None,
    meta: dict[str, Any],
) -> None:
    """Write a checkpoint folder at ``path`` atomically (see module docstring)."""
    from safetensors.torch import save_file

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = _plain(value)
    record: dict[str, Any] = {"format": FORMAT, "modules": sorted(modules), "meta": meta}
    if optimizer is not None:
        state = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for index, entry in state["state"].items():
            for key, value in entry.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.state.{index}.{key}"] = _plain(value)
                else:
                    scalars.setdefault(str(index), {})[key] = value
        record["optimizer"] = {"param_groups": state["param_groups"], "scalars": scalars,
                               "indices": sorted(int(i) for i in state["state"])}
    if ema is not None:
        for i, shadow in enumerate(ema.shadow_params):
            tensors[f"ema.shadow.{i}"] = _plain(shadow)
        record["ema"] = {key: getattr(ema, key) for key in _EMA_SCALARS if hasattr(ema, key)}
        record["ema"]["num_shadow"] = len(ema.shadow_params)
    tensors["rng.torch"] = torch.get_rng_state().clone()

    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(tensors, str(tmp / TENSORS), metadata={"format": FORMAT})
    _fsync_file(tmp / TENSORS)
    record["tensors_bytes"] = (tmp / TENSORS).stat().st_size
    record["tensors_sha256"] = _sha256(tmp / TENSORS)
    with (tmp / META).open("w") as handle:
        json.dump(record, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(tmp)

    old = path.with_name(path.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)


def load_checkpoint(
    path: str | Path,
    *,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    ema: Any = None,
) -> dict[str, Any]:
    """Restore ``modules`` / ``optimizer`` / ``ema`` and the torch RNG from ``path``; return the saved meta.

    Raises ``CheckpointError`` (an ``InputError``) with a one-line message for a missing, truncated or
    mismatching checkpoint. Only ``tensors.safetensors`` and ``meta.json`` are ever read.
    """
    from safetensors.torch import load_file

    given = Path(path)
    folder = _resolve(given)
    if folder is None:
        raise CheckpointError(f"No checkpoint at {given} (expected {given / META} and {given / TENSORS})")
    try:
        record = json.loads((folder / META).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"Corrupt checkpoint {folder}: cannot read {META} ({type(exc).__name__})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"Corrupt checkpoint {folder}: {META} is not a {FORMAT} record")
    tensor_file = folder / TENSORS
    if not tensor_file.exists():
        raise CheckpointError(f"Corrupt checkpoint {folder}: {TENSORS} is missing")
    size = tensor_file.stat().st_size
    if "tensors_bytes" in record and size != record["tensors_bytes"]:
        raise CheckpointError(
            f"Corrupt checkpoint {folder}: {TENSORS} has {size} bytes, expected {record['tensors_bytes']}"
            " (truncated?)"
        )
    if "tensors_sha256" in record and _sha256(tensor_file) != record["tensors_sha256"]:
        raise CheckpointError(f"Corrupt checkpoint {folder}: {TENSORS} does not match its checksum")
    try:
        tensors = load_file(str(tensor_file))
    except Exception as exc:  # safetensors raises its own SafetensorError / OSError types
        raise CheckpointError(f"Corrupt checkpoint {folder}: cannot read {TENSORS} ({exc})".splitlines()[0]) \
            from None

    try:
        for name, module in modules.items():
            prefix = f"{name}."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not state:
                raise CheckpointError(f"Checkpoint {folder} holds no weights for module {name!r}")
            module.load_state_dict(state, strict=True)
        if optimizer is not None:
            opt = record.get("optimizer")
            if opt is None:
                raise CheckpointError(f"Checkpoint {folder} holds no optimizer state")
            opt_state: dict[int, dict[str, Any]] = {}
            for index in opt["indices"]:
                entry: dict[str, Any] = dict(opt["scalars"].get(str(index), {}))
                prefix = f"optimizer.state.{index}."
                entry.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
                opt_state[int(index)] = entry
            groups = []
            for group in opt["param_groups"]:
                group = dict(group)
                if isinstance(group.get("betas"), list):
                    group["betas"] = tuple(group["betas"])
                groups.append(group)
            optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        if ema is not None:
            info = record.get("ema")
            if info is None:
                raise CheckpointError(f"Checkpoint {folder} holds no EMA state")
            if info.get("num_shadow") != len(ema.shadow_params):
                raise CheckpointError(
                    f"Checkpoint {folder} has {info.get('num_shadow')} EMA tensors, the model {len(ema.shadow_params)}"
                )
            for i, shadow in enumerate(ema.shadow_params):
                saved = tensors[f"ema.shadow.{i}"]
                if saved.shape != shadow.shape:
                    raise CheckpointError(f"Checkpoint {folder}: EMA tensor {i} has shape {tuple(saved.shape)}, "
                                          f"the model {tuple(shadow.shape)}")
                with torch.no_grad():
                    shadow.copy_(saved)
            for key in _EMA_SCALARS:
                if key in info:
                    setattr(ema, key, info[key])
    except CheckpointError:
        raise
    except (KeyError, RuntimeError, ValueError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"Checkpoint {folder} does not fit the model: {message}") from None
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"])
    return record.get("meta", {})
