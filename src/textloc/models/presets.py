"""The published localized layers, as named presets that check themselves against the model.

From "Precise Parameter Localization for Textual Generation in Diffusion Models" (ICLR 2025). Indices are in
execution order (see ``layers.list_text_layers``). A preset is a finding about *one* published model, so it
records that model's denoiser config (``layers.denoiser_config``: the values that differ from diffusers'
defaults, as diffusers registers them), its number of text layers and the layer *names* its indices map to,
and refuses any model that differs in one of them -- SD3.5-medium has SD3-medium's 24 joint blocks and layer
names, but not its config, so ``sd3-medium`` refuses it. A fine-tune (same config, other weights) is accepted.
The configs were checked in tests against the models' public config.json files, built on the meta device.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textloc.core.layers import denoiser_config, get_denoiser, list_text_layers, model_fingerprint
from textloc.core.plan import PatchPlan
from textloc.errors import InputError, PlanMismatchError


def _short(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def config_differences(published: Mapping[str, Any], actual: Mapping[str, Any]) -> list[str]:
    """``key=actual (published: value)`` for every key where two ``denoiser_config`` dicts disagree."""
    out = []
    for key in sorted(set(published) | set(actual)):
        if published.get(key, _DEFAULT) != actual.get(key, _DEFAULT):
            mine = _short(actual[key]) if key in actual else "default"
            theirs = _short(published[key]) if key in published else "default"
            out.append(f"{key}={mine} (published: {theirs})")
    return out


_DEFAULT = object()


@dataclass(frozen=True)
class Preset:
    """Published localized layers of one model, and the facts that identify that model."""

    name: str
    denoiser: str
    total_layers: int
    indices: tuple[int, ...]
    names: tuple[str, ...]
    start_step: int
    num_inference_steps: int
    description: str
    #: the published model (hub id) the layers were found on
    source: str = ""
    #: its denoiser's ``denoiser_config`` (values that differ from diffusers' defaults, lists for tuples)
    config: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def check(self, model: Any) -> list[str]:
        """The preset's layer names, after checking that ``model`` is the model the preset was published for."""
        denoiser = get_denoiser(model)
        layers = list_text_layers(denoiser)
        found = type(denoiser).__name__
        if found != self.denoiser or len(layers) != self.total_layers:
            raise PlanMismatchError(
                f"Preset {self.name!r} expects a {self.denoiser} with {self.total_layers} text layers, "
                f"but got a {found} with {len(layers)}"
            )
        differences = config_differences(self.config, denoiser_config(denoiser))
        if differences:
            raise PlanMismatchError(
                f"Preset {self.name!r} was published for {self.source}, but this {found}'s config differs: "
                + ", ".join(differences)
            )
        actual = tuple(layers[i].name for i in self.indices)
        if actual != self.names:
            raise PlanMismatchError(
                f"Preset {self.name!r}: layers {list(self.indices)} are {list(actual)}, expected {list(self.names)}"
            )
        return list(self.names)

    def plan(self, model: Any, target_prompt: str | list[str] | None = None, **overrides: Any) -> PatchPlan:
        """A ``PatchPlan`` for ``model`` with the preset's layers and default start step."""
        fields: dict[str, Any] = {"layers": self.check(model), "target_prompt": target_prompt,
                                  "start_step": self.start_step}
        fields.update(overrides)
        return PatchPlan(**fields)


# The published denoisers' configs (``unet/config.json`` / ``transformer/config.json`` on the Hugging Face hub)
# as ``denoiser_config`` reads them: only values that differ from diffusers' defaults. SD3-medium's are nearly
# all defaults (diffusers' SD3 defaults are SD3-medium); SD3.5-medium adds dual_attention_layers 0-12,
# qk_norm "rms_norm" and pos_embed_max_size 384. IF: diffusers registers encoder_hid_dim_type "text_proj".
_SDXL_BASE: dict[str, Any] = {
    "addition_embed_type": "text_time", "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "projection_class_embeddings_input_dim": 2816, "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}
_SD3_MEDIUM: dict[str, Any] = {
    "caption_projection_dim": 1536, "num_attention_heads": 24, "num_layers": 24, "pos_embed_max_size": 192,
}
_IF_I_XL: dict[str, Any] = {
    "act_fn": "gelu", "addition_embed_type": "text", "attention_head_dim": 64,
    "block_out_channels": [704, 1408, 2112, 2816], "cross_attention_dim": 2816, "cross_attention_norm": "group_norm",
    "down_block_types": ["ResnetDownsampleBlock2D", *["SimpleCrossAttnDownBlock2D"] * 3], "encoder_hid_dim": 4096,
    "encoder_hid_dim_type": "text_proj", "in_channels": 3, "layers_per_block": 3,
    "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "out_channels": 6, "resnet_time_scale_shift": "scale_shift",
    "sample_size": 64, "up_block_types": [*["SimpleCrossAttnUpBlock2D"] * 3, "ResnetUpsampleBlock2D"],
}

PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        Preset(
            name="sdxl",
            denoiser="UNet2DConditionModel",
            total_layers=70,
            indices=(55, 56, 57),
            names=tuple(f"up_blocks.0.attentions.2.transformer_blocks.{i}.attn2" for i in (1, 2, 3)),
            start_step=4,
            num_inference_steps=50,
            description="SDXL base: cross-attention layers 55-57 of 70 (execution order)",
            source="stabilityai/stable-diffusion-xl-base-1.0",
            config=_SDXL_BASE,
        ),
        Preset(
            name="sd3-medium",
            denoiser="SD3Transformer2DModel",
            total_layers=24,
            indices=(10,),
            names=("transformer_blocks.10.attn",),
            start_step=2,
            num_inference_steps=28,
            description="SD3-medium: joint-attention block 10 of 24",
            source="stabilityai/stable-diffusion-3-medium-diffusers",
            config=_SD3_MEDIUM,
        ),
        Preset(
            name="if-i-xl",
            denoiser="UNet2DConditionModel",
            total_layers=22,
            indices=(17,),
            names=("up_blocks.1.attentions.3",),
            start_step=2,
            num_inference_steps=50,
            description="DeepFloyd IF-I-XL: attention layer 17 of 22 (added text K/V)",
            source="DeepFloyd/IF-I-XL-v1.0",
            config=_IF_I_XL,
        ),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise PlanMismatchError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_for(model: Any) -> Preset | None:
    """The preset published for ``model`` (its config, layer count and names), if any: ``--layers preset``."""
    return preset_status(model)[0]


def preset_status(model: Any) -> tuple[Preset | None, list[str]]:
    """The preset published for ``model`` (or ``None``), and why each preset for its denoiser class refuses it.

    The reasons let a user see that e.g. SD3.5-medium is *not* SD3-medium (its config differs in
    dual_attention_layers, qk_norm and pos_embed_max_size) instead of only "no preset".
    """
    found = type(get_denoiser(model)).__name__
    refusals: list[str] = []
    for preset in PRESETS.values():
        try:
            preset.check(model)
        except PlanMismatchError as err:
            if preset.denoiser == found:
                refusals.append(str(err))
            continue
        return preset, []
    return None, refusals


#: Localization result shipped with the embedded model (written by `textloc localize --model embedded`); the
#: embedded model's profile names it too, and ``choose_layers`` asks the profiles.
EMBEDDED_LOCALIZATION = Path(__file__).parent / "embedded" / "localized.json"


def _shipped_localizations(model: Any) -> list[Path]:
    """Localizations that shipped models' profiles name, ``model``'s own profile first (fingerprints decide)."""
    from textloc.models.profiles import profile_for, profiles

    paths = [profile_for(model).localization, *(profile.localization for profile in profiles())]
    out: list[Path] = []
    for path in paths:
        if path is not None and Path(path).is_file() and Path(path) not in out:
            out.append(Path(path))
    return out


def load_localization(path: str | Path, model: Any | None = None, *, full_score: bool = False) -> list[str]:
    """Chosen layer names from a localization ``summary.json``; checks it was made for ``model``.

    ``full_score=True`` returns instead the smallest top-k set of the k-best curve whose score reaches that
    of patching *all* layers (the paper's criterion); the summary's ``chosen_layers`` may be smaller, since
    selection stops at ``fraction`` of that score. Editing wants the full-score set: on the embedded model the
    layer that picks the glyphs (4) alone misses edits that change the string's length, which layers 0 and 1
    decide (README, editing results).
    """
    path = Path(path)
    try:
        summary = json.loads(path.read_text())
        names = list(summary["chosen_layers"])
        if full_score:
            target = float(summary["all_layers_score"])
            reaching = [row for row in summary["curve"] if row["layers"] and float(row["exact"]) >= target]
            names = list(min(reaching, key=lambda row: len(row["layers"]))["layers"]) if reaching else names
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise InputError(f"{path} is not a localization summary.json ({type(err).__name__})") from None
    if model is not None and summary.get("model_fingerprint") not in (None, model_fingerprint(model)):
        raise PlanMismatchError(
            f"{path} was made for {summary.get('model_fingerprint')}, but the model is {model_fingerprint(model)}"
        )
    return names


def choose_layers(model: Any, spec: str | Sequence[str | int] | None = "preset", *,
                  full_score: bool = False) -> list[str]:
    r"""Resolve a ``--layers`` value to layer names of ``model``.

    Args:
        spec: ``"preset"`` / ``"auto"``: the preset published for this model, or the localization its profile
            ships (the embedded model's); a path to a localization ``summary.json``; ``"all"``: every text layer; or
            layer names / execution-order indices (a list, or one comma-separated string).
        full_score: with ``preset``/``auto`` on the embedded model, take the smallest top-k set of its shipped
            localization that reaches the all-layers score instead of the selected set (``load_localization``);
            editing uses this. A ``summary.json`` you pass is always used as selected.
    """
    from textloc.core.layers import resolve_layers

    if spec is None or spec in ("preset", "auto"):
        preset, refusals = preset_status(model)
        if preset is not None:
            return preset.check(model)
        for path in _shipped_localizations(model):
            try:
                return load_localization(path, model, full_score=full_score)
            except PlanMismatchError:
                continue
        why = f" ({'; '.join(refusals)})" if refusals else ""
        raise PlanMismatchError(
            f"No published preset or shipped localization fits this model{why}; run `textloc localize` and pass "
            "--layers PATH/summary.json"
        )
    if isinstance(spec, str) and spec == "all":
        return [layer.name for layer in list_text_layers(model)]
    if isinstance(spec, str) and (spec.endswith(".json") or Path(spec).is_file()):
        if not Path(spec).is_file():
            raise InputError(f"Layer file {spec} does not exist")
        names = load_localization(spec, model)
        return [layer.name for layer in resolve_layers(model, names)]
    refs = [s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec)
    if not refs:
        raise InputError("Expected at least one layer in --layers")
    return [layer.name for layer in resolve_layers(model, refs)]
