"""A configurable MLP, from which every paper's head is a thin preset."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Sequential):
    """Linear layers with optional BatchNorm and a non-linearity between them.

    ``dims = [in, hidden..., out]``. Hidden layers are Linear -> BN -> activation; the last
    layer is Linear (-> BN without affine when ``last_bn``, as in SimSiam / Barlow Twins).

    Shapes: ``(B, dims[0]) -> (B, dims[-1])``.
    """

    def __init__(
        self,
        dims: Sequence[int],
        batch_norm: bool = True,
        last_bn: bool = False,
        activation: type[nn.Module] = nn.ReLU,
        bias: bool | None = None,
    ) -> None:
        if len(dims) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {list(dims)}")
        layers: list[nn.Module] = []
        n = len(dims) - 1
        for i, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
            last = i == n - 1
            use_bn = (batch_norm and not last) or (last and last_bn)
            # A bias right before BatchNorm is redundant.
            layers.append(nn.Linear(d_in, d_out, bias=(not use_bn) if bias is None else bias))
            if use_bn:
                layers.append(nn.BatchNorm1d(d_out, affine=not last))
            if not last:
                layers.append(activation())
        super().__init__(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x)
        return x


class SimCLRProjectionHead(MLP):
    """SimCLR projection head g(.) (Chen et al., 2020, "A Simple Framework for Contrastive
    Learning of Visual Representations", Sec. 2.1): an MLP with one hidden ReLU layer (two
    in SimCLR v2); the loss is computed on its output, the representation is taken before it.
    """

    def __init__(
        self, input_dim: int, hidden_dim: int = 2048, output_dim: int = 128, num_layers: int = 2
    ) -> None:
        if num_layers < 1:
            raise ValueError("num_layers must be at least 1")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [output_dim]
        super().__init__(dims, batch_norm=True)
