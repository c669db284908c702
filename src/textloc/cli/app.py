"""``textloc`` command line. Each command is a thin shell over the public Python API.

Errors: any ``TextlocError`` (and a few predictable OS errors) becomes one line on stderr and exit code 2; a
traceback only ever means a bug. Outputs are written to a temporary name and renamed into place, so a failed
command never leaves a half-written file.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

# The CLI's stderr is for our one-line errors; library chatter (e.g. transformers noting that torchvision is
# absent) is hidden unless the user asks for it via these variables.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import click  # noqa: E402
import typer  # noqa: E402
from rich.console import Console
from rich.table import Table

from textloc.cli.options import GuidanceOpt, ModelOpt, SeedOpt, StepsOpt
from textloc.errors import InputError, TextlocError
from textloc.runs.io import save_image_atomic

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__.splitlines()[0])
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: editing, safety, fine-tuning.")
app.add_typer(bench_app, name="bench")
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)



def _fail(message: str) -> None:
    from rich.markup import escape

    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True, markup=True)
    sys.exit(2)


@app.command()
def layers(
    model: ModelOpt = "embedded",
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List the attention layers that receive text, in execution order."""
    from textloc.core.layers import get_denoiser, list_text_layers, model_fingerprint
    from textloc.models.loading import load_pipeline

    pipe = load_pipeline(model)
    entries = list_text_layers(pipe)
    denoiser = get_denoiser(pipe)
    if as_json:
        payload = {"model": model, "denoiser": type(denoiser).__name__, "fingerprint": model_fingerprint(pipe),
                   "denoiser_params": sum(p.numel() for p in denoiser.parameters()),
                   "layers": [entry.to_dict() for entry in entries]}
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
        return
    table = Table(title=f"{model}: {len(entries)} text layers of {type(denoiser).__name__}")
    for column in ("#", "module", "kind", "text K/V params", "layer params", "share"):
        table.add_column(column, justify="right" if column not in ("module", "kind") else "left")
    for e in entries:
        table.add_row(str(e.index), e.name, e.kind, f"{e.text_kv_params:,}", f"{e.params:,}", f"{e.share:.3%}")
    console.print(table)


@app.command()
def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="the prompt")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output PNG")],
    model: ModelOpt = "embedded",
    seed: SeedOpt = 0,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    plan: Annotated[Path | None, typer.Option(help="patch plan JSON to run under")] = None,
    target: Annotated[str | None, typer.Option(help="target prompt (overrides the plan's)")] = None,
) -> None:
    """Render one image, optionally under a patch plan."""
    import torch

    from textloc.core.engine import generate as run_plan
    from textloc.core.plan import PatchPlan
    from textloc.models.loading import load_pipeline

    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise InputError(f"Expected --out to end in .png or .jpg, but got {out}")
    patch = None
    if plan is not None:
        if not plan.exists():
            raise InputError(f"Plan file {plan} does not exist")
        patch = PatchPlan.from_json(plan)
    pipe = load_pipeline(model)
    kwargs: dict = {"generator": torch.Generator().manual_seed(seed)}
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    result = run_plan(pipe, prompt, patch, target_prompt=target, **kwargs)
    save_image_atomic(result.images[0], out)
    fired = f" (patched {len(result.fired)} layer(s))" if result.fired else ""
    console.print(f"wrote {out}{fired}")


@app.command("train-embedded")
def train_embedded(
    out: Annotated[Path, typer.Option(help="run folder (checkpoints, samples, log); resumes if it exists")] = Path(
        "runs/embedded"
    ),
    config: Annotated[Path | None, typer.Option(help="training config JSON (default: the committed one)")] = None,
    max_minutes: Annotated[float | None, typer.Option(help="stop after this many minutes (resume later)")] = None,
    export: Annotated[Path | None, typer.Option(help="copy the final EMA pipeline here")] = None,
) -> None:
    """Train (or resume training) the embedded model with the committed recipe."""
    import shutil

    from textloc.models.embedded.train import TrainConfig, train

    cfg = TrainConfig.load(config or Path(__file__).parents[1] / "models" / "embedded" / "train_config.json")
    folder = train(cfg, out, max_minutes)
    if export:
        shutil.copytree(folder, export, dirs_exist_ok=True)
    console.print(f"EMA pipeline in {folder}")


@app.command("eval-embedded")
def eval_embedded(
    n: Annotated[int, typer.Option(help="samples per group")] = 200,
    seed: Annotated[int, typer.Option(help="evaluation seed (fresh by default)")] = 12345,
    out: Annotated[Path, typer.Option(help="folder for results.json and the sample grid")] = Path("runs/eval"),
    model: ModelOpt = "embedded",
    steps: Annotated[int, typer.Option(help="denoising steps")] = 20,
    ocr: Annotated[str, typer.Option(help="OCR backend")] = "rapidocr",
) -> None:
    """Measure the embedded model: word accuracy, CER, background/text colour accuracy."""
    from textloc.models.embedded.evaluate import evaluate
    from textloc.models.loading import load_pipeline

    pipe = load_pipeline(model)
    results = evaluate(pipe, n=n, seed=seed, out=out, steps=steps, ocr=ocr)
    table = Table(title=f"eval-embedded (n={n} per group, seed={seed})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results["summary"].items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"wrote {out / 'results.json'} and {out / 'samples.png'}")


def _quiet_libraries() -> None:
    """No loading bars from diffusers/transformers on the CLI: stderr carries our messages only."""
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.disable_progress_bar()


_quiet_libraries()


def _register_feature_commands() -> None:
    """Feature modules under ``textloc.cli`` add their own subcommands (one home per feature)."""
    import importlib

    for name in ("localize", "edit", "safety", "finetune", "ui"):
        try:
            module = importlib.import_module(f"textloc.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"textloc.cli.{name}":
                raise
            continue
        module.register(app)


_register_feature_commands()


def main() -> None:
    """Entry point: run the app, turning expected errors into one line and exit code 2."""
    try:
        app(standalone_mode=False)
    except TextlocError as err:
        _fail(str(err))
    except typer.Exit as exit_:
        sys.exit(exit_.exit_code)
    except typer.Abort:
        _fail("aborted")
    except RuntimeError as err:
        from textloc.eval.ocr import OCRUnavailableError

        if not isinstance(err, OCRUnavailableError):
            raise
        _fail(str(err))
    except FileNotFoundError as err:
        _fail(f"file not found: {err.filename}")
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        _fail("interrupted")


if __name__ == "__main__":  # pragma: no cover
    main()
