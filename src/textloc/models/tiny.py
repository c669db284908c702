"""Tiny, random, fully offline versions of real diffusers text-to-image pipelines.

Why this module exists
----------------------
``textloc`` patches and probes the attention layers of real text-to-image models. Its unit tests must exercise
the *real* diffusers classes -- the real module tree, module names, attention processors and pipeline
``__call__`` code paths -- but cannot download checkpoints (CI has no network and no Hugging Face hub access)
and must run in seconds on a couple of CPU cores. This module therefore builds every component from a config
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
(much faster, especially on a busy machine). This module never changes global torch settings itself.

Sizes: tiny VAEs have two blocks, so ``pipe.vae_scale_factor == 2`` (not 8 as in the real models). All
pipelines accept 32x32, 64x64 and non-square 32x64 (height x width) outputs; :data:`TINY_SQUARE_SIZE` and
:data:`TINY_NON_SQUARE_SIZE` name the two sizes the tests use.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # diffusers is imported lazily so that importing this module stays cheap
    from diffusers import DiffusionPipeline

__all__ = [
    "TINY_ARCHITECTURES",
    "TINY_CALL_KWARGS",
    "TINY_NON_SQUARE_SIZE",
    "TINY_SQUARE_SIZE",
    "STRUCTURE_FAITHFUL_DENOISERS",
    "build_structure_faithful_denoiser",
    "build_tiny_pipeline",
    "tiny_call_kwargs",
    "tiny_low_res_image",
]

#: Architectures :func:`build_tiny_pipeline` can build.
TINY_ARCHITECTURES: tuple[str, ...] = (
    "sd15",
    "sd2",
    "sdxl",
    "if1",
    "if2",
    "sd3",
    "flux",
    "pixart-alpha",
    "pixart-sigma",
    "sana",
)

#: Names accepted by :func:`build_structure_faithful_denoiser`.
STRUCTURE_FAITHFUL_DENOISERS: tuple[str, ...] = ("sdxl", "sd3-medium", "if-i-xl")

#: (height, width) in pixels of the square and non-square outputs the tiny pipelines are tested at.
TINY_SQUARE_SIZE: tuple[int, int] = (32, 32)
TINY_NON_SQUARE_SIZE: tuple[int, int] = (32, 64)

#: Recommended ``pipe(...)`` kwargs per architecture, with classifier-free guidance ON. They deliberately
#: leave out ``prompt``, ``num_inference_steps``, ``generator``, ``output_type`` and ``num_images_per_prompt``
#: so a test can pass those itself and splat this dict without duplicate-keyword errors. Notes:
#:
#: * ``clean_caption=False``: IF / PixArt default to caption cleaning that needs ``bs4`` + ``ftfy``.
#: * ``use_resolution_binning=False``: PixArt / Sana would otherwise snap the size to a 256+ px aspect-ratio
#:   bin (and raise for a ``sample_size`` outside their bin tables).
#: * ``max_sequence_length=16`` keeps T5 / Gemma sequences short (CLIP keeps its real 77-token context).
#: * Flux: ``guidance_scale`` is the *embedded* (distilled, Flux-dev style) guidance, not CFG; real CFG needs
#:   ``true_cfg_scale > 1`` plus a ``negative_prompt`` per prompt -- use :func:`tiny_call_kwargs`.
#: * IF stage II (``if2``) additionally needs ``image`` (the stage-I output, one per prompt) -- use
#:   :func:`tiny_call_kwargs` or :func:`tiny_low_res_image`.
TINY_CALL_KWARGS: dict[str, dict[str, Any]] = {
    "sd15": {"height": 32, "width": 32, "guidance_scale": 7.5},
    "sd2": {"height": 32, "width": 32, "guidance_scale": 7.5},
    "sdxl": {"height": 32, "width": 32, "guidance_scale": 5.0},
    "if1": {"height": 32, "width": 32, "guidance_scale": 7.0, "clean_caption": False},
    "if2": {"height": 32, "width": 32, "guidance_scale": 4.0, "clean_caption": False, "noise_level": 250},
    "sd3": {"height": 32, "width": 32, "guidance_scale": 7.0, "max_sequence_length": 16},
    "flux": {"height": 32, "width": 32, "guidance_scale": 3.5, "max_sequence_length": 16},
    "pixart-alpha": {
        "height": 32,
        "width": 32,
        "guidance_scale": 4.5,
        "max_sequence_length": 16,
        "clean_caption": False,
        "use_resolution_binning": False,
    },
    "pixart-sigma": {
        "height": 32,
        "width": 32,
        "guidance_scale": 4.5,
        "max_sequence_length": 16,
        "clean_caption": False,
        "use_resolution_binning": False,
    },
    "sana": {
        "height": 32,
        "width": 32,
        "guidance_scale": 4.5,
        "max_sequence_length": 16,
        "clean_caption": False,
        "use_resolution_binning": False,
    },
}

# ----------------------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------------------

# Bump when the vocabularies below change, so stale cached tokenizer files are never reused.
_TOKENIZER_VERSION = "v2"

# Words that become single tokens, as they are in the real CLIP / T5 / Gemma vocabularies. Everything else
# falls back to characters (CLIP, T5) or bytes (Gemma), so any prompt can be tokenized.
_VOCAB_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "in", "on", "at", "with", "and", "that", "says", "saying", "sign", "text",
    "reading", "reads", "written", "words", "word", "letters", "photo", "picture", "poster", "logo", "label",
    "banner", "billboard", "neon", "graffiti", "wall", "street", "shop", "store", "cafe", "coffee", "menu",
    "book", "cover", "cat", "dog", "hello", "world", "open", "closed", "stop", "exit", "sale", "love",
    "happy", "birthday", "welcome", "home", "red", "blue", "green", "black", "white", "sky", "tree", "car",
    "man", "woman", "portrait", "beautiful", "high", "quality", "detailed",
)  # fmt: skip

_CLIP_BOS = "<|startoftext|>"
_CLIP_EOS = "<|endoftext|>"
# The real CLIP context length: cheap at these widths, and it keeps padding/token positions realistic.
_CLIP_MODEL_MAX_LENGTH = 77

_lock = threading.Lock()
_default_tokenizer_dir: Path | None = None


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable unicode map (what ``pre_tokenizers.ByteLevel`` emits)."""
    bs = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _bpe_segment(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges by rank (lowest first, leftmost on ties), like ``tokenizers``' BPE model does."""
    symbols = list(symbols)
    while len(symbols) > 1:
        best_rank, best_i = min(
            (ranks.get(pair, len(ranks) + 1), i)
            for i, pair in enumerate(zip(symbols, symbols[1:], strict=False))
        )
        if best_rank > len(ranks):
            break
        symbols[best_i : best_i + 2] = [symbols[best_i] + symbols[best_i + 1]]
    return symbols


def _merges_for_words(words: Iterable[str], split: Callable[[str], list[str]]) -> list[tuple[str, str]]:
    """Build a merge list under which every word of ``words`` is a single BPE token.

    Each word is first segmented with the merges collected so far; the remaining pieces are then joined left
    to right by *appending* new merges. Appended merges have the highest rank, so they never change how an
    earlier word (already a single token) is segmented -- hence the list is consistent by construction.
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _bpe_segment(split(word), ranks)
        while len(pieces) > 1:
            pair = (pieces[0], pieces[1])
            if pair not in ranks:
                ranks[pair] = len(merges)
                merges.append(pair)
            pieces = [pieces[0] + pieces[1], *pieces[2:]]
    return merges


def _cased_variants(words: Iterable[str]) -> list[str]:
    """``word``, ``Word`` and ``WORD`` for each word: T5 and Gemma vocabularies are case-sensitive."""
    out: list[str] = []
    for word in words:
        for variant in (word, word.capitalize(), word.upper()):
            if variant not in out:
                out.append(variant)
    return out


def _clip_split(word: str) -> list[str]:
    return [*word[:-1], word[-1] + "</w>"]


def _make_clip_tokenizer() -> Any:
    """Byte-level CLIP BPE: 256 byte symbols, their ``</w>`` variants, word merges, then BOS and EOS last."""
    from transformers import CLIPTokenizer

    byte_chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for ch in byte_chars:
        vocab[ch] = len(vocab)
    for ch in byte_chars:
        vocab[ch + "</w>"] = len(vocab)
    merges = _merges_for_words(_VOCAB_WORDS, _clip_split)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    vocab[_CLIP_BOS] = len(vocab)
    vocab[_CLIP_EOS] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_CLIP_MODEL_MAX_LENGTH)


def _make_t5_tokenizer() -> Any:
    """T5-style Unigram tokenizer: ``<pad>``=0, ``</s>``=1, ``<unk>``=2, ``▁word`` pieces, then characters.

    Scores make whole words beat their character decomposition; unknown characters map to ``<unk>`` like the
    real sentencepiece model does for out-of-vocabulary symbols. No sentinel ``<extra_id_*>`` tokens (no
    pipeline uses them).
    """
    from transformers import T5Tokenizer

    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    seen = {p for p, _ in pieces}
    for i, variant in enumerate(_cased_variants(_VOCAB_WORDS)):
        for piece, score in ((f"▁{variant}", -2.0), (variant, -2.5)):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, score - 0.001 * i))
    for code in range(33, 127):
        for piece in (f"▁{chr(code)}", chr(code)):
            if piece not in seen:
                seen.add(piece)
                pieces.append((piece, -4.5 if piece.startswith("▁") else -5.0))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _make_gemma_tokenizer() -> Any:
    """Gemma-style byte-fallback BPE: <pad>=0, <eos>=1, <bos>=2, <unk>=3, <mask>=4, then 256 byte tokens."""
    from transformers import GemmaTokenizer

    vocab: dict[str, int] = {}
    for tok in ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>"):
        vocab[tok] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for code in range(33, 127):
        vocab[chr(code)] = len(vocab)
    vocab["▁"] = len(vocab)
    words = [w for variant in _cased_variants(_VOCAB_WORDS) for w in (f"▁{variant}", variant)]
    merges = _merges_for_words(words, list)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    # Real Gemma tokenizers prepend <bos>; Sana's token selection (index 0 + the last tokens) assumes it.
    return GemmaTokenizer(vocab=vocab, merges=merges, model_max_length=8192, add_bos_token=True)


_TOKENIZER_FACTORIES: dict[str, Callable[[], Any]] = {
    "clip": _make_clip_tokenizer,
    "t5": _make_t5_tokenizer,
    "gemma": _make_gemma_tokenizer,
}


def _resolve_tokenizer_dir(tokenizer_dir: str | Path | None) -> Path:
    """Return the directory tokenizer files are cached in (a process-wide temp dir unless one is given)."""
    global _default_tokenizer_dir
    if tokenizer_dir is not None:
        path = Path(tokenizer_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    with _lock:
        if _default_tokenizer_dir is None:
            _default_tokenizer_dir = Path(tempfile.mkdtemp(prefix="textloc-tiny-tokenizers-"))
            atexit.register(shutil.rmtree, _default_tokenizer_dir, ignore_errors=True)
        return _default_tokenizer_dir


def _load_tokenizer(kind: str, tokenizer_dir: str | Path | None) -> Any:
    """Load (creating and caching on first use) the tiny tokenizer of ``kind`` ("clip", "t5" or "gemma").

    Files are written to a unique temp folder and then renamed into place, so concurrent test workers sharing
    a ``tokenizer_dir`` never observe a half-written tokenizer.
    """
    root = _resolve_tokenizer_dir(tokenizer_dir)
    target = root / f"{kind}-{_TOKENIZER_VERSION}"
    if not (target / "tokenizer.json").is_file():
        staging = root / f".{kind}-{uuid.uuid4().hex}"
        tokenizer = _TOKENIZER_FACTORIES[kind]()
        tokenizer.save_pretrained(staging)
        try:
            os.replace(staging, target)
        except OSError:  # another worker won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    from transformers import CLIPTokenizer, GemmaTokenizer, T5Tokenizer

    classes: dict[str, Any] = {"clip": CLIPTokenizer, "t5": T5Tokenizer, "gemma": GemmaTokenizer}
    return classes[kind].from_pretrained(str(target), local_files_only=True)


# ----------------------------------------------------------------------------------------------------------
# Shared component builders
# ----------------------------------------------------------------------------------------------------------


def _seeded(seed: int, factory: Callable[[], Any]) -> Any:
    """Build one component right after ``torch.manual_seed(seed)`` and put ``nn.Module``s in eval mode."""
    torch.manual_seed(seed)
    component = factory()
    if isinstance(component, torch.nn.Module):
        component.eval()
    return component


def _clip_text_encoder(
    tokenizer: Any,
    *,
    hidden_size: int = 32,
    projection_dim: int = 32,
    with_projection: bool = False,
    hidden_act: str = "quick_gelu",
) -> torch.nn.Module:
    """A 2-layer CLIP text encoder (2 layers so SDXL's ``hidden_states[-2]`` is a real intermediate layer).

    ``hidden_act``: OpenAI CLIP-L uses "quick_gelu", the OpenCLIP encoders (SD 2's ViT-H, SDXL's / SD3's bigG)
    use "gelu".
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=_CLIP_MODEL_MAX_LENGTH,
        projection_dim=projection_dim,
        hidden_act=hidden_act,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return cls(config)


def _t5_encoder(tokenizer: Any, *, d_model: int = 32) -> torch.nn.Module:
    """A 2-layer T5 v1.1-style (gated-gelu) encoder, the text encoder family of IF / SD3 / Flux / PixArt."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        is_encoder_decoder=False,
    )
    return T5EncoderModel(config)


def _gemma2_encoder(tokenizer: Any, *, hidden_size: int = 16) -> torch.nn.Module:
    """A 1-layer Gemma 2 decoder used as Sana's text encoder (Sana reads its last hidden state)."""
    from transformers import Gemma2Config, Gemma2Model

    config = Gemma2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        sliding_window=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attn_implementation="eager",  # the implementation Gemma 2 (logit soft-capping) is validated with
    )
    return Gemma2Model(config)


def _vae_kl(
    *,
    latent_channels: int = 4,
    scaling_factor: float = 0.18215,
    shift_factor: float | None = None,
    use_quant_conv: bool = True,
) -> torch.nn.Module:
    """Two-block AutoencoderKL: ``vae_scale_factor == 2``, so a 32x64 image has a 16x32 latent."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=4,
        sample_size=32,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=use_quant_conv,
        use_post_quant_conv=use_quant_conv,
    )


def _ddpm_if_scheduler(sample_max_value: float) -> Any:
    """The DDPM scheduler the IF checkpoints ship (learned-range variance, dynamic thresholding)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        variance_type="learned_range",
        prediction_type="epsilon",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=sample_max_value,
    )


# ----------------------------------------------------------------------------------------------------------
# Per-architecture tiny pipelines
# ----------------------------------------------------------------------------------------------------------


def _build_sd15(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """SD 1.x: CrossAttn/CrossAttn/Down (the real layout is 3 x CrossAttn + Down), CLIP-L-like encoder."""
    from diffusers import PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = _load_tokenizer("clip", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _clip_text_encoder(tokenizer, hidden_size=32))
    unet = _seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            attention_head_dim=2,  # diffusers' legacy name: number of heads (SD 1.x: 8)
            cross_attention_dim=32,  # == CLIP hidden size (SD 1.x: 768)
            norm_num_groups=8,
        ),
    )
    vae = _seeded(seed, lambda: _vae_kl(latent_channels=4, scaling_factor=0.18215))
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sd2(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """SD 2.x (768-v): per-block head list, linear projections, upcast attention, v-prediction DDIM."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = _load_tokenizer("clip", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _clip_text_encoder(tokenizer, hidden_size=32, hidden_act="gelu"))
    unet = _seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            attention_head_dim=(2, 4, 4),  # heads per block, like SD 2's [5, 10, 20, 20]
            use_linear_projection=True,
            upcast_attention=True,
            cross_attention_dim=32,  # SD 2: 1024 (OpenCLIP-H)
            norm_num_groups=8,
        ),
    )
    vae = _seeded(seed, lambda: _vae_kl(latent_channels=4, scaling_factor=0.18215))
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """SDXL base: Down/CrossAttn/CrossAttn, deeper transformers lower down, ``text_time`` conditioning."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = _load_tokenizer("clip", tokenizer_dir)
    tokenizer_2 = _load_tokenizer("clip", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _clip_text_encoder(tokenizer, hidden_size=16))
    text_encoder_2 = _seeded(
        seed,
        lambda: _clip_text_encoder(
            tokenizer_2, hidden_size=32, projection_dim=16, with_projection=True, hidden_act="gelu"
        ),
    )
    addition_time_embed_dim = 8
    unet = _seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            transformer_layers_per_block=(1, 1, 2),  # SDXL: (1, 2, 10)
            attention_head_dim=(2, 4, 4),  # SDXL: (5, 10, 20) heads
            use_linear_projection=True,
            cross_attention_dim=16 + 32,  # concat of both encoders' penultimate states (SDXL: 768 + 1280)
            addition_embed_type="text_time",
            addition_time_embed_dim=addition_time_embed_dim,
            # 6 micro-conditioning ids (orig size, crop, target size) + pooled text embeds of encoder 2
            projection_class_embeddings_input_dim=6 * addition_time_embed_dim + 16,
            norm_num_groups=8,
        ),
    )
    vae = _seeded(seed, lambda: _vae_kl(latent_channels=4, scaling_factor=0.13025))
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _if_unet_kwargs(text_dim: int) -> dict[str, Any]:
    """UNet kwargs shared by the IF stages (what diffusers' ``convert_if.py`` sets for every IF U-Net)."""
    return {
        # a multiple of 32: the "group_norm" cross-attention norm always uses 32 groups
        "cross_attention_dim": 32,
        "encoder_hid_dim": text_dim,  # T5 width (IF: 4096), projected to cross_attention_dim
        "attention_head_dim": 8,  # IF: per-head width 64 (num_head_channels)
        "addition_embed_type": "text",  # pooled T5 tokens (AttentionPooling) added to the time embedding
        "addition_embed_type_num_heads": 2,
        "cross_attention_norm": "group_norm",
        "resnet_time_scale_shift": "scale_shift",
        "act_fn": "gelu",
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "norm_num_groups": 8,
    }


def _build_if1(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """DeepFloyd IF stage I: pixel-space U-Net with AttnAddedKV ("SimpleCrossAttn") blocks and T5 text."""
    from diffusers import IFPipeline, UNet2DConditionModel

    tokenizer = _load_tokenizer("t5", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _t5_encoder(tokenizer, d_model=32))
    unet = _seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=32,
            in_channels=3,
            out_channels=6,  # epsilon + learned variance range
            down_block_types=(
                "ResnetDownsampleBlock2D",
                "SimpleCrossAttnDownBlock2D",
                "SimpleCrossAttnDownBlock2D",
            ),
            up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            **_if_unet_kwargs(text_dim=32),
        ),
    )
    return IFPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=_ddpm_if_scheduler(sample_max_value=1.5),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )


def _build_if2(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """DeepFloyd IF stage II: super-resolution U-Net (noisy + upscaled low-res image, noise-level embed)."""
    from diffusers import DDPMScheduler, IFSuperResolutionPipeline, UNet2DConditionModel

    tokenizer = _load_tokenizer("t5", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _t5_encoder(tokenizer, d_model=32))
    unet = _seeded(
        seed,
        lambda: UNet2DConditionModel(
            sample_size=32,
            in_channels=6,  # noisy image (3) + noised, upscaled stage-I image (3)
            out_channels=6,
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=(1, 2),
            class_embed_type="timestep",  # the image-noising level is embedded like a timestep
            mid_block_scale_factor=1.414,
            time_embedding_act_fn="gelu",
            time_embedding_dim=32,
            **_if_unet_kwargs(text_dim=32),
        ),
    )
    return IFSuperResolutionPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=_ddpm_if_scheduler(sample_max_value=1.0),
        image_noising_scheduler=DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2"),
        safety_checker=None,
        feature_extractor=None,
        watermarker=None,
        requires_safety_checker=False,
    )


def _build_sd3(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """SD3: MMDiT (joint blocks, last one context_pre_only), CLIP-L + CLIP-G (with projection) + T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = _load_tokenizer("clip", tokenizer_dir)
    tokenizer_2 = _load_tokenizer("clip", tokenizer_dir)
    tokenizer_3 = _load_tokenizer("t5", tokenizer_dir)
    # CLIP widths 8 + 24 = 32 = T5 width: SD3 zero-pads the concatenated CLIP states to the T5 width.
    text_encoder = _seeded(
        seed, lambda: _clip_text_encoder(tokenizer, hidden_size=8, projection_dim=8, with_projection=True)
    )
    text_encoder_2 = _seeded(
        seed,
        lambda: _clip_text_encoder(
            tokenizer_2, hidden_size=24, projection_dim=24, with_projection=True, hidden_act="gelu"
        ),
    )
    text_encoder_3 = _seeded(seed, lambda: _t5_encoder(tokenizer_3, d_model=32))
    transformer = _seeded(
        seed,
        lambda: SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=8,
            num_attention_heads=4,
            joint_attention_dim=32,
            caption_projection_dim=32,
            pooled_projection_dim=8 + 24,
            pos_embed_max_size=32,
        ),
    )
    vae = _seeded(
        seed,
        lambda: _vae_kl(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, use_quant_conv=False),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def _build_flux(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """Flux-dev-like: 1 double-stream + 1 single-stream block, RoPE, embedded guidance, CLIP pooled + T5."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = _load_tokenizer("clip", tokenizer_dir)
    tokenizer_2 = _load_tokenizer("t5", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _clip_text_encoder(tokenizer, hidden_size=32))
    text_encoder_2 = _seeded(seed, lambda: _t5_encoder(tokenizer_2, d_model=32))
    transformer = _seeded(
        seed,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=16,  # 4 latent channels x 2x2 packing (Flux: 16 x 4 = 64)
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=32,  # T5 width
            pooled_projection_dim=32,  # CLIP pooled width
            guidance_embeds=True,
            axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim (Flux: 16 + 56 + 56 = 128)
        ),
    )
    vae = _seeded(
        seed,
        lambda: _vae_kl(latent_channels=4, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def _build_pixart(seed: int, tokenizer_dir: str | Path | None, *, sigma: bool) -> Any:
    """PixArt-alpha / -sigma: DiT with adaLN-single, self-attn + T5 cross-attn per block, learned sigma."""
    from diffusers import (
        DPMSolverMultistepScheduler,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        PixArtTransformer2DModel,
    )

    tokenizer = _load_tokenizer("t5", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _t5_encoder(tokenizer, d_model=32))
    transformer = _seeded(
        seed,
        lambda: PixArtTransformer2DModel(
            # sample_size != 128 so the pipeline does not pass resolution/aspect-ratio conditions
            sample_size=16,
            num_layers=2,
            patch_size=2,
            attention_head_dim=8,
            num_attention_heads=4,
            in_channels=4,
            out_channels=8,  # epsilon + learned sigma
            cross_attention_dim=32,
            caption_channels=32,  # T5 width (PixArt: 4096)
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            interpolation_scale=2 if sigma else 1,
        ),
    )
    vae = _seeded(seed, lambda: _vae_kl(latent_channels=4, scaling_factor=0.18215))
    scheduler = DPMSolverMultistepScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon", solver_order=2
    )
    cls = PixArtSigmaPipeline if sigma else PixArtAlphaPipeline
    return cls(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


def _build_sana(seed: int, tokenizer_dir: str | Path | None) -> Any:
    """Sana: linear-attention DiT + Gemma 2 text encoder + DC-AE autoencoder, flow DPM-Solver."""
    from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel

    tokenizer = _load_tokenizer("gemma", tokenizer_dir)
    text_encoder = _seeded(seed, lambda: _gemma2_encoder(tokenizer, hidden_size=16))
    transformer = _seeded(
        seed,
        lambda: SanaTransformer2DModel(
            in_channels=4,
            out_channels=4,
            num_attention_heads=2,
            attention_head_dim=8,
            num_layers=2,
            num_cross_attention_heads=2,
            cross_attention_head_dim=8,
            cross_attention_dim=16,
            caption_channels=16,  # Gemma width (Sana: 2304)
            sample_size=16,
            patch_size=1,
        ),
    )
    vae = _seeded(
        seed,
        lambda: AutoencoderDC(
            in_channels=3,
            latent_channels=4,
            attention_head_dim=2,
            encoder_block_types=("ResBlock", "EfficientViTBlock"),
            decoder_block_types=("ResBlock", "EfficientViTBlock"),
            encoder_block_out_channels=(8, 8),
            decoder_block_out_channels=(8, 8),
            encoder_qkv_multiscales=((), (5,)),
            decoder_qkv_multiscales=((), (5,)),
            encoder_layers_per_block=(1, 1),
            decoder_layers_per_block=(1, 1),
            downsample_block_type="conv",
            upsample_block_type="interpolate",
            decoder_norm_types="rms_norm",
            decoder_act_fns="silu",
            scaling_factor=0.41407,
        ),
    )
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000,
        beta_schedule="linear",
        prediction_type="flow_prediction",
        use_flow_sigmas=True,
        flow_shift=3.0,
        solver_order=2,
    )
    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer, scheduler=scheduler
    )


_BUILDERS: dict[str, Callable[[int, str | Path | None], Any]] = {
    "sd15": _build_sd15,
    "sd2": _build_sd2,
    "sdxl": _build_sdxl,
    "if1": _build_if1,
    "if2": _build_if2,
    "sd3": _build_sd3,
    "flux": _build_flux,
    "pixart-alpha": lambda seed, tok_dir: _build_pixart(seed, tok_dir, sigma=False),
    "pixart-sigma": lambda seed, tok_dir: _build_pixart(seed, tok_dir, sigma=True),
    "sana": _build_sana,
}


def build_tiny_pipeline(
    arch: str, *, seed: int = 0, tokenizer_dir: str | Path | None = None
) -> DiffusionPipeline:
    """Build a tiny random ``DiffusionPipeline`` of the real class for ``arch``.

    Args:
        arch: one of :data:`TINY_ARCHITECTURES`.
        seed: seeds every component's random init; equal seeds give bit-identical weights.
        tokenizer_dir: where the generated tokenizer files are cached (default: a process-wide temp dir that
            is removed at exit). Pass a persistent folder to share them across processes.

    Returns:
        The pipeline on CPU, float32, all modules in ``eval()`` mode, progress bar disabled, safety checker /
        watermarker absent. Call it with :data:`TINY_CALL_KWARGS` ``[arch]`` (or :func:`tiny_call_kwargs`).
    """
    if arch not in _BUILDERS:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {TINY_ARCHITECTURES}")
    with torch.random.fork_rng(devices=[]):
        pipe = _BUILDERS[arch](seed, tokenizer_dir)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_low_res_image(batch_size: int, *, size: int = 16, seed: int = 0) -> torch.Tensor:
    """A deterministic ``(batch, 3, size, size)`` image in [-1, 1]: the stage-I output that IF-II upscales."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch_size, 3, size, size), generator=generator) * 2 - 1


def tiny_call_kwargs(arch: str, *, cfg: bool = True, batch_size: int = 1, **overrides: Any) -> dict[str, Any]:
    """Fresh call kwargs for ``arch``: :data:`TINY_CALL_KWARGS` with CFG switched on or off.

    ``cfg=False`` sets ``guidance_scale=1.0`` (no unconditional branch) for every arch except Flux, whose
    ``guidance_scale`` is an embedded conditioning value, not CFG; for Flux ``cfg=True`` instead enables
    "true" CFG (``true_cfg_scale=2.0`` with one empty negative prompt per prompt, since Flux does not
    broadcast a single negative prompt over a batch). ``batch_size`` is the number of prompts; it sizes Flux's
    negative prompts and IF stage II's low-resolution ``image``. ``overrides`` win over everything.
    """
    if arch not in TINY_CALL_KWARGS:
        raise ValueError(f"unknown tiny architecture {arch!r}; expected one of {TINY_ARCHITECTURES}")
    kwargs = dict(TINY_CALL_KWARGS[arch])
    if arch == "flux":
        if cfg:
            kwargs.update(true_cfg_scale=2.0, negative_prompt=[""] * batch_size)
    elif not cfg:
        kwargs["guidance_scale"] = 1.0
    if arch == "if2":
        kwargs["image"] = tiny_low_res_image(batch_size)
    kwargs.update(overrides)
    return kwargs


# ----------------------------------------------------------------------------------------------------------
# Structure-faithful denoisers
# ----------------------------------------------------------------------------------------------------------


def _faithful_sdxl() -> torch.nn.Module:
    """SDXL base 1.0 U-Net layout with tiny widths.

    Real ``stabilityai/stable-diffusion-xl-base-1.0/unet/config.json`` values relied on: down blocks
    (DownBlock2D, CrossAttnDownBlock2D, CrossAttnDownBlock2D), up blocks (CrossAttnUpBlock2D,
    CrossAttnUpBlock2D, UpBlock2D), mid UNetMidBlock2DCrossAttn, layers_per_block 2,
    transformer_layers_per_block [1, 2, 10] (the mid block uses the last value, 10; up blocks use the
    reverse), attention_head_dim [5, 10, 20] (= heads, 64 wide each), block_out_channels [320, 640, 1280],
    use_linear_projection true, cross_attention_dim 2048, addition_embed_type "text_time",
    addition_time_embed_dim 256, projection_class_embeddings_input_dim 2816 (= 6 * 256 + 1280), sample_size
    128, in/out channels 4.

    Tiny: head counts kept (5, 10, 20) at 4 channels per head -> block_out_channels (20, 40, 80); GroupNorm
    uses 4 groups (32 does not divide 20); cross_attention_dim 32; addition_time_embed_dim 8 with a 16-wide
    pooled text embedding. ``attn2`` count: down_blocks.1: 2 attentions x 2 layers = 4, down_blocks.2: 2 x 10
    = 20, mid: 10, up_blocks.0: 3 x 10 = 30, up_blocks.1: 3 x 2 = 6 -> 70.
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn",
        block_out_channels=(20, 40, 80),
        layers_per_block=2,
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        use_linear_projection=True,
        cross_attention_dim=32,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 16,
        norm_num_groups=4,
    )


def _faithful_sd3_medium() -> torch.nn.Module:
    """SD3-medium MMDiT layout with tiny widths.

    Real ``stabilityai/stable-diffusion-3-medium-diffusers/transformer/config.json`` values relied on:
    num_layers 24 (joint ``transformer_blocks``; diffusers makes the last one ``context_pre_only``),
    num_attention_heads 24, attention_head_dim 64, caption_projection_dim 1536 (= 24 * 64),
    joint_attention_dim 4096, pooled_projection_dim 2048, patch_size 2, in/out channels 16, pos_embed_max_size
    192, sample_size 128, no dual-attention layers (that is SD3.5), no qk-norm.

    Tiny: 24 heads kept at 4 channels per head (inner width 96), joint_attention_dim 32, pooled 32.
    """
    from diffusers import SD3Transformer2DModel

    return SD3Transformer2DModel(
        sample_size=128,
        patch_size=2,
        in_channels=16,
        out_channels=16,
        num_layers=24,
        attention_head_dim=4,
        num_attention_heads=24,
        joint_attention_dim=32,
        caption_projection_dim=24 * 4,
        pooled_projection_dim=32,
        pos_embed_max_size=192,
    )


def _faithful_if_i_xl() -> torch.nn.Module:
    """DeepFloyd IF-I-XL-v1.0 stage-I U-Net layout with tiny widths.

    Values relied on (from the published ``DeepFloyd/IF-I-XL-v1.0/unet/config.json`` as recalled, and from
    diffusers' ``scripts/convert_if.py``, which sets the IF-wide ones: cross_attention_norm "group_norm",
    mid_block_type "UNetMidBlock2DSimpleCrossAttn", addition_embed_type "text", act_fn "gelu",
    resnet_time_scale_shift "scale_shift"): block_out_channels [512, 1024, 1536, 2048] (model_channels 512,
    channel_mult 1,2,3,4), layers_per_block 3, attention at the 32/16/8 resolutions of a 64 px input, i.e.
    down blocks (ResnetDownsampleBlock2D, SimpleCrossAttnDownBlock2D x3) and up blocks
    (SimpleCrossAttnUpBlock2D x3, ResnetUpsampleBlock2D), attention_head_dim 64 (per-head width),
    encoder_hid_dim 4096 (T5-XXL), addition_embed_type_num_heads 64, norm_num_groups 32, in_channels 3,
    out_channels 6, sample_size 64.

    Tiny: widths divided by 16 -> (32, 64, 96, 128) with 4 channels per head, so the head counts of the real
    model (16, 24, 32 in the attention levels) are kept; norm_num_groups stays 32; cross_attention_dim 32 (a
    multiple of the 32 cross-norm groups); encoder_hid_dim 64 so the 64 pooling heads divide it.
    Text-reading attention layers (``Attention`` with ``add_k_proj``): 3 down levels x 3 + 1 mid + 3 up levels
    x 4 = 22.
    """
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=64,
        in_channels=3,
        out_channels=6,
        down_block_types=(
            "ResnetDownsampleBlock2D",
            "SimpleCrossAttnDownBlock2D",
            "SimpleCrossAttnDownBlock2D",
            "SimpleCrossAttnDownBlock2D",
        ),
        up_block_types=(
            "SimpleCrossAttnUpBlock2D",
            "SimpleCrossAttnUpBlock2D",
            "SimpleCrossAttnUpBlock2D",
            "ResnetUpsampleBlock2D",
        ),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64, 96, 128),
        layers_per_block=3,
        attention_head_dim=4,
        cross_attention_dim=32,
        encoder_hid_dim=64,
        addition_embed_type="text",
        addition_embed_type_num_heads=64,
        cross_attention_norm="group_norm",
        resnet_time_scale_shift="scale_shift",
        act_fn="gelu",
        norm_num_groups=32,
    )


_FAITHFUL_BUILDERS: dict[str, Callable[[], torch.nn.Module]] = {
    "sdxl": _faithful_sdxl,
    "sd3-medium": _faithful_sd3_medium,
    "if-i-xl": _faithful_if_i_xl,
}


def build_structure_faithful_denoiser(name: str, *, seed: int = 0) -> torch.nn.Module:
    """Build only the denoiser of a published checkpoint, with its real block layout/depths and tiny widths.

    Use it to test code that selects layers by name or counts them (e.g. "SDXL has 70 ``attn2`` layers")
    without the real multi-GB weights. Weights are random (seeded by ``seed``); the module is in ``eval()``
    mode.

    Args:
        name: one of :data:`STRUCTURE_FAITHFUL_DENOISERS` ("sdxl", "sd3-medium", "if-i-xl").
        seed: seed for the random initialisation.
    """
    if name not in _FAITHFUL_BUILDERS:
        raise ValueError(f"unknown denoiser {name!r}; expected one of {STRUCTURE_FAITHFUL_DENOISERS}")
    with torch.random.fork_rng(devices=[]):
        return _seeded(seed, _FAITHFUL_BUILDERS[name])


def build_tiny_clip(folder: str | Path, *, seed: int = 0) -> Path:
    """Save a tiny random ``CLIPModel`` + ``CLIPProcessor`` to ``folder`` (CLIP-T tests; no weights offline)."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = Path(folder)
    tokenizer = _make_clip_tokenizer()
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, projection_dim=8)
    config = CLIPConfig(text_config=dict(vocab_size=tokenizer.vocab_size, **small),
                        vision_config=dict(image_size=32, patch_size=8, **small), projection_dim=8)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder
