"""Prompt-to-Prompt word swap: equals the plain generation when nothing changes, restores processors, aligns."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

from textloc.apps.p2p import (
    P2P_ATTENTION_HOOK,
    P2PConfig,
    P2PController,
    align_tokens,
    check_supported,
    p2p_edit,
    token_ids,
)
from textloc.core.hooks import leftovers, registered_hooks
from textloc.core.layers import get_denoiser
from textloc.errors import InputError, PlanMismatchError, UnsupportedModelError
from textloc.models.embedded.pipeline import build_untrained
from textloc.models.tiny import build_tiny_pipeline, tiny_call_kwargs

PROMPT = 'a red sign with white serif letters that says "CAT"'
TARGET = PROMPT.replace("CAT", "DOG")


@cache
def embedded():
    pipe = build_untrained()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@cache
def sd15():
    return build_tiny_pipeline("sd15")


def _plain(pipe, prompt: str, **kwargs) -> np.ndarray:
    return np.asarray(pipe(prompt, generator=torch.Generator().manual_seed(7), output_type="np", **kwargs).images[0])


def _p2p(pipe, source: str, target: str, config: P2PConfig | None = None, **kwargs):
    return p2p_edit(pipe, source, target, config=config, generator=torch.Generator().manual_seed(7),
                    output_type="np", **kwargs)


@pytest.mark.parametrize("guidance", [3.0, 1.0])
def test_same_prompt_equals_plain_generation(guidance: float) -> None:
    pipe = embedded()
    plain = _plain(pipe, PROMPT, num_inference_steps=5, guidance_scale=guidance)
    result = _p2p(pipe, PROMPT, PROMPT, num_inference_steps=5, guidance_scale=guidance)
    np.testing.assert_allclose(result.edited_image, plain, atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.source_image, plain, atol=1e-5, rtol=0)
    assert result.fired and result.alignment == "word-swap"


def test_word_swap_changes_target_row_only() -> None:
    pipe = embedded()
    plain = _plain(pipe, PROMPT, num_inference_steps=5)
    result = _p2p(pipe, PROMPT, TARGET, num_inference_steps=5)
    np.testing.assert_allclose(result.source_image, plain, atol=1e-5, rtol=0)
    assert np.abs(result.edited_image - plain).max() > 1e-3
    assert result.alignment == "word-swap"


def test_steps_come_from_the_scheduler() -> None:
    """Cross maps are edited at steps < 0.5 * 10, self maps (lowest resolution only) at steps < 0.2 * 10."""
    pipe = embedded()
    result = _p2p(pipe, PROMPT, TARGET, P2PConfig(cross_replace_steps=0.5, self_replace_steps=0.2),
                  num_inference_steps=10)
    cross = {name: steps for name, steps in result.fired.items() if name.endswith("attn2")}
    selfs = {name: steps for name, steps in result.fired.items() if name.endswith("attn1")}
    assert len(cross) == 7 and all(steps == [0, 1, 2, 3, 4] for steps in cross.values())
    assert selfs and all(steps == [0, 1] for steps in selfs.values())
    assert not any(name.startswith("down_blocks.1") for name in selfs)  # 12x32 queries > 24*64/16


def test_hooks_not_processors_and_nothing_left_even_on_exception() -> None:
    """P2P edits through named hooks on the attention modules; the processors are never swapped, and every
    hook is gone afterwards (no registry, no instance ``forward``), also when the pipeline raises."""
    pipe = embedded()
    denoiser = get_denoiser(pipe)
    before = dict(denoiser.attn_processors)
    seen: dict[str, list[str]] = {}

    def boom(_pipe, step, _t, _kwargs):
        seen.update(registered_hooks(denoiser))
        assert all(denoiser.attn_processors[k] is before[k] for k in before)  # in the middle of the run
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        _p2p(pipe, PROMPT, TARGET, num_inference_steps=3, callback_on_step_end=boom)
    attention = {k.removesuffix(".processor") for k in before}
    assert {path for path, names in seen.items() if P2P_ATTENTION_HOOK in names} == attention
    after = denoiser.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    assert leftovers(denoiser) == [] and registered_hooks(denoiser) == {}
    assert not any("forward" in m.__dict__ or "_diffusers_hook" in m.__dict__ for m in denoiser.modules())
    _p2p(pipe, PROMPT, TARGET, num_inference_steps=2)
    assert all(denoiser.attn_processors[k] is before[k] for k in before)
    assert leftovers(denoiser) == []


def test_tiny_sd15() -> None:
    pipe = sd15()
    kwargs = tiny_call_kwargs("sd15", height=32, width=32, num_inference_steps=3)
    source, target = 'a sign that says "CAT"', 'a sign that says "DOG"'
    plain = _plain(pipe, source, **kwargs)
    same = _p2p(pipe, source, source, **kwargs)
    np.testing.assert_allclose(same.edited_image, plain, atol=1e-5, rtol=0)
    swapped = _p2p(pipe, source, target, **kwargs)
    np.testing.assert_allclose(swapped.source_image, plain, atol=1e-5, rtol=0)
    assert np.abs(swapped.edited_image - plain).max() > 0


def test_token_alignment() -> None:
    pipe = embedded()
    n = 32
    same_length = align_tokens(token_ids(pipe, PROMPT, n), token_ids(pipe, TARGET, n), n)
    assert same_length.kind == "word-swap"
    assert torch.equal(same_length.mapper, torch.eye(n)) and bool(same_length.alphas.all())
    longer = PROMPT.replace("CAT", "CART")
    refine = align_tokens(token_ids(pipe, PROMPT, n), token_ids(pipe, longer, n), n)
    assert refine.kind == "refine"
    assert refine.alphas.sum() < n  # the inserted letter keeps its own attention
    assert torch.all(refine.mapper.sum(dim=0) <= 1)  # every target key has at most one source key


def test_layout_from_cache_context_label_else_batch_size() -> None:
    controller = P2PController(P2PConfig(), 10, align=None)
    assert controller.row_pairs(2) == [(0, 1)]
    assert controller.row_pairs(4) == [(2, 3)]
    both = P2PController(P2PConfig(edit_uncond=True), 10, align=None)
    assert both.row_pairs(4) == [(0, 1), (2, 3)]
    with pytest.raises(PlanMismatchError, match="but got 6"):
        controller.row_pairs(6)
    # A call the pipeline labels (`cache_context`) is one branch: the label decides, not the batch size.
    assert controller.row_pairs(2, "cond") == [(0, 1)]
    assert controller.row_pairs(2, "uncond") == []
    assert both.row_pairs(2, "uncond") == [(0, 1)]
    with pytest.raises(PlanMismatchError, match="'cond' call"):
        controller.row_pairs(4, "cond")


def test_bad_input() -> None:
    pipe = embedded()
    with pytest.raises(InputError, match="num_images_per_prompt"):
        _p2p(pipe, PROMPT, TARGET, num_inference_steps=2, num_images_per_prompt=2)
    with pytest.raises(InputError, match="cross_replace_steps"):
        P2PConfig(cross_replace_steps=1.5)


def test_mmdit_is_rejected() -> None:
    from diffusers import SD3Transformer2DModel

    transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=1, attention_head_dim=8,
                                        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
                                        pooled_projection_dim=8, out_channels=4)
    with pytest.raises(UnsupportedModelError, match="U-Net"):
        check_supported(transformer)
