"""Patch plans: *what* to patch, as plain data that serialises to JSON (the pyvene idea).

A plan names layers (module paths or execution-order indices), a step window, the CFG branches, optional
heads, whether the pooled text embedding is swapped too, and the target prompt whose text information is
patched in. It holds no tensors and imports no torch, so it can be written, diffed and shipped by hand.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from textloc.errors import InputError, StepWindowError

BRANCHES = ("both", "cond")


@dataclass
class PatchPlan:
    r"""Which text information goes where.

    Args:
        layers: text layers to patch, by module path (``"up_blocks.0.attentions.2.transformer_blocks.1.attn2"``)
            or execution-order index. Empty means "patch nothing" (a no-op).
        target_prompt: the prompt whose text embeddings (U-Net) or text-token K/V (MMDiT) are patched in; a
            list gives one per source prompt.
        start_step: first denoising step (0-based) that is patched.
        end_step: step after the last patched one (exclusive); ``None`` runs to the end of the schedule.
        branches: ``"both"`` CFG halves (the paper's default) or ``"cond"`` (conditional half only).
        heads: attention heads to patch; ``None`` patches all of them.
        pooled: also swap the pooled text embedding where the model has one (SDXL, SD3, FLUX).
        model: fingerprint of the model the plan was made for (``layers.model_fingerprint``); checked on use.
    """

    layers: list[str | int] = field(default_factory=list)
    target_prompt: str | list[str] | None = None
    start_step: int = 0
    end_step: int | None = None
    branches: str = "both"
    heads: list[int] | None = None
    pooled: bool = False
    model: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.layers, list):
            raise InputError(f"Expected `layers` to be a list of names or indices, but got {self.layers!r}")
        if self.branches not in BRANCHES:
            raise InputError(f"Expected `branches` in {BRANCHES}, but got {self.branches!r}")
        if not isinstance(self.start_step, int) or self.start_step < 0:
            raise StepWindowError(f"Expected `start_step` >= 0, but got {self.start_step!r}")
        if self.end_step is not None and self.end_step <= self.start_step:
            raise StepWindowError(
                f"Expected `end_step` > `start_step` ({self.start_step}), but got {self.end_step}"
            )
        if self.heads is not None and (not self.heads or any(h < 0 for h in self.heads)):
            raise InputError(f"Expected `heads` to be a non-empty list of head indices, but got {self.heads!r}")

    @property
    def empty(self) -> bool:
        return not self.layers and not self.pooled

    def validate_steps(self, num_inference_steps: int) -> None:
        """Raise ``StepWindowError`` if the window does not fit a schedule of ``num_inference_steps``."""
        end = self.end_step if self.end_step is not None else num_inference_steps
        if self.start_step >= num_inference_steps or end > num_inference_steps:
            raise StepWindowError(
                f"Expected a step window inside 0..{num_inference_steps}, but got "
                f"[{self.start_step}, {end}) for {num_inference_steps} inference steps"
            )

    def active(self, step: int) -> bool:
        return step >= self.start_step and (self.end_step is None or step < self.end_step)

    # -- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PatchPlan:
        if not isinstance(data, dict):
            raise InputError(f"Expected a JSON object for a patch plan, but got {type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            expected = sorted(cls.__dataclass_fields__)
            raise InputError(f"Unknown patch-plan fields {sorted(unknown)}; expected {expected}")
        return cls(**data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> PatchPlan:
        text = str(text_or_path)
        try:
            if not text.lstrip().startswith("{"):  # a path, not JSON text
                text = Path(text_or_path).read_text()
            return cls.from_dict(json.loads(text))
        except OSError as err:
            raise InputError(f"Cannot read patch plan {text_or_path}: {err.strerror}") from None
        except json.JSONDecodeError as err:
            raise InputError(f"Patch plan is not valid JSON: {err}") from None
