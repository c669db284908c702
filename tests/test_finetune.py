"""Localized LoRA fine-tuning: targets, frozen base, reload into a fresh pipeline, resume, data, CLI, bench."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from textloc.apps.finetune import (
    CHECKPOINT_NAME,
    LOG_NAME,
    LORA_WEIGHT_NAME,
    SUMMARY_NAME,
    SavedTensorMeter,
    SyntheticData,
    add_lora,
    bench_finetune,
    expected_lora_parameters,
    finetune,
    load_data,
    lora_state_dict,
    lora_target_modules,
    objective_for,
    resolve_layer_spec,
)
from textloc.apps.finetune.data import jsonl_caption
from textloc.apps.finetune.lora import trainable_parameters
from textloc.core.layers import list_text_layers
from textloc.errors import InputError, TextlocError, UnknownLayerError, UnsupportedModelError
from textloc.models.embedded import renderer
from textloc.models.embedded.pipeline import build_untrained
from textloc.models.embedded.scenarios import SCENARIOS, parse_scenario
from textloc.models.tiny import build_tiny_pipeline, tiny_call_kwargs
from textloc.runs.checkpoint import checkpoint_exists

FAST = dict(batch_size=2, sample_every=0, progress=False, lr=1e-2)


@pytest.fixture(scope="module")
def embedded_base():
    pipe = build_untrained(seed=0)
    pipe.set_progress_bar_config(disable=True)
    list_text_layers(pipe)  # trace once; copies keep the cache
    return pipe


@pytest.fixture
def embedded(embedded_base):
    return copy.deepcopy(embedded_base)


def _sample(pipe, steps: int = 2) -> np.ndarray:
    return pipe('a red sign that says "CAT"', num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
                output_type="np").images


# ------------------------------------------------------------------------------------------------ targets


@pytest.mark.parametrize("target, projections", [("attn", 4), ("text_kv", 2)])
def test_lora_targets_exactly_the_chosen_layers(embedded, target, projections) -> None:
    layers = list_text_layers(embedded)
    chosen = [layers[3].name, layers[5].name]
    config = add_lora(embedded, chosen, rank=4, target=target)
    targets = sorted(config.target_modules)
    assert len(targets) == 2 * projections
    assert all(t.rsplit(".", 2 if t.endswith("to_out.0") else 1)[0] in chosen for t in targets)
    if target == "text_kv":
        assert {t.rsplit(".", 1)[1] for t in targets} == {"to_k", "to_v"}
    trainable = trainable_parameters(embedded.unet)
    assert all("lora_" in name and name.split(".lora_")[0] in targets for name, _ in trainable)
    assert sum(p.numel() for _, p in trainable) == expected_lora_parameters(embedded, targets, rank=4)
    assert not any(p.requires_grad for p in embedded.text_encoder.parameters())


def test_text_kv_uses_add_projections_on_mmdit() -> None:
    pipe = build_tiny_pipeline("sd3")
    name = list_text_layers(pipe)[0].name
    assert lora_target_modules(pipe, [name], "text_kv") == [f"{name}.add_k_proj", f"{name}.add_v_proj"]
    assert f"{name}.to_add_out" in lora_target_modules(pipe, [name], "attn")


def test_layer_specs_resolve_and_bad_ones_raise(embedded) -> None:
    names = [layer.name for layer in list_text_layers(embedded)]
    assert resolve_layer_spec(embedded, "all-cross-attn") == names
    assert resolve_layer_spec(embedded, "5,1") == [names[1], names[5]]  # execution order
    a, b = resolve_layer_spec(embedded, "random-3", seed=1), resolve_layer_spec(embedded, "random-3", seed=1)
    assert a == b and len(set(a)) == 3 and a == [n for n in names if n in a]
    assert {tuple(resolve_layer_spec(embedded, "random-3", seed=s)) for s in range(6)} != {tuple(a)}
    with pytest.raises(InputError, match="random-K"):
        resolve_layer_spec(embedded, "random-99")
    with pytest.raises(InputError, match="random-K"):
        resolve_layer_spec(embedded, "random-0")
    with pytest.raises(UnknownLayerError, match="valid layers"):
        resolve_layer_spec(embedded, "down_blocks.9.attn2")
    with pytest.raises(InputError):
        resolve_layer_spec(embedded, " , ")
    # The embedded layout's shipped localization is its preset; a tiny SD 1.5 has neither preset nor one.
    assert resolve_layer_spec(embedded, "preset") == [names[4]]
    with pytest.raises(TextlocError):
        resolve_layer_spec(build_tiny_pipeline("sd15"), "preset")


def test_config_validation_and_unsupported_pipelines(embedded, tmp_path) -> None:
    with pytest.raises(InputError, match="Expected rank"):
        finetune(embedded, [0], "synthetic", tmp_path, rank=0, steps=1)
    with pytest.raises(InputError, match="Expected target"):
        finetune(embedded, [0], "synthetic", tmp_path, target="mlp", steps=1)
    with pytest.raises(UnsupportedModelError, match="not supported yet"):
        objective_for(object())
    assert not any(tmp_path.iterdir())  # nothing written for a rejected run


# ------------------------------------------------------------------------------------------------ training


def test_embedded_finetune_trains_only_lora_and_reloads_into_fresh_pipeline(embedded_base, tmp_path) -> None:
    pipe = copy.deepcopy(embedded_base)
    before = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()}
    before_text = {n: p.detach().clone() for n, p in pipe.text_encoder.named_parameters()}
    result = finetune(pipe, [3, 4], "synthetic:serif", tmp_path, steps=3, rank=4, alpha=8, **FAST)

    for name, p in pipe.unet.named_parameters():
        if "lora_" in name:
            assert p.requires_grad
            continue
        assert not p.requires_grad
        assert torch.equal(p, before[name.replace(".base_layer", "")]), name
    assert all(torch.equal(p, before_text[n]) for n, p in pipe.text_encoder.named_parameters())
    assert any(p.abs().sum() > 0 for n, p in pipe.unet.named_parameters() if "lora_B" in n)  # it learned
    assert result.trainable_params == expected_lora_parameters(pipe, result.target_modules, rank=4)
    assert 0 < result.trainable_share < 0.05 and result.final_loss is not None
    assert result.activation_bytes and result.activation_bytes > 0

    for name in (LORA_WEIGHT_NAME, LOG_NAME, SUMMARY_NAME):
        assert (tmp_path / name).is_file()
    assert checkpoint_exists(tmp_path / CHECKPOINT_NAME)
    assert not list(tmp_path.glob(".*tmp*"))  # no temp leftovers
    tuned = _sample(pipe)
    fresh = copy.deepcopy(embedded_base)
    fresh.load_lora_weights(str(tmp_path))
    np.testing.assert_allclose(_sample(fresh), tuned, atol=1e-6, rtol=0)
    assert np.abs(_sample(embedded_base) - tuned).max() > 1e-4  # and the adapter does something


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "sd3"])
def test_tiny_latent_pipelines_train_and_reload(arch, tmp_path) -> None:
    pipe = build_tiny_pipeline(arch)
    result = finetune(pipe, "all-cross-attn", "synthetic", tmp_path, steps=2, **FAST)
    assert result.trainable_params == expected_lora_parameters(pipe, result.target_modules, rank=4)
    kwargs = tiny_call_kwargs(arch, num_inference_steps=2, output_type="np")
    tuned = pipe("a sign", generator=torch.Generator().manual_seed(0), **kwargs).images
    fresh = build_tiny_pipeline(arch)
    fresh.load_lora_weights(str(tmp_path))
    again = fresh("a sign", generator=torch.Generator().manual_seed(0), **kwargs).images
    np.testing.assert_allclose(again, tuned, atol=1e-6, rtol=0)


def test_resume_after_kill_matches_an_uninterrupted_run(embedded_base, tmp_path) -> None:
    killed, straight = tmp_path / "killed", tmp_path / "straight"
    finetune(copy.deepcopy(embedded_base), [4], "synthetic", killed, steps=2, checkpoint_every=1, **FAST)
    with (killed / LOG_NAME).open("a") as log:  # the killed run had logged a step past its last checkpoint
        log.write(json.dumps({"step": 3, "loss": 9.9}) + "\n" + '{"step": 4, "lo')
    resumed = copy.deepcopy(embedded_base)
    result = finetune(resumed, [4], "synthetic", killed, steps=4, checkpoint_every=1, **FAST)
    assert result.resumed_from == 2
    reference = copy.deepcopy(embedded_base)
    finetune(reference, [4], "synthetic", straight, steps=4, checkpoint_every=0, **FAST)
    a, b = lora_state_dict(resumed), lora_state_dict(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit-identical on CPU
    steps = [json.loads(line)["step"] for line in (killed / LOG_NAME).read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]

    with pytest.raises(InputError, match="rank"):
        finetune(copy.deepcopy(embedded_base), [4], "synthetic", killed, steps=6, rank=8, **FAST)
    with pytest.raises(InputError, match="steps"):
        finetune(copy.deepcopy(embedded_base), [4], "synthetic", killed, steps=2, **FAST)
    with pytest.raises(InputError, match="already has"):
        finetune(resumed, [4], "synthetic", tmp_path / "again", steps=1, **FAST)


class _Planted:
    """A pickle whose unpickling creates ``marker``: what a malicious ``checkpoint.pt`` would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_resume_never_unpickles_a_planted_checkpoint_pt(embedded_base, tmp_path) -> None:
    import pickle

    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Planted(probe))).close()  # the payload works: unpickling it creates the file
    assert probe.exists()

    marker, run = tmp_path / "pwned", tmp_path / "run"
    run.mkdir()
    torch.save({"step": 1, "payload": _Planted(marker)}, run / "checkpoint.pt")  # a pickle, as old versions wrote
    result = finetune(copy.deepcopy(embedded_base), [4], "synthetic", run, steps=2, checkpoint_every=1, **FAST)
    assert result.resumed_from == 0 and not marker.exists()  # not a checkpoint: never opened, run starts over
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"payload": _Planted(marker)}))  # planted next to a real one
    result = finetune(copy.deepcopy(embedded_base), [4], "synthetic", run, steps=3, checkpoint_every=1, **FAST)
    assert result.resumed_from == 2 and not marker.exists()
    assert (run / "checkpoint.pt").exists()  # left alone, never read
    assert sorted(p.name for p in (run / CHECKPOINT_NAME).iterdir()) == ["meta.json", "tensors.safetensors"]


def test_corrupt_checkpoint_stops_resume_before_the_pipeline_is_touched(embedded_base, tmp_path) -> None:
    from textloc.runs.checkpoint import CheckpointError

    finetune(copy.deepcopy(embedded_base), [4], "synthetic", tmp_path, steps=1, **FAST)
    tensors = tmp_path / CHECKPOINT_NAME / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-16])  # truncated, e.g. by a full disk
    pipe = copy.deepcopy(embedded_base)
    with pytest.raises(CheckpointError, match="truncated"):
        finetune(pipe, [4], "synthetic", tmp_path, steps=2, **FAST)
    assert not getattr(pipe.unet, "peft_config", None)  # no adapter was added
    result = finetune(pipe, [4], "synthetic", tmp_path, steps=1, resume=False, **FAST)  # --no-resume starts over
    assert result.resumed_from == 0 and checkpoint_exists(tmp_path / CHECKPOINT_NAME)


def test_a_live_run_folder_is_neither_resumed_nor_wiped_by_a_second_process(embedded_base, tmp_path) -> None:
    import fcntl

    finetune(copy.deepcopy(embedded_base), [4], "synthetic", tmp_path, steps=1, **FAST)
    with (tmp_path / ".lock").open("a") as held:  # another process is training in this folder
        fcntl.flock(held.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        for resume in (True, False):
            with pytest.raises(InputError, match="in use"):
                finetune(copy.deepcopy(embedded_base), [4], "synthetic", tmp_path, steps=2, resume=resume, **FAST)
        assert checkpoint_exists(tmp_path / CHECKPOINT_NAME) and (tmp_path / "config.json").is_file()


def test_finetune_reaches_the_embedded_model_only_through_its_profile(embedded) -> None:
    """apps.finetune asks the profile (objective, data, scenarios); it never imports the model's package."""
    import textloc.apps.finetune as package
    from textloc.models.profiles import profile_for

    sources = Path(package.__file__).parent.glob("*.py")
    assert not [f.name for f in sources if "textloc.models.embedded" in f.read_text()]
    recipe = profile_for(embedded).training
    objective = objective_for(embedded)
    assert recipe is not None and objective.recipe is recipe and objective.crop_images is False
    assert objective.image_size == (renderer.HEIGHT, renderer.WIDTH)
    assert objective_for(build_tiny_pipeline("sd15")).crop_images  # a diffusers family: its standard objective


# ------------------------------------------------------------------------------------------------ data


def _write_sign(path: Path, text: str, seed: int) -> None:
    renderer.render(renderer.random_spec(random.Random(seed), text)).resize((128, 48)).save(path)


def test_folder_data_skips_corrupt_images_and_missing_captions(embedded_base, tmp_path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    for i, word in enumerate(["CAT", "DOG", "SUN"]):
        _write_sign(folder / f"{i}.png", word, i)
        (folder / f"{i}.txt").write_text(f'a sign that says "{word}"')
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "broken.txt").write_text('a sign that says "BAD"')
    _write_sign(folder / "nocaption.png", "HAT", 9)
    (folder / "empty.txt").write_text("")  # a caption without an image is simply not data

    data = load_data(str(folder))
    assert data.report.usable == 3
    assert len(data.report.corrupt_images) == 1 and len(data.report.missing_captions) == 1
    prompts, images = data.batch(0, 5, (24, 64), crop=False)
    assert len(prompts) == 5 and images.shape == (5, 3, 24, 64) and images.min() >= -1 and images.max() <= 1

    (folder / "1.png").write_bytes(b"gone bad after the scan")  # breaks mid-run: skipped, counted, no crash
    data._cache.clear()
    for step in range(3):
        data.batch(step, 2, (24, 64))
    assert len(data.report.corrupt_images) == 2

    result = finetune(copy.deepcopy(embedded_base), [5], str(folder), tmp_path / "run", steps=1, **FAST)
    assert result.data["usable"] == 2 and result.data["skipped"] == 3  # a fresh scan sees 1.png broken too
    (folder / "0.txt").write_text('a sign that says "COW"')  # the data changed in place: no silent resume
    with pytest.raises(InputError, match="inputs.data"):
        finetune(copy.deepcopy(embedded_base), [5], str(folder), tmp_path / "run", steps=2, **FAST)


def test_jsonl_data_reports_every_kind_of_bad_record(tmp_path) -> None:
    _write_sign(tmp_path / "a.png", "OPEN", 1)
    _write_sign(tmp_path / "b.png", "SHUT", 2)
    lines = [
        json.dumps({"image": "a.png", "caption": "a shop sign", "text": "OPEN"}),
        json.dumps({"file_name": str(tmp_path / "b.png"), "prompt": 'a sign that says "SHUT"', "text": "SHUT"}),
        json.dumps({"image": "a.png", "text": "OPEN"}),  # no caption
        json.dumps({"image": "missing.png", "caption": "gone"}),
        "{not json",
        json.dumps({"caption": "no image key"}),
        "",
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(lines))
    data = load_data(str(tmp_path / "data.jsonl"))
    assert data.report.usable == 2
    assert len(data.report.missing_captions) == 1 and len(data.report.corrupt_images) == 1
    assert len(data.report.bad_records) == 2
    assert [caption for _, caption in data.items] == ['a shop sign that says "OPEN"', 'a sign that says "SHUT"']
    assert jsonl_caption({"caption": "x", "text": ["A", "B"]}) == 'x that says "A B"'
    with pytest.raises(InputError, match="Expected --data"):
        load_data("nowhere/at/all")
    (tmp_path / "bad.jsonl").write_text("{broken\n")
    with pytest.raises(InputError, match="usable"):
        load_data(str(tmp_path / "bad.jsonl"))


def test_synthetic_scenarios_are_deterministic_and_hold_out_test_strings() -> None:
    serif = SyntheticData(SCENARIOS["serif"], seed=3)
    p1, x1 = serif.batch(7, 4, (24, 64))
    p2, x2 = serif.batch(7, 4, (24, 64))
    assert p1 == p2 and torch.equal(x1, x2) and all("serif" in p for p in p1)
    rng = random.Random(0)
    assert all(not renderer.is_reserved(SCENARIOS["long"].spec(rng).text) for _ in range(50))
    tests = SCENARIOS["letters-QXZJ"].test_specs(20)
    assert all(renderer.is_reserved(s.text) and set(s.text) <= set("QXZJ") for s in tests)
    assert all(len(s.text) == 6 for s in SCENARIOS["long"].test_specs(10))
    custom = parse_scenario("font=mono,letters=abc,len=2-4")
    assert (custom.font, custom.letters, custom.min_len, custom.max_len) == ("mono", "ABC", 2, 4)
    two = parse_scenario("words=2,len=5-6")
    texts = [s.text for s in two.test_specs(20)]
    assert all(t.count(" ") == 1 and 5 <= len(t) <= 6 and all(t.split(" ")) for t in texts)
    for bad in ("nonsense", "font=comic", "len=9", "colour=red", "words=3", "words=x"):
        with pytest.raises(InputError):
            parse_scenario(bad)
    from textloc.models.embedded.train import TrainConfig, sample_batch

    prompts, images = SyntheticData(None, seed=5).batch(2, 3, (24, 64))
    ref_prompts, ref_images, _ = sample_batch(TrainConfig(seed=5, batch_size=3, cfg_dropout=0.0), 2)
    assert prompts == ref_prompts and torch.equal(images, ref_images)


def test_saved_tensor_meter_counts_less_for_later_layers(embedded_base) -> None:
    """A LoRA late in the U-Net keeps fewer activations than one on every layer (the memory argument)."""
    sizes = {}
    for spec in ("6", "all-cross-attn"):
        pipe = copy.deepcopy(embedded_base)
        add_lora(pipe, resolve_layer_spec(pipe, spec))
        objective = objective_for(pipe)
        prompts, images = SyntheticData().batch(0, 2, (24, 64))
        with SavedTensorMeter([pipe.unet, pipe.text_encoder]) as meter:
            objective.loss(pipe.unet, prompts, images, torch.Generator().manual_seed(0)).backward()
        sizes[spec] = meter.bytes
    assert 0 < sizes["6"] < sizes["all-cross-attn"]


# ------------------------------------------------------------------------------------------------ CLI, bench


def test_cli_finetune_runs_and_rejects_bad_layers(tmp_path) -> None:
    import typer
    from typer.testing import CliRunner

    from textloc.cli.finetune import register

    app = typer.Typer()
    register(app)
    runner = CliRunner()
    ok = runner.invoke(app, ["finetune", "-m", "tiny:sd15", "--layers", "0,2", "--steps", "1", "--batch-size", "1",
                             "--out", str(tmp_path / "run"), "--sample-every", "0"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "run" / LORA_WEIGHT_NAME).is_file()
    bad = runner.invoke(app, ["finetune", "-m", "tiny:sd15", "--layers", "random-99", "--out", str(tmp_path / "x")])
    assert isinstance(bad.exception, InputError)
    unknown = runner.invoke(app, ["finetune", "-m", "tiny:sd15", "--layers", "up.attn9", "--out", str(tmp_path / "x")])
    assert isinstance(unknown.exception, UnknownLayerError)
    assert not (tmp_path / "x").exists()
    assert runner.invoke(app, ["bench", "finetune", "--help"]).exit_code == 0


class _BlankReader:
    def read(self, images):
        return ["" for _ in images]


class _EchoReader:
    """Reads back given strings (an OCR that is right, up to case and punctuation, or wrong)."""

    def __init__(self, texts):
        self.texts = texts

    def read(self, images):
        return list(self.texts)


def test_score_signs_uses_shared_text_scores_and_the_profile_colour_reader() -> None:
    from textloc.apps.finetune import score_signs
    from textloc.models.profiles import profile_named

    profile = profile_named("embedded")
    specs = SCENARIOS["serif"].test_specs(6)
    cases = SCENARIOS["serif"].test_cases(6)
    assert [c.text for c in cases] == [s.text for s in specs]
    images = [renderer.render(spec) for spec in specs]  # ground-truth renders: colours read back exactly
    right = score_signs(cases, images, _EchoReader([f" {c.text.lower()}!" for c in cases]), profile)
    assert right["exact"] == 1.0 and right["cer"] == 0.0
    assert right["background_acc"] == 1.0 and right["text_colour_acc"] == 1.0
    wrong = score_signs(cases, images[::-1], _EchoReader(["" for _ in cases]), profile)
    assert wrong["exact"] == 0.0 and wrong["cer"] == 1.0 and wrong["background_acc"] < 1.0


def test_bench_finetune_writes_results_for_every_arm(embedded_base, tmp_path) -> None:
    payload = bench_finetune(lambda: copy.deepcopy(embedded_base), "serif", 1, tmp_path, layers_localized=[5],
                             random_seeds=(0,), n_test=5, batch_size=2, ocr=_BlankReader(), sample_steps=2,
                             progress=False)
    names = [row["variant"] for row in payload["rows"]]
    assert names == ["base", "localized", "all-cross-attn", "random-1-seed0"]
    by_name = {row["variant"]: row for row in payload["rows"]}
    assert by_name["localized"]["trainable_share"] < by_name["all-cross-attn"]["trainable_share"]
    assert all(0 <= row["precision"] <= 1 and 0 <= row["recall"] <= 1 for row in payload["rows"][1:])
    for name in ("results.json", "results.md", "comparison.png"):
        assert (tmp_path / name).is_file()
    assert "| localized | 1 |" in (tmp_path / "results.md").read_text()
