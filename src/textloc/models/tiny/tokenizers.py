"""Tiny tokenizers built locally from a hand-written vocabulary (the real ones come from the Hub).

A byte-level CLIP BPE vocabulary (every byte, with and without ``</w>``, plus merges that make a few dozen
common prompt words single tokens as in real CLIP), a T5-style Unigram vocabulary (``<pad>`` = 0, ``</s>`` =
1, ``<unk>`` = 2) and a Gemma-style byte-fallback BPE vocabulary. They are written once per process (or once
per ``tokenizer_dir``) with ``save_pretrained`` and re-loaded with ``from_pretrained``, so the usual file-based
loading path is exercised and repeated builds only cost a file read.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

# Bump when the vocabularies below change, so stale cached tokenizer files are never reused.
_TOKENIZER_VERSION = "v2"

# Words that become single tokens, as they are in the real CLIP / T5 / Gemma vocabularies. Everything else
# falls back to characters (CLIP, T5) or bytes (Gemma), so any prompt can be tokenized.
_VOCAB_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "in", "on", "at", "with", "and", "that", "says", "saying", "sign", "text",
    "reading", "reads", "written", "words", "word", "letters", "photo", "picture", "poster", "logo", "label",
    "banner", "billboard", "neon", "graffiti", "wall", "street", "shop", "store", "cafe", "coffee", "menu",
    "book", "cover", "cat", "dog", "hello", "world", "open", "closed", "stop", "exit", "sale", "love",
    "happy", "birthday", "welcome", "home", "red", "blue", "green", "black", "white", "sky", "tree", "car",
    "man", "woman", "portrait", "beautiful", "high", "quality", "detailed",
)  # fmt: skip

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
# The real CLIP context length: cheap at these widths, and it keeps padding/token positions realistic.
_CLIP_MODEL_MAX_LENGTH = 77

_lock = threading.Lock()
_default_tokenizer_dir: Path | None = None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode map (what ``pre_tokenizers.ByteLevel`` emits)."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _bpe_segment(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges by rank (lowest first, leftmost on ties), like ``tokenizers``' BPE model does."""
    symbols = list(symbols)
    while len(symbols) > 1:
        best_rank, best_i = min(
            (ranks.get(pair, len(ranks) + 1), i)
            for i, pair in enumerate(zip(symbols, symbols[1:], strict=False))
        )
        if best_rank > len(ranks):
            break
        symbols[best_i : best_i + 2] = [symbols[best_i] + symbols[best_i + 1]]
    return symbols


def _merges_for_words(words: Iterable[str], split: Callable[[str], list[str]]) -> list[tuple[str, str]]:
    """Build a merge list under which every word of ``words`` is a single BPE token.

    Each word is first segmented with the merges collected so far; the remaining pieces are then joined left
    to right by *appending* new merges. Appended merges have the highest rank, so they never change how an
    earlier word (already a single token) is segmented -- hence the list is consistent by construction.
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _bpe_segment(split(word), ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in ranks:
                ranks[pair] = len(merges)
                merges.append(pair)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    return merges


def _cased_variants(words: Iterable[str]) -> list[str]:
    """``word``, ``Word`` and ``WORD`` for each word: T5 and Gemma vocabularies are case-sensitive."""
    out: list[str] = []
    for word in words:
        for variant in (word, word.capitalize(), word.upper()):
            if variant not in out:
                out.append(variant)
    return out


def _clip_split(word: str) -> list[str]:
    return [*word[:-1], word[-1] + "</w>"]


def _make_clip_tokenizer() -> Any:
    """Byte-level CLIP BPE: 256 byte symbols, their ``</w>`` variants, word merges, then BOS and EOS last."""
    from transformers import CLIPTokenizer

    byte_chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in byte_chars:
        vocab[ch] = len(vocab)
    for ch in byte_chars:
        vocab[ch + "</w>"] = len(vocab)
    merges = _merges_for_words(_VOCAB_WORDS, _clip_split)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab[_CLIP_BOS] = len(vocab)
    vocab[_CLIP_EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_CLIP_MODEL_MAX_LENGTH)


def _make_t5_tokenizer() -> Any:
    """T5-style Unigram tokenizer: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, ``▁word`` pieces, then characters.

    Scores make whole words beat their character decomposition; unknown characters map to ``<unk>`` like the
    real sentencepiece model does for out-of-vocabulary symbols. No sentinel ``<extra_id_*>`` tokens (no
    pipeline uses them).
    """
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    seen = {p for p, _ in pieces}
    for i, variant in enumerate(_cased_variants(_VOCAB_WORDS)):
        for piece, score in ((f"▁{variant}", -2.0), (variant, -2.5)):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, score - 0.001 * i))
    for code in range(33, 127):
        for piece in (f"▁{chr(code)}", chr(code)):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -4.5 if piece.startswith("▁") else -5.0))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _make_gemma_tokenizer() -> Any:
    """Gemma-style byte-fallback BPE: <pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4, then 256 byte tokens."""
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    for tok in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"):
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for code in range(33, 127):
        vocab[chr(code)] = len(vocab)
    vocab["▁"] = len(vocab)
    words = [w for variant in _cased_variants(_VOCAB_WORDS) for w in (f"▁{variant}", variant)]
    merges = _merges_for_words(words, list)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    # Real Gemma tokenizers prepend <bos>; Sana's token selection (index 0 + the last tokens) assumes it.
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=8192, add_bos_token=True)


_TOKENIZER_FACTORIES: dict[str, Callable[[], Any]] = {
    "clip": _make_clip_tokenizer,
    "t5": _make_t5_tokenizer,
    "gemma": _make_gemma_tokenizer,
}


def _resolve_tokenizer_dir(tokenizer_dir: str | Path | None) -> Path:
    """Return the directory tokenizer files are cached in (a process-wide temp dir unless one is given)."""
    global _default_tokenizer_dir
    if tokenizer_dir is not None:
        path = Path(tokenizer_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    with _lock:
        if _default_tokenizer_dir is None:
            _default_tokenizer_dir = Path(tempfile.mkdtemp(prefix="textloc-tiny-tokenizers-"))
            atexit.register(shutil.rmtree, _default_tokenizer_dir, ignore_errors=True)
        return _default_tokenizer_dir


def _load_tokenizer(kind: str, tokenizer_dir: str | Path | None) -> Any:
    """Load (creating and caching on first use) the tiny tokenizer of ``kind`` ("clip", "t5" or "gemma").

    Files are written to a unique temp folder and then renamed into place, so concurrent test workers sharing
    a ``tokenizer_dir`` never observe a half-written tokenizer.
    """
    root = _resolve_tokenizer_dir(tokenizer_dir)
    target = root / f"{kind}-{_TOKENIZER_VERSION}"
    if not (target / "tokenizer.json").is_file():
        staging = root / f".{kind}-{uuid.uuid4().hex}"
        tokenizer = _TOKENIZER_FACTORIES[kind]()
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another worker won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    from transformers import CLIPTokenizer, GemmaTokenizer, T5Tokenizer

    classes: dict[str, Any] = {"clip": CLIPTokenizer, "t5": T5Tokenizer, "gemma": GemmaTokenizer}
    return classes[kind].from_pretrained(str(target), local_files_only=True)
