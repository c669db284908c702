"""What ``textloc bench edit`` reports: per-method means, the results table and the example grid.

The table has the paper's editing columns plus exact match, edit distance and time; a model with a colour
reader (``ModelProfile.colours``) adds "background kept" and "text colour kept". Tables come from
``textloc.runs.tables`` and grids from ``textloc.runs.grids`` (one home each).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

#: Methods of the editing benchmark, in table order.
METHODS = ("ours", "prompt-swap", "patch-all", "p2p")
#: Columns of the grid image (the paper's editing figure).
GRID_METHODS = ("ours", "prompt-swap", "p2p")
LABELS = {"ours": "Ours (localized layers)", "prompt-swap": "Prompt swap", "patch-all": "Patch all layers",
          "p2p": "Prompt-to-Prompt"}
#: (summary key, header, number format) of every table column after "Method" and "n".
COLUMNS = (
    ("mse", "MSE ↓", "{:.4f}"), ("ssim", "SSIM ↑", "{:.3f}"), ("psnr", "PSNR ↑", "{:.2f}"),
    ("ocr_f1", "OCR F1 ↑", "{:.3f}"), ("exact", "Exact ↑", "{:.3f}"), ("edit_distance", "Edit dist. ↓", "{:.2f}"),
    ("clip_t", "CLIP-T ↑", "{:.3f}"), ("seconds", "s / edit ↓", "{:.2f}"),
)
COLOUR_COLUMNS = (("background_kept", "BG kept ↑", "{:.3f}"), ("text_colour_kept", "Text colour kept ↑", "{:.3f}"))


def _mean(values: list[Any]) -> float | None:
    values = [float(v) for v in values if v is not None]
    return float(np.mean(values)) if values else None


def summarise(records: list[dict[str, Any]], methods: Sequence[str], *, colours: bool) -> dict[str, Any]:
    """Per-method means over the records (PSNR of identical images counts as 100 dB, ``eval.scoring``).

    ``colours``: whether background and text colour were judged by a colour reader (they are then shown).
    """
    rows = {}
    for method in methods:
        rs = [r for r in records if r["method"] == method]
        rows[method] = {
            "n": len(rs),
            "mse": _mean([r["mse"] for r in rs]),
            "ssim": _mean([r["ssim"] for r in rs]),
            "psnr": _mean([r["psnr"] for r in rs]),
            "ocr_f1": _mean([r.get("f1") for r in rs]),
            "exact": _mean([r.get("exact") for r in rs]),
            "edit_distance": _mean([r.get("edit_distance") for r in rs]),
            "cer": _mean([r.get("cer") for r in rs]),
            "clip_t": _mean([r.get("clip_t") for r in rs]),
            "seconds": _mean([r["seconds"] for r in rs]),
            "background_kept": _mean([r.get("background_kept") for r in rs]),
            "text_colour_kept": _mean([r.get("text_colour_kept") for r in rs]),
        }
    return {"methods": rows, "colours": colours}


def results_table(summary: dict[str, Any]) -> str:
    """The editing table as Markdown (``results.md``); a value that could not be computed reads ``n/a``."""
    from textloc.runs.tables import markdown_table

    columns = list(COLUMNS) + (list(COLOUR_COLUMNS) if summary.get("colours") else [])
    headers = ["Method", "n"] + [header for _, header, _ in columns]
    formats = [None, None] + [fmt for _, _, fmt in columns]
    rows = [[LABELS.get(method, method), row["n"], *(row.get(key) for key, _, _ in columns)]
            for method, row in summary["methods"].items()]
    return markdown_table(headers, rows, formats=formats, missing="n/a")


def make_grid(out: Path, examples: Sequence[tuple[str, str]], methods: Sequence[str]) -> Image.Image | None:
    """Rows of ``(key, caption)`` examples from ``out/images``: source (captioned with the edit) | the methods."""
    from textloc.runs.grids import auto_scale, image_grid

    rows, captions = [], []
    for key, caption in examples:
        folder = out / "images" / key
        paths = [folder / "source.png"] + [folder / f"{m}.png" for m in methods]
        if not all(p.exists() for p in paths):
            continue
        rows.append([Image.open(p).convert("RGB") for p in paths])
        captions.append([caption] + [LABELS.get(m, m) for m in methods])
    if not rows:
        return None
    return image_grid(rows, labels=captions, scale=auto_scale([im for row in rows for im in row]), pad=4,
                      label_height=20)
