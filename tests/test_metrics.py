"""CLIP-T on a tiny offline CLIP, and the one CLIP loader (text and image scores: tests/test_scoring.py)."""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
from PIL import Image

from textloc.errors import InputError
from textloc.eval.metrics import clip_t_score, load_clip

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


def test_load_clip_refuses_a_folder_without_clip(tmp_path) -> None:
    with pytest.raises(InputError, match="Expected a local CLIP model folder"):
        load_clip(str(tmp_path / "missing"))
    (tmp_path / "config.json").write_text("{}")  # not a CLIP config: one-line InputError, not a traceback
    with pytest.raises(InputError, match="Could not load CLIP"):
        load_clip(str(tmp_path))


def test_load_clip_image_only_needs_no_tokenizer(tiny_clip, tmp_path) -> None:
    model, processor = tiny_clip
    model.save_pretrained(tmp_path)
    processor.image_processor.save_pretrained(tmp_path)  # no tokenizer files
    loaded, image_processor = load_clip(str(tmp_path), text=False)
    assert not hasattr(image_processor, "tokenizer")
    assert loaded.config.projection_dim == model.config.projection_dim
