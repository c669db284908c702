"""Hostile inputs over every command (issue #13): each ends in one line (or click's usage message), exit 2, and
leaves nothing behind.

A case is ``(command line, expected exit code, kind)``: ``usage`` means click's short usage message with exactly
one ``Error:`` line; ``line`` means exactly one ``error: …`` line on stderr. Placeholders: ``{in}`` is a folder of
prepared inputs (binary, corrupt, empty files …), ``{out}`` an output location that does not exist yet. Every
case runs in-process through ``textloc.cli.app.main`` in an empty working folder, and afterwards no file or folder
may have appeared there (the check that "nothing is written before validation"). Models load only where the
check needs one (``tiny:sd15``, or the embedded model for its own limits), once per session.
"""

from __future__ import annotations

import errno
import os
import pathlib
import sys
from pathlib import Path
from typing import Any

import pytest

from textloc.cli.app import main

PROMPT = 'a sign that says "CAT"'
G = ["generate", "-p", PROMPT, "-o", "{out}.png"]
L = ["localize", "-o", "{out}"]
E = ["edit", "-p", PROMPT, "--to", "DOG", "-o", "{out}"]
ET = ["edit-tune", "-o", "{out}"]
S = ["safe", "-p", PROMPT, "-o", "{out}"]
BE = ["bench", "edit", "-o", "{out}"]
BS = ["bench", "safety", "--words", "{in}/words.txt", "--mappings", "{in}/mappings.txt", "-o", "{out}"]
BF = ["bench", "finetune", "-o", "{out}"]
F = ["finetune", "-o", "{out}"]
T = ["train-embedded", "--out", "{out}"]
EV = ["eval-embedded", "--out", "{out}"]
TINY = ["--model", "tiny:sd15", "--layers", "all"]  # tiny models have no published preset
TINY_MODEL = ["--model", "tiny:sd15"]  # for commands without --layers
LONG = "{in}/" + "n" * 300


def case(id: str, args: list[str], code: int = 2, kind: str = "usage", xfail: str | None = None) -> Any:
    """One hostile command line; ``MATCH[id]`` is a fragment its error line must contain (the right reason)."""
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(args, code, kind, MATCH[id], id=id, marks=marks)


#: what each case's error must say, so that a case cannot pass by failing for another reason
MATCH = {
    "no-such-command": "No such command 'nosuchcmd'", "bench-no-such-command": "No such command 'nosuch'",
    "global-unknown-option": "No such option: --bogus",
    "generate-unknown-option": "No such option: --bogus", "generate-no-options": "Missing option '--prompt'",
    "generate-no-prompt": "Missing option '--prompt'", "generate-seed-float": "'--seed'",
    "generate-seed-negative": "'--seed'", "generate-seed-2**63": "'--seed'", "generate-steps-0": "'--steps'",
    "generate-steps-1e9": "'--steps'", "generate-steps-huge": "'--steps'", "generate-steps-1001": "1..1000",
    "generate-steps-negative": "'--steps'", "generate-guidance-inf": "'--guidance'",
    "generate-guidance-nan": "'--guidance'", "generate-guidance-negative": "'--guidance'",
    "generate-guidance-text": "'--guidance'", "generate-out-under-a-file": "a_file is a file",
    "generate-out-is-a-folder": "is a folder", "generate-out-name-too-long": "too long",
    "generate-out-not-an-image": ".png or .jpg", "generate-plan-missing": "does not exist",
    "generate-plan-binary": "UTF-8", "generate-plan-corrupt": "patch plan JSON", "generate-plan-array": "JSON object",
    "generate-plan-unknown-fields": "no_such_key", "generate-plan-is-a-folder": "is a folder",
    "generate-model-missing-folder": "no_model", "generate-model-unknown-tiny": "nosuch",
    "layers-unknown-option": "No such option: --bogus", "layers-model-missing-folder": "no_model",
    "layers-model-unknown-tiny": "nosuch",
    "localize-no-options": "Missing option '--out'", "localize-n-pairs-0": "'--n-pairs'",
    "localize-chunk-size-0": "'--chunk-size'", "localize-fraction-0": "'--fraction'",
    "localize-fraction-nan": "'--fraction'", "localize-start-step-negative": "'--start-step'",
    "localize-steps-0": "'--steps'", "localize-ocr-bogus": "'--ocr'", "localize-height-not-multiple-of-8": "'--height'",
    "localize-prompts-binary": "UTF-8", "localize-prompts-empty": "empty", "localize-attribute-bogus": "--attribute",
    "localize-out-is-a-file": "is a file", "localize-out-name-too-long": "too long", "localize-clip-missing": "--clip",
    "localize-height-on-embedded": "24x64", "localize-corrupt-config-in-out": "config.json",
    "edit-no-options": "Missing option '--to'",
    "edit-neither-prompt-nor-image": "--prompt", "edit-ocr-bogus": "'--ocr'", "edit-span-negative": "'--span'",
    "edit-seed-text": "'--seed'", "edit-empty-to": "--to", "edit-no-quotes": "quote",
    "edit-span-out-of-range": "--span",
    "edit-out-is-a-file": "is a file", "edit-clip-missing": "--clip", "edit-unrenderable-on-embedded": "cannot render",
    "edit-tune-no-options": "Missing option '--out'", "edit-tune-n-pairs-0": "'--n-pairs'",
    "edit-tune-candidates-text": "--candidates", "edit-tune-ocr-none": "OCR backend",
    "edit-tune-prompts-binary": "UTF-8",
    "edit-tune-candidates-beyond-steps": "--candidates",
    "safe-no-options": "Missing option '--prompt'", "safe-threshold-2": "'--threshold'",
    "safe-seed-negative": "'--seed'",
    "safe-policy-bogus": "--policy", "safe-policy-mapping-without-file": "--mappings",
    "safe-mappings-missing": "does not exist", "safe-mappings-binary": "UTF-8", "safe-detector-bogus": "--detector",
    "safe-out-is-a-file": "is a file",
    "bench-edit-no-options": "Missing option '--out'", "bench-edit-n-0": "'--n'",
    "bench-edit-p2p-cross-2": "'--p2p-cross'",
    "bench-edit-ocr-bogus": "'--ocr'", "bench-edit-height-12": "'--height'",
    "bench-edit-benchmark-missing": "missing.txt",
    "bench-edit-benchmark-binary": "UTF-8", "bench-edit-methods-bogus": "bogus",
    "bench-safety-no-options": "Missing option '--words'", "bench-safety-n-0": "'--n'",
    "bench-safety-words-missing": "does not exist", "bench-safety-words-binary": "UTF-8",
    "bench-safety-mappings-corrupt": "corrupt.json",
    "bench-finetune-unknown-option": "No such option: --bogus", "bench-finetune-steps-0": "'--steps'",
    "bench-finetune-lr-0": "'--lr'", "bench-finetune-random-seeds-text": "--random-seeds",
    "bench-finetune-out-is-a-file": "is a file",
    "finetune-no-options": "Missing option '--out'", "finetune-rank-0": "'--rank'", "finetune-lr-inf": "'--lr'",
    "finetune-batch-size-0": "'--batch-size'", "finetune-caption-dropout-1": "'--caption-dropout'",
    "finetune-checkpoint-every-negative": "'--checkpoint-every'", "finetune-out-is-a-file": "is a file",
    "finetune-data-missing": "missing_folder", "finetune-mixed-precision-bogus": "'--mixed-precision'",
    "finetune-target-bogus": "'--target'", "finetune-corrupt-checkpoint": "checkpoint",
    "train-embedded-unknown-option": "No such option: --bogus", "train-embedded-max-minutes-0": "'--max-minutes'",
    "train-embedded-max-minutes-nan": "'--max-minutes'", "train-embedded-config-missing": "does not exist",
    "train-embedded-config-binary": "UTF-8", "train-embedded-config-corrupt": "training config JSON",
    "train-embedded-config-array": "training config JSON", "train-embedded-config-unknown-keys": "no_such_key",
    "train-embedded-out-is-a-file": "is a file", "train-embedded-corrupt-checkpoint": "Corrupt checkpoint",
    "eval-embedded-n-0": "'--n'", "eval-embedded-steps-0": "'--steps'", "eval-embedded-seed-negative": "'--seed'",
    "eval-embedded-ocr-bogus": "'--ocr'",
    "eval-embedded-not-an-embedded-model": "generic profile", "eval-embedded-out-is-a-file": "is a file",
    "ui-port-0": "'--port'", "ui-port-70000": "'--port'", "ui-ocr-bogus": "'--ocr'",
}


CASES = [
    # -- global ------------------------------------------------------------------------------------------
    case("no-such-command", ["nosuchcmd"]),
    case("bench-no-such-command", ["bench", "nosuch"]),
    case("global-unknown-option", ["--bogus"]),
    # -- generate ------------------------------------------------------------------------------------------
    case("generate-unknown-option", [*G, "--bogus"]),
    case("generate-no-options", ["generate"]),
    case("generate-no-prompt", ["generate", "-o", "{out}.png"]),
    case("generate-seed-float", [*G, "--seed", "1e23"]),
    case("generate-seed-negative", [*G, "--seed", "-1"]),
    case("generate-seed-2**63", [*G, "--seed", str(2**63)]),
    case("generate-steps-0", [*G, "--steps", "0"]),
    case("generate-steps-1e9", [*G, "--steps", "1e9"]),
    case("generate-steps-huge", [*G, "--steps", "1000000000"]),
    case("generate-steps-1001", [*G, "--steps", "1001"]),
    case("generate-steps-negative", [*G, "--steps", "-5"]),
    case("generate-guidance-inf", [*G, "--guidance", "inf"]),
    case("generate-guidance-nan", [*G, "--guidance", "nan"]),
    case("generate-guidance-negative", [*G, "--guidance", "-1"]),
    case("generate-guidance-text", [*G, "--guidance", "high"]),
    case("generate-out-under-a-file", ["generate", "-p", PROMPT, "-o", "{in}/a_file/x.png"], kind="line"),
    case("generate-out-is-a-folder", ["generate", "-p", PROMPT, "-o", "{in}/folder"], kind="line"),
    case("generate-out-name-too-long", ["generate", "-p", PROMPT, "-o", LONG + ".png"], kind="line"),
    case("generate-out-not-an-image", ["generate", "-p", PROMPT, "-o", "{out}.txt"], kind="line"),
    case("generate-plan-missing", [*G, "--plan", "{in}/missing.json"], kind="line"),
    case("generate-plan-binary", [*G, "--plan", "{in}/binary.bin"], kind="line"),
    case("generate-plan-corrupt", [*G, "--plan", "{in}/corrupt.json"], kind="line"),
    case("generate-plan-array", [*G, "--plan", "{in}/array.json"], kind="line"),
    case("generate-plan-unknown-fields", [*G, "--plan", "{in}/unknown.json"], kind="line"),
    case("generate-plan-is-a-folder", [*G, "--plan", "{in}/folder"], kind="line"),
    case("generate-model-missing-folder", [*G, "--model", "{in}/no_model"], kind="line"),
    case("generate-model-unknown-tiny", [*G, "--model", "tiny:nosuch"], kind="line"),
    # -- layers --------------------------------------------------------------------------------------------
    case("layers-unknown-option", ["layers", "--bogus"]),
    case("layers-model-missing-folder", ["layers", "--model", "{in}/no_model"], kind="line"),
    case("layers-model-unknown-tiny", ["layers", "--model", "tiny:nosuch"], kind="line"),
    # -- localize ------------------------------------------------------------------------------------------
    case("localize-no-options", ["localize"]),
    case("localize-n-pairs-0", [*L, "--n-pairs", "0"]),
    case("localize-chunk-size-0", [*L, "--chunk-size", "0"]),
    case("localize-fraction-0", [*L, "--fraction", "0"]),
    case("localize-fraction-nan", [*L, "--fraction", "nan"]),
    case("localize-start-step-negative", [*L, "--start-step", "-1"]),
    case("localize-steps-0", [*L, "--steps", "0"]),
    case("localize-ocr-bogus", [*L, "--ocr", "bogus"]),
    case("localize-height-not-multiple-of-8", [*L, "--height", "30"]),
    case("localize-prompts-binary", [*L, "--prompts", "{in}/binary.bin"], kind="line"),
    case("localize-prompts-empty", [*L, "--prompts", "{in}/empty.txt", *TINY_MODEL], kind="line"),
    case("localize-attribute-bogus", [*L, "--attribute", "bogus"], kind="line"),
    case("localize-out-is-a-file", ["localize", "-o", "{in}/a_file"], kind="line"),
    case("localize-out-name-too-long", ["localize", "-o", LONG], kind="line"),
    case("localize-clip-missing", [*L, "--clip", "{in}/no_clip"], kind="line"),
    case("localize-height-on-embedded", [*L, "--height", "64", "--n-pairs", "2"], kind="line"),
    case("localize-corrupt-config-in-out", ["localize", "-o", "{in}/run_corrupt_config", *TINY_MODEL, "--prompts",
                                            "{in}/prompts.txt", "--n-pairs", "2", "--steps", "2"], kind="line"),
    # -- edit ----------------------------------------------------------------------------------------------
    case("edit-no-options", ["edit"]),
    case("edit-ocr-bogus", [*E, "--ocr", "bogus"]),
    case("edit-span-negative", [*E, "--span", "-1"]),
    case("edit-seed-text", [*E, "--seed", "x"]),
    case("edit-empty-to", ["edit", "-p", PROMPT, "--to", "  ", "-o", "{out}"], kind="line"),
    case("edit-neither-prompt-nor-image", ["edit", "--to", "DOG", "-o", "{out}"], kind="line"),
    case("edit-no-quotes", ["edit", "-p", "a sign", "--to", "DOG", "-o", "{out}"], kind="line"),
    case("edit-span-out-of-range", [*E, "--span", "5"], kind="line"),
    case("edit-out-is-a-file", ["edit", "-p", PROMPT, "--to", "DOG", "-o", "{in}/a_file"], kind="line"),
    case("edit-clip-missing", [*E, "--clip", "{in}/no_clip"], kind="line"),
    case("edit-unrenderable-on-embedded", ["edit", "-p", PROMPT, "--to", "TOOLONGWORD", "-o", "{out}"],
         kind="line"),
    # -- edit-tune -----------------------------------------------------------------------------------------
    case("edit-tune-no-options", ["edit-tune"]),
    case("edit-tune-n-pairs-0", [*ET, "--n-pairs", "0"]),
    case("edit-tune-candidates-text", [*ET, "--candidates", "a,b"], kind="line"),
    case("edit-tune-ocr-none", [*ET, "--ocr", "none"], kind="line"),
    case("edit-tune-prompts-binary", [*ET, "--prompts", "{in}/binary.bin"], kind="line"),
    case("edit-tune-candidates-beyond-steps", [*ET, *TINY, "--prompts", "{in}/prompts.txt", "--n-pairs", "2",
                                               "--steps", "4", "--candidates", "99"], kind="line"),
    # -- safe ----------------------------------------------------------------------------------------------
    case("safe-no-options", ["safe"]),
    case("safe-threshold-2", [*S, "--threshold", "2"]),
    case("safe-seed-negative", [*S, "--seed", "-7"]),
    case("safe-policy-bogus", [*S, "--policy", "bogus"], kind="line"),
    case("safe-policy-mapping-without-file", [*S, "--policy", "mapping"], kind="line"),
    case("safe-mappings-missing", [*S, "--mappings", "{in}/missing.txt"], kind="line"),
    case("safe-mappings-binary", [*S, "--mappings", "{in}/binary.bin"], kind="line"),
    case("safe-detector-bogus", [*S, "--detector", "bogus"], kind="line"),
    case("safe-out-is-a-file", ["safe", "-p", PROMPT, "-o", "{in}/a_file"], kind="line"),
    # -- bench edit ----------------------------------------------------------------------------------------
    case("bench-edit-no-options", ["bench", "edit"]),
    case("bench-edit-n-0", [*BE, "--n", "0"]),
    case("bench-edit-p2p-cross-2", [*BE, "--p2p-cross", "2"]),
    case("bench-edit-ocr-bogus", [*BE, "--ocr", "bogus"]),
    case("bench-edit-height-12", [*BE, "--height", "12"]),
    case("bench-edit-benchmark-missing", [*BE, "--benchmark", "{in}/missing.txt"], kind="line"),
    case("bench-edit-benchmark-binary", [*BE, "--benchmark", "{in}/binary.bin"], kind="line"),
    case("bench-edit-methods-bogus", [*BE, *TINY, "--benchmark", "{in}/prompts.txt", "--methods", "bogus"],
         kind="line"),
    # -- bench safety --------------------------------------------------------------------------------------
    case("bench-safety-no-options", ["bench", "safety"]),
    case("bench-safety-n-0", [*BS, "--n", "0"]),
    case("bench-safety-words-missing", ["bench", "safety", "--words", "{in}/missing.txt", "--mappings",
                                        "{in}/mappings.txt", "-o", "{out}"], kind="line"),
    case("bench-safety-words-binary", ["bench", "safety", "--words", "{in}/binary.bin", "--mappings",
                                       "{in}/mappings.txt", "-o", "{out}"], kind="line"),
    case("bench-safety-mappings-corrupt", ["bench", "safety", "--words", "{in}/words.txt", "--mappings",
                                           "{in}/corrupt.json", "-o", "{out}"], kind="line"),
    # -- bench finetune ------------------------------------------------------------------------------------
    case("bench-finetune-unknown-option", [*BF, "--bogus"]),
    case("bench-finetune-steps-0", [*BF, "--steps", "0"]),
    case("bench-finetune-lr-0", [*BF, "--lr", "0"]),
    case("bench-finetune-random-seeds-text", [*BF, "--random-seeds", "a,b"], kind="line"),
    case("bench-finetune-out-is-a-file", ["bench", "finetune", "-o", "{in}/a_file"], kind="line"),
    # -- finetune ------------------------------------------------------------------------------------------
    case("finetune-no-options", ["finetune"]),
    case("finetune-rank-0", [*F, "--rank", "0"]),
    case("finetune-lr-inf", [*F, "--lr", "inf"]),
    case("finetune-batch-size-0", [*F, "--batch-size", "0"]),
    case("finetune-caption-dropout-1", [*F, "--caption-dropout", "1"]),
    case("finetune-checkpoint-every-negative", [*F, "--checkpoint-every", "-1"]),
    case("finetune-out-is-a-file", ["finetune", "-o", "{in}/a_file"], kind="line"),
    case("finetune-data-missing", [*F, *TINY, "--data", "{in}/missing_folder"], kind="line"),
    case("finetune-mixed-precision-bogus", [*F, "--mixed-precision", "fp3"]),
    case("finetune-target-bogus", [*F, "--target", "bogus"]),
    case("finetune-corrupt-checkpoint", ["finetune", "-o", "{in}/run_corrupt_checkpoint", *TINY, "--steps", "2",
                                         "--batch-size", "1"], kind="line"),
    # -- train-embedded ------------------------------------------------------------------------------------
    case("train-embedded-unknown-option", [*T, "--bogus"]),
    case("train-embedded-max-minutes-0", [*T, "--max-minutes", "0"]),
    case("train-embedded-max-minutes-nan", [*T, "--max-minutes", "nan"]),
    case("train-embedded-config-missing", [*T, "--config", "{in}/missing.json"], kind="line"),
    case("train-embedded-config-binary", [*T, "--config", "{in}/binary.bin"], kind="line"),
    case("train-embedded-config-corrupt", [*T, "--config", "{in}/corrupt.json"], kind="line"),
    case("train-embedded-config-array", [*T, "--config", "{in}/array.json"], kind="line"),
    case("train-embedded-config-unknown-keys", [*T, "--config", "{in}/unknown.json"], kind="line"),
    case("train-embedded-corrupt-checkpoint", ["train-embedded", "--out", "{in}/run_corrupt_checkpoint",
                                               "--max-minutes", "0.01"], kind="line"),
    case("train-embedded-out-is-a-file", ["train-embedded", "--out", "{in}/a_file"], kind="line"),
    # -- eval-embedded -------------------------------------------------------------------------------------
    case("eval-embedded-n-0", [*EV, "--n", "0"]),
    case("eval-embedded-steps-0", [*EV, "--steps", "0"]),
    case("eval-embedded-seed-negative", [*EV, "--seed", "-3"]),
    case("eval-embedded-ocr-bogus", [*EV, "--ocr", "bogus"]),
    case("eval-embedded-not-an-embedded-model", [*EV, *TINY_MODEL, "--n", "1", "--steps", "2"], kind="line"),
    case("eval-embedded-out-is-a-file", ["eval-embedded", "--out", "{in}/a_file"], kind="line"),
    # -- ui ------------------------------------------------------------------------------------------------
    case("ui-port-0", ["ui", "--port", "0"]),
    case("ui-port-70000", ["ui", "--port", "70000"]),
    case("ui-ocr-bogus", ["ui", "--ocr", "bogus"]),
]


# -- fixtures ---------------------------------------------------------------------------------------------

_PIPES: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _cached_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load each model once per session (the embedded model takes seconds); failures are not cached."""
    from textloc.models import loading

    real = loading.load_pipeline

    def load(model: str = "embedded", **kwargs: Any) -> Any:
        if kwargs or model not in ("embedded", "tiny:sd15"):
            return real(model, **kwargs)
        if model not in _PIPES:
            _PIPES[model] = real(model)
        return _PIPES[model]

    monkeypatch.setattr(loading, "load_pipeline", load)


def _prepare(root: Path) -> Path:
    """The input folder every case may point at."""
    inputs = root / "in"
    inputs.mkdir()
    (inputs / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (inputs / "corrupt.json").write_text('{"layers": [1, 2')
    (inputs / "array.json").write_text("[1, 2, 3]\n")
    (inputs / "unknown.json").write_text('{"no_such_key": 1}\n')
    (inputs / "empty.txt").write_text("")
    (inputs / "a_file").write_text("x")
    (inputs / "folder").mkdir()
    (inputs / "prompts.txt").write_text("".join(f'a sign that says "{w}"\n' for w in ("CAT", "DOG", "SUN", "MAP")))
    (inputs / "words.txt").write_text("badword\nworse\n")
    (inputs / "mappings.txt").write_text("badword\tgood\nworse\tbetter\n")
    run = inputs / "run_corrupt_config"
    run.mkdir()
    (run / "config.json").write_text('{"config": {"model": ')
    ckpt = inputs / "run_corrupt_checkpoint" / "checkpoint"
    ckpt.mkdir(parents=True)
    (ckpt / "meta.json").write_text("{not json")
    (ckpt / "tensors.safetensors").write_bytes(b"\x00garbage")
    return inputs


def _snapshot(root: Path) -> dict[str, int]:
    """Every file and folder under ``root`` (folders as -1). A run folder's empty ``.lock`` is left out: it is an
    ``flock`` target (released when the process ends), not an output, and it may stay in a folder that existed."""
    return {str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1) for p in root.rglob("*")
            if not (p.name == ".lock" and p.stat().st_size == 0 and p.parent != root / "out")}


def _run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    old = sys.argv
    sys.argv = ["textloc", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = old
    code = exit_info.value.code
    return (0 if code is None else code), capsys.readouterr().err


def assert_one_error(code: int, err: str, expected_code: int, kind: str) -> None:
    assert code == expected_code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    if kind == "usage":
        assert lines and lines[0].startswith("Usage: textloc"), err
        assert all(line.startswith(("Usage: ", "Try '", "Error: ")) for line in lines), err
        assert sum(line.startswith("Error: ") for line in lines) == 1, err
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert len(lines[0]) < 500, err


@pytest.mark.parametrize("args, code, kind, match", CASES)
def test_hostile_input(args: list[str], code: int, kind: str, match: str, tmp_path: Path,
                       monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)  # relative defaults (runs/embedded, runs/eval) would land here
    inputs = _prepare(tmp_path)
    before = _snapshot(tmp_path)
    argv = [a.replace("{in}", str(inputs)).replace("{out}", str(tmp_path / "out")) for a in args]
    got, err = _run(argv, capsys)
    assert_one_error(got, err, code, kind)
    assert match in err, err
    assert _snapshot(tmp_path) == before, "the failed command left files behind"


def test_there_are_enough_cases_over_every_command() -> None:
    import typer

    from textloc.cli.app import app

    assert len(CASES) >= 60
    covered = {" ".join(a for a in c.values[0][:2] if not a.startswith("-")) for c in CASES}
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        subs = getattr(command, "commands", None)
        for full in ([f"{name} {s}" for s in subs] if subs else [name]):
            assert any(c == full or c.startswith(full + " ") or c.split(" ")[0] == full for c in covered), full


# -- the environment fails while writing ----------------------------------------------------------------------


def _failing_generate(number: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> str:
    """``generate`` on a full disk / read-only mount (simulated: root ignores permissions): stderr."""
    monkeypatch.chdir(tmp_path)
    real = pathlib.Path.write_bytes

    def failing_write(self: Path, data: bytes) -> int:
        real(self, data[: len(data) // 2])  # the disk fills up half-way through the write
        raise OSError(number, os.strerror(number), str(self))

    monkeypatch.setattr(pathlib.Path, "write_bytes", failing_write)
    got, err = _run(["generate", "-p", PROMPT, "-o", str(tmp_path / "out" / "x.png"), *TINY_MODEL, "--steps",
                     "2"], capsys)
    assert_one_error(got, err, 2, "line")
    assert os.strerror(number) in err
    return err


WRITE_ERRORS = [errno.ENOSPC, errno.EROFS, errno.EACCES]


@pytest.mark.parametrize("number", WRITE_ERRORS, ids=[errno.errorcode[n] for n in WRITE_ERRORS])
def test_write_failure_is_one_line(number: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    _failing_generate(number, tmp_path, monkeypatch, capsys)


@pytest.mark.parametrize("number", [errno.ENOSPC], ids=["ENOSPC"])
def test_write_failure_leaves_no_partial_file(number: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _failing_generate(number, tmp_path, monkeypatch, capsys)
    leftovers = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == [], leftovers


# -- a damaged run folder -------------------------------------------------------------------------------------


def test_damaged_records_and_config_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A real run folder, then a damaged record (not a torn last line) and a damaged config: one line each."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bench"
    args = ["bench", "edit", "--benchmark", "embedded", "--n", "2", "--steps", "3", "--layers", "3,4",
            "--start-step", "1", "--methods", "ours", "--ocr", "none", "--out", str(out)]
    code, err = _run(args, capsys)
    assert code == 0, err
    records = out / "results.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    assert lines, "the run wrote no records"
    records.write_text("{not a record\n" + "".join(lines[1:]))
    before = _snapshot(tmp_path)
    code, err = _run(args, capsys)
    assert_one_error(code, err, 2, "line")
    assert "results.jsonl" in err and "damaged" in err, err
    assert _snapshot(tmp_path) == before

    (out / "config.json").write_text('{"config": ')
    code, err = _run(args, capsys)
    assert_one_error(code, err, 2, "line")
    assert "config.json" in err, err
