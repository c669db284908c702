"""`textloc safe` checks its own result: the OCR reading of the image, judged by the same detector (issue #18)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from textloc.cli.app import main
from textloc.models.profiles import ModelProfile


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text

    def read(self, images):
        return [self.text for _ in images]


def _safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, reading: str, *extra: str) -> tuple[int, str]:
    monkeypatch.setattr(ModelProfile, "reader", lambda self, ocr="rapidocr": _Reader(reading))
    monkeypatch.setattr(sys, "argv", ["textloc", "safe", "-p", 'a red sign that says "DUCK"', "--steps", "2",
                                      "--out", str(tmp_path / "out"), *extra])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().out


def test_clean_reading_is_ok(tmp_path, monkeypatch, capsys) -> None:
    code, out = _safe(tmp_path, monkeypatch, capsys, "DUCK")
    assert code == 0 and 'verdict: ok: the image reads "DUCK"' in out


def test_flagged_reading_is_a_leak_with_exit_3(tmp_path, monkeypatch, capsys) -> None:
    code, out = _safe(tmp_path, monkeypatch, capsys, "SHIT")
    assert code == 3 and "verdict: LEAK" in out and (tmp_path / "out" / "report.json").is_file()
    code, out = _safe(tmp_path, monkeypatch, capsys, "SHIT", "--allow-miss")
    assert code == 0 and "verdict: LEAK" in out
