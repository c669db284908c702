"""A run folder: where one command writes its records, and the rules that make a killed run resumable.

Why one home: every long command (localize, bench edit, bench safety, finetune) promises the same things, and
each used to implement them on its own (three resume checks, two JSONL readers). A :class:`RunFolder`

* takes an **exclusive lock** (``fcntl.flock`` on ``.lock``): a second process on the same folder stops at
  once with one line instead of interleaving records with the first;
* writes ``config.json`` on the first run: the command, its config and a **fingerprint** computed from the
  *content* of every input (a prompts file's bytes, not its path, so editing the file in place is noticed);
* on **resume** compares command, config and input digests with ``config.json`` and refuses a mismatch with
  one line naming what differs;
* **repairs** a torn last line of every JSONL file in the folder (see :mod:`textloc.runs.io` for the rule);
* appends records with flush + fsync and writes every other file atomically.

Validate every option *before* constructing a ``RunFolder``: nothing is created until ``__enter__``.

Example::

    with RunFolder(out, command="localize", config=asdict(cfg), inputs={"prompts": Path(file)}) as run:
        done = {r["key"] for r in run.records()}
        ...
        run.append(record)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from textloc.errors import InputError
from textloc.runs import io

try:  # POSIX only; elsewhere the folder is not locked
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

CONFIG_NAME = "config.json"
LOCK_NAME = ".lock"
RECORDS_NAME = "records.jsonl"

InputValue = bytes | str | Path


def _digest_path(path: Path, hasher: Any) -> None:
    if path.is_dir():
        for child in sorted(p for p in path.rglob("*") if p.is_file()):
            hasher.update(child.relative_to(path).as_posix().encode() + b"\0")
            hasher.update(child.read_bytes())
            hasher.update(b"\0")
    else:
        hasher.update(path.read_bytes())


def content_digest(value: InputValue, *, key: str = "input") -> str:
    """SHA-256 of an input's *content*: bytes as given, a str as UTF-8 text, a ``Path`` as the file's bytes
    (a folder: every file's relative path and bytes, in sorted order)."""
    hasher = hashlib.sha256()
    if isinstance(value, bytes):
        hasher.update(value)
    elif isinstance(value, str):
        hasher.update(value.encode("utf-8"))
    elif isinstance(value, os.PathLike):
        path = Path(value)
        if not path.exists():
            raise InputError(f"Expected input {key!r} to be a readable file, but {path} does not exist")
        _digest_path(path, hasher)
    else:
        raise TypeError(f"Expected input {key!r} as bytes, str or Path, but got {type(value).__name__}")
    return hasher.hexdigest()


def _canonical(obj: Any) -> Any:
    """The config as it reads back from JSON (tuples -> lists, Paths -> str), so a resume compares like with like."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def fingerprint(command: str, config: Mapping[str, Any], input_digests: Mapping[str, str]) -> str:
    payload = json.dumps({"command": command, "config": _canonical(dict(config)), "inputs": dict(input_digests)},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Names of what differs between a stored ``config.json`` and the current one (``config.x``, ``inputs.y``)."""
    out = []
    if stored.get("command") != current["command"]:
        out.append("command")
    for section in ("config", "inputs"):
        old, new = stored.get(section) or {}, current[section]
        out += [f"{section}.{key}" for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    return out


class RunFolder:
    r"""A locked, fingerprinted output folder (see the module docstring).

    Args:
        path: the folder; created on ``__enter__``.
        command: the command that owns the folder (``"localize"``); another command's folder is refused.
        config: everything that determines the records (JSON-serialisable).
        inputs: name -> content (``bytes``), text (``str``) or a file/folder (``Path``) whose *content* enters
            the fingerprint.
        lock: take the exclusive lock (``False`` only for secondary ranks of one distributed launch, whose main
            rank holds it).
    """

    def __init__(self, path: str | Path, *, command: str, config: Mapping[str, Any],
                 inputs: Mapping[str, InputValue] | None = None, lock: bool = True) -> None:
        self.path = Path(path)
        self.command = command
        self.config = _canonical(dict(config))
        self.inputs = dict(inputs or {})
        self.lock = lock
        self.resumed = False
        self._lock_handle: Any = None

    # -- entering and leaving ------------------------------------------------------------------------------
    def __enter__(self) -> RunFolder:
        # Digest inputs first: a missing input file stops the run before anything is created.
        digests = {key: content_digest(value, key=key) for key, value in sorted(self.inputs.items())}
        current = {"command": self.command, "config": self.config, "inputs": digests,
                   "fingerprint": fingerprint(self.command, self.config, digests)}
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"Expected --out to be a folder, but {self.path} is a file")
        self.path.mkdir(parents=True, exist_ok=True)
        if self.lock:
            self._acquire()
        try:
            self._check_or_write(current)
            for jsonl in sorted(self.path.glob("*.jsonl")):
                io.repair_jsonl(jsonl)
        except BaseException:
            self._release()
            raise
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._release()

    def _acquire(self) -> None:
        if fcntl is None:  # pragma: no cover
            return
        handle = (self.path / LOCK_NAME).open("a")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise InputError(f"{self.path} is in use by another textloc process; wait for it to finish or use "
                             "another --out folder") from None
        self._lock_handle = handle

    def _release(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.close()  # closing the descriptor releases the flock
            self._lock_handle = None

    def _check_or_write(self, current: dict[str, Any]) -> None:
        config_path = self.path / CONFIG_NAME
        if not config_path.exists():
            io.atomic_write_json(config_path, current)
            return
        try:
            stored = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise InputError(f"{config_path} is not valid JSON; use a new --out folder") from None
        stored = stored if isinstance(stored, dict) else {}
        if stored.get("fingerprint") != current["fingerprint"]:
            what = differences(stored, current) or ["fingerprint"]
            raise InputError(f"{self.path} holds a {stored.get('command', 'different')} run whose {', '.join(what)} "
                             "differ; resume with the same settings and inputs or use a new --out folder")
        self.resumed = True

    # -- reading and writing -------------------------------------------------------------------------------
    def records(self, name: str = RECORDS_NAME) -> list[dict[str, Any]]:
        """The complete records of ``name`` (a torn last line is ignored; see :mod:`textloc.runs.io`)."""
        return io.read_jsonl(self.path / name)

    def append(self, record: dict[str, Any], name: str = RECORDS_NAME) -> None:
        """Append one record and fsync it."""
        io.append_jsonl(self.path / name, [record])

    def extend(self, records: Iterable[dict[str, Any]], name: str = RECORDS_NAME) -> None:
        """Append several records with one write and one fsync (one work item's records)."""
        io.append_jsonl(self.path / name, records)

    def write_json(self, name: str, obj: Any) -> None:
        io.atomic_write_json(self.path / name, obj)

    def write_text(self, name: str, text: str) -> None:
        io.atomic_write_text(self.path / name, text)

    def save_image(self, name: str, image: Any) -> None:
        io.save_image_atomic(image, self.path / name)
