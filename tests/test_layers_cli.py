"""Layer registry (golden names, execution order, counts), presets and the `layers`/`generate` commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_main
from typer.testing import CliRunner

from textloc.cli.app import app
from textloc.core.layers import list_text_layers, model_fingerprint
from textloc.errors import PlanMismatchError, UnsupportedModelError
from textloc.models.embedded.pipeline import build_untrained
from textloc.models.presets import PRESETS, choose_layers, get_preset, preset_for
from textloc.models.tiny import TINY_ARCHITECTURES, build_structure_faithful_denoiser, build_tiny_pipeline

GOLDEN = json.loads((Path(__file__).parent / "golden" / "layers.json").read_text())
runner = CliRunner()


def _build(key: str):
    kind, _, name = key.partition(":")
    if kind == "tiny":
        return build_tiny_pipeline(name)
    if kind == "faithful":
        return build_structure_faithful_denoiser(name)
    return build_untrained()


@pytest.mark.parametrize("key", sorted(GOLDEN))
def test_layer_names_are_pinned(key: str) -> None:
    layers = list_text_layers(_build(key))
    assert [[layer.name, layer.kind] for layer in layers] == GOLDEN[key]
    assert [layer.index for layer in layers] == list(range(len(layers)))
    assert all(0 < layer.text_kv_params <= layer.params for layer in layers)
    assert all(0 < layer.share < 1 for layer in layers)


def test_unet_execution_order_is_down_mid_up_not_registration_order() -> None:
    names = [layer.name for layer in list_text_layers(build_untrained())]
    mid = next(i for i, n in enumerate(names) if n.startswith("mid_block"))
    assert all(n.startswith("down_blocks") for n in names[:mid])
    assert all(n.startswith("up_blocks") for n in names[mid + 1 :])


@pytest.mark.parametrize(("preset", "faithful"), [("sdxl", "sdxl"), ("sd3-medium", "sd3-medium"),
                                                  ("if-i-xl", "if-i-xl")])
def test_structure_faithful_models_have_the_preset_layers_but_not_the_published_config(preset: str,
                                                                                       faithful: str) -> None:
    """Tiny widths keep the layout (count, names at the preset's indices) but are not the published model."""
    model = build_structure_faithful_denoiser(faithful)
    layers = list_text_layers(model)
    p = get_preset(preset)
    assert len(layers) == p.total_layers
    assert [layers[i].name for i in p.indices] == list(p.names)
    with pytest.raises(PlanMismatchError, match="config differs"):
        p.check(model)
    assert preset_for(model) is None
    with pytest.raises(PlanMismatchError, match=f"No published preset.*{preset}"):
        choose_layers(model, "preset")


def test_sdxl_preset_is_the_published_layers() -> None:
    assert PRESETS["sdxl"].indices == (55, 56, 57)
    assert PRESETS["sdxl"].names == tuple(f"up_blocks.0.attentions.2.transformer_blocks.{i}.attn2" for i in (1, 2, 3))


def test_preset_on_wrong_model_fails_clearly() -> None:
    with pytest.raises(PlanMismatchError, match="expects a UNet2DConditionModel with 70"):
        get_preset("sdxl").check(build_tiny_pipeline("sdxl"))
    with pytest.raises(PlanMismatchError):
        get_preset("sd3-medium").plan(build_tiny_pipeline("sd3"))


def test_unsupported_model_names_what_is_supported() -> None:
    import torch

    with pytest.raises(UnsupportedModelError, match="supports"):
        list_text_layers(torch.nn.Linear(2, 2))


def test_fingerprint_differs_between_models() -> None:
    assert model_fingerprint(build_tiny_pipeline("sd15")) != model_fingerprint(build_tiny_pipeline("sdxl"))


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_cli_layers_json_for_every_tiny_architecture(arch: str) -> None:
    result = runner.invoke(app, ["layers", "--model", f"tiny:{arch}", "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert [entry["name"] for entry in payload["layers"]] == [n for n, _ in GOLDEN[f"tiny:{arch}"]]
    assert payload["fingerprint"] == model_fingerprint(build_tiny_pipeline(arch))
    assert payload["preset"] is None and payload["config"] is None  # tiny models are no published model


def test_cli_layers_table() -> None:
    result = runner.invoke(app, ["layers", "--model", "tiny:sd3"])
    assert result.exit_code == 0
    assert "transformer_blocks.1.attn" in result.output and "joint_attention" in result.output


def test_cli_generate_with_plan(tmp_path) -> None:
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"layers": [0, 1], "target_prompt": 'a sign that says "DOG"'}))
    out = tmp_path / "img.png"
    result = runner.invoke(app, ["generate", "--model", "tiny:sd15", "--prompt", 'a sign that says "CAT"',
                                 "--steps", "2", "--plan", str(plan), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.exists() and "patched 2 layer" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["layers", "--model", "/definitely/not/here"], "neither"),
        (["layers", "--model", "tiny:nope"], "Unknown tiny architecture"),
        (["generate", "--model", "tiny:sd15", "--prompt", "x", "--out", "o.png", "--plan", "missing.json"],
         "does not exist"),
        (["generate", "--model", "tiny:sd15", "--prompt", "x", "--out", "o.txt"], "Expected --out"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = run_main(args, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists()


def test_cli_plan_for_other_model_and_bad_layer(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.json").write_text(json.dumps({"layers": ["nope"], "target_prompt": "y"}))
    code, err = run_main(["generate", "--model", "tiny:sd15", "--prompt", "x", "--steps", "2", "--plan", "p.json",
                       "--out", "o.png"], capsys)
    assert code == 2 and "valid layers" in err
    (tmp_path / "q.json").write_text(json.dumps({"layers": [0], "target_prompt": "y", "model": "Other:1:abc"}))
    code, err = run_main(["generate", "--model", "tiny:sd15", "--prompt", "x", "--steps", "2", "--plan", "q.json",
                       "--out", "o.png"], capsys)
    assert code == 2 and "made for" in err
    assert not (tmp_path / "o.png").exists()


def test_cli_hub_id_offline_is_one_line(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    code, err = run_main(["layers", "--model", "nobody/no-such-model"], capsys)
    assert code == 2 and "Could not download 'nobody/no-such-model'" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_folder_that_is_not_a_pipeline(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk").mkdir()
    code, err = run_main(["layers", "--model", str(tmp_path / "junk")], capsys)
    assert code == 2 and "not a diffusers pipeline folder" in err
