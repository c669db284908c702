"""Training recipe of the embedded MMDiT: the U-Net model's synthetic data, rectified flow, EMA, resumable.

* Data: ``textloc.models.embedded.train.sample_batch`` with the same data fields, so both embedded models see
  identical prompts and images (including the 10 % empty prompts for classifier-free guidance).
* Objective (SD3's): ``x_t = (1 - s) x0 + s noise`` with ``s`` drawn logit-normal (``sigmoid(N(m, std))``),
  the transformer predicts the velocity ``noise - x0`` at timestep ``1000 s``; plain MSE.
* Every batch, its noise and its ``s`` are a pure function of ``(config.seed, step)``, so a run that is killed
  and resumed from its last checkpoint computes exactly what the uninterrupted run would have computed.
* Checkpoints: ``OUT/checkpoint/`` via ``textloc.runs.checkpoint`` (safetensors + JSON, atomic, no pickle),
  every ``checkpoint_every`` steps and at least every ``checkpoint_minutes`` minutes of wall time.
* ``OUT/log.jsonl`` (every ``log_every`` steps), ``OUT/samples_{step}.png`` and ``OUT/ema/`` (the EMA
  weights as a pipeline folder) every ``sample_every`` steps and at the end.

Run: ``python -m textloc.models.embedded_mmdit.train --out runs/embedded-mmdit --threads 1``.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers.training_utils import EMAModel
from PIL import Image

from textloc.models.embedded import renderer
from textloc.models.embedded.train import TrainConfig as UNetTrainConfig
from textloc.models.embedded.train import sample_batch
from textloc.models.embedded_mmdit.pipeline import EmbeddedMMDiTPipeline, build_untrained, encode_text
from textloc.runs.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint
from textloc.runs.io import atomic_write_text


@dataclass
class TrainConfig:
    """Everything that decides the weights. Committed as ``train_config.json``."""

    seed: int = 0
    batch_size: int = 32
    lr: float = 5e-4
    warmup_steps: int = 500
    max_steps: int = 30000
    weight_decay: float = 0.01
    ema_decay: float = 0.999
    logit_mean: float = 0.0
    logit_std: float = 1.0
    cfg_dropout: float = 0.1
    p_word: float = 0.4
    p_two_words: float = 0.1
    p_attribute: float = 0.7
    grad_clip: float = 1.0
    checkpoint_every: int = 200
    checkpoint_minutes: float = 8.0
    sample_every: int = 1000
    log_every: int = 50
    threads: int = 0  # 0: torch default
    transformer_overrides: dict = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        return cls(**json.loads(Path(path).read_text()))

    def data_config(self) -> UNetTrainConfig:
        """The U-Net trainer's config with this run's data fields, for ``sample_batch``."""
        return UNetTrainConfig(seed=self.seed, batch_size=self.batch_size, cfg_dropout=self.cfg_dropout,
                               p_word=self.p_word, p_two_words=self.p_two_words, p_attribute=self.p_attribute)


def flow_noise(config: TrainConfig, step: int, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noise, sigmas)`` for training step ``step``: a pure function of ``(seed, step)``."""
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step + 7)
    noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    normal = torch.randn(x0.shape[0], generator=generator) * config.logit_std + config.logit_mean
    return noise, torch.sigmoid(normal).to(x0.dtype)


def flow_matching_loss(transformer: torch.nn.Module, x0: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                       embeds: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """Rectified-flow MSE: predict ``noise - x0`` from ``(1 - s) x0 + s noise`` at timestep ``1000 s``."""
    s = sigmas[:, None, None, None]
    noisy = (1 - s) * x0 + s * noise
    pred = transformer(hidden_states=noisy, timestep=sigmas * 1000, encoder_hidden_states=embeds,
                       pooled_projections=pooled, return_dict=False)[0]
    return F.mse_loss(pred.float(), (noise - x0).float())


def _sample_grid(pipe: EmbeddedMMDiTPipeline, path: Path, seed: int = 0) -> None:
    rng = random.Random(seed)
    prompts = [
        'a sign that says "CAT"',
        'a blue sign with white letters that says "HELLO"',
        'a yellow sign with black serif letters that says "QUIZ"',
        'a red sign with white mono letters that says "ZEBRA"',
    ] + [f'a sign that says "{renderer.random_string(rng)}"' for _ in range(4)]
    pipe.set_progress_bar_config(disable=True)
    images = pipe(prompts, num_inference_steps=20, generator=torch.Generator().manual_seed(seed)).images
    grid = Image.new("RGB", (renderer.WIDTH * 2, renderer.HEIGHT * 4))
    for i, im in enumerate(images):
        grid.paste(im, ((i % 2) * renderer.WIDTH, (i // 2) * renderer.HEIGHT))
    tmp = path.with_name(f".{path.name}.tmp.png")
    grid.resize((grid.width * 4, grid.height * 4), Image.NEAREST).save(tmp)
    os.replace(tmp, path)


def export_ema(pipe: EmbeddedMMDiTPipeline, ema: EMAModel, params: list, directory: Path) -> Path:
    """Save the EMA weights as a diffusers pipeline folder without disturbing the training weights."""
    ema.store(params)
    ema.copy_to(params)
    pipe.transformer.eval()
    pipe.text_encoder.eval()
    tmp = directory.with_name(directory.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp)
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    ema.restore(params)
    pipe.transformer.train()
    pipe.text_encoder.train()
    return directory


def train(config: TrainConfig, out_dir: str | Path, max_minutes: float | None = None,
          progress: bool = True) -> Path:
    """Train (or resume) in ``out_dir``; returns the folder of the exported EMA pipeline."""
    out = Path(out_dir)
    if config.threads:
        torch.set_num_threads(config.threads)
    pipe = build_untrained(config.seed, **config.transformer_overrides)
    transformer, text_encoder = pipe.transformer, pipe.text_encoder
    transformer.train()
    text_encoder.train()
    params = [p for p in list(transformer.parameters()) + list(text_encoder.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    ema = EMAModel(params, decay=config.ema_decay)
    modules = {"transformer": transformer, "text_encoder": text_encoder}
    data_config = config.data_config()

    step = 0
    ckpt = out / "checkpoint"
    if checkpoint_exists(ckpt):
        meta = load_checkpoint(ckpt, modules=modules, optimizer=optimizer, ema=ema)  # before anything is written
        step = int(meta["step"])
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "train_config.json", json.dumps(asdict(config), indent=1))
    start_time, start_step, last_save = time.time(), step, time.time()
    losses: list[float] = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, initial=step, desc="train-embedded-mmdit", dynamic_ncols=True)
    with (out / "log.jsonl").open("a") as log:
        while step < config.max_steps:
            if max_minutes is not None and (time.time() - start_time) > max_minutes * 60:
                break
            prompts, images, _ = sample_batch(data_config, step)
            noise, sigmas = flow_noise(config, step, images)
            lr = config.lr * min(1.0, (step + 1) / config.warmup_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            embeds, pooled = encode_text(text_encoder, pipe.tokenizer, prompts)
            loss = flow_matching_loss(transformer, images, noise, sigmas, embeds, pooled)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            optimizer.step()
            ema.step(params)
            step += 1
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(f"loss is {value} at step {step}; last checkpoint in {ckpt}")
            losses.append(value)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{value:.4f}")
            if step % config.log_every == 0:
                rate = (step - start_step) / max(1e-9, time.time() - start_time)
                log.write(json.dumps({"step": step, "loss": value, "loss_mean": sum(losses) / len(losses),
                                      "grad_norm": float(grad_norm), "lr": lr, "steps_per_s": rate,
                                      "time": time.time()}) + "\n")
                log.flush()
                losses.clear()
            if (step % config.checkpoint_every == 0 or step == config.max_steps
                    or time.time() - last_save > config.checkpoint_minutes * 60):
                save_checkpoint(ckpt, modules=modules, optimizer=optimizer, ema=ema,
                                meta={"step": step, "config": asdict(config)})
                last_save = time.time()
            if step % config.sample_every == 0:
                export_ema(pipe, ema, params, out / "ema")
                _sample_grid(EmbeddedMMDiTPipeline.from_pretrained_dir(out / "ema"), out / f"samples_{step:06d}.png")
        if step > start_step and not (step % config.checkpoint_every == 0 or step == config.max_steps):
            save_checkpoint(ckpt, modules=modules, optimizer=optimizer, ema=ema,
                            meta={"step": step, "config": asdict(config)})
    if bar is not None:
        bar.close()
    return export_ema(pipe, ema, params, out / "ema")


def main() -> None:  # pragma: no cover - thin CLI wrapper
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(Path(__file__).with_name("train_config.json")))
    parser.add_argument("--out", default="runs/embedded-mmdit")
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--max-steps", type=int, default=None, help="override the config's max_steps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (overrides the config)")
    args = parser.parse_args()
    config = TrainConfig.load(args.config)
    if args.threads is not None:
        config.threads = args.threads
    if args.max_steps is not None:
        config.max_steps = args.max_steps
    train(config, args.out, args.max_minutes)


if __name__ == "__main__":  # pragma: no cover
    main()
