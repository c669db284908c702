"""Load a pipeline from what a user types after ``--model``.

* ``embedded`` (the default): textloc's own model, shipped inside the package.
* a local folder written by ``save_pretrained`` (must contain ``model_index.json``).
* a Hugging Face hub id (``stabilityai/stable-diffusion-xl-base-1.0``): works for users who are online; an
  offline machine gets a one-line ``ModelLoadError`` instead of a traceback.
* ``tiny:ARCH``: a tiny random pipeline built offline (``textloc.models.tiny``), for trying the tools without
  weights; ``faithful:NAME`` gives only the structure-faithful denoiser of a real model (layer tables only).

``denoiser_from_config`` builds a denoiser from its ``config.json`` alone on the ``meta`` device (module tree,
shapes, no weights): the layer table and fingerprint of a model, in seconds, before downloading it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from textloc.errors import InputError, ModelLoadError

EMBEDDED_DIR = Path(__file__).parent / "embedded" / "weights"


def _dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "auto"):
        return None
    table = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if name not in table:
        raise ModelLoadError(f"Expected dtype in {sorted(table)}, but got {name!r}")
    return table[name]


def load_embedded(directory: str | Path | None = None) -> Any:
    """The embedded text-rendering pipeline (``EmbeddedTextPipeline``) on the CPU."""
    from textloc.models.embedded.pipeline import EmbeddedTextPipeline

    directory = Path(directory) if directory else EMBEDDED_DIR
    if not (directory / "model_index.json").exists():
        raise ModelLoadError(
            f"The embedded model's weights are missing in {directory}; train them with `textloc train-embedded`"
        )
    pipe = EmbeddedTextPipeline.from_pretrained_dir(directory)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_shipped_folder(name: str, directory: Path) -> Any:
    """A folder written by one of textloc's own pipelines (``save_pretrained``), through that model's profile."""
    from textloc.models.profiles import profile_named

    profile = profile_named(name)
    if profile is None or profile.load is None:
        raise ModelLoadError(f"{directory} holds a {name} pipeline, but that model is not part of this textloc")
    return profile.load(directory)


def load_pipeline(model: str = "embedded", *, device: str | None = None, dtype: str | None = None) -> Any:
    r"""Load a diffusers pipeline.

    Args:
        model: a shipped model (``"embedded"``, ``"embedded-mmdit"``), a local diffusers folder, a hub id,
            ``"tiny:ARCH"`` or ``"faithful:NAME"``.
        device: ``"cpu"``, ``"cuda"`` …; default CPU.
        dtype: ``"float32"``, ``"float16"``, ``"bfloat16"``; default the checkpoint's.

    Raises:
        ModelLoadError: with a one-line reason.
    """
    from textloc.models.profiles import profile_named

    shipped = profile_named(model) if model and ":" not in model and "/" not in model else None
    if shipped is not None and shipped.load is not None:
        pipe = shipped.load()
    elif model.startswith("tiny:"):
        from textloc.models.tiny import TINY_ARCHITECTURES, build_tiny_pipeline

        arch = model.split(":", 1)[1]
        if arch not in TINY_ARCHITECTURES:
            raise ModelLoadError(f"Unknown tiny architecture {arch!r}; expected one of {list(TINY_ARCHITECTURES)}")
        pipe = build_tiny_pipeline(arch)
    elif model.startswith("faithful:"):
        from textloc.models.tiny import build_structure_faithful_denoiser

        try:
            return build_structure_faithful_denoiser(model.split(":", 1)[1])
        except (KeyError, ValueError) as err:
            raise ModelLoadError(str(err).strip("'\"")) from None
    else:
        pipe = _load_diffusers(model, _dtype(dtype))
    if device:
        pipe = pipe.to(device)
    return pipe


def _load_diffusers(model: str, dtype: torch.dtype | None) -> Any:
    from diffusers import DiffusionPipeline

    path = Path(model).expanduser()
    kwargs: dict[str, Any] = {} if dtype is None else {"torch_dtype": dtype}
    if path.exists():
        if not (path / "model_index.json").exists():
            raise ModelLoadError(f"{path} is not a diffusers pipeline folder (no model_index.json)")
        index = (path / "model_index.json").read_text(errors="replace")
        if (path / "tokenizer" / "tokenizer.json").exists() and "EmbeddedMMDiTPipeline" in index:
            return load_shipped_folder("embedded-mmdit", path)
        if (path / "tokenizer" / "tokenizer.json").exists() and "EmbeddedTextPipeline" in index:
            return load_embedded(path)
        try:
            return DiffusionPipeline.from_pretrained(str(path), **kwargs)
        except Exception as err:  # diffusers raises many types for broken folders
            raise ModelLoadError(f"Could not load the pipeline in {path}: {_first_line(err)}") from None
    if model.count("/") != 1 or model.startswith((".", "/")):
        raise ModelLoadError(
            f"{model!r} is neither 'embedded', an existing folder, nor a hub id of the form 'owner/name'"
        )
    from diffusers.utils import logging as diffusers_logging

    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # keep failures to our one line, not diffusers' retries
    try:
        return DiffusionPipeline.from_pretrained(model, **kwargs)
    except Exception as err:
        if os.environ.get("HF_HUB_OFFLINE") == "1" or _looks_offline(err):
            raise ModelLoadError(
                f"Could not download {model!r}: this machine cannot reach the Hugging Face hub and the model is "
                "not in the local cache; download it elsewhere and pass its folder"
            ) from None
        raise ModelLoadError(f"Could not load {model!r}: {_first_line(err)}") from None
    finally:
        diffusers_logging.set_verbosity(previous)


def _looks_offline(err: Exception) -> bool:
    text = f"{type(err).__name__} {err}".lower()
    return any(word in text for word in ("connect", "offline", "resolve", "timed out", "network", "cannot find"))


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _config_file(path: Path) -> Path:
    """``path`` itself, or the denoiser config inside a model folder (``config.json``, ``unet/``, ``transformer/``)."""
    if path.is_dir():
        for candidate in ("config.json", "unet/config.json", "transformer/config.json"):
            if (path / candidate).is_file():
                return path / candidate
        raise InputError(f"{path} holds no config.json (nor unet/config.json or transformer/config.json)")
    if not path.is_file():
        raise InputError(f"Config file {path} does not exist")
    return path


def denoiser_from_config(path: str | Path) -> torch.nn.Module:
    r"""Build the denoiser a diffusers ``config.json`` describes, on the ``meta`` device: no weights, seconds.

    Args:
        path: a denoiser's ``config.json`` (``unet/config.json``, ``transformer/config.json``), or a folder that
            holds one.

    Every parameter is a ``meta`` tensor (a shape without storage), so even FLUX.1's 12B parameters cost no
    memory; ``list_text_layers`` still traces its forward pass (shapes only) to find the execution order.

    Raises:
        InputError: a missing or unreadable file, not JSON, no or an unknown ``_class_name``, a class textloc
            does not support, or a config the class rejects (one line each).
    """
    import diffusers

    from textloc.core.arch import ARCHITECTURES, SUPPORTED_FAMILIES

    file = _config_file(Path(path).expanduser())
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"Could not read {file}: {type(err).__name__}") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{file} is not JSON (line {err.lineno}: {err.msg})") from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    if not isinstance(name, str) or not name:
        raise InputError(f"Expected a denoiser config.json with a `_class_name`, but {file} has none")
    if name not in ARCHITECTURES:
        known = "a diffusers class textloc does not support" if hasattr(diffusers, name) else "not a diffusers class"
        raise InputError(f"{file}: {name} is {known}; textloc supports {SUPPORTED_FAMILIES}")
    from diffusers.utils import logging as diffusers_logging

    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # unused-key notes from older configs are not the user's problem
    try:
        with torch.device("meta"):
            model = getattr(diffusers, name).from_config(config)
    except Exception as err:  # diffusers raises many types for inconsistent configs
        raise InputError(f"Could not build {name} from {file}: {_first_line(err)}") from None
    finally:
        diffusers_logging.set_verbosity(previous)
    model.eval()
    from textloc.core.layers import list_text_layers
    from textloc.errors import TextlocError

    try:  # the trace (cached on the model) is where an inconsistent config shows; report it here, as one line
        list_text_layers(model)
    except TextlocError:
        raise
    except Exception as err:
        raise InputError(f"Could not trace {name} built from {file}: {_first_line(err)}") from None
    return model
