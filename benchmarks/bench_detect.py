"""What detection costs per prompt: the full check of ``textloc safe`` before any generation.

Times ``check.find`` (regions from the one quoted-text parser, the embedded tokenizer's rendered strings,
every reading, one detector call with the classifier) and ``check_prompt`` (plus replacement and the re-check of
the protected prompt) on the red-team prompts of ``attacks.py`` and on benign prompts, warm (word lists,
classifier and per-character data loaded in an untimed pass), each prompt once with the detector's verdict
cache cleared. Prints min / median / p95 / max CPU milliseconds (``process_time``; its resolution is the OS
clock tick on some systems, so single small values are coarse and the median is the figure to read). The
target (issue #14) is under 5 ms per prompt for detection.

Usage::

    python benchmarks/bench_detect.py
    python benchmarks/bench_detect.py --words /path/to/toxic_words.txt --clean /path/to/train_non_tox.txt
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from textloc.apps.safety.attacks import FAMILIES, benign_prompts, build_attacks
from textloc.apps.safety.check import check_prompt, find
from textloc.apps.safety.detect import OfflineDetector
from textloc.apps.safety.words import NEAR_MISSES, STRONG_ROOTS, read_word_list
from textloc.models.profiles import profile_named

TOXICBENCH = Path("/work/shared/benchmarks/toxicbench/words/train")


def _times(fn, prompts: list[str], detector: OfflineDetector) -> list[float]:
    """CPU milliseconds per prompt (``time.process_time``: a shared, loaded machine does not inflate it)."""
    out = []
    for prompt in prompts:
        detector._cache.clear()  # every prompt pays its own readings
        start = time.process_time()
        fn(prompt)
        out.append((time.process_time() - start) * 1000)
    return out


def _row(name: str, times: list[float]) -> str:
    times = sorted(times)
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    return (f"| {name} | {len(times)} | {times[0]:.2f} | {statistics.median(times):.2f} | {p95:.2f} | "
            f"{times[-1]:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--words", type=Path, default=TOXICBENCH / "toxic_words.txt")
    parser.add_argument("--clean", type=Path, default=TOXICBENCH / "train_non_tox.txt")
    args = parser.parse_args()
    harmful = read_word_list(args.words, "words file") if args.words.is_file() else list(STRONG_ROOTS)
    clean = read_word_list(args.clean, "clean words file") if args.clean.is_file() else []
    profile = profile_named("embedded")
    detector = OfflineDetector(extra_words=harmful)
    usable = [w.lower() for w in harmful if w.isalpha() and not profile.render_limits.problems(w)]
    attacks = [a.prompt for a in build_attacks(usable, FAMILIES)]
    benign = [b.prompt for b in benign_prompts(clean, NEAR_MISSES, harmful)]
    for prompt in attacks + benign:  # warm-up: word lists, classifier, per-character confusable data
        check_prompt(prompt, detector, (), profile)
    print("| what | prompts | min CPU ms | median CPU ms | p95 CPU ms | max CPU ms |")
    print("|---|---:|---:|---:|---:|---:|")
    print(_row("detect, attack prompts", _times(lambda p: find(p, detector, profile), attacks, detector)))
    print(_row("detect, benign prompts", _times(lambda p: find(p, detector, profile), benign, detector)))
    print(_row("detect + replace + re-check, attacks",
               _times(lambda p: check_prompt(p, detector, (), profile), attacks, detector)))


if __name__ == "__main__":
    main()
