"""Structure-faithful denoisers: a published checkpoint's block layout, depths and head counts, tiny widths.

Use them for tests about *which* layers exist and how many (layer names such as
``up_blocks.0.attentions.2.transformer_blocks.3.attn2`` exist, counts match the real model), not for generation.
They carry random weights, and their configs are *not* the published ones (the widths are scaled down), so the
published presets refuse them: ``layers --config`` on a model's real config.json, built on the meta device,
is what checks a preset against the real model (tests/test_layers_config.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from textloc.models.tiny.components import _seeded

STRUCTURE_FAITHFUL_DENOISERS: tuple[str, ...] = ("sdxl", "sd3-medium", "if-i-xl")


def _faithful_sdxl() -> torch.nn.Module:
    """SDXL base 1.0 U-Net layout with tiny widths.

    Real ``stabilityai/stable-diffusion-xl-base-1.0/unet/config.json`` values relied on: down blocks
    (DownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D), up blocks (CrossAttnUpBlock2D,
    CrossAttnUpBlock2D, UpBlock2D), mid UNetMidBlock2DCrossAttn, layers_per_block 2,
    transformer_layers_per_block [1, 2, 10] (the mid block uses the last value, 10; up blocks use the
    reverse), attention_head_dim [5, 10, 20] (= heads, 64 wide each), block_out_channels [320, 640, 1280],
    use_linear_projection true, cross_attention_dim 2048, addition_embed_type "text_time",
    addition_time_embed_dim 256, projection_class_embeddings_input_dim 2816 (= 6 * 256 + 1280), sample_size
    128, in/out channels 4.

    Tiny: head counts kept (5, 10, 20) at 4 channels per head -> block_out_channels (20, 40, 80); GroupNorm
    uses 4 groups (32 does not divide 20); cross_attention_dim 32; addition_time_embed_dim 8 with a 16-wide
    pooled text embedding. ``attn2`` count: down_blocks.1: 2 attentions x 2 layers = 4, down_blocks.2: 2 x 10
    = 20, mid: 10, up_blocks.0: 3 x 10 = 30, up_blocks.1: 3 x 2 = 6 -> 70.
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=(20, 40, 80),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,
        norm_num_groups=4,
    )


def _faithful_sd3_medium() -> torch.nn.Module:
    """SD3-medium MMDiT layout with tiny widths.

    Real ``stabilityai/stable-diffusion-3-medium-diffusers/transformer/config.json`` values relied on:
    num_layers 24 (joint ``transformer_blocks``; diffusers makes the last one ``context_pre_only``),
    num_attention_heads 24, attention_head_dim 64, caption_projection_dim 1536 (= 24 * 64),
    joint_attention_dim 4096, pooled_projection_dim 2048, patch_size 2, in/out channels 16, pos_embed_max_size
    192, sample_size 128, no dual-attention layers (that is SD3.5), no qk-norm.

    Tiny: 24 heads kept at 4 channels per head (inner width 96), joint_attention_dim 32, pooled 32.
    """
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=24,
        attention_head_dim=4,
        num_attention_heads=24,
        joint_attention_dim=32,
        caption_projection_dim=24 * 4,
        pooled_projection_dim=32,
        pos_embed_max_size=192,
    )


def _faithful_if_i_xl() -> torch.nn.Module:
    """DeepFloyd IF-I-XL-v1.0 stage-I U-Net layout, every width divided by 8.

    Real ``DeepFloyd/IF-I-XL-v1.0/unet/config.json`` values relied on (issue #13 corrected an earlier version
    written from memory): block_out_channels [704, 1408, 2112, 2816], attention_head_dim 64 (per-head width, so
    22 / 33 / 44 heads at the three attention levels and 44 in the mid block), cross_attention_dim 2816,
    encoder_hid_dim 4096 (T5-XXL), addition_embed_type "text" with addition_embed_type_num_heads 64 (attention
    pooling over the projected text, 44 wide per head), layers_per_block 3, down blocks
    (ResnetDownsampleBlock2D, SimpleCrossAttnDownBlock2D x3), up blocks (SimpleCrossAttnUpBlock2D x3,
    ResnetUpsampleBlock2D), mid UNetMidBlock2DSimpleCrossAttn, cross_attention_norm "group_norm", act_fn
    "gelu", resnet_time_scale_shift "scale_shift", norm_num_groups 32, in_channels 3, out_channels 6,
    sample_size 64.

    Tiny (/8 throughout, so every ratio of the real model holds): block_out_channels (88, 176, 264, 352) at 8
    channels per head keeps the head counts 22 / 33 / 44; cross_attention_dim 352 (= the top width, as 2816 is;
    a multiple of the 32 groups of the cross-attention group norm); encoder_hid_dim 512; the text pooling
    keeps its 44-wide heads (8 of them: 64 would not divide 352); norm_num_groups 8 (32 does not divide 88; 11
    channels per group, as 22 / 2). About 67M random parameters. Text-reading attention layers (``Attention``
    with ``add_k_proj``): 3 down levels x 3 + 1 mid + 3 up levels x 4 = 22; layer 17 is
    ``up_blocks.1.attentions.3`` (the ``if-i-xl`` preset).
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,
        in_channels=3,
        out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", *("SimpleCrossAttnDownBlock2D",) * 3),
        up_block_types=(*("SimpleCrossAttnUpBlock2D",) * 3, "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(88, 176, 264, 352),
        layers_per_block=3,
        attention_head_dim=8,
        cross_attention_dim=352,
        encoder_hid_dim=512,
        addition_embed_type="text",
        addition_embed_type_num_heads=8,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        norm_num_groups=8,
    )


_FAITHFUL_BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "sdxl": _faithful_sdxl,
    "sd3-medium": _faithful_sd3_medium,
    "if-i-xl": _faithful_if_i_xl,
}


def build_structure_faithful_denoiser(name: str, *, seed: int = 0) -> torch.nn.Module:
    """Build only the denoiser of a published checkpoint, with its real block layout/depths and tiny widths.

    Use it to test code that selects layers by name or counts them (e.g. "SDXL has 70 ``attn2`` layers")
    without the real multi-GB weights. Weights are random (seeded by ``seed``); the module is in ``eval()``
    mode.

    Args:
        name: one of :data:`STRUCTURE_FAITHFUL_DENOISERS` ("sdxl", "sd3-medium", "if-i-xl").
        seed: seed for the random initialisation.
    """
    if name not in _FAITHFUL_BUILDERS:
        raise ValueError(f"unknown denoiser {name!r}; expected one of {STRUCTURE_FAITHFUL_DENOISERS}")
    with torch.random.fork_rng(devices=[]):
        return _seeded(seed, _FAITHFUL_BUILDERS[name])
