"""Prompt grammar and tokenizer of the embedded model.

The tokenizer splits *quoted* text into characters (one token per letter, so the model can spell strings it
never saw) and keeps every other word whole. Words outside the small vocabulary become ``[UNK]``, so any
English prompt tokenizes; the model simply has no use for those words.
"""

from __future__ import annotations

import json
import random
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import torch

from textloc.data.quotes import quoted_texts, spans
from textloc.models.embedded.renderer import ALPHABET, COLOURS, FONTS, SignSpec

SPECIAL_TOKENS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]", '"']
CHAR_TOKENS = list(ALPHABET) + [" ", "[UNK_CHAR]"]
WORDS = sorted(
    {
        "a", "an", "the", "sign", "board", "label", "poster", "banner", "with", "letters", "text", "font",
        "written", "that", "says", "reads", "saying", "reading", "on", "in", "of", "and", "background",
        "is", "there", "it",
    }
    | set(COLOURS)
    | set(FONTS)
)
VOCAB: list[str] = SPECIAL_TOKENS + CHAR_TOKENS + WORDS
PAD_ID, BOS_ID, EOS_ID, UNK_ID, QUOTE_ID = range(5)
CHAR_START = len(SPECIAL_TOKENS)
CHAR_END = CHAR_START + len(CHAR_TOKENS)
MAX_LENGTH = 32
_CHAR_SET = frozenset(ALPHABET) | {" "}

_WORD = re.compile(r"[A-Za-z]+")


def quoted_spans(prompt: str) -> list[str]:
    """The quoted strings of a prompt, in order (``textloc.data.quotes``, the one quoted-text parser)."""
    return quoted_texts(prompt)


def quoted_chars(text: str) -> list[str]:
    """The character tokens of one quoted text: each character upper-cased on its own (``"ſ"`` -> ``S``,
    ``"ß"`` -> ``S S``), invisible format characters (zero-width, bidi controls, soft hyphen: Unicode
    category Cf) dropped, anything without a token ``[UNK_CHAR]``."""
    out: list[str] = []
    for char in text:
        if unicodedata.category(char) == "Cf":
            continue
        out += [c if c in _CHAR_SET else "[UNK_CHAR]" for c in char.upper()]
    return out


def rendered_strings(prompt: str, max_length: int = MAX_LENGTH) -> list[str]:
    """The strings the model renders for ``prompt``, one per quoted span (``textloc.data.quotes.spans``).

    Exactly what reaches the text encoder as character tokens: :func:`quoted_chars` of each span, cut where
    ``encode`` truncates the prompt (a span cut open still renders its first characters; a span past the cut
    renders nothing, ``""``). A character without a token is ``\ufffd`` (the model draws *some* glyph for it).
    """
    tokens = EmbeddedTokenizer(model_max_length=max_length).tokenize(prompt)[: max(0, max_length - 2)]
    out: list[str] = []
    current: list[str] | None = None
    for tok in tokens:
        if tok == '"':
            if current is not None:
                out.append("".join(current))
            current = None if current is not None else []
        elif current is not None:
            current.append("\ufffd" if tok == "[UNK_CHAR]" else tok)
    if current is not None:
        out.append("".join(current))
    return out + [""] * (len(quoted_texts(prompt)) - len(out))


class EmbeddedTokenizer:
    """Word-level tokenizer with character-level quoted text; a transformers-like ``__call__``."""

    def __init__(self, vocab: Sequence[str] = VOCAB, model_max_length: int = MAX_LENGTH) -> None:
        self.vocab = list(vocab)
        self.ids = {tok: i for i, tok in enumerate(self.vocab)}
        self.model_max_length = model_max_length
        self.pad_token_id = PAD_ID

    # -- encoding ---------------------------------------------------------------------------------------
    def tokenize(self, prompt: str) -> list[str]:
        """Word tokens outside quotes, character tokens (:func:`quoted_chars`) inside each quoted span."""
        tokens: list[str] = []
        pos = 0
        for span in spans(prompt):
            tokens += self._words(prompt[pos : span.start - 1])
            tokens += ['"', *quoted_chars(span.text), '"']
            pos = span.end + 1
        tokens += self._words(prompt[pos:])
        return tokens

    def _words(self, chunk: str) -> list[str]:
        return [w if w in self.ids else "[UNK]" for w in (m.lower() for m in _WORD.findall(chunk))]

    def encode(self, prompt: str) -> list[int]:
        ids = [BOS_ID] + [self.ids[t] for t in self.tokenize(prompt)]
        return ids[: self.model_max_length - 1] + [EOS_ID]

    def __call__(
        self,
        prompts: str | Sequence[str],
        padding: str | bool = "max_length",
        max_length: int | None = None,
        truncation: bool = True,
        return_tensors: str | None = "pt",
    ) -> dict[str, torch.Tensor]:
        if isinstance(prompts, str):
            prompts = [prompts]
        length = max_length or self.model_max_length
        rows = [self.encode(p)[:length] for p in prompts]
        ids = torch.full((len(rows), length), PAD_ID, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.vocab[i] for i in ids if i not in (PAD_ID,))

    # -- persistence -------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        payload = {"vocab": self.vocab, "model_max_length": self.model_max_length}
        (directory / "tokenizer.json").write_text(json.dumps(payload, indent=1))

    @classmethod
    def from_pretrained(cls, directory: str | Path, subfolder: str | None = None, **_: object) -> EmbeddedTokenizer:
        directory = Path(directory) / (subfolder or "")
        payload = json.loads((directory / "tokenizer.json").read_text())
        return cls(payload["vocab"], payload["model_max_length"])


# ------------------------------------------------------------------------------------------------------------
# Prompt grammar


def make_prompt(spec: SignSpec, rng: random.Random, p_attribute: float = 0.7) -> str:
    """A prompt describing ``spec``; each attribute is mentioned with probability ``p_attribute``.

    Left-out attributes were drawn at random by the renderer, so the model learns that a prompt without a
    colour means "any colour".
    """
    bg = f"{spec.background} " if rng.random() < p_attribute else ""
    fg = f"{spec.text_colour} " if rng.random() < p_attribute else ""
    font = f"{spec.font} " if rng.random() < p_attribute else ""
    noun = rng.choice(["sign", "sign", "board", "label", "poster", "banner"])
    verb = rng.choice(["that says", "that says", "that reads", "saying"])
    letters = f" with {fg}{font}letters" if (fg or font) else ""
    article = "an" if (bg or noun)[0] in "aeiou" else "a"
    return f'{article} {bg}{noun}{letters} {verb} "{spec.text}"'


def describe(spec: SignSpec) -> str:
    """The fully specified canonical prompt for ``spec`` (evaluation uses it)."""
    article = "an" if spec.background[0] in "aeiou" else "a"
    return (
        f'{article} {spec.background} sign with {spec.text_colour} {spec.font} letters that says "{spec.text}"'
    )
