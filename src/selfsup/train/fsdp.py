"""Sharded training for models that do not fit replicated on every rank: PyTorch's FSDP2
(``torch.distributed.fsdp.fully_shard``) and its checkpoints (``torch.distributed.checkpoint``).

``train.strategy=fsdp`` shards as ZeRO-3 does (Rajbhandari et al., 2020): at rest each rank
holds a 1/world slice (dim 0, a DTensor) of every parameter, gradient and optimiser state.

- Units: every transformer block (each ``blocks`` list in the method: the student's, the EMA
  teacher's, an MAE decoder's) is one FSDP unit, gathered for its forward and backward only.
  The rest (patch embeddings, norms, heads, buffers) is one more unit at the root, around
  the method's training step, gathered for the whole step: a method may call its backbone
  through any method (``forward_tokens``), not only ``forward``.
- Mixed precision: bf16 compute and all-gathers, fp32 gradient reduction and fp32 master
  weights (``MixedPrecisionPolicy``); fp16 is refused (no sharded gradient scaler here).
- EMA teacher: the teacher is sharded exactly as its student (same shapes, same units, same
  mesh), so each rank holds matching slices and :func:`~selfsup.modules.ema_update` (foreach
  ops on DTensors) updates the local shards with no communication at all.
- Checkpoints: ``checkpoints/last.dcp/`` (model + optimiser, sharded, written by every rank
  into a temporary folder then renamed; the one before kept as ``previous.dcp/``), loadable
  on any number of ranks, and ``checkpoints/last.pt`` as before with the config, the state,
  the random streams and the full model weights gathered to rank 0, so ``selfsup export`` /
  ``eval`` and every reader of ``last.pt`` open an fsdp run unchanged. Each ``.dcp`` folder
  names its step in ``selfsup.json``; a resume takes the one matching ``last.pt``.

Activation checkpointing (any strategy) recomputes each trainable transformer block in the
backward pass (``torch.utils.checkpoint``, non-reentrant) instead of keeping its activations.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from selfsup import dist
from selfsup.config import ConfigError
from selfsup.train import checkpoint as ckpt_io
from selfsup.train.distributed import StepModule

LAST_DCP = "last.dcp"
PREVIOUS_DCP = "previous.dcp"
META = "selfsup.json"


def transformer_blocks(module: nn.Module) -> list[nn.Module]:
    """The blocks of every ``blocks`` list (``nn.Sequential`` / ``nn.ModuleList``) inside
    ``module``: timm ViTs, MAE decoders. Each appears once, in module order."""
    out: list[nn.Module] = []
    seen: set[int] = set()
    for name, m in module.named_modules():
        if name.rsplit(".", 1)[-1] == "blocks" and isinstance(m, nn.Sequential | nn.ModuleList):
            for b in m:
                if id(b) not in seen:
                    seen.add(id(b))
                    out.append(b)
    return out


def _checkpointed(forward: Callable[..., Any]) -> Callable[..., Any]:
    from torch.utils.checkpoint import checkpoint

    def run(*args: Any, **kwargs: Any) -> Any:
        if not torch.is_grad_enabled():  # a teacher or an evaluation: nothing to keep
            return forward(*args, **kwargs)
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)

    return run


def checkpoint_activations(modules: list[nn.Module]) -> int:
    """Recompute each transformer block of ``modules`` in the backward pass (the block's
    ``forward`` is replaced on the instance, so parameter names and FSDP's hooks, which
    run around ``__call__``, are unchanged). Returns the number of blocks."""
    blocks = [b for m in modules for b in transformer_blocks(m)]
    if not blocks:
        raise ConfigError(
            "train.activation_checkpointing recomputes transformer blocks, and this method's "
            "trainable modules have none (a ResNet backbone?): set it to false."
        )
    for b in blocks:
        b.forward = _checkpointed(b.forward)
    return len(blocks)


def mixed_precision(precision: str) -> Any:
    """FSDP's precision for ``precision`` (bf16: bf16 compute and all-gathers, fp32
    gradient reduction; fp32: everything in fp32)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if precision == "bf16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if precision == "fp16":
        raise ConfigError(
            "train.strategy=fsdp does not run fp16 (its gradient scaler does not shard): "
            "set train.precision=bf16 (or fp32)."
        )
    return MixedPrecisionPolicy()


def shard(method: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Shard ``method`` over all ranks (see the module docstring) and return the root: a
    module whose ``forward(views, info)`` is the method's training step. Build the
    optimiser afterwards: sharding replaces the parameters."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    with torch.no_grad():  # FSDP shards dim 0 of contiguous tensors (not channels-last)
        for p in method.parameters():
            if not p.is_contiguous():
                p.data = p.data.contiguous()
    mesh = init_device_mesh(device.type, (dist.world_size(),))
    policy = mixed_precision(precision)
    for block in transformer_blocks(method):
        fully_shard(block, mesh=mesh, mp_policy=policy)
    root = StepModule(method)
    fully_shard(root, mesh=mesh, mp_policy=policy)  # in place: root becomes an FSDPModule
    return root


@contextlib.contextmanager
def gathered(root: nn.Module | None) -> Iterator[None]:
    """The root unit's parameters whole for the block (every rank must enter): lets
    evaluations call the model outside the training step. A no-op for ``None``."""
    if root is None:
        yield
        return
    from torch.distributed.fsdp import FSDPModule

    assert isinstance(root, FSDPModule)
    root.unshard()
    try:
        yield
    finally:
        root.reshard()


# ----------------------------------------------------------------------------- checkpoints


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(ckpt_dir: Path, method: nn.Module, optimizer: torch.optim.Optimizer,
         step: int) -> dict[str, Any]:  # fmt: skip
    """Write ``ckpt_dir/last.dcp`` (every rank calls this) and return the full model state
    on rank 0 (empty elsewhere) for ``last.pt``."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
    )
    from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

    tmp = ckpt_dir / f".{LAST_DCP}.tmp"
    if dist.is_main():
        if tmp.exists():  # left by a crash
            shutil.rmtree(tmp)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    model_sd, optim_sd = get_state_dict(method, optimizer)
    dcp_save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp),
             no_dist=not dist.is_initialized())  # fmt: skip
    if dist.is_initialized():
        full = get_model_state_dict(
            method, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
    else:
        full = {k: v.detach().cpu().clone() for k, v in method.state_dict().items()}
    if dist.is_main():
        (tmp / META).write_text(json.dumps({"step": step, "world": dist.world_size()}))
        last, prev = ckpt_dir / LAST_DCP, ckpt_dir / PREVIOUS_DCP
        if last.exists():
            # Until last.pt is replaced, it names previous.dcp's step: find() follows it.
            if prev.exists():
                shutil.rmtree(prev)
            os.replace(last, prev)
        os.replace(tmp, last)
        _fsync_dir(ckpt_dir)
    dist.barrier()
    return full


def sharded_fields(full: dict[str, Any], step: int) -> dict[str, Any]:
    """What ``last.pt`` of an fsdp run holds instead of the sharded tensors: the full
    weights (for export, evaluation, :func:`selfsup.load_method`), no optimiser state (it
    lives in the ``.dcp`` folder of the same ``step``)."""
    return {"method": full, "optimizer": None, "sharded": {"step": step, "folder": LAST_DCP}}


def find(ckpt_dir: Path, step: int) -> Path:
    """The complete ``.dcp`` folder of ``step`` in ``ckpt_dir`` (last, previous, or one
    left mid-rotation by a crash)."""
    for folder in sorted(ckpt_dir.glob(".*.dcp*")) + sorted(ckpt_dir.glob("*.dcp")):
        meta = folder / META
        complete = (folder / ".metadata").is_file() and meta.is_file()
        if complete and json.loads(meta.read_text()).get("step") == step:
            return folder
    raise ckpt_io.CheckpointError(
        f"no sharded checkpoint of step {step} in {str(ckpt_dir)!r} (looked for "
        f"{LAST_DCP}/ and {PREVIOUS_DCP}/ with {META}): the run was saved with "
        "train.strategy=fsdp and its optimiser state lives there. Copy the whole "
        "checkpoints folder, not only last.pt."
    )


def load(ckpt_dir: Path, method: nn.Module, optimizer: torch.optim.Optimizer,
         step: int) -> None:  # fmt: skip
    """Load the weights and optimiser state of ``step`` from its ``.dcp`` folder into
    ``method`` / ``optimizer``, sharded or not, on any number of ranks (every rank calls
    this)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    from torch.distributed.checkpoint.state_dict_loader import load as dcp_load

    folder = find(ckpt_dir, step)
    model_sd, optim_sd = get_state_dict(method, optimizer)
    state: dict[str, Any] = {"model": model_sd, "optim": optim_sd}
    # In place, each rank its own shards (all of them in a single process).
    dcp_load(state, checkpoint_id=str(folder), no_dist=not dist.is_initialized())
    set_state_dict(method, optimizer, model_state_dict=state["model"],
                   optim_state_dict=state["optim"])  # fmt: skip
