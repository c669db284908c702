"""textloc: localize and use the attention layers that decide rendered text in diffusion models.

The public API is re-exported here; everything else is an implementation detail.
"""

__version__ = "0.1.0"

from textloc.apps.localize.sweep import LocalizationResult, LocalizeConfig, localize
from textloc.core.engine import PatchResult, generate
from textloc.core.layers import TextLayer, list_text_layers, model_fingerprint
from textloc.core.plan import PatchPlan
from textloc.data.pairs import load_pairs
from textloc.errors import TextlocError
from textloc.models.loading import load_pipeline
from textloc.models.presets import PRESETS, choose_layers, get_preset

__all__ = [
    "PRESETS", "LocalizationResult", "LocalizeConfig", "PatchPlan", "PatchResult", "TextLayer", "TextlocError",
    "choose_layers", "generate", "get_preset", "list_text_layers", "load_pairs", "load_pipeline", "localize",
    "model_fingerprint",
]
