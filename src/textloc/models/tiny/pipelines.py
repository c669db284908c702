"""``build_tiny_pipeline`` and the call kwargs that run each tiny pipeline end to end on CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from textloc.models.tiny.dit import _build_flux, _build_pixart, _build_sana, _build_sd3
from textloc.models.tiny.unet import _build_if1, _build_if2, _build_sd2, _build_sd15, _build_sdxl

if TYPE_CHECKING:  # diffusers is imported lazily so that importing this module stays cheap
    from diffusers import DiffusionPipeline


#: Architectures :func:`build_tiny_pipeline` can build.
TINY_ARCHITECTURES: tuple[str, ...] = (
    "sd15",
    "sd2",
    "sdxl",
    "if1",
    "if2",
    "sd3",
    "flux",
    "pixart-alpha",
    "pixart-sigma",
    "sana",
)

#: Names accepted by :func:`build_structure_faithful_denoiser`.
#: (height, width) in pixels of the square and non-square outputs the tiny pipelines are tested at.
TINY_SQUARE_SIZE: tuple[int, int] = (32, 32)
TINY_NON_SQUARE_SIZE: tuple[int, int] = (32, 64)

#: Recommended ``pipe(...)`` kwargs per architecture, with classifier-free guidance ON. They deliberately
#: leave out ``prompt``, ``num_inference_steps``, ``generator``, ``output_type`` and ``num_images_per_prompt``
#: so a test can pass those itself and splat this dict without duplicate-keyword errors. Notes:
#:
#: * ``clean_caption=False``: IF / PixArt default to caption cleaning that needs ``bs4`` + ``ftfy``.
#: * ``use_resolution_binning=False``: PixArt / Sana would otherwise snap the size to a 256+ px aspect-ratio
#:   bin (and raise for a ``sample_size`` outside their bin tables).
#: * ``max_sequence_length=16`` keeps T5 / Gemma sequences short (CLIP keeps its real 77-token context).
#: * Flux: ``guidance_scale`` is the *embedded* (distilled, Flux-dev style) guidance, not CFG; real CFG needs
#:   ``true_cfg_scale > 1`` plus a ``negative_prompt`` per prompt -- use :func:`tiny_call_kwargs`.
#: * IF stage II (``if2``) additionally needs ``image`` (the stage-I output, one per prompt) -- use
#:   :func:`tiny_call_kwargs` or :func:`tiny_low_res_image`.
TINY_CALL_KWARGS: dict[str, dict[str, Any]] = {
    "sd15": {"height": 32, "width": 32, "guidance_scale": 7.5},
    "sd2": {"height": 32, "width": 32, "guidance_scale": 7.5},
    "sdxl": {"height": 32, "width": 32, "guidance_scale": 5.0},
    "if1": {"height": 32, "width": 32, "guidance_scale": 7.0, "clean_caption": False},
    "if2": {"height": 32, "width": 32, "guidance_scale": 4.0, "clean_caption": False, "noise_level": 250},
    "sd3": {"height": 32, "width": 32, "guidance_scale": 7.0, "max_sequence_length": 16},
    "flux": {"height": 32, "width": 32, "guidance_scale": 3.5, "max_sequence_length": 16},
    "pixart-alpha": {
        "height": 32,
        "width": 32,
        "guidance_scale": 4.5,
        "max_sequence_length": 16,
        "clean_caption": False,
        "use_resolution_binning": False,
    },
    "pixart-sigma": {
        "height": 32,
        "width": 32,
        "guidance_scale": 4.5,
        "max_sequence_length": 16,
        "clean_caption": False,
        "use_resolution_binning": False,
    },
    "sana": {
        "height": 32,
        "width": 32,
        "guidance_scale": 4.5,
        "max_sequence_length": 16,
        "clean_caption": False,
        "use_resolution_binning": False,
    },
}


_BUILDERS: dict[str, Callable[[int, str | Path | None], Any]] = {
    "sd15": _build_sd15,
    "sd2": _build_sd2,
    "sdxl": _build_sdxl,
    "if1": _build_if1,
    "if2": _build_if2,
    "sd3": _build_sd3,
    "flux": _build_flux,
    "pixart-alpha": lambda seed, tok_dir: _build_pixart(seed, tok_dir, sigma=False),
    "pixart-sigma": lambda seed, tok_dir: _build_pixart(seed, tok_dir, sigma=True),
    "sana": _build_sana,
}


def build_tiny_pipeline(
    arch: str, *, seed: int = 0, tokenizer_dir: str | Path | None = None
) -> DiffusionPipeline:
    """Build a tiny random ``DiffusionPipeline`` of the real class for ``arch``.

    Args:
        arch: one of :data:`TINY_ARCHITECTURES`.
        seed: seeds every component's random init; equal seeds give bit-identical weights.
        tokenizer_dir: where the generated tokenizer files are cached (default: a process-wide temp dir that
            is removed at exit). Pass a persistent folder to share them across processes.

    Returns:
        The pipeline on CPU, float32, all modules in ``eval()`` mode, progress bar disabled, safety checker /
        watermarker absent. Call it with :data:`TINY_CALL_KWARGS` ``[arch]`` (or :func:`tiny_call_kwargs`).
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {TINY_ARCHITECTURES}")
    with torch.random.fork_rng(devices=[]):
        pipe = _BUILDERS[arch](seed, tokenizer_dir)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_low_res_image(batch_size: int, *, size: int = 16, seed: int = 0) -> torch.Tensor:
    """A deterministic ``(batch, 3, size, size)`` image in [-1, 1]: the stage-I output that IF-II upscales."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch_size, 3, size, size), generator=generator) * 2 - 1


def tiny_call_kwargs(arch: str, *, cfg: bool = True, batch_size: int = 1, **overrides: Any) -> dict[str, Any]:
    """Fresh call kwargs for ``arch``: :data:`TINY_CALL_KWARGS` with CFG switched on or off.

    ``cfg=False`` sets ``guidance_scale=1.0`` (no unconditional branch) for every arch except Flux, whose
    ``guidance_scale`` is an embedded conditioning value, not CFG; for Flux ``cfg=True`` instead enables
    "true" CFG (``true_cfg_scale=2.0`` with one empty negative prompt per prompt, since Flux does not
    broadcast a single negative prompt over a batch). ``batch_size`` is the number of prompts; it sizes Flux's
    negative prompts and IF stage II's low-resolution ``image``. ``overrides`` win over everything.
    """
    if arch not in TINY_CALL_KWARGS:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {TINY_ARCHITECTURES}")
    kwargs = dict(TINY_CALL_KWARGS[arch])
    if arch == "flux":
        if cfg:
            kwargs.update(true_cfg_scale=2.0, negative_prompt=[""] * batch_size)
    elif not cfg:
        kwargs["guidance_scale"] = 1.0
    if arch == "if2":
        kwargs["image"] = tiny_low_res_image(batch_size)
    kwargs.update(overrides)
    return kwargs
