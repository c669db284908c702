"""Shared, validated CLI options: every number and path is checked at the edge, before anything loads or writes.

Why here: a bad value must fail in one line *before* a model loads or a run folder is created (issue #13:
``--steps 0`` wrote noise, ``--steps 1e9`` ran out of memory, ``--guidance inf`` wrote a black image, ``--seed
-1`` crashed deep inside torch). Each option type carries a typer callback; a value out of range is a click
usage error (``Invalid value for '--steps': …``, exit 2). Output paths that cannot be written (under a file,
a name too long, a read-only place) are an ``InputError`` (one line, exit 2). What only the loaded model knows
(its step limit, its sizes) is checked right after loading by :func:`check_for_model`.

Importing this module imports neither torch nor diffusers (``textloc --help`` must start fast).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from textloc.errors import InputError
from textloc.models.profiles import MAX_STEPS  # one home; importing it loads no model code

#: ``torch.Generator.manual_seed`` takes a 64-bit seed; the CLI keeps to the non-negative half
MAX_SEED = 2**63 - 1
#: classifier-free guidance above this saturates every pixel; inf/nan write black images
MAX_GUIDANCE = 1000.0
#: image sides (pixels) a latent model is asked for
MAX_SIDE = 4096
#: POSIX limits of one path component and of a whole path (bytes)
NAME_MAX, PATH_MAX = 255, 4095


# -- numbers --------------------------------------------------------------------------------------------


def _int_range(low: int, high: int) -> Callable[[Any], Any]:
    def check(value: int | None) -> int | None:
        if value is not None and not low <= value <= high:
            raise typer.BadParameter(f"expected an integer in {low}..{high}, but got {value}")
        return value

    return check


def _float_range(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Callable[[Any], Any]:
    def check(value: float | None) -> float | None:
        if value is None:
            return None
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if not math.isfinite(value) or too_low or too_high:
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise typer.BadParameter(f"expected a finite number in {interval}, but got {value}")
        return value

    return check


def seed_option(help: str = "random seed") -> Any:
    """``--seed``: 0 … 2**63-1 (``--seed 1e23`` or ``-1`` is a usage error, not a crash inside torch)."""
    return typer.Option("--seed", help=help, callback=_int_range(0, MAX_SEED))


def steps_option(help: str = "denoising steps (default: the pipeline's)", flag: str = "--steps") -> Any:
    """Denoising steps: 1 … 1000 (a model's profile may allow fewer; see :func:`check_for_model`)."""
    return typer.Option(flag, help=help, callback=_int_range(1, MAX_STEPS))


def guidance_option(help: str = "guidance scale (default: the pipeline's)") -> Any:
    return typer.Option("--guidance", help=help, callback=_float_range(0.0, MAX_GUIDANCE))


def count_option(flag: str, help: str, *, low: int = 1, high: int = 1_000_000) -> Any:
    """A count (pairs, samples, batch size, rank …): an integer in ``low … high``."""
    return typer.Option(flag, help=help, callback=_int_range(low, high))


def number_option(flag: str, help: str, low: float, high: float, *, low_open: bool = False,
                  high_open: bool = False) -> Any:
    """A finite float in an interval (fractions, thresholds, learning rates, minutes)."""
    return typer.Option(flag, help=help, callback=_float_range(low, high, low_open=low_open, high_open=high_open))


def _check_side(value: int | None) -> int | None:
    if value is not None and not (8 <= value <= MAX_SIDE and value % 8 == 0):
        raise typer.BadParameter(f"expected a multiple of 8 in 8..{MAX_SIDE}, but got {value}")
    return value


def size_option(flag: str) -> Any:
    """``--height``/``--width``: a multiple of 8 up to 4096; whether the model draws it is checked after loading."""
    side = flag.lstrip("-")
    return typer.Option(flag, help=f"image {side} for latent models (the embedded model has one size)",
                        callback=_check_side)


# -- names ----------------------------------------------------------------------------------------------


def choice_option(flag: str, help: str, choices: tuple[str, ...]) -> Any:
    """One of a fixed set of names (checked while parsing, so before a model loads)."""

    def check(value: str | None) -> str | None:
        if value is not None and value not in choices:
            raise typer.BadParameter(f"expected one of {', '.join(choices)}, but got {value!r}")
        return value

    return typer.Option(flag, help=help, callback=check)


def _check_ocr(allow_none: bool) -> Callable[[Any], Any]:
    def check(value: str | None) -> str | None:
        if value is None or (allow_none and value.strip().lower() == "none"):
            return value
        from textloc.eval.ocr import available_backends

        if value.strip().lower() not in available_backends():
            options = [*available_backends(), *(["none"] if allow_none else [])]
            raise typer.BadParameter(f"expected one of {', '.join(options)}, but got {value!r}")
        return value

    return check


def ocr_option(help: str = "OCR backend: rapidocr | tesseract | easyocr", *, allow_none: bool = False) -> Any:
    """``--ocr``: a registered backend (``none`` too where OCR is optional), checked before a model loads."""
    return typer.Option("--ocr", help=help, callback=_check_ocr(allow_none))


# -- paths ----------------------------------------------------------------------------------------------


def check_output_path(path: Path, *, option: str = "--out", folder: bool = True) -> Path:
    """Refuse an output location that cannot be written, before anything is computed or written.

    Catches what would otherwise fail only at the end (after minutes of generation) or as a traceback: a
    component that is an existing file, a name longer than the file system allows, a file where a folder is
    wanted (or the reverse), and a read-only parent. Nothing is created here.
    """
    text = os.fsencode(path)
    if len(text) > PATH_MAX or any(len(part) > NAME_MAX for part in text.split(b"/")):
        raise InputError(f"Expected {option} to be a path the file system accepts, but its name is too long "
                         f"({len(text)} bytes; at most {NAME_MAX} per name and {PATH_MAX} in all)")
    if path.exists():
        if folder and not path.is_dir():
            raise InputError(f"Expected {option} to be a folder, but {path} is a file")
        if not folder and path.is_dir():
            raise InputError(f"Expected {option} to be a file name, but {path} is a folder")
        target = path if folder else path.parent
    else:
        target = path.parent
    # the nearest existing ancestor must be a writable folder (it is where the first new name is created)
    probe = target if target != Path("") else Path(".")
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise InputError(f"Expected {option} to lie in a folder, but {probe} is a file")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"Cannot write {option} {path}: {probe} is read-only")
    return path


def out_dir_option(help: str, flag: str = "--out", short: str | None = "-o") -> Any:
    """An output/run folder (checked by :func:`check_output_path`)."""
    names = (flag, short) if short else (flag,)
    return typer.Option(*names, help=help, callback=lambda value: _out(value, flag, True))


def out_file_option(help: str, flag: str = "--out", short: str | None = "-o") -> Any:
    """An output file (checked by :func:`check_output_path`)."""
    names = (flag, short) if short else (flag,)
    return typer.Option(*names, help=help, callback=lambda value: _out(value, flag, False))


def _out(value: Path | None, flag: str, folder: bool) -> Path | None:
    return None if value is None else check_output_path(value, option=flag, folder=folder)


def check_text_file(path: Path, *, option: str) -> str:
    """The UTF-8 text of an input file, or one line saying why it cannot be read (missing, folder, binary)."""
    if not path.exists():
        raise InputError(f"Expected {option} to be an existing file, but {path} does not exist")
    if path.is_dir():
        raise InputError(f"Expected {option} to be a file, but {path} is a folder")
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise InputError(f"Expected {option} {path} to be UTF-8 text, but byte {err.start} is "
                         f"0x{err.object[err.start]:02x} (a binary file?)") from None


def in_file_option(flag: str, help: str) -> Any:
    """An input text file (prompts, words, mappings, configs): it must exist and be UTF-8 text."""

    def check(value: Path | None) -> Path | None:
        if value is not None:
            check_text_file(value, option=flag)
        return value

    return typer.Option(flag, help=help, callback=check)


def _check_spec_file(value: str | None) -> str | None:
    """A spec that is either a name (``embedded`` …) or a file: a file must be UTF-8 text."""
    if value is not None and os.path.isfile(value):
        check_text_file(Path(value), option="--prompts")
    return value


def prompts_option(help: str = "embedded | simplebench | creativebench | prompt FILE") -> Any:
    return typer.Option("--prompts", help=help, callback=_check_spec_file)


# -- after the model is loaded ---------------------------------------------------------------------------


def check_for_model(pipe: Any, *, steps: int | None = None, height: int | None = None,
                    width: int | None = None) -> None:
    """What only the loaded model knows: its step limit and the sizes it draws (``profile_for(pipe)``)."""
    from textloc.models.profiles import profile_for

    profile = profile_for(pipe)
    if steps is not None:
        profile.check_steps(steps)
    profile.check_size(height, width)


# -- the shared option types ----------------------------------------------------------------------------

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="embedded | local diffusers folder | hub id | tiny:ARCH")]
LayersOpt = Annotated[str, typer.Option(help="preset | auto | PATH/summary.json | all | layer names/indices")]
SeedOpt = Annotated[int, seed_option()]
StepsOpt = Annotated[int | None, steps_option()]
GuidanceOpt = Annotated[float | None, guidance_option()]
HeightOpt = Annotated[int | None, size_option("--height")]
WidthOpt = Annotated[int | None, size_option("--width")]
OcrOpt = Annotated[str, ocr_option()]
OcrOrNoneOpt = Annotated[str, ocr_option("OCR backend: rapidocr | tesseract | easyocr | none", allow_none=True)]
PromptsOpt = Annotated[str, prompts_option()]


def bench_group(app: typer.Typer) -> typer.Typer:
    """The CLI's ``bench`` sub-app (``textloc.cli.app.bench_app``), created if ``app`` has none (e.g. in tests)."""
    for group in app.registered_groups:
        if group.name == "bench" and group.typer_instance is not None:
            return group.typer_instance
    bench = typer.Typer(no_args_is_help=True, help="Benchmarks.")
    app.add_typer(bench, name="bench")
    return bench


def show_progress(pipe: Any, desc: str) -> None:
    """The pipeline's own progress bar, on a terminal only (the CLI keeps diffusers' loading bars off)."""
    import sys

    pipe.set_progress_bar_config(disable=True)
    if sys.stderr.isatty():
        from diffusers.utils import logging as diffusers_logging

        diffusers_logging.enable_progress_bar()
        pipe.set_progress_bar_config(desc=desc, leave=False)
