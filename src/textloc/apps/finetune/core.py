"""Localized LoRA fine-tuning: train low-rank adapters on only the attention layers that decide rendered text.

Why this module exists
----------------------
The paper's point is that a handful of attention layers decide *what text* a diffusion model renders. If so,
a LoRA restricted to those layers should fix text rendering about as well as a LoRA on every cross-attention
layer, with a fraction of the trainable parameters, less memory and faster steps -- and it should leave
everything else (backgrounds, colours, composition) alone. This module trains such adapters and the
``textloc bench finetune`` benchmark measures that claim.

How it is built
---------------
* **Layers** come from :func:`resolve_layer_spec` (``preset``/``auto``, a localization ``summary.json``,
  ``all-cross-attn``, ``random-K``, names or indices). :func:`lora_target_modules` turns them into *exact*
  module paths (``up_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k``) for PEFT's
  ``LoraConfig(target_modules=...)``; nothing else gets an adapter and every base weight is frozen.
* **Data** (:func:`load_data`) is one small interface, ``batch(step, batch_size, size)``, over three sources:
  the embedded renderer (``synthetic`` with optional *scenarios*), a folder of images with same-name ``.txt``
  captions, and a JSONL file. Each batch is a pure function of ``(seed, step)``, so a resumed run sees exactly
  the data an uninterrupted run would have seen; unreadable images and missing captions are counted and
  skipped (:class:`DataReport`), never fatal.
* **Objectives** (:func:`objective_for`) hold the per-family training loss, keyed by pipeline class like
  ``layers.ARCHITECTURES``: the embedded model's min-SNR v-prediction loss, epsilon/v-prediction for SD 1.x/2.x
  and SDXL U-Nets (from the scheduler config), and flow matching for SD3. Noise and timesteps come from a
  generator seeded by ``(seed, step)``, which is what makes kill-and-resume reproduce an uninterrupted run.
* **Outputs** in ``out_dir``: ``pytorch_lora_weights.safetensors`` in diffusers' format (so
  ``pipe.load_lora_weights(out_dir)`` works on a fresh pipeline), ``checkpoint.pt`` (LoRA weights, optimizer,
  step, RNG; written atomically), ``log.jsonl``, ``samples/step_NNNNNN.png`` and ``finetune_summary.json``.
* **accelerate** places the model, runs mixed precision and syncs gradients, so the same code runs under
  ``accelerate launch``; files are written by the main process only.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from textloc.core.layers import get_denoiser, list_text_layers, model_fingerprint
from textloc.errors import InputError, UnsupportedModelError
from textloc.runs.io import atomic_torch_save, atomic_write_text, save_image_atomic

logger = logging.getLogger(__name__)

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
CONFIG_NAME = "finetune_config.json"
SUMMARY_NAME = "finetune_summary.json"

#: Attention projections that ``target="attn"`` adapts, where a module has them: the U-Net/DiT image path
#: (``to_q``/``to_k``/``to_v``/``to_out.0``) and the MMDiT / DeepFloyd IF text path (``add_*``/``to_add_out``).
ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")
TARGETS = ("attn", "text_kv")
MIXED_PRECISION = ("no", "fp16", "bf16")


# ----------------------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------
# Layers -> LoRA target modules
# ----------------------------------------------------------------------------------------------------------


def resolve_layer_spec(pipe: Any, spec: str | Sequence[str | int] | None, seed: int = 0) -> list[str]:
    r"""Resolve a fine-tuning ``--layers`` value to text-layer names, in execution order.

    Args:
        pipe: the pipeline (or its denoiser).
        spec: everything ``presets.choose_layers`` takes (``preset``/``auto``, a localization ``summary.json``,
            ``all``, names or indices), plus ``all-cross-attn`` (every layer that reads text; the usual
            "LoRA on all cross-attention" baseline) and ``random-K`` (K text layers drawn with ``seed``).
        seed: seed of ``random-K``.
    """
    from textloc.models.presets import choose_layers

    layers = list_text_layers(pipe)
    if isinstance(spec, str) and spec.strip() == "all-cross-attn":
        return [layer.name for layer in layers]
    if isinstance(spec, str) and spec.strip().startswith("random-"):
        count = spec.strip().removeprefix("random-")
        if not count.isdigit() or not 1 <= int(count) <= len(layers):
            raise InputError(
                f"Expected random-K with 1 <= K <= {len(layers)} (the model's text layers), but got {spec!r}"
            )
        chosen = random.Random(seed).sample(layers, int(count))
        return [layer.name for layer in sorted(chosen, key=lambda layer: layer.index)]
    names = choose_layers(pipe, spec)
    order = {layer.name: layer.index for layer in layers}
    return sorted(names, key=order.__getitem__)


def lora_target_modules(pipe: Any, layer_names: Sequence[str], target: str = "attn") -> list[str]:
    r"""Exact module paths of the linear projections a LoRA on ``layer_names`` adapts.

    Args:
        layer_names: text-layer (attention module) names, e.g. from :func:`resolve_layer_spec`.
        target: ``"attn"``: every attention projection the module has (``ATTENTION_PROJECTIONS``);
            ``"text_kv"``: only the projections that make the text keys and values (``to_k``/``to_v`` for
            cross-attention, ``add_k_proj``/``add_v_proj`` for MMDiT joint attention and DeepFloyd IF).
    """
    if target not in TARGETS:
        raise InputError(f"Expected target in {TARGETS}, but got {target!r}")
    if not layer_names:
        raise InputError("Expected at least one layer to fine-tune, but got none")
    denoiser = get_denoiser(pipe)
    by_name = {layer.name: layer for layer in list_text_layers(denoiser)}
    modules = dict(denoiser.named_modules())
    targets: list[str] = []
    for name in layer_names:
        if name not in by_name:
            from textloc.core.layers import resolve_layers

            resolve_layers(denoiser, [name])  # raises UnknownLayerError listing the valid layers
        layer = by_name[name]
        if target == "text_kv":
            projections: Sequence[str] = (layer.key_proj, layer.value_proj)
        else:
            projections = ATTENTION_PROJECTIONS
        for projection in projections:
            if isinstance(modules.get(f"{name}.{projection}"), torch.nn.Linear):
                targets.append(f"{name}.{projection}")
    return targets


def add_lora(pipe: Any, layer_names: Sequence[str], *, rank: int = 4, alpha: float | None = None,
             target: str = "attn", seed: int = 0) -> Any:
    r"""Freeze the whole pipeline and add a LoRA adapter on ``layer_names`` only; returns the ``LoraConfig``.

    The adapter starts as the identity (``lora_B = 0``), with ``lora_A`` drawn from ``seed`` so that two runs
    with the same seed start from the same weights.
    """
    from peft import LoraConfig

    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.requires_grad_(False)
    denoiser = get_denoiser(pipe)
    config = LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), init_lora_weights="gaussian",
                        target_modules=lora_target_modules(pipe, layer_names, target))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        denoiser.add_adapter(config)
    return config


def expected_lora_parameters(pipe: Any, target_modules: Sequence[str], rank: int) -> int:
    """``rank * (in + out)`` summed over the adapted linear layers: what the adapter must add, no more."""
    modules = dict(get_denoiser(pipe).named_modules())
    total = 0
    for name in target_modules:
        module = modules[name]
        base = getattr(module, "base_layer", module)
        total += rank * (base.in_features + base.out_features)
    return total


def trainable_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(name, p) for name, p in model.named_parameters() if p.requires_grad]


def parameter_share(pipe: Any) -> tuple[int, int]:
    """(trainable, total) parameters of the denoiser, the adapter included in the total."""
    denoiser = get_denoiser(pipe)
    trainable = sum(p.numel() for _, p in trainable_parameters(denoiser))
    return trainable, sum(p.numel() for p in denoiser.parameters())


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DataReport:
    """What a data source could use and what it skipped (and why): surfaced in the log and the summary."""

    source: str
    usable: int = 0  # -1: unbounded (synthetic data is rendered on the fly)
    corrupt_images: list[str] = field(default_factory=list)
    missing_captions: list[str] = field(default_factory=list)
    bad_records: list[str] = field(default_factory=list)

    @property
    def skipped(self) -> int:
        return len(self.corrupt_images) + len(self.missing_captions) + len(self.bad_records)

    def summary(self) -> str:
        parts = ["rendered on the fly" if self.usable < 0 else f"{self.usable} usable"]
        for label, items in (("corrupt/unreadable images", self.corrupt_images),
                             ("images without a caption", self.missing_captions),
                             ("bad records", self.bad_records)):
            if items:
                parts.append(f"{len(items)} {label} skipped (e.g. {items[0]})")
        return f"{self.source}: " + ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "usable": self.usable, "skipped": self.skipped,
                "corrupt_images": self.corrupt_images[:100], "missing_captions": self.missing_captions[:100],
                "bad_records": self.bad_records[:100]}


@dataclass(frozen=True)
class Scenario:
    """A slice of the embedded renderer's world to fine-tune on (and to test on, with held-out strings).

    Training strings avoid the renderer's reserved (CRC32) class and test strings are drawn only from it, so
    the benchmark measures spelling of strings the adapter never saw.
    """

    name: str
    description: str
    font: str | None = None
    letters: str = ""  # alphabet the strings are drawn from; "" = A-Z
    min_len: int = 3
    max_len: int = 6
    p_attribute: float = 1.0  # how often make_prompt mentions each attribute
    words: int = 1  # 2: two words separated by a space, within the renderer's 6 characters (10 % of training)

    def __post_init__(self) -> None:
        from textloc.models.embedded import renderer

        if self.font is not None and self.font not in renderer.FONTS:
            raise InputError(f"Expected font in {sorted(renderer.FONTS)}, but got {self.font!r}")
        if not set(self.letters) <= set(renderer.ALPHABET):
            raise InputError(f"Expected letters from A-Z, but got {self.letters!r}")
        if self.words not in (1, 2):
            raise InputError(f"Expected words=1 or words=2, but got {self.words!r}")
        if not renderer.MIN_CHARS <= self.min_len <= self.max_len <= renderer.MAX_CHARS:
            raise InputError(
                f"Expected string lengths within {renderer.MIN_CHARS}-{renderer.MAX_CHARS}, "
                f"but got {self.min_len}-{self.max_len}"
            )

    def text(self, rng: random.Random, reserved: bool) -> str:
        """A string of the scenario, from the held-out class if ``reserved``."""
        from textloc.models.embedded import renderer

        alphabet = self.letters or renderer.ALPHABET
        for _ in range(10_000):
            length = rng.randint(self.min_len, self.max_len)
            if self.words == 2:  # split the length into two words around a space
                length = max(length, 3)
                first = rng.randint(1, length - 2)
                letters = [rng.choice(alphabet) for _ in range(length - 1)]
                text = "".join(letters[:first]) + " " + "".join(letters[first:])
            else:
                text = "".join(rng.choice(alphabet) for _ in range(length))
            if renderer.is_reserved(text) == reserved:
                return text
        raise InputError(f"Scenario {self.name!r} has too few strings to split into train and test")

    def spec(self, rng: random.Random, reserved: bool = False) -> Any:
        from textloc.models.embedded import renderer

        fixed = {"font": self.font} if self.font else {}
        return renderer.random_spec(rng, self.text(rng, reserved), **fixed)

    def test_specs(self, n: int, seed: int = 12345) -> list[Any]:
        """``n`` held-out ground-truth specs (fully described prompts via ``tokenizer.describe``)."""
        rng = random.Random(seed)
        return [self.spec(rng, reserved=True) for _ in range(n)]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("all", "the base model's world: any font, 3-6 random letters"),
        Scenario("serif", "serif font only, 3-6 random letters", font="serif"),
        Scenario("mono", "monospaced font only, 3-6 random letters", font="mono"),
        Scenario("long", "long strings: exactly 6 random letters", min_len=6, max_len=6),
        Scenario("letters-QXZJ", "strings over the rare letters Q, X, Z, J (3-6 letters)", letters="QXZJ"),
    )
}


def parse_scenario(text: str) -> Scenario:
    """A scenario by name (``serif``) or as ``key=value`` pairs (``font=serif,letters=QXZJ,len=4-6``)."""
    text = text.strip()
    if text in SCENARIOS:
        return SCENARIOS[text]
    if "=" not in text:
        raise InputError(
            f"Expected a scenario in {sorted(SCENARIOS)} or key=value pairs (font=, letters=, len=), "
            f"but got {text!r}"
        )
    fields: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, _, value = part.partition("=")
        if key == "font":
            fields["font"] = value
        elif key == "letters":
            fields["letters"] = value.upper()
        elif key == "words":
            if not value.isdigit():
                raise InputError(f"Expected words=1 or words=2, but got {part!r}")
            fields["words"] = int(value)
        elif key == "len":
            low, _, high = value.partition("-")
            if not low.isdigit() or (high and not high.isdigit()):
                raise InputError(f"Expected len=N or len=N-M, but got {part!r}")
            fields["min_len"], fields["max_len"] = int(low), int(high or low)
        else:
            raise InputError(f"Expected scenario keys font, letters, len or words, but got {key!r}")
    return Scenario(name=text, description=f"custom scenario {text}", **fields)


class TrainingData:
    """A source of ``(prompts, images)`` batches; images are (B, 3, H, W) in [-1, 1] at the requested size."""

    report: DataReport

    def batch(self, step: int, batch_size: int, size: tuple[int, int], *, crop: bool = True, rank: int = 0,
              world: int = 1) -> tuple[list[str], torch.Tensor]:
        """Batch ``step`` of process ``rank`` of ``world``; ``crop``: centre-crop to the aspect before resizing."""
        raise NotImplementedError

    def sample_prompts(self, n: int = 8) -> list[str]:
        raise NotImplementedError

    def describe(self) -> str:
        return self.report.source


def _resize_batch(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False)


class SyntheticData(TrainingData):
    """Signs drawn by the embedded renderer. Without a scenario: exactly the base recipe's ``sample_batch``."""

    def __init__(self, scenario: Scenario | None = None, seed: int = 0) -> None:
        self.scenario = scenario
        self.seed = seed
        label = f"synthetic:{scenario.name}" if scenario else "synthetic"
        self.report = DataReport(label, usable=-1)  # -1: unbounded, rendered on the fly

    def batch(self, step: int, batch_size: int, size: tuple[int, int], *, crop: bool = True, rank: int = 0,
              world: int = 1) -> tuple[list[str], torch.Tensor]:
        from textloc.models.embedded import renderer
        from textloc.models.embedded.tokenizer import make_prompt
        from textloc.models.embedded.train import TrainConfig, sample_batch

        seed = self.seed + 7919 * rank  # each process of a multi-GPU run sees its own data
        if self.scenario is None:
            prompts, images, _ = sample_batch(TrainConfig(seed=seed, batch_size=batch_size, cfg_dropout=0.0), step)
            return prompts, _resize_batch(images, size)
        rng = random.Random(seed * 1_000_003 + step)
        prompts, arrays = [], []
        for _ in range(batch_size):
            spec = self.scenario.spec(rng)
            prompts.append(make_prompt(spec, rng, self.scenario.p_attribute))
            arrays.append(renderer.to_tensor_array(renderer.render(spec)))
        return prompts, _resize_batch(torch.from_numpy(np.stack(arrays)), size)

    def sample_prompts(self, n: int = 8) -> list[str]:
        from textloc.models.embedded.tokenizer import describe

        return [describe(spec) for spec in (self.scenario or SCENARIOS["all"]).test_specs(n, seed=999)]


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _image_ok(path: Path) -> bool:
    """Cheap integrity check (header + checksums); decoding errors later are still caught per item."""
    try:
        with Image.open(path) as image:
            image.verify()
        return True
    except Exception:  # PIL raises many types for broken files
        return False


class ImageCaptionData(TrainingData):
    """Captioned images from a folder (``x.png`` + ``x.txt``) or a JSONL file; see :func:`load_data`."""

    def __init__(self, items: list[tuple[Path, str]], report: DataReport, seed: int = 0) -> None:
        if not items:
            raise InputError(f"Expected at least one usable image-caption pair, but got none ({report.summary()})")
        self.items = items
        self.report = report
        self.report.usable = len(items)
        self.seed = seed
        self._bad: set[int] = set()
        self._cache: dict[tuple[int, tuple[int, int], bool], torch.Tensor] = {}
        self._perms: dict[int, list[int]] = {}

    @classmethod
    def from_folder(cls, folder: Path, seed: int = 0) -> ImageCaptionData:
        report = DataReport(f"folder {folder}")
        items = []
        paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        for path in tqdm(paths, desc="checking images", disable=len(paths) < 500):
            caption_file = path.with_suffix(".txt")
            caption = caption_file.read_text(errors="replace").strip() if caption_file.is_file() else ""
            if not caption:
                report.missing_captions.append(str(path))
            elif not _image_ok(path):
                report.corrupt_images.append(str(path))
            else:
                items.append((path, caption))
        return cls(items, report, seed)

    @classmethod
    def from_jsonl(cls, path: Path, seed: int = 0) -> ImageCaptionData:
        report = DataReport(f"jsonl {path}")
        items = []
        lines = path.read_text(errors="replace").splitlines()
        for number, line in enumerate(tqdm(lines, desc="checking images", disable=len(lines) < 500), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                image_ref = next(record[k] for k in ("image", "file_name", "path", "image_path") if record.get(k))
            except (json.JSONDecodeError, StopIteration, TypeError, AttributeError):
                report.bad_records.append(f"line {number}")
                continue
            image_path = Path(image_ref) if Path(image_ref).is_absolute() else path.parent / image_ref
            caption = jsonl_caption(record)
            if not caption:
                report.missing_captions.append(str(image_path))
            elif not image_path.is_file() or not _image_ok(image_path):
                report.corrupt_images.append(str(image_path))
            else:
                items.append((image_path, caption))
        return cls(items, report, seed)

    def _order(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            self._perms = {epoch: random.Random(self.seed * 1_000_003 + epoch).sample(range(len(self.items)),
                                                                                       len(self.items))}
        return self._perms[epoch]

    def _load(self, index: int, size: tuple[int, int], crop: bool) -> torch.Tensor | None:
        key = (index, size, crop)
        if key in self._cache:
            return self._cache[key]
        path = self.items[index][0]
        try:
            with Image.open(path) as image:
                tensor = load_image_tensor(image, size, crop=crop)
        except Exception:  # a file that passed verify() can still fail to decode
            self._bad.add(index)
            self.report.corrupt_images.append(str(path))
            logger.warning("skipping unreadable image %s", path)
            return None
        if len(self._cache) < 4096:
            self._cache[key] = tensor
        return tensor

    def batch(self, step: int, batch_size: int, size: tuple[int, int], *, crop: bool = True, rank: int = 0,
              world: int = 1) -> tuple[list[str], torch.Tensor]:
        n = len(self.items)
        position = (step * world + rank) * batch_size  # processes take consecutive slices of one stream
        prompts, images = [], []
        while len(images) < batch_size:
            if len(self._bad) >= n:
                raise InputError(f"Expected readable images, but none of the {n} in {self.report.source} decode")
            epoch, offset = divmod(position, n)
            index = self._order(epoch)[offset]
            position += 1
            if index in self._bad:
                continue
            tensor = self._load(index, size, crop)
            if tensor is not None:
                prompts.append(self.items[index][1])
                images.append(tensor)
        return prompts, torch.stack(images)

    def sample_prompts(self, n: int = 8) -> list[str]:
        return [caption for _, caption in self.items[:n]]


def jsonl_caption(record: dict[str, Any]) -> str:
    """The training prompt of a JSONL record: ``caption`` (or ``prompt``), with the rendered ``text`` quoted.

    MARIO-10M-style captions describe the scene and keep the rendered words apart; the text-rendering
    prompt convention (and the embedded model's grammar) puts them in quotes, so they are appended as
    ``… that says "TEXT"`` unless the caption already quotes them.
    """
    caption = str(record.get("caption") or record.get("prompt") or "").strip()
    text = record.get("text") or record.get("rendered_text") or record.get("ocr")
    if isinstance(text, list):
        text = " ".join(str(t) for t in text)
    if caption and text and f'"{text}"' not in caption:
        caption = f'{caption} that says "{str(text).strip()}"'
    return caption


def load_image_tensor(image: Image.Image, size: tuple[int, int], crop: bool = True) -> torch.Tensor:
    """RGB image -> (3, H, W) in [-1, 1]: optionally centre-crop to the target aspect, then resize (LANCZOS)."""
    height, width = size
    image = image.convert("RGB")
    src_w, src_h = image.size
    target_aspect = width / height
    if crop and abs(src_w / src_h - target_aspect) > 1e-3:
        if src_w / src_h > target_aspect:
            new_w = round(src_h * target_aspect)
            left = (src_w - new_w) // 2
            image = image.crop((left, 0, left + new_w, src_h))
        else:
            new_h = round(src_w / target_aspect)
            top = (src_h - new_h) // 2
            image = image.crop((0, top, src_w, top + new_h))
    image = image.resize((width, height), Image.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def load_data(spec: str | TrainingData, seed: int = 0) -> TrainingData:
    r"""Open a ``--data`` value.

    Args:
        spec: ``synthetic`` (the embedded renderer), ``synthetic:SCENARIO`` (a name in ``SCENARIOS`` or
            ``key=value`` pairs such as ``synthetic:font=serif,len=6``), a folder of images with same-name
            ``.txt`` captions, or a ``.jsonl`` file with one ``{"image", "caption", "text"}`` record per line
            (image paths relative to the file). A ``TrainingData`` object is returned as is.
        seed: seeds the batch order.
    """
    if isinstance(spec, TrainingData):
        return spec
    text = str(spec).strip()
    if text == "synthetic":
        return SyntheticData(None, seed)
    if text.startswith("synthetic:"):
        return SyntheticData(parse_scenario(text.split(":", 1)[1]), seed)
    path = Path(text).expanduser()
    if path.is_dir():
        return ImageCaptionData.from_folder(path, seed)
    if path.suffix.lower() == ".jsonl":
        if not path.is_file():
            raise InputError(f"Data file {path} does not exist")
        return ImageCaptionData.from_jsonl(path, seed)
    raise InputError(
        "Expected --data to be 'synthetic', 'synthetic:SCENARIO', a folder of images with .txt captions or a "
        f".jsonl file, but got {text!r}"
    )


# ----------------------------------------------------------------------------------------------------------
# Objectives: the standard training loss of each model family
# ----------------------------------------------------------------------------------------------------------


class Objective:
    """The training loss of one pipeline family, plus how to sample it for progress grids."""

    #: Centre-crop training images to the model's aspect (latent models, as diffusers' scripts do).
    crop_images = True

    def __init__(self, pipe: Any) -> None:
        self.pipe = pipe

    @property
    def image_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def loss(self, model: torch.nn.Module, prompts: list[str], images: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def sample(self, prompts: list[str], seed: int, steps: int) -> list[Image.Image]:
        return self.pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed)).images

    @property
    def device(self) -> torch.device:
        return get_denoiser(self.pipe).device

    @property
    def dtype(self) -> torch.dtype:
        return get_denoiser(self.pipe).dtype


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


class EmbeddedObjective(Objective):
    """The embedded model's own recipe (``embedded.train``): pixel space, v-prediction, min-SNR-gamma weights."""

    crop_images = False  # a sign photo squeezed to 24x64 keeps all of its text; a crop would cut letters off

    def __init__(self, pipe: Any) -> None:
        from diffusers import DDPMScheduler

        from textloc.models.embedded.train import TrainConfig

        super().__init__(pipe)
        self.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        self.gamma = TrainConfig().min_snr_gamma

    @property
    def image_size(self) -> tuple[int, int]:
        return self.pipe.native_size

    def loss(self, model: torch.nn.Module, prompts: list[str], images: torch.Tensor,
             generator: torch.Generator) -> torch.Tensor:
        from textloc.models.embedded.train import v_prediction_loss

        x0 = images.to(self.device, self.dtype)
        with torch.no_grad():
            tokens = self.pipe.tokenizer(prompts)
            embeds = self.pipe.text_encoder(tokens["input_ids"].to(self.device),
                                            tokens["attention_mask"].to(self.device))[0]
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(prompts),), generator=generator)
        noise = _randn(x0.shape, generator, x0)
        return v_prediction_loss(model, self.scheduler, x0, noise, t.to(self.device), embeds, self.gamma)

    def sample(self, prompts: list[str], seed: int, steps: int) -> list[Image.Image]:
        return self.pipe(prompts, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                         guidance_scale=3.0).images


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


#: Pipeline class name -> objective (the per-family facts live here, like ``layers.ARCHITECTURES``).
OBJECTIVES: dict[str, Callable[[Any], Objective]] = {
    "EmbeddedTextPipeline": EmbeddedObjective,
    "StableDiffusionPipeline": UNetLatentObjective,
    "StableDiffusionXLPipeline": SDXLObjective,
    "StableDiffusion3Pipeline": SD3FlowObjective,
}


def objective_for(pipe: Any) -> Objective:
    """The training objective of ``pipe``'s family, or a clear "not supported yet" error."""
    name = type(pipe).__name__
    if name not in OBJECTIVES:
        raise UnsupportedModelError(
            f"LoRA fine-tuning of {name} is not supported yet; supported pipelines: {', '.join(OBJECTIVES)}"
        )
    return OBJECTIVES[name](pipe)


# ----------------------------------------------------------------------------------------------------------
# Measuring: step time and peak memory
# ----------------------------------------------------------------------------------------------------------


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory of a block of work.

    On CUDA: ``torch.cuda.max_memory_allocated`` (reset on entry). On CPU the allocator keeps no peak, so a
    daemon thread samples the resident set size every ``interval`` seconds and reports the peak *increase*
    over the value on entry (falls back to ``resource.ru_maxrss``, the process-lifetime peak, where
    ``/proc`` is missing).
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._baseline = 0
        self._max = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._baseline = self._max = _rss_bytes() or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max = max(self._max, _rss_bytes() or 0)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._baseline:
            self.peak_bytes = max(0, max(self._max, _rss_bytes() or 0) - self._baseline)
        else:
            import resource

            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class SavedTensorMeter:
    """Bytes autograd keeps for the backward pass (activations), each storage counted once, weights excluded.

    Why: on the CPU there is no allocator peak to read, and this is the part of training memory a localized
    LoRA saves -- layers before the first adapted one record no graph and keep no activations. It is exact and
    the same on every device.
    """

    def __init__(self, exclude: Sequence[torch.nn.Module] = ()) -> None:
        self.bytes = 0
        self._seen = {p.untyped_storage().data_ptr() for module in exclude for p in module.parameters()}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


# ----------------------------------------------------------------------------------------------------------
# Outputs: LoRA file, checkpoints, sample grids, log
# ----------------------------------------------------------------------------------------------------------


def lora_state_dict(pipe: Any) -> dict[str, torch.Tensor]:
    """The adapter in the key format ``save_lora_weights`` expects, as diffusers' training scripts make it.

    U-Net pipelines take diffusers' own LoRA keys (``convert_state_dict_to_diffusers``, as in
    ``train_text_to_image_lora.py``); transformer pipelines (SD3) take PEFT's keys as they are (as in
    ``train_dreambooth_lora_sd3.py``) -- converting those would rename only some projections.
    """
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(get_denoiser(pipe))
    if getattr(pipe, "unet", None) is not None:
        state = convert_state_dict_to_diffusers(state)
    return {key: value.detach().to("cpu", torch.float32).contiguous() for key, value in state.items()}


def save_lora(pipe: Any, out_dir: str | Path, lora_config: Any) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` atomically with the pipeline class's ``save_lora_weights``.

    The adapter's config (rank, alpha, targets) goes into the file's metadata, so a fresh pipeline's
    ``load_lora_weights`` rebuilds it exactly, alpha included.
    """
    import shutil
    import tempfile

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    attr = "unet" if getattr(pipe, "unet", None) is not None else "transformer"
    config = lora_config.to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    tmp = Path(tempfile.mkdtemp(prefix=".lora-", dir=out))
    try:
        type(pipe).save_lora_weights(tmp, **{f"{attr}_lora_layers": lora_state_dict(pipe),
                                             f"{attr}_lora_adapter_metadata": config})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp / LORA_WEIGHT_NAME, 0o666 & ~umask)  # the temp dir's private mode is not wanted here
        os.replace(tmp / LORA_WEIGHT_NAME, out / LORA_WEIGHT_NAME)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / LORA_WEIGHT_NAME


def save_grid(images: Sequence[Image.Image], path: Path, cols: int = 4, scale: int | None = None) -> None:
    """Images in a grid PNG, written atomically; small images are upscaled (nearest) to stay inspectable."""
    if not images:
        return
    w, h = images[0].size
    scale = scale or max(1, 128 // max(h, 1))
    rows = math.ceil(len(images) / cols)
    grid = Image.new("RGB", (min(cols, len(images)) * w, rows * h), "white")
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB").resize((w, h)), ((i % cols) * w, (i // cols) * h))
    grid = grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
    save_image_atomic(grid, path)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines written after the checkpoint a run resumes from (a killed run logged past it)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                kept.append(line)
        except json.JSONDecodeError:
            continue  # a line cut by the kill
    atomic_write_text(path, "".join(line + "\n" for line in kept))


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


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


def _make_accelerator(mixed_precision: str, cpu: bool | None) -> Any:
    """An ``Accelerator``; in a single process, a second run with other settings resets accelerate's singleton.

    accelerate keeps one process-wide ``AcceleratorState`` and refuses a new mixed-precision or device setting;
    a notebook or benchmark that trains twice with different settings would otherwise have to restart Python.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState

    kwargs: dict[str, Any] = {"mixed_precision": mixed_precision}
    if cpu is not None:
        kwargs["cpu"] = cpu
    try:
        return Accelerator(**kwargs)
    except ValueError as err:
        if "already been initialized" not in str(err) or PartialState().num_processes > 1:
            raise InputError(f"Expected settings that match this accelerate launch, but got {err}") from None
        AcceleratorState._reset_state(reset_partial_state=True)
        return Accelerator(**kwargs)


def finetune(
    pipe: Any,
    layers: str | Sequence[str | int],
    data: str | TrainingData,
    out_dir: str | Path,
    *,
    rank: int = 4,
    alpha: float | None = None,
    lr: float = 1e-4,
    steps: int = 500,
    batch_size: int = 8,
    mixed_precision: str = "no",
    resume: bool = True,
    seed: int = 0,
    checkpoint_every: int = 100,
    sample_every: int = 250,
    target: str = "attn",
    caption_dropout: float = 0.1,
    sample_steps: int = 20,
    device: str | None = None,
    progress: bool = True,
) -> FinetuneResult:
    r"""Train a LoRA on the chosen text layers of ``pipe`` (in place) and save it in diffusers' format.

    Args:
        pipe: a supported pipeline (``OBJECTIVES``); it is frozen, gets the adapter, and is left with it
            (trained) on return.
        layers: a ``--layers`` value for :func:`resolve_layer_spec` or explicit layer names / indices.
        data: a ``--data`` value for :func:`load_data` or a ``TrainingData``.
        out_dir: run folder: LoRA file, ``checkpoint.pt``, ``log.jsonl``, ``samples/``, summary.
        rank, alpha: LoRA rank and alpha (default alpha = rank).
        lr: AdamW learning rate (constant, so resuming with a larger ``steps`` continues the same run).
        steps: total optimizer steps of the run (not of this call).
        resume: continue from ``out_dir/checkpoint.pt`` if present (settings must match); ``False`` starts over.
        seed: seeds the adapter init, the data order, noise and timesteps, and ``random-K`` layers.
        checkpoint_every, sample_every: cadence in steps (0: checkpoint only at the end / no sample grids).
        target: ``"attn"`` (all attention projections of the layers) or ``"text_kv"`` (text K/V only).
        caption_dropout: fraction of prompts replaced by ``""`` (keeps classifier-free guidance working).
        sample_steps: denoising steps of the progress sample grids.
        device: ``"cpu"`` forces the CPU; default lets accelerate choose.

    Returns:
        A :class:`FinetuneResult`.
    """
    config = FinetuneConfig(rank=rank, alpha=alpha, lr=lr, steps=steps, batch_size=batch_size,
                            mixed_precision=mixed_precision, seed=seed, target=target,
                            checkpoint_every=checkpoint_every, sample_every=sample_every,
                            caption_dropout=caption_dropout, sample_steps=sample_steps)
    out = Path(out_dir)
    objective = objective_for(pipe)
    layer_names = resolve_layer_spec(pipe, layers if isinstance(layers, str) else list(layers), seed)
    dataset = load_data(data, seed)
    denoiser = get_denoiser(pipe)
    if getattr(denoiser, "peft_config", None):
        raise InputError(
            f"Expected a pipeline without LoRA adapters, but its {type(denoiser).__name__} already has "
            f"{sorted(denoiser.peft_config)}; load a fresh pipeline"
        )
    targets = sorted(lora_target_modules(pipe, layer_names, config.target))
    run_key = {"model": model_fingerprint(pipe), "layers": layer_names, "target_modules": targets,
               "data": dataset.describe(), **config.resume_key()}
    state = _read_checkpoint(out, run_key, config.steps) if resume else None  # checked before touching the pipe

    accelerator = _make_accelerator(config.mixed_precision, None if device is None else device == "cpu")
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        logger.info("data: %s", dataset.report.summary())
    if main and state is None:
        (out / CHECKPOINT_NAME).unlink(missing_ok=True)
        (out / LOG_NAME).unlink(missing_ok=True)

    lora_config = add_lora(pipe, layer_names, rank=config.rank, alpha=config.alpha, target=config.target,
                           seed=config.seed)
    _place(pipe, accelerator)
    params = [p for _, p in trainable_parameters(denoiser)]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    model, optimizer = accelerator.prepare(denoiser, optimizer)
    start = 0
    if state is not None:
        start = _apply_checkpoint(state, denoiser, optimizer)
        if main:
            _truncate_log(out / LOG_NAME, start)
    if main:
        atomic_write_text(out / CONFIG_NAME, json.dumps({**run_key, "steps": config.steps}, indent=1))

    loop = _TrainingLoop(config, objective, model, optimizer, accelerator, dataset, params, out, run_key)
    with PeakMemory(accelerator.device) as memory:
        loop.run(start, progress)
    lora_path = out / LORA_WEIGHT_NAME
    trainable, total = parameter_share(pipe)
    result = FinetuneResult(
        out_dir=out, lora_path=lora_path, layers=layer_names, target_modules=targets, steps=config.steps,
        resumed_from=start, trainable_params=trainable, denoiser_params=total, final_loss=loop.loss,
        step_time_s=float(np.median(loop.step_times[1:] or loop.step_times)) if loop.step_times else None,
        peak_memory_bytes=memory.peak_bytes, activation_bytes=loop.activation_bytes, data=dataset.report.to_dict(),
    )
    if main:
        save_lora(pipe, out, lora_config)
        atomic_write_text(out / SUMMARY_NAME, json.dumps(result.to_dict(), indent=1))
    model.eval()
    return result


@dataclass
class _TrainingLoop:
    """The step loop of :func:`finetune`: train, log, checkpoint and sample on the configured cadence."""

    config: FinetuneConfig
    objective: Objective
    model: torch.nn.Module
    optimizer: Any
    accelerator: Any
    dataset: TrainingData
    params: list[torch.nn.Parameter]
    out: Path
    run_key: dict[str, Any]
    step_times: list[float] = field(default_factory=list)
    loss: float | None = None
    activation_bytes: int | None = None

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def run(self, start: int, progress: bool) -> None:
        steps = self.config.steps
        bar = tqdm(total=steps, initial=min(start, steps), desc="finetune", dynamic_ncols=True,
                   disable=not (progress and self.main))
        if start == 0:
            self._log({"step": 0, "event": "start", "data": self.dataset.report.to_dict(),
                       "layers": self.run_key["layers"]})
        self.model.train()
        for step in range(start, steps):
            self._step(step, measure=step == start)  # activations are measured on one step per call
            done = step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{self.loss:.4f}")
            self._log({"step": done, "loss": self.loss, "lr": self.config.lr, "step_time_s": self.step_times[-1],
                       "time": time.time()})
            if (self.config.checkpoint_every and done % self.config.checkpoint_every == 0) or done == steps:
                self._checkpoint(done)
            if self.main and self.config.sample_every and done % self.config.sample_every == 0:
                _sample_grid(self.objective, self.model, self.dataset.sample_prompts(8), self.config,
                             self.out / "samples" / f"step_{done:06d}.png")
        bar.close()
        self.accelerator.wait_for_everyone()

    def _step(self, step: int, measure: bool) -> None:
        meter = SavedTensorMeter(_modules(self.objective.pipe)) if measure else None
        began = time.perf_counter()
        self.loss = _train_step(self.config, self.objective, self.model, self.optimizer, self.accelerator,
                                self.dataset, step, self.params, meter)
        if self.accelerator.device.type == "cuda":
            torch.cuda.synchronize(self.accelerator.device)
        self.step_times.append(time.perf_counter() - began)
        if meter is not None:
            self.activation_bytes = meter.bytes

    def _log(self, record: dict[str, Any]) -> None:
        if self.main:
            with (self.out / LOG_NAME).open("a") as log:
                log.write(json.dumps(record) + "\n")

    def _checkpoint(self, done: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.main:
            denoiser = get_denoiser(self.objective.pipe)
            atomic_torch_save({"lora": _lora_params(denoiser), "optimizer": self.optimizer.state_dict(),
                                "step": done, "rng": _rng_state(), "run": self.run_key}, self.out / CHECKPOINT_NAME)


def _place(pipe: Any, accelerator: Any) -> None:
    """Move the pipeline to the accelerator's device; under mixed precision cast frozen weights down.

    As in diffusers' LoRA scripts, the frozen weights use the half dtype and only the adapter stays in
    float32 (AdamW on half-precision weights loses small updates).
    """
    from diffusers.training_utils import cast_training_params

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    for component in _modules(pipe):
        component.to(accelerator.device)
        if dtype != torch.float32:
            component.to(dtype=dtype)
    if dtype != torch.float32:
        cast_training_params(get_denoiser(pipe), dtype=torch.float32)


def _modules(pipe: Any) -> list[torch.nn.Module]:
    return [c for c in pipe.components.values() if isinstance(c, torch.nn.Module)]


def _lora_params(denoiser: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().to("cpu").clone() for name, p in trainable_parameters(denoiser)}


def _read_checkpoint(out: Path, run_key: dict[str, Any], steps: int) -> dict[str, Any] | None:
    """``out/checkpoint.pt`` if there is one, after checking it was made with the same settings."""
    checkpoint = out / CHECKPOINT_NAME
    if not checkpoint.exists():
        return None
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if state["step"] > steps:
        raise InputError(
            f"Expected --steps >= {state['step']} (the checkpoint in {out} is at step {state['step']}), but got "
            f"{steps}; pass --no-resume to start over"
        )
    saved = state.get("run", {})
    changed = sorted(k for k in set(saved) | set(run_key) if saved.get(k) != run_key.get(k))
    if "layers" in changed:
        changed.remove("target_modules")  # follows from the layers; listing both only repeats them
    if changed:
        raise InputError(
            f"Expected the settings of the checkpoint in {out} ({', '.join(f'{k}={saved.get(k)!r}' for k in changed)})"
            f", but got {', '.join(f'{k}={run_key.get(k)!r}' for k in changed)}; pass --no-resume or another --out"
        )
    return state


def _apply_checkpoint(state: dict[str, Any], denoiser: torch.nn.Module, optimizer: Any) -> int:
    """Restore the adapter, the optimizer and the RNG; returns the step to continue from."""
    named = dict(trainable_parameters(denoiser))
    with torch.no_grad():
        for name, value in state["lora"].items():
            named[name].copy_(value.to(named[name].device, named[name].dtype))
    optimizer.load_state_dict(state["optimizer"])
    _set_rng_state(state["rng"])
    logger.info("resuming from step %d", state["step"])
    return int(state["step"])


def _step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """Noise, timesteps and caption dropout of one step: a function of (seed, step, process) only."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 8191 + rank)


def _train_step(config: FinetuneConfig, objective: Objective, model: torch.nn.Module, optimizer: Any,
                accelerator: Any, dataset: TrainingData, step: int, params: list[torch.nn.Parameter],
                meter: SavedTensorMeter | None = None) -> float:
    rank = accelerator.process_index
    prompts, images = dataset.batch(step, config.batch_size, objective.image_size, crop=objective.crop_images,
                                    rank=rank, world=accelerator.num_processes)
    generator = _step_generator(config.seed, step, rank)
    drop = torch.rand(len(prompts), generator=generator) < config.caption_dropout
    prompts = ["" if d else p for p, d in zip(prompts, drop.tolist(), strict=True)]
    with accelerator.autocast(), meter if meter is not None else contextlib.nullcontext():
        loss = objective.loss(model, prompts, images, generator)
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    if accelerator.sync_gradients and config.grad_clip:
        accelerator.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    return float(accelerator.gather(loss.detach()[None]).mean())


def _sample_grid(objective: Objective, model: torch.nn.Module, prompts: list[str], config: FinetuneConfig,
                 path: Path) -> None:
    pipe = objective.pipe
    progress = dict(getattr(pipe, "_progress_bar_config", {}))
    pipe.set_progress_bar_config(disable=True)  # one bar (training) at a time
    model.eval()
    try:
        images = objective.sample(prompts, seed=config.seed, steps=config.sample_steps)
        save_grid(images, path)
    finally:
        model.train()
        pipe.set_progress_bar_config(**progress)


def load_lora_pipeline(model: str, lora_dir: str | Path) -> Any:
    """``load_pipeline(model)`` with the LoRA in ``lora_dir`` loaded (diffusers' ``load_lora_weights``)."""
    from textloc.models.loading import load_pipeline

    path = Path(lora_dir)
    if not (path / LORA_WEIGHT_NAME).exists() and not path.is_file():
        raise InputError(f"Expected {LORA_WEIGHT_NAME} in {path}, but it is not there")
    pipe = load_pipeline(model)
    pipe.load_lora_weights(str(path))
    return pipe


# ----------------------------------------------------------------------------------------------------------
# Benchmark: localized vs all-cross-attention vs random layer sets (`textloc bench finetune`)
# ----------------------------------------------------------------------------------------------------------


def generate_images(pipe: Any, prompts: Sequence[str], *, seed: int = 0, steps: int = 20, guidance_scale: float = 3.0,
                    batch_size: int = 25) -> list[Image.Image]:
    """Images for ``prompts`` in fixed-seed chunks, so base and tuned models are compared on the same noise."""
    pipe.set_progress_bar_config(disable=True)
    images: list[Image.Image] = []
    for start in range(0, len(prompts), batch_size):
        generator = torch.Generator().manual_seed(seed + start)
        images += pipe(list(prompts[start : start + batch_size]), num_inference_steps=steps, generator=generator,
                       guidance_scale=guidance_scale).images
    return images


def score_signs(specs: Sequence[Any], images: Sequence[Image.Image], reader: Any) -> dict[str, float]:
    """OCR exact match / CER against each spec's text and background / text-colour accuracy (pixel readers)."""
    from rapidfuzz.distance import Levenshtein

    from textloc.models.embedded import readers
    from textloc.models.embedded.evaluate import normalise

    texts = reader.read(list(images))
    exact = cer = background = text_colour = 0.0
    for spec, image, text in zip(specs, images, texts, strict=True):
        read = normalise(text)
        exact += read == spec.text
        cer += Levenshtein.distance(read, spec.text) / len(spec.text)
        bg = readers.background_colour(image)
        background += bg == spec.background
        text_colour += readers.text_colour(image, bg) == spec.text_colour
    n = max(1, len(specs))
    return {"exact": exact / n, "cer": cer / n, "background_acc": background / n, "text_colour_acc": text_colour / n}


@dataclass
class BenchVariant:
    """One arm of the benchmark: a layer set to put the LoRA on."""

    name: str
    layers: list[str]
    layer_seed: int = 0


def bench_variants(pipe: Any, localized: str | Sequence[str], random_seeds: Sequence[int]) -> list[BenchVariant]:
    """Localized layers, all text layers, and random layer sets of the localized set's size."""
    chosen = resolve_layer_spec(pipe, localized if isinstance(localized, str) else list(localized))
    variants = [BenchVariant("localized", chosen), BenchVariant("all-cross-attn",
                                                                resolve_layer_spec(pipe, "all-cross-attn"))]
    for seed in random_seeds:
        variants.append(BenchVariant(f"random-{len(chosen)}-seed{seed}",
                                     resolve_layer_spec(pipe, f"random-{len(chosen)}", seed), seed))
    return variants


def bench_finetune(
    load_base: Callable[[], Any],
    scenario: str,
    steps: int,
    out_dir: str | Path,
    *,
    layers_localized: str | Sequence[str] = "preset",
    random_seeds: Sequence[int] = (0, 1),
    n_test: int = 50,
    rank: int = 4,
    lr: float = 1e-4,
    batch_size: int = 8,
    seed: int = 0,
    ocr: Any = "rapidocr",
    features: str = "text-free",
    clip_path: str | Path | None = None,
    sample_steps: int = 20,
    guidance_scale: float = 3.0,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    r"""Train LoRAs with one budget on the localized, all, and random layer sets; score each against the base.

    Args:
        load_base: returns a *fresh* base pipeline (each arm trains its own copy in place).
        scenario: a ``SCENARIOS`` name or ``key=value`` scenario; training uses ``synthetic:SCENARIO`` and the
            test uses ``n_test`` held-out (reserved-class) strings of the same scenario.
        steps, rank, lr, batch_size, seed: the shared training budget.
        layers_localized: the localized layers (``preset`` or a ``summary.json`` path, names, indices).
        random_seeds: one random layer set of the localized size per seed.
        ocr: an OCR backend name (``ocr.get_ocr_backend``) or an object with ``read(images)``.
        features: ``fidelity.FEATURES`` kind for precision/recall of tuned vs base samples.

    Returns:
        The results (also written as ``results.json`` and ``results.md``, with sample grids, in ``out_dir``).
    """
    from textloc.eval.fidelity import image_features, precision_recall
    from textloc.models.embedded.tokenizer import describe

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scene = parse_scenario(scenario)
    if n_test < 5:
        raise InputError(f"Expected --n-test >= 5 (precision/recall needs k=3 neighbours), but got {n_test}")
    if isinstance(ocr, str):
        from textloc.eval.ocr import embedded_reader

        ocr = embedded_reader(ocr)  # bench finetune runs on the embedded model
    specs = scene.test_specs(n_test)
    prompts = [describe(spec) for spec in specs]
    generate = dict(seed=seed + 777, steps=sample_steps, guidance_scale=guidance_scale)

    base = load_base()
    variants = bench_variants(base, layers_localized, random_seeds)
    base_images = generate_images(base, prompts, **generate)
    base_features = image_features(base_images, features, clip_path)
    rows: list[dict[str, Any]] = [{"variant": "base", "layers": [], "trainable_params": 0, "trainable_share": 0.0,
                                   **score_signs(specs, base_images, ocr)}]
    grids = {"base": base_images[:8]}
    del base
    for variant in tqdm(variants, desc="bench finetune", disable=not progress):
        pipe = load_base()
        result = finetune(pipe, variant.layers, f"synthetic:{scene.name}", out / variant.name, rank=rank, lr=lr,
                          steps=steps, batch_size=batch_size, seed=seed, resume=False, checkpoint_every=0,
                          sample_every=0, device=device, progress=progress, sample_steps=sample_steps)
        images = generate_images(pipe, prompts, **generate)
        fidelity = precision_recall(base_features, image_features(images, features, clip_path), k=3)
        save_grid(images[:16], out / variant.name / "test_samples.png")
        grids[variant.name] = images[:8]
        rows.append({
            "variant": variant.name, "layers": variant.layers, "layer_seed": variant.layer_seed,
            "trainable_params": result.trainable_params, "trainable_share": result.trainable_share,
            **score_signs(specs, images, ocr), "precision": fidelity.precision, "recall": fidelity.recall,
            "step_time_s": result.step_time_s, "peak_memory_bytes": result.peak_memory_bytes,
            "activation_bytes": result.activation_bytes,
            "final_loss": result.final_loss,
        })
        del pipe
    payload = {"scenario": asdict(scene), "steps": steps, "rank": rank, "lr": lr, "batch_size": batch_size,
               "seed": seed, "n_test": n_test, "features": features, "device": device or "auto", "rows": rows}
    atomic_write_text(out / "results.json", json.dumps(payload, indent=1))
    atomic_write_text(out / "results.md", bench_markdown(payload))
    save_grid([image for images in grids.values() for image in images], out / "comparison.png",
              cols=len(grids["base"]))
    return payload


def bench_markdown(payload: dict[str, Any]) -> str:
    """The benchmark as a Markdown table (one row per arm; the base row has no training columns)."""

    def fmt(value: Any, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    scene = payload["scenario"]
    lines = [
        f"# Localized LoRA benchmark: scenario `{scene['name']}`",
        "",
        f"{scene['description']}. {payload['steps']} steps, rank {payload['rank']}, lr {payload['lr']}, "
        f"batch {payload['batch_size']}, seed {payload['seed']}; {payload['n_test']} held-out test prompts. "
        f"Precision/recall: tuned vs base samples on `{payload['features']}` features (k=3).",
        "",
        "| variant | layers | trainable params | share | exact | CER | background | text colour | precision | recall "
        "| step time (ms) | peak memory (MB) | activations (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in payload["rows"]:
        step_ms = None if row.get("step_time_s") is None else row["step_time_s"] * 1000
        memory = None if row.get("peak_memory_bytes") is None else row["peak_memory_bytes"] / 2**20
        saved = None if row.get("activation_bytes") is None else row["activation_bytes"] / 2**20
        lines.append(
            f"| {row['variant']} | {len(row['layers'])} | {row['trainable_params']:,} | {row['trainable_share']:.3%} "
            f"| {row['exact']:.3f} | {row['cer']:.3f} | {row['background_acc']:.3f} | {row['text_colour_acc']:.3f} "
            f"| {fmt(row.get('precision'), '.3f')} | {fmt(row.get('recall'), '.3f')} | {fmt(step_ms, '.1f')} "
            f"| {fmt(memory, '.1f')} | {fmt(saved, '.1f')} |"
        )
    lines += ["", "Layers per variant:", ""]
    lines += [f"- **{row['variant']}**: {', '.join(row['layers'])}" for row in payload["rows"] if row["layers"]]
    lines += ["", "Grid `comparison.png`: one row per variant (base first) over the same first test prompts and "
              "noise. Peak memory: CUDA allocator peak, or on the CPU the sampled RSS increase (noisy); "
              "activations: bytes autograd keeps for backward in one step (exact).", ""]
    return "\n".join(lines)
