"""The run folder (lock, content fingerprint, resume check, torn-line repair, fsync), tables and grids."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

from textloc.errors import InputError
from textloc.runs import io
from textloc.runs.folder import RunFolder
from textloc.runs.grids import chunk, image_grid
from textloc.runs.tables import markdown_table


def _run(path: Path, prompts: Path, **config) -> RunFolder:
    return RunFolder(path, command="localize", config={"n_pairs": 4, **config}, inputs={"prompts": prompts})


# ------------------------------------------------------------------------------------------------------------
# Fingerprint and resume


def test_changed_prompts_file_with_the_same_path_is_refused(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("CAT -> DOG\n")
    out = tmp_path / "run"
    with _run(out, prompts) as run:
        run.append({"pair": 0})
        assert not run.resumed
    with _run(out, prompts) as run:  # same content: resumes
        assert run.resumed and run.records() == [{"pair": 0}]
    prompts.write_text("CAT -> COW\n")  # same path, other content
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(InputError) as err:
        with _run(out, prompts):
            pass
    message = str(err.value)
    assert "inputs.prompts" in message and "config." not in message and "\n" not in message
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing rewritten


def test_resume_names_the_config_keys_that_differ(tmp_path: Path) -> None:
    prompts = tmp_path / "p.txt"
    prompts.write_text("x")
    with _run(tmp_path / "run", prompts, seed=0):
        pass
    with pytest.raises(InputError, match=r"config\.n_pairs, config\.seed differ"):
        RunFolder(tmp_path / "run", command="localize", config={"n_pairs": 8, "seed": 1},
                  inputs={"prompts": prompts}).__enter__()
    with pytest.raises(InputError, match="command"):
        RunFolder(tmp_path / "run", command="bench-edit", config={"n_pairs": 4, "seed": 0},
                  inputs={"prompts": prompts}).__enter__()
    # the config is compared as it reads back from JSON: a tuple equals the stored list
    with RunFolder(tmp_path / "tuple", command="c", config={"k": (1, 2)}):
        pass
    with RunFolder(tmp_path / "tuple", command="c", config={"k": [1, 2]}) as run:
        assert run.resumed


def test_nothing_is_written_when_an_input_is_missing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(InputError, match="does not exist"):
        with _run(out, tmp_path / "missing.txt"):
            pass
    assert not out.exists()
    folder = RunFolder(out, command="c", config={})  # constructing writes nothing either
    assert not out.exists() and folder.path == out


def test_inputs_as_bytes_text_and_folders(tmp_path: Path) -> None:
    from textloc.runs.folder import content_digest

    assert content_digest(b"abc") == content_digest("abc")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("1")
    first = content_digest(tmp_path / "d")
    (tmp_path / "d" / "a.txt").write_text("2")
    assert content_digest(tmp_path / "d") != first


# ------------------------------------------------------------------------------------------------------------
# JSONL: torn last line, fsync


def test_torn_last_line_is_cut_off_and_never_glued(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunFolder(out, command="c", config={}) as run:
        run.append({"i": 0})
        run.append({"i": 1})
    path = out / "records.jsonl"
    with path.open("a") as handle:
        handle.write('{"i": 2, "tor')  # a kill in the middle of a write
    assert io.read_jsonl(path) == [{"i": 0}, {"i": 1}]  # the reader ignores it
    with RunFolder(out, command="c", config={}) as run:
        assert path.read_text() == '{"i": 0}\n{"i": 1}\n'  # repaired on entering
        run.append({"i": 2})
    assert [json.loads(line) for line in path.read_text().splitlines()] == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_append_repairs_even_without_entering(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2')
    io.append_jsonl(path, [{"a": 3}])
    assert path.read_text() == '{"a": 1}\n{"a": 3}\n'
    assert io.repair_jsonl(path) == 0


def test_a_damaged_middle_line_is_an_error_not_a_torn_line(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    path.write_text('{"a": 1}\n{"a": 2, "b"\n{"a": 3}\n')
    with pytest.raises(InputError, match=r"r\.jsonl:2"):
        io.read_jsonl(path)


def test_append_fsyncs_every_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    with RunFolder(tmp_path / "run", command="c", config={}) as run:
        synced.clear()
        run.append({"i": 0})
        assert len(synced) == 1
        run.extend([{"i": 1}, {"i": 2}])
        assert len(synced) == 2
    assert len(run.records()) == 3


# ------------------------------------------------------------------------------------------------------------
# Lock


def test_a_second_process_on_the_same_folder_stops_with_one_line(tmp_path: Path) -> None:
    out = tmp_path / "run"
    script = textwrap.dedent(f"""
        import sys
        from textloc.errors import InputError
        from textloc.runs.folder import RunFolder
        try:
            with RunFolder({str(out)!r}, command="c", config={{}}):
                print("entered")
        except InputError as err:
            print(err, file=sys.stderr)
            sys.exit(2)
    """)
    with RunFolder(out, command="c", config={}) as run:
        run.append({"i": 0})
        second = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "entered" not in second.stdout
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "in use by another textloc process" in lines[0]
    # released on exit: the next process gets in
    third = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert third.returncode == 0 and "entered" in third.stdout


def test_lock_is_released_when_the_resume_check_fails(tmp_path: Path) -> None:
    with RunFolder(tmp_path, command="a", config={}):
        pass
    with pytest.raises(InputError):
        RunFolder(tmp_path, command="b", config={}).__enter__()
    with RunFolder(tmp_path, command="a", config={}) as run:  # not locked out by the failed attempt
        assert run.resumed


# ------------------------------------------------------------------------------------------------------------
# Tables and grids


def test_markdown_table_formats_and_missing_values() -> None:
    table = markdown_table(["Method", "PSNR ↑", "n"], [["ours", 17.4213, 80], ["swap | x", None, 3]],
                           formats=[None, "{:.2f}", "{:,}"])
    assert table.splitlines() == ["| Method | PSNR ↑ | n |", "|---|---:|---:|", "| ours | 17.42 | 80 |",
                                  "| swap \\| x | — | 3 |"]
    assert markdown_table(["a"], [[float("nan")]], missing="n/a").splitlines()[-1] == "| n/a |"
    with pytest.raises(ValueError, match="Expected 2 cells"):
        markdown_table(["a", "b"], [[1]])


def test_image_grid_layout_headers_and_captions() -> None:
    red, blue = Image.new("RGB", (4, 2), "red"), Image.new("RGB", (4, 2), "blue")
    plain = image_grid([[red, blue], [blue, None]], scale=2)
    assert plain.size == (16, 8)
    assert plain.getpixel((0, 0)) == (255, 0, 0) and plain.getpixel((8, 0)) == (0, 0, 255)
    assert plain.getpixel((12, 6)) == (255, 255, 255)  # the blank cell
    headed = image_grid([[red, blue]], labels=["source", "patched"], label_height=10)
    assert headed.size == (8, 12) and headed.getpixel((0, 11)) == (255, 0, 0)
    captioned = image_grid([[red], [blue]], labels=[["a"], ["b"]], label_height=5, pad=1)
    assert captioned.size == (6, 2 * (2 + 5) + 3)
    assert [len(r) for r in chunk([red] * 5, 2)] == [2, 2, 1]
    with pytest.raises(ValueError, match="one caption per image"):
        image_grid([[red, blue]], labels=[["a"]])
