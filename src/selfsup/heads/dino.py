"""The DINO projection head: an MLP to a bottleneck, L2 normalisation, then a weight-normalised
linear layer onto K prototypes (Caron et al., 2021). iBOT and DINOv2 reuse it for patch tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import weight_norm

from selfsup.heads.mlp import MLP


class DINOHead(nn.Module):
    """DINO head (Caron et al., 2021, "Emerging Properties in Self-Supervised Vision
    Transformers", Sec. 3.1 and Appendix): ``num_layers`` linear layers with GELU (hidden
    ``hidden_dim``, output ``bottleneck_dim``), L2 normalisation, and a weight-normalised
    linear layer without bias onto ``out_dim`` prototypes.

    With ``norm_last_layer`` the magnitude ``g`` of the weight-normalised layer is fixed to 1
    (its parameter has ``requires_grad=False``), so every prototype is a unit vector and the
    logits are cosine similarities; the paper finds this stabilises training (ViT-S:
    ``norm_last_layer=True``; ViT-B with a frozen magnitude can be unstable: try False).

    Shapes: ``(B, input_dim) -> (B, out_dim)`` logits (prototype scores).
    """

    def __init__(
        self,
        input_dim: int,
        out_dim: int = 65536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        use_bn: bool = False,
        norm_last_layer: bool = True,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        dims = [input_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        # Biases everywhere as in the reference head, even before BatchNorm (harmless).
        self.mlp = MLP(dims, batch_norm=use_bn, activation=nn.GELU, bias=True)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        last = nn.Linear(bottleneck_dim, out_dim, bias=False)
        self.last_layer = weight_norm(last)
        magnitude = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            magnitude.fill_(1.0)
        # A fixed magnitude must not be trainable: no gradient, no optimiser slot, no decay.
        magnitude.requires_grad_(not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.mlp(x)
        # eps as in the reference: the bottleneck vector is (almost) never zero.
        z = F.normalize(z, dim=-1, p=2, eps=1e-6)
        out: torch.Tensor = self.last_layer(z)
        return out
