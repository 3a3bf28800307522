"""Optimisers and parameter groups."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim import Optimizer

from selfsup.config import OptimConfig


class LARS(Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017), as used by SimCLR and BYOL.

    SGD with momentum where each parameter's update is scaled by the trust ratio
    ``eta * ||w|| / (||g|| + weight_decay * ||w||)``. Groups with ``lars_exclude`` (biases
    and normalisation weights) skip the adaptation, as in the papers.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, object]],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                wd = group["weight_decay"]
                if wd:
                    g = g.add(p, alpha=wd)
                if not group["lars_exclude"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(g)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["eta"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    g = g * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = g.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(g)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def scaled_lr(cfg: OptimConfig, global_batch: int) -> float:
    """The learning rate for this batch size (linear or square-root scaling from 256)."""
    if cfg.lr_scaling == "linear":
        return cfg.lr * global_batch / 256
    if cfg.lr_scaling == "sqrt":
        return cfg.lr * math.sqrt(global_batch / 256)
    return cfg.lr


def build_optimizer(modules: list[nn.Module], cfg: OptimConfig, lr: float) -> Optimizer:
    """Optimiser over the trainable modules; biases and norm weights get no weight decay
    (and no LARS adaptation) when ``cfg.exclude_bias_norm``."""
    decay: list[torch.Tensor] = []
    no_decay: list[torch.Tensor] = []
    seen: set[int] = set()
    for m in modules:
        for p in m.parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if cfg.exclude_bias_norm and p.ndim <= 1 else decay).append(p)
    groups: list[dict[str, object]] = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    if cfg.name == "sgd":
        for g in groups:
            g.pop("lars_exclude", None)
        return torch.optim.SGD(groups, lr=lr, momentum=cfg.momentum, foreach=True)
    if cfg.name == "lars":
        return LARS(groups, lr=lr, momentum=cfg.momentum, eta=cfg.lars_eta)
    for g in groups:
        g.pop("lars_exclude", None)
    b1, b2 = cfg.betas
    return torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), foreach=True)
