"""Training data for localized LoRA: one small interface over a model's renderer, image folders and JSONL.

Why: every source answers ``batch(step, batch_size, size)`` as a pure function of ``(seed, step, rank)``, so a
resumed run sees exactly the data an uninterrupted one would have seen; unreadable images and missing
captions are counted and skipped (:class:`DataReport`), never fatal.

Synthetic data (``synthetic``, ``synthetic:SCENARIO``) is drawn by a shipped model's renderer; it is found
through the model profiles (``TrainingRecipe.data_source``), so this module never imports a model package.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from textloc.errors import InputError

logger = logging.getLogger(__name__)

SYNTHETIC = "synthetic"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


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


class TrainingData:
    """A source of ``(prompts, images)`` batches; images are (B, 3, H, W) in [-1, 1] at the requested size."""

    report: DataReport
    #: files whose *content* the run folder fingerprints (a changed dataset is not resumed silently)
    inputs: dict[str, Path] = {}

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


def synthetic_recipe(source: str = SYNTHETIC) -> Any:
    """The training recipe of the shipped model whose renderer draws ``source`` (``ModelProfile.training``)."""
    from textloc.models.profiles import training_source

    recipe = training_source(source)
    if recipe is None or recipe.data is None:
        raise InputError(f"Expected a shipped model that renders --data {source}, but none is installed")
    return recipe


def parse_scenario(text: str, source: str = SYNTHETIC) -> Any:
    """A scenario of the renderer behind ``source``: a name (``serif``) or ``key=value`` pairs (validated)."""
    recipe = synthetic_recipe(source)
    if recipe.scenario is None:
        raise InputError(f"Expected plain --data {source}: its renderer has no scenarios, but got {text!r}")
    return recipe.scenario(text)


class SyntheticData(TrainingData):
    """Images drawn on the fly by a shipped model's renderer (without a scenario: its base training batches)."""

    def __init__(self, scenario: Any = None, seed: int = 0, source: str = SYNTHETIC) -> None:
        self.scenario = scenario
        self.seed = seed
        self.sampler = synthetic_recipe(source).data(scenario, seed)
        self.report = DataReport(self.sampler.label, usable=-1)  # -1: unbounded, rendered on the fly

    def batch(self, step: int, batch_size: int, size: tuple[int, int], *, crop: bool = True, rank: int = 0,
              world: int = 1) -> tuple[list[str], torch.Tensor]:
        prompts, images = self.sampler.batch(step, batch_size, rank)
        return prompts, _resize_batch(images, size)

    def sample_prompts(self, n: int = 8) -> list[str]:
        return self.sampler.sample_prompts(n)


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
        data = cls(items, report, seed)
        data.inputs = {"data": folder}
        return data

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
        data = cls(items, report, seed)
        data.inputs = {"data": path}  # the records; the images they name are checked when read
        return data

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
        spec: ``synthetic`` (the embedded renderer), ``synthetic:SCENARIO`` (a named scenario or ``key=value``
            pairs such as ``synthetic:font=serif,len=6``), a folder of images with same-name ``.txt`` captions,
            or a ``.jsonl`` file with one ``{"image", "caption", "text"}`` record per line (image paths relative
            to the file). A ``TrainingData`` object is returned as is.
        seed: seeds the batch order.
    """
    if isinstance(spec, TrainingData):
        return spec
    text = str(spec).strip()
    if text == SYNTHETIC:
        return SyntheticData(None, seed)
    if text.startswith(f"{SYNTHETIC}:"):
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
