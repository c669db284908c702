"""Text editing: the edit, its errors, the verdict and exit codes, the output folder, source reuse, tuning and
the benchmark. The untrained embedded model renders no legible text, so OCR and colour readers are stubbed: the
tests check the editing plumbing and invariants, not text quality."""

from __future__ import annotations

import itertools
import json
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from textloc.apps.edit import (
    BenchConfig,
    bench_pairs,
    default_start_step,
    edit_text,
    glyph_bench_pairs,
    outputs,
    renderable_pairs,
    replace_quoted,
    run_edit_bench,
    tune_start_step,
)
from textloc.apps.edit.verdict import MISS_EXIT_CODE, Verdict
from textloc.cli.app import app, main
from textloc.core.engine import generate
from textloc.core.layers import list_text_layers
from textloc.core.plan import PatchPlan
from textloc.errors import InputError, PlanMismatchError, StepWindowError, UnknownLayerError
from textloc.models import presets
from textloc.models.embedded import benchpairs, readers
from textloc.models.embedded.pipeline import build_untrained
from textloc.models.profiles import ModelProfile, profile_for

PROMPT = 'a red sign with white serif letters that says "CAT"'
LAYERS = [3, 4]
STEPS = 4
runner = CliRunner()


class StubOCR:
    """Reads a fixed string from every image (no model, instant)."""

    def __init__(self, text: str = "CAT") -> None:
        self.text = text

    def read(self, images: list) -> list[str]:
        return [self.text] * len(images)


@cache
def embedded():
    pipe = build_untrained()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _count_denoiser_calls(pipe) -> list[int]:
    calls = [0]
    pipe.unet.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


@pytest.fixture()
def cli_model(monkeypatch: pytest.MonkeyPatch):
    """The CLI loads a fresh untrained embedded pipeline (counted denoiser calls) and reads with a stub."""
    pipe = build_untrained()
    pipe.set_progress_bar_config(disable=True)
    pipe.calls = _count_denoiser_calls(pipe)
    monkeypatch.setattr("textloc.models.loading.load_pipeline", lambda _model: pipe)
    reader = StubOCR("DOG")
    monkeypatch.setattr(ModelProfile, "reader", lambda self, ocr="rapidocr": reader)
    monkeypatch.setattr(readers, "background_colour", lambda image: "red")
    monkeypatch.setattr(readers, "text_colour", lambda image, background=None: "white")
    pipe.stub_reader = reader
    return pipe


def _edit_args(out: Path, *extra: str, to: str = "DOG") -> list[str]:
    return ["edit", "--prompt", PROMPT, "--to", to, "--layers", "3,4", "--steps", str(STEPS), "--start-step", "1",
            "--out", str(out), *extra]


# ------------------------------------------------------------------------------------------------------------
# The edit (Python API)


def test_same_text_reproduces_the_source_bit_for_bit() -> None:
    result = edit_text(embedded(), PROMPT, "CAT", layers=LAYERS, start_step=1, num_inference_steps=STEPS, ocr=None)
    assert np.array_equal(result.source_array, result.edited_array)
    assert result.source_image.tobytes() == result.edited_image.tobytes()
    # PSNR of identical images is the one rule of eval.scoring: 100 dB
    assert result.metrics["mse"] == 0.0 and result.metrics["psnr"] == 100.0 and result.metrics["ssim"] == 1.0
    assert result.metrics["background_kept"] is True and result.metrics["text_colour_kept"] in (True, None)
    assert all(steps == [1, 2, 3] for steps in result.fired.values()) and len(result.fired) == 2


def test_edit_changes_the_image_and_the_source_is_the_plain_generation() -> None:
    pipe = embedded()
    phases: list[tuple[str, int, int]] = []
    result = edit_text(pipe, PROMPT, "DOG", layers=LAYERS, start_step=1, num_inference_steps=STEPS, seed=3,
                       ocr=StubOCR("CAT"), on_step=lambda *a: phases.append(a))
    plain = pipe(PROMPT, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(3), output_type="np")
    assert np.array_equal(result.source_array, plain.images[0])
    assert not np.array_equal(result.source_array, result.edited_array)
    assert result.target_prompt == PROMPT.replace("CAT", "DOG")
    assert (result.source_text, result.target_text) == ("CAT", "DOG")
    assert result.plan.start_step == 1 and len(result.plan.layers) == 2 and result.plan.model
    m = result.metrics
    assert m["source_read"] == "CAT" and m["read"] == "CAT" and m["exact"] is False and m["edit_distance"] == 3
    assert 0 < m["mse"] and m["ssim"] < 1 and m["psnr"] < 100.0 and m["clip_t"] is None
    json.dumps(result.to_dict())  # metrics.json must serialise
    # progress: every step of the source, then of the edit, ending at the schedule's length
    assert [p for p in phases if p[0] == "source"] == [("source", s, STEPS) for s in range(1, STEPS + 1)]
    assert phases[-1] == ("edit", STEPS, STEPS)


def test_a_reused_source_gives_the_same_edit_without_generating_the_source() -> None:
    pipe = build_untrained()
    pipe.set_progress_bar_config(disable=True)
    calls = _count_denoiser_calls(pipe)
    first = edit_text(pipe, PROMPT, "DOG", layers=LAYERS, start_step=2, num_inference_steps=STEPS, ocr=None)
    fresh_calls, calls[0] = calls[0], 0
    again = edit_text(pipe, PROMPT, "DOG", layers=LAYERS, start_step=2, num_inference_steps=STEPS, ocr=None,
                      source=first.source_array)
    assert np.array_equal(again.edited_array, first.edited_array) and again.source_reused
    assert calls[0] < fresh_calls  # the source run was not repeated


def test_multi_word_target_and_span_selection() -> None:
    two = 'a sign that says "CAT" and "DOG"'
    assert replace_quoted(two, "SUN", 0) == 'a sign that says "SUN" and "DOG"'
    assert replace_quoted(two, "GO UP", 1) == 'a sign that says "CAT" and "GO UP"'
    result = edit_text(embedded(), two, "GO UP", span=1, layers=LAYERS, num_inference_steps=2, ocr=None)
    assert result.target_prompt == 'a sign that says "CAT" and "GO UP"' and result.source_text == "DOG"
    with pytest.raises(InputError, match=r"--span in 0\.\.1"):
        replace_quoted(two, "SUN", 2)


@pytest.mark.parametrize(
    ("new_text", "message"),
    [("", "non-empty"), ("   ", "non-empty"), ("TOOLONG", "7 characters, at most 6"),
     ("OPEN LATE", "at most 6"), ("CAT1", "cannot draw '1'"), ('SA"Y', "double quotes")],
)
def test_bad_new_text(new_text: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        edit_text(embedded(), PROMPT, new_text, layers=LAYERS, num_inference_steps=2, ocr=None)


def test_no_quoted_text_and_bad_layer_files(tmp_path: Path) -> None:
    pipe = embedded()
    with pytest.raises(InputError, match="no quoted text"):
        edit_text(pipe, "a red sign", "DOG", layers=LAYERS, ocr=None)
    other = tmp_path / "summary.json"
    other.write_text(json.dumps({"chosen_layers": ["up_blocks.0.attentions.2.transformer_blocks.1.attn2"],
                                 "model_fingerprint": "UNet2DConditionModel:70:0123456789ab"}))
    with pytest.raises(PlanMismatchError, match="was made for"):
        edit_text(pipe, PROMPT, "DOG", layers=str(other), ocr=None)
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"chosen_layers": ["no.such.attn2"]}))
    with pytest.raises(UnknownLayerError):
        edit_text(pipe, PROMPT, "DOG", layers=str(unknown), ocr=None)


def test_default_start_steps_come_from_the_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = embedded()
    step, of = profile_for(pipe).edit_start_step
    assert default_start_step(pipe, of) == step and default_start_step(pipe, 2 * of) == 2 * step
    monkeypatch.setattr(presets, "preset_for", lambda _model: presets.PRESETS["sdxl"])
    assert default_start_step(pipe, 50) == 4 and default_start_step(pipe, 25) == 2
    assert default_start_step(pipe, 1) == 0


def test_generic_model_background_by_ssim_and_text_colour_not_judged() -> None:
    """A model without a colour reader (tiny SD 1.5): the background is judged by SSIM, the text colour not."""
    from textloc.apps.edit.scoring import SSIM_KEPT
    from textloc.models.loading import load_pipeline

    pipe = load_pipeline("tiny:sd15")
    assert profile_for(pipe).colours is None
    result = edit_text(pipe, 'a sign that says "CAT"', "DOG", layers=[0], start_step=0, num_inference_steps=2,
                       ocr=StubOCR("DOG"), height=32, width=32)
    m = result.metrics
    assert "text_colour_kept" not in m and m["background_kept"] == (m["ssim"] >= SSIM_KEPT) and m["exact"] is True


# ------------------------------------------------------------------------------------------------------------
# The verdict


def _verdict(**changes) -> Verdict:
    base = dict(target_text="BYE", read="BYE", text_exact=True, background_kept=True, text_colour_kept=True,
                background_rule="colour", ssim=0.9, start_step=1, num_inference_steps=20, default_layers=True)
    return Verdict(**{**base, **changes})


def test_verdict_says_what_missed_and_what_to_try() -> None:
    ok = _verdict()
    assert not ok.missed and ok.line().startswith("verdict: ok") and ok.miss_message() is None and not ok.suggestions()
    misread = _verdict(read="BYF", text_exact=False)
    assert misread.missed and 'read as "BYF", not "BYE"' in misread.miss_message()
    tips = " | ".join(misread.suggestions())
    assert "--seed" in tips and "earlier --start-step 0" in tips and "--layers" not in tips  # full-score set in use
    moved = _verdict(background_kept=False, default_layers=False)
    assert moved.missed and "background changed" in moved.miss_message()
    assert "later --start-step 2" in " | ".join(moved.suggestions()) and "--layers preset" in moved.miss_message()
    assert _verdict(text_colour_kept=False).missed
    # what cannot be judged is said, and is not a miss
    unjudged = _verdict(read=None, text_exact=None, text_colour_kept=None)
    assert not unjudged.missed and "not read" in unjudged.line() and "text colour not judged" in unjudged.line()


# ------------------------------------------------------------------------------------------------------------
# CLI: textloc edit


def test_cli_edit_writes_all_outputs_and_says_ok(cli_model, tmp_path: Path) -> None:
    out = tmp_path / "edit"
    result = runner.invoke(app, _edit_args(out))
    assert result.exit_code == 0, result.output
    assert "verdict: ok" in result.output and 'read "DOG" (exact)' in result.output
    for name in ("source.png", "edited.png", "side_by_side.png", "plan.json", "metrics.json", "config.json",
                 "source.npy"):
        assert (out / name).is_file(), name
    plan = PatchPlan.from_json(out / "plan.json")
    assert plan.start_step == 1 and plan.target_prompt.endswith('"DOG"') and len(plan.layers) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target_text"] == "DOG" and metrics["metrics"]["ssim"] < 1
    assert metrics["verdict"]["missed"] is False
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("miss", ["text", "background", "colour"])
def test_cli_edit_miss_exits_3_with_advice_unless_allowed(cli_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          miss: str) -> None:
    changing = itertools.cycle(["red", "blue"])  # each edit reads the source's colour, then the edit's
    if miss == "text":
        cli_model.stub_reader.text = "DOF"
    elif miss == "background":
        monkeypatch.setattr(readers, "background_colour", lambda image: next(changing))
    else:
        monkeypatch.setattr(readers, "text_colour", lambda image, background=None: next(changing))
    out = tmp_path / "edit"
    result = runner.invoke(app, _edit_args(out))
    assert result.exit_code == MISS_EXIT_CODE, result.output
    assert "verdict: MISSED" in result.output and "The edit missed" in result.output and "Try" in result.output
    expected = {"text": 'read as "DOF"', "background": "background changed", "colour": "text colour changed"}
    assert expected[miss] in result.output and "--seed" in result.output
    assert (out / "edited.png").is_file()  # the outputs are written so the miss can be looked at
    assert json.loads((out / "metrics.json").read_text())["verdict"]["missed"] is True
    allowed = runner.invoke(app, _edit_args(tmp_path / "allowed", "--allow-miss"))
    assert allowed.exit_code == 0 and "verdict: MISSED" in allowed.output
    assert "3 the edit missed" in " ".join(runner.invoke(app, ["edit", "--help"]).output.split())  # documented


@pytest.mark.parametrize(
    ("to", "message"),
    [("", "non-empty"), ("CAT", "already renders"), ("cat", "already renders"), ("TOOLONG", "at most 6"),
     ("CAT1", "cannot draw")],
)
def test_cli_refuses_bad_or_same_text_in_one_line_before_generating(
        cli_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, to: str,
        message: str) -> None:
    out = tmp_path / "o"
    monkeypatch.setattr(sys, "argv", ["textloc", *_edit_args(out, to=to)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and err.startswith("error:") and message in err
    assert cli_model.calls[0] == 0 and not out.exists()  # refused up front: nothing generated, nothing written


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--layers", "{other}"], "was made for"), (["--span", "1"], "--span"), (["--start-step", "9"], "step")],
)
def test_cli_errors_are_one_line(cli_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    other = tmp_path / "summary.json"
    other.write_text(json.dumps({"chosen_layers": ["x.attn2"], "model_fingerprint": "SD3Transformer2DModel:24:0"}))
    args = [a.replace("{other}", str(other)) for a in args]
    monkeypatch.setattr(sys, "argv", ["textloc", *_edit_args(tmp_path / "o"), *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.splitlines()[-1].startswith("error:") and message in err.splitlines()[-1]
    assert not (tmp_path / "o").exists()


def test_cli_edit_output_is_all_or_nothing(cli_model, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "edit"
    assert runner.invoke(app, _edit_args(out)).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    written = []

    def fail_on_third(path: Path, value) -> None:
        written.append(path.name)
        if len(written) == 3:
            raise OSError("disk full")
        original(path, value)

    original = outputs._write
    monkeypatch.setattr(outputs, "_write", fail_on_third)
    cli_model.stub_reader.text = "SUN"
    result = runner.invoke(app, _edit_args(out, to="SUN"))
    assert result.exit_code != 0 and isinstance(result.exception, OSError)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier edit is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit"]  # no temporary folder left
    monkeypatch.setattr(outputs, "_write", original)
    result = runner.invoke(app, _edit_args(out, to="SUN"))  # an earlier edit's folder is replaced whole
    assert result.exit_code == 0 and json.loads((out / "config.json").read_text())["to"] == "SUN"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    refused = runner.invoke(app, _edit_args(tmp_path / "notes"))
    assert refused.exit_code != 0 and "holds other files" in str(refused.exception)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"


def test_cli_source_dir_reuses_the_source_and_checks_its_settings(cli_model, tmp_path: Path) -> None:
    first = tmp_path / "first"
    assert runner.invoke(app, _edit_args(first)).exit_code == 0
    fresh_calls, cli_model.calls[0] = cli_model.calls[0], 0
    cli_model.stub_reader.text = "SUN"
    second = tmp_path / "second"
    result = runner.invoke(app, _edit_args(second, "--source-dir", str(first), to="SUN"))
    assert result.exit_code == 0, result.output
    assert cli_model.calls[0] < fresh_calls and "source reused" in result.output
    assert (second / "source.png").read_bytes() == (first / "source.png").read_bytes()
    again = runner.invoke(app, _edit_args(tmp_path / "third", to="SUN"))  # the same edit, source regenerated
    assert again.exit_code == 0
    assert (tmp_path / "third" / "edited.png").read_bytes() == (second / "edited.png").read_bytes()
    other_seed = runner.invoke(app, _edit_args(tmp_path / "x", "--source-dir", str(first), "--seed", "5"))
    assert other_seed.exit_code != 0 and "seed" in str(other_seed.exception) and not (tmp_path / "x").exists()
    not_an_edit = runner.invoke(app, _edit_args(tmp_path / "y", "--source-dir", str(tmp_path)))
    assert not_an_edit.exit_code != 0 and "earlier edit" in str(not_an_edit.exception)


# ------------------------------------------------------------------------------------------------------------
# Tuning


def test_tune_start_step_picks_a_candidate() -> None:
    rows = []
    result = tune_start_step(embedded(), bench_pairs("embedded", 2, seed=5), LAYERS, [0, 2], ocr=StubOCR(),
                             num_inference_steps=3, progress=False, on_row=rows.append)
    assert [row["start_step"] for row in result.rows] == [0, 2] and rows == result.rows
    assert result.best in (0, 2) and all(row["exact"] == 0.0 for row in result.rows)


def test_cli_edit_tune_run_folder_resumes(cli_model, tmp_path: Path) -> None:
    args = ["edit-tune", "--prompts", "embedded", "--n-pairs", "2", "--layers", "3,4", "--steps", "3",
            "--candidates", "0,2", "--out", str(tmp_path / "tune")]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    tune = json.loads((tmp_path / "tune" / "tune.json").read_text())
    assert [r["start_step"] for r in tune["rows"]] == [0, 2]
    cli_model.calls[0] = 0
    again = runner.invoke(app, args)  # resumed from the run folder: no candidate is run again
    assert again.exit_code == 0 and cli_model.calls[0] == 0
    assert json.loads((tmp_path / "tune" / "tune.json").read_text()) == tune  # the same rows and choice
    changed = runner.invoke(app, [*args[:-2], "--seed", "9", "--out", str(tmp_path / "tune")])
    assert changed.exit_code != 0 and "config.seed" in str(changed.exception)


# ------------------------------------------------------------------------------------------------------------
# Benchmark pairs and the benchmark


def test_bench_pairs_come_from_the_model_profile() -> None:
    pairs = bench_pairs("embedded", 6, seed=0)
    assert pairs == benchpairs.bench_pairs(6, 0)
    assert [p.key.split("-")[0] for p in pairs] == ["seen", "unseen"] * 3
    assert all(p.source_value != p.target_value and p.target.endswith(f'"{p.target_value}"') for p in pairs)
    assert len(bench_pairs("embedded", None, seed=0)) == benchpairs.DEFAULT_N
    open_pairs = bench_pairs("embedded-open", 4, seed=0)
    # open prompts: the target is the source's wording with only the text changed
    assert all(p.target == p.source.replace(f'"{p.source_value}"', f'"{p.target_value}"') for p in open_pairs)
    assert all(" with " not in p.source for p in open_pairs)  # they name only the text


def test_glyph_pairs_from_a_user_file(tmp_path: Path) -> None:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(f'A sign that says "{w}".' for w in ("cat", "dog", "sun", "extraordinary")) + "\n")
    pairs = glyph_bench_pairs(str(path), 3, seed=1)
    assert len(pairs) == 3 and all(p.source_value != p.target_value for p in pairs)
    kept, skipped = renderable_pairs(embedded(), glyph_bench_pairs(str(path), None, seed=1))
    assert skipped == 1 and all(p.target_value != "extraordinary" for p in kept)
    assert set(glyph_bench_pairs(str(path), 2, seed=1)) <= set(pairs)  # larger --n: a superset (resumable)
    with pytest.raises(InputError, match="--benchmark"):
        glyph_bench_pairs(str(tmp_path / "missing.txt"), 2, 0)


def test_bench_resumes_and_extends(tmp_path: Path) -> None:
    pipe = build_untrained()
    pipe.set_progress_bar_config(disable=True)
    calls = _count_denoiser_calls(pipe)
    names = [list_text_layers(pipe)[i].name for i in LAYERS]
    config = BenchConfig(model="untrained", benchmark="embedded", layers=names, start_step=1, steps=3)
    pairs = bench_pairs("embedded", 2, seed=0)

    def bench(pairs, config, out=tmp_path, methods=("ours", "prompt-swap")):
        return run_edit_bench(pipe, pairs, config, out, methods=list(methods), ocr_backend=StubOCR(), progress=False)

    bench(pairs[:1], config)
    first = calls[0]
    assert first > 0
    summary = bench(pairs, config)
    assert calls[0] - first < 2 * first  # only the new pair ran
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and summary["methods"]["ours"]["n"] == 2
    calls[0] = 0
    bench(pairs, config)
    assert calls[0] == 0 and (tmp_path / "results.jsonl").read_text().splitlines() == lines
    with pytest.raises(InputError, match="config.start_step"):
        bench(pairs, BenchConfig(model="untrained", benchmark="embedded", layers=names, start_step=2, steps=3))
    with pytest.raises(StepWindowError):  # validated before the run folder is created
        bench(pairs, BenchConfig(model="untrained", benchmark="embedded", layers=names, start_step=5, steps=3),
              out=tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_bench_edits_reuse_the_source_prefix_and_match_a_fresh_edit(tmp_path: Path) -> None:
    """With start step 2, ours branches off the source run: 2 steps are served from it, images unchanged."""
    from PIL import Image

    pipe = embedded()
    names = [list_text_layers(pipe)[i].name for i in LAYERS]
    config = BenchConfig(model="untrained", benchmark="embedded", layers=names, start_step=2, steps=4)
    (pair,) = bench_pairs("embedded", 1, seed=3)
    run_edit_bench(pipe, [pair], config, tmp_path, methods=["ours"], ocr_backend=StubOCR(), progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert record["prefix_calls_reused"] == 2  # one batched CFG call per step
    plan = PatchPlan(layers=names, target_prompt=pair.target, start_step=2)
    fresh = generate(pipe, pair.source, plan, num_inference_steps=4, generator=torch.Generator().manual_seed(pair.seed))
    saved = np.asarray(Image.open(tmp_path / "images" / pair.key / "ours.png"))
    assert np.array_equal(saved, np.asarray(fresh.images[0]))


def test_cli_bench_edit_writes_the_table_and_resumes(cli_model, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["bench", "edit", "--benchmark", "embedded", "--n", "2", "--steps", "3", "--layers", "3,4",
            "--start-step", "1", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = (out / "results.md").read_text()
    assert table in result.output
    for label in ("Ours", "Prompt swap", "Patch all layers", "Prompt-to-Prompt", "CLIP-T", "BG kept",
                  "Text colour kept", "n/a"):
        assert label in table, label
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"ours", "prompt-swap", "patch-all", "p2p"}
    assert all(row["n"] == 2 and row["ocr_f1"] is not None for row in summary["methods"].values())
    assert (out / "grid.png").is_file()
    lines = (out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 8
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert (out / "results.jsonl").read_text().splitlines() == lines


def test_clip_t_with_user_weights(tmp_path: Path) -> None:
    """CLIP-T comes from weights the user passes (a tiny random CLIP here); a bad path is an InputError."""
    from textloc.apps.edit import Scorer
    from textloc.models.tiny import build_tiny_clip

    build_tiny_clip(tmp_path / "clip")
    image = np.random.default_rng(0).random((24, 64, 3)).astype(np.float32)
    score = Scorer(ocr=None, clip=str(tmp_path / "clip")).clip_t(image, PROMPT)
    assert isinstance(score, float) and 0.0 <= score <= 100.0
    with pytest.raises(InputError, match="CLIP weights"):
        Scorer(ocr=None, clip=str(tmp_path)).clip_t(image, PROMPT)


def test_edit_layers_default_to_the_full_score_set(tmp_path: Path) -> None:
    """Editing takes the smallest k-best set that reaches the all-layers score, not the 90 % selection."""
    from textloc.models.presets import load_localization

    summary = {
        "model_fingerprint": None, "chosen_layers": ["a"], "all_layers_score": 1.0,
        "curve": [{"k": 0, "layers": [], "exact": 0.0}, {"k": 1, "layers": ["a"], "exact": 0.95},
                  {"k": 2, "layers": ["a", "b"], "exact": 0.97}, {"k": 3, "layers": ["a", "b", "c"], "exact": 1.0},
                  {"k": 4, "layers": ["a", "b", "c", "d"], "exact": 1.0}],
    }
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(summary))
    assert load_localization(path) == ["a"]
    assert load_localization(path, full_score=True) == ["a", "b", "c"]
    summary["curve"] = summary["curve"][:3]  # no set reaches the all-layers score: keep the selection
    path.write_text(json.dumps(summary))
    assert load_localization(path, full_score=True) == ["a"]
