"""Prompt-to-Prompt word swap (Hertz et al., 2022), the editing baseline of the paper, for U-Net models.

How it works. The source and the target prompt are denoised *together*, from the same noise, as one batch.
During the first ``cross_replace_steps`` of the schedule every cross-attention layer of the target row uses
the source row's attention maps (mapped token by token to the target prompt) instead of its own; during the
first ``self_replace_steps`` the low-resolution self-attention layers of the target row copy the source row's
maps. The target therefore keeps the source's layout while its values (the new word) come from its own text.

Implementation notes:
* Attention maps are edited by a named hook (``P2P_ATTENTION_HOOK``, a diffusers ``ModelHook`` with
  ``new_forward``) on every attention module, registered and removed through ``core.hooks.attach_hooks`` like
  the engine's hooks -- the processors are never swapped. The hook computes attention itself only when it
  has something to edit at this step; otherwise it calls the module's own forward, so its processor (SDPA,
  sliced, xformers …) runs unchanged and P2P costs about one batch-of-two generation.
* The current step is pushed in by the denoiser itself: a hook on the denoiser (``P2P_DENOISER_HOOK``) hands
  every call to ``core.steps.StepTracker``, which asks the scheduler, exactly like the patching engine.
  Layer calls are never counted.
* The CFG branch: a call the pipeline labels with ``cache_context("cond" | "uncond")`` is that branch, so its
  2 rows are ``[source, target]`` of that branch. Unlabelled calls are read from the batch size: 2 rows =
  ``[source, target]`` (no guidance), 4 rows = ``[source_uncond, target_uncond, source_cond, target_cond]``
  (diffusers' CFG layout). As in the original code only the conditional rows are edited (``edit_uncond=True``
  edits both).
* Token alignment: the two prompts are tokenized with the pipeline's tokenizer (padded to the number of
  text keys) and aligned with ``difflib``; equal runs and equal-length replacements map 1:1 (word swap:
  ``"CAT"`` -> ``"DOG"`` is 1:1 on the embedded model's character tokens and on CLIP's word pieces when the
  words have as many pieces); a replacement of a different length, an insertion or a deletion gives the P2P
  *refine* alignment: target tokens without a source counterpart keep their own attention.

Not implemented: local blending (P2P's optional mask), attention re-weighting, and MMDiT models (SD3, FLUX),
whose text tokens are updated by every block (there is no fixed "cross-attention map" to copy); see
docs/editing.md.
"""

from __future__ import annotations

import difflib
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import ModelHook
from torch import nn

from textloc.core.engine import default_steps
from textloc.core.hooks import DenoiserCallHook, attach_hooks
from textloc.core.layers import ADDED_KV, architecture_of, get_denoiser, list_text_layers
from textloc.core.steps import COND, UNCOND, DenoiserCall, StepTracker
from textloc.errors import InputError, PlanMismatchError, PlanNeverFiredError, UnsupportedModelError

P2P_DENOISER_HOOK = "textloc.p2p.denoiser"
P2P_ATTENTION_HOOK = "textloc.p2p.attention"

#: Processors that compute plain scaled-dot-product attention; P2P may recompute their attention by hand.
PLAIN_PROCESSORS = frozenset(
    {"AttnProcessor", "AttnProcessor2_0", "AttnProcessorNPU", "SlicedAttnProcessor", "XFormersAttnProcessor"}
)


@dataclass(frozen=True)
class P2PConfig:
    r"""Prompt-to-Prompt word-swap parameters (defaults: the original paper's Stable Diffusion examples).

    Args:
        cross_replace_steps: fraction of the schedule (from the start) during which the target row uses the
            source's cross-attention maps.
        self_replace_steps: fraction of the schedule during which low-resolution self-attention maps are
            copied from the source.
        self_max_tokens: self-attention layers with at most this many queries are copied; ``None`` means
            1/16 of the denoiser's input pixels (the original 16x16 of a 64x64 SD latent).
        edit_uncond: also edit the unconditional CFG rows (the original edits the conditional ones only).
    """

    cross_replace_steps: float = 0.8
    self_replace_steps: float = 0.4
    self_max_tokens: int | None = None
    edit_uncond: bool = False

    def __post_init__(self) -> None:
        for name in ("cross_replace_steps", "self_replace_steps"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise InputError(f"Expected 0 <= {name} <= 1, but got {value}")
        if self.self_max_tokens is not None and self.self_max_tokens < 0:
            raise InputError(f"Expected self_max_tokens >= 0, but got {self.self_max_tokens}")


# ------------------------------------------------------------------------------------------------------------
# Token alignment


@dataclass(frozen=True)
class TokenAlignment:
    """How target text keys take the source's attention: ``new = alpha * (src @ mapper) + (1 - alpha) * tgt``.

    ``mapper`` is ``(n_keys, n_keys)`` (source key -> target key), ``alphas`` is ``(n_keys,)`` over target keys.
    """

    mapper: torch.Tensor
    alphas: torch.Tensor
    kind: str  # "word-swap" (every target key has a 1:1 source key) or "refine"


def align_tokens(source_ids: Sequence[int], target_ids: Sequence[int], n_keys: int) -> TokenAlignment:
    """Align two token sequences (already padded/truncated to ``n_keys``); see the module docstring."""
    src, tgt = list(source_ids)[:n_keys], list(target_ids)[:n_keys]
    mapper = torch.zeros(n_keys, n_keys)
    alphas = torch.zeros(n_keys)
    one_to_one = len(src) == len(tgt) == n_keys
    matcher = difflib.SequenceMatcher(None, src, tgt, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal" or (op == "replace" and i2 - i1 == j2 - j1):
            for i, j in zip(range(i1, i2), range(j1, j2), strict=True):
                mapper[i, j] = 1.0
                alphas[j] = 1.0
        else:
            one_to_one = False  # unequal replacement / insertion / deletion: those target keys keep their own
    return TokenAlignment(mapper, alphas, "word-swap" if one_to_one else "refine")


def token_ids(pipe: Any, prompt: str, n_keys: int) -> list[int]:
    """``prompt``'s token ids as the pipeline's (first) tokenizer pads them to ``n_keys`` text keys."""
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        raise UnsupportedModelError(f"{type(pipe).__name__} has no `tokenizer`; P2P cannot align the prompts")
    ids = tokenizer(prompt, padding="max_length", max_length=n_keys, truncation=True, return_tensors="pt")
    return [int(i) for i in ids["input_ids"][0].tolist()]


# ------------------------------------------------------------------------------------------------------------
# The controller: what to edit at which step


@dataclass
class P2PController:
    """Per-run state; the attention hooks ask it what to do and hand it attention maps to edit."""

    config: P2PConfig
    num_steps: int
    align: Any  # callable: n_keys -> TokenAlignment
    step: int = -1
    batch: int = 0
    branch: str | None = None  # the call's CFG branch when the pipeline labels it (`cache_context`)
    input_pixels: int = 0
    alignment: TokenAlignment | None = None
    fired: dict[str, set[int]] = field(default_factory=dict)

    @property
    def cross_until(self) -> int:
        return int(self.config.cross_replace_steps * self.num_steps)

    @property
    def self_until(self) -> int:
        return int(self.config.self_replace_steps * self.num_steps)

    def enter_call(self, call: DenoiserCall, sample: torch.Tensor | None) -> None:
        """Called by the denoiser hook: the step comes from the scheduler, never from counting calls."""
        self.step, self.batch, self.branch = call.step, call.batch, call.branch
        if sample is not None and sample.ndim == 4:
            self.input_pixels = int(sample.shape[-1] * sample.shape[-2])

    def wants(self, is_cross: bool, queries: int) -> bool:
        if self.step < 0 or not self.row_pairs(self.batch, self.branch):
            return False
        if is_cross:
            return self.step < self.cross_until
        limit = self.config.self_max_tokens
        if limit is None:
            limit = self.input_pixels // 16
        return self.step < self.self_until and queries <= limit

    def row_pairs(self, batch: int, branch: str | None = None) -> list[tuple[int, int]]:
        """(source row, target row) pairs to edit: a labelled call is one branch, else the batch size says."""
        if batch == 2 and branch == UNCOND:
            return [(0, 1)] if self.config.edit_uncond else []
        if batch == 2:
            return [(0, 1)]
        if branch in (COND, UNCOND):
            raise PlanMismatchError(f"Expected 2 rows ([source, target]) in a {branch!r} call, but got {batch}")
        if batch == 4:
            return [(0, 1), (2, 3)] if self.config.edit_uncond else [(2, 3)]
        raise PlanMismatchError(
            f"Expected a denoiser batch of 2 ([source, target]) or 4 rows (with guidance), but got {batch}"
        )

    def edit(self, name: str, probs: torch.Tensor, is_cross: bool) -> torch.Tensor:
        """Edit attention probabilities of shape ``(batch, heads, queries, keys)``; returns a new tensor."""
        pairs = self.row_pairs(probs.shape[0], self.branch)
        if not pairs:
            return probs
        out = probs.clone()
        for src, tgt in pairs:
            if is_cross:
                alignment = self._alignment(probs.shape[-1])
                mapper = alignment.mapper.to(probs.device, probs.dtype)
                alphas = alignment.alphas.to(probs.device, probs.dtype)
                mapped = probs[src] @ mapper
                out[tgt] = mapped * alphas + probs[tgt] * (1 - alphas)
            else:
                out[tgt] = probs[src]
        self.fired.setdefault(name, set()).add(self.step)
        return out

    def _alignment(self, n_keys: int) -> TokenAlignment:
        if self.alignment is None or self.alignment.mapper.shape[0] != n_keys:
            self.alignment = self.align(n_keys)
        return self.alignment


class P2PAttentionHook(ModelHook):
    """On one attention module: computes attention by hand only when the controller edits this call."""

    def __init__(self, controller: P2PController, name: str) -> None:
        super().__init__()
        self.controller = controller
        self.name = name

    def new_forward(self, attn: nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        hidden_states = args[0] if args else kwargs["hidden_states"]
        encoder_hidden_states = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        is_cross = encoder_hidden_states is not None
        queries = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states.shape[2] * hidden_states.shape[3]
        if not self.controller.wants(is_cross, queries):
            return self.fn_ref.original_forward(*args, **kwargs)
        attention_mask = args[2] if len(args) > 2 else kwargs.get("attention_mask")
        return self._attend(attn, hidden_states, encoder_hidden_states, attention_mask, kwargs.get("temb"))

    def _attend(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None,
                attention_mask: torch.Tensor | None, temb: torch.Tensor | None) -> torch.Tensor:
        """diffusers' ``AttnProcessor`` with the attention probabilities handed to the controller."""
        is_cross = encoder_hidden_states is not None
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query, key, value = (attn.head_to_batch_dim(t) for t in (query, key, value))

        probs = attn.get_attention_scores(query, key, attention_mask)
        heads = attn.heads
        probs = probs.view(-1, heads, *probs.shape[1:])
        probs = self.controller.edit(self.name, probs, is_cross).view(-1, *probs.shape[2:])

        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


# ------------------------------------------------------------------------------------------------------------
# Installing and running


def check_supported(pipe: Any) -> nn.Module:
    """The pipeline's U-Net, after checking that P2P applies to it (plain cross-attention U-Nets only)."""
    denoiser = get_denoiser(pipe)
    if architecture_of(denoiser).family != "unet":
        raise UnsupportedModelError(
            f"Prompt-to-Prompt is implemented for U-Net models (embedded, SD 1.x/2.x, SDXL), but got a "
            f"{type(denoiser).__name__}"
        )
    if any(layer.kind == ADDED_KV for layer in list_text_layers(pipe)):
        raise UnsupportedModelError("Prompt-to-Prompt does not support added-K/V attention (DeepFloyd IF)")
    odd = {name: type(p).__name__ for name, p in denoiser.attn_processors.items()
           if type(p).__name__ not in PLAIN_PROCESSORS}
    odd.update({f"{name}.processor": "q/k normalisation" for name, module in denoiser.named_modules()
                if getattr(module, "norm_q", None) is not None or getattr(module, "norm_k", None) is not None})
    if odd:
        name, cls = next(iter(odd.items()))
        raise UnsupportedModelError(
            f"Prompt-to-Prompt needs plain attention processors, but {name} uses {cls} ({len(odd)} such layer(s))"
        )
    return denoiser


@contextmanager
def p2p_hooks(pipe: Any, controller: P2PController) -> Iterator[P2PController]:
    """Register P2P's named hooks: the step tracker on the denoiser, one editor per attention module.

    All go through ``core.hooks.attach_hooks`` and are removed on exit, also when the pipeline raises.
    """
    denoiser = get_denoiser(pipe)
    modules = dict(denoiser.named_modules())

    def on_call(call: DenoiserCall, args: tuple, kwargs: dict) -> None:
        controller.enter_call(call, args[0] if args else kwargs.get("sample"))

    entries = [(denoiser, P2P_DENOISER_HOOK, DenoiserCallHook(StepTracker(pipe.scheduler), on_call))]
    for key in denoiser.attn_processors:
        name = key.removesuffix(".processor")
        entries.append((modules[name], P2P_ATTENTION_HOOK, P2PAttentionHook(controller, name)))
    with attach_hooks(entries, root=denoiser):
        yield controller


@dataclass
class P2PResult:
    """A P2P edit: the source row (≈ the plain source generation) and the edited target row."""

    source_image: Any
    edited_image: Any
    alignment: str
    fired: dict[str, list[int]]
    seconds: float


def _twin_generators(generator: Any) -> list[torch.Generator]:
    """Two generators in the same state, so both rows start from the noise a plain generation would draw."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != 1:
            raise InputError(f"Expected one generator for one prompt pair, but got {len(generator)}")
        generator = generator[0]
    if generator is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        generator = torch.Generator("cpu").manual_seed(seed)
    twin = torch.Generator(device=generator.device)
    twin.set_state(generator.get_state())
    return [generator, twin]


def p2p_edit(
    pipe: Any,
    source_prompt: str,
    target_prompt: str,
    *,
    config: P2PConfig | None = None,
    **call_kwargs: Any,
) -> P2PResult:
    r"""Generate ``source_prompt`` and its Prompt-to-Prompt word-swap edit towards ``target_prompt``.

    Args:
        pipe: a U-Net pipeline (embedded, SD 1.x/2.x, SDXL).
        source_prompt / target_prompt: one prompt each (one pair per call; the pair runs as one batch).
        config: window fractions and options (``P2PConfig``).
        call_kwargs: passed to the pipeline (``generator`` for the seed, ``num_inference_steps``,
            ``guidance_scale``, ``output_type`` …). One generator is cloned so both rows share the noise.

    Returns:
        ``P2PResult`` with both rows' images, the alignment kind and the steps each layer was edited at.
    """
    if not isinstance(source_prompt, str) or not isinstance(target_prompt, str):
        raise InputError("Expected one source and one target prompt (str) for Prompt-to-Prompt")
    if call_kwargs.get("num_images_per_prompt", 1) != 1:
        raise InputError("Expected num_images_per_prompt=1 for Prompt-to-Prompt (one prompt pair per call)")
    for banned in ("prompt_embeds", "negative_prompt_embeds", "cross_attention_kwargs"):
        if banned in call_kwargs:
            raise InputError(f"`{banned}` is not supported by Prompt-to-Prompt; pass prompts instead")
    config = config or P2PConfig()
    check_supported(pipe)
    kwargs = dict(call_kwargs)
    num_steps = kwargs.get("num_inference_steps") or default_steps(pipe)
    if kwargs.get("latents") is not None:
        latents = kwargs["latents"]
        kwargs["latents"] = latents.expand(2, *latents.shape[1:]).clone() if latents.shape[0] == 1 else latents
    else:
        kwargs["generator"] = _twin_generators(kwargs.get("generator"))
    if isinstance(kwargs.get("negative_prompt"), str):
        kwargs["negative_prompt"] = [kwargs["negative_prompt"]] * 2

    def align(n_keys: int) -> TokenAlignment:
        return align_tokens(token_ids(pipe, source_prompt, n_keys), token_ids(pipe, target_prompt, n_keys), n_keys)

    controller = P2PController(config, num_steps, align)
    start = time.perf_counter()
    with p2p_hooks(pipe, controller):
        images = pipe([source_prompt, target_prompt], **kwargs).images
    seconds = time.perf_counter() - start
    if controller.step < 0:
        raise PlanNeverFiredError("The denoiser was never called; Prompt-to-Prompt edited nothing")
    if controller.cross_until > 0 and not controller.fired:
        raise PlanNeverFiredError("No attention map was edited during the run")
    alignment = controller.alignment.kind if controller.alignment is not None else "word-swap"
    fired = {name: sorted(steps) for name, steps in controller.fired.items()}
    return P2PResult(images[0], images[1], alignment, fired, seconds)
