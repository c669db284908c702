"""``textloc layers --config``: the text-layer table, fingerprint and preset of a real model from its config alone.

The configs below are the published denoiser configs -- ``unet/config.json`` / ``transformer/config.json`` of
stabilityai/stable-diffusion-xl-base-1.0, stabilityai/stable-diffusion-3-medium-diffusers,
stabilityai/stable-diffusion-3.5-medium, DeepFloyd/IF-I-XL-v1.0 and black-forest-labs/FLUX.1-dev on the Hugging
Face hub -- written out here (private ``_diffusers_version`` keys left out) so that the tests run offline. They
are built on the meta device (no weights), which is also what the command does. They pin the facts the presets
rest on: 70 / 24 / 22 / 57 text layers, the published layer names at the preset indices, and SD3.5-medium --
same 24 joint blocks and layer names as SD3-medium -- refused by the ``sd3-medium`` preset.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import run_main
from typer.testing import CliRunner

from textloc.cli.app import app
from textloc.core.layers import list_text_layers, model_fingerprint
from textloc.errors import InputError, PlanMismatchError
from textloc.models.loading import denoiser_from_config
from textloc.models.presets import choose_layers, get_preset, preset_for, preset_status

SDXL_BASE: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel", "act_fn": "silu", "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "center_input_sample": False, "class_embed_type": None,
    "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3, "cross_attention_dim": 2048,
    "cross_attention_norm": None, "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
    "mid_block_only_cross_attention": None, "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05, "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None,
    "only_cross_attention": False, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "resnet_out_scale_factor": 1.0, "resnet_skip_time_act": False, "resnet_time_scale_shift": "default",
    "sample_size": 128, "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}
SD3_MEDIUM: dict[str, Any] = {
    "_class_name": "SD3Transformer2DModel", "attention_head_dim": 64, "caption_projection_dim": 1536,
    "in_channels": 16, "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 24, "out_channels": 16,
    "patch_size": 2, "pooled_projection_dim": 2048, "pos_embed_max_size": 192, "sample_size": 128,
}
SD35_MEDIUM: dict[str, Any] = {
    **SD3_MEDIUM, "dual_attention_layers": list(range(13)), "pos_embed_max_size": 384, "qk_norm": "rms_norm",
}
IF_I_XL: dict[str, Any] = {
    "_class_name": "UNet2DConditionModel", "act_fn": "gelu", "addition_embed_type": "text",
    "addition_embed_type_num_heads": 64, "attention_head_dim": 64, "block_out_channels": [704, 1408, 2112, 2816],
    "center_input_sample": False, "class_embed_type": None, "cross_attention_dim": 2816,
    "cross_attention_norm": "group_norm",
    "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                         "SimpleCrossAttnDownBlock2D"],
    "downsample_padding": 1, "dual_cross_attention": False, "encoder_hid_dim": 4096, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 3, "layers_per_block": 3, "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
    "num_class_embeds": None, "only_cross_attention": False, "out_channels": 6,
    "resnet_time_scale_shift": "scale_shift", "sample_size": 64,
    "up_block_types": ["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                       "ResnetUpsampleBlock2D"],
    "upcast_attention": False, "use_linear_projection": False,
}
FLUX_DEV: dict[str, Any] = {
    "_class_name": "FluxTransformer2DModel", "attention_head_dim": 128, "guidance_embeds": True, "in_channels": 64,
    "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19, "num_single_layers": 38,
    "patch_size": 1, "pooled_projection_dim": 768,
}

# name: (config, text layers, preset or None)
MODELS: dict[str, tuple[dict[str, Any], int, str | None]] = {
    "sdxl-base": (SDXL_BASE, 70, "sdxl"),
    "sd3-medium": (SD3_MEDIUM, 24, "sd3-medium"),
    "sd3.5-medium": (SD35_MEDIUM, 24, None),
    "if-i-xl": (IF_I_XL, 22, "if-i-xl"),
    "flux.1-dev": (FLUX_DEV, 57, None),
}
runner = CliRunner()
_BUILT: dict[str, Any] = {}


def _config_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(MODELS[name][0]))
    return path


def _built(name: str, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Each model built once per session (SDXL takes seconds even on the meta device)."""
    if name not in _BUILT:
        _BUILT[name] = denoiser_from_config(_config_file(tmp_path_factory.mktemp("cfg"), name))
    return _BUILT[name]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_public_configs_give_the_published_counts_and_presets(name: str, tmp_path_factory) -> None:
    _, count, preset = MODELS[name]
    model = _built(name, tmp_path_factory)
    assert next(model.parameters()).device.type == "meta"  # no weights were made
    layers = list_text_layers(model)
    assert len(layers) == count
    assert [layer.index for layer in layers] == list(range(count))
    found = preset_for(model)
    assert (found.name if found else None) == preset
    if preset is not None:
        assert choose_layers(model, "preset") == list(get_preset(preset).names)


def test_published_layer_names_at_the_preset_indices(tmp_path_factory) -> None:
    sdxl = list_text_layers(_built("sdxl-base", tmp_path_factory))
    assert [sdxl[i].name for i in (55, 56, 57)] == [
        f"up_blocks.0.attentions.2.transformer_blocks.{i}.attn2" for i in (1, 2, 3)]
    # execution order: 24 down (4 + 20), 10 mid, then up -- not registration order (up_blocks before mid_block)
    assert [sdxl[i].name.split(".")[0] for i in (23, 24, 33, 34)] == ["down_blocks", "mid_block", "mid_block",
                                                                      "up_blocks"]
    assert list_text_layers(_built("sd3-medium", tmp_path_factory))[10].name == "transformer_blocks.10.attn"
    if_layers = list_text_layers(_built("if-i-xl", tmp_path_factory))
    assert if_layers[17].name == "up_blocks.1.attentions.3" and if_layers[17].kind == "added_kv"
    flux = list_text_layers(_built("flux.1-dev", tmp_path_factory))
    assert [layer.kind for layer in flux].count("joint_attention") == 19
    assert flux[19].name == "single_transformer_blocks.0.attn"


def test_sd35_medium_is_not_sd3_medium(tmp_path_factory) -> None:
    sd3, sd35 = _built("sd3-medium", tmp_path_factory), _built("sd3.5-medium", tmp_path_factory)
    assert [lay.name for lay in list_text_layers(sd3)] == [lay.name for lay in list_text_layers(sd35)]
    assert model_fingerprint(sd3) != model_fingerprint(sd35)
    with pytest.raises(PlanMismatchError, match="config differs.*dual_attention_layers.*qk_norm"):
        get_preset("sd3-medium").check(sd35)
    preset, refusals = preset_status(sd35)
    assert preset is None and len(refusals) == 1 and "sd3-medium" in refusals[0]
    with pytest.raises(PlanMismatchError, match="No published preset"):
        choose_layers(sd35, "preset")


def test_fingerprints_of_the_public_models_are_distinct(tmp_path_factory) -> None:
    fingerprints = {name: model_fingerprint(_built(name, tmp_path_factory)) for name in MODELS}
    assert len(set(fingerprints.values())) == len(MODELS)
    assert fingerprints["sdxl-base"].startswith("UNet2DConditionModel:70:")
    assert fingerprints["flux.1-dev"].startswith("FluxTransformer2DModel:57:")


def test_cli_config_json_reports_layers_fingerprint_and_preset(tmp_path: Path, tmp_path_factory) -> None:
    result = runner.invoke(app, ["layers", "--config", str(_config_file(tmp_path, "if-i-xl")), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["denoiser"] == "UNet2DConditionModel" and len(payload["layers"]) == 22
    assert payload["preset"] == "if-i-xl" and payload["preset_layers"] == [[17, "up_blocks.1.attentions.3"]]
    assert payload["fingerprint"] == model_fingerprint(_built("if-i-xl", tmp_path_factory))
    assert payload["model"] is None and payload["config"].endswith("if-i-xl.json")
    assert payload["denoiser_params"] > 4_000_000_000  # the real IF-I-XL size, with no memory spent on it


def test_cli_config_table_says_why_no_preset(tmp_path: Path) -> None:
    folder = tmp_path / "sd35" / "transformer"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(SD35_MEDIUM))
    result = runner.invoke(app, ["layers", "--config", str(tmp_path / "sd35")])  # a model folder works too
    assert result.exit_code == 0, result.output
    assert "transformer_blocks.23.attn" in result.output and "fingerprint: SD3Transformer2DModel:24:" in result.output
    assert "preset: none" in result.output and "dual_attention_layers" in result.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "is not JSON"),
        ("[1, 2]", "`_class_name`"),
        ('{"in_channels": 4}', "`_class_name`"),
        ('{"_class_name": "NoSuchModel2D"}', "NoSuchModel2D is not a diffusers class"),
        ('{"_class_name": "AutoencoderKL"}', "AutoencoderKL is a diffusers class textloc does not support"),
        ('{"_class_name": "UNet2DConditionModel", "down_block_types": ["DownBlock2D"], "block_out_channels": [8, 16]}',
         "Could not build UNet2DConditionModel"),
        ('{"_class_name": "SD3Transformer2DModel", "num_layers": 1, "num_attention_heads": 2, "attention_head_dim": 4, '
         '"caption_projection_dim": 8, "joint_attention_dim": 8, "pooled_projection_dim": 8, "in_channels": 4, '
         '"patch_size": 3, "sample_size": 4, "pos_embed_max_size": 1}', "Could not"),
    ],
)
def test_cli_bad_config_is_one_line_and_exit_2(content, message, tmp_path, capsys) -> None:
    path = tmp_path / "config.json"
    if content is not None:
        path.write_text(content)
    code, err = run_main(["layers", "--config", str(path)], capsys)
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    with pytest.raises(InputError):
        denoiser_from_config(path)


def test_cli_model_and_config_together_is_refused(tmp_path, capsys) -> None:
    code, err = run_main(["layers", "--model", "tiny:sd15", "--config", str(_config_file(tmp_path, "sd3-medium"))],
                         capsys)
    assert code == 2 and "--model or --config" in err
