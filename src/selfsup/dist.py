"""The one home of collectives. Every function is a no-op (or the identity) when
``torch.distributed`` is not initialised, so single-process code never branches on it."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as tdist

_SIDE_GROUP: Any = None


def set_side_group(group: Any) -> None:
    """A second process group for collectives issued inside autograd (gathers' and
    synchronised BatchNorm's backward). DDP all-reduces gradient buckets asynchronously on
    the default group during the same backward pass; sharing one group would let the two
    streams of collectives interleave differently on different ranks."""
    global _SIDE_GROUP
    _SIDE_GROUP = group


def side_group() -> Any:
    """The group for collectives inside autograd (None: the default group)."""
    return _SIDE_GROUP


def is_initialized() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def world_size() -> int:
    return tdist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return tdist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    """True on the process that writes logs and checkpoints (rank 0)."""
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        tdist.barrier()


class _GatherWithGrad(torch.autograd.Function):
    """All-gather whose backward sends each rank the gradient of its own slice.

    The gradient of every rank's loss with respect to this rank's input is summed
    (all-reduce) before slicing, so that the per-rank losses behave like one loss over
    the global batch (as in SimCLR's TPU implementation and lightly's ``GatherLayer``).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out = [torch.zeros_like(x) for _ in range(tdist.get_world_size())]
        tdist.all_gather(out, x.contiguous(), group=side_group())
        return tuple(out)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, *grads: torch.Tensor) -> torch.Tensor:
        all_grads = torch.stack(grads)
        tdist.all_reduce(all_grads, group=side_group())
        return all_grads[tdist.get_rank()]


def gather(x: torch.Tensor, with_grad: bool = True) -> torch.Tensor:
    """Concatenate ``x`` (B, ...) from all ranks along dim 0 -> (world*B, ...), in rank order."""
    if not is_initialized() or world_size() == 1:
        return x
    if with_grad:
        return torch.cat(_GatherWithGrad.apply(x), dim=0)
    out = [torch.zeros_like(x) for _ in range(world_size())]
    tdist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def _reduced(x: torch.Tensor, op: Any) -> torch.Tensor:
    """All-reduce a detached copy of ``x``. NCCL reduces only CUDA tensors: small CPU
    tensors (clocks, flags, log values) travel through the current GPU and come back."""
    y = x.detach().clone()
    if y.device.type == "cpu" and tdist.get_backend() == "nccl":
        z = y.to(torch.device("cuda", torch.cuda.current_device()))
        tdist.all_reduce(z, op=op)
        return z.cpu()
    tdist.all_reduce(y, op=op)
    return y


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ranks (a new tensor; no gradient)."""
    if not is_initialized() or world_size() == 1:
        return x
    return _reduced(x, tdist.ReduceOp.SUM) / world_size()


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum of ``x`` over ranks (a new tensor; no gradient)."""
    if not is_initialized() or world_size() == 1:
        return x
    return _reduced(x, tdist.ReduceOp.SUM)


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``x`` over ranks (a new tensor; no gradient)."""
    if not is_initialized() or world_size() == 1:
        return x
    return _reduced(x, tdist.ReduceOp.MAX)


def all_reduce_min(x: torch.Tensor) -> torch.Tensor:
    """Element-wise minimum of ``x`` over ranks (a new tensor; no gradient)."""
    if not is_initialized() or world_size() == 1:
        return x
    return _reduced(x, tdist.ReduceOp.MIN)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks whose backward is again a sum over ranks: the gradient of every
    rank's loss with respect to the shared total (synchronised BatchNorm statistics)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        y = x.detach().clone()
        tdist.all_reduce(y, group=side_group())
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        g = grad.detach().clone()
        tdist.all_reduce(g, group=side_group())
        return g


def all_reduce_sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum of ``x`` over ranks (the identity when not distributed)."""
    if not is_initialized() or world_size() == 1:
        return x
    out: torch.Tensor = _AllReduceSum.apply(x)
    return out
