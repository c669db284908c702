"""The benchmark scripts run end to end on tiny pipelines and print every ratio (timings are not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # a browser / subprocess: `-m 'not slow'` skips it during development

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("model", "rows"), [
    ("tiny:sd3", ["empty plan / plain", "edit two-pass / one-pass", "Prompt-to-Prompt: not implemented",
                  "start-step sweep naive / prefix reuse", "sweep naive / batched"]),
    ("tiny:flux", ["edit two-pass / one-pass", "sweep naive / batched"]),
    ("tiny:sd15", ["empty plan / plain", "Prompt-to-Prompt / edit", "start-step sweep naive / prefix reuse"]),
])
def test_bench_engine_prints_every_ratio(model: str, rows: list[str]) -> None:
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_engine.py"), "--model", model,
                          "--steps", "4", "--repeats", "1", "--pairs", "1"],
                         capture_output=True, text=True, timeout=600, check=True).stdout
    for row in rows:
        assert row in out, out
    assert out.count("ratio min") >= len([r for r in rows if "not implemented" not in r])
