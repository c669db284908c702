"""Writing results safely: atomic files and append-only JSONL.

Why: every command promises "never a half-written output" and "resume after a crash". Files are written to a
hidden temporary name in the same folder and renamed into place (atomic on POSIX); result streams are JSONL
appended and fsync'd record by record, and readers skip a last line cut short by a kill.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, payload: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(payload, indent=indent, default=str) + "\n")


def image_bytes(image: Any, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def save_image_atomic(image: Any, path: str | Path) -> None:
    """Save a PIL image (format from the suffix, PNG by default) without ever leaving a partial file."""
    suffix = Path(path).suffix.lstrip(".").upper() or "PNG"
    atomic_write_bytes(path, image_bytes(image, "JPEG" if suffix in ("JPG", "JPEG") else suffix))


def atomic_torch_save(obj: object, path: str | Path) -> None:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def append_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records and fsync, so a record on disk survives a kill right after this returns."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    with Path(path).open("a") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Records of a JSONL file; a line cut short by a kill (invalid JSON) is skipped, its work redone."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
