"""Detect what will be rendered, replace what is harmful, and say truthfully what was done.

The detector reads the exact character sequence that reaches the model's text encoder for rendering: for a
model whose profile knows its tokenizer (``profile.rendered_text``, e.g. the embedded model, which upper-cases
"ſhıt" to SHIT and drops zero-width characters) that sequence, and always the prompt's own text as well; the
spans come from the one quoted-text parser (``textloc.data.quotes``), never from a second parse. Checked, per
prompt, in one detector call:

* every quoted span: its prompt text, its rendered string, and each of its words;
* all quoted spans joined (letters spread over adjacent spans: ``"SH" "IT"``);
* when the quotes are ambiguous (an unpaired ``"``, curly or other quote characters), every stretch any
  pairing could delimit (``quotes.loose_regions``) -- it fails closed: such text is checked and replaced as if
  it were rendered;
* without any quote character, the unquoted text after "says"/"reads"/... (real models render it).

A flagged piece is replaced in the prompt (a word, a whole span when the letters were spread, the first span
of a spread over spans with the others emptied). The protected prompt is then checked again with the same
code; if anything is still flagged the prompt is refused (:class:`UnsafeTextError`), never passed through.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from textloc.apps.safety.detect import Detector, Verdict
from textloc.apps.safety.replace import DefaultReplacer, Replacement, Replacer, choose_replacements, safe_default
from textloc.data import quotes
from textloc.errors import InputError
from textloc.models.profiles import GENERIC, ModelProfile, RenderLimits


class UnsafeTextError(InputError):
    """The rendered text could not be made safe (the prompt is refused, nothing is generated)."""


@dataclass(frozen=True)
class Region:
    """A piece of the prompt that is (or, failing closed, may be) rendered: ``prompt[start:end] == text``.

    ``rendered`` is exactly what the model renders from it (its tokenizer's output) or ``None`` where the
    model's own parser does not render it; ``kind`` is ``quoted``, ``ambiguous`` or ``unquoted``.
    """

    start: int
    end: int
    text: str
    rendered: str | None
    kind: str

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "rendered": self.rendered, "kind": self.kind, "start": self.start, "end": self.end}


@dataclass(frozen=True)
class Finding:
    """A harmful piece of rendered text: ``prompt[start:end] == text``; ``blank`` pieces are emptied."""

    start: int
    end: int
    text: str
    region: Region
    verdict: Verdict
    why: str = "word"
    blank: bool = False

    @property
    def key(self) -> str:
        return self.text.lower()

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "start": self.start, "end": self.end, "region": self.region.text,
                "rendered": self.region.rendered, "kind": self.region.kind, "why": self.why,
                "score": self.verdict.score, "reasons": list(self.verdict.reasons), "read_as": self.verdict.match}


_VERB = re.compile(
    r"\b(?:says|say|saying|reads|read|reading|written|spelling|spells|spelled|titled|labelled|labeled|"
    r"with the (?:words?|text))\s*:?\s+",
    re.IGNORECASE,
)
_TOKEN = re.compile(r"[^\s,;()]+")
#: Words that end an unquoted span ("a sign saying hello *on* a red background").
_SPAN_STOP = frozenset(
    "on in at with against over under above below beside near next by from and onto into while as which "
    "where who written painted printed drawn engraved".split()
)
_MAX_UNQUOTED_WORDS = 6


def rendered_regions(prompt: str, profile: ModelProfile = GENERIC) -> tuple[list[Region], list[str]]:
    """The regions of ``prompt`` to check and the reasons its quotes are ambiguous (empty when they are not)."""
    spans = quotes.spans(prompt)
    exact = profile.rendered_text
    rendered = exact(prompt) if exact is not None else [s.text for s in spans]
    regions = [Region(s.start, s.end, s.text, r, "quoted") for s, r in zip(spans, rendered, strict=True)
               if s.text.strip() or r.strip()]
    problems = quotes.problems(prompt)
    if problems:
        known = {(r.start, r.end) for r in regions}
        regions += [Region(s.start, s.end, s.text, None if exact else s.text, "ambiguous")
                    for s in quotes.loose_regions(prompt) if (s.start, s.end) not in known]
    if not spans and not problems:
        regions += [Region(s, e, prompt[s:e], None if exact else prompt[s:e], "unquoted")
                    for s, e in _unquoted(prompt)]
    return regions, problems


def _unquoted(prompt: str) -> list[tuple[int, int]]:
    """Text after "says"/"saying"/"reads" ...: up to punctuation, a scene word (``_SPAN_STOP``) or six words."""
    out = []
    for verb in _VERB.finditer(prompt):
        start = end = None
        for count, token in enumerate(_TOKEN.finditer(prompt, verb.end())):
            gap = prompt[(end if end is not None else verb.end()) : token.start()]
            if count >= _MAX_UNQUOTED_WORDS or any(c in gap for c in ",;()\n"):
                break
            if token.group().lower() in _SPAN_STOP:
                break
            start = token.start() if start is None else start
            stripped = token.group().rstrip(".!?:")
            end = token.start() + len(stripped) if stripped else token.end()
            if stripped != token.group():
                break
        if start is not None and end is not None and end > start:
            out.append((start, end))
    return out


def _words(region: Region) -> list[tuple[int, int, str]]:
    return [(region.start + m.start(), region.start + m.end(), m.group()) for m in re.finditer(r"\S+", region.text)]


def find(prompt: str, detector: Detector, profile: ModelProfile = GENERIC
         ) -> tuple[list[Region], list[str], list[Finding], list[str]]:
    """Regions, quote problems, harmful findings and notes (an LLM fallback) for ``prompt``; one detector call."""
    regions, problems = rendered_regions(prompt, profile)
    exact = profile.rendered_text
    items: list[tuple[str, str, Any]] = []  # (what, text, where)
    for region in regions:
        items += [("region", t, region) for t in dict.fromkeys((region.text, region.rendered)) if t and t.strip()]
        words = _words(region)
        if len(words) > 1:
            for start, end, word in words:
                forms = (word, exact(f'"{word}"')[0]) if exact is not None else (word,)
                items += [("word", t, (start, end, word, region)) for t in dict.fromkeys(forms) if t.strip()]
    quoted = [r for r in regions if r.kind == "quoted"]
    for group in (quoted, regions):
        if len(group) > 1:
            joined = " ".join(r.rendered if r.rendered is not None else r.text for r in group)
            items.append(("spread", joined, tuple(group)))
            items.append(("spread", " ".join(r.text for r in group), tuple(group)))
    texts = list(dict.fromkeys(text for _, text, _ in items))
    verdicts = dict(zip(texts, detector.score(texts), strict=True)) if texts else {}
    notes = [detector.last_fallback] if getattr(detector, "last_fallback", None) else []
    findings: list[Finding] = []

    def covered(region: Region) -> bool:
        return any(f.region == region for f in findings)

    for what, text, where in items:
        verdict = verdicts[text]
        if not verdict.flagged:
            continue
        if what == "word":
            start, end, word, region = where
            if not any(f.start == start and f.end == end for f in findings):
                findings.append(Finding(start, end, word, region, verdict, "word"))
    for what, text, where in items:
        verdict = verdicts[text]
        if verdict.flagged and what == "region" and not covered(where):
            findings.append(Finding(where.start, where.end, where.text, where, verdict, "rendered string"))
    for what, text, where in items:
        verdict = verdicts[text]
        if verdict.flagged and what == "spread" and not any(covered(r) for r in where):
            first, *rest = where
            findings.append(Finding(first.start, first.end, first.text, first, verdict, "spread over spans"))
            findings += [Finding(r.start, r.end, r.text, r, verdict, "spread over spans", blank=True)
                         for r in rest if r.kind == "quoted" or r.rendered is not None]
    return regions, problems, _outermost(findings), notes


def _outermost(findings: list[Finding]) -> list[Finding]:
    """Findings sorted by position with nested or overlapping ones merged into the outer one (fail closed)."""
    out: list[Finding] = []
    for finding in sorted(findings, key=lambda f: (f.start, -f.end)):
        if out and finding.start < out[-1].end:
            last = out[-1]
            if finding.end > last.end:  # a partial overlap: the union, so nothing of either survives
                text = last.text + finding.text[last.end - finding.start :]
                out[-1] = Finding(last.start, finding.end, text, last.region, last.verdict, last.why)
            continue
        out.append(finding)
    return out


def _budgets(findings: Sequence[Finding], limits: RenderLimits) -> list[int | None]:
    """Characters each replacement may take so its whole region still fits the model."""
    if limits.max_chars is None:
        return [None] * len(findings)
    budgets: list[int | None] = []
    for finding in findings:
        same = [g for g in findings if g.region == finding.region and not g.blank]
        others = len(finding.region.text) - sum(g.end - g.start for g in same)
        budgets.append(max(1, (limits.max_chars - max(0, others)) // max(1, len(same))))
    return budgets


@dataclass
class SafetyReport:
    """What one prompt's check found and did; ``safe_prompt`` is what the localized layers receive."""

    prompt: str
    safe_prompt: str
    detector: str
    regions: list[Region]
    findings: list[Finding]
    replacements: list[Replacement]
    rendered: list[str]
    safe_rendered: list[str]
    ambiguous: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    verified: bool = True
    layers: list[str] = field(default_factory=list)
    fired: dict[str, list[int]] = field(default_factory=dict)
    generated: bool = False

    @property
    def flagged(self) -> bool:
        return bool(self.findings)

    @property
    def spans(self) -> list[Region]:
        return self.regions

    @property
    def protected(self) -> bool:
        """Flagged, replaced, re-checked clean, generated, and every patched layer fired."""
        return (self.flagged and self.verified and self.generated and bool(self.layers)
                and all(self.fired.get(layer) for layer in self.layers))

    @property
    def status(self) -> str:
        if not self.flagged:
            return "clean: nothing harmful in the rendered text; plain generation"
        if self.protected:
            return "protected: the localized text layers received the replacement"
        if not self.generated:
            return "flagged: not generated yet"
        return "NOT protected: the patch did not fire on every localized layer"

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt, "flagged": self.flagged, "protected": self.protected, "status": self.status,
            "rendered_text": self.rendered, "safe_prompt": self.safe_prompt, "safe_rendered_text": self.safe_rendered,
            "detector": self.detector, "ambiguous_quotes": self.ambiguous,
            "checked_text": [r.to_dict() for r in self.regions],
            "findings": [f.to_dict() for f in self.findings],
            "replacements": [r.to_dict() for r in self.replacements],
            "patched_layers": self.layers, "fired": self.fired, "notes": self.notes,
        }


def _rendered(prompt: str, profile: ModelProfile) -> list[str]:
    exact = profile.rendered_text
    return exact(prompt) if exact is not None else quotes.quoted_texts(prompt)


def apply_replacements(prompt: str, findings: Sequence[Finding], replacements: Sequence[Replacement]) -> str:
    """``prompt`` with each finding's characters replaced (right to left so offsets stay valid)."""
    out = prompt
    for finding, replacement in sorted(zip(findings, replacements, strict=True), key=lambda p: -p[0].start):
        out = out[: finding.start] + replacement.replacement + out[finding.end :]
    return out


def check_prompt(prompt: str, detector: Detector, replacers: Sequence[Replacer] = (),
                 profile: ModelProfile | None = None, *, attempts: int = 3) -> SafetyReport:
    """Detect harmful rendered text in ``prompt`` and build its protected version (no generation).

    Raises:
        UnsafeTextError: the protected prompt still reads as harmful after ``attempts`` rounds.
    """
    if not isinstance(prompt, str):
        raise InputError(f"Expected the prompt to be a string, but got {type(prompt).__name__}")
    profile = profile or GENERIC
    limits = profile.render_limits
    regions, problems, findings, notes = find(prompt, detector, profile)
    if not findings:
        rendered = _rendered(prompt, profile)
        return SafetyReport(prompt, prompt, detector.name, regions, [], [], rendered, rendered, problems, notes)
    active = [f for f in findings if not f.blank]
    budgets = _budgets(active, limits)
    chosen, more = choose_replacements(active, replacers, limits, detector, budgets)
    by_finding = dict(zip(map(id, active), chosen, strict=True))
    replacements = [by_finding.get(id(f)) or Replacement(f.text, "", "blank", note="spread over spans: emptied")
                    for f in findings]
    safe = apply_replacements(prompt, findings, replacements)
    all_findings, all_replacements = list(findings), list(replacements)
    for _ in range(attempts):
        _, _, left, _ = find(safe, detector, profile)
        if not left:
            break
        # Replacements made a new harmful reading (or a spread survived): the whole region, default word.
        redo = [Replacement(f.text, "" if f.blank else safe_default(f, budget, limits, detector, DefaultReplacer()),
                            "default", note="re-check flagged the protected text")
                for f, budget in zip(left, _budgets(left, limits), strict=True)]
        safe = apply_replacements(safe, left, redo)
        all_findings += left
        all_replacements += redo
    else:
        raise UnsafeTextError(f"Could not make the rendered text of {prompt!r} safe (still flagged after "
                              f"{attempts} rounds of replacement); the prompt is refused")
    return SafetyReport(prompt, safe, detector.name, regions, findings, replacements, _rendered(prompt, profile),
                        _rendered(safe, profile), problems, notes + more + [
                            f"re-check replaced {f.text!r} again" for f in all_findings[len(findings):]])
