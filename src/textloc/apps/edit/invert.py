"""Inversion: find the noise from which a model's deterministic sampler draws a given (real) image.

Why. An edit patches the localized layers while the source is *generated* from a seed. A real image has no
seed, so we invert it: run the sampler backwards from the image's latents to the noise ``x_T`` that, sampled
forwards again with the same prompt, guidance and steps, gives the image back (the reconstruction). The
localized patch then runs from ``x_T`` exactly as it runs from a seed's noise.

The sampler. Inversion needs a sampler whose step is a known affine map ``x_{i+1} = A_i x_i + B_i m(x_i, t_i)``
of the current latents and the model output ``m``. Both families textloc supports have one:

* epsilon / v / sample prediction U-Nets and DiTs: DDIM with ``eta = 0`` (no clipping, no thresholding),
  built from the pipeline's own scheduler config (``DDIMScheduler.from_config``), so the pipeline's noise
  schedule, prediction type and timestep spacing are kept;
* flow matching (MMDiT, FLUX: ``FlowMatchEulerDiscreteScheduler``): the Euler step ``x + (s_{i+1} - s_i) v``.

Regeneration and the edit use a *sibling* pipeline that shares every module of the user's pipeline and swaps
only the scheduler for that sampler (``sampler_pipeline``); the user's pipeline is never modified.

Inverting one step means solving ``x_i = (x_{i+1} - B_i m(x_i, t_i)) / A_i`` for ``x_i``: the unknown appears
on both sides. Plain DDIM/Euler inversion evaluates ``m`` at the known ``x_{i+1}`` instead (one model call a
step); the ReNoise-style refinement (``renoise=k``) iterates the fixed point up to ``k`` more times, each with
the model evaluated at the latest estimate of ``x_i`` and the refined outputs averaged (as ReNoise does); an
iteration that does not contract (its change grows) is dropped and the step ends there, since under strong
guidance the plain fixed-point map can diverge. At convergence the sampler's step maps ``x_i`` exactly to
``x_{i+1}``, so reconstruction error comes only from what did not converge.

CFG (explicit). The model output ``m`` above is the *guided* output at ``guidance_scale``: the inversion
solves the very step the regeneration takes, so inverting at the generation's guidance with a few fixed-point
iterations reconstructs the image at that guidance. Plain inversion under strong guidance drifts (the guided
output is far from the one evaluated at ``x_{i+1}``); that is what the refinement corrects. Inverting with
``guidance_scale=1`` (one conditional branch, half the cost a call) is allowed, but then the image is only
reconstructed at guidance 1 (``edit_image`` regenerates at the inversion's guidance).

How the model is called. The pipeline itself tells us: one call of the sibling pipeline runs until its first
denoiser call, where a named hook (``core.hooks``) records the call's arguments (text embeddings, pooled
embeddings, extra input channels such as the embedded model's coordinates, the timestep's scale) and stops.
Every inversion step then calls the denoiser with those arguments and its own latents and timestep, so no
per-architecture prompt encoding is re-implemented here.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from PIL import Image

from textloc.core.hooks import DenoiserCallHook, attach_hooks
from textloc.core.layers import get_denoiser
from textloc.core.steps import StepTracker
from textloc.errors import InputError

#: The registry name of the hook that records the pipeline's first denoiser call.
INVERT_CAPTURE_HOOK = "textloc.invert.capture"
#: Fixed-point iterations per inversion step beyond the first (ReNoise-style refinement). Off by default: plain
#: inversion already reconstructs the embedded model's signs at ~38 dB (20 steps) and keeps a real-image edit
#: within ~3 plain generations; each iteration adds one generation's worth of model calls (+4-6 dB measured).
DEFAULT_RENOISE = 0
MAX_RENOISE = 20


class _Captured(Exception):
    """Raised inside the pipeline once its first denoiser call is recorded (the rest is not needed)."""


# ------------------------------------------------------------------------------------------------------------
# Image <-> latents


def image_array(image: Any, size: tuple[int, int] | None) -> np.ndarray:
    """``image`` (PIL, path or float/uint8 HWC array) as float32 HWC RGB in [0, 1], resized to ``size`` (h, w)."""
    if isinstance(image, (str, bytes)) or hasattr(image, "__fspath__"):
        try:
            image = Image.open(image)
            image.load()
        except (OSError, ValueError) as err:
            raise InputError(f"Expected --image to be a readable image file, but {image}: {err}") from None
    if isinstance(image, Image.Image):
        pil = image.convert("RGB")
        if size is not None and pil.size != (size[1], size[0]):
            pil = pil.resize((size[1], size[0]), Image.BICUBIC)
        return np.asarray(pil, dtype=np.float32) / 255.0
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise InputError(f"Expected an HWC RGB image, but got an array of shape {array.shape}")
    array = array.astype(np.float32) / (255.0 if array.dtype == np.uint8 else 1.0)
    if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
        raise InputError("Expected image values in [0, 1] (float) or 0..255 (uint8)")
    if size is not None and array.shape[:2] != size:
        return image_array(Image.fromarray((array * 255).round().astype(np.uint8)), size)
    return array


def encode_image(pipe: Any, array: np.ndarray) -> torch.Tensor:
    """Latents ``(1, C, h, w)`` of a float HWC image: the profile's ``encode_image`` (pixel-space models), else
    the pipeline's VAE (mean of the posterior, then ``(z - shift_factor) * scaling_factor`` as diffusers)."""
    from textloc.models.profiles import profile_for

    denoiser = get_denoiser(pipe)
    pixels = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)[None] * 2 - 1
    pixels = pixels.to(device=denoiser.device, dtype=denoiser.dtype)
    encode = profile_for(pipe).encode_image
    if encode is not None:
        return encode(pipe, pixels)
    vae = getattr(pipe, "vae", None)
    if vae is None:
        raise InputError("This model has no VAE and its profile no encode_image: it cannot invert images")
    with torch.no_grad():
        latents = vae.encode(pixels.to(vae.dtype)).latent_dist.mean
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    return ((latents - shift) * vae.config.scaling_factor).to(denoiser.dtype)


# ------------------------------------------------------------------------------------------------------------
# The sampler whose steps are inverted


def is_flow_matching(scheduler: Any) -> bool:
    """Flow-matching schedulers predict a velocity on sigmas in [0, 1] (no ``alphas_cumprod``)."""
    return isinstance(scheduler, FlowMatchEulerDiscreteScheduler) or (
        not hasattr(scheduler, "alphas_cumprod") and hasattr(scheduler, "sigmas"))


def sampler_pipeline(pipe: Any) -> Any:
    """A sibling of ``pipe`` sharing all its modules, with the deterministic sampler that inversion inverts.

    Flow-matching models keep (a copy of) their Euler scheduler; the others get DDIM (``eta = 0``, no clipping)
    from their scheduler's config, so the noise schedule and the prediction type are the model's.
    """
    scheduler = pipe.scheduler
    if is_flow_matching(scheduler):
        if not isinstance(scheduler, FlowMatchEulerDiscreteScheduler):
            raise InputError(f"Expected a FlowMatchEulerDiscreteScheduler to invert a flow model, but got "
                             f"{type(scheduler).__name__}")
        sampler = FlowMatchEulerDiscreteScheduler.from_config(scheduler.config, stochastic_sampling=False)
    else:
        sampler = DDIMScheduler.from_config(scheduler.config, clip_sample=False, thresholding=False,
                                            set_alpha_to_one=True, rescale_betas_zero_snr=False)
    sibling = type(pipe)(**{**pipe.components, "scheduler": sampler})
    if hasattr(pipe, "_progress_bar_config"):
        sibling.set_progress_bar_config(**pipe._progress_bar_config)
    else:
        sibling.set_progress_bar_config(disable=True)
    return sibling


def step_coefficients(scheduler: Any, num_inference_steps: int) -> list[tuple[float, float]]:
    r"""``(A_i, B_i)`` with ``x_{i+1} = A_i x_i + B_i m_i`` for each step of ``scheduler`` after ``set_timesteps``.

    DDIM (``eta = 0``) as ``DDIMScheduler.step`` computes it (previous timestep ``t - T // n``, final alpha 1),
    rewritten for each prediction type; flow-matching Euler: ``A = 1``, ``B = s_{i+1} - s_i``.
    """
    if is_flow_matching(scheduler):
        sigmas = scheduler.sigmas.double()
        return [(1.0, float(sigmas[i + 1] - sigmas[i])) for i in range(len(scheduler.timesteps))]
    alphas = scheduler.alphas_cumprod.double()
    final = float(scheduler.final_alpha_cumprod)
    ratio = scheduler.config.num_train_timesteps // num_inference_steps
    kind = scheduler.config.prediction_type
    out = []
    for t in scheduler.timesteps.tolist():
        prev = int(t) - ratio
        a, a_prev = float(alphas[int(t)]), (float(alphas[prev]) if prev >= 0 else final)
        sa, sb, sap, sbp = a ** 0.5, (1 - a) ** 0.5, a_prev ** 0.5, (1 - a_prev) ** 0.5
        if kind == "epsilon":
            out.append((sap / sa, sbp - sap * sb / sa))
        elif kind == "v_prediction":
            out.append((sap * sa + sbp * sb, sbp * sa - sap * sb))
        elif kind == "sample":
            out.append((sbp / sb, sap - sbp * sa / sb))
        else:
            raise InputError(f"Expected a prediction type epsilon, v_prediction or sample, but got {kind!r}")
    return out


# ------------------------------------------------------------------------------------------------------------
# The model, called as the pipeline calls it


@dataclass
class DenoiserOracle:
    """The guided model output ``m(x, step)`` of one prompt, with the arguments the pipeline itself passed.

    ``args``/``kwargs`` are the pipeline's first denoiser call; ``extra`` its input channels beyond the latents
    (the embedded model's coordinates); ``rows`` how many copies of the latents it holds (2 with CFG in the
    batch, laid out ``[uncond, cond]`` like every diffusers pipeline with batched CFG); ``scale`` the factor
    between the scheduler's timesteps and the ones the denoiser receives (FLUX passes ``t / 1000``).
    """

    denoiser: torch.nn.Module
    args: tuple
    kwargs: dict
    key: str | int
    extra: torch.Tensor | None
    rows: int
    scale: float
    timesteps: torch.Tensor
    guidance_scale: float
    calls: int = 0

    def __call__(self, latents: torch.Tensor, step: int) -> torch.Tensor:
        sample = torch.cat([latents] * self.rows)
        if self.extra is not None:
            sample = torch.cat([sample, self.extra], dim=1)
        t = self.timesteps[step] * self.scale
        original = self.kwargs.get("timestep", self.args[1] if len(self.args) > 1 else None)
        timestep = (torch.full_like(original, float(t)) if isinstance(original, torch.Tensor)
                    and original.ndim > 0 else torch.as_tensor(t, dtype=getattr(original, "dtype", None)))
        args, kwargs = list(self.args), dict(self.kwargs)
        if isinstance(self.key, int):
            args[self.key] = sample
        else:
            kwargs[self.key] = sample
        if "timestep" in kwargs or len(args) < 2:
            kwargs["timestep"] = timestep
        else:
            args[1] = timestep
        with torch.no_grad():
            out = self.denoiser(*args, **kwargs)
        self.calls += 1
        out = out[0] if isinstance(out, tuple) else getattr(out, "sample", out)
        out = out[:, : latents.shape[1]]  # learned-variance models predict extra channels
        if self.rows == 2:
            uncond, cond = out.chunk(2)
            return uncond + self.guidance_scale * (cond - uncond)
        return out


def _sample_key(args: tuple, kwargs: dict) -> str | int:
    for key in ("sample", "hidden_states"):
        if isinstance(kwargs.get(key), torch.Tensor):
            return key
    if args and isinstance(args[0], torch.Tensor):
        return 0
    raise InputError("Cannot find the denoiser's latent input in the pipeline's call")


def denoiser_oracle(sampler: Any, prompt: str, latents: torch.Tensor, *, num_inference_steps: int,
                    guidance_scale: float, call_kwargs: dict[str, Any]) -> DenoiserOracle:
    """Run ``sampler`` (a ``sampler_pipeline``) up to its first denoiser call and keep that call's arguments."""
    denoiser = get_denoiser(sampler)
    seen: dict[str, Any] = {}

    def on_call(call: Any, args: tuple, kwargs: dict) -> None:
        seen["args"], seen["kwargs"] = args, kwargs
        raise _Captured

    hook = DenoiserCallHook(StepTracker(sampler.scheduler), on_call)
    kwargs = {**call_kwargs, "num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
              "latents": latents, "output_type": "np"}
    with attach_hooks([(denoiser, INVERT_CAPTURE_HOOK, hook)], root=denoiser):
        try:
            sampler(prompt, **kwargs)
        except _Captured:
            pass
    if "args" not in seen:
        raise InputError("The pipeline never called its denoiser; cannot invert")
    args, kw = seen["args"], seen["kwargs"]
    key = _sample_key(args, kw)
    sample = args[key] if isinstance(key, int) else kw[key]
    channels = latents.shape[1]
    rows = sample.shape[0] // latents.shape[0]
    if rows not in (1, 2) or sample.shape[0] != rows * latents.shape[0]:
        raise InputError(f"Expected the denoiser batch to hold 1 or 2 copies of the latents, but got "
                         f"{sample.shape[0]} rows for {latents.shape[0]}")
    extra = sample[:, channels:].clone() if sample.shape[1] > channels else None
    timesteps = sampler.scheduler.timesteps.clone()
    first = kw.get("timestep", args[1] if len(args) > 1 else None)
    first_value = float(torch.as_tensor(first).flatten()[0])
    scale = 1.0 if float(timesteps[0]) == 0 else first_value / float(timesteps[0])
    return DenoiserOracle(denoiser, tuple(args), dict(kw), key, extra, rows, scale, timesteps, guidance_scale)


# ------------------------------------------------------------------------------------------------------------
# Inversion


@dataclass
class Inversion:
    """The noise ``noise`` from which ``sampler`` redraws the image, and how it was found."""

    noise: torch.Tensor
    latents: torch.Tensor
    sampler: Any
    prompt: str
    num_inference_steps: int
    guidance_scale: float
    renoise: int
    model_calls: int
    seconds: float
    #: mean change of the last fixed-point iteration per step (0 = converged; nan without refinement), step 0 first
    residuals: list[float] = field(default_factory=list)


def check_renoise(renoise: Any) -> int:
    if isinstance(renoise, bool) or not isinstance(renoise, int) or not 0 <= renoise <= MAX_RENOISE:
        raise InputError(f"Expected --renoise in 0..{MAX_RENOISE}, but got {renoise!r}")
    return renoise


def invert(pipe: Any, image: Any, prompt: str, *, num_inference_steps: int, guidance_scale: float,
           renoise: int = DEFAULT_RENOISE, sampler: Any = None, **call_kwargs: Any) -> Inversion:
    r"""Invert ``image`` to the noise the deterministic sampler of ``pipe`` redraws it from.

    Args:
        pipe: a supported pipeline that takes ``latents=``.
        image: float HWC array in [0, 1] at the size the pipeline draws (see ``image_array``).
        prompt: the prompt the image is inverted (and later regenerated) under.
        num_inference_steps: sampler steps (the edit uses the same).
        guidance_scale: the guidance of the inverted step (regenerate at the same guidance).
        renoise: fixed-point iterations per step beyond the first (0 = plain DDIM/Euler inversion).
        sampler: a ``sampler_pipeline(pipe)`` to reuse (built when ``None``).
        call_kwargs: further pipeline arguments (``height``, ``width``, ``negative_prompt`` ...).

    Returns:
        ``Inversion``; its ``noise`` goes to ``sampler(prompt, latents=noise, ...)``.
    """
    renoise = check_renoise(renoise)
    t0 = time.perf_counter()
    sampler = sampler if sampler is not None else sampler_pipeline(pipe)
    latents = encode_image(pipe, image)
    oracle = denoiser_oracle(sampler, prompt, latents, num_inference_steps=num_inference_steps,
                             guidance_scale=guidance_scale, call_kwargs=call_kwargs)
    coefficients = step_coefficients(sampler.scheduler, num_inference_steps)
    x = latents.clone()
    residuals = []
    for i in reversed(range(len(coefficients))):
        a, b = coefficients[i]
        guess = (x - b * oracle(x, i)) / a  # plain inversion: the output at x_{i+1} stands in for x_i's
        change, refined = float("nan"), []
        for _ in range(renoise):
            refined.append(oracle(guess, i))
            update = (x - b * torch.stack(refined).mean(0)) / a  # ReNoise: average the refined outputs
            step_change = float((update - guess).abs().mean())
            if step_change > change:  # not contracting here: keep the last iterate
                break
            guess, change = update, step_change
        residuals.append(change)
        x = guess
    return Inversion(x, latents, sampler, prompt, num_inference_steps, guidance_scale, renoise, oracle.calls,
                     time.perf_counter() - t0, residuals[::-1])
