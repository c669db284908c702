"""The embedded text-rendering pipeline: a pixel-space diffusers pipeline that reads top to bottom.

Components: ``EmbeddedTokenizer`` -> ``EmbeddedTextEncoder`` -> ``UNet2DConditionModel`` (pixel space, two
extra input channels holding x/y coordinates so cross-attention can place letters) with a standard diffusers
scheduler and classifier-free guidance laid out as ``[uncond, cond]`` like Stable Diffusion.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput, SchedulerMixin, UNet2DConditionModel
from diffusers.loaders import StableDiffusionLoraLoaderMixin
from PIL import Image

from textloc.models.embedded.renderer import HEIGHT, WIDTH
from textloc.models.embedded.text_encoder import EmbeddedTextEncoder
from textloc.models.embedded.tokenizer import EmbeddedTokenizer


def coordinate_channels(batch: int, height: int, width: int, device: torch.device, dtype: torch.dtype):
    """Two channels, x and y in [-1, 1], that the U-Net reads next to the noisy image."""
    ys = torch.linspace(-1, 1, height, device=device, dtype=dtype)
    xs = torch.linspace(-1, 1, width, device=device, dtype=dtype)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1])  # (x, y)
    return grid[None].expand(batch, -1, -1, -1)


class OwnTokenizerMixin:
    """For textloc's own pipelines, whose tokenizer is not a transformers class: diffusers saves and loads the
    models and the scheduler, and the tokenizer is saved beside them in ``tokenizer/`` (both embedded models)."""

    #: the attribute holding the denoiser, switched to eval mode after loading
    denoiser_name = "unet"

    @classmethod
    def from_pretrained_dir(cls, directory: str | Path, **kwargs: Any) -> Any:
        """Load a folder written by ``save_pretrained`` (the tokenizer lives in ``tokenizer/``)."""
        directory = Path(directory)
        tokenizer = EmbeddedTokenizer.from_pretrained(directory / "tokenizer")
        pipe = cls.from_pretrained(str(directory), tokenizer=tokenizer, **kwargs)  # type: ignore[attr-defined]
        getattr(pipe, cls.denoiser_name).eval()
        pipe.text_encoder.eval()
        return pipe

    def save_pretrained(self, save_directory: str | Path, **kwargs: Any) -> None:
        super().save_pretrained(save_directory, **kwargs)  # type: ignore[misc]
        self.tokenizer.save_pretrained(Path(save_directory) / "tokenizer")  # type: ignore[attr-defined]


class EmbeddedTextPipeline(OwnTokenizerMixin, DiffusionPipeline, StableDiffusionLoraLoaderMixin):
    r"""Text-to-image pipeline of textloc's embedded model.

    Args:
        unet: pixel-space U-Net with ``in_channels = 3 + 2`` (RGB + coordinates).
        text_encoder: ``EmbeddedTextEncoder``.
        tokenizer: ``EmbeddedTokenizer``.
        scheduler: any diffusers scheduler configured for the U-Net's prediction type.
    """

    model_cpu_offload_seq = "text_encoder->unet"
    # LoRA files in diffusers' format load with `pipe.load_lora_weights` (U-Net LoRA; see textloc.apps.finetune.core).
    _lora_loadable_modules = ["unet"]

    def __init__(
        self,
        unet: UNet2DConditionModel,
        text_encoder: EmbeddedTextEncoder,
        tokenizer: EmbeddedTokenizer,
        scheduler: SchedulerMixin,
    ) -> None:
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler)

    @property
    def native_size(self) -> tuple[int, int]:
        size = self.unet.config.sample_size
        return (size, size) if isinstance(size, int) else (size[0], size[1])

    def encode_prompt(
        self,
        prompt: list[str],
        num_images_per_prompt: int,
        do_classifier_free_guidance: bool,
        negative_prompt: list[str] | None = None,
    ) -> torch.Tensor:
        """Text embeddings laid out ``[uncond x B, cond x B]`` (just ``cond`` without guidance)."""
        device = self.unet.device
        tokens = self.tokenizer(prompt)
        embeds = self.text_encoder(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))[0]
        embeds = embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if not do_classifier_free_guidance:
            return embeds
        negative_prompt = negative_prompt or [""] * len(prompt)
        neg = self.tokenizer(negative_prompt)
        neg_embeds = self.text_encoder(neg["input_ids"].to(device), neg["attention_mask"].to(device))[0]
        neg_embeds = neg_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return torch.cat([neg_embeds, embeds])

    def check_inputs(self, prompt: Any, height: int | None, width: int | None, negative_prompt: Any) -> None:
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
                raise ValueError(
                    f"Expected {len(prompt)} negative prompts, but got {len(negative_prompt)}"
                )

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
        callback_on_step_end: Callable[[Any, int, Any, dict], dict] | None = None,
    ) -> ImagePipelineOutput | tuple:
        # 1. Check inputs
        self.check_inputs(prompt, height, width, negative_prompt)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if isinstance(negative_prompt, str):
            negative_prompt = [negative_prompt] * len(prompts)
        batch = len(prompts) * num_images_per_prompt
        device, dtype = self.unet.device, self.unet.dtype
        height, width = self.native_size
        do_cfg = guidance_scale > 1.0

        # 2. Encode the prompt
        prompt_embeds = self.encode_prompt(prompts, num_images_per_prompt, do_cfg, negative_prompt)

        # 3. Timesteps and initial noise (pixel space)
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        shape = (batch, 3, height, width)
        if latents is None:
            from diffusers.utils.torch_utils import randn_tensor

            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = latents * self.scheduler.init_noise_sigma
        coords = coordinate_channels(batch * (2 if do_cfg else 1), height, width, device, dtype)

        # 4. Denoising loop
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_input = torch.cat([latents] * 2) if do_cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            model_input = torch.cat([model_input, coords], dim=1)
            noise_pred = self.unet(model_input, t, encoder_hidden_states=prompt_embeds).sample
            if do_cfg:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (cond - uncond)
            latents = self.scheduler.step(noise_pred, t, latents).prev_sample
            if callback_on_step_end is not None:
                out = callback_on_step_end(self, i, t, {"latents": latents})
                latents = out.get("latents", latents)

        # 5. Decode: pixel space, so just map [-1, 1] -> [0, 1]
        images = (latents / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).float().cpu().numpy()
        if output_type == "pil":
            images = [Image.fromarray((im * 255).round().astype(np.uint8)) for im in images]
        elif output_type == "pt":
            images = torch.from_numpy(images)
        self.maybe_free_model_hooks()
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)


def build_untrained(seed: int = 0, **unet_overrides: Any) -> EmbeddedTextPipeline:
    """A freshly initialised embedded pipeline (the training recipe's starting point)."""
    from diffusers import DPMSolverMultistepScheduler

    from textloc.models.embedded.tokenizer import CHAR_END, CHAR_START, MAX_LENGTH, VOCAB

    torch.manual_seed(seed)
    unet_config: dict[str, Any] = dict(
        sample_size=(HEIGHT, WIDTH),
        in_channels=5,
        out_channels=3,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 128),
        layers_per_block=1,
        attention_head_dim=8,
        cross_attention_dim=128,
        norm_num_groups=16,
    )
    unet_config.update(unet_overrides)
    unet = UNet2DConditionModel(**unet_config)
    text_encoder = EmbeddedTextEncoder(
        vocab_size=len(VOCAB),
        hidden_size=unet_config["cross_attention_dim"],
        max_position_embeddings=MAX_LENGTH,
        char_token_start=CHAR_START,
        char_token_end=CHAR_END,
    )
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type="v_prediction",
        algorithm_type="dpmsolver++",
        solver_order=2,
    )
    unet.eval()
    text_encoder.eval()
    return EmbeddedTextPipeline(unet, text_encoder, EmbeddedTokenizer(), scheduler).to("cpu")
