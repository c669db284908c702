"""Training objectives: the loss each model family was trained with, so a LoRA optimises the same thing.

How one is chosen (:func:`objective_for`): a model textloc ships carries its own recipe in its profile
(``profile_for(pipe).training``, e.g. the embedded model's min-SNR v-prediction loss); every other model gets
the standard objective of its denoiser family from ``DENOISER_OBJECTIVES``, a registry keyed by denoiser class
like ``core.layers.ARCHITECTURES``: epsilon / v-prediction for SD 1.x/2.x and SDXL U-Nets (from the scheduler
config, SDXL recognised by its ``text_time`` conditioning) and flow matching for SD3. Noise and timesteps come
from a generator seeded by ``(seed, step)``, which is what makes kill-and-resume reproduce an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

from textloc.core.layers import get_denoiser
from textloc.errors import UnsupportedModelError


class Objective:
    """The training loss of one pipeline family, plus how to sample it for progress grids."""

    #: Centre-crop training images to the model's aspect (latent models, as diffusers' scripts do).
    crop_images = True
    #: keyword arguments of the pipeline call that draws progress samples
    sample_kwargs: dict[str, Any] = {}

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    @property
    def image_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, prompts: list[str], images: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, prompts: list[str], seed: int, steps: int) -> list[Image.Image]:
        return self.pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                         **self.sample_kwargs).images

    @property
    def device(self) -> torch.device:
        return get_denoiser(self.pipe).device

    @property
    def dtype(self) -> torch.dtype:
        return get_denoiser(self.pipe).dtype


class RecipeObjective(Objective):
    """A shipped model's own recipe (``ModelProfile.training``): its loss, training size and sampling call."""

    def __init__(self, pipe: Any, recipe: Any) -> None:
        super().__init__(pipe)
        self.recipe = recipe
        self.crop_images = recipe.crop_images
        self.sample_kwargs = dict(recipe.sample_kwargs)
        self._loss = recipe.make_loss(pipe)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.recipe.image_size(self.pipe))  # type: ignore[return-value]

    def loss(self, model: torch.nn.Module, prompts: list[str], images: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        return self._loss(model, prompts, images, generator)


def _randn(shape: Sequence[int], generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """Noise from a CPU generator, so the same seed gives the same noise on every device."""
    return torch.randn(tuple(shape), generator=generator).to(like.device, like.dtype)


def _ddpm_target(scheduler: Any, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    if kind == "sample":
        return x0
    raise UnsupportedModelError(f"Expected prediction_type epsilon, v_prediction or sample, but got {kind!r}")


class UNetLatentObjective(Objective):
    """SD 1.x / 2.x latent U-Nets: VAE latents, DDPM noise, epsilon or v target from the scheduler config."""

    def __init__(self, pipe: Any) -> None:
        from diffusers import DDPMScheduler

        super().__init__(pipe)
        unet = pipe.unet
        if unet.config.out_channels != unet.config.in_channels:
            raise UnsupportedModelError(
                f"LoRA fine-tuning of {type(pipe).__name__} is not supported yet (its U-Net predicts "
                f"{unet.config.out_channels} channels for {unet.config.in_channels} inputs: learned variance)"
            )
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    @property
    def image_size(self) -> tuple[int, int]:
        size = get_denoiser(self.pipe).config.sample_size
        h, w = (size, size) if isinstance(size, int) else size
        return h * self.pipe.vae_scale_factor, w * self.pipe.vae_scale_factor

    def encode_images(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        vae = self.pipe.vae
        with torch.no_grad():
            latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.sample(generator)
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).to(self.dtype)

    def encode_prompts(self, prompts: list[str]) -> dict[str, Any]:
        with torch.no_grad():
            embeds = self.pipe.encode_prompt(prompts, self.device, 1, False)[0]
        return {"encoder_hidden_states": embeds}

    def loss(self, model: torch.nn.Module, prompts: list[str], images: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        x0 = self.encode_images(images, generator)
        cond = self.encode_prompts(prompts)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(prompts),), generator=generator)
        noise = _randn(x0.shape, generator, x0)
        t = t.to(self.device)
        noisy = self.scheduler.add_noise(x0, noise, t)
        pred = model(noisy, t, **cond).sample
        return F.mse_loss(pred.float(), _ddpm_target(self.scheduler, x0, noise, t).float())


class SDXLObjective(UNetLatentObjective):
    """SDXL: as SD, plus the pooled text embedding and size/crop ``time_ids`` the U-Net is conditioned on."""

    def encode_prompts(self, prompts: list[str]) -> dict[str, Any]:
        with torch.no_grad():
            embeds, _, pooled, _ = self.pipe.encode_prompt(prompts, device=self.device, num_images_per_prompt=1,
                                                           do_classifier_free_guidance=False)
        h, w = self.image_size
        time_ids = torch.tensor([[h, w, 0, 0, h, w]], device=self.device, dtype=embeds.dtype).repeat(len(prompts), 1)
        return {"encoder_hidden_states": embeds, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}


class SD3FlowObjective(UNetLatentObjective):
    """SD3 / SD3.5: rectified flow matching, ``x_t = (1 - s) x0 + s noise``, target ``noise - x0``.

    Sigmas are drawn logit-normal (mean 0, std 1), the default of diffusers' SD3 LoRA script.
    """

    def __init__(self, pipe: Any) -> None:  # no DDPM scheduler, no learned-variance check
        Objective.__init__(self, pipe)

    def loss(self, model: torch.nn.Module, prompts: list[str], images: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        x0 = self.encode_images(images, generator)
        with torch.no_grad():
            embeds, _, pooled, _ = self.pipe.encode_prompt(
                prompts, None, None, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=False,
                max_sequence_length=77,  # the default of diffusers' SD3 LoRA scripts
            )
        sigma = torch.sigmoid(torch.randn(len(prompts), generator=generator)).to(self.device, x0.dtype)
        noise = _randn(x0.shape, generator, x0)
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1 - s) * x0 + s * noise
        pred = model(hidden_states=noisy, timestep=sigma * 1000, encoder_hidden_states=embeds,
                     pooled_projections=pooled).sample
        return F.mse_loss(pred.float(), (noise - x0).float())


def _unet_objective(pipe: Any) -> Objective:
    """SD 1.x/2.x or SDXL, told apart by the U-Net's conditioning (SDXL adds pooled text + ``time_ids``)."""
    if getattr(pipe, "vae", None) is None:
        raise UnsupportedModelError(
            f"LoRA fine-tuning of {type(pipe).__name__} is not supported yet (a pixel-space U-Net without a VAE "
            "and without a textloc training recipe)"
        )
    if getattr(pipe.unet.config, "addition_embed_type", None) == "text_time":
        return SDXLObjective(pipe)
    return UNetLatentObjective(pipe)


#: Denoiser class name -> objective of its family (the per-family facts, keyed like ``layers.ARCHITECTURES``).
DENOISER_OBJECTIVES: dict[str, Callable[[Any], Objective]] = {
    "UNet2DConditionModel": _unet_objective,
    "SD3Transformer2DModel": SD3FlowObjective,
}


def objective_for(pipe: Any) -> Objective:
    """The training objective of ``pipe``: its profile's recipe, else its denoiser family's, else a clear error."""
    from textloc.models.profiles import profile_for

    recipe = profile_for(pipe).training
    if recipe is not None:
        return RecipeObjective(pipe, recipe)
    try:
        name = type(get_denoiser(pipe)).__name__
    except UnsupportedModelError:
        name = None
    if name not in DENOISER_OBJECTIVES:
        raise UnsupportedModelError(
            f"LoRA fine-tuning of {type(pipe).__name__} is not supported yet; supported: textloc's shipped models "
            f"and pipelines whose denoiser is one of {', '.join(DENOISER_OBJECTIVES)}"
        )
    return DENOISER_OBJECTIVES[name](pipe)
