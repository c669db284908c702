"""Named exceptions. The CLI turns any ``TextlocError`` into a one-line message and exit code 2."""

from __future__ import annotations


class TextlocError(Exception):
    """Base class of every error textloc raises on purpose (bad input, unsupported model …)."""


class UnsupportedModelError(TextlocError):
    """The pipeline's denoiser is not an architecture textloc knows where text enters."""


class ModelLoadError(TextlocError):
    """A model could not be loaded (not a diffusers folder, offline, missing weights …)."""


class UnknownLayerError(TextlocError):
    """A plan names a layer (by name or index) that the model does not have."""


class StepWindowError(TextlocError):
    """A plan's step window lies outside the sampling schedule."""


class PlanMismatchError(TextlocError):
    """A plan or preset was recorded for another model or batch layout."""


class PlanNeverFiredError(TextlocError):
    """A plan's layer was never called during the run, so the patch silently did nothing."""


class InputError(TextlocError):
    """Invalid user input that is not about layers or plans (prompts, files, options)."""
