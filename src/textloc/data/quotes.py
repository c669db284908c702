"""The one quoted-text parser: which parts of a prompt are "the text to render".

Every caller -- the embedded tokenizer, prompt pairs, editing, localization readers and safe text -- asks this
module, so a prompt yields the same spans everywhere (issue #13). Before it existed five regexes disagreed
(``"[^"]*"`` vs ``"[^"]+"``, curly quotes paired by one and not by the others), and an attacker could make the
safety detector read one string while the tokenizer rendered another (issue #14: ``“"”SHIT"``).

The rule is the one every supported tokenizer reads: a span is the text between the 1st and 2nd, 3rd and 4th
... straight double quote (``"``, U+0022). Empty spans (``""``) are spans. A last, unpaired quote opens no span.
Other quote-like characters (curly ``“ ”``, guillemets ``« »``, full-width ``＂`` ...) never delimit a span; a
prompt that holds them, or an unpaired straight quote, is *ambiguous*: :func:`problems` says why, and
:func:`loose_regions` lists every piece of text any pairing could delimit, so a safety check can fail closed.
"""

from __future__ import annotations

from dataclasses import dataclass

from textloc.errors import InputError

QUOTE = '"'
#: Quote-like characters that are not the delimiter but a person (or another parser) may read as one.
OTHER_QUOTES = frozenset("“”„‟«»‹›「」『』〝〞〟＂❝❞⹂〃")
_ALL_QUOTES = OTHER_QUOTES | {QUOTE}


@dataclass(frozen=True)
class Span:
    """One quoted text: ``prompt[start:end] == text`` (offsets of the text, without its quotes)."""

    start: int
    end: int
    text: str


def _quote_positions(prompt: str) -> list[int]:
    return [i for i, char in enumerate(prompt) if char == QUOTE]


def spans(prompt: str) -> list[Span]:
    """The quoted spans of ``prompt`` in order: straight quotes paired left to right, empty spans included."""
    positions = _quote_positions(prompt)
    return [Span(a + 1, b, prompt[a + 1 : b]) for a, b in zip(positions[::2], positions[1::2], strict=False)]


def quoted_texts(prompt: str) -> list[str]:
    """The texts of :func:`spans` (what ``re.findall(r'"([^"]*)"', prompt)`` returns)."""
    return [span.text for span in spans(prompt)]


def replace_span(prompt: str, index: int, new_text: str) -> str:
    """``prompt`` with quoted span number ``index`` replaced by ``new_text`` (its quotes kept).

    Raises:
        InputError: no quoted text, an index out of range, or ``new_text`` holding a straight quote (which
            would re-pair every later span).
    """
    found = spans(prompt)
    if not found:
        raise InputError(f"Expected text in double quotes, but got no quoted text in {prompt!r}")
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(found):
        raise InputError(f"Expected a quoted span in 0..{len(found) - 1} (the prompt has {len(found)} quoted "
                         f"span(s)), but got {index!r}")
    if QUOTE in new_text:
        raise InputError(f"Expected replacement text without a double quote, but got {new_text!r}")
    span = found[index]
    return prompt[: span.start] + new_text + prompt[span.end :]


def problems(prompt: str) -> list[str]:
    """Why the quoted text of ``prompt`` is ambiguous (empty when every parser reads the same spans)."""
    out = []
    positions = _quote_positions(prompt)
    if len(positions) % 2:
        out.append(f"an unpaired double quote at character {positions[-1]}")
    others = sorted({char for char in prompt if char in OTHER_QUOTES})
    if others:
        out.append(f"quote characters other than straight double quotes ({' '.join(others)}); only \" delimits "
                   "the text to render")
    return out


def loose_regions(prompt: str) -> list[Span]:
    """Every stretch of text that *some* pairing of quote-like characters could delimit.

    The pieces between consecutive quote-like characters (straight, curly, guillemets ...) and, when their
    number is odd, the piece after the last one. A nested or crossed pairing delimits a run of consecutive
    pieces, so a check that reads each piece and the pieces joined cannot be steered by quote confusion. Empty
    for a prompt without quote-like characters; blank pieces are left out.
    """
    positions = [i for i, char in enumerate(prompt) if char in _ALL_QUOTES]
    bounds = positions + ([len(prompt)] if len(positions) % 2 else [])
    out = [Span(a + 1, b, prompt[a + 1 : b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    return [span for span in out if span.text.strip()]
