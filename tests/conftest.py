"""Test session set-up and shared fixtures."""

import os
import sys

import pytest
import torch

# One thread: tiny models are overhead-bound, more threads only contend.
torch.set_num_threads(int(os.environ.get("TEXTLOC_TEST_THREADS", "1")))


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run ``textloc ARGS`` through the real entry point; returns (exit code, stderr)."""
    from textloc.cli.app import main

    old = sys.argv
    sys.argv = ["textloc", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = old
    return exit_info.value.code, capsys.readouterr().err
