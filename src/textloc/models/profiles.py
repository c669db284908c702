"""Model profiles: what an application needs to know about a model, in one registry.

An application never checks a pipeline's class name: it asks ``profile_for(pipe)`` and reads the answer.
A profile says which OCR reader reads the model's text, what text the model can render (length, characters,
case mapping), which strings of a prompt reach its text encoder for rendering, the tuned start step of an
edit, its shipped localization, its sizes and step limit, where its validation pairs come from, and how it
is trained (for localized fine-tuning). Models that textloc ships register their own profile from their own
package (``textloc.models.embedded.profile``); every other model gets ``GENERIC``, whose rules are those of
real checkpoints (any size, any text, the OCR backend as chosen, no tuned start step).

Profiles are looked up lazily: importing this module imports no model code, so ``textloc --help`` stays fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textloc.errors import InputError

#: Modules that register a profile when imported (the models textloc ships).
SHIPPED_PROFILE_MODULES: tuple[str, ...] = (
    "textloc.models.embedded.profile",
    "textloc.models.embedded_mmdit.profile",
)

#: Upper bound on denoising steps for any model; a profile may lower it (validated at the edge, issue #13).
MAX_STEPS = 1000


@dataclass(frozen=True)
class RenderLimits:
    """What text a model can draw. ``None`` means "no limit known" (real checkpoints)."""

    max_chars: int | None = None
    #: characters the model can draw, *after* its case mapping
    charset: frozenset[str] | None = None
    #: the model's own case mapping of quoted text before rendering: ``"upper"``, ``"lower"`` or ``None``
    case: str | None = None
    #: one line a person reads, e.g. "up to 6 letters A-Z and spaces"
    description: str = "any text"

    def apply_case(self, text: str) -> str:
        """The text as the model will draw it (its case mapping applied)."""
        if self.case == "upper":
            return text.upper()
        if self.case == "lower":
            return text.lower()
        return text

    def problems(self, text: str) -> list[str]:
        """Why ``text`` cannot be drawn as asked (empty when it can)."""
        out: list[str] = []
        drawn = self.apply_case(text)
        if self.max_chars is not None and len(drawn) > self.max_chars:
            out.append(f"{len(drawn)} characters, at most {self.max_chars} can be drawn")
        if self.charset is not None:
            bad = sorted(set(drawn) - self.charset)
            if bad:
                out.append(f"cannot draw {''.join(bad)!r}")
        return out

    def check(self, text: str, *, what: str = "text") -> str:
        """``text`` unchanged if the model can draw it; else an ``InputError`` naming why."""
        problems = self.problems(text)
        if problems:
            raise InputError(f"The model cannot render {what} {text!r}: {'; '.join(problems)} ({self.description})")
        return text


@dataclass(frozen=True)
class TrainingRecipe:
    """How a model textloc ships is trained, so localized fine-tuning (``apps.finetune``) optimises the model's
    own objective on its own kind of data without importing the model's package.

    Filled in by the model's package (``textloc.models.embedded.finetuning``); ``None`` on ``GENERIC``, whose
    diffusers families get the standard objectives of ``apps.finetune.objectives``.
    """

    #: ``make_loss(pipe)`` -> ``loss(denoiser, prompts, images, generator)``: a scalar on a batch (B, 3, H, W) in
    #: [-1, 1]; noise and timesteps are drawn from the (CPU) ``generator``, which makes runs reproducible
    make_loss: Callable[[Any], Callable[[Any, list[str], Any, Any], Any]]
    #: ``image_size(pipe)`` -> (height, width) of training images
    image_size: Callable[[Any], tuple[int, int]]
    #: centre-crop photos to the model's aspect before resizing (``False``: squeeze, so no letter is cut off)
    crop_images: bool = True
    #: keyword arguments of the pipeline call that draws progress samples
    sample_kwargs: dict[str, Any] = field(default_factory=dict)
    #: the ``--data`` name of the synthetic data this model's renderer draws (any model can train on it)
    data_source: str | None = None
    #: ``data(scenario_or_None, seed)`` -> sampler with ``batch(step, batch_size, rank)`` -> (prompts, images
    #: (B, 3, H, W) in [-1, 1]), ``sample_prompts(n)`` and ``label``
    data: Callable[[Any, int], Any] | None = field(default=None, repr=False)
    #: ``scenario(text)`` -> a validated scenario: ``name``, ``description``, ``to_dict()`` and ``test_cases(n)``
    #: (held-out cases with ``prompt``, ``text``, ``background``, ``text_colour``)
    scenario: Callable[[str], Any] | None = field(default=None, repr=False)
    #: the named scenarios (for help and messages)
    scenario_names: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelProfile:
    """Facts about one model (or family) that applications read instead of inspecting the pipeline."""

    name: str
    #: does this profile describe ``pipe``? (only the model's own package knows its classes)
    matches: Callable[[Any], bool] = field(default=lambda pipe: True, repr=False)
    render_limits: RenderLimits = field(default_factory=RenderLimits)
    #: characters the OCR reader may return (a letters-only model reads best with a restricted reader)
    ocr_charset: str | None = None
    #: tuned first patched step of an edit, as (step, in a schedule of this many steps)
    edit_start_step: tuple[int, int] | None = None
    #: the model's shipped localization ``summary.json``
    localization: Path | None = None
    #: the only (height, width) sizes the model draws; ``None``: any
    sizes: tuple[tuple[int, int], ...] | None = None
    max_steps: int = MAX_STEPS
    #: ``pairs(kind, n, seed, attribute)`` -> validation pairs of this model's world, for the pair sources it names
    pair_sources: tuple[str, ...] = ()
    pairs: Callable[[str, int | None, int, str], list[Any]] | None = field(default=None, repr=False)
    #: attributes beyond text that pixel readers can judge on this model (``style``, ``colour``, ``background``)
    attribute_reader: Callable[[str], Callable[[Any, Any], Any]] | None = field(default=None, repr=False)
    #: ``colours(image) -> (background, text colour)`` names, for "background / text colour kept"
    colours: Callable[[Any], tuple[str | None, str | None]] | None = field(default=None, repr=False)
    #: the strings of ``prompt`` that the model will render, exactly as they reach its text encoder
    rendered_text: Callable[[str], list[str]] | None = field(default=None, repr=False)
    #: the model's training objective and data, for localized fine-tuning (see ``apps.finetune``)
    training: TrainingRecipe | None = field(default=None, repr=False)
    #: ``load(directory=None)`` -> the shipped pipeline (``--model NAME`` for a model textloc ships)
    load: Callable[..., Any] | None = field(default=None, repr=False)
    #: edit benchmarks of this model's world (``textloc bench edit --benchmark NAME``)
    edit_benchmarks: tuple[str, ...] = ()
    #: ``edit_pairs(benchmark, n, seed)`` -> edit pairs of one of ``edit_benchmarks`` (``n=None``: its default)
    edit_pairs: Callable[[str, int | None, int], list[Any]] | None = field(default=None, repr=False)
    #: (prompt, new text) edits this model draws well: the web app's clickable examples (empty: generic ones)
    examples: tuple[tuple[str, str], ...] = ()
    #: ``encode_image(pipe, pixels)`` -> the latents the denoiser works on, from pixels (1, 3, H, W) in [-1, 1]
    #: (image inversion, ``apps.edit.invert``); ``None``: the pipeline's VAE (latent models)
    encode_image: Callable[[Any, Any], Any] | None = field(default=None, repr=False)

    # -- what applications ask -------------------------------------------------------------------------
    def reader(self, ocr: str = "rapidocr") -> Any:
        """The OCR backend that reads this model's images (``ocr`` names the backend)."""
        from textloc.eval.ocr import get_ocr_backend

        if self.ocr_charset is not None and ocr.lower().strip() == "rapidocr":
            return get_ocr_backend("rapidocr", charset=self.ocr_charset)
        return get_ocr_backend(ocr)

    def default_start_step(self, num_inference_steps: int) -> int | None:
        """The tuned edit start step scaled to ``num_inference_steps``, if this model has one."""
        if self.edit_start_step is None:
            return None
        step, of = self.edit_start_step
        return max(0, min(round(step * num_inference_steps / of), num_inference_steps - 1))

    def check_size(self, height: int | None, width: int | None) -> None:
        """Refuse a size the model does not draw (one line, before anything is generated)."""
        if self.sizes is None or (height is None and width is None):
            return
        for h, w in self.sizes:
            if (height or h, width or w) == (h, w):
                return
        sizes = ", ".join(f"{h}x{w}" for h, w in self.sizes)
        raise InputError(f"The {self.name} model draws only {sizes} (height x width), but got {height} x {width}")

    def check_steps(self, steps: int) -> int:
        if not isinstance(steps, int) or isinstance(steps, bool) or not 1 <= steps <= self.max_steps:
            raise InputError(f"Expected --steps in 1..{self.max_steps}, but got {steps!r}")
        return steps


#: Every model textloc does not ship: real checkpoints (SDXL, SD3, FLUX, ...) and the tiny test pipelines.
GENERIC = ModelProfile(name="generic")

_REGISTRY: list[ModelProfile] = []
_loaded = False


def register_profile(profile: ModelProfile) -> ModelProfile:
    """Add ``profile`` (a model's own package calls this on import); a later one with the same name replaces it."""
    _REGISTRY[:] = [p for p in _REGISTRY if p.name != profile.name]
    _REGISTRY.append(profile)
    return profile


def _load_shipped() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in SHIPPED_PROFILE_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:  # a shipped model that is not in this checkout
            if err.name is None or not module.startswith(err.name):
                raise


def profiles() -> list[ModelProfile]:
    """The registered profiles (the shipped models' first)."""
    _load_shipped()
    return list(_REGISTRY)


def profile_for(pipe: Any) -> ModelProfile:
    """The profile of ``pipe``: the first registered one that matches, else ``GENERIC``."""
    for profile in profiles():
        if profile.matches(pipe):
            return profile
    return GENERIC


def profile_named(name: str) -> ModelProfile | None:
    for profile in profiles():
        if profile.name == name:
            return profile
    return None


def load_pairs(spec: str, n: int | None, seed: int, attribute: str = "text") -> list[Any]:
    """Validation pairs from ``spec``: a shipped model's pair source (``embedded``, ``embedded-open`` ...), a
    benchmark (``simplebench``, ``creativebench``) or a prompt file. Attributes other than text need a model
    whose renderer knows them."""
    from textloc.data import pairs as data_pairs

    for profile in profiles():
        if spec in profile.pair_sources and profile.pairs is not None:
            return profile.pairs(spec, n, seed, attribute)
    if attribute != "text":
        names = sorted({s for p in profiles() for s in p.pair_sources})
        raise InputError(f"--attribute {attribute} needs --prompts {' or '.join(names) or 'embedded'} "
                         "(the renderer knows the attributes)")
    return data_pairs.load_pairs(spec, n, seed)


def training_source(name: str) -> TrainingRecipe | None:
    """The training recipe whose renderer provides the ``--data`` source ``name`` (``synthetic``), if any."""
    for profile in profiles():
        if profile.training is not None and profile.training.data_source == name:
            return profile.training
    return None


def pair_source_names() -> Sequence[str]:
    return [s for p in profiles() for s in p.pair_sources]
