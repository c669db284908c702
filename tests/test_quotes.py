"""The one quoted-text parser: every caller reads the same spans (issue #13), property-tested with hypothesis."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from textloc.apps.edit.edit import quoted_spans as edit_spans
from textloc.apps.edit.edit import replace_quoted
from textloc.apps.safety.check import rendered_regions
from textloc.data import quotes
from textloc.data.pairs import text_pairs
from textloc.errors import InputError
from textloc.models.embedded.tokenizer import EmbeddedTokenizer, quoted_chars, rendered_strings
from textloc.models.profiles import profile_named

# Prompts built from the characters that matter: straight and curly quotes, letters, spaces, look-alikes and
# format characters.
PROMPTS = st.text(alphabet=st.sampled_from(list('"“”«» abcXYZ ſıé\u200b.')), max_size=40)


def _tokenizer_spans(prompt: str) -> list[str]:
    """The quoted strings as the embedded tokenizer sees them: the character tokens between its quote tokens."""
    out, current = [], None
    for token in EmbeddedTokenizer(model_max_length=10_000).tokenize(prompt):
        if token == '"':
            if current is not None:
                out.append("".join(current))
            current = None if current is not None else []
        elif current is not None:
            current.append(token)
    return out


@settings(max_examples=300, deadline=None)
@given(PROMPTS)
def test_every_caller_reads_the_same_spans(prompt: str) -> None:
    spans = quotes.spans(prompt)
    texts = [s.text for s in spans]
    assert all(prompt[s.start : s.end] == s.text and '"' not in s.text for s in spans)
    assert texts == re.findall(r'"([^"]*)"', prompt)  # the straight-quote rule, written the plain way
    assert edit_spans(prompt) == texts
    assert _tokenizer_spans(prompt) == ["".join(quoted_chars(t)) for t in texts]
    regions, problems = rendered_regions(prompt, profile_named("embedded"))
    quoted = [r for r in regions if r.kind == "quoted"]
    assert [(r.start, r.end) for r in quoted] == [(s.start, s.end) for s in spans if s.text.strip() or
                                                  "".join(quoted_chars(s.text)).strip()]
    assert bool(problems) == (prompt.count('"') % 2 == 1 or any(c in quotes.OTHER_QUOTES for c in prompt))


@settings(max_examples=200, deadline=None)
@given(PROMPTS, st.text(alphabet="ABC xyz", max_size=6))
def test_replace_span_changes_only_that_span(prompt: str, new: str) -> None:
    spans = quotes.spans(prompt)
    if not spans:
        with pytest.raises(InputError, match="no quoted text"):
            quotes.replace_span(prompt, 0, new)
        return
    for index in range(len(spans)):
        out = quotes.replace_span(prompt, index, new)
        expected = [s.text for s in spans]
        expected[index] = new
        assert quotes.quoted_texts(out) == expected
        assert replace_quoted(prompt, new, index) == out


@settings(max_examples=200, deadline=None)
@given(PROMPTS)
def test_rendered_strings_follow_the_tokenizer(prompt: str) -> None:
    rendered = rendered_strings(prompt, max_length=10_000)
    texts = quotes.quoted_texts(prompt)
    assert len(rendered) == len(texts)
    assert rendered == ["".join(quoted_chars(t)).replace("[UNK_CHAR]", "\ufffd") for t in texts]


def test_tokenizer_case_maps_per_character_and_drops_format_characters() -> None:
    assert rendered_strings('a "ſhıt" sign') == ["SHIT"]  # the case mapping that made "ſhıt" render SHIT
    assert rendered_strings('a "S\u200bH\u2060IT"') == ["SHIT"]  # zero-width characters are not drawn
    assert rendered_strings('“"”SHIT"') == ["\ufffdSHIT"]  # straight quotes pair; the curly one is a glyph
    assert rendered_strings('"ab" "" "cd') == ["AB", ""]  # an empty span is a span; an unpaired quote opens none


def test_rendered_strings_follow_truncation() -> None:
    from textloc.models.embedded.tokenizer import CHAR_END, CHAR_START

    long = 'a sign that says "' + "A" * 40 + '" and "CAT"'
    rendered = rendered_strings(long)
    ids = EmbeddedTokenizer().encode(long)  # what the text encoder receives
    assert rendered[0] == "A" * sum(CHAR_START <= i < CHAR_END for i in ids) and 20 < len(rendered[0]) < 32
    assert rendered[1] == ""  # cut off: not rendered


@pytest.mark.parametrize(
    ("prompt", "problem"),
    [('a "CAT', "unpaired"), ('a “CAT”', "other than straight"), ('a "CAT"', None), ("a cat", None)],
)
def test_problems(prompt: str, problem: str | None) -> None:
    found = quotes.problems(prompt)
    assert (problem is None and not found) or (problem is not None and problem in " ".join(found))


def test_loose_regions_cover_every_pairing() -> None:
    prompt = 'x “"”SHIT" y'
    texts = [r.text for r in quotes.loose_regions(prompt)]
    assert "SHIT" in texts and all(prompt[r.start : r.end] == r.text for r in quotes.loose_regions(prompt))
    assert [r.text for r in quotes.loose_regions('a "CAT')] == ["CAT"]  # an unpaired quote runs to the end
    assert quotes.loose_regions("a cat") == []


def test_pairs_use_the_first_non_empty_span() -> None:
    pairs = text_pairs(['a "" sign "CAT"', 'a sign "DOG"'], None, 0)
    assert {p.source_value for p in pairs} == {"CAT", "DOG"}
    assert pairs[0].target == 'a "" sign "DOG"'  # the empty span is kept, the first non-empty one swapped
