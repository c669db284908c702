"""Tests for :mod:`textloc.models.tiny`: tiny offline pipelines and structure-faithful denoisers.

These builders are the foundation of every other attention-patching test, so the checks here are about the
properties those tests rely on: the *real* diffusers classes and module names, end-to-end generation at square
and non-square sizes with classifier-free guidance on and off, batching, and bit-exact determinism per seed.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from textloc.models.tiny import (
    STRUCTURE_FAITHFUL_DENOISERS,
    TINY_ARCHITECTURES,
    TINY_CALL_KWARGS,
    TINY_NON_SQUARE_SIZE,
    TINY_SQUARE_SIZE,
    build_structure_faithful_denoiser,
    build_tiny_pipeline,
    tiny_call_kwargs,
)

# diffusers' schedulers call np.array(tensor ** 0.5) which newer numpy flags; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PROMPTS = ['a sign that says "CAT"', "a poster reading HELLO"]

EXPECTED_CLASSES: dict[str, dict[str, str]] = {
    "sd15": {
        "pipe": "StableDiffusionPipeline",
        "unet": "UNet2DConditionModel",
        "text_encoder": "CLIPTextModel",
    },
    "sd2": {
        "pipe": "StableDiffusionPipeline",
        "unet": "UNet2DConditionModel",
        "text_encoder": "CLIPTextModel",
    },
    "sdxl": {
        "pipe": "StableDiffusionXLPipeline",
        "unet": "UNet2DConditionModel",
        "text_encoder": "CLIPTextModel",
        "text_encoder_2": "CLIPTextModelWithProjection",
    },
    "if1": {"pipe": "IFPipeline", "unet": "UNet2DConditionModel", "text_encoder": "T5EncoderModel"},
    "if2": {
        "pipe": "IFSuperResolutionPipeline",
        "unet": "UNet2DConditionModel",
        "text_encoder": "T5EncoderModel",
    },
    "sd3": {
        "pipe": "StableDiffusion3Pipeline",
        "transformer": "SD3Transformer2DModel",
        "text_encoder": "CLIPTextModelWithProjection",
        "text_encoder_2": "CLIPTextModelWithProjection",
        "text_encoder_3": "T5EncoderModel",
    },
    "flux": {
        "pipe": "FluxPipeline",
        "transformer": "FluxTransformer2DModel",
        "text_encoder": "CLIPTextModel",
        "text_encoder_2": "T5EncoderModel",
    },
    "pixart-alpha": {
        "pipe": "PixArtAlphaPipeline",
        "transformer": "PixArtTransformer2DModel",
        "text_encoder": "T5EncoderModel",
    },
    "pixart-sigma": {
        "pipe": "PixArtSigmaPipeline",
        "transformer": "PixArtTransformer2DModel",
        "text_encoder": "T5EncoderModel",
    },
    "sana": {
        "pipe": "SanaPipeline",
        "transformer": "SanaTransformer2DModel",
        "text_encoder": "Gemma2Model",
        "vae": "AutoencoderDC",
    },
}

_PIPES: dict[str, Any] = {}


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Any:
    """Run single-threaded: on tiny tensors intra-op threading is pure overhead, and on a shared 2-core box
    busy-waiting worker threads made generation ~10x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _pipe(arch: str) -> Any:
    """One shared build per arch (generation does not mutate the pipeline), so the module stays fast."""
    if arch not in _PIPES:
        _PIPES[arch] = build_tiny_pipeline(arch)
    return _PIPES[arch]


def _generate(pipe: Any, arch: str, *, cfg: bool, size: tuple[int, int], prompts: list[str]) -> np.ndarray:
    height, width = size
    kwargs = tiny_call_kwargs(arch, cfg=cfg, batch_size=len(prompts), height=height, width=width)
    out = pipe(
        prompt=prompts,
        num_inference_steps=2,
        num_images_per_prompt=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
        **kwargs,
    )
    return np.asarray(out.images)


def test_architecture_tables_agree() -> None:
    assert set(TINY_CALL_KWARGS) == set(TINY_ARCHITECTURES) == set(EXPECTED_CLASSES)
    for arch in TINY_ARCHITECTURES:
        kwargs = TINY_CALL_KWARGS[arch]
        assert (kwargs["height"], kwargs["width"]) == TINY_SQUARE_SIZE
        assert kwargs["guidance_scale"] > 1
        # the dict must not clash with what tests pass explicitly
        assert not {"prompt", "num_inference_steps", "generator", "output_type"} & set(kwargs)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_real_classes_eval_mode_and_no_safety_checker(arch: str) -> None:
    pipe = _pipe(arch)
    expected = EXPECTED_CLASSES[arch]
    assert type(pipe).__name__ == expected["pipe"]
    for name, cls_name in expected.items():
        if name != "pipe":
            assert type(getattr(pipe, name)).__name__ == cls_name, name
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module):
            assert not component.training, name
            assert component.dtype == torch.float32, name
    for absent in ("safety_checker", "watermarker", "feature_extractor"):
        assert getattr(pipe, absent, None) is None


def test_arch_specific_structure() -> None:
    sdxl = _pipe("sdxl")
    assert sdxl.unet.config.addition_embed_type == "text_time"
    assert sdxl.unet.config.cross_attention_dim == (
        sdxl.text_encoder.config.hidden_size + sdxl.text_encoder_2.config.hidden_size
    )
    sd15 = _pipe("sd15")
    assert sd15.unet.config.cross_attention_dim == sd15.text_encoder.config.hidden_size
    sd2 = _pipe("sd2")
    assert sd2.unet.config.use_linear_projection
    assert isinstance(sd2.unet.config.attention_head_dim, list | tuple)
    assert sd2.scheduler.config.prediction_type == "v_prediction"
    for arch in ("if1", "if2"):
        unet = _pipe(arch).unet
        assert unet.config.addition_embed_type == "text"
        assert unet.config.encoder_hid_dim == _pipe(arch).text_encoder.config.d_model
        assert "SimpleCrossAttnDownBlock2D" in unet.config.down_block_types
        assert any(getattr(m, "add_k_proj", None) is not None for m in unet.modules())
    flux = _pipe("flux").transformer
    assert len(flux.transformer_blocks) >= 1 and len(flux.single_transformer_blocks) >= 1
    sd3 = _pipe("sd3").transformer
    assert sd3.transformer_blocks[-1].context_pre_only
    for arch in ("sd15", "sd2", "sdxl", "sd3", "flux", "pixart-alpha", "pixart-sigma"):
        pipe = _pipe(arch)
        denoiser = getattr(pipe, "unet", None) or pipe.transformer
        latent_in = denoiser.config.in_channels
        if arch == "flux":
            latent_in //= 4  # 2x2 patch packing
        assert pipe.vae.config.latent_channels == latent_in, arch
    assert _pipe("sana").vae.config.latent_channels == _pipe("sana").transformer.config.in_channels


def test_tokenizers_keep_prompt_words_whole() -> None:
    clip = _pipe("sd15").tokenizer
    tokens = clip.convert_ids_to_tokens(clip(PROMPTS[0]).input_ids)
    assert tokens == [
        "<|startoftext|>",
        "a</w>",
        "sign</w>",
        "that</w>",
        "says</w>",
        '"</w>',
        "cat</w>",
        '"</w>',
        "<|endoftext|>",
    ]
    assert clip.model_max_length == 77
    t5 = _pipe("if1").tokenizer
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert t5.convert_ids_to_tokens(t5("a sign").input_ids) == ["▁a", "▁sign", "</s>"]
    gemma = _pipe("sana").tokenizer
    assert gemma.convert_ids_to_tokens(gemma("a sign").input_ids) == ["<bos>", "a", "▁sign"]
    for arch in TINY_ARCHITECTURES:  # every id a tokenizer can emit must exist in its text encoder
        pipe = _pipe(arch)
        for suffix in ("", "_2", "_3"):
            tok, enc = getattr(pipe, f"tokenizer{suffix}", None), getattr(pipe, f"text_encoder{suffix}", None)
            if tok is not None:
                assert len(tok) <= enc.config.vocab_size, (arch, suffix)


@pytest.mark.parametrize("size", [TINY_SQUARE_SIZE, TINY_NON_SQUARE_SIZE], ids=["square", "non_square"])
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_generates_with_and_without_cfg(arch: str, size: tuple[int, int]) -> None:
    pipe = _pipe(arch)
    with_cfg = _generate(pipe, arch, cfg=True, size=size, prompts=PROMPTS)
    without_cfg = _generate(pipe, arch, cfg=False, size=size, prompts=PROMPTS)
    for images in (with_cfg, without_cfg):
        assert images.shape == (len(PROMPTS) * 2, size[0], size[1], 3)
        assert np.isfinite(images).all()
        assert images.min() >= 0.0 and images.max() <= 1.0
    assert not np.array_equal(with_cfg, without_cfg), "guidance had no effect"


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_same_seed_same_output(arch: str) -> None:
    first = build_tiny_pipeline(arch, seed=0)
    second = build_tiny_pipeline(arch, seed=0)
    other = build_tiny_pipeline(arch, seed=1)
    images = [
        _generate(p, arch, cfg=True, size=TINY_SQUARE_SIZE, prompts=PROMPTS[:1]) for p in (first, second)
    ]
    np.testing.assert_array_equal(images[0], images[1])
    denoiser = "unet" if hasattr(first, "unet") else "transformer"
    a, b = getattr(first, denoiser).state_dict(), getattr(other, denoiser).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a), "seed did not change the weights"


def test_build_does_not_consume_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    build_tiny_pipeline("pixart-alpha")
    assert torch.equal(torch.rand(4), expected)


def test_tokenizer_dir_is_used(tmp_path: Any) -> None:
    pipe = build_tiny_pipeline("flux", tokenizer_dir=tmp_path)
    cached = sorted(p.name.split("-")[0] for p in tmp_path.iterdir() if (p / "tokenizer.json").is_file())
    assert cached == ["clip", "t5"]
    assert pipe.tokenizer("a sign").input_ids == _pipe("flux").tokenizer("a sign").input_ids


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="unknown tiny architecture"):
        build_tiny_pipeline("sd4")
    with pytest.raises(ValueError, match="unknown denoiser"):
        build_structure_faithful_denoiser("sdxl-turbo")
    with pytest.raises(ValueError):
        tiny_call_kwargs("sd4")


def test_tiny_call_kwargs_returns_fresh_dicts() -> None:
    kwargs = tiny_call_kwargs("sd15", cfg=False)
    assert kwargs["guidance_scale"] == 1.0 and TINY_CALL_KWARGS["sd15"]["guidance_scale"] == 7.5
    flux = tiny_call_kwargs("flux", cfg=True, batch_size=3)
    assert flux["true_cfg_scale"] > 1 and flux["negative_prompt"] == ["", "", ""]
    assert "true_cfg_scale" not in tiny_call_kwargs("flux", cfg=False)
    assert tiny_call_kwargs("if2", batch_size=3)["image"].shape == (3, 3, 16, 16)


# --- structure-faithful denoisers ---------------------------------------------------------------------------


def test_sdxl_faithful_has_70_cross_attention_layers() -> None:
    unet = build_structure_faithful_denoiser("sdxl")
    attn2 = [name for name, _ in unet.named_modules() if name.endswith(".attn2")]
    assert len(attn2) == 70
    for i in (1, 2, 3):
        assert f"up_blocks.0.attentions.2.transformer_blocks.{i}.attn2" in attn2
    assert list(unet.config.transformer_layers_per_block) == [1, 2, 10]
    assert len(unet.mid_block.attentions[0].transformer_blocks) == 10
    # real head counts: 10 heads at 640 channels, 20 at 1280
    assert unet.get_submodule("down_blocks.1.attentions.0.transformer_blocks.0.attn2").heads == 10
    assert unet.get_submodule("down_blocks.2.attentions.0.transformer_blocks.0.attn2").heads == 20


def test_sd3_medium_faithful_has_24_joint_blocks() -> None:
    transformer = build_structure_faithful_denoiser("sd3-medium")
    blocks = transformer.transformer_blocks
    assert len(blocks) == 24
    assert [b.context_pre_only for b in blocks] == [False] * 23 + [True]
    assert blocks[0].attn.heads == 24


def test_if_i_xl_faithful_text_attention_layers() -> None:
    unet = build_structure_faithful_denoiser("if-i-xl")
    # AttnAddedKV layers attend over [image; projected T5] tokens (text also enters via the pooled time embed)
    text_attn = [name for name, m in unet.named_modules() if getattr(m, "add_k_proj", None) is not None]
    # 3 SimpleCrossAttn down levels x 3 layers + 1 mid + 3 up levels x 4 layers (what the real config gives)
    assert len(text_attn) == 22
    assert unet.config.down_block_types[0] == "ResnetDownsampleBlock2D"
    assert unet.config.mid_block_type == "UNetMidBlock2DSimpleCrossAttn"
    # the real IF-I-XL: widths [704, 1408, 2112, 2816] at 64 per head -> 22 / 33 / 44 heads, 44 in the mid block
    assert [unet.get_submodule(f"down_blocks.{i}.attentions.0").heads for i in (1, 2, 3)] == [22, 33, 44]
    assert [unet.get_submodule(f"up_blocks.{i}.attentions.0").heads for i in (0, 1, 2)] == [44, 33, 22]
    assert unet.mid_block.attentions[0].heads == 44


def test_if_i_xl_faithful_is_the_real_config_scaled_consistently() -> None:
    """Every width is the published one divided by the same factor (issue #13: 704/1408/2112/2816, 2816)."""
    cfg = build_structure_faithful_denoiser("if-i-xl").config
    scale = 704 // cfg.block_out_channels[0]
    assert scale > 1
    assert [w * scale for w in cfg.block_out_channels] == [704, 1408, 2112, 2816]
    assert cfg.cross_attention_dim * scale == 2816 and cfg.attention_head_dim * scale == 64
    assert cfg.encoder_hid_dim * scale == 4096
    assert (cfg.layers_per_block, cfg.in_channels, cfg.out_channels, cfg.sample_size) == (3, 3, 6, 64)


@pytest.mark.parametrize("name", STRUCTURE_FAITHFUL_DENOISERS)
def test_faithful_denoisers_are_deterministic_and_in_eval(name: str) -> None:
    a = build_structure_faithful_denoiser(name, seed=3)
    b = build_structure_faithful_denoiser(name, seed=3)
    assert not a.training
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
