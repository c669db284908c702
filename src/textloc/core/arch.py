"""Architecture registry: per denoiser class, how to recognise the attention layers that read text.

One table, ``ARCHITECTURES``, keyed by the denoiser's class name (the pattern of diffusers'
``hooks/_helpers.py``): for each class, how to recognise a text-reading attention module, which projections
make its text keys and values, and dummy inputs for the one forward pass that finds execution order. Adding a
family means one ``Architecture`` entry here. ``textloc.core.layers`` builds the layer table from it.

Text K/V are *static* when they are a function of the prompt only (U-Net cross-attention, IF's added K/V:
patching injects the target prompt's embeddings) and *dynamic* when the text tokens evolve block to block
(MMDiT joint attention, FLUX single-stream: K/V come from the target prompt's own run).

The dummy inputs are built on the denoiser's own device and dtype, so the trace also runs on the ``meta``
device (a denoiser built from a config.json alone, with no weights: ``textloc layers --config``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from textloc.errors import UnsupportedModelError

CROSS_ATTENTION = "cross_attention"  # U-Net / DiT cross-attention: K/V = to_k/to_v(text embeddings)
ADDED_KV = "added_kv"  # DeepFloyd IF: image self-attention plus text K/V from add_k_proj/add_v_proj
JOINT_ATTENTION = "joint_attention"  # MMDiT (SD3, FLUX double-stream): text K/V from add_k_proj/add_v_proj
SINGLE_STREAM = "single_stream"  # FLUX single-stream: text is the first tokens of one sequence (to_k/to_v)
STATIC_KINDS = frozenset({CROSS_ATTENTION, ADDED_KV})


@dataclass(frozen=True)
class Architecture:
    """How one denoiser class takes text."""

    family: str
    classify: Callable[[str, nn.Module], str | None]
    dummy_inputs: Callable[[nn.Module], tuple[tuple, dict]]
    pooled_kwarg: str | None = None  # where the pooled text embedding enters, for `pooled=True` plans


def _has(module: nn.Module, *names: str) -> bool:
    return all(getattr(module, n, None) is not None for n in names)


def _classify_unet(name: str, module: nn.Module) -> str | None:
    if not _has(module, "to_q", "heads"):
        return None
    if _has(module, "add_k_proj", "add_v_proj"):
        return ADDED_KV
    if getattr(module, "is_cross_attention", False) and name.endswith("attn2"):
        return CROSS_ATTENTION
    return None


def _classify_dit_cross(name: str, module: nn.Module) -> str | None:
    if _has(module, "to_k", "heads") and getattr(module, "is_cross_attention", False) and name.endswith("attn2"):
        return CROSS_ATTENTION
    return None


def _classify_sd3(name: str, module: nn.Module) -> str | None:
    # SD3.5's dual-attention blocks also have an `attn2`, but it is image self-attention (no add_k_proj).
    if name.startswith("transformer_blocks.") and name.endswith(".attn") and _has(module, "add_k_proj"):
        return JOINT_ATTENTION
    return None


def _classify_flux(name: str, module: nn.Module) -> str | None:
    if name.startswith("transformer_blocks.") and name.endswith(".attn") and _has(module, "add_k_proj"):
        return JOINT_ATTENTION
    if name.startswith("single_transformer_blocks.") and name.endswith(".attn") and _has(module, "to_k"):
        return SINGLE_STREAM
    return None


def _param(model: nn.Module) -> torch.Tensor:
    """Any parameter: the dummy inputs take its device (``meta`` included) and dtype."""
    return next(model.parameters())


def _unet_inputs(model: nn.Module) -> tuple[tuple, dict]:
    cfg = model.config
    p = _param(model)
    size = 2 ** len(cfg.down_block_types)
    sample_size = cfg.sample_size
    if isinstance(sample_size, (list, tuple)):
        h, w = sample_size
        scale = 2 ** (len(cfg.down_block_types) - 1)
        if h % scale == 0 and w % scale == 0 and h * w <= 4096:
            size = (h, w)
    hw = size if isinstance(size, tuple) else (size, size)
    text_dim = cfg.encoder_hid_dim or cfg.cross_attention_dim
    if isinstance(text_dim, (list, tuple)):
        text_dim = text_dim[0]
    kwargs: dict[str, Any] = {
        "encoder_hidden_states": torch.zeros(1, 4, text_dim, dtype=p.dtype, device=p.device),
    }
    if cfg.addition_embed_type == "text_time":
        time_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(1, time_dim, dtype=p.dtype, device=p.device),
            "time_ids": torch.zeros(1, 6, dtype=p.dtype, device=p.device),
        }
    if cfg.class_embed_type is not None:
        kwargs["class_labels"] = torch.zeros(1, dtype=torch.long, device=p.device)
    sample = torch.zeros(1, cfg.in_channels, *hw, dtype=p.dtype, device=p.device)
    return (sample, torch.tensor([1], device=p.device)), kwargs


def _sd3_inputs(model: nn.Module) -> tuple[tuple, dict]:
    cfg = model.config
    p = _param(model)
    s = cfg.patch_size * 2
    return (), {
        "hidden_states": torch.zeros(1, cfg.in_channels, s, s, dtype=p.dtype, device=p.device),
        "encoder_hidden_states": torch.zeros(1, 4, cfg.joint_attention_dim, dtype=p.dtype, device=p.device),
        "pooled_projections": torch.zeros(1, cfg.pooled_projection_dim, dtype=p.dtype, device=p.device),
        "timestep": torch.tensor([1], device=p.device),
    }


def _flux_inputs(model: nn.Module) -> tuple[tuple, dict]:
    cfg = model.config
    p = _param(model)
    kwargs: dict[str, Any] = {
        "hidden_states": torch.zeros(1, 4, cfg.in_channels, dtype=p.dtype, device=p.device),
        "encoder_hidden_states": torch.zeros(1, 3, cfg.joint_attention_dim, dtype=p.dtype, device=p.device),
        "pooled_projections": torch.zeros(1, cfg.pooled_projection_dim, dtype=p.dtype, device=p.device),
        "timestep": torch.tensor([0.5], dtype=p.dtype, device=p.device),
        "img_ids": torch.zeros(4, 3, dtype=p.dtype, device=p.device),
        "txt_ids": torch.zeros(3, 3, dtype=p.dtype, device=p.device),
    }
    if cfg.guidance_embeds:
        kwargs["guidance"] = torch.tensor([1.0], dtype=p.dtype, device=p.device)
    return (), kwargs


def _pixart_inputs(model: nn.Module) -> tuple[tuple, dict]:
    cfg = model.config
    p = _param(model)
    s = cfg.patch_size * 2
    kwargs: dict[str, Any] = {
        "hidden_states": torch.zeros(1, cfg.in_channels, s, s, dtype=p.dtype, device=p.device),
        "encoder_hidden_states": torch.zeros(1, 4, cfg.caption_channels, dtype=p.dtype, device=p.device),
        "timestep": torch.tensor([1], device=p.device),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }
    if getattr(model, "use_additional_conditions", False):
        kwargs["added_cond_kwargs"] = {
            "resolution": torch.tensor([[s * 8, s * 8]], dtype=p.dtype, device=p.device),
            "aspect_ratio": torch.tensor([[1.0]], dtype=p.dtype, device=p.device),
        }
    return (), kwargs


def _sana_inputs(model: nn.Module) -> tuple[tuple, dict]:
    cfg = model.config
    p = _param(model)
    s = cfg.patch_size * 2
    return (), {
        "hidden_states": torch.zeros(1, cfg.in_channels, s, s, dtype=p.dtype, device=p.device),
        "encoder_hidden_states": torch.zeros(1, 4, cfg.caption_channels, dtype=p.dtype, device=p.device),
        "timestep": torch.tensor([1], device=p.device),
    }


ARCHITECTURES: dict[str, Architecture] = {
    "UNet2DConditionModel": Architecture("unet", _classify_unet, _unet_inputs, pooled_kwarg="text_embeds"),
    "SD3Transformer2DModel": Architecture("mmdit", _classify_sd3, _sd3_inputs, "pooled_projections"),
    "FluxTransformer2DModel": Architecture("mmdit", _classify_flux, _flux_inputs, "pooled_projections"),
    "PixArtTransformer2DModel": Architecture("dit", _classify_dit_cross, _pixart_inputs),
    "SanaTransformer2DModel": Architecture("dit", _classify_dit_cross, _sana_inputs),
}

#: Pipelines families that textloc covers (for messages).
SUPPORTED_FAMILIES = (
    "SD 1.x/2.x, SDXL and DeepFloyd IF (UNet2DConditionModel), SD3/SD3.5 (SD3Transformer2DModel), "
    "FLUX.1 (FluxTransformer2DModel), PixArt-α/Σ (PixArtTransformer2DModel), Sana (SanaTransformer2DModel), "
    "and textloc's embedded model"
)


def architecture_of(denoiser: nn.Module) -> Architecture:
    """The registry entry for ``denoiser``'s class; ``UnsupportedModelError`` naming what is supported."""
    name = type(denoiser).__name__
    if name not in ARCHITECTURES:
        raise UnsupportedModelError(f"{name} is not supported; textloc supports {SUPPORTED_FAMILIES}")
    return ARCHITECTURES[name]
