"""Edit the text of a real image: invert it, then run the localized patch from the inverted noise.

The steps (issue #16). 1. The prompt is the user's, or built from what the model's own reader (the profile's
OCR backend) reads in the image: ``a sign that says "OLD"``. 2. The image is inverted to the noise the
model's deterministic sampler redraws it from (``apps.edit.invert``: DDIM for epsilon/v-prediction models,
Euler for flow matching, with ReNoise-style fixed-point refinement). 3. The reconstruction (no patch) and the
edit (the localized layers patched from ``start_step`` on, as ``edit_text`` does) both run from that noise at
the same guidance; the reconstruction's denoiser calls before the start step are reused by the edit (prefix
cache), so the edit costs the inversion plus about two plain generations. 4. Optionally (``blend=True``) the
source latents are kept outside a mask of the text from the localized layers' attention (``apps.edit.blend``).

CFG: the image is inverted under the very guidance it is regenerated and edited with (see ``invert``).
Measured on the shipped embedded model (guidance 3, generated signs standing in for real images, seed 0, two
prompts): reconstruction PSNR at 20 steps 37.9 / 39.0 dB plain, 43.9 / 41.5 dB with ``renoise=1``, 46.6 /
43.9 dB with ``renoise=2``; inverting at guidance 1 and regenerating at 3 gave 21.4 dB, hence the default.
Cost (model calls): inversion ``(1 + renoise) x steps``, reconstruction ``steps``, edit ``steps - start_step``
(its prefix is served from the reconstruction) plus one target call: about 3 plain generations at ``renoise=0``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from textloc.apps.edit.blend import AttentionMaps, BlendConfig, blend_latents, text_token_positions
from textloc.apps.edit.calls import to_pil
from textloc.apps.edit.edit import StepCallback, check_new_text, quoted_spans, replace_quoted
from textloc.apps.edit.invert import DEFAULT_RENOISE, Inversion, check_renoise, image_array, invert, sampler_pipeline
from textloc.core.engine import default_steps, generate
from textloc.core.plan import PatchPlan
from textloc.core.prefix import PrefixCache
from textloc.errors import InputError

#: The prompt built around the text read in an image when the user gives none.
PROMPT_TEMPLATE = 'a sign that says "{text}"'


@dataclass
class ImageEditResult:
    """A real-image edit: the source, its reconstruction (no patch), the edit, the plan, timing and metrics."""

    source_array: np.ndarray
    reconstruction_array: np.ndarray
    edited_array: np.ndarray
    prompt: str
    target_prompt: str
    source_text: str
    target_text: str
    plan: PatchPlan
    inversion: Inversion
    fired: dict[str, list[int]]
    metrics: dict[str, Any]
    seconds: dict[str, float]
    mask: np.ndarray | None = None

    @property
    def source_image(self) -> Image.Image:
        return to_pil(self.source_array)

    @property
    def reconstruction_image(self) -> Image.Image:
        return to_pil(self.reconstruction_array)

    @property
    def edited_image(self) -> Image.Image:
        return to_pil(self.edited_array)

    def to_dict(self) -> dict[str, Any]:
        """Everything but the images, JSON-ready (``metrics.json``)."""
        inv = self.inversion
        return {
            "prompt": self.prompt, "target_prompt": self.target_prompt, "source_text": self.source_text,
            "target_text": self.target_text, "layers": list(self.plan.layers), "start_step": self.plan.start_step,
            "num_inference_steps": inv.num_inference_steps, "guidance_scale": inv.guidance_scale,
            "inversion": {"renoise": inv.renoise, "model_calls": inv.model_calls, "seconds": inv.seconds,
                          "sampler": type(inv.sampler.scheduler).__name__,
                          "last_change_per_step": inv.residuals},
            "blend": self.mask is not None, "fired": self.fired, "seconds": self.seconds, "metrics": self.metrics,
        }


def image_prompt(pipe: Any, array: np.ndarray, text: str | None, prompt: str | None, span: int,
                 ocr: Any) -> tuple[str, str]:
    """(prompt, the quoted text it renders): the user's prompt, else one built around ``text`` or the OCR."""
    from textloc.models.profiles import profile_for

    if prompt is not None:
        found = quoted_spans(prompt)
        replace_quoted(prompt, "X", span)  # no quotes / bad span: one line
        if text is not None and text.strip() != found[span].strip():
            raise InputError(f"--text {text!r} differs from the prompt's quoted text {found[span]!r}; give one")
        return prompt, found[span]
    if text is None:
        if ocr in (None, "none"):
            raise InputError("Give --text (the text the image shows) or --prompt when OCR is off")
        reader = profile_for(pipe).reader(ocr) if isinstance(ocr, str) else ocr
        text = str(reader.read([to_pil(array)])[0] or "")
        if not text.strip():
            raise InputError("OCR read no text in the image; give --text (what it shows) or --prompt")
    if not text.strip() or '"' in text:
        raise InputError(f"Expected the image's text without double quotes, but got {text!r}")
    return PROMPT_TEMPLATE.format(text=text.strip()), text.strip()


def _size(pipe: Any, image: Any, kwargs: dict[str, Any]) -> tuple[int, int]:
    """The size the image is drawn at: the call's, else the model's only size, else the image's (a multiple of
    16, as latent models need)."""
    from textloc.models.profiles import profile_for

    profile = profile_for(pipe)
    height, width = kwargs.get("height"), kwargs.get("width")
    if height is not None and width is not None:
        profile.check_size(height, width)
        return height, width
    if profile.sizes:
        return profile.sizes[0]
    w, h = image.size if isinstance(image, Image.Image) else (np.asarray(image).shape[1], np.asarray(image).shape[0])
    return max(16, h // 16 * 16), max(16, w // 16 * 16)


def _guidance(pipe: Any, guidance_scale: float | None) -> float:
    if guidance_scale is not None:
        return float(guidance_scale)
    parameter = inspect.signature(pipe.__call__).parameters.get("guidance_scale")
    if parameter is None or not isinstance(parameter.default, (int, float)):
        return 1.0
    return float(parameter.default)


def _callback(on_step: StepCallback | None, phase: str, total: int, n_rows: int, start: int,
              record: list[torch.Tensor] | None = None, keep: Sequence[torch.Tensor] | None = None,
              mask: torch.Tensor | None = None) -> Any:
    """``callback_on_step_end``: progress; record the trajectory; or blend towards the recorded one."""

    def callback(_pipe: Any, step: int, _t: Any, kw: dict[str, Any]) -> dict[str, Any]:
        latents = kw["latents"]
        if record is not None:
            record.append(latents[:n_rows].detach().clone())
        if keep is not None and mask is not None and start <= step < len(keep):
            latents = latents.clone()
            latents[:n_rows] = blend_latents(latents[:n_rows], keep[step], mask)
            kw = {**kw, "latents": latents}
        if on_step is not None:
            on_step(phase, min(int(step) + 1, total), total)
        return kw

    return callback


def edit_image(
    pipe: Any,
    image: Any,
    new_text: str,
    *,
    text: str | None = None,
    prompt: str | None = None,
    span: int = 0,
    layers: str | Sequence[str | int] = "preset",
    start_step: int | None = None,
    num_inference_steps: int | None = None,
    guidance_scale: float | None = None,
    renoise: int = DEFAULT_RENOISE,
    blend: bool = False,
    blend_config: BlendConfig | None = None,
    blend_mask: torch.Tensor | None = None,
    ocr: Any = "rapidocr",
    on_step: StepCallback | None = None,
    **kwargs: Any,
) -> ImageEditResult:
    r"""Replace the text a real ``image`` shows by ``new_text``: invert, then patch the localized layers.

    Args:
        pipe: a supported pipeline that takes ``latents=`` (``textloc.models.loading.load_pipeline``).
        image: PIL image, path or HWC array; resized to the size the model draws.
        new_text: the new text.
        text: what the image shows (default: read by the model's OCR reader); ignored with ``prompt``.
        prompt: the image's prompt with its text in quotes (default: ``a sign that says "TEXT"``).
        span: which quoted span of ``prompt`` to replace.
        layers / start_step: as ``edit_text``.
        num_inference_steps / guidance_scale: sampler settings (default: the pipeline's); the inversion, the
            reconstruction and the edit all use them.
        renoise: fixed-point iterations per inversion step beyond the first (0: plain DDIM/Euler inversion).
        blend: keep the source latents outside the text mask (``apps.edit.blend``) from ``start_step`` on.
        blend_config: threshold and dilation of that mask.
        blend_mask: a mask ``(1, 1, h, w)`` in [0, 1] to use instead of the attention mask (tests, experiments).
        ocr: OCR backend name or object reading the image's text and the edit; ``None`` skips OCR.
        on_step: ``on_step(phase, step, total)`` with phases ``"reconstruction"`` and ``"edit"``.
        kwargs: further pipeline arguments (``height``, ``width``, ``negative_prompt`` ...).

    Returns:
        ``ImageEditResult``; ``metrics`` holds ``reconstruction`` (MSE/SSIM/PSNR of the reconstruction against
        the image), the edit's scores against the image and the new text (``apps.edit.scoring``) and
        ``psnr_vs_reconstruction`` (the edit's own change, inversion error left out).
    """
    from textloc.apps.edit.scoring import Scorer
    from textloc.apps.edit.start import default_start_step
    from textloc.core.layers import model_fingerprint
    from textloc.eval.scoring import image_scores, normalize_text
    from textloc.models.presets import choose_layers
    from textloc.models.profiles import profile_for

    # 1. Validate everything, then read the image and build the prompts.
    profile = profile_for(pipe)
    renoise = check_renoise(renoise)
    if blend and blend_config is None:
        blend_config = BlendConfig()
    steps = profile.check_steps(num_inference_steps or default_steps(pipe))
    guidance = _guidance(pipe, guidance_scale)
    height, width = _size(pipe, image, kwargs)
    array = image_array(image, (height, width))
    prompt, source_text = image_prompt(pipe, array, text, prompt, span, ocr)
    new = check_new_text(pipe, new_text, source_text)
    target_prompt = replace_quoted(prompt, new, span)
    names = choose_layers(pipe, layers, full_score=True)
    start = default_start_step(pipe, steps) if start_step is None else start_step
    plan = PatchPlan(layers=list(names), target_prompt=target_prompt, start_step=start, model=model_fingerprint(pipe))
    plan.validate_steps(steps)
    call = {k: v for k, v in kwargs.items() if k not in ("height", "width")}
    if not profile.sizes:
        call.update(height=height, width=width)

    # 2. Invert.
    sampler = sampler_pipeline(pipe)
    inversion = invert(pipe, array, prompt, num_inference_steps=steps, guidance_scale=guidance, renoise=renoise,
                       sampler=sampler, **call)
    run = {**call, "num_inference_steps": steps, "guidance_scale": guidance, "output_type": "np"}

    # 3. Reconstruction (records the trajectory and, for the blend, where the text is), then the edit.
    prefix = PrefixCache(until_step=start)
    trajectory: list[torch.Tensor] = []
    use_blend = blend or blend_mask is not None
    maps = AttentionMaps(sampler, names, text_token_positions(pipe, prompt, span)) if blend and blend_mask is None \
        else None
    t0 = time.perf_counter()
    with maps.attached() if maps is not None else nullcontext():
        recon = generate(sampler, prompt, None, prefix=prefix, latents=inversion.noise.clone(), **run,
                         callback_on_step_end=_callback(on_step, "reconstruction", steps, 1, start,
                                                        record=trajectory if use_blend else None))
    t1 = time.perf_counter()
    mask = blend_mask if blend_mask is not None else (maps.mask(blend_config) if maps is not None else None)
    result = generate(sampler, prompt, plan, prefix=prefix, latents=inversion.noise.clone(), **run,
                      callback_on_step_end=_callback(on_step, "edit", steps, 1, start,
                                                     keep=trajectory if use_blend else None, mask=mask))
    t2 = time.perf_counter()
    reconstruction = np.asarray(recon.images[0], dtype=np.float32)
    edited = np.asarray(result.images[0], dtype=np.float32)

    # 4. Score.
    scorer = Scorer(profile=profile, ocr=ocr)
    source_read, edited_read = scorer.read([array, edited])
    metrics = scorer.score(edited, array, new, target_prompt, edited_read)
    metrics["source_read"] = None if source_read is None else normalize_text(source_read)
    rec = image_scores(reconstruction, array)
    metrics["reconstruction"] = {"mse": rec.mse, "ssim": rec.ssim, "psnr": rec.psnr}
    metrics["psnr_vs_reconstruction"] = image_scores(edited, reconstruction).psnr
    seconds = {"inversion": inversion.seconds, "reconstruction": t1 - t0, "edit": t2 - t1}
    return ImageEditResult(array, reconstruction, edited, prompt, target_prompt, source_text, new, plan, inversion,
                           result.fired, metrics, seconds,
                           None if mask is None else mask[0, 0].detach().cpu().numpy())
