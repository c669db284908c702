"""Local blend (issue #16): the mask lies in [0, 1] on the latent grid, the quoted text's tokens are found
without knowing the tokenizer, and with a mask of zeros the edit returns the source's latents exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textloc.apps.edit import edit_image
from textloc.apps.edit.blend import AttentionMaps, BlendConfig, blend_latents, mask_from_map, text_token_positions
from textloc.core.hooks import leftovers
from textloc.core.layers import get_denoiser
from textloc.errors import InputError
from textloc.models.embedded.pipeline import build_untrained
from textloc.models.loading import load_pipeline


@pytest.mark.parametrize("bad", [{"threshold": 0.0}, {"threshold": 1.5}, {"threshold": float("nan")},
                                 {"dilation": -1}, {"dilation": 1.5}, {"dilation": True}])
def test_config_is_validated(bad: dict) -> None:
    with pytest.raises(InputError, match="Expected"):
        BlendConfig(**bad)


def test_mask_is_in_unit_interval_and_dilation_grows_it() -> None:
    attention = torch.zeros(8, 16)
    attention[3:5, 6:9] = 1.0
    attention[0, 0] = 0.2
    tight = mask_from_map(attention, BlendConfig(threshold=0.5, dilation=0))
    wide = mask_from_map(attention, BlendConfig(threshold=0.5, dilation=2))
    for mask in (tight, wide):
        assert mask.shape == (1, 1, 8, 16) and mask.min() >= 0 and mask.max() <= 1
    assert tight.sum() == 6 and tight[0, 0, 0, 0] == 0  # below the threshold stays out
    assert wide.sum() > tight.sum() and bool((wide >= tight).all())


def test_blend_with_zeros_is_the_source_exactly_and_with_ones_the_edit() -> None:
    generator = torch.Generator().manual_seed(0)
    edited, source = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(2, 4, 8, 8, generator=generator)
    assert torch.equal(blend_latents(edited, source, torch.zeros(1, 1, 8, 8)), source)
    assert torch.equal(blend_latents(edited, source, torch.ones(1, 1, 8, 8)), edited)
    with pytest.raises(InputError):
        blend_latents(edited, source, torch.full((1, 1, 8, 8), 2.0))


def test_text_token_positions_embedded_and_clip() -> None:
    pipe = build_untrained()
    prompt = 'a red sign that says "CAT" on it'
    positions = text_token_positions(pipe, prompt)
    ids = pipe.tokenizer(prompt)["input_ids"][0].tolist()
    assert [pipe.tokenizer.vocab[ids[p]] for p in positions] == ["C", "A", "T"]
    tiny = load_pipeline("tiny:sd15")
    clip_positions = text_token_positions(tiny, 'a sign that says "cat"')
    assert clip_positions and min(clip_positions) > 0  # after BOS, inside the prompt
    with pytest.raises(InputError):
        text_token_positions(pipe, 'a sign that says ""')


def test_attention_maps_of_the_localized_layers() -> None:
    pipe = build_untrained()
    prompt = 'a red sign that says "CAT"'
    maps = AttentionMaps(pipe, [0, 1], text_token_positions(pipe, prompt))
    with maps.attached():
        pipe(prompt, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    assert leftovers(pipe.unet) == []
    assert maps.count > 0
    normalised = maps.normalised()
    assert normalised.shape == (24, 64) and normalised.min() == 0 and normalised.max() == 1
    mask = maps.mask(BlendConfig(threshold=0.5, dilation=1))
    assert mask.shape == (1, 1, 24, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}


def test_zero_mask_edit_returns_the_reconstruction_exactly() -> None:
    """Outside the mask the source's latents are kept at every step: an all-zero mask keeps them everywhere."""
    pipe = load_pipeline("tiny:sd15")
    image = np.random.default_rng(1).random((32, 32, 3)).astype(np.float32)
    common = dict(text="cat", layers=[0], num_inference_steps=3, guidance_scale=2.0, renoise=0, ocr=None,
                  height=32, width=32)
    side = 32 // pipe.vae_scale_factor  # the latent grid
    zero = edit_image(pipe, image, "dog", blend_mask=torch.zeros(1, 1, side, side), **common)
    assert np.array_equal(zero.edited_array, zero.reconstruction_array)
    free = edit_image(pipe, image, "dog", **common)
    assert not np.array_equal(free.edited_array, free.reconstruction_array)
    blended = edit_image(pipe, image, "dog", blend=True, blend_config=BlendConfig(threshold=0.5), **common)
    assert blended.mask is not None and blended.mask.min() >= 0 and blended.mask.max() <= 1
    assert blended.to_dict()["blend"] is True
    assert leftovers(get_denoiser(pipe)) == []
