"""Local blend: keep everything outside the rendered text exactly as the source has it, step by step.

Why. Patching the localized layers changes only what those layers read, but every later layer still sees the
changed image, so pixels far from the text drift a little (more so from an inverted real image, whose
trajectory is less typical than a seed's). A mask of where the text is lets the edit keep the source's
latents outside it at every step (Prompt-to-Prompt's local blend), without a user mask or a ground-truth box.

Where the mask comes from. The localized layers are, by the paper's finding, the ones that place the text:
their image queries attend to the quoted text's tokens where the letters are drawn. During the source run
(the reconstruction of an inverted image, or the source generation) named hooks (``core.hooks``) on those
layers' query and text-key projections compute ``softmax(q k^T / sqrt(d))`` over the text tokens, per head,
and keep the attention mass on the quoted text's tokens (conditional branch only; CFG rows are told apart by
the pipeline's ``cache_context`` label, else by the ``[uncond, cond]`` batch layout). Maps are averaged over
heads, layers (each upsampled to the latent grid) and steps, scaled to [0, 1] (min-max), cut at
``threshold`` and dilated by ``dilation`` latent pixels (a new text longer than the old one needs room;
dilation is the one knob for it). QK norms of MMDiT blocks are not applied (an approximation, documented).

The blend itself is ``mask * edited + (1 - mask) * source`` on the latents after every step from the patch's
start step on; with a mask of zeros the edit returns the source's latents exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from textloc.core.arch import SINGLE_STREAM
from textloc.core.hooks import DenoiserCallHook, OutputHook, attach_hooks
from textloc.core.layers import get_denoiser, resolve_layers
from textloc.core.steps import COND, UNCOND, DenoiserCall, StepTracker
from textloc.errors import InputError

BLEND_DENOISER_HOOK = "textloc.blend.denoiser"
BLEND_QUERY_HOOK = "textloc.blend.query"
BLEND_KEY_HOOK = "textloc.blend.key"


@dataclass(frozen=True)
class BlendConfig:
    r"""How the attention map becomes a mask.

    Args:
        threshold: keep latent pixels whose map reaches this fraction of the map's maximum (0 < t <= 1).
        dilation: grow the mask by this many latent pixels in every direction (0 = none).
    """

    threshold: float = 0.3
    dilation: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not 0.0 < float(self.threshold) <= 1.0:
            raise InputError(f"Expected a blend threshold in (0, 1], but got {self.threshold!r}")
        if isinstance(self.dilation, bool) or not isinstance(self.dilation, int) or not 0 <= self.dilation <= 64:
            raise InputError(f"Expected a blend dilation in 0..64 latent pixels, but got {self.dilation!r}")


# ------------------------------------------------------------------------------------------------------------
# Which tokens are the quoted text


def _ids(tokenizer: Any, prompt: str) -> list[int]:
    ids = tokenizer(prompt)["input_ids"]
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    pad = getattr(tokenizer, "pad_token_id", None)
    while ids and pad is not None and ids[-1] == pad:
        ids.pop()
    return ids


def text_token_positions(pipe: Any, prompt: str, span: int = 0) -> list[int]:
    """Positions of quoted span ``span``'s tokens in what the text layers read (the pipeline's first tokenizer).

    Found without knowing the tokenizer: the prompt is tokenized with and without the span's text, and the
    tokens between the common prefix and the common suffix are the text's. (SD3's joint text sequence starts
    with its CLIP tokens, so the first tokenizer's positions hold there too; FLUX reads T5 tokens: not covered.)
    """
    from textloc.data.quotes import replace_span

    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        raise InputError("The pipeline has no tokenizer; the local blend cannot find the text's tokens")
    full, empty = _ids(tokenizer, prompt), _ids(tokenizer, replace_span(prompt, span, ""))
    prefix = 0
    while prefix < min(len(full), len(empty)) and full[prefix] == empty[prefix]:
        prefix += 1
    suffix = 0
    while suffix < min(len(full), len(empty)) - prefix and full[-1 - suffix] == empty[-1 - suffix]:
        suffix += 1
    positions = list(range(prefix, len(full) - suffix))
    if not positions:
        raise InputError(f"Found no tokens of quoted span {span} in {prompt!r}")
    return positions


# ------------------------------------------------------------------------------------------------------------
# Recording the attention of the localized layers


class AttentionMaps:
    """Accumulates the localized layers' attention to the text tokens, on the latent grid (see module docstring).

    Attach it around a run with ``attached(pipe)``; ``mask(config)`` afterwards (or during the run).
    """

    def __init__(self, pipe: Any, layers: Sequence[str | int], positions: Sequence[int], n_images: int = 1) -> None:
        self.pipe = pipe
        self.layers = resolve_layers(pipe, list(layers))
        if not self.layers:
            raise InputError("The local blend needs at least one localized layer")
        self.positions = list(positions)
        self.n_images = n_images
        self.tracker = StepTracker(pipe.scheduler)
        self.grid: tuple[int, int] | None = None
        self.total: torch.Tensor | None = None
        self.count = 0
        self._queries: dict[str, torch.Tensor] = {}
        self._call: DenoiserCall | None = None

    def _cond_rows(self, batch: int) -> slice:
        call, n = self._call, self.n_images
        if call is not None and call.branch == COND:
            return slice(0, batch)
        if call is not None and call.branch == UNCOND:
            return slice(0, 0)
        return slice(n, 2 * n) if batch == 2 * n else slice(0, min(n, batch))

    def _on_call(self, call: DenoiserCall, args: tuple, kwargs: dict) -> None:
        self._call = call
        sample = args[0] if args and isinstance(args[0], torch.Tensor) else \
            kwargs.get("sample", kwargs.get("hidden_states"))
        if isinstance(sample, torch.Tensor) and sample.ndim == 4:
            self.grid = (sample.shape[-2], sample.shape[-1])
        return None

    def _query(self, name: str, output: torch.Tensor) -> None:
        self._queries[name] = output.detach()

    def _key(self, name: str, kind: str, heads: int, output: torch.Tensor) -> None:
        query = self._queries.pop(name, None)
        if query is None or self.grid is None:
            return
        rows = self._cond_rows(query.shape[0])
        q, k = query[rows].float(), output.detach()[rows].float()
        if q.shape[0] == 0:
            return
        if kind == SINGLE_STREAM:  # one sequence: text tokens first, then the image's
            q = q[:, k.shape[1]:]
        b, length, dim = q.shape
        d = dim // heads
        q = q.reshape(b, length, heads, d).transpose(1, 2)
        k = k.reshape(b, k.shape[1], heads, d).transpose(1, 2)
        probs = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
        wanted = [p for p in self.positions if p < probs.shape[-1]]
        if not wanted:
            return
        attention = probs[..., wanted].sum(-1).mean(1)  # (b, length)
        self._add(attention.mean(0))

    def _add(self, attention: torch.Tensor) -> None:
        h, w = self.grid
        hl = max(1, round((attention.numel() * h / w) ** 0.5))
        wl = attention.numel() // hl
        if hl * wl != attention.numel():
            return  # a layer whose tokens are not one image grid: nothing to map
        upsampled = F.interpolate(attention.reshape(1, 1, hl, wl), size=(h, w), mode="bilinear", align_corners=False)
        self.total = upsampled[0, 0] if self.total is None else self.total + upsampled[0, 0]
        self.count += 1

    @contextmanager
    def attached(self) -> Iterator[AttentionMaps]:
        """Record during the block (hooks on the denoiser and the layers' Q / text-K projections)."""
        denoiser = get_denoiser(self.pipe)
        modules = dict(denoiser.named_modules())
        self.tracker.scheduler = self.pipe.scheduler
        entries: list[Any] = [(denoiser, BLEND_DENOISER_HOOK, DenoiserCallHook(self.tracker, self._on_call))]
        for layer in self.layers:
            attn = modules[layer.name]
            entries.append((attn.to_q, BLEND_QUERY_HOOK, OutputHook(_store(self, layer.name))))
            entries.append((getattr(attn, layer.key_proj), BLEND_KEY_HOOK,
                            OutputHook(_keys(self, layer.name, layer.kind, attn.heads))))
        with attach_hooks(entries, root=denoiser):
            yield self

    def normalised(self) -> torch.Tensor:
        """The accumulated map on the latent grid, scaled to [0, 1] (min 0, max 1: text tokens draw attention
        everywhere, the letters stand out only against that floor)."""
        if self.total is None or self.count == 0:
            raise InputError("The localized layers never attended to the text during the run; no blend mask")
        total = self.total / self.count
        low, high = total.min(), total.max()
        return ((total - low) / (high - low).clamp_min(1e-12)).clamp(0, 1)

    def mask(self, config: BlendConfig | None = None) -> torch.Tensor:
        """The blend mask ``(1, 1, h, w)`` in {0, 1}: the text region, dilated."""
        return mask_from_map(self.normalised(), config or BlendConfig())


def _store(maps: AttentionMaps, name: str) -> Any:
    def fn(output: torch.Tensor) -> None:
        maps._query(name, output)

    return fn


def _keys(maps: AttentionMaps, name: str, kind: str, heads: int) -> Any:
    def fn(output: torch.Tensor) -> None:
        maps._key(name, kind, heads, output)

    return fn


def mask_from_map(attention: torch.Tensor, config: BlendConfig) -> torch.Tensor:
    """Threshold a [0, 1] map at ``config.threshold`` and dilate it by ``config.dilation``: ``(1, 1, h, w)``."""
    mask = (attention >= config.threshold).float()[None, None]
    if config.dilation:
        size = 2 * config.dilation + 1
        mask = F.max_pool2d(mask, kernel_size=size, stride=1, padding=config.dilation)
    return mask


def blend_latents(edited: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask * edited + (1 - mask) * source`` (mask in [0, 1], broadcast over rows and channels)."""
    if mask.min() < 0 or mask.max() > 1:
        raise InputError("Expected a blend mask in [0, 1]")
    mask = mask.to(device=edited.device, dtype=edited.dtype)
    return mask * edited + (1 - mask) * source.to(edited.dtype)
