"""The web app (``textloc ui``) without a browser: CLI edges, what the page says, the model slot, the actions.

The actions run the *untrained* embedded pipeline at 4 steps (fast, no weights) with a stub OCR reader, so the
verdict is known in advance; the browser tests are in ``tests/test_ui_browser.py``.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from textloc.errors import (
    InputError,
    ModelLoadError,
    PlanMismatchError,
    StepWindowError,
    TextlocError,
    UnknownBackendError,
)

PROMPT = 'a blue sign with yellow letters that says "CAT"'
STEPS = 4


class FixedReader:
    """A stub OCR reader that reads ``text`` in every image (so an edit's text verdict is known in advance)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def read(self, images: list[Any]) -> list[str]:
        return [self.text for _ in images]


# ------------------------------------------------------------------------------------------------------------
# The command


def test_ui_command_without_gradio_fails_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """No gradio -> ``textloc ui`` raises an InputError naming the install command, before loading a model."""
    from textloc.cli.app import app

    monkeypatch.setitem(sys.modules, "gradio", None)  # makes ``import gradio`` raise ImportError
    result = CliRunner().invoke(app, ["ui", "--model", "does-not-matter"])
    assert isinstance(result.exception, InputError), result.output
    message = str(result.exception)
    assert 'pip install "textloc[ui]"' in message and "\n" not in message


def test_ui_command_without_gradio_prints_the_install_line(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """What the user sees: exit code 2 and one stderr line with the exact install command."""
    from textloc.cli.app import main

    monkeypatch.setitem(sys.modules, "gradio", None)
    monkeypatch.setattr(sys, "argv", ["textloc", "ui"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert 'pip install "textloc[ui]"' in err and len(err.splitlines()) == 1, err


def test_importing_the_ui_package_does_not_import_gradio(monkeypatch: pytest.MonkeyPatch) -> None:
    """``textloc.ui`` (and its public names) import without gradio; only building the app needs it."""
    import importlib

    for name in [m for m in sys.modules if m == "textloc.ui" or m.startswith("textloc.ui.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "gradio", None)
    ui = importlib.import_module("textloc.ui")
    assert callable(ui.build_app) and callable(ui.launch) and callable(ui.display_image)
    with pytest.raises(InputError, match="pip install"):
        ui.require_gradio()


# ------------------------------------------------------------------------------------------------------------
# What the page says


def test_display_image_upscales_small_images_crisply() -> None:
    from PIL import Image

    from textloc.ui import display_image

    small = Image.new("RGB", (64, 24), "red")
    shown = display_image(small)
    assert shown.size == (64 * 6, 24 * 6)
    assert shown.getpixel((0, 0)) == (255, 0, 0)
    large = Image.new("RGB", (512, 512))
    assert display_image(large) is large


@pytest.mark.parametrize("err", [
    InputError("Expected a prompt, but the prompt is empty"),
    UnknownBackendError("Unknown OCR backend 'x'; expected one of ['rapidocr']"),
    StepWindowError("Expected `start_step` < 4, but got 99"),
    PlanMismatchError("summary.json was made for SD3Transformer2DModel:24:0123, but the model is X"),
    ModelLoadError("The embedded model's weights are missing"),
    TextlocError("something else"),
    RuntimeError("a bug"),
])
def test_errors_read_as_plain_language_never_as_class_names(err: BaseException) -> None:
    """Issue #18: errors showed a raw class name (``InputError:``); the page shows a title and the message."""
    from textloc.ui.render import UNEXPECTED_TITLE, error_md, error_text

    for shown in (error_md(err), error_text(err)):
        assert type(err).__name__ not in shown, shown
        assert "Error" not in shown.replace(str(err), ""), shown
        assert str(err).split(";")[0].split("`")[0] in shown.replace("\\", "")
    assert (UNEXPECTED_TITLE in error_md(err)) is (not isinstance(err, TextlocError))
    if not isinstance(err, TextlocError):
        assert "server log" in error_text(err)


def test_command_line_option_names_become_the_page_control_names() -> None:
    from textloc.ui.render import for_page

    assert for_page("Expected --steps in 1..1000, but got 0") == "Expected “Steps” in 1..1000, but got 0"
    assert "“Start step” 3" in for_page("an earlier --start-step 3")
    assert for_page("see --unknown-flag") == "see --unknown-flag"  # options the page has no control for stay


def _verdict(**changes: Any) -> Any:
    from textloc.apps.edit.verdict import Verdict

    base = dict(target_text="BYE", read="BYE", text_exact=True, background_kept=True, text_colour_kept=True,
                background_rule="colour", ssim=0.9, start_step=2, num_inference_steps=20, default_layers=True)
    return Verdict(**{**base, **changes})


@pytest.mark.parametrize("changes", [dict(background_kept=False), dict(text_exact=False, read="BVE"),
                                     dict(text_colour_kept=False)])
def test_a_missed_edit_shows_a_cross_and_what_to_try_never_a_tick(changes: dict[str, Any]) -> None:
    """Issue #18: "✓ Edited" stood beside "background kept: no"; a miss is ✗ with the suggestion."""
    from textloc.ui.render import verdict_md

    verdict = _verdict(**changes)
    shown = verdict_md(verdict)
    assert verdict.missed and shown.startswith("✗") and "✓" not in shown
    assert "Try" in shown and "“Seed”" in shown and "--seed" not in shown
    for miss in verdict.misses():
        assert miss.split('"')[0] in shown


def test_an_edit_that_worked_shows_a_tick_with_every_judged_part() -> None:
    from textloc.ui.render import verdict_md

    shown = verdict_md(_verdict())
    assert shown.startswith("✓") and "✗" not in shown and "background kept" in shown and "Try" not in shown
    unjudged = verdict_md(_verdict(text_exact=None, read=None, text_colour_kept=None))
    assert unjudged.startswith("✓") and "not judged" in unjudged and "OCR off" in unjudged


def test_layers_are_listed_by_name_with_the_steps_they_fired() -> None:
    from textloc.ui.render import layers_md

    shown = layers_md(["down.0.attn2", "up.1.attn2"], {"down.0.attn2": [0, 1, 2], "up.1.attn2": []})
    assert "`down.0.attn2`: patched at 3 step(s)" in shown and "`up.1.attn2`: **never patched**" in shown


# ------------------------------------------------------------------------------------------------------------
# The model slot: only models that load are offered, one pipeline at a time


def test_only_models_that_load_are_offered_and_probes_are_released() -> None:
    from textloc.ui.state import offered_models

    calls: list[str] = []

    def loader(name: str, fail: bool = False) -> Any:
        def load() -> Any:
            calls.append(name)
            if fail:
                raise ModelLoadError(f"{name} has no weights")
            return object()
        return load

    offered = offered_models({"current": loader("current"), "other": loader("other"),
                              "broken": loader("broken", fail=True)}, "current")
    assert list(offered) == ["current", "other"]
    assert calls == ["other", "broken"]  # the loaded model is not loaded again; each candidate once


@pytest.fixture(scope="module")
def untrained() -> Any:
    from textloc.models.embedded.pipeline import build_untrained

    pipe = build_untrained()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_selecting_a_model_releases_the_current_one_first(untrained: Any) -> None:
    from textloc.ui.state import UIState

    seen: list[Any] = []
    state: UIState

    def second() -> Any:
        seen.append(state.model.pipe)  # what is still held while the next model loads
        return untrained

    def broken() -> Any:
        raise ModelLoadError("weights missing")

    state = UIState(untrained, "first", {"first": lambda: untrained, "second": second, "broken": broken}, ocr=None)
    assert state.select("second").name == "second" and seen == [None]
    with pytest.raises(ModelLoadError):
        state.select("broken")
    assert state.model.name == "second" and state.model.pipe is untrained  # the previous model is back
    with pytest.raises(InputError, match="Expected a model in"):
        state.select("not-offered")


def test_the_layers_box_offers_the_localized_layers_by_name(untrained: Any) -> None:
    from textloc.models.presets import choose_layers
    from textloc.ui.state import LoadedModel

    model = LoadedModel("embedded", untrained)
    localized = choose_layers(untrained, "preset", full_score=True)
    choices = dict((value, label) for label, value in model.layer_choices())
    assert model.preset_layers == localized and model.default_layers() == "preset"
    assert all(name in choices["preset"] for name in localized)
    assert all(name in choices for name in localized) or len(localized) == 1
    assert "all" in choices and str(len(choose_layers(untrained, "all"))) in choices["all"]


# ------------------------------------------------------------------------------------------------------------
# The actions


@pytest.fixture()
def state(untrained: Any) -> Any:
    from textloc.ui.state import UIState

    return UIState(untrained, "untrained", {"untrained": lambda: untrained}, ocr=FixedReader("NOPE"))


def test_safe_generation_hands_the_protected_prompt_to_edit(state: Any) -> None:
    """Issue #18: after safe mode rendered a replacement, Edit must start from it, not from the harmful word."""
    from textloc.apps.safety.check import check_prompt
    from textloc.ui import actions

    out = actions.generate(state, 'a sign that says "SHIT"', 0, STEPS, 3.0, True, "all")
    assert "SHIT" not in out.edit_prompt and out.old_text and out.old_text in out.edit_prompt
    assert not check_prompt(out.edit_prompt, state.detector, profile=state.model.profile).flagged
    assert "Protected prompt" in out.safety_md and "safety_report.json" in out.files[-1]
    # ... and Edit accepts it with safe mode still on (before: refused, a dead end)
    edited = actions.edit(state, out.edit_prompt, 0, STEPS, 3.0, True, out.old_text, "BYE", "all", None)
    assert edited.side_by_side.width > 2 * 64


def test_safe_edit_refuses_harmful_new_text(state: Any) -> None:
    from textloc.ui import actions

    with pytest.raises(InputError, match="Safe mode is on"):
        actions.edit(state, PROMPT, 0, STEPS, 3.0, True, "CAT", "SHIT", "all", None)


def test_a_missed_edit_returns_a_cross_with_the_suggestion_and_every_download(state: Any) -> None:
    import json
    from pathlib import Path

    from textloc.ui import actions

    out = actions.edit(state, PROMPT, 0, STEPS, 3.0, False, "CAT", "DOG", "preset", None)
    assert out.missed and out.status_md.startswith("✗") and "✓" not in out.status_md  # the stub reads NOPE
    assert "Try" in out.status_md
    names = [Path(f).name for f in out.files]
    assert names == ["source.png", "edited.png", "side_by_side.png", "plan.json", "metrics.json"]
    assert out.side_by_side_file == out.files[2]
    metrics = json.loads(Path(out.files[-1]).read_text())
    assert metrics["verdict"]["missed"] is True and metrics["verdict"]["read"] == "NOPE"
    for layer in metrics["layers"]:  # layers shown by name
        assert layer in out.metrics_md


def test_bad_settings_are_refused_before_the_model_runs(state: Any) -> None:
    from textloc.ui import actions

    with pytest.raises(InputError, match="prompt is empty"):
        actions.generate(state, "  ", 0, STEPS, 3.0, False, "all")
    with pytest.raises(InputError, match="whole number for the seed"):
        actions.generate(state, PROMPT, 1.5, STEPS, 3.0, False, "all")
    with pytest.raises(InputError, match="guidance scale"):
        actions.generate(state, PROMPT, 0, STEPS, float("nan"), False, "all")
    with pytest.raises(InputError, match="quoted texts"):
        actions.edit(state, PROMPT, 0, STEPS, 3.0, False, "DOG", "BYE", "all", None)


def test_random_seeds_are_valid_and_vary() -> None:
    from textloc.ui.actions import RANDOM_SEED_MAX, random_seed

    seeds = {random_seed() for _ in range(20)}
    assert all(0 <= s <= RANDOM_SEED_MAX for s in seeds) and len(seeds) > 1
