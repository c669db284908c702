"""``SafeTextPipeline``: a pipeline that never renders flagged words, at the cost of one generation.

A clean prompt (batch) runs the plain pipeline -- bit-identical output. A flagged one runs **one** patched
generation: the original prompt everywhere, the protected prompt's text information in the localized text
layers (``PatchPlan(start_step=0, branches="both")``), so the scene keeps what the prompt says and only the
text changes. The report says what was rendered, what was flagged and why, and ``protected`` only when the
replacement was re-checked clean and the patch fired on every localized layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from textloc.apps.safety.check import SafetyReport, check_prompt
from textloc.apps.safety.detect import Detector, OfflineDetector
from textloc.apps.safety.llm import LLMClient, LLMConfig
from textloc.apps.safety.replace import LLMReplacer, MappingReplacer, Replacer
from textloc.errors import InputError


@dataclass
class SafeTextOutput:
    """The wrapped pipeline's images plus one ``SafetyReport`` per prompt (``report`` = the first)."""

    images: Any
    reports: list[SafetyReport]

    @property
    def report(self) -> SafetyReport:
        return self.reports[0]


def make_policy(policy: str = "default", mappings: dict[str, str] | None = None,
                llm: LLMClient | None = None) -> list[Replacer]:
    """Replacers for a ``--policy`` name: ``mapping`` (then default), ``llm`` (then default), ``default``."""
    if policy == "mapping":
        if not mappings:
            raise InputError("Expected a mapping file for --policy mapping (--mappings FILE), but got none")
        return [MappingReplacer(mappings)]
    if policy == "llm":
        return [LLMReplacer(llm or LLMClient(LLMConfig.from_env()))]
    if policy == "default":
        return []
    raise InputError(f"Expected --policy in ['default', 'llm', 'mapping'], but got {policy!r}")


class SafeTextPipeline:
    r"""Wraps ``pipe``; ``safe(prompt, **kwargs)`` takes the pipeline's arguments and returns a
    :class:`SafeTextOutput` (``.images``, ``.report``; also kept as ``last_report``/``last_reports``).

    In a batch with some flagged prompts, the clean ones are patched with themselves, which leaves them
    unchanged. A prompt whose text cannot be made safe raises ``UnsafeTextError`` before anything runs.

    Args:
        pipe: a diffusers pipeline textloc supports.
        layers: a ``--layers`` value (``"preset"``, a localization ``summary.json``, ``"all"``, names/indices);
            resolved now, so a wrong value fails before any generation.
        detector: default ``OfflineDetector()``.
        replacer: one replacer or a list tried in order; the default policy always closes the chain.
    """

    def __init__(self, pipe: Any, layers: str | Sequence[str | int] = "preset", detector: Detector | None = None,
                 replacer: Replacer | Sequence[Replacer] | None = None) -> None:
        from textloc.models.presets import choose_layers
        from textloc.models.profiles import profile_for

        self.pipe = pipe
        self.profile = profile_for(pipe)
        self.layers = choose_layers(pipe, layers, full_score=True)
        self.detector: Detector = detector or OfflineDetector()
        if replacer is None:
            self.replacers: list[Replacer] = []
        elif isinstance(replacer, Sequence):
            self.replacers = list(replacer)
        else:
            self.replacers = [replacer]
        self.last_reports: list[SafetyReport] = []

    def __getattr__(self, name: str) -> Any:
        if name == "pipe":  # not set yet (during unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.pipe, name)

    @property
    def last_report(self) -> SafetyReport | None:
        return self.last_reports[0] if self.last_reports else None

    def check(self, prompt: str | Sequence[str]) -> list[SafetyReport]:
        """Reports for ``prompt`` without generating anything (the same path generation uses)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        return [check_prompt(p, self.detector, self.replacers, self.profile) for p in prompts]

    def __call__(self, prompt: str | Sequence[str], **kwargs: Any) -> SafeTextOutput | tuple:
        from textloc.core.engine import generate
        from textloc.core.plan import PatchPlan

        return_dict = kwargs.pop("return_dict", True)
        if "prompt_embeds" in kwargs:
            raise InputError("SafeTextPipeline needs prompts, not prompt_embeds (it must read the text)")
        reports = self.check(prompt)
        self.last_reports = reports
        if not any(r.flagged for r in reports):
            images = self.pipe(prompt, **kwargs).images
        else:
            targets = [r.safe_prompt for r in reports]
            plan = PatchPlan(layers=list(self.layers), target_prompt=targets, start_step=0, branches="both")
            result = generate(self.pipe, prompt if isinstance(prompt, str) else list(prompt), plan, **kwargs)
            images = result.images
            for report in reports:
                if report.flagged:
                    report.layers = list(self.layers)
                    report.fired = result.fired
        for report in reports:
            report.generated = True
        return SafeTextOutput(images, reports) if return_dict else (images,)
