"""Measuring what a LoRA step costs: peak memory and the activations autograd keeps for backward.

Why: the claim of localized LoRA is that it is cheaper, not only smaller. Step time is measured by the loop;
memory has no allocator peak to read on the CPU, so :class:`PeakMemory` samples the resident set there and
:class:`SavedTensorMeter` counts exactly the bytes autograd saves, the part a localized adapter shrinks.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import torch


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory of a block of work.

    On CUDA: ``torch.cuda.max_memory_allocated`` (reset on entry). On CPU the allocator keeps no peak, so a
    daemon thread samples the resident set size every ``interval`` seconds and reports the peak *increase*
    over the value on entry (falls back to ``resource.ru_maxrss``, the process-lifetime peak, where
    ``/proc`` is missing).
    """

    def __init__(self, device: torch.device | str = "cpu", interval: float = 0.002) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._baseline = 0
        self._max = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return self
        self._baseline = self._max = _rss_bytes() or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._max = max(self._max, _rss_bytes() or 0)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._baseline:
            self.peak_bytes = max(0, max(self._max, _rss_bytes() or 0) - self._baseline)
        else:
            import resource

            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class SavedTensorMeter:
    """Bytes autograd keeps for the backward pass (activations), each storage counted once, weights excluded.

    Why: on the CPU there is no allocator peak to read, and this is the part of training memory a localized
    LoRA saves -- layers before the first adapted one record no graph and keep no activations. It is exact and
    the same on every device.
    """

    def __init__(self, exclude: Sequence[torch.nn.Module] = ()) -> None:
        self.bytes = 0
        self._seen = {p.untyped_storage().data_ptr() for module in exclude for p in module.parameters()}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in self._seen:
            self._seen.add(storage.data_ptr())
            self.bytes += storage.nbytes()
        return tensor

    def __enter__(self) -> SavedTensorMeter:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


def _unpack(tensor: torch.Tensor) -> torch.Tensor:
    return tensor
