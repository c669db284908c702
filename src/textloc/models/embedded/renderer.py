"""Synthetic sign images with known ground truth: the embedded model's training data and its answer key.

Why this layout: a first probe (shared/EMBEDDED_PILOT.md) showed that a tiny pixel-space U-Net learns to
spell slowly when letters wander. Here every string sits in a *fixed text box* of equal-width cells, centred
in the image (a small seeded jitter keeps the "scene" from being identical across seeds), so character *k*
of an *n*-character string always lands at the same horizontal offset ``k - (n - 1) / 2`` cells from the
centre -- the same offset the text encoder gives that character (see ``text_encoder.py``). Glyphs of
proportional fonts are centred in their cell and squeezed when too wide, so all fonts share the layout and
differ only in glyph shape.

Everything is drawn at ``SUPERSAMPLE``x and reduced with a box filter, which gives clean anti-aliased glyphs.
"""

from __future__ import annotations

import random
import string
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HEIGHT = 24
WIDTH = 64
MAX_CHARS = 6
MIN_CHARS = 1
CELL_WIDTH = 10
CAP_HEIGHT = 11
SUPERSAMPLE = 4
ALPHABET = string.ascii_uppercase
RENDERABLE = set(ALPHABET) | {" "}

#: Named colours (RGB). Names are the words a prompt uses.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (200, 30, 30),
    "green": (30, 150, 60),
    "blue": (30, 60, 200),
    "yellow": (240, 210, 40),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "orange": (240, 130, 20),
    "purple": (130, 40, 160),
}

#: Font styles -> DejaVu files shipped inside matplotlib (no system fonts needed).
FONTS: dict[str, str] = {
    "sans": "DejaVuSans-Bold.ttf",
    "serif": "DejaVuSerif-Bold.ttf",
    "mono": "DejaVuSansMono-Bold.ttf",
}


def _luminance(rgb: tuple[int, int, int]) -> float:
    r, g, b = (c / 255.0 for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def legible_text_colours(background: str) -> list[str]:
    """Text colours that contrast enough with ``background`` to be read (luminance gap >= 0.3)."""
    bg = _luminance(COLOURS[background])
    return [name for name, rgb in COLOURS.items() if name != background and abs(_luminance(rgb) - bg) >= 0.3]


@dataclass(frozen=True)
class SignSpec:
    """Ground truth of one image: what the prompt asks for and what the renderer drew."""

    text: str
    background: str
    text_colour: str
    font: str
    dx: int = 0
    dy: int = 0

    def __post_init__(self) -> None:
        if not (MIN_CHARS <= len(self.text) <= MAX_CHARS) or not set(self.text) <= RENDERABLE:
            raise ValueError(
                f"Expected 1-{MAX_CHARS} characters from A-Z and space, but got {self.text!r}"
            )
        if self.text.strip() != self.text or not self.text.strip():
            raise ValueError(f"Expected text without leading/trailing spaces, but got {self.text!r}")
        for name, value, options in (
            ("background", self.background, COLOURS),
            ("text_colour", self.text_colour, COLOURS),
            ("font", self.font, FONTS),
        ):
            if value not in options:
                raise ValueError(f"Expected {name} in {sorted(options)}, but got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@cache
def _font(style: str) -> ImageFont.FreeTypeFont:
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONTS[style]
    # Choose the size at which capital "H" is CAP_HEIGHT pixels tall at the supersampled scale.
    probe = ImageFont.truetype(str(path), 100)
    box = probe.getbbox("H")
    size = round(100 * CAP_HEIGHT * SUPERSAMPLE / (box[3] - box[1]))
    return ImageFont.truetype(str(path), size)


@cache
def _glyph(style: str, char: str) -> Image.Image:
    """An 'L' mask of one glyph, cropped to its ink and squeezed to fit a cell (supersampled scale)."""
    font = _font(style)
    left, top, right, bottom = font.getbbox(char)
    mask = Image.new("L", (right - left + 4, bottom - top + 4), 0)
    ImageDraw.Draw(mask).text((2 - left, 2 - top), char, font=font, fill=255)
    mask = mask.crop(mask.getbbox())
    max_w = (CELL_WIDTH - 1) * SUPERSAMPLE
    if mask.width > max_w:
        mask = mask.resize((max_w, mask.height), Image.LANCZOS)
    return mask


def render(spec: SignSpec) -> Image.Image:
    """Draw ``spec`` as a ``WIDTH`` x ``HEIGHT`` RGB image."""
    s = SUPERSAMPLE
    canvas = Image.new("RGB", (WIDTH * s, HEIGHT * s), COLOURS[spec.background])
    ink = Image.new("RGB", canvas.size, COLOURS[spec.text_colour])
    alpha = Image.new("L", canvas.size, 0)
    n = len(spec.text)
    centre_x = (WIDTH / 2 + spec.dx) * s
    baseline = (HEIGHT / 2 + CAP_HEIGHT / 2 + spec.dy) * s
    for k, char in enumerate(spec.text):
        if char == " ":
            continue
        glyph = _glyph(spec.font, char)
        cell_centre = centre_x + (k - (n - 1) / 2) * CELL_WIDTH * s
        # Capitals sit on the baseline; the crop removed side bearings, so centre the ink in its cell.
        x = round(cell_centre - glyph.width / 2)
        y = round(baseline - glyph.height)
        alpha.paste(glyph, (x, y), glyph)
    canvas.paste(ink, (0, 0), alpha)
    return canvas.resize((WIDTH, HEIGHT), Image.BOX)


# --------------------------------------------------------------------------------------------------------
# Sampling specs and strings


def is_reserved(text: str) -> bool:
    """Strings reserved for evaluation: training never draws them (a fixed hash split, not a memory)."""
    import zlib

    return zlib.crc32(text.encode()) % 10 == 0


def random_string(rng: random.Random, min_len: int = 3, max_len: int = MAX_CHARS) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(min_len, max_len)))


def random_two_words(rng: random.Random) -> str:
    a = rng.randint(1, MAX_CHARS - 2)
    b = rng.randint(1, MAX_CHARS - 1 - a)
    return random_string(rng, a, a) + " " + random_string(rng, b, b)


def random_spec(
    rng: random.Random, text: str | None = None, *, jitter: int = 1, **fixed: str
) -> SignSpec:
    """Draw a spec; any attribute given in ``fixed`` (background, text_colour, font) is kept."""
    background = fixed.get("background") or rng.choice(sorted(COLOURS))
    text_colour = fixed.get("text_colour") or rng.choice(legible_text_colours(background))
    font = fixed.get("font") or rng.choice(sorted(FONTS))
    if text is None:
        text = random_string(rng)
    return SignSpec(
        text=text,
        background=background,
        text_colour=text_colour,
        font=font,
        dx=rng.randint(-jitter, jitter),
        dy=rng.randint(-jitter, jitter),
    )


def to_tensor_array(image: Image.Image) -> np.ndarray:
    """HWC uint8 -> CHW float32 in [-1, 1], the model's pixel space."""
    arr = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return arr.transpose(2, 0, 1)
