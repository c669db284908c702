"""What the web app keeps between requests: the one loaded model, the lock around it, OCR, detector, downloads.

One model at a time: the picker offers the models whose loader worked when the app was built (each is loaded
once, checked and released, so a model that cannot load is never offered), and a selection releases the
current pipeline before loading the next one -- memory holds one pipeline, never two. Every model call, a
switch included, runs under one lock because patch hooks are installed on the shared pipeline for a run.
"""

from __future__ import annotations

import atexit
import gc
import inspect
import logging
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from textloc.errors import InputError, TextlocError

log = logging.getLogger(__name__)

#: The models textloc ships, offered by the picker when they load (``embedded-mmdit`` once its loader lands).
SHIPPED_MODELS: tuple[str, ...] = ("embedded", "embedded-mmdit")

Loader = Callable[[], Any]

#: Clickable examples for models whose profile names none: (prompt, new text), short enough for any model.
GENERIC_EXAMPLES: tuple[tuple[str, str], ...] = (
    ('a red sign with white letters that says "CAT"', "DOG"),
    ('a sign that says "HELLO"', "BYE"),
    ('a blue sign with yellow letters that says "OPEN"', "SHUT"),
)


def shipped_loaders() -> dict[str, Loader]:
    """``load_pipeline(name)`` for every shipped model (whether it loads is checked by ``offered_models``)."""
    from textloc.models.loading import load_pipeline

    return {name: (lambda name=name: load_pipeline(name)) for name in SHIPPED_MODELS}


def offered_models(loaders: Mapping[str, Loader], current: str) -> dict[str, Loader]:
    """The loaders of ``loaders`` that work: ``current`` (already loaded) and each other one that loads now.

    Each candidate is loaded once and released at once, so startup never holds two pipelines; a loader that
    fails is left out (and logged), so the picker offers only models that load.
    """
    offered: dict[str, Loader] = {}
    for name, loader in loaders.items():
        if name == current:
            offered[name] = loader
            continue
        try:
            pipe = loader()
        except Exception as err:  # any failure: a model that does not load must not take the app down
            log.warning("textloc ui: not offering %s (%s)", name, str(err).splitlines()[0] if str(err) else err)
            continue
        del pipe
        gc.collect()
        offered[name] = loader
    return offered


def _accepts(pipe: Any, name: str) -> bool:
    try:
        return name in inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return False


def _pipeline_defaults(pipe: Any) -> tuple[int, float]:
    """Steps and guidance scale of the pipeline's own ``__call__`` defaults (20 / 3.0 when it has none)."""
    try:
        parameters = inspect.signature(pipe.__call__).parameters
    except (TypeError, ValueError):
        return 20, 3.0
    steps = getattr(parameters.get("num_inference_steps"), "default", 20)
    guidance = getattr(parameters.get("guidance_scale"), "default", 3.0)
    return (steps if isinstance(steps, int) else 20), (float(guidance) if isinstance(guidance, int | float) else 3.0)


@dataclass
class LoadedModel:
    """One loaded pipeline and what the page needs to know about it (all asked of its profile and presets)."""

    name: str
    pipe: Any
    profile: Any = field(init=False)
    steps: int = field(init=False)
    guidance: float = field(init=False)
    accepts_callback: bool = field(init=False)
    #: the localized layers ``preset`` resolves to (what Edit and safe mode patch), or [] with ``preset_error``
    preset_layers: list[str] = field(init=False)
    preset_error: str | None = field(init=False)
    all_layers: list[str] = field(init=False)
    _reader: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        from textloc.models.presets import choose_layers
        from textloc.models.profiles import profile_for

        self.profile = profile_for(self.pipe)
        self.steps, self.guidance = _pipeline_defaults(self.pipe)
        self.accepts_callback = _accepts(self.pipe, "callback_on_step_end")
        try:
            self.preset_layers, self.preset_error = choose_layers(self.pipe, "preset", full_score=True), None
        except TextlocError as err:
            self.preset_layers, self.preset_error = [], str(err)
        self.all_layers = choose_layers(self.pipe, "all")

    def layer_choices(self) -> list[tuple[str, str]]:
        """The Layers box: ``preset`` naming its localized layers, ``all``, then each localized layer by name."""
        everything = (f"all: every text layer ({len(self.all_layers)})", "all")
        if not self.preset_layers:
            return [everything]
        preset = (f"preset: the localized layers ({', '.join(self.preset_layers)})", "preset")
        singles = [(f"only {name}", name) for name in self.preset_layers] if len(self.preset_layers) > 1 else []
        return [preset, everything, *singles]

    def default_layers(self) -> str:
        return "preset" if self.preset_layers else "all"

    def start_step(self, num_inference_steps: int) -> int:
        from textloc.apps.edit.start import default_start_step

        return default_start_step(self.pipe, num_inference_steps)

    def examples(self) -> list[list[str]]:
        """Clickable (prompt, new text) examples in this model's world (``profile.examples``), or generic ones."""
        return [list(pair) for pair in (self.profile.examples or GENERIC_EXAMPLES)]

    def reader(self, spec: Any) -> Any:
        """The OCR reader of this model for ``spec`` (a backend name read through its profile, or an object);
        built once per model, so the OCR engine loads on the first edit and not again."""
        if spec is None or spec == "none":
            return None
        if not isinstance(spec, str):
            return spec
        if self._reader is None:
            self._reader = self.profile.reader(spec)
        return self._reader


class UIState:
    """The loaded model (one at a time), its lock, the OCR reader, the safety detector and the download folder."""

    def __init__(self, pipe: Any, name: str, loaders: Mapping[str, Loader], ocr: Any = "rapidocr") -> None:
        self.loaders = dict(loaders)
        self.model = LoadedModel(name, pipe)
        self.lock = threading.Lock()
        self.out = Path(tempfile.mkdtemp(prefix="textloc-ui-"))
        atexit.register(shutil.rmtree, self.out, True)
        self._ocr_spec = ocr
        self._detector: Any = None

    @property
    def pipe(self) -> Any:
        return self.model.pipe

    @property
    def model_names(self) -> list[str]:
        return list(self.loaders)

    def select(self, name: str) -> LoadedModel:
        """Load ``name`` in place of the current model (call under ``lock``); on failure the old one is reloaded."""
        if name == self.model.name:
            return self.model
        if name not in self.loaders:
            raise InputError(f"Expected a model in {self.model_names}, but got {name!r}")
        previous = self.model.name
        self.model.pipe = None  # release before loading: one pipeline in memory at a time
        gc.collect()
        try:
            self.model = LoadedModel(name, self.loaders[name]())
        except Exception:
            self.model = LoadedModel(previous, self.loaders[previous]())
            raise
        return self.model

    @property
    def ocr(self) -> Any:
        """The current model's OCR reader (``None``: OCR off, the metrics then say n/a)."""
        return self.model.reader(self._ocr_spec)

    @property
    def detector(self) -> Any:
        """One ``OfflineDetector`` for every safe-mode request (its word lists load once)."""
        if self._detector is None:
            from textloc.apps.safety.detect import OfflineDetector

            self._detector = OfflineDetector()
        return self._detector

    def folder(self) -> Path:
        """A fresh folder for one request's downloads (names stay ``source.png`` etc., never overwritten)."""
        path = self.out / uuid.uuid4().hex[:12]
        path.mkdir(parents=True)
        return path
