"""``textloc eval-embedded``: how well the embedded model renders what its prompt asks for.

Two groups of fully specified prompts, drawn with a seed that training never uses: (a) *seen* words from the
training list, (b) random *never-seen* strings (the CRC32-reserved class that training excludes). Each image
is read by OCR (exact match and character error rate against the prompt's text) and by the pixel readers
(background and text colour). Results go to ``results.json`` (per sample and summary) and ``samples.png``.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from rapidfuzz.distance import Levenshtein
from tqdm.auto import tqdm

from textloc.models.embedded import readers, renderer
from textloc.models.embedded.tokenizer import describe
from textloc.models.embedded.words import TRAIN_WORDS


def normalise(text: str) -> str:
    """Uppercase letters only: the embedded model renders A-Z (and spaces between words)."""
    return " ".join("".join(c for c in text.upper() if c.isalpha() or c == " ").split())


def eval_specs(n: int, seed: int) -> dict[str, list[renderer.SignSpec]]:
    rng = random.Random(seed)
    seen = [renderer.random_spec(rng, rng.choice(TRAIN_WORDS)) for _ in range(n)]
    unseen = []
    while len(unseen) < n:
        text = renderer.random_string(rng)
        if renderer.is_reserved(text):
            unseen.append(renderer.random_spec(rng, text))
    return {"seen": seen, "unseen": unseen}


def evaluate(
    pipe: Any, *, n: int = 200, seed: int = 12345, out: str | Path | None = None, steps: int = 20,
    ocr: str = "rapidocr", batch_size: int = 25, guidance_scale: float = 3.0,
) -> dict[str, Any]:
    """Generate ``n`` images per group and score them; see the module docstring."""
    from textloc.models.embedded.profile import PROFILE

    reader = PROFILE.reader(ocr)
    records: list[dict[str, Any]] = []
    grid_images: list[Image.Image] = []
    groups = eval_specs(n, seed)
    bar = tqdm(total=2 * n, desc="eval-embedded", dynamic_ncols=True)
    for group, specs in groups.items():
        for start in range(0, len(specs), batch_size):
            chunk = specs[start : start + batch_size]
            generator = torch.Generator().manual_seed(seed + start + (0 if group == "seen" else 10**6))
            images = pipe([describe(s) for s in chunk], num_inference_steps=steps, generator=generator,
                          guidance_scale=guidance_scale).images
            texts = reader.read(images)
            for spec, image, text in zip(chunk, images, texts, strict=True):
                read = normalise(text)
                bg = readers.background_colour(image)
                fg = readers.text_colour(image, bg)
                records.append({
                    "group": group, "prompt": describe(spec), "target": spec.text, "ocr": read,
                    "exact": read == spec.text, "cer": Levenshtein.distance(read, spec.text) / len(spec.text),
                    "background": bg, "background_ok": bg == spec.background,
                    "text_colour": fg, "text_colour_ok": fg == spec.text_colour,
                })
            if len(grid_images) < 16:
                grid_images += images[: 16 - len(grid_images)]
            bar.update(len(chunk))
    bar.close()
    summary = summarise(records)
    summary["seconds_per_image_batch1"] = _time_one(pipe, steps, guidance_scale)
    result = {"summary": summary, "config": {"n": n, "seed": seed, "steps": steps, "ocr": ocr,
                                             "guidance_scale": guidance_scale}, "records": records}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1))
        _grid(grid_images).save(out / "samples.png")
    return result


def summarise(records: list[dict[str, Any]]) -> dict[str, float]:
    def mean(key: str, group: str | None = None) -> float:
        rows = [r for r in records if group is None or r["group"] == group]
        return sum(float(r[key]) for r in rows) / max(1, len(rows))

    return {
        "seen_exact": mean("exact", "seen"),
        "seen_cer": mean("cer", "seen"),
        "unseen_exact": mean("exact", "unseen"),
        "unseen_cer": mean("cer", "unseen"),
        "background_acc": mean("background_ok"),
        "text_colour_acc": mean("text_colour_ok"),
        "n": len(records),
    }


def _time_one(pipe: Any, steps: int, guidance_scale: float, repeats: int = 3) -> float:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        pipe('a sign that says "TIME"', num_inference_steps=steps, guidance_scale=guidance_scale,
             generator=torch.Generator().manual_seed(i))
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _grid(images: list[Image.Image], cols: int = 4, scale: int = 4) -> Image.Image:
    rows = (len(images) + cols - 1) // cols
    w, h = renderer.WIDTH, renderer.HEIGHT
    grid = Image.new("RGB", (cols * w, max(1, rows) * h), "white")
    for i, im in enumerate(images):
        grid.paste(im, ((i % cols) * w, (i // cols) * h))
    return grid.resize((grid.width * scale, grid.height * scale), Image.NEAREST)
