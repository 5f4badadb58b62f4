"""Small copies between the host and the device that never wait for the device's queue.

The gates' state lives on the host (``z`` decides which sections run: Python control flow),
their gradient on the device. ``Handoff`` carries the gradient back: the copy is started in
one step and read in the next, by which time the device has long finished it, so the host
never waits for work it has just queued (docs/algorithm.md, "Gate gradient and update").
On CUDA the copy goes into pinned memory with an event; on the CPU there is nothing to copy.
"""

from __future__ import annotations

import torch
from torch import Tensor


def to_device(host: Tensor, device: torch.device, dtype: torch.dtype = torch.float32) -> Tensor:
    """A host tensor on ``device`` without waiting (pinned staging memory on CUDA)."""
    if device.type == "cuda":
        return host.to(dtype).pin_memory().to(device, non_blocking=True)
    return host.to(device, dtype)


class Handoff:
    """One tensor in flight from the device to the host: ``swap(new)`` starts copying ``new``
    and returns what the previous ``swap`` sent, now on the host (or None)."""

    def __init__(self) -> None:
        self._pending: tuple[Tensor, torch.cuda.Event | None, object] | None = None

    def swap(self, tensor: Tensor | None, tag: object = None) -> tuple[Tensor, object] | None:
        """Send ``tensor`` (None: nothing) with ``tag``; return the previous (host copy, tag)."""
        previous, self._pending = self._pending, None
        if tensor is not None:
            self._pending = _start_copy(tensor) + (tag,)
        if previous is None:
            return None
        host, event, tag = previous
        if event is not None:
            event.synchronize()  # the copy queued a step ago: finished, or about to be
        return host, tag


def _start_copy(tensor: Tensor) -> tuple[Tensor, torch.cuda.Event | None]:
    if tensor.device.type == "cpu":
        return tensor, None
    if tensor.device.type == "cuda":
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(tensor.device))  # where the copy was queued
        return host, event
    return tensor.cpu(), None  # other devices: a plain (waiting) copy
