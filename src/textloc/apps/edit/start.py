"""The first patched step of an edit, when the user does not choose one.

The first steps decide the coarse layout, so an edit leaves them to the source prompt. Where the step comes
from, in order: the published preset of the model's layout (scaled to the schedule), the step the model's
profile was tuned to (``textloc edit-tune``), else a fixed share of the schedule.
"""

from __future__ import annotations

from typing import Any

#: Start fraction for models with neither a preset nor a tuned value: SDXL's published 4 of 50 steps.
GENERIC_START_FRACTION = 4 / 50


def default_start_step(pipe: Any, num_inference_steps: int) -> int:
    """The first patched step: the preset's (scaled to the schedule), the profile's tuned one, or 8%."""
    from textloc.models.presets import preset_for
    from textloc.models.profiles import profile_for

    preset = preset_for(pipe)
    if preset is not None:
        start = round(preset.start_step * num_inference_steps / preset.num_inference_steps)
    else:
        tuned = profile_for(pipe).default_start_step(num_inference_steps)
        start = round(GENERIC_START_FRACTION * num_inference_steps) if tuned is None else tuned
    return max(0, min(start, num_inference_steps - 1))
