"""The verdict of one edit: did the new text come out, and did the rest of the image stay? (issue #18)

An edit can fail quietly: the new text is misread or half drawn, or the background or text colour changes
with it. The verdict says so in one line a person reads, marks the edit as *missed* when any judged part
failed (``textloc edit`` then exits with ``MISS_EXIT_CODE`` unless ``--allow-miss``) and names what to try.
A part that cannot be judged (no OCR; a model without a colour reader for the text colour) is reported as
"not judged" and never counts as a miss: the verdict does not guess.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

#: Exit code of ``textloc edit`` when the edit missed (input errors are 2).
MISS_EXIT_CODE = 3


@dataclass(frozen=True)
class Verdict:
    """The judged parts of one edit (``None``: not judged) and the settings a suggestion refers to."""

    target_text: str
    read: str | None
    text_exact: bool | None
    background_kept: bool | None
    text_colour_kept: bool | None
    #: how "background kept" was judged: ``"colour"`` (the model's pixel reader) or ``"ssim"`` (SSIM threshold)
    background_rule: str
    ssim: float
    start_step: int
    num_inference_steps: int
    #: whether the layers were the default full-score set (``--layers preset``)
    default_layers: bool

    @property
    def missed(self) -> bool:
        """True when any judged part failed."""
        return False in (self.text_exact, self.background_kept, self.text_colour_kept)

    def parts(self) -> list[str]:
        """One phrase per part: the reading, background, text colour."""
        if self.text_exact is None:
            text = "text not read (OCR off)"
        elif self.text_exact:
            text = f'read "{self.read}" (exact)'
        else:
            text = f'read "{self.read}", not "{self.target_text}"'
        how = f" (SSIM {self.ssim:.2f})" if self.background_rule == "ssim" else ""
        background = {True: f"background kept{how}", False: f"background NOT kept{how}",
                      None: "background not judged"}[self.background_kept]
        colour = {True: "text colour kept", False: "text colour NOT kept",
                  None: "text colour not judged"}[self.text_colour_kept]
        return [text, background, colour]

    def line(self) -> str:
        """The verdict line ``textloc edit`` prints."""
        head = "MISSED" if self.missed else "ok"
        return f"verdict: {head}: " + "; ".join(self.parts())

    def misses(self) -> list[str]:
        """The failed parts, plainly (empty when the edit did not miss)."""
        out = []
        if self.text_exact is False:
            out.append(f'the new text was read as "{self.read}", not "{self.target_text}"')
        if self.background_kept is False:
            out.append("the background changed")
        if self.text_colour_kept is False:
            out.append("the text colour changed")
        return out

    def miss_message(self) -> str | None:
        """``None``, or what missed and what to try, in one line."""
        if not self.missed:
            return None
        return f"The edit missed: {'; '.join(self.misses())}. Try {'; or '.join(self.suggestions())}."

    def suggestions(self) -> list[str]:
        """What to try after a miss (empty when the edit did not miss)."""
        if not self.missed:
            return []
        out = ["another --seed (the source image changes with it)"]
        if not self.default_layers:
            out.append("the full-score layer set (--layers preset)")
        if self.text_exact is False and self.start_step > 0:
            out.append(f"an earlier --start-step {self.start_step - 1} (more steps for the new text)")
        if False in (self.background_kept, self.text_colour_kept) and self.start_step < self.num_inference_steps - 1:
            out.append(f"a later --start-step {self.start_step + 1} (keeps more of the source)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "missed": self.missed, "misses": self.misses(), "suggestions": self.suggestions()}


def verdict_of(metrics: dict[str, Any], *, target_text: str, start_step: int, num_inference_steps: int,
               default_layers: bool, colours_judged: bool) -> Verdict:
    """The verdict from an edit's metrics (``apps.edit.scoring.Scorer.score``)."""
    exact = metrics.get("exact")
    return Verdict(
        target_text=target_text,
        read=metrics.get("read"),
        text_exact=None if exact is None else bool(exact),
        background_kept=metrics.get("background_kept"),
        text_colour_kept=metrics.get("text_colour_kept"),
        background_rule="colour" if colours_judged else "ssim",
        ssim=float(metrics["ssim"]),
        start_step=start_step,
        num_inference_steps=num_inference_steps,
        default_layers=default_layers,
    )
