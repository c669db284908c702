"""Fast tests of the embedded model's parts: renderer ground truth, tokenizer, readers, pipeline plumbing."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from textloc.core.layers import list_text_layers
from textloc.models.embedded import readers, renderer
from textloc.models.embedded.pipeline import EmbeddedTextPipeline, build_untrained
from textloc.models.embedded.tokenizer import CHAR_START, EmbeddedTokenizer, describe, make_prompt, quoted_spans
from textloc.models.embedded.train import TrainConfig, sample_batch
from textloc.models.embedded.words import TRAIN_WORDS
from textloc.models.loading import EMBEDDED_DIR, load_pipeline


def test_renderer_is_deterministic_and_returns_ground_truth() -> None:
    a = renderer.random_spec(random.Random(3), "HELLO")
    b = renderer.random_spec(random.Random(3), "HELLO")
    assert a == b and a.text == "HELLO"
    assert np.array_equal(np.asarray(renderer.render(a)), np.asarray(renderer.render(b)))
    assert renderer.render(a).size == (renderer.WIDTH, renderer.HEIGHT)
    assert a.text_colour in renderer.legible_text_colours(a.background)


def test_renderer_rejects_bad_specs() -> None:
    with pytest.raises(ValueError, match="Expected"):
        renderer.SignSpec("TOOLONGX", "red", "white", "sans")
    with pytest.raises(ValueError, match="Expected"):
        renderer.SignSpec("CAT", "magenta", "white", "sans")
    with pytest.raises(ValueError, match="Expected"):
        renderer.SignSpec("C4T", "red", "white", "sans")


def test_readers_recover_ground_truth_colours() -> None:
    rng = random.Random(0)
    for _ in range(60):
        spec = renderer.random_spec(rng)
        image = renderer.render(spec)
        assert readers.background_colour(image) == spec.background
        assert readers.text_colour(image) == spec.text_colour


def test_tokenizer_splits_quoted_text_into_characters_and_round_trips(tmp_path) -> None:
    tok = EmbeddedTokenizer()
    tokens = tok.tokenize('a red sign that says "Cat!"')
    assert tokens == ["a", "red", "sign", "that", "says", '"', "C", "A", "T", "[UNK_CHAR]", '"']
    assert tok.tokenize("a glorious sign") == ["a", "[UNK]", "sign"]
    enc = tok(['a sign that says "CAT"', ""])
    assert enc["input_ids"].shape == (2, tok.model_max_length)
    assert enc["attention_mask"][1].sum() == 2  # BOS + EOS
    tok.save_pretrained(tmp_path)
    again = EmbeddedTokenizer.from_pretrained(tmp_path)
    assert torch.equal(again(['a sign that says "CAT"'])["input_ids"], enc["input_ids"][:1])
    assert quoted_spans('say "A" and "B"') == ["A", "B"]


def test_prompt_grammar_mentions_what_it_fixes() -> None:
    spec = renderer.SignSpec("CAT", "red", "white", "serif")
    assert describe(spec) == 'a red sign with white serif letters that says "CAT"'
    prompts = {make_prompt(spec, random.Random(i)) for i in range(40)}
    assert all('"CAT"' in p for p in prompts) and len(prompts) > 5


def test_text_encoder_slot_codes_follow_centred_offsets() -> None:
    pipe = build_untrained()
    ids = pipe.tokenizer(['a sign that says "AB"', 'say "ABC"'])["input_ids"]
    slot, is_char = pipe.text_encoder.slot_index(ids)
    max_chars = pipe.text_encoder.config.max_chars
    row0 = slot[0][is_char[0]].tolist()
    row1 = slot[1][is_char[1]].tolist()
    assert row0 == [max_chars - 2, max_chars]  # offsets -1/2, +1/2 in half cells
    assert row1 == [max_chars - 3, max_chars - 1, max_chars + 1]
    assert (ids[0][is_char[0]] >= CHAR_START).all()


def test_training_batches_are_a_function_of_step_and_exclude_reserved_strings() -> None:
    config = TrainConfig(batch_size=8)
    p1, x1, s1 = sample_batch(config, 7)
    p2, x2, s2 = sample_batch(config, 7)
    assert p1 == p2 and torch.equal(x1, x2)
    assert not torch.equal(sample_batch(config, 8)[1], x1)
    specs = [s for step in range(20) for s in sample_batch(config, step)[2]]
    assert not any(renderer.is_reserved(s.text) for s in specs)
    assert not any(renderer.is_reserved(w) for w in TRAIN_WORDS)


def test_untrained_pipeline_samples_saves_and_loads(tmp_path) -> None:
    pipe = build_untrained()
    pipe.set_progress_bar_config(disable=True)
    assert len(list_text_layers(pipe)) >= 6
    out = pipe(['a sign that says "CAT"'] * 2, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert out.shape == (2, renderer.HEIGHT, renderer.WIDTH, 3)
    pipe.save_pretrained(tmp_path / "m")
    again = EmbeddedTextPipeline.from_pretrained_dir(tmp_path / "m")
    again.set_progress_bar_config(disable=True)
    out2 = again(['a sign that says "CAT"'] * 2, num_inference_steps=2,
                 generator=torch.Generator().manual_seed(0), output_type="np").images
    assert np.array_equal(out, out2)
    with pytest.raises(ValueError, match="only size"):
        pipe("x", height=64, width=64)


@pytest.mark.skipif(not (EMBEDDED_DIR / "model_index.json").exists(), reason="embedded weights not shipped")
def test_shipped_model_loads_and_samples_quickly() -> None:
    pipe = load_pipeline("embedded")
    images = pipe('a red sign with white letters that says "CAT"', num_inference_steps=4,
                  generator=torch.Generator().manual_seed(0)).images
    assert images[0].size == (renderer.WIDTH, renderer.HEIGHT)
    assert readers.background_colour(images[0]) in renderer.COLOURS


def test_training_resumes_exactly(tmp_path) -> None:
    """Kill-and-resume is equivalent to an uninterrupted run: batches are a function of the step, state is saved."""
    from textloc.models.embedded.train import train

    def cfg(steps: int) -> TrainConfig:
        return TrainConfig(batch_size=2, max_steps=steps, checkpoint_every=1, sample_every=10_000, warmup_steps=2)

    train(cfg(2), tmp_path / "a")
    resumed = train(cfg(3), tmp_path / "a")
    straight = train(cfg(3), tmp_path / "b")
    a = EmbeddedTextPipeline.from_pretrained_dir(resumed)
    b = EmbeddedTextPipeline.from_pretrained_dir(straight)
    for (name, x), (_, y) in zip(a.unet.state_dict().items(), b.unet.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
