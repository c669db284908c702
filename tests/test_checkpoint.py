"""Pickle-free training checkpoints (textloc.runs.checkpoint)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from diffusers.training_utils import EMAModel
from torch import nn

from textloc.errors import InputError
from textloc.runs.checkpoint import checkpoint_exists, load_checkpoint, save_checkpoint


class _Touch:
    """A pickle whose unpickling creates ``path``: what a malicious checkpoint.pt would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _setup(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.GELU(), nn.Linear(16, 2))
    extra = nn.Linear(2, 2)
    params = list(model.parameters()) + list(extra.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.01)
    ema = EMAModel(params, decay=0.9)
    return model, extra, params, optimizer, ema


def _step(model, extra, params, optimizer, ema) -> float:
    x = torch.randn(8, 4)  # drawn from the global RNG, which the checkpoint restores
    loss = (extra(model(x)) ** 2).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    ema.step(params)
    return loss.item()


def test_round_trip_reproduces_next_step_bit_for_bit(tmp_path):
    model, extra, params, optimizer, ema = _setup(0)
    for _ in range(3):
        _step(model, extra, params, optimizer, ema)
    path = tmp_path / "checkpoint"
    save_checkpoint(path, modules={"model": model, "extra": extra}, optimizer=optimizer, ema=ema,
                    meta={"step": 3, "note": "x"})
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "tensors.safetensors"]
    expected = [_step(model, extra, params, optimizer, ema) for _ in range(2)]
    expected_shadow = [s.clone() for s in ema.shadow_params]

    model2, extra2, params2, optimizer2, ema2 = _setup(1)  # different init, different RNG state
    torch.manual_seed(999)
    meta = load_checkpoint(path, modules={"model": model2, "extra": extra2}, optimizer=optimizer2, ema=ema2)
    assert meta == {"step": 3, "note": "x"}
    assert ema2.optimization_step == 3
    got = [_step(model2, extra2, params2, optimizer2, ema2) for _ in range(2)]
    assert got == expected
    for a, b in zip(params, params2, strict=True):
        assert torch.equal(a, b)
    for a, b in zip(expected_shadow, ema2.shadow_params, strict=True):
        assert torch.equal(a, b)


def test_save_overwrites_atomically(tmp_path):
    model, extra, params, optimizer, ema = _setup(0)
    path = tmp_path / "checkpoint"
    for step in (1, 2):
        _step(model, extra, params, optimizer, ema)
        save_checkpoint(path, modules={"model": model}, optimizer=optimizer, meta={"step": step})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
    assert load_checkpoint(path, modules={"model": model}, optimizer=optimizer)["step"] == 2
    # a kill between the two renames leaves only NAME.old: still loadable
    path.rename(tmp_path / "checkpoint.old")
    assert checkpoint_exists(path)
    assert load_checkpoint(path, modules={"model": model})["step"] == 2


def test_malicious_pickle_is_never_loaded(tmp_path):
    # the payload is live: unpickling it does create its file
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Touch(probe)))
    assert probe.exists()

    model, extra, params, optimizer, ema = _setup(0)
    path = tmp_path / "checkpoint"
    save_checkpoint(path, modules={"model": model}, optimizer=optimizer, ema=ema, meta={"step": 0})
    marker = tmp_path / "pwned"
    (path / "checkpoint.pt").write_bytes(pickle.dumps(_Touch(marker)))
    (tmp_path / "checkpoint.pt").write_bytes(pickle.dumps(_Touch(marker)))
    load_checkpoint(path, modules={"model": model}, optimizer=optimizer, ema=ema)
    assert not marker.exists()
    # a folder holding only a pickle is not a checkpoint
    bad = tmp_path / "only_pickle"
    bad.mkdir()
    (bad / "checkpoint.pt").write_bytes(pickle.dumps(_Touch(marker)))
    assert not checkpoint_exists(bad)
    with pytest.raises(InputError, match="only_pickle"):
        load_checkpoint(bad, modules={"model": model})
    assert not marker.exists()


def test_unet_trainer_ignores_planted_checkpoint_pt(tmp_path):
    from textloc.models.embedded.train import TrainConfig, train

    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    (out / "checkpoint.pt").write_bytes(pickle.dumps(_Touch(marker)))
    config = TrainConfig(batch_size=2, max_steps=1, checkpoint_every=1, sample_every=1000, threads=1)
    train(config, out)
    assert not marker.exists()
    assert (out / "checkpoint" / "tensors.safetensors").exists()
    assert json.loads((out / "checkpoint" / "meta.json").read_text())["meta"]["step"] == 1


def test_truncated_missing_and_corrupt_raise_input_error(tmp_path):
    model, extra, params, optimizer, ema = _setup(0)
    path = tmp_path / "checkpoint"
    with pytest.raises(InputError, match="checkpoint"):
        load_checkpoint(path, modules={"model": model})
    save_checkpoint(path, modules={"model": model}, optimizer=optimizer, ema=ema, meta={"step": 0})
    tensors = path / "tensors.safetensors"
    data = tensors.read_bytes()
    tensors.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=str(path)) as info:
        load_checkpoint(path, modules={"model": model}, optimizer=optimizer, ema=ema)
    assert "\n" not in str(info.value)
    # without the size/checksum in meta.json, safetensors' own parse error still becomes an InputError
    meta = json.loads((path / "meta.json").read_text())
    del meta["tensors_bytes"], meta["tensors_sha256"]
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match=str(path)) as info:
        load_checkpoint(path, modules={"model": model})
    assert "\n" not in str(info.value)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(InputError, match=str(path)):
        load_checkpoint(path, modules={"model": model})


def test_mismatching_model_raises_input_error(tmp_path):
    model, extra, params, optimizer, ema = _setup(0)
    path = tmp_path / "checkpoint"
    save_checkpoint(path, modules={"model": model}, meta={"step": 0})
    with pytest.raises(InputError, match="does not fit"):
        load_checkpoint(path, modules={"model": nn.Linear(3, 3)})
