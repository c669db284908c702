"""Detector quality on word lists: precision, recall, F1 and a few examples of each mistake."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from textloc.apps.safety.detect import Detector


def detector_scores(detector: Detector, harmful: Sequence[str], clean: Sequence[str] | None = None,
                    batch: int = 256, examples: int = 15) -> dict[str, Any]:
    """Precision/recall/F1 of ``detector`` on a harmful and (optionally) a clean word list.

    Without a clean list only recall is defined (precision is ``None``). ``missed`` and ``false_positives``
    list a few examples for the report.
    """
    def flags(words: Sequence[str]) -> list[bool]:
        out: list[bool] = []
        for start in range(0, len(words), batch):
            out += [v.flagged for v in detector.score(list(words[start : start + batch]))]
        return out

    hits = flags(harmful)
    tp = sum(hits)
    fn = len(harmful) - tp
    result: dict[str, Any] = {"detector": detector.name, "n_harmful": len(harmful), "tp": tp, "fn": fn,
                              "recall": tp / len(harmful) if harmful else None,
                              "missed": [w for w, h in zip(harmful, hits, strict=True) if not h][:examples]}
    if clean:
        false = flags(clean)
        fp = sum(false)
        precision = tp / (tp + fp) if tp + fp else None
        recall = result["recall"]
        f1 = 2 * precision * recall / (precision + recall) if precision and recall else 0.0
        result.update({"n_clean": len(clean), "fp": fp, "tn": len(clean) - fp, "precision": precision, "f1": f1,
                       "false_positive_rate": fp / len(clean),
                       "false_positives": [w for w, h in zip(clean, false, strict=True) if h][:examples]})
    else:
        result.update({"precision": None, "f1": None})
    return result
