"""Hand-worked cases for textloc.eval.metrics (text, image preservation, CLIP-T on a tiny offline CLIP)."""

from __future__ import annotations

import json
import math
import string

import numpy as np
import pytest
from PIL import Image

from textloc.eval.metrics import (
    WordScores,
    aggregate_word_scores,
    clip_t_score,
    mse,
    normalize_text,
    ocr_word_scores,
    preservation_scores,
    psnr,
    ssim,
    to_float_image,
    words,
)

# --------------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("open late", "OPEN LATE"),
        ("  Open\tLATE\n now ", "OPEN LATE NOW"),
        ("OPEN, LATE!", "OPEN LATE"),
        ("HELLO,WORLD", "HELLO WORLD"),
        ("DON'T", "DONT"),
        ("DON\u2019T", "DONT"),  # typographic apostrophe
        ("'QUOTED'", "QUOTED"),
        ("E-MAIL", "E MAIL"),
        ('"SALE" -50%', "SALE 50"),
        ("caf\u00e9", "CAF\u00c9"),
        ("\uff2f\uff30\uff25\uff2e", "OPEN"),  # full-width letters (NFKC)
        ("", ""),
        ("  ?! ", ""),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_normalize_is_idempotent_and_words_split() -> None:
    s = "  Don't   e-mail, ok? "
    assert normalize_text(normalize_text(s)) == normalize_text(s)
    assert words(s) == ["DONT", "E", "MAIL", "OK"]
    assert words("") == []


# --------------------------------------------------------------------------------------------------
# Word scores
# --------------------------------------------------------------------------------------------------


def test_extra_word_lowers_precision_only() -> None:
    s = ocr_word_scores("OPEN LATE NOW", "OPEN LATE")
    assert (s.tp, s.n_pred, s.n_target) == (2, 3, 2)
    assert s.precision == pytest.approx(2 / 3)
    assert s.recall == 1.0
    assert s.f1 == pytest.approx(0.8)
    assert not s.exact
    assert s.edit_distance == 4  # " NOW"
    assert s.cer == pytest.approx(4 / 9)


def test_missing_word_lowers_recall_only() -> None:
    s = ocr_word_scores("OPEN", "OPEN LATE")
    assert (s.precision, s.recall) == (1.0, 0.5)
    assert s.f1 == pytest.approx(2 / 3)


def test_repeated_words_are_a_multiset() -> None:
    s = ocr_word_scores("GO GO GO", "GO")
    assert s.tp == 1
    assert s.precision == pytest.approx(1 / 3)
    assert s.recall == 1.0
    s = ocr_word_scores("GO", "GO GO")
    assert (s.tp, s.precision, s.recall) == (1, 1.0, 0.5)
    s = ocr_word_scores("GO STOP GO", "GO GO STOP")  # order does not matter for P/R
    assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)
    assert not s.exact


def test_words_not_characters() -> None:
    # The reference implementation's character-level "word" F1 gave this ~1.0.
    s = ocr_word_scores("TAR", "RAT")
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)


def test_exact_and_normalisation_in_scores() -> None:
    s = ocr_word_scores("open late.", "OPEN  LATE")
    assert s.exact
    assert (s.precision, s.recall, s.f1, s.edit_distance, s.cer) == (1.0, 1.0, 1.0, 0, 0.0)


@pytest.mark.parametrize(
    ("pred", "target", "expected"),
    [("", "", 1.0), ("  !! ", "", 1.0), ("", "OPEN", 0.0), ("OPEN", "", 0.0)],
)
def test_empty_cases(pred: str, target: str, expected: float) -> None:
    s = ocr_word_scores(pred, target)
    assert (s.precision, s.recall, s.f1) == (expected, expected, expected)
    assert s.exact == (expected == 1.0)


def test_edit_distance_and_cer() -> None:
    s = ocr_word_scores("CUT", "CAT")
    assert s.edit_distance == 1
    assert s.cer == pytest.approx(1 / 3)
    assert ocr_word_scores("cat", "CAT").edit_distance == 0
    # CER divides by max(1, len(target)), so an empty target does not divide by zero.
    s = ocr_word_scores("AB", "")
    assert (s.edit_distance, s.cer) == (2, 2.0)
    # Insertions can push CER above 1.
    assert ocr_word_scores("ABCDEF", "AB").cer == pytest.approx(2.0)


def test_aggregate_macro_and_micro() -> None:
    a = ocr_word_scores("OPEN LATE NOW", "OPEN LATE")  # tp 2, pred 3, target 2
    b = ocr_word_scores("CUT", "CAT")  # tp 0, pred 1, target 1
    agg = aggregate_word_scores([a, b])
    assert agg["n"] == 2
    assert agg["precision"] == pytest.approx((2 / 3 + 0) / 2)
    assert agg["recall"] == pytest.approx(0.5)
    assert agg["f1"] == pytest.approx(0.4)
    assert agg["exact"] == 0.0
    assert agg["micro_precision"] == pytest.approx(2 / 4)
    assert agg["micro_recall"] == pytest.approx(2 / 3)
    assert agg["micro_f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert agg["edit_distance"] == pytest.approx(2.5)
    assert agg["cer"] == pytest.approx((4 / 9 + 1 / 3) / 2)
    assert agg["micro_cer"] == pytest.approx(5 / 12)


def test_aggregate_empty_and_serialisable() -> None:
    agg = aggregate_word_scores([])
    assert agg["n"] == 0 and math.isnan(agg["f1"]) and math.isnan(agg["micro_f1"])
    s = ocr_word_scores("A", "A")
    assert isinstance(s, WordScores)
    json.dumps(s.as_dict())
    json.dumps(aggregate_word_scores([s]))


# --------------------------------------------------------------------------------------------------
# Image preservation
# --------------------------------------------------------------------------------------------------


def test_mse_black_white_uint8_is_one() -> None:
    black = np.zeros((8, 8, 3), np.uint8)
    white = np.full((8, 8, 3), 255, np.uint8)
    assert mse(black, white) == 1.0
    assert mse(white, black) == 1.0
    assert mse(Image.fromarray(black), Image.fromarray(white)) == 1.0


def test_mse_has_no_uint8_wraparound() -> None:
    a = np.full((4, 4), 10, np.uint8)
    b = np.full((4, 4), 250, np.uint8)
    # In uint8, 10 - 250 wraps to 16, which would give (16/255)^2.
    assert mse(a, b) == pytest.approx((240 / 255) ** 2)
    assert mse(a, b) == mse(b, a)


def test_float_inputs_and_mixed_types() -> None:
    rng = np.random.default_rng(0)
    a8 = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    b8 = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    expected = np.mean((a8 / 255.0 - b8 / 255.0) ** 2)
    assert mse(a8, b8) == pytest.approx(expected)
    assert mse(a8 / 255.0, Image.fromarray(b8)) == pytest.approx(expected)
    assert mse(a8.astype(np.float32) / 255, b8.astype(np.float32) / 255) == pytest.approx(expected, rel=1e-6)


def test_psnr() -> None:
    a = np.full((8, 8), 0.25)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # mse 0.01 -> 10*log10(1/0.01)
    assert psnr(a, a + 0.1, data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.01))
    assert psnr(np.zeros((2, 2), np.uint8), np.full((2, 2), 255, np.uint8)) == pytest.approx(0.0)


def test_ssim() -> None:
    rng = np.random.default_rng(1)
    a = rng.random((32, 32, 3))
    assert ssim(a, a) == pytest.approx(1.0)
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    assert ssim(a, b) < 0.99
    gray = rng.random((16, 16))
    assert ssim(gray, gray) == pytest.approx(1.0)


@pytest.mark.parametrize("shape", [(3, 3), (4, 9, 3), (5, 5, 3), (6, 40), (24, 64, 3)])
def test_ssim_tiny_images(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(2)
    a = rng.random(shape)
    assert ssim(a, a) == pytest.approx(1.0)
    assert ssim(a, 1 - a) < 1.0


def test_ssim_too_small_raises() -> None:
    with pytest.raises(ValueError, match="Expected"):
        ssim(np.zeros((2, 8)), np.zeros((2, 8)))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"Expected .* but got"):
        mse(np.zeros((4, 4, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match=r"Expected .* but got"):
        ssim(Image.new("L", (8, 8)), Image.new("RGB", (8, 8)))


def test_to_float_image_validation() -> None:
    assert to_float_image(np.full((2, 2), 65535, np.uint16)).max() == 1.0
    assert to_float_image(Image.new("P", (3, 3))).shape == (3, 3, 3)
    assert to_float_image(np.array([[True, False]])).tolist() == [[1.0, 0.0]]
    with pytest.raises(ValueError, match=r"Expected float image values in \[0, 1\]"):
        to_float_image(np.full((2, 2), 255.0))
    with pytest.raises(ValueError, match="Expected a uint8"):
        to_float_image(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="Expected an image of shape"):
        to_float_image(np.zeros((1, 2, 2, 3)))


def test_preservation_scores() -> None:
    a = np.zeros((8, 8, 3))
    out = preservation_scores(a, a)
    assert out == {"mse": 0.0, "psnr": math.inf, "ssim": pytest.approx(1.0)}


# --------------------------------------------------------------------------------------------------
# CLIP-T with a tiny random CLIP built offline
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("tiny_clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(d))
    # Without torchvision, transformers 5 would fall back to the PIL image processor with a warning.
    image_cls = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    image_processor = image_cls(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
    config = transformers.CLIPConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 16,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = transformers.CLIPModel(config).eval()
    return model, processor


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(3)]


def _features(out):
    import torch

    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_clip_t_matches_manual_cosine(tiny_clip) -> None:
    import torch

    model, processor = tiny_clip
    images, texts = _images(), ["open late", "a cat", "a very long prompt " * 10]
    scores = clip_t_score(images, texts, model, processor, batch_size=2)
    assert len(scores) == 3
    assert all(0.0 <= s <= 100.0 for s in scores)
    assert scores == clip_t_score(images, texts, model, processor, batch_size=2)  # deterministic
    # Batching changes padding lengths, hence float rounding only.
    assert scores == pytest.approx(clip_t_score(images, texts, model, processor), abs=1e-4)
    with torch.no_grad():
        pix = processor(images=images, return_tensors="pt")["pixel_values"]
        tok = processor(text=texts, return_tensors="pt", padding=True, truncation=True, max_length=16)
        img = _features(model.get_image_features(pixel_values=pix))
        txt = _features(
            model.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        )
    cos = (img / img.norm(dim=-1, keepdim=True) * txt / txt.norm(dim=-1, keepdim=True)).sum(-1)
    expected = (100 * cos.clamp(min=0)).tolist()
    assert scores == pytest.approx(expected, abs=1e-4)


def test_clip_t_is_100_when_embeddings_align_and_0_when_opposed(tiny_clip) -> None:
    import copy

    import torch

    model, processor = tiny_clip
    model = copy.deepcopy(model)
    image, text = _images()[0], "open late"
    with torch.no_grad():
        pix = processor(images=[image], return_tensors="pt")["pixel_values"]
        tok = processor(text=[text], return_tensors="pt", padding=True)
        v = model.vision_model(pixel_values=pix).pooler_output[0]
        t = model.text_model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).pooler_output[
            0
        ]
        u = torch.randn(model.config.projection_dim)
        # Rank-1 projections: image -> u * |v|^2 and text -> u * |t|^2, so the two embeddings are parallel.
        model.visual_projection.weight.copy_(torch.outer(u, v))
        model.text_projection.weight.copy_(torch.outer(u, t))
        assert clip_t_score([image], [text], model, processor)[0] == pytest.approx(100.0, abs=1e-3)
        model.text_projection.weight.copy_(-torch.outer(u, t))  # anti-parallel: cosine -1, clamped to 0
        assert clip_t_score([image], [text], model, processor)[0] == 0.0


def test_clip_t_from_local_folder(tiny_clip, tmp_path) -> None:
    model, processor = tiny_clip
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    images, texts = _images()[:2], ["open", "late"]
    from_path = clip_t_score(images, texts, str(tmp_path))
    assert from_path == pytest.approx(clip_t_score(images, texts, model, processor), abs=1e-5)


def test_clip_t_length_mismatch(tiny_clip) -> None:
    model, processor = tiny_clip
    with pytest.raises(ValueError, match="Expected as many texts as images"):
        clip_t_score(_images(), ["a"], model, processor)
