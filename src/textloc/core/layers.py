"""Layer registry: which attention layers of a denoiser read text, in execution order.

Architecture facts live in one table, ``ARCHITECTURES``, keyed by the denoiser's class name (the pattern of
diffusers' ``hooks/_helpers.py``): how to recognise a text-reading attention module, which projections make
its text keys and values, and whether those K/V are *static* (a function of the prompt only, as in U-Net
cross-attention, where patching means injecting the target prompt's embeddings) or *dynamic* (the text
tokens evolve block to block, as in MMDiT, where one must take K/V from the target prompt's own run).

Execution order is found by tracing one forward pass of the denoiser on tiny dummy inputs with pre-hooks on
every candidate module -- never by sorting names: a U-Net registers ``up_blocks`` before ``mid_block``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from textloc.errors import UnknownLayerError, UnsupportedModelError

CROSS_ATTENTION = "cross_attention"  # U-Net / DiT cross-attention: K/V = to_k/to_v(text embeddings)
ADDED_KV = "added_kv"  # DeepFloyd IF: image self-attention plus text K/V from add_k_proj/add_v_proj
JOINT_ATTENTION = "joint_attention"  # MMDiT (SD3, FLUX double-stream): text K/V from add_k_proj/add_v_proj
SINGLE_STREAM = "single_stream"  # FLUX single-stream: text is the first tokens of one sequence (to_k/to_v)
STATIC_KINDS = frozenset({CROSS_ATTENTION, ADDED_KV})


@dataclass(frozen=True)
class TextLayer:
    """One attention layer that receives text."""

    index: int
    name: str
    kind: str
    key_proj: str
    value_proj: str
    text_kv_params: int
    params: int
    share: float

    @property
    def static(self) -> bool:
        """Static text K/V depend on the prompt only, so one target forward pass gives every step's."""
        return self.kind in STATIC_KINDS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


def get_denoiser(model: Any) -> nn.Module:
    """The denoiser of a pipeline (``unet`` or ``transformer``), or ``model`` itself if it is one."""
    for attr in ("unet", "transformer"):
        denoiser = getattr(model, attr, None)
        if isinstance(denoiser, nn.Module):
            return denoiser
    if isinstance(model, nn.Module):
        return model
    raise UnsupportedModelError(
        f"Expected a diffusers pipeline with a `unet` or `transformer`, but got {type(model).__name__}"
    )


def architecture_of(denoiser: nn.Module) -> Architecture:
    name = type(denoiser).__name__
    if name not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"{name} is not supported; textloc supports {SUPPORTED_FAMILIES}"
        )
    return ARCHITECTURES[name]


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _trace_order(denoiser: nn.Module, names: list[str]) -> list[str]:
    """Module names in the order one forward pass first calls them."""
    order: list[str] = []
    handles = []
    modules = dict(denoiser.named_modules())
    for name in names:
        def hook(_module: nn.Module, _args: Any, _name: str = name) -> None:
            if _name not in order:
                order.append(_name)

        handles.append(modules[name].register_forward_pre_hook(hook))
    args, kwargs = architecture_of(denoiser).dummy_inputs(denoiser)
    try:
        with torch.no_grad():
            denoiser(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    missing = [n for n in names if n not in order]
    return order + missing  # layers a dummy pass skipped keep their registration order at the end


_CACHE_ATTR = "_textloc_text_layers"


def list_text_layers(model: Any) -> list[TextLayer]:
    r"""Every attention layer of ``model``'s denoiser that receives text, in execution order.

    Args:
        model: a diffusers pipeline, or its denoiser (``UNet2DConditionModel``, ``SD3Transformer2DModel``,
            ``FluxTransformer2DModel``, ``PixArtTransformer2DModel``, ``SanaTransformer2DModel``).

    The result is cached on the denoiser (the trace costs one forward pass).
    """
    denoiser = get_denoiser(model)
    cached = getattr(denoiser, _CACHE_ATTR, None)
    if cached is not None:
        return cached
    arch = architecture_of(denoiser)
    kinds: dict[str, str] = {}
    modules = dict(denoiser.named_modules())
    for name, module in modules.items():
        kind = arch.classify(name, module)
        if kind is not None:
            kinds[name] = kind
    if not kinds:
        raise UnsupportedModelError(f"{type(denoiser).__name__} has no attention layer that reads text")
    for name in kinds:
        if getattr(modules[name], "fused_projections", False):
            raise UnsupportedModelError(
                f"{name} has fused QKV projections; call `unfuse_qkv_projections()` before using textloc"
            )
    total = _count(denoiser)
    layers = []
    for index, name in enumerate(_trace_order(denoiser, list(kinds))):
        module, kind = modules[name], kinds[name]
        key, value = ("add_k_proj", "add_v_proj") if kind in (ADDED_KV, JOINT_ATTENTION) else ("to_k", "to_v")
        kv = _count(getattr(module, key)) + _count(getattr(module, value))
        params = _count(module)
        layers.append(TextLayer(index, name, kind, key, value, kv, params, params / total))
    setattr(denoiser, _CACHE_ATTR, layers)
    return layers


def model_fingerprint(model: Any) -> str:
    """``Class:n_layers:hash`` of the text-layer names: plans and presets check it before applying."""
    layers = list_text_layers(model)
    digest = hashlib.sha1(json.dumps([(layer.name, layer.kind) for layer in layers]).encode()).hexdigest()[:12]
    return f"{type(get_denoiser(model)).__name__}:{len(layers)}:{digest}"


def resolve_layers(model: Any, refs: list[str | int]) -> list[TextLayer]:
    """Turn layer names or execution-order indices into ``TextLayer`` entries (order kept, no duplicates)."""
    layers = list_text_layers(model)
    by_name = {layer.name: layer for layer in layers}
    resolved: list[TextLayer] = []
    for ref in refs:
        layer = None
        if isinstance(ref, int) or (isinstance(ref, str) and ref.lstrip("-").isdigit()):
            i = int(ref)
            if 0 <= i < len(layers):
                layer = layers[i]
        elif isinstance(ref, str):
            layer = by_name.get(ref.removesuffix(".processor"))
        if layer is None:
            valid = ", ".join(f"{layer.index}={layer.name}" for layer in layers)
            raise UnknownLayerError(f"Unknown text layer {ref!r}; valid layers (index=name): {valid}")
        if layer not in resolved:
            resolved.append(layer)
    return resolved
