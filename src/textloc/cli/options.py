"""CLI subcommands, one module per feature; each exposes ``register(app)``. Shared option types live here."""

from __future__ import annotations

from typing import Annotated

import typer

ModelOpt = Annotated[str, typer.Option("--model", "-m", help="embedded | local diffusers folder | hub id | tiny:ARCH")]
LayersOpt = Annotated[str, typer.Option(help="preset | auto | PATH/summary.json | all | layer names/indices")]
SeedOpt = Annotated[int, typer.Option(help="random seed")]
StepsOpt = Annotated[int | None, typer.Option(help="denoising steps (default: the pipeline's)")]
GuidanceOpt = Annotated[float | None, typer.Option(help="guidance scale (default: the pipeline's)")]


def bench_group(app: typer.Typer) -> typer.Typer:
    """The CLI's ``bench`` sub-app (``textloc.cli.app.bench_app``), created if ``app`` has none (e.g. in tests)."""
    for group in app.registered_groups:
        if group.name == "bench" and group.typer_instance is not None:
            return group.typer_instance
    bench = typer.Typer(no_args_is_help=True, help="Benchmarks.")
    app.add_typer(bench, name="bench")
    return bench
