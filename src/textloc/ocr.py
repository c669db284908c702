"""OCR backends behind one small interface, plus a name-based registry.

Why an interface: the paper scores "does the generated image render the target text" with an OCR
model, and the choice of reader changes the numbers. Every backend here takes a batch of PIL images
and returns the *raw* text it read, one string per image; callers normalise with
:func:`textloc.metrics.normalize_text` so that all backends are compared under the same rules.

Backends
--------
``rapidocr`` (default)
    PP-OCRv4 detection + recognition through ``rapidocr_onnxruntime``. Its ONNX weights ship inside
    the wheel, so it works fully offline. The engine is created once per backend instance, lazily.
``tesseract``
    The ``tesseract`` command-line program in single-line mode (``--psm 7``), on an upscaled
    grayscale copy of the image.
``easyocr``
    Optional; needs ``easyocr`` installed *and* its weights on disk (we never download).

Preprocessing
-------------
Text crops in this project are tiny (e.g. 24x64 px). Both readers do markedly better when the image
is upscaled first so that its height is at least ``min_height`` pixels (LANCZOS), and padded with a
border of the image's own edge colour so that glyphs touching the border are not cut by the text
detector. See ``docs/metrics.md`` for the measured read rates that chose the defaults.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
from PIL import Image

__all__ = [
    "OCRBackend",
    "OCRUnavailableError",
    "RapidOCRBackend",
    "TesseractBackend",
    "EasyOCRBackend",
    "available_backends",
    "get_ocr_backend",
    "prepare_image",
    "edge_colour",
]


class OCRUnavailableError(RuntimeError):
    """An OCR backend cannot run here (missing package, binary or weights)."""


@runtime_checkable
class OCRBackend(Protocol):
    """Reads text from images.

    ``read`` returns raw text (no normalisation), one string per input image, in input order. An
    image with no detected text gives ``""``.
    """

    name: str

    def read(self, images: Sequence[Image.Image]) -> list[str]: ...


# --------------------------------------------------------------------------------------------------
# Preprocessing shared by the backends
# --------------------------------------------------------------------------------------------------


def edge_colour(image: Image.Image) -> tuple[int, ...]:
    """Median colour of the 1-px border of ``image``.

    Used to pad with the image's own background so that padding does not create a new edge that a
    detector could mistake for (or merge with) a glyph.
    """
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[..., None]
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]], axis=0)
    return tuple(int(v) for v in np.median(border, axis=0))


def prepare_image(
    image: Image.Image,
    *,
    min_height: int = 96,
    pad: float = 0.25,
    mode: str = "RGB",
    resample: Image.Resampling = Image.Resampling.LANCZOS,
) -> Image.Image:
    """Upscale a small text image and pad it with its edge colour.

    Args:
        image: input image (any PIL mode).
        min_height: upscale (keeping the aspect ratio) until the height is at least this. Never
            downscales. Tiny renders are below what either reader was trained on.
        pad: border width as a fraction of the (upscaled) height, on every side; 0 disables.
        mode: output PIL mode (``"RGB"`` for RapidOCR, ``"L"`` for tesseract).
        resample: PIL resampling filter for the upscale.
    """
    img = image.convert(mode)
    w, h = img.size
    if min_height and h < min_height:
        scale = min_height / h
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), resample)
    if pad > 0:
        p = max(1, round(pad * img.size[1]))
        colour = edge_colour(img)
        fill: Any = colour[0] if mode == "L" else colour
        canvas = Image.new(mode, (img.size[0] + 2 * p, img.size[1] + 2 * p), fill)
        canvas.paste(img, (p, p))
        img = canvas
    return img


def _group_lines(items: list[tuple[np.ndarray, str]]) -> list[list[tuple[np.ndarray, str]]]:
    """Group detected boxes into text lines (top-to-bottom), each sorted left-to-right.

    Two boxes are on the same line when their vertical centres differ by less than half the
    smaller box height; that tolerates slight baseline jitter without merging stacked lines.
    """
    geo = []
    for box, text in items:
        pts = np.asarray(box, dtype=float).reshape(-1, 2)
        y0, y1 = pts[:, 1].min(), pts[:, 1].max()
        geo.append(((y0 + y1) / 2, y1 - y0, pts[:, 0].min(), (box, text)))
    geo.sort(key=lambda g: g[0])
    lines: list[list[tuple[float, float, float, tuple[np.ndarray, str]]]] = []
    for g in geo:
        if lines:
            last = lines[-1]
            ref_cy = float(np.mean([x[0] for x in last]))
            ref_h = min(x[1] for x in last)
            if abs(g[0] - ref_cy) < 0.5 * max(1.0, min(ref_h, g[1])):
                last.append(g)
                continue
        lines.append([g])
    return [[x[3] for x in sorted(line, key=lambda x: x[2])] for line in lines]


def _join_boxes(items: list[tuple[np.ndarray, str]]) -> str:
    """Join detected text boxes into one string: lines top-to-bottom, boxes left-to-right."""
    return " ".join(t.strip() for line in _group_lines(items) for _, t in line if t.strip())


def autocrop(image: Image.Image, *, margin: float = 0.15, threshold: int = 40) -> Image.Image:
    """Crop to the pixels that differ from the edge colour, plus a margin (fraction of the height).

    The recogniser is trained on tight line crops; this emulates the detector's crop when it is
    skipped. Returns the image unchanged when nothing differs from the background.
    """
    arr = np.asarray(image.convert("RGB")).astype(np.int16)
    bg = np.asarray(edge_colour(image.convert("RGB")), dtype=np.int16)
    mask = np.abs(arr - bg).max(axis=-1) > threshold
    if not mask.any():
        return image
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    m = round(margin * (y1 - y0))
    colour = edge_colour(image.convert("RGB"))
    crop = image.convert("RGB").crop((x0, y0, x1, y1))
    out = Image.new("RGB", (crop.size[0] + 2 * m, crop.size[1] + 2 * m), colour)
    out.paste(crop, (m, m))
    return out


# --------------------------------------------------------------------------------------------------
# RapidOCR
# --------------------------------------------------------------------------------------------------


class RapidOCRBackend:
    """PP-OCRv4 via ``rapidocr_onnxruntime`` (offline; weights ship in the wheel).

    Args:
        min_height, pad: see :func:`prepare_image`.
        use_det: run the text detector. With ``False`` the whole (padded) image is given to the
            recogniser as one text line, which is both faster and more reliable for single-word
            crops, but cannot read multi-line images.
        det_fallback: when detection finds nothing, retry with recognition on the whole image.
        use_cls: run the 0/180 degree orientation classifier (rarely useful for upright renders,
            and it can flip short words).
        text_score: minimum recognition confidence for a detected box to be kept.
        engine_kwargs: passed to ``rapidocr_onnxruntime.RapidOCR``.
    """

    name = "rapidocr"

    def __init__(
        self,
        *,
        min_height: int = 96,
        pad: float = 0.25,
        use_det: bool = True,
        det_fallback: bool = True,
        use_cls: bool = False,
        text_score: float = 0.5,
        line_rec: bool = False,
        line_margin: float = 0.1,
        rerec_single: bool = False,
        autocrop: bool = False,
        autocrop_margin: float = 0.15,
        **engine_kwargs: Any,
    ) -> None:
        self.line_rec = line_rec
        self.line_margin = line_margin
        self.rerec_single = rerec_single
        self.autocrop = autocrop
        self.autocrop_margin = autocrop_margin
        self.min_height = min_height
        self.pad = pad
        self.use_det = use_det
        self.det_fallback = det_fallback
        self.use_cls = use_cls
        self.text_score = text_score
        self.engine_kwargs = engine_kwargs
        self._engine: Any = None

    @property
    def engine(self) -> Any:
        """The RapidOCR engine, created on first use (loading three ONNX sessions takes ~1 s)."""
        if self._engine is None:
            try:
                from rapidocr_onnxruntime import RapidOCR
            except ImportError as e:  # pragma: no cover - it is a hard dependency
                raise OCRUnavailableError(
                    "rapidocr_onnxruntime is not installed: pip install rapidocr-onnxruntime"
                ) from e
            kwargs = {"text_score": self.text_score, **self.engine_kwargs}
            self._engine = RapidOCR(**kwargs)
        return self._engine

    def _recognise(self, img: Image.Image) -> str:
        """Recognition only, treating ``img`` as a single text line."""
        result, _ = self.engine(img, use_det=False, use_cls=self.use_cls, use_rec=True)
        if not result:
            return ""
        text, score = result[0][0], float(result[0][1])
        return text.strip() if score >= self.text_score else ""

    def _read_one(self, image: Image.Image) -> str:
        img = prepare_image(image, min_height=self.min_height, pad=self.pad, mode="RGB")
        if self.use_det:
            result, _ = self.engine(img, use_det=True, use_cls=self.use_cls, use_rec=True)
            if result:
                items = [(np.asarray(r[0], dtype=float), r[1]) for r in result]
                if not self.line_rec:
                    return _join_boxes(items)
                texts = []
                for line in _group_lines(items):
                    pts = np.concatenate([b for b, _ in line]).reshape(-1, 2)
                    x0, y0 = pts.min(axis=0)
                    x1, y1 = pts.max(axis=0)
                    m = self.line_margin * (y1 - y0)
                    box = (max(0, int(x0 - m)), max(0, int(y0 - m)),
                           min(img.size[0], int(np.ceil(x1 + m))), min(img.size[1], int(np.ceil(y1 + m))))
                    if len(line) == 1 and not self.rerec_single:
                        texts.append(line[0][1].strip())
                    else:
                        texts.append(self._recognise(img.crop(box)))
                return " ".join(t for t in texts if t)
            if not self.det_fallback:
                return ""
        if self.autocrop:
            img = autocrop(img, margin=self.autocrop_margin)
        return self._recognise(img)

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        return [self._read_one(im) for im in images]


# --------------------------------------------------------------------------------------------------
# Tesseract
# --------------------------------------------------------------------------------------------------

UPPERCASE_WHITELIST = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


class TesseractBackend:
    """The ``tesseract`` CLI in single-line mode.

    Args:
        min_height, pad: see :func:`prepare_image` (applied to a grayscale copy).
        psm: page segmentation mode; 7 = "treat the image as a single text line".
        whitelist: if set, passed as ``-c tessedit_char_whitelist=...`` (e.g.
            :data:`UPPERCASE_WHITELIST` when targets are known to be uppercase).
        lang: tesseract language.
        binary: the program name or path.
        timeout: seconds per image.
    """

    name = "tesseract"

    def __init__(
        self,
        *,
        min_height: int = 96,
        pad: float = 0.25,
        psm: int = 7,
        whitelist: str | None = None,
        lang: str = "eng",
        binary: str = "tesseract",
        timeout: float = 30.0,
    ) -> None:
        self.min_height = min_height
        self.pad = pad
        self.psm = psm
        self.whitelist = whitelist
        self.lang = lang
        self.binary = binary
        self.timeout = timeout
        self._path: str | None = None

    def _binary_path(self) -> str:
        if self._path is None:
            path = shutil.which(self.binary)
            if path is None:
                raise OCRUnavailableError(
                    f"tesseract binary {self.binary!r} not found on PATH: "
                    "install it (e.g. apt-get install tesseract-ocr)"
                )
            self._path = path
        return self._path

    def _command(self, image_path: str) -> list[str]:
        cmd = [self._binary_path(), image_path, "stdout", "--psm", str(self.psm), "-l", self.lang]
        if self.whitelist:
            cmd += ["-c", f"tessedit_char_whitelist={self.whitelist}"]
        return cmd

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        self._binary_path()
        out: list[str] = []
        with tempfile.TemporaryDirectory(prefix="textloc-tess-") as tmp:
            for i, image in enumerate(images):
                img = prepare_image(image, min_height=self.min_height, pad=self.pad, mode="L")
                path = os.path.join(tmp, f"{i}.png")
                img.save(path)
                proc = subprocess.run(
                    self._command(path), capture_output=True, text=True, timeout=self.timeout
                )
                if proc.returncode != 0:
                    raise RuntimeError(f"tesseract failed on image {i}: {proc.stderr.strip()}")
                out.append(" ".join(proc.stdout.split()))
        return out


# --------------------------------------------------------------------------------------------------
# EasyOCR (optional)
# --------------------------------------------------------------------------------------------------

EASYOCR_ENV = "TEXTLOC_EASYOCR_DIR"


class EasyOCRBackend:
    """EasyOCR with user-supplied weights (``download_enabled=False``: nothing is fetched).

    Args:
        model_dir: folder holding EasyOCR's ``craft_mlt_25k.pth`` and ``english_g2.pth``; defaults
            to ``$TEXTLOC_EASYOCR_DIR``.
        langs: EasyOCR language list.
        gpu: let EasyOCR use a GPU.
        min_height, pad: see :func:`prepare_image`.
    """

    name = "easyocr"

    def __init__(
        self,
        model_dir: str | os.PathLike[str] | None = None,
        *,
        langs: Sequence[str] = ("en",),
        gpu: bool = False,
        min_height: int = 96,
        pad: float = 0.25,
    ) -> None:
        self.model_dir = model_dir if model_dir is not None else os.environ.get(EASYOCR_ENV)
        self.langs = list(langs)
        self.gpu = gpu
        self.min_height = min_height
        self.pad = pad
        self._reader: Any = None

    def _how(self) -> str:
        return (
            f"put EasyOCR's craft_mlt_25k.pth and english_g2.pth in a folder and pass it as model_dir "
            f"or set ${EASYOCR_ENV} (see https://www.jaided.ai/easyocr/modelhub/)"
        )

    @property
    def reader(self) -> Any:
        """The ``easyocr.Reader``, created on first use."""
        if self._reader is None:
            try:
                import easyocr  # type: ignore[import-not-found]
            except ImportError as e:
                raise OCRUnavailableError(
                    "easyocr is not installed: pip install easyocr, then " + self._how()
                ) from e
            if not self.model_dir or not Path(self.model_dir).is_dir():
                raise OCRUnavailableError(f"EasyOCR weights not found ({self.model_dir!r}): {self._how()}")
            try:
                self._reader = easyocr.Reader(
                    self.langs,
                    gpu=self.gpu,
                    model_storage_directory=str(self.model_dir),
                    download_enabled=False,
                    verbose=False,
                )
            except FileNotFoundError as e:
                raise OCRUnavailableError(f"EasyOCR weights missing in {self.model_dir!r}: {self._how()}") from e
        return self._reader

    def read(self, images: Sequence[Image.Image]) -> list[str]:
        reader = self.reader
        out = []
        for image in images:
            img = prepare_image(image, min_height=self.min_height, pad=self.pad, mode="RGB")
            result = reader.readtext(np.asarray(img), detail=1, paragraph=False)
            out.append(_join_boxes([(r[0], r[1]) for r in result]))
        return out


# --------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------

_REGISTRY: dict[str, Callable[..., OCRBackend]] = {
    "rapidocr": RapidOCRBackend,
    "tesseract": TesseractBackend,
    "easyocr": EasyOCRBackend,
}


def available_backends() -> list[str]:
    """Names accepted by :func:`get_ocr_backend` (registered, not necessarily runnable here)."""
    return sorted(_REGISTRY)


def get_ocr_backend(name: str = "rapidocr", **kwargs: Any) -> OCRBackend:
    """Construct a backend by name. Construction is cheap: engines load on first ``read``."""
    key = name.lower().strip()
    if key not in _REGISTRY:
        raise ValueError(f"Unknown OCR backend {name!r}; options: {', '.join(available_backends())}")
    return _REGISTRY[key](**kwargs)
