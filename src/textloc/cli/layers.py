"""``textloc layers``: the text-layer table of a model, with its fingerprint and the preset published for it.

``--config CONFIG.json`` reads a denoiser's config.json alone and builds the model on the ``meta`` device (no
weights, seconds, even for FLUX.1's 12B parameters), so a user can plan a localization -- how many text layers,
their names, whether a published preset applies -- before downloading tens of GB.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

ModelChoice = Annotated[
    str | None,
    typer.Option("--model", "-m", help="embedded | local diffusers folder | hub id | tiny:ARCH (default: embedded)"),
]
ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", help="a denoiser's config.json (or a folder with one): built without weights"),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def describe(model: Any) -> dict[str, Any]:
    """The payload of ``textloc layers``: denoiser class, fingerprint, matching preset (or why none), layers."""
    from textloc.core.layers import get_denoiser, list_text_layers, model_fingerprint
    from textloc.models.presets import preset_status

    denoiser = get_denoiser(model)
    entries = list_text_layers(model)
    preset, refusals = preset_status(model)
    return {
        "denoiser": type(denoiser).__name__,
        "fingerprint": model_fingerprint(model),
        "preset": None if preset is None else preset.name,
        "preset_layers": [] if preset is None else [[i, name] for i, name in zip(preset.indices, preset.names,
                                                                                    strict=True)],
        "preset_refusals": refusals,
        "denoiser_params": sum(p.numel() for p in denoiser.parameters()),
        "layers": [entry.to_dict() for entry in entries],
    }


def _print_table(source: str, payload: dict[str, Any], *, from_config: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    layers = payload["layers"]
    table = Table(title=escape(f"{source}: {len(layers)} text layers of {payload['denoiser']}"))
    for column in ("#", "module", "kind", "text K/V params", "layer params", "share"):
        table.add_column(column, justify="right" if column not in ("module", "kind") else "left")
    for e in layers:
        table.add_row(str(e["index"]), e["name"], e["kind"], f"{e['text_kv_params']:,}", f"{e['params']:,}",
                      f"{e['share']:.3%}")
    console.print(table)
    lines = [f"fingerprint: {payload['fingerprint']}", f"denoiser parameters: {payload['denoiser_params']:,}"]
    if payload["preset"] is not None:
        picked = ", ".join(f"{i} = {name}" for i, name in payload["preset_layers"])
        lines.append(f"preset: {payload['preset']} (layers {picked})")
    else:
        lines.append("preset: none" + "".join(f"\n  {reason}" for reason in payload["preset_refusals"]))
    if from_config:
        lines.append("built from the config alone on the meta device: no weights were read")
    for line in lines:
        console.print(escape(line), highlight=False, soft_wrap=True)


def layers(model: ModelChoice = None, config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """List the attention layers that receive text, in execution order, with the fingerprint and preset."""
    from textloc.errors import InputError

    if model is not None and config is not None:
        raise InputError("Expected --model or --config, but got both")
    if config is not None:
        from textloc.models.loading import denoiser_from_config

        source, built = str(config), denoiser_from_config(config)
    else:
        from textloc.models.loading import load_pipeline

        source = model or "embedded"
        built = load_pipeline(source)
    payload = {"model": None if config is not None else source,
               "config": None if config is None else str(config), **describe(built)}
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    _print_table(source, payload, from_config=config is not None)


def register(app: typer.Typer) -> None:
    """Add ``layers`` to ``app`` (``textloc.cli.app`` calls this)."""
    app.command("layers")(layers)
