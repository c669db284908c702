"""Text editing: the edit itself, its defaults and errors, the CLI, start-step tuning and the benchmark harness.

The untrained embedded model renders no legible text, so most tests use a stub OCR reader (or none); they
check the editing plumbing and invariants, not text quality.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from textloc.models import presets
from textloc.apps.edit.core import (
    EMBEDDED_START_STEP,
    EMBEDDED_STEPS,
    BenchConfig,
    edit_text,
    embedded_bench_pairs,
    glyph_bench_pairs,
    renderable_pairs,
    replace_quoted,
    run_edit_bench,
    tune_start_step,
)
from textloc.apps.edit.core import default_start_step as start_for
from textloc.cli.app import app, main
from textloc.core.engine import generate
from textloc.core.layers import list_text_layers
from textloc.core.plan import PatchPlan
from textloc.errors import InputError, PlanMismatchError, UnknownLayerError
from textloc.models.embedded.pipeline import build_untrained

PROMPT = 'a red sign with white serif letters that says "CAT"'
LAYERS = [3, 4]
STEPS = 4
runner = CliRunner()


class StubOCR:
    """Reads a fixed string from every image (no model, instant)."""

    name = "stub"

    def __init__(self, text: str = "CAT") -> None:
        self.text = text

    def read(self, images: list) -> list[str]:
        return [self.text] * len(images)


@cache
def embedded():
    pipe = build_untrained()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The untrained embedded pipeline saved as a folder, so the CLI can load it with --model."""
    folder = tmp_path_factory.mktemp("embedded") / "model"
    embedded().save_pretrained(folder)
    return str(folder)


# ------------------------------------------------------------------------------------------------------------
# The edit


def test_same_text_reproduces_the_source_bit_for_bit() -> None:
    result = edit_text(embedded(), PROMPT, "CAT", layers=LAYERS, start_step=1, num_inference_steps=STEPS, ocr=None)
    assert np.array_equal(result.source_array, result.edited_array)
    assert result.source_image.tobytes() == result.edited_image.tobytes()
    assert result.metrics["mse"] == 0.0 and result.metrics["psnr"] is None and result.metrics["ssim"] == 1.0
    assert all(steps == [1, 2, 3] for steps in result.fired.values()) and len(result.fired) == 2


def test_edit_changes_the_image_and_the_source_is_the_plain_generation() -> None:
    pipe = embedded()
    result = edit_text(pipe, PROMPT, "DOG", layers=LAYERS, start_step=1, num_inference_steps=STEPS, seed=3,
                       ocr=StubOCR("CAT"))
    plain = pipe(PROMPT, num_inference_steps=STEPS, generator=torch.Generator().manual_seed(3), output_type="np")
    assert np.array_equal(result.source_array, plain.images[0])
    assert not np.array_equal(result.source_array, result.edited_array)
    assert result.target_prompt == PROMPT.replace("CAT", "DOG")
    assert (result.source_text, result.target_text) == ("CAT", "DOG")
    assert result.plan.start_step == 1 and len(result.plan.layers) == 2 and result.plan.model
    m = result.metrics
    assert m["source_read"] == "CAT" and m["read"] == "CAT" and m["exact"] is False and m["edit_distance"] == 3
    assert 0 < m["mse"] and m["ssim"] < 1 and m["clip_t"] is None
    json.dumps(result.to_dict())  # metrics.json must serialise


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
    [("", "non-empty"), ("   ", "non-empty"), ("TOOLONG", "longer than the model can render"),
     ("OPEN LATE", "longer than the model can render"), ("CAT1", "A-Z"), ('SA"Y', "double quotes")],
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


def test_default_start_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = embedded()
    assert start_for(pipe, EMBEDDED_STEPS) == EMBEDDED_START_STEP
    assert start_for(pipe, 2 * EMBEDDED_STEPS) == 2 * EMBEDDED_START_STEP
    monkeypatch.setattr(presets, "preset_for", lambda _model: presets.PRESETS["sdxl"])
    assert start_for(pipe, 50) == 4 and start_for(pipe, 25) == 2 and start_for(pipe, 1) == 0


# ------------------------------------------------------------------------------------------------------------
# CLI


def test_cli_edit_writes_all_outputs(model_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "edit"
    result = runner.invoke(app, ["edit", "--model", model_dir, "--prompt", PROMPT, "--to", "DOG", "--layers", "3,4",
                                 "--steps", str(STEPS), "--start-step", "1", "--ocr", "none", "--out", str(out)])
    assert result.exit_code == 0, result.output
    for name in ("source.png", "edited.png", "side_by_side.png", "plan.json", "metrics.json"):
        assert (out / name).is_file(), name
    plan = PatchPlan.from_json(out / "plan.json")
    assert plan.start_step == 1 and plan.target_prompt.endswith('"DOG"') and len(plan.layers) == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["target_text"] == "DOG" and metrics["metrics"]["ssim"] < 1
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--to", ""], "non-empty"), (["--to", "TOOLONG"], "longer than the model can render"),
     (["--to", "DOG", "--layers", "{other}"], "was made for"), (["--to", "DOG", "--span", "1"], "--span")],
)
def test_cli_errors_are_one_line(model_dir: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture, args: list[str], message: str) -> None:
    other = tmp_path / "summary.json"
    other.write_text(json.dumps({"chosen_layers": ["x.attn2"], "model_fingerprint": "SD3Transformer2DModel:24:0"}))
    args = [a.replace("{other}", str(other)) for a in args]
    argv = ["textloc", "edit", "--model", model_dir, "--prompt", PROMPT, "--out", str(tmp_path / "o"),
            "--steps", "2", "--ocr", "none", *args]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    # (diffusers' "Loading pipeline components" bar may come first: not part of the error)
    assert "Traceback" not in err and err.splitlines()[-1].startswith("error:") and message in err.splitlines()[-1]
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------------------
# Tuning and the benchmark


def test_tune_start_step_picks_a_candidate() -> None:
    pairs = embedded_bench_pairs(2, seed=5)
    result = tune_start_step(embedded(), pairs, LAYERS, [0, 2], ocr=StubOCR(), num_inference_steps=3,
                             progress=False)
    assert [row["start_step"] for row in result.rows] == [0, 2]
    assert result.best in (0, 2) and all(row["exact"] == 0.0 for row in result.rows)


def test_bench_pairs() -> None:
    pairs = embedded_bench_pairs(6, seed=0)
    assert [p.key.split("-")[0] for p in pairs] == ["seen", "unseen"] * 3
    assert all(p.source_value != p.target_value and p.target.endswith(f'"{p.target_value}"') for p in pairs)
    assert embedded_bench_pairs(6, seed=0) == pairs


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


def _count_denoiser_calls(pipe) -> list[int]:
    calls = [0]
    pipe.unet.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_bench_resumes_and_extends(tmp_path: Path) -> None:
    pipe = build_untrained()
    pipe.set_progress_bar_config(disable=True)
    calls = _count_denoiser_calls(pipe)
    names = [list_text_layers(pipe)[i].name for i in LAYERS]
    config = BenchConfig(model="untrained", benchmark="embedded", layers=names, start_step=1, steps=3)
    pairs = embedded_bench_pairs(2, seed=0)
    run_edit_bench(pipe, pairs[:1], config, tmp_path, methods=["ours", "prompt-swap"], ocr_backend=StubOCR(),
                   progress=False)
    first = calls[0]
    assert first > 0
    summary = run_edit_bench(pipe, pairs, config, tmp_path, methods=["ours", "prompt-swap"], ocr_backend=StubOCR(),
                             progress=False)
    assert calls[0] - first < 2 * first  # only the new pair ran
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4 and summary["methods"]["ours"]["n"] == 2
    calls[0] = 0
    run_edit_bench(pipe, pairs, config, tmp_path, methods=["ours", "prompt-swap"], ocr_backend=StubOCR(),
                   progress=False)
    assert calls[0] == 0 and (tmp_path / "results.jsonl").read_text().splitlines() == lines
    changed = BenchConfig(model="untrained", benchmark="embedded", layers=names, start_step=2, steps=3)
    with pytest.raises(InputError, match="start_step"):
        run_edit_bench(pipe, pairs, changed, tmp_path, methods=["ours"], ocr_backend=StubOCR(), progress=False)


def test_bench_edits_reuse_the_source_prefix_and_match_a_fresh_edit(tmp_path: Path) -> None:
    """With start step 2, ours branches off the source run: 2 steps are served from it, images unchanged."""
    from PIL import Image

    pipe = embedded()
    names = [list_text_layers(pipe)[i].name for i in LAYERS]
    config = BenchConfig(model="untrained", benchmark="embedded", layers=names, start_step=2, steps=4)
    (pair,) = embedded_bench_pairs(1, seed=3)
    run_edit_bench(pipe, [pair], config, tmp_path, methods=["ours"], ocr_backend=StubOCR(), progress=False)
    (record,) = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert record["prefix_calls_reused"] == 2  # one batched CFG call per step
    plan = PatchPlan(layers=names, target_prompt=pair.target, start_step=2)
    fresh = generate(pipe, pair.source, plan, num_inference_steps=4, generator=torch.Generator().manual_seed(pair.seed))
    saved = np.asarray(Image.open(tmp_path / "images" / pair.key / "ours.png"))
    assert np.array_equal(saved, np.asarray(fresh.images[0]))


def test_cli_bench_edit_writes_the_table_and_resumes(model_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["bench", "edit", "--model", model_dir, "--benchmark", "embedded", "--n", "2", "--steps", "3",
            "--layers", "3,4", "--start-step", "1", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    table = (out / "results.md").read_text()
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
    from textloc.apps.edit.core import Scorer
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
