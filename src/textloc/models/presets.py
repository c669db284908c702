"""The published localized layers, as named presets that check themselves against the model.

From "Precise Parameter Localization for Textual Generation in Diffusion Models" (ICLR 2025). Indices are in
execution order (see ``layers.list_text_layers``); each preset also records the layer *names* the index must
map to, and the total number of text layers, so applying it to a model whose layout differs fails clearly
instead of patching the wrong layer. The mappings are confirmed in tests on structure-faithful tiny models.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textloc.core.layers import get_denoiser, list_text_layers, model_fingerprint
from textloc.core.plan import PatchPlan
from textloc.errors import InputError, PlanMismatchError


@dataclass(frozen=True)
class Preset:
    """Published localized layers of one model."""

    name: str
    denoiser: str
    total_layers: int
    indices: tuple[int, ...]
    names: tuple[str, ...]
    start_step: int
    num_inference_steps: int
    description: str

    def check(self, model: Any) -> list[str]:
        """The preset's layer names, after checking that ``model`` has the published layout."""
        denoiser = get_denoiser(model)
        layers = list_text_layers(denoiser)
        found = type(denoiser).__name__
        if found != self.denoiser or len(layers) != self.total_layers:
            raise PlanMismatchError(
                f"Preset {self.name!r} expects a {self.denoiser} with {self.total_layers} text layers, "
                f"but got a {found} with {len(layers)}"
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
        ),
    )
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise PlanMismatchError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return PRESETS[name]


def preset_for(model: Any) -> Preset | None:
    """The preset whose layout ``model`` has, if any (so ``--layers preset`` can pick it automatically)."""
    for preset in PRESETS.values():
        try:
            preset.check(model)
        except PlanMismatchError:
            continue
        return preset
    return None


#: Localization result shipped with the embedded model (written by `textloc localize --model embedded`).
EMBEDDED_LOCALIZATION = Path(__file__).parent / "embedded" / "localized.json"


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
        spec: ``"preset"`` / ``"auto"``: the published preset for this model's layout, or for the embedded model
            its shipped localization; a path to a localization ``summary.json``; ``"all"``: every text layer; or
            layer names / execution-order indices (a list, or one comma-separated string).
        full_score: with ``preset``/``auto`` on the embedded model, take the smallest top-k set of its shipped
            localization that reaches the all-layers score instead of the selected set (``load_localization``);
            editing uses this. A ``summary.json`` you pass is always used as selected.
    """
    from textloc.core.layers import resolve_layers

    if spec is None or spec in ("preset", "auto"):
        preset = preset_for(model)
        if preset is not None:
            return preset.check(model)
        if EMBEDDED_LOCALIZATION.exists():
            try:
                return load_localization(EMBEDDED_LOCALIZATION, model, full_score=full_score)
            except PlanMismatchError:
                pass
        raise PlanMismatchError(
            "No published preset or shipped localization fits this model; run `textloc localize` and pass "
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
