"""The embedded MMDiT model's profile (SD3-style joint attention on the embedded renderer's world).

It draws what the U-Net model draws (same renderer, tokenizer and prompt grammar), so it shares the U-Net
profile's render limits, readers, pair sources and colour readers; what differs is its own: the class it
matches, where its weights live, and (once measured on it) its tuned edit start step and localization.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from textloc.errors import ModelLoadError
from textloc.models.embedded.profile import PROFILE as UNET_PROFILE
from textloc.models.profiles import register_profile

WEIGHTS = Path(__file__).with_name("weights")
#: Written by ``textloc localize --model embedded-mmdit`` once the model is trained; absent until then.
LOCALIZATION = Path(__file__).with_name("localized.json")


def _matches(pipe: Any) -> bool:
    from textloc.models.embedded_mmdit.pipeline import EmbeddedMMDiTPipeline

    return isinstance(pipe, EmbeddedMMDiTPipeline)


def load(directory: str | Path | None = None) -> Any:
    """The shipped MMDiT pipeline on the CPU (or the one saved in ``directory``)."""
    from textloc.models.embedded_mmdit.pipeline import EmbeddedMMDiTPipeline

    directory = Path(directory) if directory else WEIGHTS
    if not (directory / "model_index.json").exists():
        raise ModelLoadError(
            f"The embedded-mmdit model's weights are not in {directory} yet (its training is under way); train "
            "them with `python -m textloc.models.embedded_mmdit.train --out runs/embedded-mmdit`, then pass "
            "--model runs/embedded-mmdit/ema"
        )
    pipe = EmbeddedMMDiTPipeline.from_pretrained_dir(directory)
    pipe.set_progress_bar_config(disable=True)
    return pipe


PROFILE = register_profile(
    replace(
        UNET_PROFILE,
        name="embedded-mmdit",
        matches=_matches,
        load=load,
        edit_start_step=None,  # not tuned yet: `textloc edit-tune --model embedded-mmdit` sets it
        localization=LOCALIZATION if LOCALIZATION.exists() else None,
        pair_sources=(),  # the U-Net profile already serves `--prompts embedded` (same renderer and grammar)
        training=None,  # its flow-matching recipe is not wired into `textloc finetune` yet
    )
)
