"""Invariants of the patching engine on tiny offline versions of every supported architecture."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch

from textloc.core.engine import generate
from textloc.core.hooks import leftovers, registered_hooks
from textloc.core.layers import get_denoiser, list_text_layers, model_fingerprint
from textloc.core.plan import PatchPlan
from textloc.errors import (
    InputError,
    PlanMismatchError,
    StepWindowError,
    UnknownLayerError,
)
from textloc.models.tiny import TINY_ARCHITECTURES, build_tiny_pipeline, tiny_call_kwargs

SOURCE = 'a sign that says "CAT"'
TARGET = 'a sign that says "DOG"'
HAS_POOLED = {"sdxl", "sd3", "flux", "if1", "if2"}


@cache
def tiny(arch: str):
    pipe = build_tiny_pipeline(arch)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, arch: str, prompt, plan=None, *, cfg=True, batch=1, per_prompt=1, size=(32, 32), target=None,
        mode="auto"):
    """Images as float arrays. One generator per image, so every engine mode can run every layout."""
    prompts = prompt if isinstance(prompt, list) else [prompt] * batch
    kwargs = tiny_call_kwargs(arch, cfg=cfg, batch_size=len(prompts), height=size[0], width=size[1])
    kwargs.update(num_inference_steps=2, output_type="np", num_images_per_prompt=per_prompt,
                  generator=[torch.Generator().manual_seed(i) for i in range(len(prompts) * per_prompt)])
    if plan is None:
        return np.asarray(pipe(prompts, **kwargs).images)
    return np.asarray(generate(pipe, prompts, plan, target_prompt=target, mode=mode, **kwargs).images)


LAYOUTS = {
    "cfg-square-1": dict(cfg=True, batch=1, per_prompt=1, size=(32, 32)),
    "nocfg-nonsquare-batch2x2": dict(cfg=False, batch=2, per_prompt=2, size=(32, 64)),
    "cfg-nonsquare-batch2": dict(cfg=True, batch=2, per_prompt=1, size=(32, 64)),
}
# One-pass runs sources and targets as one batch twice the size; BLAS may then sum in another order, so its
# images match the two-pass (and plain) ones to float32 rounding, not bit for bit.
ONE_PASS_ATOL = 1e-5


@pytest.mark.parametrize("mode", ["two-pass", "one-pass"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_invariants(arch: str, layout: str, mode: str) -> None:
    pipe = tiny(arch)
    opts = {**LAYOUTS[layout], "mode": mode}
    names = [layer.name for layer in list_text_layers(pipe)]
    plain = run(pipe, arch, SOURCE, **LAYOUTS[layout])
    # 1. Empty plan == plain pipeline, bit for bit.
    assert np.array_equal(run(pipe, arch, SOURCE, PatchPlan(), **opts), plain)
    # 2. Every text layer patched with the source's own prompt == plain (two-pass: bit for bit).
    own = PatchPlan(layers=names, target_prompt=SOURCE, pooled=arch in HAS_POOLED)
    if mode == "two-pass":
        assert np.array_equal(run(pipe, arch, SOURCE, own, **opts), plain)
    else:
        np.testing.assert_allclose(run(pipe, arch, SOURCE, own, **opts), plain, atol=ONE_PASS_ATOL, rtol=0)
    # 3. One layer with a different prompt changes the image.
    one = PatchPlan(layers=[names[len(names) // 2]], target_prompt=TARGET)
    changed = np.abs(run(pipe, arch, SOURCE, one, **opts) - plain).max()
    assert changed > (0 if mode == "two-pass" else 10 * ONE_PASS_ATOL)
    # 4. All text layers (+ pooled path) with the target == the target's own generation.
    everything = PatchPlan(layers=names, target_prompt=TARGET, pooled=arch in HAS_POOLED)
    target_image = run(pipe, arch, TARGET, **LAYOUTS[layout])
    patched = run(pipe, arch, SOURCE, everything, **opts)
    np.testing.assert_allclose(patched, target_image, atol=ONE_PASS_ATOL, rtol=0)
    # 5. Nothing the engine registered outlives the run.
    assert leftovers(get_denoiser(pipe)) == []


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_one_pass_equals_two_pass(arch: str) -> None:
    """The in-batch method gives the recorded-target method's images for every kind of plan."""
    pipe = tiny(arch)
    names = [layer.name for layer in list_text_layers(pipe)]
    plans = [
        PatchPlan(layers=[names[len(names) // 2]], target_prompt=TARGET),
        PatchPlan(layers=names, target_prompt=TARGET, pooled=arch in HAS_POOLED),
        PatchPlan(layers=names[:2], target_prompt=TARGET, start_step=1),
        PatchPlan(layers=names[-1:], target_prompt=TARGET, end_step=1, branches="cond"),
        PatchPlan(layers=names[:1], target_prompt=TARGET, heads=[0]),
    ]
    for plan in plans:
        for layout in ("cfg-square-1", "cfg-nonsquare-batch2"):
            two = run(pipe, arch, SOURCE, plan, mode="two-pass", **LAYOUTS[layout])
            one = run(pipe, arch, SOURCE, plan, mode="one-pass", **LAYOUTS[layout])
            np.testing.assert_allclose(one, two, atol=ONE_PASS_ATOL, rtol=0, err_msg=f"{plan} {layout}")


def test_one_pass_needs_per_image_generators() -> None:
    pipe = tiny("sd3")
    kwargs = {**tiny_call_kwargs("sd3", batch_size=2), "num_inference_steps": 2,
              "generator": torch.Generator().manual_seed(0)}
    with pytest.raises(InputError, match="one generator per image"):
        generate(pipe, [SOURCE, SOURCE], PatchPlan(layers=[0], target_prompt=TARGET), mode="one-pass", **kwargs)
    with pytest.raises(InputError, match="mode"):
        generate(pipe, SOURCE, PatchPlan(layers=[0], target_prompt=TARGET), mode="fast", **kwargs)


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_cond_branch_only_differs_from_both(arch: str) -> None:
    """Patching only the conditional branch vs both, with CFG. The unconditional branch reads the negative
    prompt in the target run too, so where text K/V are static (cross-attention, IF) patching it is a no-op
    and the images are bit-identical; where they evolve with the image (MMDiT, FLUX) the target run's
    unconditional K/V differ, so the images must differ. Without CFG there is only the conditional branch:
    the same run. FLUX runs its branches as separate calls labelled by `cache_context`; the others batch
    [uncond, cond]."""
    pipe = tiny(arch)
    layers = list_text_layers(pipe)
    names = [layer.name for layer in layers]
    both_plan = PatchPlan(layers=names, target_prompt=TARGET, branches="both")
    cond_plan = PatchPlan(layers=names, target_prompt=TARGET, branches="cond")
    # Two-pass: the same arithmetic in both runs, so any difference comes from the unconditional rows' values.
    both, cond = (run(pipe, arch, SOURCE, plan, mode="two-pass") for plan in (both_plan, cond_plan))
    assert not np.array_equal(cond, run(pipe, arch, SOURCE))
    if all(layer.static for layer in layers):
        assert np.array_equal(cond, both)
    else:
        assert not np.array_equal(cond, both)
    no_cfg = {"cfg": False, "mode": "two-pass"}
    assert np.array_equal(run(pipe, arch, SOURCE, cond_plan, **no_cfg), run(pipe, arch, SOURCE, both_plan, **no_cfg))


@pytest.mark.parametrize("arch", ["sd15", "sd3", "flux"])
def test_step_window_and_heads(arch: str) -> None:
    pipe = tiny(arch)
    names = [layer.name for layer in list_text_layers(pipe)]
    plain = run(pipe, arch, SOURCE)
    late = generate(pipe, SOURCE, PatchPlan(layers=names, target_prompt=TARGET, start_step=1),
                    **{**tiny_call_kwargs(arch), "num_inference_steps": 2,
                       "generator": torch.Generator().manual_seed(0), "output_type": "np"})
    assert set(late.fired[names[0]]) == {1}
    head = run(pipe, arch, SOURCE, PatchPlan(layers=names, target_prompt=TARGET, heads=[0]))
    full = run(pipe, arch, SOURCE, PatchPlan(layers=names, target_prompt=TARGET))
    assert not np.array_equal(head, plain)
    assert not np.array_equal(head, full)


def _hook_counts(pipe) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in get_denoiser(pipe).modules())


def _module_state(pipe) -> dict[str, set[str]]:
    """Every module's instance attributes: a hook lifecycle that cleans up leaves them exactly as they were."""
    return {name: set(m.__dict__) for name, m in get_denoiser(pipe).named_modules()}


@pytest.mark.parametrize("arch", ["sd15", "if1", "flux"])
def test_hooks_are_named_in_the_registry_during_the_run_and_gone_after(arch: str) -> None:
    """Engine hooks sit in diffusers' HookRegistry under their names while the pipeline runs (text K/V
    projections, denoiser, IF's pooled module); afterwards every module has the attributes it had before."""
    pipe = tiny(arch)
    denoiser = get_denoiser(pipe)
    names = [layer.name for layer in list_text_layers(pipe)]
    run(pipe, arch, SOURCE)  # a plain run first: what the pipeline itself leaves (FLUX's cache_context) stays
    before = _module_state(pipe)
    seen: dict[str, list[str]] = {}
    spy = denoiser.register_forward_pre_hook(lambda *_: seen.update(registered_hooks(denoiser)))
    plan = PatchPlan(layers=names[:1], target_prompt=TARGET, pooled=arch in HAS_POOLED)
    kwargs = {**tiny_call_kwargs(arch), "num_inference_steps": 2, "generator": [torch.Generator().manual_seed(0)]}
    try:
        generate(pipe, SOURCE, plan, mode="two-pass", **kwargs)
    finally:
        spy.remove()
    layer = list_text_layers(pipe)[0]
    assert seen.pop("") == ["textloc.engine.denoiser"]
    expected = {f"{layer.name}.{layer.key_proj}", f"{layer.name}.{layer.value_proj}"}
    if arch == "if1":
        expected.add("add_embedding")
    assert set(seen) == expected
    assert _module_state(pipe) == before and leftovers(denoiser) == []


def test_restored_after_exception() -> None:
    pipe = tiny("sd15")
    processors = dict(get_denoiser(pipe).attn_processors)
    hooks_before = _hook_counts(pipe)
    state_before = _module_state(pipe)
    names = [layer.name for layer in list_text_layers(pipe)]

    def boom(*_args, **_kwargs):
        raise RuntimeError("boom")

    kwargs = {**tiny_call_kwargs("sd15"), "num_inference_steps": 2, "callback_on_step_end": boom,
              "generator": torch.Generator().manual_seed(0)}
    with pytest.raises(RuntimeError, match="boom"):
        generate(pipe, SOURCE, PatchPlan(layers=names, target_prompt=TARGET), **kwargs)
    assert _hook_counts(pipe) == hooks_before
    assert _module_state(pipe) == state_before and leftovers(get_denoiser(pipe)) == []
    after = get_denoiser(pipe).attn_processors
    assert all(after[k] is v for k, v in processors.items())
    plain = run(pipe, "sd15", SOURCE)
    assert np.array_equal(run(pipe, "sd15", SOURCE, PatchPlan()), plain)


def test_bad_input_errors() -> None:
    pipe = tiny("sd15")
    kwargs = {**tiny_call_kwargs("sd15"), "num_inference_steps": 2}
    with pytest.raises(UnknownLayerError, match="valid layers"):
        generate(pipe, SOURCE, PatchPlan(layers=["nope.attn2"], target_prompt=TARGET), **kwargs)
    with pytest.raises(UnknownLayerError):
        generate(pipe, SOURCE, PatchPlan(layers=[999], target_prompt=TARGET), **kwargs)
    with pytest.raises(StepWindowError):
        generate(pipe, SOURCE, PatchPlan(layers=[0], target_prompt=TARGET, start_step=5), **kwargs)
    with pytest.raises(StepWindowError):
        PatchPlan(layers=[0], start_step=3, end_step=2)
    with pytest.raises(PlanMismatchError, match="made for"):
        generate(pipe, SOURCE, PatchPlan(layers=[0], target_prompt=TARGET, model="SD3Transformer2DModel:24:x"),
                 **kwargs)
    with pytest.raises(InputError, match="target prompt"):
        generate(pipe, SOURCE, PatchPlan(layers=[0]), **kwargs)
    with pytest.raises(InputError, match="pooled"):
        generate(pipe, SOURCE, PatchPlan(layers=[0], target_prompt=TARGET, pooled=True), **kwargs)
    with pytest.raises(InputError):
        PatchPlan(layers=[0], branches="uncond")


def test_plan_json_round_trip(tmp_path) -> None:
    pipe = tiny("sdxl")
    plan = PatchPlan(layers=[0, "up_blocks.0.attentions.0.transformer_blocks.0.attn2"], target_prompt=TARGET,
                     start_step=1, end_step=2, branches="cond", heads=[0], pooled=True,
                     model=model_fingerprint(pipe))
    path = tmp_path / "plan.json"
    plan.to_json(path)
    assert PatchPlan.from_json(path) == plan
    with pytest.raises(InputError, match="Unknown patch-plan fields"):
        PatchPlan.from_dict({"layers": [], "bogus": 1})


@pytest.mark.parametrize("arch", ["sd15", "sd3", "flux"])
def test_row_layers_batch_equals_separate_runs(arch: str) -> None:
    """Many plans as rows of one batch (batched sweeps) give each row what its own plan gives alone."""
    pipe = tiny(arch)
    names = [layer.name for layer in list_text_layers(pipe)]
    sets = [[], [names[0]], [names[-1]], names]
    prompts = [SOURCE] * len(sets)
    kwargs = {**tiny_call_kwargs(arch, batch_size=len(sets)), "num_inference_steps": 2, "output_type": "np"}
    gens = [torch.Generator().manual_seed(7) for _ in sets]
    batched = np.asarray(generate(pipe, prompts, PatchPlan(layers=names), target_prompt=TARGET, row_layers=sets,
                                  generator=gens, **kwargs).images)
    for row, layer_set in enumerate(sets):
        single_kwargs = {**tiny_call_kwargs(arch, batch_size=1), "num_inference_steps": 2, "output_type": "np"}
        alone = np.asarray(generate(pipe, [SOURCE], PatchPlan(layers=layer_set), target_prompt=TARGET,
                                    generator=[torch.Generator().manual_seed(7)], **single_kwargs).images)
        np.testing.assert_allclose(batched[row], alone[0], atol=2e-5, rtol=0)


def test_one_pass_equals_two_pass_on_the_embedded_model() -> None:
    from textloc.models.loading import load_pipeline

    pipe = load_pipeline("embedded")
    pipe.set_progress_bar_config(disable=True)
    source = 'a sign that says "CAT" on a blue background'
    plan = PatchPlan(layers=[4, 0, 1], target_prompt='a sign that says "HORSE" on a blue background')
    images = {
        mode: np.asarray(generate(pipe, source, plan, mode=mode, generator=torch.Generator().manual_seed(3),
                                  num_inference_steps=8, output_type="np").images)
        for mode in ("two-pass", "one-pass")
    }
    np.testing.assert_allclose(images["one-pass"], images["two-pass"], atol=ONE_PASS_ATOL, rtol=0)


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "sd3", "flux", "pixart-sigma"])
def test_prefix_reuse_is_bit_identical_and_skips_the_prefix(arch: str) -> None:
    """Runs sharing a source reuse its denoiser outputs before their start step, with identical images."""
    from textloc.core.prefix import PrefixCache

    pipe = tiny(arch)
    names = [layer.name for layer in list_text_layers(pipe)]

    def kwargs(seed: int = 0) -> dict:
        return {**tiny_call_kwargs(arch), "num_inference_steps": 4, "output_type": "np",
                "generator": [torch.Generator().manual_seed(seed)]}

    cache = PrefixCache(until_step=3)
    plain = np.asarray(generate(pipe, SOURCE, None, prefix=cache, **kwargs()).images)
    calls = cache.misses
    assert calls >= 3 and cache.hits == 0
    assert np.array_equal(np.asarray(generate(pipe, SOURCE, None, prefix=cache, **kwargs()).images), plain)
    assert cache.hits == calls and cache.misses == calls
    for start in (0, 2, 3):
        plan = PatchPlan(layers=names[:1], target_prompt=TARGET, start_step=start)
        expected = np.asarray(generate(pipe, SOURCE, plan, mode="two-pass", **kwargs()).images)
        hits = cache.hits
        reused = np.asarray(generate(pipe, SOURCE, plan, mode="two-pass", prefix=cache, **kwargs()).images)
        assert np.array_equal(reused, expected)
        assert cache.hits - hits == sum(len(cache.entries.get(step, [])) for step in range(start))
    # Another seed has other inputs: nothing is served, the images are that seed's own.
    hits = cache.hits
    other = np.asarray(generate(pipe, SOURCE, None, prefix=cache, **kwargs(seed=1)).images)
    assert cache.hits == hits
    assert np.array_equal(other, np.asarray(generate(pipe, SOURCE, None, **kwargs(seed=1)).images))
