"""Model fingerprints tell models apart by their denoiser config, not only by their text-layer names (issue #13).

Pairs that share every text-layer name and kind -- tiny SD1.5/SD2 and PixArt-α/Σ here, SD3-medium/SD3.5-medium
in tests/test_layers_config.py -- must get different fingerprints; one architecture with other weights, or its
config saved and reloaded, must keep its fingerprint; and the fingerprints shipped in files must still match.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from textloc.core.engine import generate
from textloc.core.layers import denoiser_config, get_denoiser, list_text_layers, model_fingerprint
from textloc.core.plan import PatchPlan
from textloc.errors import PlanMismatchError
from textloc.models.presets import EMBEDDED_LOCALIZATION, load_localization
from textloc.models.tiny import build_tiny_pipeline

ROOT = Path(__file__).parents[1]


def _names(model) -> list[tuple[str, str]]:
    return [(layer.name, layer.kind) for layer in list_text_layers(model)]


@pytest.mark.parametrize(("a", "b"), [("sd15", "sd2"), ("pixart-alpha", "pixart-sigma")])
def test_same_layer_names_different_config_different_fingerprint(a: str, b: str) -> None:
    pa, pb = build_tiny_pipeline(a), build_tiny_pipeline(b)
    assert _names(pa) == _names(pb)  # what the old names-only fingerprint hashed: identical
    assert denoiser_config(pa) != denoiser_config(pb)
    assert model_fingerprint(pa) != model_fingerprint(pb)
    assert model_fingerprint(pa).split(":")[:2] == model_fingerprint(pb).split(":")[:2]  # Class:n still shared


def test_weights_do_not_change_the_fingerprint() -> None:
    a, b = build_tiny_pipeline("sd15", seed=0), build_tiny_pipeline("sd15", seed=1)
    assert not torch.equal(next(a.unet.parameters()), next(b.unet.parameters()))
    assert model_fingerprint(a) == model_fingerprint(b)


def test_config_saved_and_reloaded_keeps_the_fingerprint(tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    unet = build_tiny_pipeline("sdxl").unet
    unet.save_config(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["_diffusers_version"]  # private keys are in the file but not in the fingerprint
    reloaded = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(tmp_path))
    assert model_fingerprint(reloaded) == model_fingerprint(unet)


def test_omitted_and_explicit_default_values_agree() -> None:
    from diffusers import SD3Transformer2DModel

    small = {"sample_size": 8, "num_layers": 2, "attention_head_dim": 4, "num_attention_heads": 2,
             "joint_attention_dim": 8, "caption_projection_dim": 8, "pooled_projection_dim": 8, "pos_embed_max_size": 8}
    plain = SD3Transformer2DModel.from_config(small)
    explicit = SD3Transformer2DModel.from_config({**small, "qk_norm": None, "dual_attention_layers": []})
    dual = SD3Transformer2DModel.from_config({**small, "dual_attention_layers": [0]})
    assert denoiser_config(plain) == denoiser_config(explicit)
    assert "qk_norm" not in denoiser_config(plain) and denoiser_config(dual)["dual_attention_layers"] == [0]
    assert model_fingerprint(plain) == model_fingerprint(explicit) != model_fingerprint(dual)
    assert _names(plain) == _names(dual)  # SD3.5's extra attn2 is image-only: same text layers


def test_fingerprint_names_class_and_layer_count() -> None:
    pipe = build_tiny_pipeline("flux")
    cls, count, digest = model_fingerprint(pipe).split(":")
    assert cls == type(get_denoiser(pipe)).__name__ == "FluxTransformer2DModel"
    assert int(count) == len(list_text_layers(pipe)) == 2
    assert len(digest) == 12 and int(digest, 16) >= 0


def test_shipped_fingerprints_match_the_embedded_model() -> None:
    from textloc.models.loading import EMBEDDED_DIR, load_embedded

    if not (EMBEDDED_DIR / "model_index.json").exists():
        pytest.skip("embedded weights not in this checkout")
    pipe = load_embedded()
    fingerprint = model_fingerprint(pipe)
    shipped = json.loads(EMBEDDED_LOCALIZATION.read_text())["model_fingerprint"]
    assert shipped == fingerprint
    assert load_localization(EMBEDDED_LOCALIZATION, pipe)  # accepted, not "made for" another model
    for summary in sorted((ROOT / "docs").glob("localize_embedded*/summary.json")):
        assert json.loads(summary.read_text())["model_fingerprint"] == fingerprint, summary


def test_plan_with_the_old_names_only_fingerprint_is_refused() -> None:
    import hashlib

    pipe = build_tiny_pipeline("sd15")
    layers = list_text_layers(pipe)
    names_only = hashlib.sha1(json.dumps([(lay.name, lay.kind) for lay in layers]).encode()).hexdigest()[:12]
    old = f"UNet2DConditionModel:{len(layers)}:{names_only}"
    assert old != model_fingerprint(pipe)
    plan = PatchPlan(layers=[0], target_prompt='a sign that says "DOG"', model=old)
    with pytest.raises(PlanMismatchError, match="made for"):
        generate(pipe, 'a sign that says "CAT"', plan, num_inference_steps=1, height=32, width=32)
