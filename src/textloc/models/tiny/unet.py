"""Tiny U-Net pipelines: SD 1.x, SD 2.x, SDXL, DeepFloyd IF stages I and II (real diffusers classes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textloc.models.tiny.components import _clip_text_encoder, _ddpm_if_scheduler, _seeded, _t5_encoder, _vae_kl
from textloc.models.tiny.tokenizers import _load_tokenizer


def _build_sd15(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """SD 1.x: CrossAttn/CrossAttn/Down (the real layout is 3 x CrossAttn + Down), CLIP-L-like encoder."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = _load_tokenizer("clip", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _clip_text_encoder(tokenizer, hidden_size=32))
    unet = _seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            attention_head_dim=2,  # diffusers' legacy name: number of heads (SD 1.x: 8)
            cross_attention_dim=32,  # == CLIP hidden size (SD 1.x: 768)
            norm_num_groups=8,
        ),
    )
    vae = _seeded(seed, lambda: _vae_kl(latent_channels=4, scaling_factor=0.18215))
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sd2(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """SD 2.x (768-v): per-block head list, linear projections, upcast attention, v-prediction DDIM."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = _load_tokenizer("clip", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _clip_text_encoder(tokenizer, hidden_size=32, hidden_act="gelu"))
    unet = _seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            attention_head_dim=(2, 4, 4),  # heads per block, like SD 2's [5, 10, 20, 20]
            use_linear_projection=True,
            upcast_attention=True,
            cross_attention_dim=32,  # SD 2: 1024 (OpenCLIP-H)
            norm_num_groups=8,
        ),
    )
    vae = _seeded(seed, lambda: _vae_kl(latent_channels=4, scaling_factor=0.18215))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """SDXL base: Down/CrossAttn/CrossAttn, deeper transformers lower down, ``text_time`` conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = _load_tokenizer("clip", tokenizer_dir)
    tokenizer_2 = _load_tokenizer("clip", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _clip_text_encoder(tokenizer, hidden_size=16))
    text_encoder_2 = _seeded(
        seed,
        lambda: _clip_text_encoder(
            tokenizer_2, hidden_size=32, projection_dim=16, with_projection=True, hidden_act="gelu"
        ),
    )
    addition_time_embed_dim = 8
    unet = _seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            transformer_layers_per_block=(1, 1, 2),  # SDXL: (1, 2, 10)
            attention_head_dim=(2, 4, 4),  # SDXL: (5, 10, 20) heads
            use_linear_projection=True,
            cross_attention_dim=16 + 32,  # concat of both encoders' penultimate states (SDXL: 768 + 1280)
            addition_embed_type="text_time",
            addition_time_embed_dim=addition_time_embed_dim,
            # 6 micro-conditioning ids (orig size, crop, target size) + pooled text embeds of encoder 2
            projection_class_embeddings_input_dim=6 * addition_time_embed_dim + 16,
            norm_num_groups=8,
        ),
    )
    vae = _seeded(seed, lambda: _vae_kl(latent_channels=4, scaling_factor=0.13025))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _if_unet_kwargs(text_dim: int) -> dict[str, Any]:
    """UNet kwargs shared by the IF stages (what diffusers' ``convert_if.py`` sets for every IF U-Net)."""
    return {
        # a multiple of 32: the "group_norm" cross-attention norm always uses 32 groups
        "cross_attention_dim": 32,
        "encoder_hid_dim": text_dim,  # T5 width (IF: 4096), projected to cross_attention_dim
        "attention_head_dim": 8,  # IF: per-head width 64 (num_head_channels)
        "addition_embed_type": "text",  # pooled T5 tokens (AttentionPooling) added to the time embedding
        "addition_embed_type_num_heads": 2,
        "cross_attention_norm": "group_norm",
        "resnet_time_scale_shift": "scale_shift",
        "act_fn": "gelu",
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "norm_num_groups": 8,
    }


def _build_if1(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """DeepFloyd IF stage I: pixel-space U-Net with AttnAddedKV ("SimpleCrossAttn") blocks and T5 text."""
    from diffusers import IFPipeline, UNet2DConditionModel

    tokenizer = _load_tokenizer("t5", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _t5_encoder(tokenizer, d_model=32))
    unet = _seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=32,
            in_channels=3,
            out_channels=6,  # epsilon + learned variance range
            down_block_types=(
                "ResnetDownsampleBlock2D",
                "SimpleCrossAttnDownBlock2D",
                "SimpleCrossAttnDownBlock2D",
            ),
            up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            **_if_unet_kwargs(text_dim=32),
        ),
    )
    return IFPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=_ddpm_if_scheduler(sample_max_value=1.5),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )


def _build_if2(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """DeepFloyd IF stage II: super-resolution U-Net (noisy + upscaled low-res image, noise-level embed)."""
    from diffusers import DDPMScheduler, IFSuperResolutionPipeline, UNet2DConditionModel

    tokenizer = _load_tokenizer("t5", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _t5_encoder(tokenizer, d_model=32))
    unet = _seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=32,
            in_channels=6,  # noisy image (3) + noised, upscaled stage-I image (3)
            out_channels=6,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=(1, 2),
            class_embed_type="timestep",  # the image-noising level is embedded like a timestep
            mid_block_scale_factor=1.414,
            time_embedding_act_fn="gelu",
            time_embedding_dim=32,
            **_if_unet_kwargs(text_dim=32),
        ),
    )
    return IFSuperResolutionPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=_ddpm_if_scheduler(sample_max_value=1.0),
        image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )
