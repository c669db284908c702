"""textloc: localize and use the attention layers that decide rendered text in diffusion models.

The public API is re-exported here; everything else is an implementation detail.
"""

__version__ = "0.1.0"

from .engine import PatchResult, generate
from .errors import TextlocError
from .layers import TextLayer, list_text_layers, model_fingerprint
from .loading import load_pipeline
from .localize import LocalizationResult, LocalizeConfig, localize
from .plan import PatchPlan
from .presets import PRESETS, choose_layers, get_preset
from .prompts import load_pairs

__all__ = [
    "PRESETS", "LocalizationResult", "LocalizeConfig", "PatchPlan", "PatchResult", "TextLayer", "TextlocError",
    "choose_layers", "generate", "get_preset", "list_text_layers", "load_pairs", "load_pipeline", "localize",
    "model_fingerprint",
]
