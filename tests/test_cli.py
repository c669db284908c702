"""The CLI's edges: usage errors, the one error mapping, --version, --debug, Ctrl-C, and a cheap start-up.

Every command is found from the typer app itself, so a new command is covered without editing this file.
"""

from __future__ import annotations

import ast
import errno
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from textloc.cli import app as cli_app
from textloc.cli.app import INTERRUPTED, main
from textloc.errors import InputError, TextlocError

SRC = Path(__file__).parents[1] / "src" / "textloc"


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``textloc ARGS`` in-process through the real entry point: (exit code, stdout, stderr)."""
    old = sys.argv
    sys.argv = ["textloc", *args]
    try:
        with pytest.raises(SystemExit) as exit_info:
            main()
    finally:
        sys.argv = old
    captured = capsys.readouterr()
    code = exit_info.value.code
    return (0 if code is None else code), captured.out, captured.err


def _walk(command, path: tuple[str, ...] = ()):  # noqa: ANN001, ANN202 - click objects
    yield path, command
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield from _walk(sub, (*path, name))


ALL = list(_walk(typer.main.get_command(cli_app.app)))
PATHS = [path for path, _ in ALL]
GROUPS = [path for path, cmd in ALL if hasattr(cmd, "commands")]
REQUIRED = [path for path, cmd in ALL if not hasattr(cmd, "commands") and any(p.required for p in cmd.params)]


def assert_usage_error(code: int, err: str, path: tuple[str, ...]) -> list[str]:
    """exit 2, click's short usage message for this command, exactly one ``Error:`` line, no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[0].startswith(f"Usage: textloc {' '.join(path)}".rstrip()), err
    assert sum(line.startswith("Usage:") for line in lines) == 1, err
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1, err
    return errors


def test_the_app_has_the_documented_commands() -> None:
    names = {" ".join(path) for path in PATHS}
    for expected in ("generate", "layers", "localize", "edit", "edit-tune", "safe", "finetune", "train-embedded",
                     "eval-embedded", "ui", "bench", "bench edit", "bench safety", "bench finetune"):
        assert expected in names


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "textloc")
def test_unknown_option_is_a_usage_error(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run([*path, "--no-such-option"], capsys)
    (line,) = assert_usage_error(code, err, path)
    assert "--no-such-option" in line


@pytest.mark.parametrize("path", REQUIRED, ids=lambda p: " ".join(p))
def test_no_options_is_a_usage_error(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(list(path), capsys)
    (line,) = assert_usage_error(code, err, path)
    assert "Missing option" in line


@pytest.mark.parametrize("path", GROUPS, ids=lambda p: " ".join(p) or "textloc")
def test_a_group_without_a_command_shows_its_usage(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(list(path), capsys)
    assert code == 2 and "Traceback" not in err
    assert (out + err).lstrip().startswith(f"Usage: textloc {' '.join(path)}".rstrip())


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["nosuchcmd"], capsys)
    (line,) = assert_usage_error(code, err, ())
    assert "nosuchcmd" in line
    code, _, err = run(["bench", "nosuch"], capsys)
    assert_usage_error(code, err, ("bench",))


def test_bad_type_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["generate", "-p", "x", "-o", "x.png", "--seed", "1e23"], capsys)
    (line,) = assert_usage_error(code, err, ("generate",))
    assert "--seed" in line


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    import textloc

    code, out, err = run(["--version"], capsys)
    assert (code, out.strip(), err) == (0, f"textloc {textloc.__version__}", "")


def test_help_lists_commands_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["--help"], capsys)
    assert code == 0 and err == ""
    assert "generate" in out and "--debug" in out and "--version" in out


def _out_under_a_file(tmp_path: Path) -> list[str]:
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    return ["generate", "-p", 'a sign "HI"', "-o", str(blocker / "out.png")]


def test_textloc_error_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(_out_under_a_file(tmp_path), capsys)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and "file.txt" in err


def test_debug_shows_the_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["--debug", *_out_under_a_file(tmp_path)], capsys)
    assert code == 2
    assert "Traceback (most recent call last)" in err and "InputError" in err
    assert err.splitlines()[-1].startswith("error: ")  # the one line still ends it
    # --debug does not leak into the next invocation
    code, _, err = run(_out_under_a_file(tmp_path), capsys)
    assert code == 2 and "Traceback" not in err


@pytest.mark.parametrize("raised, code, text", [
    (InputError("bad\ninput"), 2, "error: bad input"),  # a message with a newline still prints one line
    (OSError(errno.ENOSPC, "No space left on device", "/full/out.png"), 2, "/full/out.png: No space left on device"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/x"), 2, "/ro/x: Read-only file system"),
    (PermissionError(errno.EACCES, "Permission denied", "/root/x"), 2, "/root/x: Permission denied"),
    (OSError(errno.ENAMETOOLONG, "File name too long", "/" + "a" * 5000), 2, "File name too long"),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2, "UTF-8"),
    (KeyboardInterrupt(), 130, INTERRUPTED),
    (MemoryError(), 2, "out of memory"),
])
def test_one_mapping(raised: BaseException, code: int, text: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                     capsys: pytest.CaptureFixture[str]) -> None:
    """Whatever a command raises passes through the same mapping in main() (raised here from the output check)."""

    def boom(*args: object, **kwargs: object) -> None:
        raise raised

    monkeypatch.setattr("textloc.cli.options.check_output_path", boom)
    got, out, err = run(["generate", "-p", "x", "-o", str(tmp_path / "x.png")], capsys)
    assert got == code and out == ""
    assert err.count("\n") == 1 and text in err and len(err) < 400, err


def test_a_bug_keeps_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    def bug(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr("textloc.cli.options.check_output_path", bug)
    code, _, err = run(["generate", "-p", "x", "-o", str(tmp_path / "x.png")], capsys)
    assert code == 1 and "Traceback" in err and "ZeroDivisionError: a bug" in err


def test_error_classes_derive_from_textloc_error() -> None:
    """Every ``class *Error`` in src (OCR and LLM errors included) is a TextlocError, so the CLI maps it."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        tree = ast.parse(path.read_text())
        names = [n.name for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("Error")
                 and not n.name.startswith("_")]
        if not names:
            continue
        module = importlib.import_module(".".join(path.relative_to(SRC.parent).with_suffix("").parts))
        for name in names:
            found.append(name)
            assert issubclass(getattr(module, name), TextlocError), f"{path}: {name}"
    assert {"InputError", "OCRUnavailableError", "LLMError"} <= set(found)


def test_ocr_and_llm_errors_are_the_shared_ones() -> None:
    from textloc.apps.safety import LLMError
    from textloc.errors import LLMError as SharedLLMError
    from textloc.errors import OCRUnavailableError, UnknownBackendError
    from textloc.eval import ocr

    assert LLMError is SharedLLMError and ocr.OCRUnavailableError is OCRUnavailableError
    with pytest.raises(UnknownBackendError) as info:
        ocr.get_ocr_backend("bogus")
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)  # old callers keep working


def test_public_api_is_lazy_and_complete() -> None:
    import textloc

    assert sorted(textloc.__all__) == sorted(textloc._EXPORTS)
    for name in textloc.__all__:
        assert getattr(textloc, name) is not None
    with pytest.raises(AttributeError):
        textloc.no_such_name  # noqa: B018


def test_cli_import_loads_no_torch_or_diffusers() -> None:
    code = ("import sys, textloc, textloc.cli.app; "
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers', 'numpy') if m in sys.modules); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_python_m_textloc(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "textloc", "generate", "--bogus"], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "No such option: --bogus" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "textloc", "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("textloc ")


@pytest.mark.slow
def test_ctrl_c_exits_130_and_the_run_resumes(tmp_path: Path) -> None:
    """SIGINT during a localization: one line, exit 130; the same command then finishes from the folder."""
    import signal
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "textloc", "localize", "--model", "tiny:sd15", "--out", str(out), "--prompts",
           str(_prompt_file(tmp_path)), "--n-pairs", "4", "--steps", "4", "--chunk-size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (out / "config.json").exists() and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == f"error: {INTERRUPTED}" and "Traceback" not in err
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    assert (out / "summary.json").exists()


def _prompt_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f'a sign that says "{w}"\n' for w in ("CAT", "DOG", "SUN", "MAP", "RED", "BOX")))
    return path


def test_a_profile_may_lower_the_step_limit_and_fix_the_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """After loading, ``check_for_model`` asks the model's profile (its own step limit and sizes)."""
    from textloc.cli.options import check_for_model
    from textloc.models import profiles

    strict = profiles.ModelProfile(name="strict", max_steps=10, sizes=((24, 64),))
    monkeypatch.setattr(profiles, "profile_for", lambda pipe: strict)
    check_for_model(object(), steps=10, height=24, width=64)
    check_for_model(object(), steps=None, height=None, width=64)
    with pytest.raises(InputError, match="1..10"):
        check_for_model(object(), steps=11)
    with pytest.raises(InputError, match="24x64"):
        check_for_model(object(), height=32)


@pytest.mark.parametrize("path, problem", [
    ("{tmp}/a_file/out", "is a file"),
    ("{tmp}/" + "x" * 256, "too long"),
    ("{tmp}/a_file", "is a file"),
])
def test_output_folder_checks(path: str, problem: str, tmp_path: Path) -> None:
    from textloc.cli.options import check_output_path

    (tmp_path / "a_file").write_text("x")
    with pytest.raises(InputError, match=problem):
        check_output_path(Path(path.replace("{tmp}", str(tmp_path))))
    assert check_output_path(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_read_only_parent_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.access`` decides (root ignores permission bits, so the answer is simulated here)."""
    from textloc.cli import options

    monkeypatch.setattr(options.os, "access", lambda path, mode: Path(path) != tmp_path)
    with pytest.raises(InputError, match="read-only"):
        options.check_output_path(tmp_path / "run")


def test_generate_warns_about_text_the_model_cannot_draw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """generate promises no exact text: text outside the render limits is a warning, and the image is written."""
    out = tmp_path / "b.png"
    sys.argv = ["textloc", "generate", "-p", 'a sign that says "BANANAS"', "--steps", "2", "-o", str(out)]
    try:
        with pytest.raises(SystemExit) as info:
            main()
    finally:
        sys.argv = ["textloc"]
    err = capsys.readouterr().err
    assert info.value.code == 0 and out.is_file()
    assert "warning: the model cannot render 'BANANAS'" in err and "at most 6" in err


def test_generate_reads_its_text_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """With quoted text, generate prints a verdict from the model's own reader (exit 0 either way)."""
    from textloc.models.profiles import ModelProfile

    class Reader:
        def read(self, images):
            return ["CAR" for _ in images]

    monkeypatch.setattr(ModelProfile, "reader", lambda self, ocr="rapidocr": Reader())
    out = tmp_path / "c.png"
    monkeypatch.setattr(sys, "argv", ["textloc", "generate", "-p", 'a sign that says "cat"', "--steps", "2",
                                      "-o", str(out)])
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 0 and out.is_file()
    assert 'verdict: MISSED: read "CAR", asked for "CAT"' in capsys.readouterr().out
