"""Writing results safely: atomic files and append-only JSONL, with one rule for a torn last line.

Why: every command promises "never a half-written output" and "resume after a crash". Files are written to a
hidden temporary name in the same folder and renamed into place (atomic on POSIX). Result streams are JSONL:
every record is one line ending in a newline, appended, flushed and fsync'd, so a record on disk survives a
kill right after the append returns.

The torn-line rule (the only one; every reader and writer of JSONL here uses it): a kill can only cut the
*last* line short, and a line is complete exactly when it ends in a newline. So

* :func:`read_jsonl` ignores an unterminated last line (its work is redone on resume);
* :func:`repair_jsonl` cuts it off, and :func:`append_jsonl` calls it first, so a new record is never glued to
  the remains of a torn one;
* a *terminated* line that is not a JSON object is not a torn line but a damaged file: ``InputError``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from textloc.errors import InputError


def _tmp_path(path: Path) -> Path:
    # the pid keeps two processes (e.g. ranks of one launch) from sharing a temporary file
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write (full disk, Ctrl-C) leaves nothing behind
        raise


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
    tmp = _tmp_path(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)


def repair_jsonl(path: str | Path) -> int:
    """Cut off a torn (unterminated) last line; returns the number of bytes removed (0: nothing was torn)."""
    path = Path(path)
    if not path.exists():
        return 0
    with path.open("rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0
        # Scan back (in blocks) to the last newline; everything after it is the torn line.
        end = size
        keep = 0
        while end > 0:
            start = max(0, end - 65536)
            handle.seek(start)
            block = handle.read(end - start)
            cut = block.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        handle.truncate(keep)
        handle.flush()
        os.fsync(handle.fileno())
        return size - keep


def append_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records, one line each, then flush and fsync (after cutting off a torn last line)."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    if not text:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    repair_jsonl(path)
    with path.open("a") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSONL file (none if it does not exist), ignoring a torn last line (module docstring)."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    lines.pop()  # the text after the last newline: "" or a torn line
    out = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            raise InputError(f"{path}:{number} is not a JSON record (the file is damaged; use a new --out folder)")
        out.append(record)
    return out
