"""Training recipe of the embedded model: synthetic data rendered on the fly, v-prediction, EMA, resumable.

Every batch is a pure function of ``(config.seed, step)``, so a run that is killed and resumed from its last
checkpoint sees exactly the data it would have seen uninterrupted. Checkpoints are folders written by
``textloc.runs.checkpoint`` (``OUT/checkpoint/``: safetensors + JSON, never a pickle) atomically (temp folder +
rename), so a kill during a save never leaves a corrupt checkpoint. A ``checkpoint.pt`` left by older versions
is never loaded.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from PIL import Image
from tqdm.auto import tqdm

from textloc.models.embedded import renderer
from textloc.models.embedded.pipeline import EmbeddedTextPipeline, build_untrained, coordinate_channels
from textloc.models.embedded.tokenizer import make_prompt
from textloc.models.embedded.words import TRAIN_WORDS
from textloc.runs.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from textloc.runs.io import atomic_write_text


@dataclass
class TrainConfig:
    """Everything that decides the shipped weights. Committed as ``train_config.json``."""

    seed: int = 0
    batch_size: int = 48
    lr: float = 1e-3
    warmup_steps: int = 200
    max_steps: int = 20000
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    min_snr_gamma: float = 5.0
    cfg_dropout: float = 0.1
    p_word: float = 0.4
    p_two_words: float = 0.1
    p_attribute: float = 0.7
    grad_clip: float = 1.0
    checkpoint_every: int = 250
    sample_every: int = 1000
    threads: int = 0  # 0: torch default
    unet_overrides: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls(**json.loads(Path(path).read_text()))


def sample_batch(config: TrainConfig, step: int) -> tuple[list[str], torch.Tensor, list[renderer.SignSpec]]:
    """Prompts, images (B, 3, H, W) in [-1, 1] and ground truth for training step ``step``."""
    rng = random.Random(config.seed * 1_000_003 + step)
    prompts, images, specs = [], [], []
    for _ in range(config.batch_size):
        u = rng.random()
        while True:
            if u < config.p_word:
                text = rng.choice(TRAIN_WORDS)
            elif u < config.p_word + config.p_two_words:
                text = renderer.random_two_words(rng)
            else:
                text = renderer.random_string(rng, 1 if rng.random() < 0.1 else 3)
            if not renderer.is_reserved(text):
                break
        spec = renderer.random_spec(rng, text)
        prompt = "" if rng.random() < config.cfg_dropout else make_prompt(spec, rng, config.p_attribute)
        prompts.append(prompt)
        images.append(renderer.to_tensor_array(renderer.render(spec)))
        specs.append(spec)
    return prompts, torch.from_numpy(np.stack(images)), specs


def v_prediction_loss(
    unet: torch.nn.Module, scheduler: DDPMScheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor,
    embeds: torch.Tensor, gamma: float, coords: torch.Tensor | None = None,
) -> torch.Tensor:
    """The embedded model's objective: v-prediction MSE with min-SNR-gamma weights ``min(snr, g) / (snr + 1)``.

    Shared by training and LoRA fine-tuning, so both optimise exactly the same thing.
    """
    if coords is None:
        coords = coordinate_channels(x0.shape[0], x0.shape[2], x0.shape[3], x0.device, x0.dtype)
    noisy = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t)
    pred = unet(torch.cat([noisy, coords], dim=1), t, encoder_hidden_states=embeds).sample
    alphas = scheduler.alphas_cumprod.to(t.device)[t]
    snr = alphas / (1 - alphas)
    weight = torch.clamp(snr, max=gamma) / (snr + 1)
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return (per_sample * weight.float()).mean()


def _sample_grid(pipe: EmbeddedTextPipeline, path: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    prompts = [
        'a sign that says "CAT"',
        'a blue sign with white letters that says "HELLO"',
        'a yellow sign with black serif letters that says "QUIZ"',
        'a red sign with white mono letters that says "ZEBRA"',
    ] + [f'a sign that says "{renderer.random_string(rng)}"' for _ in range(4)]
    images = pipe(prompts, num_inference_steps=20, generator=torch.Generator().manual_seed(seed)).images
    grid = Image.new("RGB", (renderer.WIDTH * 2, renderer.HEIGHT * 4))
    for i, im in enumerate(images):
        grid.paste(im, ((i % 2) * renderer.WIDTH, (i // 2) * renderer.HEIGHT))
    grid.resize((grid.width * 4, grid.height * 4), Image.NEAREST).save(path)


def train(config: TrainConfig, out_dir: str | Path, max_minutes: float | None = None) -> Path:
    """Train (or resume) in ``out_dir``; returns the folder of the exported EMA pipeline."""
    out = Path(out_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    pipe = build_untrained(config.seed, **config.unet_overrides)
    unet, text_encoder = pipe.unet, pipe.text_encoder
    unet.train()
    text_encoder.train()
    params = [p for p in list(unet.parameters()) + list(text_encoder.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    ema = EMAModel(params, decay=config.ema_decay)
    noise_scheduler = DDPMScheduler.from_config(pipe.scheduler.config)

    step = 0
    ckpt = out / "checkpoint"
    modules = {"unet": unet, "text_encoder": text_encoder}
    if checkpoint_exists(ckpt):  # read (and reject a damaged one) before anything is written
        step = int(load_checkpoint(ckpt, modules=modules, optimizer=optimizer, ema=ema)["step"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "train_config.json", json.dumps(asdict(config), indent=1))
    log = (out / "log.jsonl").open("a")
    start_time, start_step = time.time(), step
    bar = tqdm(total=config.max_steps, initial=step, desc="train-embedded", dynamic_ncols=True)
    coords = None
    while step < config.max_steps:
        if max_minutes is not None and (time.time() - start_time) > max_minutes * 60:
            break
        prompts, images, _ = sample_batch(config, step)
        lr = config.lr * min(1.0, (step + 1) / config.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        if coords is None or coords.shape[0] != images.shape[0]:
            coords = coordinate_channels(images.shape[0], images.shape[2], images.shape[3], images.device,
                                         images.dtype)
        noise = torch.randn_like(images)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (images.shape[0],))
        tokens = pipe.tokenizer(prompts)
        embeds = text_encoder(tokens["input_ids"], tokens["attention_mask"])[0]
        loss = v_prediction_loss(unet, noise_scheduler, images, noise, t, embeds, config.min_snr_gamma, coords)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        ema.step(params)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0:
            rate = (step - start_step) / max(1e-9, time.time() - start_time)
            log.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr, "steps_per_s": rate,
                                  "time": time.time()}) + "\n")
            log.flush()
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            save_checkpoint(ckpt, modules=modules, optimizer=optimizer, ema=ema,
                            meta={"step": step, "config": asdict(config)})
        if step % config.sample_every == 0:
            export_ema(pipe, ema, params, out / "ema")
            _sample_grid(EmbeddedTextPipeline.from_pretrained_dir(out / "ema"), out / f"samples_{step:06d}.png")
    bar.close()
    return export_ema(pipe, ema, params, out / "ema")


def export_ema(pipe: EmbeddedTextPipeline, ema: EMAModel, params: list, directory: Path) -> Path:
    """Save the EMA weights as a diffusers pipeline folder without disturbing the training weights."""
    ema.store(params)
    ema.copy_to(params)
    pipe.unet.eval()
    pipe.text_encoder.eval()
    tmp = directory.with_name(directory.name + ".tmp")
    pipe.save_pretrained(tmp)
    if directory.exists():
        import shutil

        shutil.rmtree(directory)
    os.replace(tmp, directory)
    ema.restore(params)
    pipe.unet.train()
    pipe.text_encoder.train()
    return directory


def main() -> None:  # pragma: no cover - thin CLI wrapper, used as `python -m textloc.models.embedded.train`
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=str(Path(__file__).with_name("train_config.json")))
    parser.add_argument("--out", default="runs/embedded")
    parser.add_argument("--max-minutes", type=float, default=None)
    args = parser.parse_args()
    train(TrainConfig.load(args.config), args.out, args.max_minutes)


if __name__ == "__main__":  # pragma: no cover
    main()

