"""Settings and result of one localized LoRA run, and the names of the files it writes.

Why one place: the CLI, the training loop, resume checks and the benchmark all read these; the settings a
resumed run must share with its checkpoint are named here once (``FinetuneConfig.resume_key``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from textloc.errors import InputError

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: the resumable training state: a ``textloc.runs.checkpoint`` folder (safetensors + JSON, never a pickle)
CHECKPOINT_NAME = "checkpoint"
#: the pickle checkpoint of older versions: never opened (loading a pickle runs arbitrary code)
LEGACY_CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "finetune_config.json"
SUMMARY_NAME = "finetune_summary.json"

TARGETS = ("attn", "text_kv")
MIXED_PRECISION = ("no", "fp16", "bf16")


@dataclass
class FinetuneConfig:
    """Settings of one LoRA run; everything except the step budget and output cadence must match on resume."""

    rank: int = 4
    alpha: float | None = None  # None: alpha = rank (scale 1), as in diffusers' LoRA scripts
    lr: float = 1e-4
    steps: int = 500
    batch_size: int = 8
    mixed_precision: str = "no"
    seed: int = 0
    target: str = "attn"
    checkpoint_every: int = 100
    sample_every: int = 250
    caption_dropout: float = 0.1  # keeps the unconditional branch that classifier-free guidance needs
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    sample_steps: int = 20

    def __post_init__(self) -> None:
        checks = [
            ("rank", self.rank, self.rank >= 1, "an integer >= 1"),
            ("alpha", self.alpha, self.alpha is None or self.alpha > 0, "None or > 0"),
            ("lr", self.lr, self.lr > 0, "> 0"),
            ("steps", self.steps, self.steps >= 0, ">= 0"),
            ("batch_size", self.batch_size, self.batch_size >= 1, ">= 1"),
            ("mixed_precision", self.mixed_precision, self.mixed_precision in MIXED_PRECISION,
             f"one of {MIXED_PRECISION}"),
            ("target", self.target, self.target in TARGETS, f"one of {TARGETS}"),
            ("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 0, ">= 0 (0: only at the end)"),
            ("sample_every", self.sample_every, self.sample_every >= 0, ">= 0 (0: never)"),
            ("caption_dropout", self.caption_dropout, 0 <= self.caption_dropout < 1, "in [0, 1)"),
            ("sample_steps", self.sample_steps, self.sample_steps >= 1, ">= 1"),
        ]
        for name, value, ok, expected in checks:
            if not ok:
                raise InputError(f"Expected {name} {expected}, but got {value!r}")

    @property
    def lora_alpha(self) -> float:
        return float(self.alpha if self.alpha is not None else self.rank)

    def resume_key(self) -> dict[str, Any]:
        """The settings a checkpoint must share with a run that resumes it."""
        keep = ("rank", "lora_alpha", "lr", "batch_size", "mixed_precision", "seed", "target", "caption_dropout",
                "weight_decay", "grad_clip")
        return {name: getattr(self, name) for name in keep}


@dataclass
class FinetuneResult:
    """What a run produced and what it cost."""

    out_dir: Path
    lora_path: Path
    layers: list[str]
    target_modules: list[str]
    steps: int
    resumed_from: int
    trainable_params: int
    denoiser_params: int
    final_loss: float | None
    step_time_s: float | None  # median over this call's steps, the first (warm-up) one left out
    peak_memory_bytes: int  # CUDA allocator peak, or on CPU the sampled peak RSS increase (see PeakMemory)
    activation_bytes: int | None  # autograd-saved bytes of one step (see SavedTensorMeter)
    data: dict[str, Any]

    @property
    def trainable_share(self) -> float:
        return self.trainable_params / max(1, self.denoiser_params)

    def to_dict(self) -> dict[str, Any]:
        payload = asdict(self)
        payload.update(out_dir=str(self.out_dir), lora_path=str(self.lora_path), trainable_share=self.trainable_share)
        return payload
