"""Replacers: a benign word for each harmful one, fitted to what the model can draw and re-checked.

Policies are tried in order (a user's mapping, an LLM), and :class:`DefaultReplacer` (the benign word closest
in spelling) always closes the chain. Every suggestion is fitted to the model's :class:`RenderLimits` (its
profile's) and re-checked by the detector; anything unusable falls back to the default, so a flagged word is
never passed through and a replacement never reads as a harmful word itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from textloc.apps.safety.detect import Detector
from textloc.apps.safety.llm import REPLACE_SYSTEM, LLMClient, LLMError, entries
from textloc.apps.safety.words import BENIGN_WORDS
from textloc.models.profiles import RenderLimits

if TYPE_CHECKING:
    from textloc.apps.safety.check import Finding


@dataclass(frozen=True)
class Replacement:
    """One replaced piece and where its replacement came from (``mapping`` / ``llm`` / ``default``)."""

    original: str
    replacement: str
    source: str
    suggested: str | None = None  # what the policy proposed, before fitting it to the model
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@runtime_checkable
class Replacer(Protocol):
    """Suggests a benign replacement per finding (``None``: no idea -- the next policy is asked)."""

    name: str

    def suggest(self, findings: Sequence[Finding], max_chars: Sequence[int | None]) -> list[str | None]: ...


class DefaultReplacer:
    """The safe default: the benign word closest in spelling to the harmful one, of the length the model can
    render (so the image keeps a similar text shape, as in ToxicBench's mappings: "fuck" -> "duck")."""

    name = "default"

    def __init__(self, words: Sequence[str] = BENIGN_WORDS) -> None:
        self.words = [w for w in words if w.isalpha()]

    def suggest(self, findings: Sequence[Finding], max_chars: Sequence[int | None]) -> list[str | None]:
        return [self.closest(f.verdict.match or f.text, limit) for f, limit in zip(findings, max_chars, strict=True)]

    def ranked(self, word: str, max_chars: int | None = None) -> list[str]:
        """Benign words by closeness to ``word``: spelling distance plus length gap, then length gap."""
        from rapidfuzz.distance import Levenshtein

        target = re.sub(r"[^a-z]", "", word.lower()) or word.lower()
        length = min(len(target), max_chars) if max_chars else len(target)
        pool = [w for w in self.words if max_chars is None or len(w) <= max_chars] or ["ok"]
        return sorted(pool, key=lambda w: (Levenshtein.distance(w, target) + abs(len(w) - length),
                                           abs(len(w) - length), w))

    def closest(self, word: str, max_chars: int | None = None) -> str:
        return self.ranked(word, max_chars)[0]


class MappingReplacer:
    """Replacements from a user's mapping (keys matched case-insensitively; also by the de-leeted reading)."""

    name = "mapping"

    def __init__(self, mapping: dict[str, str], source: str = "") -> None:
        self.mapping = {k.lower(): v for k, v in mapping.items()}
        self.source = source

    def suggest(self, findings: Sequence[Finding], max_chars: Sequence[int | None]) -> list[str | None]:
        out = []
        for finding in findings:
            keys = [finding.key, finding.key.strip("'\".,!?"), finding.verdict.match or ""]
            out.append(next((self.mapping[k] for k in keys if k and k in self.mapping), None))
        return out


class LLMReplacer:
    """Asks the LLM for look-alike benign words; on failure it suggests nothing (the default policy answers)
    and ``last_fallback`` says why."""

    name = "llm"

    def __init__(self, client: LLMClient) -> None:
        self.client = client
        self.last_fallback: str | None = None

    def suggest(self, findings: Sequence[Finding], max_chars: Sequence[int | None]) -> list[str | None]:
        self.last_fallback = None
        if not findings:
            return []
        words = [f.text for f in findings]
        limits = [m for m in max_chars if m]
        note = f" Each replacement must be at most {min(limits)} characters." if limits else ""
        try:
            answer = self.client.ask_json(REPLACE_SYSTEM + note, json.dumps(words, ensure_ascii=False))
            out: list[str | None] = []
            for entry, word in zip(entries(answer, "replacements", len(words), words), words, strict=True):
                value = entry.get("replacement")
                if not isinstance(value, str) or not value.strip():
                    raise LLMError(f"Expected a non-empty 'replacement' string for {word!r}, but got {value!r}")
                out.append(value.strip())
            return out
        except LLMError as err:
            self.last_fallback = f"{err} -- used the default replacement instead"
            return [None] * len(findings)


def fit_replacement(text: str, budget: int | None, limits: RenderLimits, like: str = "",
                    shorten: Callable[[str, int], str] | None = None) -> str | None:
    """``text`` made renderable in ``budget`` characters, or ``None`` if nothing sensible is left.

    Rules (``docs/safety.md``): the model's case mapping is applied; ``-``, ``_`` and ``/`` become spaces and
    characters outside the model's charset are dropped (``pool's`` -> ``POOLS``); if still too long, the
    longest word that fits is kept (``oh shoot`` -> ``SHOOT``), else ``shorten(text, budget)`` picks a shorter
    word, else the text is cut to the budget. A model without a case mapping gets the case pattern of ``like``
    (the word replaced). Quotes are always dropped: a replacement must not re-pair the prompt's quotes.
    """
    out = limits.apply_case(text.strip()).replace('"', "")
    if limits.charset is not None:
        out = re.sub(r"[-_/]", " ", out)
        out = "".join(c for c in out if c in limits.charset)
    out = " ".join(out.split())
    if budget is not None and len(out) > budget:
        fitting = [w for w in out.split() if len(w) <= budget]
        if fitting:
            out = max(fitting, key=len)
        elif shorten is not None:
            out = fit_replacement(shorten(out, budget), budget, limits) or ""
        else:
            out = out[:budget].rstrip()
    if limits.case is None and like:
        if like.isupper() and len(like) > 1:
            out = out.upper()
        elif like[:1].isupper() and like[1:].islower():
            out = out[:1].upper() + out[1:]
        elif like.islower():
            out = out.lower()
    return out or None


def choose_replacements(findings: Sequence[Finding], replacers: Sequence[Replacer], limits: RenderLimits,
                        detector: Detector, budgets: Sequence[int | None]) -> tuple[list[Replacement], list[str]]:
    """A safe, renderable replacement per finding: policies in order, then the default; each re-checked.

    Returns the replacements and notes about policies that failed as a whole (an LLM that did not answer).
    """
    default = DefaultReplacer()
    chosen: list[tuple[str | None, str, str | None, str | None]] = [(None, "default", None, None)] * len(findings)
    notes: list[str] = []
    for replacer in replacers:
        missing = [i for i, c in enumerate(chosen) if c[0] is None]
        if not missing:
            break
        suggestions = replacer.suggest([findings[i] for i in missing], [budgets[i] for i in missing])
        if getattr(replacer, "last_fallback", None):
            notes.append(replacer.last_fallback)  # type: ignore[arg-type]
        for i, suggestion in zip(missing, suggestions, strict=True):
            if suggestion is not None:
                chosen[i] = _fit_suggestion(suggestion, replacer.name, budgets[i], limits, findings[i], default)
    # Re-check every suggestion with the detector: a mapping may hold a bad word, shortening may make one.
    proposals = [c[0] for c in chosen if c[0] is not None]
    unsafe = {v.text for v in detector.score(proposals) if v.flagged} if proposals else set()
    replacements = []
    for finding, budget, (value, source, suggested, note) in zip(findings, budgets, chosen, strict=True):
        if value is None or value in unsafe or value.lower() == finding.text.lower():
            if value is not None:
                note = f"suggestion {value!r} was itself flagged or unchanged; used the default"
            value, source = safe_default(finding, budget, limits, detector, default), "default"
        replacements.append(Replacement(finding.text, value, source, suggested, note))
    return replacements, notes


def safe_default(finding: Finding, budget: int | None, limits: RenderLimits, detector: Detector,
                 default: DefaultReplacer | None = None) -> str:
    """The closest benign word that fits and that the detector passes (a user's list may block benign words)."""
    default = default or DefaultReplacer()
    ranked = [fit_replacement(w, budget, limits, like=finding.text) for w in
              default.ranked(finding.verdict.match or finding.text, budget)[:12]]
    ranked = [w for w in dict.fromkeys(ranked) if w]
    verdicts = detector.score(ranked) if ranked else []
    return next((w for w, v in zip(ranked, verdicts, strict=True) if not v.flagged), limits.apply_case("ok"))


def _fit_suggestion(suggestion: str, source: str, budget: int | None, limits: RenderLimits, finding: Finding,
                    default: DefaultReplacer) -> tuple[str | None, str, str | None, str | None]:
    """A policy's suggestion fitted to the model; one that needs another word is credited to the default."""
    fitted = fit_replacement(suggestion, budget, limits, like=finding.text, shorten=default.closest)
    if fitted is None:
        return None, "default", suggestion, f"{source} suggestion {suggestion!r} cannot be rendered; used the default"
    plain = fit_replacement(suggestion, None, limits)
    if budget and plain and len(plain) > budget and not any(len(w) <= budget for w in plain.split()):
        return fitted, "default", suggestion, (f"{source} suggestion {suggestion!r} does not fit {budget} characters; "
                                               f"used the closest benign word")
    return fitted, source, suggestion, None
