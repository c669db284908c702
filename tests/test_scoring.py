"""Hand-worked cases for textloc.eval.scoring: text scores on words, image scores on floats, one PSNR rule."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from textloc.eval import metrics, scoring
from textloc.eval.scoring import (
    PSNR_MAX,
    ImageScore,
    TextScore,
    colours_kept,
    image_scores,
    mse,
    normalize_text,
    psnr,
    ssim,
    text_scores,
    to_float_image,
    words,
)

# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("open late", "OPEN LATE"),
        ("  Open\tLATE\n now ", "OPEN LATE NOW"),
        ("OPEN, LATE!", "OPEN LATE"),
        ("HELLO,WORLD", "HELLO WORLD"),
        ("DON'T", "DONT"),
        ("DON\u2019T", "DONT"),  # typographic apostrophe
        ("'QUOTED'", "QUOTED"),
        ("E-MAIL", "E MAIL"),
        ('"SALE" -50%', "SALE 50"),
        ("caf\u00e9", "CAF\u00c9"),
        ("\uff2f\uff30\uff25\uff2e", "OPEN"),  # full-width letters (NFKC)
        ("", ""),
        ("  ?! ", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_normalize_is_idempotent_and_words_split() -> None:
    s = "  Don't   e-mail, ok? "
    assert normalize_text(normalize_text(s)) == normalize_text(s)
    assert words(s) == ["DONT", "E", "MAIL", "OK"]
    assert words("") == []


# --------------------------------------------------------------------------------------------------
# Word scores
# --------------------------------------------------------------------------------------------------


def test_extra_word_lowers_precision_only() -> None:
    s = text_scores("OPEN LATE NOW", "OPEN LATE")
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == 1.0
    assert s.f1 == pytest.approx(0.8)
    assert not s.exact
    assert s.edit_distance == 4  # " NOW"
    assert s.cer == pytest.approx(4 / 9)


def test_missing_word_lowers_recall_only() -> None:
    s = text_scores("OPEN", "OPEN LATE")
    assert (s.precision, s.recall) == (1.0, 0.5)
    assert s.f1 == pytest.approx(2 / 3)


def test_repeated_words_are_a_multiset() -> None:
    s = text_scores("GO GO GO", "GO")
    assert s.precision == pytest.approx(1 / 3)
    assert s.recall == 1.0
    s = text_scores("GO", "GO GO")
    assert (s.precision, s.recall) == (1.0, 0.5)
    s = text_scores("GO STOP GO", "GO GO STOP")  # order does not matter for P/R
    assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)
    assert not s.exact


def test_words_not_characters() -> None:
    # The reference implementation's character-level "word" F1 gave this ~1.0.
    s = text_scores("TAR", "RAT")
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)


def test_exact_and_normalisation_in_scores() -> None:
    s = text_scores("open late.", "OPEN  LATE")
    assert s.exact
    assert (s.precision, s.recall, s.f1, s.edit_distance, s.cer) == (1.0, 1.0, 1.0, 0, 0.0)


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [("", "", 1.0), ("  !! ", "", 1.0), ("", "OPEN", 0.0), ("OPEN", "", 0.0)],
)
def test_empty_cases(pred: str, target: str, expected: float) -> None:
    s = text_scores(pred, target)
    assert (s.precision, s.recall, s.f1) == (expected, expected, expected)
    assert s.exact == (expected == 1.0)


def test_edit_distance_and_cer() -> None:
    s = text_scores("CUT", "CAT")
    assert s.edit_distance == 1
    assert s.cer == pytest.approx(1 / 3)
    assert text_scores("cat", "CAT").edit_distance == 0
    # CER divides by max(1, len(target)), so an empty target does not divide by zero.
    s = text_scores("AB", "")
    assert (s.edit_distance, s.cer) == (2, 2.0)
    # Insertions can push CER above 1.
    assert text_scores("ABCDEF", "AB").cer == pytest.approx(2.0)


# --------------------------------------------------------------------------------------------------
# Image preservation
# --------------------------------------------------------------------------------------------------


def test_mse_black_white_uint8_is_one() -> None:
    black = np.zeros((8, 8, 3), np.uint8)
    white = np.full((8, 8, 3), 255, np.uint8)
    assert mse(black, white) == 1.0
    assert mse(white, black) == 1.0
    assert mse(Image.fromarray(black), Image.fromarray(white)) == 1.0


def test_mse_has_no_uint8_wraparound() -> None:
    a = np.full((4, 4), 10, np.uint8)
    b = np.full((4, 4), 250, np.uint8)
    # In uint8, 10 - 250 wraps to 16, which would give (16/255)^2.
    assert mse(a, b) == pytest.approx((240 / 255) ** 2)
    assert mse(a, b) == mse(b, a)


def test_float_inputs_and_mixed_types() -> None:
    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    b8 = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    expected = np.mean((a8 / 255.0 - b8 / 255.0) ** 2)
    assert mse(a8, b8) == pytest.approx(expected)
    assert mse(a8 / 255.0, Image.fromarray(b8)) == pytest.approx(expected)
    assert mse(a8.astype(np.float32) / 255, b8.astype(np.float32) / 255) == pytest.approx(expected, rel=1e-6)


def test_psnr() -> None:
    a = np.full((8, 8), 0.25)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # mse 0.01 -> 10*log10(1/0.01)
    assert psnr(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8)) == pytest.approx(0.0)


def test_ssim() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((32, 32, 3))
    assert ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert ssim(a, b) < 0.99
    gray = rng.random((16, 16))
    assert ssim(gray, gray) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(3, 3), (4, 9, 3), (5, 5, 3), (6, 40), (24, 64, 3)])
def test_ssim_tiny_images(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(2)
    a = rng.random(shape)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 1 - a) < 1.0


def test_ssim_too_small_raises() -> None:
    with pytest.raises(ValueError, match="Expected"):
        ssim(np.zeros((2, 8)), np.zeros((2, 8)))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"Expected .* but got"):
        mse(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match=r"Expected .* but got"):
        ssim(Image.new("L", (8, 8)), Image.new("RGB", (8, 8)))


def test_to_float_image_validation() -> None:
    assert to_float_image(np.full((2, 2), 65535, np.uint16)).max() == 1.0
    assert to_float_image(Image.new("P", (3, 3))).shape == (3, 3, 3)
    assert to_float_image(np.array([[True, False]])).tolist() == [[1.0, 0.0]]
    with pytest.raises(ValueError, match=r"Expected float image values in \[0, 1\]"):
        to_float_image(np.full((2, 2), 255.0))
    with pytest.raises(ValueError, match="Expected a uint8"):
        to_float_image(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="Expected an image of shape"):
        to_float_image(np.zeros((1, 2, 2, 3)))


# --------------------------------------------------------------------------------------------------
# The one PSNR rule, typed scores, colours
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("image", [np.zeros((8, 8, 3)), np.full((9, 7), 0.3), Image.new("RGB", (64, 24), "red")])
def test_identical_images_psnr_100_ssim_1_mse_0(image) -> None:
    score = image_scores(image, image)
    assert score == ImageScore(mse=0.0, ssim=pytest.approx(1.0), psnr=100.0)
    assert PSNR_MAX == 100.0 and psnr(image, image) == 100.0
    json.dumps(score.as_dict(), allow_nan=False)  # JSON-safe: no infinity


def test_psnr_is_capped_and_monotone() -> None:
    a = np.zeros((100, 100))
    b = a.copy()
    b[0, 0] = 1e-6  # mse 1e-16 -> 160 dB uncapped
    assert psnr(a, b) == PSNR_MAX
    c = a.copy()
    c[0, 0] = 0.5
    assert 0 < psnr(a, c) < PSNR_MAX


def test_uint8_like_inputs_are_not_wrapped() -> None:
    a = np.full((8, 8, 3), 10, np.uint8)
    b = np.full((8, 8, 3), 250, np.uint8)
    score = image_scores(a, b)
    assert score.mse == pytest.approx((240 / 255) ** 2)  # wrapped uint8 would give (16/255)^2
    assert score.psnr == pytest.approx(10 * math.log10(1 / (240 / 255) ** 2))
    assert image_scores(Image.fromarray(a), Image.fromarray(b)) == score


def test_image_scores_match_the_single_metrics() -> None:
    rng = np.random.default_rng(4)
    a, b = rng.random((24, 64, 3)), rng.random((24, 64, 3))
    assert image_scores(a, b) == ImageScore(mse=mse(a, b), ssim=ssim(a, b), psnr=psnr(a, b))


def test_text_scores_are_word_level() -> None:
    # "THE CAT" vs "CAT THE": every word found (P = R = F1 = 1) though not exact; character overlap
    # without a matching word scores 0.
    s = text_scores("CAT THE", "THE CAT")
    assert (s.precision, s.recall, s.f1, s.exact) == (1.0, 1.0, 1.0, False)
    assert text_scores("ACT", "CAT").f1 == 0.0
    assert isinstance(s, TextScore)
    assert set(s.as_dict()) == {"exact", "precision", "recall", "f1", "cer", "edit_distance"}


def test_cer_counts_characters() -> None:
    s = text_scores("HELO", "HELLO")
    assert (s.edit_distance, s.cer) == (1, pytest.approx(1 / 5))
    assert text_scores("", "ABCD").cer == 1.0


def test_metrics_reexports_are_the_scoring_functions() -> None:
    # one home: the legacy names in eval.metrics are the scoring functions, not copies
    assert metrics.psnr is scoring.psnr and metrics.ocr_word_scores is scoring.text_scores
    assert metrics.normalize_text is scoring.normalize_text and metrics.ssim is scoring.ssim


class _Profile:
    """A model profile whose pixel reader names colours by the top-left and centre pixel."""

    @staticmethod
    def colours(image: Image.Image) -> tuple[str | None, str | None]:
        names = {(255, 0, 0): "red", (0, 0, 255): "blue", (255, 255, 255): "white"}
        rgb = image.convert("RGB")
        return names.get(rgb.getpixel((0, 0))), names.get(rgb.getpixel((rgb.width // 2, rgb.height // 2)))


def _sign(background: str, text: str) -> Image.Image:
    image = Image.new("RGB", (9, 9), background)
    image.putpixel((4, 4), Image.new("RGB", (1, 1), text).getpixel((0, 0)))
    return image


def test_colours_kept_reads_through_the_profile() -> None:
    source = _sign("red", "white")
    assert colours_kept(_Profile(), source, _sign("red", "white")) == (True, True)
    assert colours_kept(_Profile(), source, _sign("blue", "white")) == (False, True)
    assert colours_kept(_Profile(), source, _sign("red", "blue")) == (True, False)
    assert colours_kept(_Profile(), source, _sign("green", "white")) == (None, True)  # unreadable colour
    assert colours_kept(object(), source, source) == (None, None)  # a model without a colour reader
