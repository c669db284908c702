"""Named exceptions: every error a user can cause derives from ``TextlocError``.

Why one module: the CLI maps errors in exactly one place (``textloc.cli.app.main``): a ``TextlocError`` becomes
one line on stderr and exit code 2, so a traceback only ever means a bug. Errors that also belong to a builtin
family keep it as a second base (``UnknownBackendError`` is a ``ValueError``, ``OCRUnavailableError`` a
``RuntimeError``) so callers that caught the builtin before keep working.
"""

from __future__ import annotations

import errno


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


class UnknownBackendError(InputError, ValueError):
    """A backend name (OCR reader …) that is not registered; the message lists the options."""


class OCRUnavailableError(TextlocError, RuntimeError):
    """An OCR backend cannot run here (missing package, binary or weights)."""


class LLMError(TextlocError):
    """The configured LLM endpoint could not be reached or gave an answer that is not the JSON we asked for."""


#: ``OSError`` numbers the user's environment causes (a path, a permission, a full disk), not a bug of ours.
USER_OS_ERRNOS = frozenset({
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ENOENT,
    errno.ENAMETOOLONG, errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ELOOP, errno.ENOTEMPTY, errno.EXDEV,
    errno.EBUSY, errno.ETXTBSY, errno.EMFILE, errno.ENFILE, errno.EIO,
})


def describe_os_error(err: OSError) -> str | None:
    """One line for an ``OSError`` the user's environment caused (``None``: not one of those, so a bug).

    The line names the path(s) and the reason, e.g. ``cannot write /ro/out.png: Read-only file system``.
    """
    if err.errno not in USER_OS_ERRNOS:
        return None
    reason = err.strerror or errno.errorcode.get(err.errno or 0, "error")
    paths = [str(p) for p in (err.filename, err.filename2) if p is not None]
    if not paths:
        return reason
    where = " -> ".join(paths)
    if len(where) > 200:  # an over-long name (ENAMETOOLONG) must not flood the one line
        where = where[:90] + " … " + where[-90:]
    return f"{where}: {reason}"


def describe_decode_error(err: UnicodeDecodeError, path: object | None = None) -> str:
    """One line for a file that is not UTF-8 text (a binary prompt file, an image given as a word list …)."""
    where = f"{path} " if path is not None else "an input file "
    return f"Expected {where}to be UTF-8 text, but byte {err.start} is 0x{err.object[err.start]:02x}"
