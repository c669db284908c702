"""textloc: localize and use the attention layers that decide rendered text in diffusion models.

The public API is re-exported here; everything else is an implementation detail. The names resolve lazily
(PEP 562 ``__getattr__``): ``import textloc`` imports neither torch nor diffusers, so ``textloc --help`` starts
fast, while ``textloc.load_pipeline`` and ``from textloc import generate`` work as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "LocalizationResult": "textloc.apps.localize.sweep",
    "LocalizeConfig": "textloc.apps.localize.sweep",
    "localize": "textloc.apps.localize.sweep",
    "PatchResult": "textloc.core.engine",
    "generate": "textloc.core.engine",
    "TextLayer": "textloc.core.layers",
    "list_text_layers": "textloc.core.layers",
    "model_fingerprint": "textloc.core.layers",
    "PatchPlan": "textloc.core.plan",
    "load_pairs": "textloc.data.pairs",
    "TextlocError": "textloc.errors",
    "load_pipeline": "textloc.models.loading",
    "PRESETS": "textloc.models.presets",
    "choose_layers": "textloc.models.presets",
    "get_preset": "textloc.models.presets",
}

__all__ = [  # the same names as _EXPORTS (tests/test_cli.py checks), literal so linters see them
    "PRESETS", "LocalizationResult", "LocalizeConfig", "PatchPlan", "PatchResult", "TextLayer", "TextlocError",
    "choose_layers", "generate", "get_preset", "list_text_layers", "load_pairs", "load_pipeline", "localize",
    "model_fingerprint",
]

if TYPE_CHECKING:  # static checkers and IDEs see the real names
    from textloc.apps.localize.sweep import LocalizationResult, LocalizeConfig, localize
    from textloc.core.engine import PatchResult, generate
    from textloc.core.layers import TextLayer, list_text_layers, model_fingerprint
    from textloc.core.plan import PatchPlan
    from textloc.data.pairs import load_pairs
    from textloc.errors import TextlocError
    from textloc.models.loading import load_pipeline
    from textloc.models.presets import PRESETS, choose_layers, get_preset


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'textloc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolve once
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
