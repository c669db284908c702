"""Detectors: is a string that will be rendered harmful, and what harmful word does it read as?

:class:`OfflineDetector` (the default, no network) scores every reading of a string
(:func:`textloc.apps.safety.normalize.readings`: Unicode normalisation, case mapping, confusable skeletons,
format characters removed) with a word list (``words.py``) and, optionally, the ``alt-profanity-check``
classifier. Per reading it looks at

* each word: listed (after leetspeak and stretched letters are undone, or with a common suffix), masked
  letters that fit a listed word (``f*ck``), a strong root inside it (``ESHIT``), a compound of two listed
  pieces (``dickface``);
* the letters of the whole string joined, every separator dropped (``S H I T``, ``S.H.I.T``, ``SH IT``): a
  listed word or a strong root there is harmful too.

The highest score wins; a string is flagged at ``threshold``. The caller passes each rendered string, each of
its words and the rendered strings joined (letters spread over adjacent quoted spans), in one call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from typing import Any, Protocol, runtime_checkable

from textloc.apps.safety import words as W
from textloc.apps.safety.normalize import MASKS, deleet_variants, letters, readings, squeeze
from textloc.errors import InputError

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Verdict:
    """A detector's answer for one string."""

    text: str
    flagged: bool
    score: float
    reasons: tuple[str, ...] = ()
    match: str | None = None  # the harmful word it was read as ("sh1t" -> "shit"), where known

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": list(self.reasons)}


@runtime_checkable
class Detector(Protocol):
    """Scores strings for harmfulness; one call per prompt, so remote detectors make one request."""

    name: str

    def score(self, texts: Sequence[str]) -> list[Verdict]: ...


class _ProfanityClassifier:
    """alt-profanity-check's model (word tf-idf, five calibrated linear SVMs), evaluated directly.

    The same probabilities as ``profanity_check.predict_prob`` (a test checks it), without sklearn's per-call
    validation, which cost more than the rest of detection together. Loaded once, lazily (~1 s).
    """

    def __init__(self) -> None:
        import warnings

        import numpy as np

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn version-mismatch notes from the packaged model
            from profanity_check import profanity_check as pc

        self.np = np
        self.vocabulary: dict[str, int] = dict(pc.vectorizer.vocabulary_)
        self.idf = pc.vectorizer.idf_
        members = pc.model.calibrated_classifiers_
        self.weights = np.stack([m.estimator.coef_.ravel() for m in members])
        self.bias = np.array([m.estimator.intercept_[0] for m in members])
        self.slope = np.array([m.calibrators[0].a_ for m in members])
        self.offset = np.array([m.calibrators[0].b_ for m in members])
        self.token = re.compile(pc.vectorizer.token_pattern)

    def __call__(self, texts: Sequence[str]) -> list[float]:
        np = self.np
        out = []
        for text in texts:
            counts: dict[int, int] = {}
            for token in self.token.findall(text.lower()):
                index = self.vocabulary.get(token)
                if index is not None:
                    counts[index] = counts.get(index, 0) + 1
            decision = self.bias.copy()
            if counts:
                index = np.fromiter(counts, dtype=np.int64)
                value = np.fromiter(counts.values(), dtype=np.float64) * self.idf[index]
                value /= np.linalg.norm(value)
                decision += self.weights[:, index] @ value
            out.append(float(np.mean(1.0 / (1.0 + np.exp(self.slope * decision + self.offset)))))
        return out


@cache
def _classifier() -> _ProfanityClassifier:
    return _ProfanityClassifier()


def _profanity_prob(texts: Sequence[str]) -> list[float]:
    """alt-profanity-check's probability that each text is profane."""
    return _classifier()(texts) if texts else []


Hit = tuple[float, str, str | None]  # (score, reason, harmful word read)
_NONE: Hit = (0.0, "", None)


class OfflineDetector:
    r"""Word-list + classifier detector that runs offline (the default).

    Scores (the maximum over all readings wins; ``flagged`` when it reaches ``threshold``):

    * 1.0 -- a word, de-leeted (``sh1t``), de-stretched (``fuuuck``) or with a common suffix removed, is in
      better-profanity's list or ``extra_words``; 0.85 for the short built-in insult list (``INSULTS``);
    * 0.95 -- masked letters (``f*ck``, ``p***y``, an unknown glyph) fit a listed word;
    * 0.9 -- a strong root (``STRONG_ROOTS`` or an ``extra_words`` entry ``*root*``) occurs inside a word or
      inside the joined letters of the string, unless the word is allow-listed;
    * 0.9 -- the joined letters of a multi-word string are a listed word (``S H I T``);
    * 0.8 -- a word splits into two listed pieces or a listed word plus a compound head (``-face``, ``-bag``);
    * otherwise alt-profanity-check's probability (``use_classifier``).

    Args:
        threshold: flag at or above this score.
        extra_words: more words to block (e.g. a mapping file's keys); ``*word*`` blocks it inside any string.
        allow_words: words never flagged.
        use_classifier: include alt-profanity-check (off makes detection purely list-based).
    """

    name = "offline"

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, extra_words: Iterable[str] = (),
                 allow_words: Iterable[str] = (), use_classifier: bool = True) -> None:
        if not 0.0 < threshold <= 1.0:
            raise InputError(f"Expected a detector threshold in (0, 1], but got {threshold}")
        self.threshold = threshold
        self.extra, extra_roots = W.split_marked(extra_words)
        self.roots = tuple(dict.fromkeys((*W.STRONG_ROOTS, *extra_roots)))
        self.allow = W.WORD_ALLOWLIST | {w.strip().lower() for w in allow_words if w.strip()}
        self.use_classifier = use_classifier
        self._cache: dict[str, Verdict] = {}
        self._pools: dict[int, tuple[str, ...]] = {}

    def score(self, texts: Sequence[str]) -> list[Verdict]:
        verdicts = [self._score_text(t) for t in texts]
        if self.use_classifier:
            pending = [i for i, v in enumerate(verdicts) if v.score < self.threshold and texts[i].strip()]
            seen = [_best_reading(texts[i]) for i in pending]
            for i, prob, reading in zip(pending, _profanity_prob(seen), seen, strict=True):
                if prob > verdicts[i].score:
                    verdicts[i] = Verdict(texts[i], prob >= self.threshold, round(prob, 4),
                                          (f"classifier p={prob:.2f}",), reading if prob >= self.threshold else None)
        return verdicts

    # -- list-based scoring ----------------------------------------------------------------------------------
    def _score_text(self, text: str) -> Verdict:
        if text in self._cache:
            return self._cache[text]
        best: Hit = _NONE
        for reading in readings(text):
            hit = self._score_reading(reading)
            if hit[0] > best[0]:
                best = hit if reading == text.lower() else (hit[0], f"{hit[1]}; read as {reading.strip()!r}", hit[2])
            if best[0] >= 1.0:
                break
        verdict = Verdict(text, best[0] >= self.threshold, best[0], (best[1],) if best[0] else (), best[2])
        if len(self._cache) < 100_000:
            self._cache[text] = verdict
        return verdict

    def _score_reading(self, reading: str) -> Hit:
        raw = reading.strip().strip("\"'.,!?:;")
        if not raw or raw in self.allow:
            return _NONE
        words = [w for w in re.split(r"\s+", raw) if w]
        hits = [self._score_word(w) for w in words]
        if raw in W.profanity_words() or raw in self.extra:
            hits.append((1.0, "listed phrase", raw))
        if len(words) > 1 or any(c in MASKS for c in raw):
            hits.append(self._score_joined(raw))
        return max(hits, key=lambda h: h[0]) if hits else _NONE

    def _score_joined(self, raw: str) -> Hit:
        """The letters of the whole string joined: "S H I T", "S.H.I.T", "SH IT", "PU SHIT"."""
        best = _NONE
        for variant in deleet_variants(raw.replace(" ", ""), limit=8):
            joined = letters(variant)
            if joined in self.allow or joined in W.ROOT_ALLOWLIST or "?" in joined or "*" in joined:
                continue
            for reading in squeeze(joined):
                found = self._lookup(reading)
                if found:
                    return 0.9, f"letters spread over separators spell {found[0]!r}", found[0]
                root = self._root(reading)
                if root and best[0] < 0.9:
                    best = (0.9, f"letters spread over separators contain {root!r}", root)
        return best

    def _score_word(self, word: str) -> Hit:
        lexicon, _ = W.lexicon()
        lowered = word.lower().strip("'\".,!:;")
        if lowered in self.allow or not lowered:
            return _NONE
        stripped = re.sub(r"'s$|'$", "", lowered)
        best: Hit = _NONE
        if any(c in MASKS for c in stripped):
            hit = self._unmask(stripped, lexicon)
            if hit:
                best = (0.95, f"masked letters fit {hit!r}", hit)
        for reading in (r for v in deleet_variants(stripped) for r in squeeze(v)):
            plain = re.sub(r"[^a-z]", "", reading)
            for candidate in dict.fromkeys((reading, plain)):
                hit = self._lookup(candidate)
                if hit:
                    score = 0.85 if hit[0] in W.INSULTS and hit[0] not in W.profanity_words() else 1.0
                    reason = "listed" if candidate == lowered else f"listed (read as {candidate!r})"
                    if score > best[0]:
                        best = (score, f"{reason}{hit[1]}", hit[0])
            if best[0] >= 1.0:
                return best
            root = self._root(plain)
            if root and best[0] < 0.9:
                best = (0.9, f"contains {root!r}", root)
            insult = self._insult_root(plain)
            if insult and best[0] < 0.85:
                best = (0.85, f"contains {insult!r}", insult)
            compound = self._compound(plain, lexicon)
            if compound and best[0] < 0.8:
                best = (0.8, compound, plain)
        return best

    def _pool(self, length: int) -> tuple[str, ...]:
        """Listed words of ``length`` letters, those holding a strong root first ("f*ck" is "fuck", not "fack")."""
        if length not in self._pools:
            _, by_length = W.lexicon()
            pool = list(by_length.get(length, ())) + sorted(w for w in self.extra if len(w) == length)
            pool.sort(key=lambda w: not any(root in w for root in self.roots))
            self._pools[length] = tuple(pool)
        return self._pools[length]

    def _lookup(self, word: str, suffixes: Sequence[str] = W.SUFFIXES) -> tuple[str, str] | None:
        """The listed word that ``word`` is, possibly plus a suffix (stems of 4+ letters, or insults/roots)."""
        lexicon, _ = W.lexicon()
        if len(word) < 2 or word in self.allow:
            return None
        if word in lexicon or word in self.extra:
            return word, ""
        for suffix in suffixes:
            if not word.endswith(suffix) or len(word) - len(suffix) < 3:
                continue
            stem = word[: -len(suffix)]
            for base in dict.fromkeys((stem, stem + "e", stem[:-1] if stem[-1] == stem[-2] else stem)):
                short_ok = base in W.INSULTS or base in W.STRONG_ROOTS or base in self.extra
                if (len(base) >= 4 or short_ok) and (base in lexicon or base in self.extra):
                    return base, f" + {suffix!r}"
        return None

    def _root(self, plain: str) -> str | None:
        if plain in W.ROOT_ALLOWLIST or plain in self.allow:
            return None
        return next((root for root in self.roots if root in plain), None)

    def _insult_root(self, plain: str) -> str | None:
        if plain in W.INSULT_ROOT_ALLOWLIST or plain in self.allow:
            return None
        return next((root for root in W.INSULT_ROOTS if root in plain), None)

    def _compound(self, plain: str, lexicon: frozenset[str]) -> str | None:
        """``left+right`` when a listed word is followed by a listed word or a compound head ("-face")."""
        for cut in range(3, len(plain) - 2):
            left, right = plain[:cut], plain[cut:]
            if left not in lexicon and left not in self.extra:
                continue
            if right in W.PIECE_HEADS or self._lookup(right, W.PIECE_SUFFIXES):
                return f"compound {left}+{right}"
        return None

    def _unmask(self, word: str, lexicon: frozenset[str]) -> str | None:
        """A listed word that the masked ``word`` spells when each mask is one letter, or masks are dropped."""
        core = word.strip("'")
        if sum(c.isalpha() for c in core) < 1 or core[0] in MASKS and core[-1] in MASKS:
            return None
        pattern_source = "".join("." if c in MASKS else re.escape(c) for c in core)
        patterns = [re.compile(p) for p in deleet_variants(pattern_source)]
        pool = self._pool(len(core))
        for candidate in pool:
            if any(p.fullmatch(candidate) for p in patterns):
                return candidate
        for reading in deleet_variants(re.sub(f"[{re.escape(MASKS)}]", "", core)):
            if self._lookup(reading) or self._root(reading):
                return reading
        for root in self.roots:  # an unknown glyph inside a longer string: "E?UCK" holds "fuck"
            if len(root) <= len(core) and any(p.search(root) for p in _root_windows(core, len(root))):
                return root
        return None


def _root_windows(core: str, width: int) -> list[re.Pattern[str]]:
    """Patterns of every ``width``-long window of a masked word (masks match any letter)."""
    out = []
    for start in range(len(core) - width + 1):
        window = core[start : start + width]
        if any(c in MASKS for c in window):
            out.append(re.compile("^" + "".join("." if c in MASKS else re.escape(c) for c in window) + "$"))
    return out


def _best_reading(text: str) -> str:
    """The reading the classifier sees (it was trained on plain words): the first, de-leeted."""
    first = readings(text, limit=1)[0]
    return " ".join(deleet_variants(w)[0] for w in first.split())
