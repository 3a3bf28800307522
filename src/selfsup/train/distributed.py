"""Multi-process training with PyTorch's own engine (torchrun + DDP). No home-made launcher:

    torchrun --nproc-per-node 2 -m selfsup pretrain --data DIR --out runs/ddp      # one machine
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \\
        --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m selfsup pretrain ...     # each node

The process group is gloo on CPU and NCCL on GPU. A start-up all-reduce checks that every
rank answers, and explains the usual fixes when one does not.
"""

from __future__ import annotations

import os
import threading
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn

from selfsup import dist

ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
            "GROUP_RANK", "TORCHELASTIC_RUN_ID")  # fmt: skip
FIXES = (
    "usual fixes: start every rank (torchrun --nnodes N on each node, same --rdzv-endpoint); "
    "make MASTER_ADDR/--rdzv-endpoint reachable from all nodes (firewall, port free); pick "
    "the right network interface with GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME; on one machine "
    "use --nproc-per-node instead of separate launches"
)


class DistributedError(RuntimeError):
    """The process group could not be formed; the message has the environment and fixes."""


def requested() -> bool:
    """True when launched by torchrun (or equivalent) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def environment() -> str:
    return ", ".join(f"{k}={os.environ.get(k, '-')}" for k in ENV_KEYS)


def setup(
    device_type: str = "auto", timeout_s: float = 1800.0, check_timeout_s: float = 120.0
) -> None:
    """Join the process group described by the environment (no-op for one process).

    ``timeout_s`` bounds every collective (long enough for rank 0's evaluations);
    ``check_timeout_s`` bounds the start-up all-reduce that every rank must answer.
    """
    if not requested() or dist.is_initialized():
        return
    use_cuda = torch.cuda.is_available() and device_type in ("auto", "cuda")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    try:
        tdist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    except Exception as err:
        raise DistributedError(
            f"could not form the process group ({backend}): {err}. Environment: {environment()}. "
            f"{FIXES}."
        ) from None
    _startup_check(backend, check_timeout_s)
    dist.set_side_group(tdist.new_group(backend=backend))


def _startup_check(backend: str, timeout_s: float) -> None:
    """All-reduce a 1 from every rank; explain and stop when it does not complete in time."""
    device = torch.device("cuda") if backend == "nccl" else torch.device("cpu")
    x = torch.ones(1, device=device)
    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(timeout_s):
            print(
                f"selfsup: rank {dist.rank()}: the start-up all-reduce did not complete in "
                f"{timeout_s:.0f}s: some rank is not answering. Environment: {environment()}, "
                f"backend={backend}. {FIXES}.",
                flush=True,
            )
            os._exit(3)

    threading.Thread(target=watchdog, daemon=True).start()
    tdist.all_reduce(x)
    done.set()
    if int(x.item()) != dist.world_size():
        raise DistributedError(
            f"start-up all-reduce gave {x.item()} instead of {dist.world_size()}"
        )


def cleanup() -> None:
    if dist.is_initialized():
        dist.set_side_group(None)
        tdist.destroy_process_group()


def broadcast_object(obj: Any) -> Any:
    """``obj`` from rank 0 on every rank (identity when not distributed)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (a one-element list when not distributed)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.world_size()
    tdist.all_gather_object(out, obj)
    return out


class StepModule(nn.Module):
    """The method's training step as a module, so DDP can wrap it. DDP reduces only the
    gradients of parameters that require them: an EMA teacher (frozen) is never touched."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method = method

    def forward(self, views: list[torch.Tensor], info: Any) -> Any:
        return self.method.training_step(views, info)  # type: ignore[operator]


def wrap(method: nn.Module, device: torch.device, find_unused: bool = False) -> Any:
    """DDP around the method's training step (buffers are not broadcast: each rank keeps
    its own queue/centre updates, which are identical by construction).

    ``static_graph``: every step uses the same parameters; it also lets a parameter used
    several times in one step (BYOL's two views) be reduced once, which the default mode
    mis-counts when synchronised BatchNorm adds collectives to the backward pass."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel as DDP

    ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
    params = inspect.signature(DDP.__init__).parameters
    # Buffers are never re-broadcast in forward (newer torch spells it forward_sync_buffers).
    buffers: dict[str, Any] = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {
        "broadcast_buffers": False}  # fmt: skip
    return DDP(StepModule(method), device_ids=ids, find_unused_parameters=find_unused,
               static_graph=True, **buffers)  # fmt: skip
