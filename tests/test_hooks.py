"""The hook lifecycle (core.hooks) and step tracking (core.steps): named hooks in diffusers' HookRegistry,
removed by name, nothing left on the user's modules; the step from the scheduler; CFG labels from
``cache_context``."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.models.cache_utils import CacheMixin
from torch import nn

from textloc.core.hooks import DenoiserCallHook, OutputHook, attach_hooks, leftovers, registered_hooks
from textloc.core.layers import get_denoiser
from textloc.core.patch_run import PatchSetup
from textloc.core.plan import PatchPlan
from textloc.core.steps import COND, UNCOND, DenoiserCall, StepTracker, cfg_branch, denoising_step
from textloc.errors import InputError, PlanMismatchError

SRC = Path(__file__).resolve().parents[1] / "src" / "textloc"


def _state(module: nn.Module) -> set[str]:
    return set(module.__dict__)


class Toy(nn.Module, CacheMixin):
    """A denoiser-shaped module with diffusers' `cache_context`, as FLUX's transformer has."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(2, 2)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return self.proj(sample)


SCHEDULER = SimpleNamespace(timesteps=torch.tensor([900.0, 500.0, 100.0]))  # looked up by timestep


def test_attach_registers_by_name_and_leaves_nothing_behind() -> None:
    toy = Toy()
    before = {name: _state(m) for name, m in toy.named_modules()}
    x = torch.randn(3, 2)
    plain = toy(x, torch.tensor(500.0))
    with attach_hooks([(toy.proj, "textloc.test.double", OutputHook(lambda out: out * 2))], root=toy):
        assert registered_hooks(toy) == {"proj": ["textloc.test.double"]}
        assert torch.equal(toy(x, torch.tensor(500.0)), plain * 2)
    assert torch.equal(toy(x, torch.tensor(500.0)), plain)
    assert {name: _state(m) for name, m in toy.named_modules()} == before
    assert leftovers(toy) == []


def test_removed_when_the_body_raises() -> None:
    toy = Toy()
    before = _state(toy.proj)
    with pytest.raises(RuntimeError, match="boom"), attach_hooks([(toy.proj, "textloc.test", OutputHook(id))]):
        raise RuntimeError("boom")
    assert _state(toy.proj) == before and leftovers(toy) == []


def test_someone_elses_registry_and_hooks_are_kept() -> None:
    class Plus(ModelHook):
        def post_forward(self, module, output):
            return output + 1

    toy = Toy()
    x = torch.randn(1, 2)
    plain = toy.proj(x)
    HookRegistry.check_if_exists_or_initialize(toy.proj).register_hook(Plus(), "user.plus")
    with attach_hooks([(toy.proj, "textloc.test.double", OutputHook(lambda out: out * 2))]):
        assert torch.allclose(toy.proj(x), (plain + 1) * 2)
    assert registered_hooks(toy) == {"proj": ["user.plus"]}
    assert torch.allclose(toy.proj(x), plain + 1)


def test_duplicate_name_is_an_input_error_and_unwinds() -> None:
    toy = Toy()
    before = _state(toy.proj)
    hook = (toy.proj, "textloc.test", OutputHook(id))
    with attach_hooks([hook]):
        second = [(toy, "textloc.other", OutputHook(id)), hook]
        with pytest.raises(InputError, match="another textloc run"), attach_hooks(second):
            pass
        assert registered_hooks(toy) == {"proj": ["textloc.test"]}  # the outer run's hook is untouched
    assert _state(toy.proj) == before and _state(toy) == _state(Toy())
    with pytest.raises(ValueError, match="textloc."), attach_hooks([(toy, "mine", OutputHook(id))]):
        pass
    assert leftovers(toy) == []


def test_cache_context_label_reaches_the_denoiser_hook() -> None:
    toy = Toy()
    calls: list[DenoiserCall] = []
    tracker = StepTracker(SCHEDULER)
    x = torch.randn(2, 2)
    with attach_hooks([(toy, "textloc.test", DenoiserCallHook(tracker, lambda c, a, k: calls.append(c)))], root=toy):
        for t in (900.0, 500.0):
            with toy.cache_context("cond"):
                toy(x, torch.tensor(t))
            with toy.cache_context("uncond"):
                toy(x, timestep=torch.tensor(t))
        toy(x, torch.tensor(100.0))  # unlabelled
    assert [(c.step, c.call, c.label, c.branch) for c in calls] == [
        (0, 0, "cond", COND), (0, 1, "uncond", UNCOND), (1, 0, "cond", COND), (1, 1, "uncond", UNCOND),
        (2, 0, None, None),
    ]
    assert all(c.batch == 2 for c in calls) and tracker.calls == 5
    assert leftovers(toy) == []


def test_step_tracker_counts_calls_within_a_step_and_resets() -> None:
    tracker = StepTracker(SCHEDULER)
    x = torch.zeros(4, 1)
    seen = [tracker.enter((x, torch.tensor(t)), {}) for t in (900.0, 900.0, 500.0, 500.0, 500.0)]
    assert [(c.step, c.call) for c in seen] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert tracker.step == 1
    tracker.reset()
    assert tracker.step == -1 and tracker.enter((), {"sample": x, "timestep": 500.0}).call == 0
    with pytest.raises(PlanMismatchError, match="timestep"):
        tracker.enter((x,), {})


def test_denoising_step_asks_schedulers_that_count_and_looks_up_the_others() -> None:
    class Counting:
        step_index = None
        begin_index = None

    counting = Counting()
    assert denoising_step(counting, 123) == 0  # before the first scheduler.step()
    counting.step_index = 3
    assert denoising_step(counting, 123) == 3
    assert denoising_step(SCHEDULER, torch.tensor([100.0, 100.0])) == 2
    assert denoising_step(SCHEDULER, 0.5) == 1  # FLUX passes t / 1000
    with pytest.raises(PlanMismatchError):
        denoising_step(SimpleNamespace(timesteps=[]), 1)


def test_cfg_branch_labels() -> None:
    assert [cfg_branch(x) for x in ("cond", "uncond", "uncond_stg", "uncond_modality", "cond_uncond", None)] == [
        COND, UNCOND, UNCOND, UNCOND, None, None,
    ]


@pytest.mark.parametrize("one_pass", [False, True])
def test_rows_follow_the_label_where_set_and_the_layout_otherwise(one_pass: bool) -> None:
    """A labelled "uncond" call gets no rows under branches="cond"; an unlabelled call of ``n`` rows is the
    conditional branch alone, whatever its order within the step (PNDM repeats a timestep)."""
    n = 2
    setup = PatchSetup(PatchPlan(layers=[0], branches="cond"), (), n, one_pass=one_pass)
    batch = 2 * n if one_pass else n
    sources = list(range(n))
    assert setup.rows(DenoiserCall(0, 0, batch, "uncond"))[0] == []
    assert setup.rows(DenoiserCall(0, 1, batch, "cond"))[0] == sources
    assert setup.rows(DenoiserCall(0, 0, batch, None))[0] == sources
    assert setup.rows(DenoiserCall(0, 1, batch, None))[0] == sources
    assert setup.rows(DenoiserCall(0, 0, 2 * batch, "cond_uncond"))[0] == [r + batch for r in sources]
    both = PatchSetup(PatchPlan(layers=[0]), (), n, one_pass=one_pass)
    assert both.rows(DenoiserCall(0, 0, batch, "uncond"))[0] == sources
    if one_pass:
        assert setup.rows(DenoiserCall(0, 1, batch, "cond"))[1] == [r + n for r in sources]
    with pytest.raises(PlanMismatchError, match="but got 3"):
        setup.rows(DenoiserCall(0, 0, 3, None))


def test_real_pipelines_label_their_cfg_calls() -> None:
    """FLUX (true CFG) labels its two calls per step; SD 1.5 batches [uncond, cond] and sets no label (and its
    PNDM scheduler repeats a timestep: three calls for two steps, which is why calls are never counted)."""
    from textloc.models.tiny import build_tiny_pipeline, tiny_call_kwargs

    for arch, expected in (("flux", [COND, UNCOND, COND, UNCOND]), ("sd15", [None, None, None])):
        pipe = build_tiny_pipeline(arch)
        pipe.set_progress_bar_config(disable=True)
        denoiser = get_denoiser(pipe)
        calls: list[DenoiserCall] = []
        hook = DenoiserCallHook(StepTracker(pipe.scheduler), lambda c, a, k, seen=calls: seen.append(c))
        with attach_hooks([(denoiser, "textloc.test", hook)], root=denoiser):
            pipe('a sign that says "CAT"', **{**tiny_call_kwargs(arch), "num_inference_steps": 2})
        assert [c.branch for c in calls] == expected, arch
        assert [c.step for c in calls] == sorted(c.step for c in calls) and calls[-1].step == 1
        assert leftovers(denoiser) == []


def test_no_forward_replacement_or_module_attributes_in_the_source() -> None:
    """Interception goes through the registry only: no `x.forward = …`, no `_textloc_*` attributes on
    modules, no swapped attention processors."""
    offenders = []
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        for pattern in (r"\.forward\s*=[^=]", r"setattr\([^)]*_textloc", r"\._textloc_\w+\s*=[^=]",
                        r"set_attn_processor\("):
            offenders += [f"{path.relative_to(SRC)}: {m.group(0)}" for m in re.finditer(pattern, text)]
    assert offenders == []
