"""OCR backends on tiny clean renders (24x64 px, ~14 px DejaVu fonts), registry and error paths."""

from __future__ import annotations

import os
import shutil
import sys
import types

import matplotlib
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from textloc.eval.metrics import normalize_text
from textloc.eval.ocr import (
    UPPERCASE,
    EasyOCRBackend,
    OCRBackend,
    OCRUnavailableError,
    RapidOCRBackend,
    TesseractBackend,
    _CharsetCTCDecode,
    _join_boxes,
    autocrop,
    available_backends,
    edge_colour,
    get_ocr_backend,
    prepare_image,
    word_segments,
)

FONT_DIR = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
FONTS = ["DejaVuSans-Bold.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono-Bold.ttf"]
COLOURS = [((20, 20, 20), (245, 245, 245)), ((250, 250, 250), (15, 15, 15))]  # dark on light, light on dark
WORDS = [
    "OPEN", "LATE", "SALE", "STOP", "EXIT", "CAFE", "HOTEL", "BAR", "FOOD", "PARK",
    "TAXI", "BANK", "SHOP", "GIFT", "BOOKS", "MUSIC", "PIZZA", "JAZZ", "QUIET", "WAY",
]  # fmt: skip


def render(text: str, font: str = FONTS[0], fg=(0, 0, 0), bg=(255, 255, 255), size=(64, 24), px=14):
    """``text`` centred in a ``size`` image, the font shrunk from ``px`` until it fits with 2 px margins."""
    w, h = size
    while True:
        f = ImageFont.truetype(os.path.join(FONT_DIR, font), px)
        left, top, right, bottom = f.getbbox(text)
        if right - left <= w - 4 or px <= 6:
            break
        px -= 1
    im = Image.new("RGB", size, bg)
    ImageDraw.Draw(im).text(
        ((w - (right - left)) / 2 - left, (h - (bottom - top)) / 2 - top), text, font=f, fill=fg
    )
    return im


def word_renders() -> list[tuple[str, Image.Image]]:
    return [(w, render(w, FONTS[i % 3], *COLOURS[i % 2])) for i, w in enumerate(WORDS)]


def exact_rate(backend: OCRBackend) -> tuple[float, list[tuple[str, str]]]:
    data = word_renders()
    reads = backend.read([im for _, im in data])
    assert len(reads) == len(data) and all(isinstance(r, str) for r in reads)
    misses = [(w, r) for (w, _), r in zip(data, reads, strict=True) if normalize_text(r) != w]
    return 1 - len(misses) / len(data), misses


@pytest.fixture(scope="module")
def rapid() -> RapidOCRBackend:
    return RapidOCRBackend()


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def test_rapidocr_reads_tiny_words(rapid: RapidOCRBackend) -> None:
    rate, misses = exact_rate(rapid)
    assert rate >= 0.9, misses


def test_rapidocr_engine_is_lazy_and_reused() -> None:
    backend = RapidOCRBackend()
    assert backend._engine is None  # construction is cheap
    assert backend.read([]) == []
    backend.read([render("OPEN")])
    engine = backend._engine
    assert engine is not None
    backend.read([render("LATE"), render("SALE")])
    assert backend._engine is engine


def test_rapidocr_detect_mode_joins_lines_in_reading_order(rapid: RapidOCRBackend) -> None:
    im = Image.new("RGB", (160, 96), "white")
    draw = ImageDraw.Draw(im)
    font = ImageFont.truetype(os.path.join(FONT_DIR, FONTS[0]), 22)
    draw.text((20, 14), "OPEN", font=font, fill="black")
    draw.text((20, 54), "LATE", font=font, fill="black")
    detect = RapidOCRBackend(mode="detect")
    detect._engine = rapid.engine  # share the loaded engine (same settings)
    assert normalize_text(detect.read([im])[0]) == "OPEN LATE"
    # 96 px is above line_max_height, so "auto" detects too.
    assert normalize_text(rapid.read([im])[0]) == "OPEN LATE"


def test_rapidocr_keeps_real_word_spaces(rapid: RapidOCRBackend) -> None:
    reads = rapid.read([render("GO UP", font, size=(96, 24)) for font in FONTS])
    assert [normalize_text(r) for r in reads] == ["GO UP"] * 3


def test_rapidocr_blank_image_reads_empty(rapid: RapidOCRBackend) -> None:
    assert rapid.read([Image.new("RGB", (64, 24), (200, 200, 200))]) == [""]


def test_rapidocr_charset(rapid: RapidOCRBackend) -> None:
    upper = RapidOCRBackend(charset=UPPERCASE)
    reads = upper.read([render(w, FONTS[2]) for w in ("OIO", "BOX")])
    assert all(set(r) <= set(UPPERCASE + " ") for r in reads), reads


def test_tesseract_reads_tiny_words() -> None:
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract binary not on PATH (apt-get install tesseract-ocr to run this test)")
    rate, misses = exact_rate(TesseractBackend())
    assert rate >= 0.9, misses


def test_tesseract_missing_binary() -> None:
    backend = TesseractBackend(binary="textloc-no-such-tesseract")
    with pytest.raises(OCRUnavailableError, match="not found"):
        backend.read([render("OPEN")])


def test_tesseract_whitelist_in_command() -> None:
    if shutil.which("tesseract") is None:
        pytest.skip("tesseract binary not on PATH")
    cmd = TesseractBackend(whitelist=UPPERCASE)._command("x.png")
    assert cmd[-2:] == ["-c", f"tessedit_char_whitelist={UPPERCASE}"]
    assert ["--psm", "7"] == cmd[3:5]


# --------------------------------------------------------------------------------------------------
# Registry and optional backends
# --------------------------------------------------------------------------------------------------


def test_registry() -> None:
    assert available_backends() == ["easyocr", "rapidocr", "tesseract"]
    assert isinstance(get_ocr_backend(), RapidOCRBackend)
    assert isinstance(get_ocr_backend("Tesseract", whitelist=UPPERCASE), TesseractBackend)
    for name in available_backends():
        backend = get_ocr_backend(name)
        assert isinstance(backend, OCRBackend) and backend.name == name


def test_unknown_backend_lists_options() -> None:
    with pytest.raises(ValueError, match="easyocr, rapidocr, tesseract"):
        get_ocr_backend("paddle")


def test_easyocr_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "easyocr", None)  # import easyocr -> ImportError
    with pytest.raises(OCRUnavailableError, match="TEXTLOC_EASYOCR_DIR"):
        EasyOCRBackend().read([render("OPEN")])


def test_easyocr_without_weights(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    fake = types.ModuleType("easyocr")

    def reader(*args, **kwargs):
        assert kwargs["download_enabled"] is False
        raise FileNotFoundError("Missing craft_mlt_25k.pth and downloads disabled")

    fake.Reader = reader  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "easyocr", fake)
    monkeypatch.delenv("TEXTLOC_EASYOCR_DIR", raising=False)
    with pytest.raises(OCRUnavailableError, match="weights not found"):
        EasyOCRBackend().read([render("OPEN")])
    monkeypatch.setenv("TEXTLOC_EASYOCR_DIR", str(tmp_path))
    with pytest.raises(OCRUnavailableError, match="weights missing"):
        EasyOCRBackend().read([render("OPEN")])


# --------------------------------------------------------------------------------------------------
# Preprocessing helpers
# --------------------------------------------------------------------------------------------------


def test_prepare_image_upscales_and_pads_with_edge_colour() -> None:
    im = render("OPEN", bg=(10, 200, 30), fg=(255, 255, 255))
    assert edge_colour(im) == (10, 200, 30)
    out = prepare_image(im, min_height=96, pad=0.25)
    assert out.size == (256 + 48, 96 + 48)
    assert out.getpixel((0, 0)) == (10, 200, 30)
    assert prepare_image(im, min_height=16, pad=0).size == (64, 24)  # never downscales
    assert prepare_image(im, mode="L").mode == "L"


def test_autocrop_and_word_segments() -> None:
    im = prepare_image(render("GO UP", FONTS[0], size=(96, 24)), min_height=48, pad=0)
    crop = autocrop(im, margin=0.2)
    assert crop.size[0] < im.size[0] and crop.size[1] <= im.size[1] + 1
    assert len(word_segments(crop, min_gap=0.4)) == 2
    mono = prepare_image(render("QSIKC", FONTS[2]), min_height=48, pad=0)
    assert (
        len(word_segments(autocrop(mono), min_gap=0.2)) == 1
    )  # wide monospaced letter gaps are not word gaps
    blank = Image.new("RGB", (20, 10), "white")
    assert autocrop(blank).size == (20, 10) and word_segments(blank) == [blank]


def test_join_boxes_reading_order() -> None:
    def box(x0, y0, x1, y1):
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)

    items = [(box(60, 52, 100, 70), "D"), (box(0, 0, 40, 20), "A"), (box(0, 50, 40, 70), "C"),
             (box(50, 2, 90, 21), "B")]  # fmt: skip
    assert _join_boxes(items) == "A B C D"
    assert _join_boxes([]) == ""


def test_charset_decoder_masks_disallowed_classes() -> None:
    class Decode:
        character = ["blank", "0", "O", " "]

        def __call__(self, preds, *args, **kwargs):
            idx = preds.argmax(-1)[0]
            return [("".join(self.character[i] for i in idx if i), float(preds.max(-1).mean()))]

    preds = np.array([[[0.1, 0.6, 0.3, 0.0], [0.9, 0.05, 0.05, 0.0]]], np.float32)
    assert Decode()(preds)[0][0] == "0"
    text, conf = _CharsetCTCDecode(Decode(), "O")(preds)[0]
    assert text == "O"
    assert conf == pytest.approx((0.75 + 0.9 / 0.95) / 2)  # renormalised over the allowed classes
