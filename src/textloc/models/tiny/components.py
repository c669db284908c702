"""Shared tiny components: seeded construction, CLIP / T5 / Gemma 2 text encoders, a two-block VAE, IF's
DDPM scheduler. Every family's builder (``unet.py``, ``dit.py``) composes these."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from textloc.models.tiny.tokenizers import _CLIP_MODEL_MAX_LENGTH, _make_clip_tokenizer


def _seeded(seed: int, factory: Callable[[], Any]) -> Any:
    """Build one component right after ``torch.manual_seed(seed)`` and put ``nn.Module``s in eval mode."""
    torch.manual_seed(seed)
    component = factory()
    if isinstance(component, torch.nn.Module):
        component.eval()
    return component


def _clip_text_encoder(
    tokenizer: Any,
    *,
    hidden_size: int = 32,
    projection_dim: int = 32,
    with_projection: bool = False,
    hidden_act: str = "quick_gelu",
) -> torch.nn.Module:
    """A 2-layer CLIP text encoder (2 layers so SDXL's ``hidden_states[-2]`` is a real intermediate layer).

    ``hidden_act``: OpenAI CLIP-L uses "quick_gelu", the OpenCLIP encoders (SD 2's ViT-H, SDXL's / SD3's bigG)
    use "gelu".
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_CLIP_MODEL_MAX_LENGTH,
        projection_dim=projection_dim,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config)


def _t5_encoder(tokenizer: Any, *, d_model: int = 32) -> torch.nn.Module:
    """A 2-layer T5 v1.1-style (gated-gelu) encoder, the text encoder family of IF / SD3 / Flux / PixArt."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        is_encoder_decoder=False,
    )
    return T5EncoderModel(config)


def _gemma2_encoder(tokenizer: Any, *, hidden_size: int = 16) -> torch.nn.Module:
    """A 1-layer Gemma 2 decoder used as Sana's text encoder (Sana reads its last hidden state)."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        sliding_window=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager",  # the implementation Gemma 2 (logit soft-capping) is validated with
    )
    return Gemma2Model(config)


def _vae_kl(
    *,
    latent_channels: int = 4,
    scaling_factor: float = 0.18215,
    shift_factor: float | None = None,
    use_quant_conv: bool = True,
) -> torch.nn.Module:
    """Two-block AutoencoderKL: ``vae_scale_factor == 2``, so a 32x64 image has a 16x32 latent."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=use_quant_conv,
        use_post_quant_conv=use_quant_conv,
    )


def _ddpm_if_scheduler(sample_max_value: float) -> Any:
    """The DDPM scheduler the IF checkpoints ship (learned-range variance, dynamic thresholding)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        prediction_type="epsilon",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=sample_max_value,
    )


def build_tiny_clip(folder: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny random ``CLIPModel`` + ``CLIPProcessor`` to ``folder`` (CLIP-T tests; no weights offline)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    tokenizer = _make_clip_tokenizer()
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, projection_dim=8)
    config = CLIPConfig(text_config=dict(vocab_size=tokenizer.vocab_size, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=8)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
