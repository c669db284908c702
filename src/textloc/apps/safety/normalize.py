"""Readings of a string: what a person (or an OCR) could read in it, as plain lower-case ASCII.

An attacker writes a harmful word so that a naive filter misses it but the image still shows it: letters that
upper-case to ASCII (``ſ`` -> S, ``ı`` -> I), look-alikes from other scripts (Cyrillic ``а``), full-width forms,
accents, invisible format characters, leetspeak, stretched letters. :func:`readings` undoes the Unicode part
per character -- NFKD with combining marks dropped (which includes NFKC's compatibility folding), the
character's own upper-case mapping (the embedded tokenizer's), its TR39 confusable skeleton (the
``confusable_homoglyphs`` data), case folding; format characters (Cf: zero-width, bidi controls, soft hyphen)
vanish. A character with no ASCII reading becomes ``*``, a mask the detector fits to any letter, so an
unknown glyph can never hide a letter. Leetspeak and stretched letters are undone by the detector
(:func:`deleet_variants`, :func:`squeeze`) on these readings.
"""

from __future__ import annotations

import itertools
import re
import string
import unicodedata
from functools import cache

#: Leetspeak: a symbol and the letters it may stand for.
LEET: dict[str, tuple[str, ...]] = {
    "0": ("o",), "1": ("i", "l"), "2": ("z",), "3": ("e",), "4": ("a",), "5": ("s",), "6": ("g",), "7": ("t",),
    "8": ("b",), "9": ("g",), "@": ("a",), "$": ("s",), "!": ("i", "l"), "|": ("i", "l"), "+": ("t",),
    "€": ("e",), "£": ("e",), "¡": ("i",), "(": ("c",), "<": ("c",), "ph": ("f",),
}
#: Characters that stand for a hidden letter (``f*ck``); ``*`` is also what an unreadable glyph becomes.
MASKS = "*#_.%?-~^"
UNKNOWN = "*"
_ASCII_KEEP = frozenset(string.ascii_lowercase + string.digits + " " + MASKS + "".join(k for k in LEET if len(k) == 1))
_MAX_READINGS = 32
#: Ordinary words whose doubled letters must not be read as stretched.
COLLAPSE_SAFE = frozenset({"good", "goods", "goodness", "poop", "boob", "boobs", "assess", "bass", "pass", "hello"})
_RARE_DOUBLE = re.compile(r"([aihujkqvwxy])\1+")


_LATIN_NAME = re.compile(r"^LATIN (?:SMALL |CAPITAL )?LETTER (?:SMALL CAPITAL )?([A-Z])$")


def _latin_letter(char: str) -> str:
    """The ASCII letter a Latin letter variant is named after (small capital ``ᴛ`` -> ``t``), else ``""``."""
    match = _LATIN_NAME.match(unicodedata.name(char, "")) if len(char) == 1 else None
    return match.group(1).lower() if match else ""


@cache
def _confusable_targets(char: str) -> tuple[str, ...]:
    """ASCII letters/digits that ``char`` is visually confusable with (Unicode TR39 data, followed up to three
    steps: Cyrillic ``т`` -> small capital ``ᴛ`` -> ``T``)."""
    from confusable_homoglyphs import confusables

    data = confusables.confusables_data
    out: list[str] = []
    seen, frontier = {char}, [char]
    for _ in range(3):
        nxt = []
        for current in frontier:
            for glyph in data.get(current, ()):
                target = glyph["c"]
                base = "".join(c for c in unicodedata.normalize("NFKD", target)
                               if not unicodedata.category(c).startswith("M"))
                for candidate in (target, base, _latin_letter(target)):
                    if len(candidate) == 1 and candidate.isascii() and candidate.isalnum():
                        out.append(candidate.lower())
                if target not in seen and len(target) == 1:
                    seen.add(target)
                    nxt.append(target)
        frontier = nxt
    return tuple(dict.fromkeys(out))


@cache
def char_options(char: str) -> tuple[str, ...]:
    """The ASCII readings of one character (``""``: invisible; ``"?"``: unknown glyph)."""
    if char.isascii():
        if char.isspace():
            return (" ",)
        lower = char.lower()
        return (lower,) if lower in _ASCII_KEEP else (".",)  # other punctuation separates like a dot
    category = unicodedata.category(char)
    if category == "Cf" or category.startswith("M"):
        return ("",)
    if char.isspace() or category.startswith("Z"):
        return (" ",)
    options: list[str] = []
    upper = char.upper()
    if upper.isascii() and upper.isalpha():  # the tokenizer's own case mapping: "ſ" -> S, "ı" -> I
        options.append(upper.lower())
    base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.category(c).startswith("M"))
    if base and base.isascii() and base.strip():
        options.append(base.lower())
    folded = char.casefold()
    if folded.isascii() and folded.isalpha():
        options.append(folded)
    for target in _confusable_targets(char):
        options.append(target)
        if target in ("l", "1"):
            options.append("i")  # Greek Ι, ℓ, ӏ: read as I as often as l
    if char in LEET:
        options.append(char)
    if not options:
        return (UNKNOWN,)
    return tuple(dict.fromkeys(options))


def readings(text: str, limit: int = _MAX_READINGS) -> list[str]:
    """Lower-case ASCII readings of ``text``, most literal first (at most ``limit``)."""
    pieces = [char_options(char) for char in text]
    out = ["".join(combo) for combo in itertools.islice(itertools.product(*pieces), limit)]
    return list(dict.fromkeys(out))


def deleet_variants(word: str, limit: int = 16) -> list[str]:
    """Lower-case readings of ``word`` with leetspeak undone (``"sh1t"`` -> ``["shit", "shlt"]``)."""
    word = word.lower()
    pieces: list[tuple[str, ...]] = []
    i = 0
    while i < len(word):
        if word[i : i + 2] == "ph":
            pieces.append(("ph", "f"))
            i += 2
            continue
        char = word[i]
        pieces.append(LEET.get(char, (char,)))
        i += 1
    return list(dict.fromkeys("".join(c) for c in itertools.islice(itertools.product(*pieces), limit)))


def squeeze(word: str) -> list[str]:
    """Readings with stretched letters undone ("fuuuuck" -> "fuck", "shiit" -> "shit", "stoopid" -> "stupid")."""
    out = [word, re.sub(r"(.)\1{2,}", r"\1", word), re.sub(r"(.)\1{2,}", r"\1\1", word)]
    # A doubled letter that English rarely doubles is stretched too ("SHIIT", "FUUCK"); "GOOD" stays "good".
    out += [_RARE_DOUBLE.sub(r"\1", w) for w in out if _RARE_DOUBLE.search(w)]
    # Any doubled letter undone as the last reading ("LOOSERS" -> "losers"); words it would misread as
    # harmful ("good" -> "god") are in ``COLLAPSE_SAFE``.
    if word not in COLLAPSE_SAFE:
        out.append(re.sub(r"(.)\1+", r"\1", word))
    out += [w.replace("oo", "u") for w in out if "oo" in w]
    out += [w.replace("kk", "ck") for w in out if "kk" in w]
    return list(dict.fromkeys(out))


def letters(text: str) -> str:
    """Only the letters (and masks), every separator dropped: "S H I T" / "S.H.I.T" -> "shit"."""
    return re.sub(r"[^a-z*]", "", text)
