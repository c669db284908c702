"""One hook lifecycle for everything that intercepts a model: diffusers' own ``HookRegistry`` of named hooks.

Design. The engine (text K/V projections, the pooled path), prefix reuse (the denoiser's forward) and
Prompt-to-Prompt (attention modules) all intercept a model the same way: a ``diffusers.hooks.ModelHook``
(``pre_forward``/``post_forward``, or ``new_forward`` to replace a call) registered by *name* with
``HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, name)`` and removed with
``remove_hook(name)``. ``attach_hooks`` does both inside one context manager, removes in ``finally`` (also
when the pipeline raises), and then leaves every module exactly as it found it: diffusers' registry wraps
``forward`` on the instance and stores itself as ``module._diffusers_hook``, so once the last of our hooks
is gone the instance ``forward`` is deleted again and a registry we created is dropped. Nothing written onto
the user's modules outlives the context; a registry the user (or a diffusers cache) already had is kept with
its own hooks untouched.

The CFG branch. Pipelines that run the branches as separate denoiser calls label them with
``denoiser.cache_context("cond" | "uncond")`` (FLUX, Qwen-Image, Wan …). diffusers hands that label to every
``StateManager`` of a *stateful* hook in the registry; ``DenoiserCallHook`` keeps one (``CacheContextLabel``)
and passes the label to the step tracker, so consumers read ``DenoiserCall.branch`` and fall back to the
batch layout only when a pipeline sets no label.

Hook names all start with ``textloc.``; each feature names its hooks in a module constant (like diffusers'
``_LAYER_SKIP_HOOK``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import BaseState, StateManager
from torch import nn

from textloc.core.steps import DenoiserCall, StepTracker
from textloc.errors import InputError

HOOK_PREFIX = "textloc."
_REGISTRY_ATTR = "_diffusers_hook"  # where diffusers keeps a module's HookRegistry

#: What ``DenoiserCallHook`` hands each call to: return new ``(args, kwargs)`` or ``None`` to keep them.
CallHandler = Callable[[DenoiserCall, tuple, dict], "tuple[tuple, dict] | None"]


class _NoState(BaseState):
    def reset(self, *args: Any, **kwargs: Any) -> None:
        return None


class CacheContextLabel(StateManager):
    """Receives the pipeline's ``cache_context`` label (diffusers sets it on every stateful hook's manager).

    ``label`` is ``"cond"``/``"uncond"`` (or whatever name the pipeline used) inside a labelled call and
    ``None`` otherwise. Older diffusers pass the bare name instead of a ``CacheContext``; both are read.
    """

    def __init__(self) -> None:
        super().__init__(_NoState)
        self.label: str | None = None

    def set_context(self, context: Any) -> None:
        super().set_context(context)
        self.label = context if context is None or isinstance(context, str) else getattr(context, "name", None)

    def reset(self, *args: Any, **kwargs: Any) -> None:
        super().reset(*args, **kwargs)
        self.label = None


class DenoiserCallHook(ModelHook):
    r"""A stateful hook on the denoiser: each call becomes a ``DenoiserCall`` handed to ``on_call``.

    Args:
        tracker: the run's ``StepTracker`` (the step always comes from the scheduler).
        on_call: ``(call, args, kwargs) -> (args, kwargs) | None``; may change the call's inputs.
    """

    _is_stateful = True  # so that diffusers' `cache_context` reaches `branch`

    def __init__(self, tracker: StepTracker, on_call: CallHandler) -> None:
        super().__init__()
        self.tracker = tracker
        self.on_call = on_call
        self.branch = CacheContextLabel()

    def pre_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> tuple[tuple, dict]:
        call = self.tracker.enter(args, kwargs, self.branch.label)
        changed = self.on_call(call, args, kwargs)
        return (args, kwargs) if changed is None else changed

    def reset_state(self, module: nn.Module) -> nn.Module:
        # Pipelines reset stateful hooks at the end of every call (`maybe_free_model_hooks`); only the label
        # belongs to that call. What the run recorded stays with the run, which resets it itself.
        self.branch.reset()
        return module


class OutputHook(ModelHook):
    """A hook that hands a module's output to ``fn`` and returns what ``fn`` returns (``None``: unchanged)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        super().__init__()
        self.fn = fn

    def post_forward(self, module: nn.Module, output: Any) -> Any:
        new = self.fn(output)
        return output if new is None else new


@dataclass(frozen=True)
class _Found:
    """What a module carried before our first hook went on: restored once our last hook is off."""

    had_registry: bool
    had_forward: bool


def _invalidate(root: nn.Module | None) -> None:
    """Drop diffusers' cached list of child registries under ``root`` (hooks were added or removed)."""
    registry = None if root is None else root.__dict__.get(_REGISTRY_ATTR)
    invalidate = getattr(registry, "invalidate_child_registries_cache", None)
    if invalidate is not None:
        invalidate()


@contextmanager
def attach_hooks(entries: Sequence[tuple[nn.Module, str, ModelHook]], *, root: nn.Module | None = None
                 ) -> Iterator[None]:
    r"""Register ``(module, name, hook)`` entries in diffusers' ``HookRegistry``; remove them all on exit.

    Args:
        entries: hooks to register, in order (a later hook on the same module wraps the earlier ones).
        root: the model the modules belong to; its cached list of child registries is refreshed after
            hooks are added and removed (``cache_context`` walks that list).

    On exit (normal or not) every hook is removed by name, in reverse order, and every module is left as
    it was found: no ``forward`` on the instance, no registry that was not there before.

    Raises:
        InputError: a hook of the same name is already on a module (another textloc run is using it).
    """
    found: dict[int, tuple[nn.Module, _Found]] = {}
    installed: list[tuple[nn.Module, str]] = []
    try:
        for module, name, hook in entries:
            if not name.startswith(HOOK_PREFIX):
                raise ValueError(f"Expected a hook name starting with {HOOK_PREFIX!r}, but got {name!r}")
            if id(module) not in found:
                found[id(module)] = (module, _Found(_REGISTRY_ATTR in module.__dict__, "forward" in module.__dict__))
            registry = HookRegistry.check_if_exists_or_initialize(module)
            if registry.get_hook(name) is not None:
                raise InputError(f"The hook {name!r} is already on {type(module).__name__}: another textloc run "
                                 "is using this model (one run per model at a time)")
            registry.register_hook(hook, name)
            installed.append((module, name))
        _invalidate(root)
        yield
    finally:
        for module, name in reversed(installed):
            module.__dict__[_REGISTRY_ATTR].remove_hook(name, recurse=False)
        for module, before in found.values():
            _tidy(module, before)
        _invalidate(root)


def _tidy(module: nn.Module, before: _Found) -> None:
    """Undo what the registry wrote on ``module`` once it holds none of anybody's hooks."""
    registry = module.__dict__.get(_REGISTRY_ATTR)
    if registry is not None and registry.hooks:
        return  # someone else's hooks are still on it; their forward wrapper stays
    if not before.had_forward:
        module.__dict__.pop("forward", None)
    if not before.had_registry:
        module.__dict__.pop(_REGISTRY_ATTR, None)


def registered_hooks(root: nn.Module) -> dict[str, list[str]]:
    """Hook names in the registries under ``root``, by module path (``""`` = root); for checks and debugging."""
    out = {}
    for path, module in root.named_modules():
        registry = module.__dict__.get(_REGISTRY_ATTR)
        if registry is not None and registry.hooks:
            out[path] = list(registry.hooks)
    return out


def leftovers(root: nn.Module) -> list[str]:
    """Modules under ``root`` that carry a textloc hook or an instance ``forward``: empty after every run."""
    out = []
    for path, module in root.named_modules():
        registry = module.__dict__.get(_REGISTRY_ATTR)
        names = [n for n in (registry.hooks if registry is not None else {}) if n.startswith(HOOK_PREFIX)]
        stray_forward = "forward" in module.__dict__ and (registry is None or not registry.hooks)
        if names or stray_forward:
            out.append(f"{path or '<root>'}: {names or 'forward'}")
    return out
