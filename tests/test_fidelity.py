"""Improved precision/recall on feature sets with known answers, and the image features."""

from __future__ import annotations

import random

import numpy as np
import pytest
from PIL import Image

from textloc.errors import InputError
from textloc.eval.fidelity import (
    colour_histogram_features,
    image_features,
    knn_radii,
    pixel_features,
    precision_recall,
    text_free_features,
)
from textloc.models.embedded import renderer


def _cloud(n: int, centre: float, seed: int, dim: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).normal(centre, 1.0, size=(n, dim))


def test_identical_sets_score_one_one() -> None:
    x = _cloud(60, 0.0, 0)
    result = precision_recall(x, x.copy(), k=3)
    assert (result.precision, result.recall) == (1.0, 1.0)
    assert (result.n_reference, result.n_evaluated, result.k) == (60, 60, 3)


def test_disjoint_far_apart_clusters_score_zero_zero() -> None:
    result = precision_recall(_cloud(50, 0.0, 1), _cloud(40, 100.0, 2), k=3)
    assert (result.precision, result.recall) == (0.0, 0.0)


def test_a_subset_has_full_precision_and_partial_recall() -> None:
    reference = np.concatenate([_cloud(50, 0.0, 3), _cloud(50, 50.0, 4)])
    result = precision_recall(reference, reference[:50], k=3)  # only one of the two modes
    assert result.precision == 1.0
    assert 0.4 <= result.recall < 0.6


def test_outliers_lower_precision_not_recall() -> None:
    reference = _cloud(200, 0.0, 5, dim=2)
    clean = precision_recall(reference, _cloud(200, 0.0, 6, dim=2), k=3)
    with_outliers = np.concatenate([_cloud(160, 0.0, 6, dim=2), _cloud(40, 30.0, 7, dim=2)])
    result = precision_recall(reference, with_outliers, k=3)
    assert clean.precision > 0.9 and clean.recall > 0.9
    assert 0.7 <= result.precision <= 0.8  # the 20 % far samples are off the manifold
    assert result.recall > 0.9


def test_knn_radius_skips_the_point_itself() -> None:
    import torch

    points = torch.tensor([[0.0], [1.0], [3.0], [6.0]], dtype=torch.float64)
    assert knn_radii(points, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(points, 2).tolist() == [3.0, 2.0, 3.0, 5.0]


def test_bad_inputs_raise_input_error() -> None:
    x = _cloud(10, 0.0, 0)
    with pytest.raises(InputError, match="k"):
        precision_recall(x, x, k=10)
    with pytest.raises(InputError, match="width"):
        precision_recall(x, x[:, :3])
    with pytest.raises(InputError, match="shape"):
        precision_recall(np.zeros((0, 3)), x)
    with pytest.raises(InputError, match="finite"):
        precision_recall(np.full((5, 2), np.nan), x[:, :2], k=2)
    with pytest.raises(InputError, match="features in"):
        image_features([Image.new("RGB", (4, 4))], "sift")
    with pytest.raises(InputError, match="clip"):
        image_features([Image.new("RGB", (4, 4))], "clip")


def test_text_free_features_ignore_the_letters_but_not_the_colours() -> None:
    rng = random.Random(0)
    spec = renderer.random_spec(rng, "CAT", font="sans", jitter=0)
    same_look = renderer.SignSpec("COT", spec.background, spec.text_colour, "sans")
    other_bg = next(c for c in renderer.COLOURS if c not in (spec.background, spec.text_colour))
    other_colour = renderer.SignSpec("CAT", other_bg, spec.text_colour, "sans")
    features = text_free_features([renderer.render(s) for s in (spec, same_look, other_colour)])
    near = np.linalg.norm(features[0] - features[1])
    far = np.linalg.norm(features[0] - features[2])
    assert near < 0.2 * far
    hist = colour_histogram_features([renderer.render(spec)], bins=4)
    assert hist.shape == (1, 64) and np.isclose(hist.sum(), 1.0)
    assert pixel_features([renderer.render(spec)]).shape == (1, 3 * 8 * 3)


def test_clip_features_from_a_local_folder(tmp_path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    tiny = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config={**tiny, "vocab_size": 99, "bos_token_id": 0, "eos_token_id": 1},
                        vision_config={**tiny, "image_size": 32, "patch_size": 8}, projection_dim=8)
    CLIPModel(config).save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(tmp_path)
    images = [renderer.render(renderer.random_spec(random.Random(i))) for i in range(6)]
    features = image_features(images, "clip", clip_path=tmp_path)
    assert features.shape == (6, 8)
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    with pytest.raises(InputError, match="CLIP"):
        image_features(images, "clip", clip_path=tmp_path / "nothing")
