"""The embedded MMDiT model: pipeline, save/load, determinism, architecture, resumable training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

from textloc.models.embedded.renderer import HEIGHT, WIDTH
from textloc.models.embedded.text_encoder import EmbeddedTextEncoder
from textloc.models.embedded_mmdit.pipeline import EmbeddedMMDiTPipeline, build_untrained

TINY = dict(patch_size=4, num_layers=2, num_attention_heads=2, attention_head_dim=16)
PROMPT = 'a blue sign with white letters that says "CAT"'


@pytest.fixture(scope="module")
def pipe() -> EmbeddedMMDiTPipeline:
    p = build_untrained(0, **TINY)
    p.set_progress_bar_config(disable=True)
    return p


def _np(pipe, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    return pipe(PROMPT, generator=torch.Generator().manual_seed(seed), output_type="np", **kwargs).images


def test_architecture_is_sd3_mmdit(pipe):
    assert isinstance(pipe.transformer, SD3Transformer2DModel)
    assert isinstance(pipe.text_encoder, EmbeddedTextEncoder)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    blocks = pipe.transformer.transformer_blocks
    assert len(blocks) == TINY["num_layers"]
    for block in blocks:
        assert block.attn.add_k_proj is not None and block.attn.add_v_proj is not None
    assert blocks[-1].context_pre_only and not blocks[0].context_pre_only
    assert pipe.transformer.config.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    assert pipe.transformer.config.joint_attention_dim == pipe.text_encoder.config.hidden_size


def test_output_shapes(pipe):
    images = pipe([PROMPT, 'a sign that says "HI"'], num_images_per_prompt=2, num_inference_steps=2).images
    assert len(images) == 4 and images[0].size == (WIDTH, HEIGHT)
    arr = _np(pipe, num_images_per_prompt=2)
    assert arr.shape == (2, HEIGHT, WIDTH, 3) and arr.min() >= 0 and arr.max() <= 1
    pt = pipe(PROMPT, num_inference_steps=2, output_type="pt").images
    assert tuple(pt.shape) == (1, 3, HEIGHT, WIDTH)
    with pytest.raises(ValueError):
        pipe(PROMPT, height=32, num_inference_steps=2)


def test_same_seed_same_image_and_guidance_matters(pipe):
    a, b = _np(pipe, seed=3), _np(pipe, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, _np(pipe, seed=4))
    assert not np.array_equal(a, _np(pipe, seed=3, guidance_scale=1.0))
    assert not np.array_equal(a, _np(pipe, seed=3, negative_prompt='a sign that says "DOG"'))


def test_latents_and_callback(pipe):
    latents = torch.randn(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(5))
    seen = []

    def callback(p, i, t, kwargs):
        seen.append(i)
        return kwargs

    a = pipe(PROMPT, latents=latents, num_inference_steps=3, output_type="np", callback_on_step_end=callback).images
    b = pipe(PROMPT, latents=latents, num_inference_steps=3, output_type="np").images
    assert seen == [0, 1, 2] and np.array_equal(a, b)


def test_save_from_pretrained_round_trip_bit_for_bit(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    assert list((tmp_path / "p" / "transformer").glob("*.safetensors"))
    assert (tmp_path / "p" / "tokenizer" / "tokenizer.json").exists()
    loaded = EmbeddedMMDiTPipeline.from_pretrained_dir(tmp_path / "p")
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(_np(pipe, seed=1), _np(loaded, seed=1))


def test_lora_weights_load_into_transformer(tmp_path):
    peft = pytest.importorskip("peft")
    from peft.utils import get_peft_model_state_dict

    base = build_untrained(0, **TINY)
    base.set_progress_bar_config(disable=True)
    ref = _np(base, seed=2)
    trained = build_untrained(0, **TINY)
    trained.transformer.add_adapter(peft.LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_v"],
                                                    init_lora_weights=False))
    trained.set_progress_bar_config(disable=True)
    with_lora = _np(trained, seed=2)
    assert not np.array_equal(ref, with_lora)
    EmbeddedMMDiTPipeline.save_lora_weights(tmp_path / "lora",
                                            transformer_lora_layers=get_peft_model_state_dict(trained.transformer))
    base.load_lora_weights(tmp_path / "lora")
    assert np.allclose(_np(base, seed=2), with_lora, atol=1e-6)


def test_resume_reproduces_uninterrupted_run(tmp_path):
    from safetensors.torch import load_file

    from textloc.models.embedded_mmdit.train import TrainConfig, train

    def config(max_steps: int) -> TrainConfig:
        return TrainConfig(batch_size=4, max_steps=max_steps, warmup_steps=2, checkpoint_every=1000,
                           sample_every=1000, log_every=1, threads=1, transformer_overrides=TINY)

    train(config(4), tmp_path / "straight", progress=False)
    train(config(2), tmp_path / "resumed", progress=False)
    train(config(4), tmp_path / "resumed", progress=False)
    a = load_file(str(tmp_path / "straight" / "checkpoint" / "tensors.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "checkpoint" / "tensors.safetensors"))
    assert a.keys() == b.keys()
    assert any(k.startswith("optimizer.state.") for k in a) and any(k.startswith("ema.shadow.") for k in a)
    for key in a:
        if key != "rng.torch":
            assert torch.equal(a[key], b[key]), key
    log_a = (tmp_path / "straight" / "log.jsonl").read_text().splitlines()
    log_b = (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()
    import json

    assert [json.loads(x)["loss"] for x in log_a] == [json.loads(x)["loss"] for x in log_b]
    ema = EmbeddedMMDiTPipeline.from_pretrained_dir(tmp_path / "resumed" / "ema")
    assert isinstance(ema.transformer, SD3Transformer2DModel)
