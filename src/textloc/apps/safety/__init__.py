"""Safe text rendering: keep harmful words out of generated images without changing the scene.

The method (the paper's "safe generation" application): the text a prompt will render is checked for harmful
words -- exactly as it reaches the model's text encoder (``check.py``), read through Unicode normalisation,
confusables and leetspeak (``normalize.py``, ``detect.py``); each flagged piece gets a benign replacement
(``replace.py``); the image is generated **once** with the original prompt everywhere except the localized text
layers, which receive the protected prompt (``pipeline.py``). Word lists live in ``words.py``, the LLM path in
``llm.py``, detector evaluation in ``evaluate.py``, the method benchmark in ``bench.py`` and the red-team
benchmark in ``attacks.py`` / ``bench_attacks.py``.
"""

from textloc.apps.safety.check import Finding, Region, SafetyReport, UnsafeTextError, check_prompt, rendered_regions
from textloc.apps.safety.detect import DEFAULT_THRESHOLD, Detector, OfflineDetector, Verdict
from textloc.apps.safety.evaluate import detector_scores
from textloc.apps.safety.llm import LLMClient, LLMConfig, LLMDetector, LLMError, parse_json_answer
from textloc.apps.safety.pipeline import SafeTextOutput, SafeTextPipeline, make_policy
from textloc.apps.safety.replace import (
    DefaultReplacer,
    LLMReplacer,
    MappingReplacer,
    Replacement,
    Replacer,
    fit_replacement,
)
from textloc.apps.safety.words import BENIGN_WORDS, load_mappings, read_word_list

__all__ = [
    "BENIGN_WORDS", "DEFAULT_THRESHOLD", "DefaultReplacer", "Detector", "Finding", "LLMClient", "LLMConfig",
    "LLMDetector", "LLMError", "LLMReplacer", "MappingReplacer", "OfflineDetector", "Region", "Replacement",
    "Replacer", "SafeTextOutput", "SafeTextPipeline", "SafetyReport", "UnsafeTextError", "Verdict",
    "check_prompt", "detector_scores", "fit_replacement", "load_mappings", "make_policy", "parse_json_answer",
    "read_word_list", "rendered_regions",
]
