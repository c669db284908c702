"""Tiny transformer pipelines: SD3 (MMDiT), FLUX.1, PixArt-α/Σ and Sana (real diffusers classes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textloc.models.tiny.components import _clip_text_encoder, _gemma2_encoder, _seeded, _t5_encoder, _vae_kl
from textloc.models.tiny.tokenizers import _load_tokenizer


def _build_sd3(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """SD3: MMDiT (joint blocks, last one context_pre_only), CLIP-L + CLIP-G (with projection) + T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = _load_tokenizer("clip", tokenizer_dir)
    tokenizer_2 = _load_tokenizer("clip", tokenizer_dir)
    tokenizer_3 = _load_tokenizer("t5", tokenizer_dir)
    # CLIP widths 8 + 24 = 32 = T5 width: SD3 zero-pads the concatenated CLIP states to the T5 width.
    text_encoder = _seeded(
        seed, lambda: _clip_text_encoder(tokenizer, hidden_size=8, projection_dim=8, with_projection=True)
    )
    text_encoder_2 = _seeded(
        seed,
        lambda: _clip_text_encoder(
            tokenizer_2, hidden_size=24, projection_dim=24, with_projection=True, hidden_act="gelu"
        ),
    )
    text_encoder_3 = _seeded(seed, lambda: _t5_encoder(tokenizer_3, d_model=32))
    transformer = _seeded(
        seed,
        lambda: SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=32,
            caption_projection_dim=32,
            pooled_projection_dim=8 + 24,
            pos_embed_max_size=32,
        ),
    )
    vae = _seeded(
        seed,
        lambda: _vae_kl(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def _build_flux(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """Flux-dev-like: 1 double-stream + 1 single-stream block, RoPE, embedded guidance, CLIP pooled + T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = _load_tokenizer("clip", tokenizer_dir)
    tokenizer_2 = _load_tokenizer("t5", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _clip_text_encoder(tokenizer, hidden_size=32))
    text_encoder_2 = _seeded(seed, lambda: _t5_encoder(tokenizer_2, d_model=32))
    transformer = _seeded(
        seed,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,  # 4 latent channels x 2x2 packing (Flux: 16 x 4 = 64)
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,  # T5 width
            pooled_projection_dim=32,  # CLIP pooled width
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim (Flux: 16 + 56 + 56 = 128)
        ),
    )
    vae = _seeded(
        seed,
        lambda: _vae_kl(latent_channels=4, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def _build_pixart(seed: int, tokenizer_dir: str | Path | None, *, sigma: bool) -> Any:
    """PixArt-alpha / -sigma: DiT with adaLN-single, self-attn + T5 cross-attn per block, learned sigma."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )

    tokenizer = _load_tokenizer("t5", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _t5_encoder(tokenizer, d_model=32))
    transformer = _seeded(
        seed,
        lambda: PixArtTransformer2DModel(
            # sample_size != 128 so the pipeline does not pass resolution/aspect-ratio conditions
            sample_size=16,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=4,
            in_channels=4,
            out_channels=8,  # epsilon + learned sigma
            cross_attention_dim=32,
            caption_channels=32,  # T5 width (PixArt: 4096)
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            interpolation_scale=2 if sigma else 1,
        ),
    )
    vae = _seeded(seed, lambda: _vae_kl(latent_channels=4, scaling_factor=0.18215))
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon", solver_order=2
    )
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    return cls(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def _build_sana(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """Sana: linear-attention DiT + Gemma 2 text encoder + DC-AE autoencoder, flow DPM-Solver."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    tokenizer = _load_tokenizer("gemma", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _gemma2_encoder(tokenizer, hidden_size=16))
    transformer = _seeded(
        seed,
        lambda: SanaTransformer2DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=2,
            num_cross_attention_heads=2,
            cross_attention_head_dim=8,
            cross_attention_dim=16,
            caption_channels=16,  # Gemma width (Sana: 2304)
            sample_size=16,
            patch_size=1,
        ),
    )
    vae = _seeded(
        seed,
        lambda: AutoencoderDC(
            in_channels=3,
            latent_channels=4,
            attention_head_dim=2,
            encoder_block_types=("ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            encoder_qkv_multiscales=((), (5,)),
            decoder_qkv_multiscales=((), (5,)),
            encoder_layers_per_block=(1, 1),
            decoder_layers_per_block=(1, 1),
            downsample_block_type="conv",
            upsample_block_type="interpolate",
            decoder_norm_types="rms_norm",
            decoder_act_fns="silu",
            scaling_factor=0.41407,
        ),
    )
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
        solver_order=2,
    )
    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )
