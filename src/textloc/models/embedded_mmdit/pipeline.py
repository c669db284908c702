"""The second embedded model: an SD3-style MMDiT in pixel space, a diffusers pipeline that reads top to bottom.

Components: ``EmbeddedTokenizer`` -> ``EmbeddedTextEncoder`` (both shared with the U-Net model in
``textloc.models.embedded``) -> diffusers' own ``SD3Transformer2DModel`` (joint attention: text tokens and
image patches attend together; every block but the last updates the text stream, the last one is
``context_pre_only``) with ``FlowMatchEulerDiscreteScheduler`` (rectified flow; the transformer predicts the
velocity ``noise - x0``).

Choices, documented:

* **Pixel space, no padding.** The renderer's 24 x 64 RGB image goes straight into the patch embedding; 24
  and 64 are multiples of the patch size (2 or 4), so no pad/crop is needed. The transformer is configured
  square (``sample_size=64``) with ``pos_embed_max_size = 64 // patch_size``; SD3's ``PatchEmbed`` then
  centre-crops its fixed 2-D sin-cos position table to the 24 x 64 grid, so every patch knows where it is
  (the U-Net model needed extra coordinate channels for that; this one does not).
* **Pooled projection = masked mean of the text encoder's output** over the prompt's real tokens
  (``attention_mask == 1``). SD3 feeds a pooled CLIP vector into the AdaLN time embedding; our encoder has no
  pooled token, and the mean is order-free, so it carries "which colours/fonts/letters are mentioned" into
  every block's modulation while the per-token sequence (with its frozen per-token and position-offset
  codes) carries *where* each letter goes through joint attention.
* **Classifier-free guidance** exactly like diffusers' ``StableDiffusion3Pipeline``: one batched
  transformer call on ``[uncond, cond]`` with ``joint_attention_kwargs`` passed through.
* ``output_type="pt"`` returns an ``(N, 3, H, W)`` tensor in [0, 1] (diffusers' convention),
  ``"np"`` an ``(N, H, W, 3)`` array, ``"pil"`` a list of images.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, FlowMatchEulerDiscreteScheduler, ImagePipelineOutput, SD3Transformer2DModel
from diffusers.loaders import SD3LoraLoaderMixin
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from textloc.models.embedded.pipeline import OwnTokenizerMixin
from textloc.models.embedded.renderer import HEIGHT, WIDTH
from textloc.models.embedded.text_encoder import EmbeddedTextEncoder
from textloc.models.embedded.tokenizer import EmbeddedTokenizer

#: The architecture trained and shipped (see ``train_config.json``); ``build_untrained(**overrides)`` changes it.
DEFAULT_TRANSFORMER: dict[str, Any] = dict(
    patch_size=2,
    num_layers=6,
    attention_head_dim=32,
    num_attention_heads=4,
)


def pooled_text(embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of the text encoder's output over real tokens: SD3's ``pooled_projections``."""
    mask = attention_mask.to(embeds.dtype)[..., None]
    return (embeds * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def encode_text(text_encoder: EmbeddedTextEncoder, tokenizer: EmbeddedTokenizer, prompts: list[str],
                device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``(prompt_embeds, pooled_prompt_embeds)`` for a list of prompts (shared by training and sampling)."""
    tokens = tokenizer(prompts)
    mask = tokens["attention_mask"].to(device)
    embeds = text_encoder(tokens["input_ids"].to(device), mask)[0]
    return embeds, pooled_text(embeds, mask)


class EmbeddedMMDiTPipeline(OwnTokenizerMixin, DiffusionPipeline, SD3LoraLoaderMixin):
    r"""Text-to-image pipeline of textloc's embedded MMDiT model.

    Args:
        transformer: ``SD3Transformer2DModel`` with ``in_channels = out_channels = 3`` (pixel space).
        text_encoder: ``EmbeddedTextEncoder``; its hidden size is the transformer's ``joint_attention_dim``
            and ``pooled_projection_dim``.
        tokenizer: ``EmbeddedTokenizer``.
        scheduler: ``FlowMatchEulerDiscreteScheduler`` (or another flow-matching scheduler).
    """

    model_cpu_offload_seq = "text_encoder->transformer"
    # LoRA files in diffusers' SD3 format load with `pipe.load_lora_weights` (transformer only).
    _lora_loadable_modules = ["transformer"]
    transformer_name = "transformer"
    denoiser_name = "transformer"
    _optional_components: list[str] = []

    def __init__(
        self,
        transformer: SD3Transformer2DModel,
        text_encoder: EmbeddedTextEncoder,
        tokenizer: EmbeddedTokenizer,
        scheduler: FlowMatchEulerDiscreteScheduler,
    ) -> None:
        super().__init__()
        self.register_modules(transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)

    def load_lora_weights(  # type: ignore[override]
        self,
        pretrained_model_name_or_path_or_dict: str | Path | dict[str, torch.Tensor],
        adapter_name: str | None = None,
        hotswap: bool = False,
        **kwargs: Any,
    ) -> None:
        """``SD3LoraLoaderMixin.load_lora_weights`` for the transformer only (SD3's version also loads into
        ``text_encoder_2``, which this pipeline does not have). Safetensors files only."""
        if isinstance(pretrained_model_name_or_path_or_dict, dict):
            pretrained_model_name_or_path_or_dict = pretrained_model_name_or_path_or_dict.copy()
        elif isinstance(pretrained_model_name_or_path_or_dict, Path):
            pretrained_model_name_or_path_or_dict = str(pretrained_model_name_or_path_or_dict)
        low_cpu_mem_usage = kwargs.pop("low_cpu_mem_usage", False)
        kwargs.setdefault("use_safetensors", True)
        kwargs["return_lora_metadata"] = True
        state_dict, metadata = self.lora_state_dict(pretrained_model_name_or_path_or_dict, **kwargs)
        if not all("lora" in key for key in state_dict):
            raise ValueError("Invalid LoRA checkpoint. Make sure all LoRA param names contain `'lora'` substring.")
        others = sorted({key.split(".")[0] for key in state_dict if not key.startswith(f"{self.transformer_name}.")})
        if others:
            raise ValueError(f"This pipeline loads LoRA weights into the transformer only, but got keys for {others}")
        self.load_lora_into_transformer(
            state_dict, transformer=self.transformer, adapter_name=adapter_name, metadata=metadata, _pipeline=self,
            low_cpu_mem_usage=low_cpu_mem_usage, hotswap=hotswap,
        )

    @property
    def native_size(self) -> tuple[int, int]:
        return (HEIGHT, WIDTH)

    @property
    def joint_attention_kwargs(self) -> dict[str, Any] | None:
        return getattr(self, "_joint_attention_kwargs", None)

    def encode_prompt(
        self,
        prompt: list[str],
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: list[str] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt_embeds, pooled_prompt_embeds)`` laid out ``[uncond x B, cond x B]`` (``cond`` alone
        without guidance)."""
        device = self.transformer.device
        embeds, pooled = encode_text(self.text_encoder, self.tokenizer, prompt, device)
        embeds = embeds.repeat_interleave(num_images_per_prompt, dim=0)
        pooled = pooled.repeat_interleave(num_images_per_prompt, dim=0)
        if not do_classifier_free_guidance:
            return embeds, pooled
        negative_prompt = negative_prompt or [""] * len(prompt)
        neg, neg_pooled = encode_text(self.text_encoder, self.tokenizer, negative_prompt, device)
        neg = neg.repeat_interleave(num_images_per_prompt, dim=0)
        neg_pooled = neg_pooled.repeat_interleave(num_images_per_prompt, dim=0)
        return torch.cat([neg, embeds]), torch.cat([neg_pooled, pooled])

    def check_inputs(self, prompt: Any, height: int | None, width: int | None, negative_prompt: Any,
                     output_type: str) -> None:
        if not isinstance(prompt, (str, list)) or (isinstance(prompt, list) and not prompt):
            raise ValueError(f"Expected `prompt` to be a str or a non-empty list of str, but got {prompt!r}")
        native = self.native_size
        if (height or native[0], width or native[1]) != native:
            raise ValueError(
                f"Expected height x width = {native[0]} x {native[1]} (the embedded model's only size), "
                f"but got {height} x {width}"
            )
        if negative_prompt is not None and isinstance(prompt, list) and isinstance(negative_prompt, list):
            if len(negative_prompt) != len(prompt):
                raise ValueError(f"Expected {len(prompt)} negative prompts, but got {len(negative_prompt)}")
        if output_type not in ("pil", "np", "pt"):
            raise ValueError(f"Expected output_type 'pil', 'np' or 'pt', but got {output_type!r}")

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        height: int | None = None,
        width: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        joint_attention_kwargs: dict[str, Any] | None = None,
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ImagePipelineOutput | tuple:
        # 1. Check inputs
        self.check_inputs(prompt, height, width, negative_prompt, output_type)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * len(prompts)
        batch = len(prompts) * num_images_per_prompt
        device, dtype = self.transformer.device, self.transformer.dtype
        height, width = self.native_size
        do_cfg = guidance_scale > 1.0
        self._joint_attention_kwargs = joint_attention_kwargs
        tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]

        # 2. Encode the prompt
        prompt_embeds, pooled_prompt_embeds = self.encode_prompt(prompts, num_images_per_prompt, do_cfg,
                                                                 negative_prompt)
        prompt_embeds, pooled_prompt_embeds = prompt_embeds.to(dtype), pooled_prompt_embeds.to(dtype)

        # 3. Timesteps and initial noise (pixel space: the "latents" are the image itself)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        shape = (batch, self.transformer.config.in_channels, height, width)
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            if tuple(latents.shape) != shape:
                raise ValueError(f"Expected latents of shape {shape}, but got {tuple(latents.shape)}")
            latents = latents.to(device=device, dtype=dtype)

        # 4. Denoising loop (as diffusers' StableDiffusion3Pipeline: one batched call on [uncond, cond])
        for i, t in enumerate(self.progress_bar(timesteps)):
            latent_model_input = torch.cat([latents] * 2) if do_cfg else latents
            timestep = t.expand(latent_model_input.shape[0])
            noise_pred = self.transformer(
                hidden_states=latent_model_input,
                timestep=timestep,
                encoder_hidden_states=prompt_embeds,
                pooled_projections=pooled_prompt_embeds,
                joint_attention_kwargs=self.joint_attention_kwargs,
                return_dict=False,
            )[0]
            if do_cfg:
                noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)
                noise_pred = noise_pred_uncond + guidance_scale * (noise_pred_text - noise_pred_uncond)
            latents = self.scheduler.step(noise_pred, t, latents, return_dict=False)[0]
            if callback_on_step_end is not None:
                local = {"latents": latents, "prompt_embeds": prompt_embeds,
                         "pooled_prompt_embeds": pooled_prompt_embeds}
                out = callback_on_step_end(self, i, t, {k: local[k] for k in tensor_inputs if k in local})
                latents = out.pop("latents", latents)
                prompt_embeds = out.pop("prompt_embeds", prompt_embeds)
                pooled_prompt_embeds = out.pop("pooled_prompt_embeds", pooled_prompt_embeds)

        # 5. Decode: pixel space, so just map [-1, 1] -> [0, 1]
        images = (latents / 2 + 0.5).clamp(0, 1).float().cpu()
        if output_type == "pt":
            result: Any = images
        else:
            result = images.permute(0, 2, 3, 1).numpy()
            if output_type == "pil":
                result = [Image.fromarray((im * 255).round().astype(np.uint8)) for im in result]
        self.maybe_free_model_hooks()
        if not return_dict:
            return (result,)
        return ImagePipelineOutput(images=result)


def build_untrained(seed: int = 0, text_hidden_size: int = 128, shift: float = 1.0,
                    **transformer_overrides: Any) -> EmbeddedMMDiTPipeline:
    """A freshly initialised MMDiT pipeline (the training recipe's starting point)."""
    from textloc.models.embedded.tokenizer import CHAR_END, CHAR_START, MAX_LENGTH, VOCAB

    torch.manual_seed(seed)
    config: dict[str, Any] = dict(DEFAULT_TRANSFORMER)
    config.update(transformer_overrides)
    patch = config["patch_size"]
    if HEIGHT % patch or WIDTH % patch:
        raise ValueError(f"patch_size {patch} does not divide the {HEIGHT} x {WIDTH} image")
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    size = max(HEIGHT, WIDTH)
    config = dict(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        joint_attention_dim=text_hidden_size,
        caption_projection_dim=inner,
        pooled_projection_dim=text_hidden_size,
        pos_embed_max_size=size // patch,
    ) | config
    transformer = SD3Transformer2DModel(**config)
    text_encoder = EmbeddedTextEncoder(
        vocab_size=len(VOCAB),
        hidden_size=text_hidden_size,
        max_position_embeddings=MAX_LENGTH,
        char_token_start=CHAR_START,
        char_token_end=CHAR_END,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    transformer.eval()
    text_encoder.eval()
    return EmbeddedMMDiTPipeline(transformer, text_encoder, EmbeddedTokenizer(), scheduler).to("cpu")
