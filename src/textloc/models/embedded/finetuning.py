"""The embedded model's training recipe as localized fine-tuning reuses it (``ModelProfile.training``).

Why: a LoRA on the localized layers should optimise exactly what the base model was trained on -- the
min-SNR v-prediction loss of ``train.py`` on signs its renderer draws -- and ``apps.finetune`` must learn that
from the profile, never by importing this package. Heavy imports (diffusers, the trainer) happen on first
use, so registering the profile stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from textloc.models.embedded.scenarios import SCENARIOS, SyntheticSigns, parse_scenario
from textloc.models.profiles import TrainingRecipe


def make_loss(pipe: Any) -> Callable[[Any, list[str], Any, Any], Any]:
    """``loss(denoiser, prompts, images, generator)``: ``train.v_prediction_loss`` with the base recipe's gamma."""
    import torch
    from diffusers import DDPMScheduler

    from textloc.models.embedded.train import TrainConfig, v_prediction_loss

    scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    gamma = TrainConfig().min_snr_gamma

    def loss(denoiser: Any, prompts: list[str], images: Any, generator: Any) -> Any:
        weight = next(pipe.unet.parameters())  # the unwrapped U-Net: its device and dtype
        x0 = images.to(weight.device, weight.dtype)
        with torch.no_grad():
            tokens = pipe.tokenizer(prompts)
            embeds = pipe.text_encoder(tokens["input_ids"].to(weight.device),
                                       tokens["attention_mask"].to(weight.device))[0]
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(prompts),), generator=generator)
        # drawn on the CPU, so one seed gives the same noise on every device
        noise = torch.randn(tuple(x0.shape), generator=generator).to(x0.device, x0.dtype)
        return v_prediction_loss(denoiser, scheduler, x0, noise, t.to(weight.device), embeds, gamma)

    return loss


def image_size(pipe: Any) -> tuple[int, int]:
    return tuple(pipe.native_size)  # type: ignore[return-value]


TRAINING = TrainingRecipe(
    make_loss=make_loss,
    image_size=image_size,
    crop_images=False,  # a sign photo squeezed to 24x64 keeps all of its text; a crop would cut letters off
    sample_kwargs={"guidance_scale": 3.0},
    data_source="synthetic",
    data=SyntheticSigns,  # the base recipe's batches (no scenario) or a scenario's
    scenario=parse_scenario,
    scenario_names=tuple(SCENARIOS),
)
