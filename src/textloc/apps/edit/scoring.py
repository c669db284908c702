"""Scoring one edit: OCR against the new text, pixels against the source image, colours, optional CLIP-T.

Every number comes from ``textloc.eval.scoring`` (the one home of the text and image rules, PSNR of identical
images = 100 dB); this module only decides *what* an edit is scored against and which reader reads it: the
model's profile names the OCR backend (a letters-only model reads best with a restricted reader) and the pixel
reader of its colours. A model without a colour reader "keeps the background" when SSIM reaches ``SSIM_KEPT``;
its text colour is not judged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from textloc.apps.edit.calls import to_pil
from textloc.errors import InputError
from textloc.models.profiles import GENERIC, ModelProfile

#: For models without a colour reader an edit "preserves the background" when SSIM(edited, source) reaches this.
SSIM_KEPT = 0.5


@dataclass
class Scorer:
    """Reads and scores edits of one model (``profile``).

    Args:
        profile: the model's profile (``profile_for(pipe)``): its OCR reader and colour reader.
        ocr: backend name, an object with ``read(list_of_PIL)``, or ``None``/``"none"`` (no OCR).
        clip: path to CLIP weights for CLIP-T; ``None`` reports it as unavailable.
    """

    profile: ModelProfile = GENERIC
    ocr: Any = "rapidocr"
    clip: str | None = None
    _reader: Any = field(default=None, init=False, repr=False)
    _clip: Any = field(default=None, init=False, repr=False)

    @property
    def reader(self) -> Any:
        if self._reader is None and self.ocr not in (None, "none"):
            self._reader = self.profile.reader(self.ocr) if isinstance(self.ocr, str) else self.ocr
        return self._reader

    @property
    def judges_colours(self) -> bool:
        """Whether the model has a pixel reader for background and text colour (else SSIM stands in)."""
        return self.profile.colours is not None

    def read(self, arrays: Sequence[np.ndarray]) -> list[str | None]:
        """OCR of float HWC images; ``None`` per image when OCR is off."""
        if self.reader is None:
            return [None] * len(arrays)
        return list(self.reader.read([to_pil(a) for a in arrays]))

    def score(self, edited: np.ndarray, source: np.ndarray, target_text: str, target_prompt: str,
              read: str | None) -> dict[str, Any]:
        """Metrics of one edited image (float HWC in [0, 1]) against its source image and target text."""
        from textloc.eval.scoring import colours_kept, image_scores, normalize_text, text_scores

        pixels = image_scores(edited, source)
        row: dict[str, Any] = {"mse": pixels.mse, "ssim": pixels.ssim, "psnr": pixels.psnr}
        if read is not None:
            text = text_scores(read, target_text)
            row.update(read=normalize_text(read), f1=text.f1, precision=text.precision, recall=text.recall,
                       exact=text.exact, edit_distance=text.edit_distance, cer=text.cer)
        row["clip_t"] = self.clip_t(edited, target_prompt)
        if self.judges_colours:
            background, text_colour = colours_kept(self.profile, to_pil(source), to_pil(edited))
            row["background_kept"], row["text_colour_kept"] = background, text_colour
        else:
            row["background_kept"] = row["ssim"] >= SSIM_KEPT
        return row

    def clip_t(self, image: np.ndarray, prompt: str) -> float | None:
        """CLIP-T of ``image`` against ``prompt`` (``None`` without CLIP weights)."""
        if self.clip is None:
            return None
        from textloc.eval.metrics import clip_t_score

        model, processor = self._clip_model()
        return float(clip_t_score([to_pil(image)], [prompt], model, processor)[0])

    def _clip_model(self) -> tuple[Any, Any]:
        """CLIP weights from the user's path, loaded once (never downloaded)."""
        if self._clip is None:
            from transformers import CLIPModel, CLIPProcessor

            try:
                model = CLIPModel.from_pretrained(str(self.clip), local_files_only=True).eval()
                processor = CLIPProcessor.from_pretrained(str(self.clip), local_files_only=True)
            except (OSError, ValueError) as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise InputError(f"Expected CLIP weights (a transformers CLIPModel folder) at {self.clip}: {first}") \
                    from None
            self._clip = (model, processor)
        return self._clip
