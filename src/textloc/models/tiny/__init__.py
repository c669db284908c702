"""Tiny, random, fully offline versions of real diffusers text-to-image pipelines.

Why this package exists
----------------------
``textloc`` patches and probes the attention layers of real text-to-image models. Its unit tests must exercise
the *real* diffusers classes -- the real module tree, module names, attention processors and pipeline
``__call__`` code paths -- but cannot download checkpoints (CI has no network and no Hugging Face hub access)
and must run in seconds on a couple of CPU cores. This package therefore builds every component from a config
with tiny widths and random weights, and builds the tokenizers locally from a hand-written vocabulary.

Two entry points:

* :func:`build_tiny_pipeline` returns a real ``DiffusionPipeline`` (``StableDiffusionPipeline``,
  ``StableDiffusionXLPipeline``, ``IFPipeline``, ...) that runs end to end on CPU with the kwargs in
  :data:`TINY_CALL_KWARGS` (or :func:`tiny_call_kwargs`, which also knows how to switch CFG on and off and how
  to build the low-resolution ``image`` the IF stage-II pipeline needs).
* :func:`build_structure_faithful_denoiser` returns only a denoiser whose block layout, depths and attention
  head counts follow the published checkpoint (so layer names such as
  ``up_blocks.0.attentions.2.transformer_blocks.3.attn2`` exist and layer counts match the real model), with
  tiny channel widths. Use it for tests about *which* layers exist, not for generation.

Determinism: every component is built right after ``torch.manual_seed(seed)``, inside
``torch.random.fork_rng`` so that building a pipeline does not disturb the caller's global RNG stream. Two
builds with the same ``seed`` therefore have bit-identical weights.

Tokenizers: a byte-level CLIP BPE vocabulary (every byte, with and without ``</w>``, plus merges that make a
few dozen common prompt words single tokens as in real CLIP), a T5-style Unigram vocabulary (``<pad>`` = 0,
``</s>`` = 1, ``<unk>`` = 2) and a Gemma-style byte-fallback BPE vocabulary. They are written once per process
(or once per ``tokenizer_dir``) with ``save_pretrained`` and re-loaded with ``from_pretrained`` so the usual
file-based loading path is exercised and repeated builds only cost a file read.

Speed: at these widths intra-op threading is pure overhead -- run tests with ``torch.set_num_threads(1)``
(much faster, especially on a busy machine). This package never changes global torch settings itself.

Sizes: tiny VAEs have two blocks, so ``pipe.vae_scale_factor == 2`` (not 8 as in the real models). All
pipelines accept 32x32, 64x64 and non-square 32x64 (height x width) outputs; :data:`TINY_SQUARE_SIZE` and
:data:`TINY_NON_SQUARE_SIZE` name the two sizes the tests use.

Layout: ``tokenizers`` (the hand-written vocabularies), ``components`` (seeded text encoders, VAE, schedulers),
``unet`` (SD 1.x/2.x, SDXL, IF I/II) and ``dit`` (SD3, FLUX, PixArt, Sana) per-family builders, ``pipelines``
(``build_tiny_pipeline`` and call kwargs), ``faithful`` (structure-faithful denoisers).
"""

from textloc.models.tiny.components import build_tiny_clip
from textloc.models.tiny.faithful import STRUCTURE_FAITHFUL_DENOISERS, build_structure_faithful_denoiser
from textloc.models.tiny.pipelines import (
    TINY_ARCHITECTURES,
    TINY_CALL_KWARGS,
    TINY_NON_SQUARE_SIZE,
    TINY_SQUARE_SIZE,
    build_tiny_pipeline,
    tiny_call_kwargs,
    tiny_low_res_image,
)

__all__ = [
    "STRUCTURE_FAITHFUL_DENOISERS",
    "TINY_ARCHITECTURES",
    "TINY_CALL_KWARGS",
    "TINY_NON_SQUARE_SIZE",
    "TINY_SQUARE_SIZE",
    "build_structure_faithful_denoiser",
    "build_tiny_clip",
    "build_tiny_pipeline",
    "tiny_call_kwargs",
    "tiny_low_res_image",
]
