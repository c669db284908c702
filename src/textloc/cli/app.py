"""``textloc`` command line. Each command is a thin shell over the public Python API.

Errors are mapped in exactly one place, :func:`main`:

* a usage error (unknown command or option, missing or malformed value) prints click's short usage message
  and exits 2;
* any ``TextlocError``, an ``OSError`` the environment caused (read-only, a file in the way, a name too long,
  a full disk), a file that is not UTF-8 or not JSON: one line on stderr, exit 2;
* Ctrl-C: one line, exit 130 (run folders resume, so the same command continues the work);
* anything else is a bug: its traceback, exit 1. ``textloc --debug …`` shows the traceback of every error.

Start-up: importing this module imports neither torch nor diffusers (commands import them when they run), so
``textloc --help`` is quick; ``benchmarks/bench_cli_startup.py`` measures it. Outputs are written to a
temporary name and renamed into place, so a failed command never leaves a half-written file.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

# The CLI's stderr is for our one-line errors; library chatter (e.g. transformers noting that torchvision is
# absent) is hidden unless the user asks for it via these variables.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import typer  # noqa: E402

from textloc.cli.options import (  # noqa: E402
    GuidanceOpt,
    ModelOpt,
    OcrOpt,
    OcrOrNoneOpt,
    SeedOpt,
    StepsOpt,
    check_for_model,
    check_text_file,
    count_option,
    in_file_option,
    number_option,
    out_dir_option,
    out_file_option,
    seed_option,
    show_progress,
    steps_option,
)
from textloc.errors import InputError, TextlocError, describe_decode_error, describe_os_error  # noqa: E402

try:  # typer >= 0.16 vendors click as typer._click; older typer raises the real click's exceptions
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click.exceptions import ClickException

INTERRUPTED = "interrupted; run the same command again to resume"

# rich_markup_mode=None: click's plain help; rich's help formatter costs ~0.3 s of imports on every --help
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Localize and use the attention layers that decide rendered text in diffusion models.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: editing, safety, fine-tuning.", rich_markup_mode=None)
app.add_typer(bench_app, name="bench")


class _LazyConsole:
    """A rich ``Console`` made on first use: rich costs ~0.15 s to import, which ``--help`` should not pay."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._console: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(**self._kwargs)
        return getattr(self._console, name)


def Table(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 - stands in for rich.table.Table, imported lazily
    from rich.table import Table as RichTable

    return RichTable(*args, **kwargs)


console = _LazyConsole(width=None if sys.stdout.isatty() else 200)
err_console = _LazyConsole(stderr=True)


class _State:
    """Per-invocation settings of the global options (reset by every :func:`main`)."""

    debug = False


def _version(value: bool) -> None:
    if value:
        from textloc import __version__

        typer.echo(f"textloc {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[bool, typer.Option("--version", help="print the version and exit", is_eager=True,
                                          callback=_version)] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show the full traceback of any error")] = False,
) -> None:
    """Localize and use the attention layers that decide rendered text in diffusion models."""
    _State.debug = debug or _State.debug


class _QuietDiffusers(importlib.abc.MetaPathFinder):
    """Turns diffusers' loading bars off the moment a command imports diffusers (stderr carries our messages only).

    An import hook rather than an import: diffusers takes seconds to import, which ``--help``, a usage error or
    an input error found before the model loads must not pay.
    """

    NAME = "diffusers.utils.logging"

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.NAME:
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            module.disable_progress_bar()

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _quiet_libraries() -> None:
    """No loading bars from diffusers on the CLI, without importing it (see :class:`_QuietDiffusers`)."""
    module = sys.modules.get(_QuietDiffusers.NAME)
    if module is not None:
        module.disable_progress_bar()
    elif not any(isinstance(finder, _QuietDiffusers) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietDiffusers())


@app.command()
def generate(
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="the prompt")],
    out: Annotated[Path, out_file_option("output PNG or JPEG")],
    model: ModelOpt = "embedded",
    seed: SeedOpt = 0,
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    plan: Annotated[Path | None, in_file_option("--plan", "patch plan JSON to run under")] = None,
    target: Annotated[str | None, typer.Option(help="target prompt (overrides the plan's)")] = None,
    ocr: OcrOrNoneOpt = "rapidocr",
) -> None:
    """Render one image, optionally under a patch plan.

    With quoted text in the prompt, the image is read back (``--ocr``; ``none`` skips it) and a verdict line says
    whether the text came out as asked. Generation promises no exact text, so the exit code stays 0.
    """
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise InputError(f"Expected --out to end in .png or .jpg, but got {out}")
    import torch

    from textloc.core.engine import generate as run_plan
    from textloc.core.plan import PatchPlan
    from textloc.models.loading import load_pipeline
    from textloc.models.profiles import profile_for
    from textloc.runs.io import save_image_atomic

    patch = None
    if plan is not None:
        try:
            patch = PatchPlan.from_dict(json.loads(check_text_file(plan, option="--plan")))
        except (json.JSONDecodeError, TypeError, KeyError, ValueError) as err:
            if isinstance(err, TextlocError):
                raise
            raise InputError(f"Expected --plan {plan} to be a patch plan JSON, but it is not ({err})") from None
    pipe = load_pipeline(model)
    check_for_model(pipe, steps=steps)
    show_progress(pipe, "generate")
    profile = profile_for(pipe)
    from textloc.data.quotes import quoted_texts

    for text in quoted_texts(target or prompt):  # generate promises no exact text: warn, then draw anyway
        problems = profile.render_limits.problems(text)
        if problems:
            typer.echo(f"warning: the model cannot render {text!r} as written: {'; '.join(problems)} "
                       f"({profile.render_limits.description}); expect other text in the image", err=True)
    kwargs: dict = {"generator": torch.Generator().manual_seed(seed)}
    if steps is not None:
        kwargs["num_inference_steps"] = steps
    if guidance is not None:
        kwargs["guidance_scale"] = guidance
    result = run_plan(pipe, prompt, patch, target_prompt=target, **kwargs)
    save_image_atomic(result.images[0], out)
    fired = f" (patched {len(result.fired)} layer(s))" if result.fired else ""
    console.print(f"wrote {out}{fired}", markup=False, highlight=False)
    expected = " ".join(quoted_texts(target or prompt))
    if expected.strip() and ocr != "none":
        from textloc.eval.scoring import text_scores

        read = profile.reader(ocr).read([result.images[0]])[0]
        drawn = profile.render_limits.apply_case(expected)
        if text_scores(read, drawn).exact:
            console.print(f'verdict: ok: read "{read}" (exact)', markup=False, highlight=False, soft_wrap=True)
        else:
            console.print(f'verdict: MISSED: read "{read}", asked for "{drawn}"; try another --seed',
                          markup=False, highlight=False, soft_wrap=True)


@app.command("train-embedded")
def train_embedded(
    out: Annotated[Path, out_dir_option("run folder (checkpoints, samples, log); resumes if it exists",
                                        short=None)] = Path("runs/embedded"),
    config: Annotated[Path | None, in_file_option("--config", "training config JSON (default: the committed "
                                                               "one)")] = None,
    max_minutes: Annotated[float | None, number_option("--max-minutes", "stop after this many minutes (resume "
                                                       "later)", 0.0, 1e6, low_open=True)] = None,
    export: Annotated[Path | None, out_dir_option("copy the final EMA pipeline here", flag="--export",
                                                  short=None)] = None,
    model: Annotated[str, typer.Option("--model", help="which embedded model: unet (the default, "
                                       "`embedded`) or mmdit (`embedded-mmdit`, SD3-style joint attention)")] = "unet",
) -> None:
    """Train (or resume training) an embedded model with its committed recipe."""
    import shutil

    packages = {"unet": "embedded", "embedded": "embedded", "mmdit": "embedded_mmdit",
                "embedded-mmdit": "embedded_mmdit"}
    if model not in packages:
        raise InputError(f"Expected --model in unet, mmdit, but got {model!r}")
    if model in ("mmdit", "embedded-mmdit"):
        from textloc.models.embedded_mmdit.train import TrainConfig, train
    else:
        from textloc.models.embedded.train import TrainConfig, train
    if model in ("mmdit", "embedded-mmdit") and out == Path("runs/embedded"):
        out = Path("runs/embedded-mmdit")

    cfg_path = config or Path(__file__).parents[1] / "models" / packages[model] / "train_config.json"
    try:
        cfg = TrainConfig.load(cfg_path)
    except (json.JSONDecodeError, TypeError, KeyError, ValueError) as err:
        if isinstance(err, TextlocError):
            raise
        raise InputError(f"Expected --config {cfg_path} to be a training config JSON, but it is not ({err})") from None
    folder = train(cfg, out, max_minutes)
    if export:
        shutil.copytree(folder, export, dirs_exist_ok=True)
    console.print(f"EMA pipeline in {folder}", markup=False, highlight=False)


@app.command("eval-embedded")
def eval_embedded(
    n: Annotated[int, count_option("--n", "samples per group", high=100_000)] = 200,
    seed: Annotated[int, seed_option("evaluation seed (fresh by default)")] = 12345,
    out: Annotated[Path, out_dir_option("folder for results.json and the sample grid", short=None)] = Path(
        "runs/eval"),
    model: ModelOpt = "embedded",
    steps: Annotated[int, steps_option("denoising steps")] = 20,
    ocr: OcrOpt = "rapidocr",
) -> None:
    """Measure the embedded model: word accuracy, CER, background/text colour accuracy."""
    from textloc.models.embedded.evaluate import evaluate
    from textloc.models.loading import load_pipeline
    from textloc.models.profiles import profile_for

    pipe = load_pipeline(model)
    check_for_model(pipe, steps=steps)
    profile = profile_for(pipe)
    if profile.rendered_text is None or profile.colours is None:  # the metrics read what only those models say
        raise InputError(f"Expected a shipped text-rendering model (embedded), but {model} has the {profile.name} "
                         "profile: no known rendered text or colours to measure")
    results = evaluate(pipe, n=n, seed=seed, out=out, steps=steps, ocr=ocr)
    table = Table(title=f"eval-embedded (n={n} per group, seed={seed})")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in results["summary"].items():
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    console.print(table)
    console.print(f"wrote {out / 'results.json'} and {out / 'samples.png'}", markup=False, highlight=False)


def _register_feature_commands() -> None:
    """Feature modules under ``textloc.cli`` add their own subcommands (one home per feature)."""
    import importlib

    for name in ("layers", "localize", "edit", "safety", "finetune", "ui"):
        try:
            module = importlib.import_module(f"textloc.cli.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"textloc.cli.{name}":
                raise
            continue
        module.register(app)


_register_feature_commands()


# -- the one error mapping ------------------------------------------------------------------------------


def _one_line(message: str) -> None:
    """Print ``error: MESSAGE`` as exactly one line (newlines inside a message would break that promise)."""
    flat = " ".join(message.split()) or "error"
    sys.stderr.write(f"error: {flat}\n")
    sys.stderr.flush()


def _expected_error(err: BaseException) -> str | None:
    """The one line for an error the user (or their environment) caused; ``None`` for a bug."""
    if isinstance(err, TextlocError):
        return str(err)
    if isinstance(err, UnicodeDecodeError):
        return describe_decode_error(err)
    if isinstance(err, json.JSONDecodeError):
        return f"Expected a JSON file, but it is damaged ({err}); use a corrected file or a new --out folder"
    if isinstance(err, OSError):
        return describe_os_error(err)
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        return "out of memory; try fewer steps, a smaller batch or chunk size, or a smaller model"
    return None


def _exit_code(err: BaseException) -> int | None:
    if isinstance(err, KeyboardInterrupt):
        return 130
    return 2 if _expected_error(err) is not None else None


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app and map every error once (module docstring). Always ends in ``SystemExit``."""
    args = sys.argv[1:] if argv is None else list(argv)
    _State.debug = False
    _quiet_libraries()
    command = typer.main.get_command(app)
    try:
        with command.make_context("textloc", args) as ctx:
            command.invoke(ctx)
    except typer.Exit as done:  # --help, --version, a command's own typer.Exit
        sys.exit(done.exit_code)
    except ClickException as err:  # usage errors: click's short usage message, exit 2
        err.show()
        sys.exit(err.exit_code)
    except typer.Abort:
        _one_line("aborted")
        sys.exit(1)
    except BaseException as err:  # noqa: BLE001 - the one mapping; a bug re-raises below
        if isinstance(err, SystemExit):
            raise
        if isinstance(err, OSError) and err.errno == 32:  # EPIPE: the reader (`| head`) went away
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence Python's flush at exit
            sys.exit(1)
        code = _exit_code(err)
        if _State.debug or code is None:
            traceback.print_exception(err)
        if code is None:
            sys.exit(1)
        _one_line(INTERRUPTED if code == 130 else _expected_error(err) or "error")
        sys.exit(code)
    sys.exit(0)


if __name__ == "__main__":  # pragma: no cover
    main()
