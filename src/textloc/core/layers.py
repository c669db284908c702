"""Layer table: which attention layers of a denoiser read text, in execution order, and its fingerprint.

Per-class facts (how a text-reading module looks, which projections make its text K/V, dummy inputs) live in
``textloc.core.arch.ARCHITECTURES``; this module turns them into the ``TextLayer`` table every application
uses, and into ``model_fingerprint``, the string plans, localizations and presets are checked against.

Execution order is found by tracing one forward pass of the denoiser on tiny dummy inputs with named hooks on
every candidate module -- never by sorting names: a U-Net registers ``up_blocks`` before ``mid_block``. The
trace also runs on the ``meta`` device, so the table of a model can be read from its config.json alone.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import weakref
from dataclasses import asdict, dataclass
from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from textloc.core.arch import (
    ADDED_KV,
    ARCHITECTURES,
    CROSS_ATTENTION,
    JOINT_ATTENTION,
    SINGLE_STREAM,
    STATIC_KINDS,
    SUPPORTED_FAMILIES,
    Architecture,
    architecture_of,
)
from textloc.core.hooks import attach_hooks
from textloc.errors import UnknownLayerError, UnsupportedModelError

__all__ = [
    "ADDED_KV", "ARCHITECTURES", "CROSS_ATTENTION", "JOINT_ATTENTION", "SINGLE_STREAM", "STATIC_KINDS",
    "SUPPORTED_FAMILIES", "Architecture", "TextLayer", "architecture_of", "denoiser_config", "get_denoiser",
    "list_text_layers", "model_fingerprint", "resolve_layers",
]


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


TRACE_HOOK = "textloc.layers.trace"


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class _FirstCall(ModelHook):
    """Notes the module's name the first time it runs (execution order of a traced pass)."""

    def __init__(self, order: list[str], name: str) -> None:
        super().__init__()
        self.order, self.name = order, name

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        if self.name not in self.order:
            self.order.append(self.name)
        return args, kwargs


def _trace_order(denoiser: nn.Module, names: list[str]) -> list[str]:
    """Module names in the order one forward pass first calls them (named hooks, removed after the pass)."""
    order: list[str] = []
    modules = dict(denoiser.named_modules())
    entries = [(modules[name], TRACE_HOOK, _FirstCall(order, name)) for name in names]
    args, kwargs = architecture_of(denoiser).dummy_inputs(denoiser)
    with attach_hooks(entries, root=denoiser), torch.no_grad():
        denoiser(*args, **kwargs)
    missing = [n for n in names if n not in order]
    return order + missing  # layers a dummy pass skipped keep their registration order at the end


#: Traced layer lists by denoiser, held weakly: the cache lives beside the user's module, never on it.
_TRACED: weakref.WeakKeyDictionary[nn.Module, list[TextLayer]] = weakref.WeakKeyDictionary()


def list_text_layers(model: Any) -> list[TextLayer]:
    r"""Every attention layer of ``model``'s denoiser that receives text, in execution order.

    Args:
        model: a diffusers pipeline, or its denoiser (``UNet2DConditionModel``, ``SD3Transformer2DModel``,
            ``FluxTransformer2DModel``, ``PixArtTransformer2DModel``, ``SanaTransformer2DModel``).

    The result is cached per denoiser (the trace costs one forward pass), beside it, not on it.
    """
    denoiser = get_denoiser(model)
    cached = _TRACED.get(denoiser)
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
    _TRACED[denoiser] = layers
    return layers


def _jsonable(value: Any) -> Any:
    """``value`` as JSON reads it back: tuples become lists, so a list-valued config equals a tuple-valued one."""
    return json.loads(json.dumps(value, default=repr))


def _init_defaults(cls: type) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {name: p.default for name, p in params.items() if p.default is not inspect.Parameter.empty}


def denoiser_config(model: Any) -> dict[str, Any]:
    """The denoiser's architecture as its config states it: the init arguments that differ from the defaults.

    Keys starting with ``_`` (diffusers version, source path) are left out, tuples become lists, and values equal
    to the class's default are dropped -- so a config.json saved by an older diffusers (which lacks the keys added
    since, at their defaults) reads the same as one saved today, and explicit-default and omitted keys agree.
    ``{}`` for a denoiser without a diffusers ``config``.
    """
    denoiser = get_denoiser(model)
    config = getattr(denoiser, "config", None)
    if not isinstance(config, dict):
        return {}
    defaults = {key: _jsonable(value) for key, value in _init_defaults(type(denoiser)).items()}
    out: dict[str, Any] = {}
    for key in sorted(config):
        if key.startswith("_"):
            continue
        value = _jsonable(config[key])
        if key in defaults and defaults[key] == value:
            continue
        out[key] = value
    return out


def model_fingerprint(model: Any) -> str:
    """``Class:n_text_layers:digest``, the identity that plans, localizations and presets are checked against.

    The digest hashes the text layers' names and kinds *and* the denoiser's architecture config
    (``denoiser_config``: widths, heads, depths, dual-attention layers, ...). Names alone cannot tell SD1.5 from
    SD2.1, SD3-medium from SD3.5-medium or PixArt-α from PixArt-Σ (one module tree; different widths, heads,
    position embeddings or image-only extra layers). With the config, two denoisers whose configs differ never
    share a fingerprint, while a model and its fine-tune (same config, other weights) do: a localization is a
    property of the architecture and transfers between them. Weights are not hashed (that would read GBs).

    Format change (issue #13): the digest used to cover the layer names and kinds only, so files written before
    carry the old digest and are refused as "made for" another model. The shipped ``models/embedded/
    localized.json`` (and the docs' localization summaries) were recomputed: the embedded model went from
    ``UNet2DConditionModel:7:e50ef0b5699b`` to the value ``model_fingerprint`` gives today (tested).
    """
    layers = list_text_layers(model)
    payload = {"layers": [[layer.name, layer.kind] for layer in layers], "config": denoiser_config(model)}
    digest = hashlib.sha1(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]
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
