"""A first-in-first-out memory of embeddings (MoCo's negative queue, SwAV's queue)."""

from __future__ import annotations

import torch
from torch import nn

from selfsup import dist


class FeatureQueue(nn.Module):
    """Holds the last ``size`` embeddings of dimension ``dim``.

    ``enqueue`` adds a batch (gathered from every rank when distributed, so all ranks hold
    the same queue); ``get()`` returns the filled part, oldest first. The queue is a buffer:
    it is saved in checkpoints and moves with ``.to(device)``.
    """

    queue: torch.Tensor
    ptr: torch.Tensor
    filled: torch.Tensor

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        if size < 1:
            raise ValueError(f"queue size must be positive, got {size}")
        self.size = size
        self.register_buffer("queue", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("filled", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def enqueue(self, x: torch.Tensor) -> None:
        """Add ``x`` (B, dim); the oldest entries are overwritten when full."""
        x = dist.gather(x.detach().float(), with_grad=False)
        n = x.shape[0]
        if n >= self.size:
            self.queue.copy_(x[-self.size :])
            self.ptr.zero_()
            self.filled.fill_(self.size)
            return
        p = int(self.ptr)
        end = p + n
        if end <= self.size:
            self.queue[p:end] = x
        else:
            first = self.size - p
            self.queue[p:] = x[:first]
            self.queue[: n - first] = x[first:]
        self.ptr.fill_(end % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + n))

    @torch.no_grad()
    def fill_(self, x: torch.Tensor) -> None:
        """Replace the whole queue with ``x`` (size, dim), e.g. random unit vectors at start
        (MoCo), so the first steps already have negatives."""
        if x.shape != self.queue.shape:
            raise ValueError(
                f"fill_ needs a {tuple(self.queue.shape)} tensor, got {tuple(x.shape)}"
            )
        self.queue.copy_(x)
        self.ptr.zero_()
        self.filled.fill_(self.size)

    def get(self) -> torch.Tensor:
        """The stored embeddings (filled, dim), oldest first."""
        f, p = int(self.filled), int(self.ptr)
        if f < self.size:
            return self.queue[:f]
        return torch.cat([self.queue[p:], self.queue[:p]])

    def __len__(self) -> int:
        return int(self.filled)
