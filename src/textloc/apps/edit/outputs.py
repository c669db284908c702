"""The output folder of one ``textloc edit``: written all or nothing, and readable as the source of a later edit.

All or nothing: every file goes into a hidden temporary folder beside ``--out`` and the folder is renamed into
place at the end, so an error (or a kill) never leaves a half-written edit; the temporary folder is removed on
any error. ``--out`` may be new, an empty folder or an earlier edit's folder (replaced whole); any other
folder is refused before a model loads, so no unrelated file is ever deleted.

Reuse (``--source-dir``): an edit folder keeps its settings (``config.json``) and the float source image
(``source.npy``, a plain array, never pickled), so a later edit of the same prompt, seed, steps and model
starts from that source instead of generating it again.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from textloc.errors import InputError
from textloc.runs import io

#: ``config.json`` of an edit folder names this command (and marks the folder as replaceable).
COMMAND = "edit"
CONFIG_NAME = "config.json"
SOURCE_ARRAY = "source.npy"
#: Settings a reused source must share with the new edit (everything that determines the source image).
SOURCE_KEYS = ("model", "model_fingerprint", "prompt", "seed", "steps", "guidance")


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a file, or a folder holding anything but an earlier edit (before any work)."""
    if out.exists() and not out.is_dir():
        raise InputError(f"Expected --out to be a folder, but {out} is a file")
    if out.is_dir() and any(out.iterdir()) and not _is_edit_folder(out):
        raise InputError(f"Expected --out to be a new or empty folder or an earlier edit's output, but {out} holds "
                         "other files; choose another --out")


def _is_edit_folder(folder: Path) -> bool:
    try:
        return json.loads((folder / CONFIG_NAME).read_text()).get("command") == COMMAND
    except (OSError, ValueError, AttributeError):
        return False


def write_edit_folder(out: Path, files: dict[str, Any]) -> None:
    r"""Write ``files`` (name -> PIL image, JSON-able object, numpy array or str) as the folder ``out``, whole.

    Images (``.png``) are saved as PNG, ``.json`` as JSON, ``.npy`` with ``allow_pickle=False``, ``.txt`` as text.
    """
    check_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    old = out.with_name(f".{out.name}.{os.getpid()}.old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        for name, value in files.items():
            _write(tmp / name, value)
        if out.exists():
            os.replace(out, old)  # an empty folder or an earlier edit: replaced as a whole
        os.replace(tmp, out)
    except BaseException:
        if old.exists() and not out.exists():
            os.replace(old, out)  # put the earlier edit back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _write(path: Path, value: Any) -> None:
    if path.suffix == ".npy":
        with path.open("wb") as handle:
            np.save(handle, np.asarray(value), allow_pickle=False)
    elif path.suffix == ".json":
        io.atomic_write_json(path, value)
    elif path.suffix == ".png":
        io.save_image_atomic(value, path)
    else:
        io.atomic_write_text(path, str(value))


def edit_config(*, model: str, model_fingerprint: str, prompt: str, seed: int, steps: int, guidance: float | None,
                to: str, span: int, layers: list[str], start_step: int) -> dict[str, Any]:
    """The ``config.json`` of an edit folder: what made it (``SOURCE_KEYS`` decide whether its source is reusable)."""
    return {"command": COMMAND, "model": model, "model_fingerprint": model_fingerprint, "prompt": prompt,
            "seed": seed, "steps": steps, "guidance": guidance, "to": to, "span": span, "layers": layers,
            "start_step": start_step}


def check_source_dir(folder: Path) -> dict[str, Any]:
    """The saved config of an earlier edit folder, after checking it holds a reusable source (before any work)."""
    if not folder.is_dir():
        raise InputError(f"Expected --source-dir to be an earlier edit's output folder, but {folder} is not a folder")
    if not _is_edit_folder(folder):
        raise InputError(f"Expected --source-dir to hold an earlier edit's {CONFIG_NAME}, but {folder} has none")
    if not (folder / SOURCE_ARRAY).is_file():
        raise InputError(f"Expected {folder / SOURCE_ARRAY} (the source image of an earlier edit), but it is missing")
    return json.loads((folder / CONFIG_NAME).read_text())


def load_source(folder: Path, saved: dict[str, Any], current: dict[str, Any]) -> np.ndarray:
    """The float source image of ``folder``, if its settings match the new edit's (``SOURCE_KEYS``)."""
    differ = [key for key in SOURCE_KEYS if saved.get(key) != current.get(key)]
    if differ:
        shown = ", ".join(f"{k} {saved.get(k)!r} vs {current.get(k)!r}" for k in differ)
        raise InputError(f"The source in {folder} was made with other settings ({shown}); drop --source-dir or use "
                         "the same settings")
    try:
        array = np.load(folder / SOURCE_ARRAY, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputError(f"Could not read {folder / SOURCE_ARRAY}: {err}") from None
    if array.ndim != 3 or array.dtype.kind != "f":
        raise InputError(f"Expected {folder / SOURCE_ARRAY} to be a float HWC image, but got {array.dtype} "
                         f"{array.shape}")
    return array.astype(np.float32)
