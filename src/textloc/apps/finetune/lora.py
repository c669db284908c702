"""Localized LoRA: which modules get an adapter, adding it to a frozen pipeline, and saving it for diffusers.

Why: the adapter must sit on *exactly* the chosen text layers -- PEFT's ``LoraConfig(target_modules=...)``
gets full module paths (``up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k``) derived from
``core.layers``, never a substring that would also match other layers -- and the saved file must be the one
diffusers' own training scripts write, so ``pipe.load_lora_weights(out_dir)`` rebuilds it on a fresh
pipeline (rank, alpha and targets included).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from textloc.apps.finetune.config import LORA_WEIGHT_NAME, TARGETS
from textloc.core.layers import get_denoiser, list_text_layers, resolve_layers
from textloc.errors import InputError

#: Attention projections that ``target="attn"`` adapts, where a module has them: the U-Net/DiT image path
#: (``to_q``/``to_k``/``to_v``/``to_out.0``) and the MMDiT / DeepFloyd IF text path (``add_*``/``to_add_out``).
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


def resolve_layer_spec(pipe: Any, spec: str | Sequence[str | int] | None, seed: int = 0) -> list[str]:
    r"""Resolve a fine-tuning ``--layers`` value to text-layer names, in execution order.

    Args:
        pipe: the pipeline (or its denoiser).
        spec: everything ``presets.choose_layers`` takes (``preset``/``auto``, a localization ``summary.json``,
            ``all``, names or indices), plus ``all-cross-attn`` (every layer that reads text; the usual
            "LoRA on all cross-attention" baseline) and ``random-K`` (K text layers drawn with ``seed``).
        seed: seed of ``random-K``.
    """
    from textloc.models.presets import choose_layers

    layers = list_text_layers(pipe)
    if isinstance(spec, str) and spec.strip() == "all-cross-attn":
        return [layer.name for layer in layers]
    if isinstance(spec, str) and spec.strip().startswith("random-"):
        count = spec.strip().removeprefix("random-")
        if not count.isdigit() or not 1 <= int(count) <= len(layers):
            raise InputError(
                f"Expected random-K with 1 <= K <= {len(layers)} (the model's text layers), but got {spec!r}"
            )
        chosen = random.Random(seed).sample(layers, int(count))
        return [layer.name for layer in sorted(chosen, key=lambda layer: layer.index)]
    names = choose_layers(pipe, spec)
    order = {layer.name: layer.index for layer in layers}
    return sorted(names, key=order.__getitem__)


def lora_target_modules(pipe: Any, layer_names: Sequence[str], target: str = "attn") -> list[str]:
    r"""Exact module paths of the linear projections a LoRA on ``layer_names`` adapts.

    Args:
        layer_names: text-layer (attention module) names, e.g. from :func:`resolve_layer_spec`.
        target: ``"attn"``: every attention projection the module has (``ATTENTION_PROJECTIONS``);
            ``"text_kv"``: only the projections that make the text keys and values (``to_k``/``to_v`` for
            cross-attention, ``add_k_proj``/``add_v_proj`` for MMDiT joint attention and DeepFloyd IF).
    """
    if target not in TARGETS:
        raise InputError(f"Expected target in {TARGETS}, but got {target!r}")
    if not layer_names:
        raise InputError("Expected at least one layer to fine-tune, but got none")
    denoiser = get_denoiser(pipe)
    by_name = {layer.name: layer for layer in list_text_layers(denoiser)}
    modules = dict(denoiser.named_modules())
    targets: list[str] = []
    for name in layer_names:
        if name not in by_name:
            resolve_layers(denoiser, [name])  # raises UnknownLayerError listing the valid layers
        layer = by_name[name]
        projections: Sequence[str] = (
            (layer.key_proj, layer.value_proj) if target == "text_kv" else ATTENTION_PROJECTIONS
        )
        for projection in projections:
            if isinstance(modules.get(f"{name}.{projection}"), torch.nn.Linear):
                targets.append(f"{name}.{projection}")
    return targets


def add_lora(pipe: Any, layer_names: Sequence[str], *, rank: int = 4, alpha: float | None = None,
             target: str = "attn", seed: int = 0) -> Any:
    r"""Freeze the whole pipeline and add a LoRA adapter on ``layer_names`` only; returns the ``LoraConfig``.

    The adapter starts as the identity (``lora_B = 0``), with ``lora_A`` drawn from ``seed`` so that two runs
    with the same seed start from the same weights.
    """
    from peft import LoraConfig

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
    denoiser = get_denoiser(pipe)
    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), init_lora_weights="gaussian",
                        target_modules=lora_target_modules(pipe, layer_names, target))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        denoiser.add_adapter(config)
    return config


def expected_lora_parameters(pipe: Any, target_modules: Sequence[str], rank: int) -> int:
    """``rank * (in + out)`` summed over the adapted linear layers: what the adapter must add, no more."""
    modules = dict(get_denoiser(pipe).named_modules())
    total = 0
    for name in target_modules:
        module = modules[name]
        base = getattr(module, "base_layer", module)
        total += rank * (base.in_features + base.out_features)
    return total


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def parameter_share(pipe: Any) -> tuple[int, int]:
    """(trainable, total) parameters of the denoiser, the adapter included in the total."""
    denoiser = get_denoiser(pipe)
    trainable = sum(p.numel() for _, p in trainable_parameters(denoiser))
    return trainable, sum(p.numel() for p in denoiser.parameters())


def lora_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The adapter in the key format ``save_lora_weights`` expects, as diffusers' training scripts make it.

    U-Net pipelines take diffusers' own LoRA keys (``convert_state_dict_to_diffusers``, as in
    ``train_text_to_image_lora.py``); transformer pipelines (SD3) take PEFT's keys as they are (as in
    ``train_dreambooth_lora_sd3.py``) -- converting those would rename only some projections.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(get_denoiser(pipe))
    if getattr(pipe, "unet", None) is not None:
        state = convert_state_dict_to_diffusers(state)
    return {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in state.items()}


def save_lora(pipe: Any, out_dir: str | Path, lora_config: Any) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` atomically with the pipeline class's ``save_lora_weights``.

    The adapter's config (rank, alpha, targets) goes into the file's metadata, so a fresh pipeline's
    ``load_lora_weights`` rebuilds it exactly, alpha included.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    attr = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    config = lora_config.to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    tmp = Path(tempfile.mkdtemp(prefix=".lora-", dir=out))
    try:
        type(pipe).save_lora_weights(tmp, **{f"{attr}_lora_layers": lora_state_dict(pipe),
                                             f"{attr}_lora_adapter_metadata": config})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp / LORA_WEIGHT_NAME, 0o666 & ~umask)  # the temp dir's private mode is not wanted here
        os.replace(tmp / LORA_WEIGHT_NAME, out / LORA_WEIGHT_NAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / LORA_WEIGHT_NAME


def load_lora_pipeline(model: str, lora_dir: str | Path) -> Any:
    """``load_pipeline(model)`` with the LoRA in ``lora_dir`` loaded (diffusers' ``load_lora_weights``)."""
    from textloc.models.loading import load_pipeline

    path = Path(lora_dir)
    if not (path / LORA_WEIGHT_NAME).exists() and not path.is_file():
        raise InputError(f"Expected {LORA_WEIGHT_NAME} in {path}, but it is not there")
    pipe = load_pipeline(model)
    pipe.load_lora_weights(str(path))
    return pipe
