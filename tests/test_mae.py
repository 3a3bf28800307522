"""MAE: patchify layout, the masked-patch loss against explicit loops, the decoder's 2-D
sine-cosine embeddings and unshuffling, the encoder's token count, and the pictures."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import selfsup
from selfsup.config import ConfigError
from selfsup.heads.mae_decoder import MAEDecoder, sincos_pos_embed_2d, unshuffle
from selfsup.losses.mae import MAELoss, normalize_patches, patchify, unpatchify
from selfsup.methods.base import StepInfo
from selfsup.methods.mae import MAE
from selfsup.modules import random_masking

SIZE = 16
TINY_VIT = "backbone.kwargs={patch_size: 4, depth: 2, num_heads: 3}"


def build(*overrides: str, seed: int = 0) -> MAE:
    cfg = selfsup.make_config("mae", backbone="timm:vit_tiny_patch16_224", image_size=SIZE,
                              seed=seed, overrides=[TINY_VIT, *overrides])  # fmt: skip
    method = selfsup.build_method(cfg)
    assert isinstance(method, MAE)
    return method


# ----------------------------------------------------------------------------- patchify


def test_patchify_layout_matches_explicit_loop() -> None:
    g = torch.Generator().manual_seed(0)
    b, c, h, w, p = 2, 3, 8, 12, 4
    x = torch.randn(b, c, h, w, generator=g)
    got = patchify(x, p)
    gw = w // p
    assert got.shape == (b, (h // p) * gw, p * p * c)
    for i in range(b):
        for r in range(h // p):
            for col in range(gw):
                for dy in range(p):
                    for dx in range(p):
                        for ch in range(c):
                            k = (dy * p + dx) * c + ch
                            assert got[i, r * gw + col, k] == x[i, ch, r * p + dy, col * p + dx]


@pytest.mark.parametrize("shape,p", [((2, 3, 16, 16), 4), ((1, 1, 8, 8), 2), ((3, 3, 8, 12), 4)])
def test_unpatchify_inverts_patchify(shape: tuple[int, int, int, int], p: int) -> None:
    x = torch.randn(*shape)
    grid = (shape[2] // p, shape[3] // p)
    patches = patchify(x, p)
    assert torch.equal(unpatchify(patches, p, grid), x)
    assert torch.equal(patchify(unpatchify(patches, p, grid), p), patches)
    if shape[2] == shape[3]:  # square grid inferred
        assert torch.equal(unpatchify(patches, p), x)


def test_patchify_accepts_channels_last_and_rejects_bad_sizes() -> None:
    x = torch.randn(2, 3, 8, 8)
    cl = x.contiguous(memory_format=torch.channels_last)
    assert torch.equal(patchify(cl, 4), patchify(x, 4))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        patchify(torch.randn(1, 3, 10, 8), 4)
    with pytest.raises(ValueError, match="square grid"):
        unpatchify(torch.randn(1, 6, 16), 2)


# ----------------------------------------------------------------------------- loss


def reference_loss(
    pred: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, p: int, norm: bool, eps: float
) -> float:
    """The masked-patch MSE with every patch cut out and normalised by explicit loops."""
    b, c, _, w = x.shape
    gw = w // p
    total, count = 0.0, 0
    for i in range(b):
        for n in range(mask.shape[1]):
            if not mask[i, n]:
                continue
            r, col = divmod(n, gw)
            vals = [
                float(x[i, ch, r * p + dy, col * p + dx])
                for dy in range(p)
                for dx in range(p)
                for ch in range(c)
            ]
            if norm:
                mu = sum(vals) / len(vals)
                var = sum((v - mu) ** 2 for v in vals) / (len(vals) - 1)
                vals = [(v - mu) / math.sqrt(var + eps) for v in vals]
            err = [(float(pred[i, n, k]) - v) ** 2 for k, v in enumerate(vals)]
            total += sum(err) / len(err)
            count += 1
    return total / count


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("p", [2, 4])
def test_loss_matches_explicit_computation(norm: bool, p: int) -> None:
    g = torch.Generator().manual_seed(p)
    x = torch.randn(3, 3, 8, 8, generator=g) * 2 + 0.5
    n = (8 // p) ** 2
    pred = torch.randn(3, n, p * p * 3, generator=g)
    _, mask, _ = random_masking(3, n, 0.5, generator=g)
    got = float(MAELoss(p, norm_pix_loss=norm)(pred, x, mask))
    want = reference_loss(pred, x, mask, p, norm, 1e-6)
    assert got == pytest.approx(want, rel=1e-5)


def test_loss_ignores_visible_patches() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, 8, 8, generator=g)
    pred = torch.randn(4, 16, 12, generator=g, requires_grad=True)
    _, mask, _ = random_masking(4, 16, 0.75, generator=g)
    loss_fn = MAELoss(2)
    base = loss_fn(pred, x, mask)
    visible = (mask == 0).unsqueeze(-1)
    changed = torch.where(visible, pred.detach() + 100.0, pred.detach())
    assert float(loss_fn(changed, x, mask)) == pytest.approx(float(base.detach()), rel=1e-6)
    hidden_changed = torch.where(visible, pred.detach(), pred.detach() + 1.0)
    assert float(loss_fn(hidden_changed, x, mask)) != pytest.approx(float(base.detach()), rel=1e-3)
    base.backward()
    assert pred.grad is not None
    assert torch.all(pred.grad[mask == 0] == 0) and torch.any(pred.grad[mask == 1] != 0)


def test_hand_computed_value() -> None:
    # A 1-channel 2x4 image cut into two 2x2 patches: patch 0 holds 0, 1, 2, 3 and patch 1
    # holds 4, 5, 6, 7. Only patch 1 is hidden and it is predicted as zeros.
    x = torch.tensor([[[[0.0, 1.0, 4.0, 5.0], [2.0, 3.0, 6.0, 7.0]]]])
    pred = torch.zeros(1, 2, 4)
    mask = torch.tensor([[0.0, 1.0]])
    # Raw pixels: mean(16, 25, 36, 49) = 31.5.
    assert float(MAELoss(2, norm_pix_loss=False)(pred, x, mask)) == pytest.approx(31.5)
    # Normalised: mean 5.5, unbiased variance 5/3, so predicting zeros costs
    # sum((v - 5.5)^2) / (4 (5/3 + eps)) = 5 / (4 (5/3 + eps)) ~ 0.75.
    assert float(MAELoss(2)(pred, x, mask)) == pytest.approx(0.75, rel=1e-5)


def test_norm_pix_targets_have_zero_mean_unit_variance_per_patch() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 8, 8, generator=g) * 5 - 1
    t = MAELoss(4).targets(x)
    assert t.shape == (2, 4, 48)
    assert torch.allclose(t.mean(-1), torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(t.var(-1), torch.ones(2, 4), atol=1e-4)
    assert torch.equal(MAELoss(4, norm_pix_loss=False).targets(x), patchify(x, 4))
    assert torch.allclose(normalize_patches(patchify(x, 4)), t)


def test_loss_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="do not match"):
        MAELoss(4)(torch.randn(1, 4, 10), torch.randn(1, 3, 8, 8), torch.ones(1, 4))
    with pytest.raises(ValueError, match="mask"):
        MAELoss(4)(torch.randn(1, 4, 48), torch.randn(1, 3, 8, 8), torch.ones(1, 3))


# ----------------------------------------------------------------------------- decoder


def test_sincos_embedding_hand_computed_entries() -> None:
    # dim 8 -> q = 2 frequencies: w = (1, 10000^(-1/2) = 0.01). Grid 2 rows x 3 columns.
    emb = sincos_pos_embed_2d(8, (2, 3))
    assert emb.shape == (6, 8) and emb.dtype == torch.float32
    assert emb[0].tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0]
    # Patch 5 = row 1, column 2.
    want = [math.sin(2), math.sin(0.02), math.cos(2), math.cos(0.02),
            math.sin(1), math.sin(0.01), math.cos(1), math.cos(0.01)]  # fmt: skip
    assert emb[5].tolist() == pytest.approx(want, abs=1e-6)
    # Patch 3 = row 1, column 0: column half as patch 0, row half as patch 5.
    assert emb[3, :4].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert emb[3, 4:].tolist() == pytest.approx(want[4:], abs=1e-6)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_pos_embed_2d(6, (2, 2))


def test_unshuffle_puts_visible_tokens_at_their_patches() -> None:
    g = torch.Generator().manual_seed(4)
    b, n, d = 3, 16, 2
    keep, mask, restore = random_masking(b, n, 0.75, generator=g)
    # Token of patch i carries the value i; the mask token carries -1.
    visible = keep.float().unsqueeze(-1).expand(-1, -1, d)
    out = unshuffle(visible, restore, torch.full((d,), -1.0))
    want = torch.where(mask.bool(), -1.0, torch.arange(n).float().expand(b, n))
    assert torch.equal(out, want.unsqueeze(-1).expand(-1, -1, d))


def test_decoder_shapes_and_fixed_position_buffer() -> None:
    dec = MAEDecoder(32, (4, 4), 4, 3, decoder_dim=16, depth=1, num_heads=2)
    assert "pos_embed" in dict(dec.named_buffers())
    assert all("pos_embed" not in name for name, _ in dec.named_parameters())
    assert "pos_embed" not in dec.state_dict()  # recomputed from the grid
    assert torch.equal(dec.pos_embed, sincos_pos_embed_2d(16, (4, 4)))
    keep, _, restore = random_masking(2, 16, 0.75)
    out = dec(torch.randn(2, 1 + keep.shape[1], 32), restore)
    assert out.shape == (2, 16, 48)


# ----------------------------------------------------------------------------- method


@pytest.mark.parametrize("ratio,kept", [(0.75, 4), (0.5, 8)])
def test_encoder_sees_only_the_visible_patches(ratio: float, kept: int) -> None:
    method = build(f"method.mask_ratio={ratio}").train()
    seen: list[int] = []

    def record(_: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        seen.append(args[0].shape[1])

    blocks: nn.Sequential = method.backbone.net.blocks  # type: ignore[assignment]
    handle = blocks[0].register_forward_pre_hook(record)
    x = torch.randn(4, 3, SIZE, SIZE)
    loss, logs = method.training_step([x], StepInfo(step=0, progress=0.0))
    handle.remove()
    # 16 patches at 16 px with patch 4; the encoder gets the class token + (1 - ratio) * 16.
    assert seen == [1 + kept] and kept == round(16 * (1 - ratio))
    assert torch.isfinite(loss) and set(logs) == {"loss"}


def test_feature_extractor_is_class_token_of_unmasked_image() -> None:
    method = build().eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    feats = method.feature_extractor()(x)
    tokens = method.backbone.forward_tokens(x)
    assert tokens.shape[1] == 1 + 16
    assert torch.allclose(feats, tokens[:, 0], atol=1e-6)


def test_default_transform_gives_one_view() -> None:
    method = build()
    t = method.default_transform(SIZE, [0.5] * 3, [0.25] * 3, 3)
    views = t(torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8))
    assert len(views) == 1 and views[0].shape == (3, SIZE, SIZE)
    with pytest.raises(ValueError, match="one view"):
        method.training_step([torch.randn(2, 3, SIZE, SIZE)] * 2, StepInfo(0, 0.0))


def test_config_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="mask_ratio"):
        build("method.mask_ratio=0.0")
    with pytest.raises(ConfigError, match="decoder_dim"):
        build("method.decoder_dim=130")
    with pytest.raises(ConfigError, match="Vision Transformer"):
        selfsup.build_method(selfsup.make_config("mae", backbone="resnet18", image_size=SIZE))


def _hidden(masked_row: torch.Tensor) -> torch.Tensor:
    """(B, N) True where the masked-input row shows a grey (all-zero) patch."""
    return patchify(masked_row, 4).eq(0).all(-1)


@pytest.mark.parametrize("norm", [True, False])
def test_visualize_rows(norm: bool) -> None:
    method = build(f"method.norm_pix_loss={str(norm).lower()}").eval()
    b = 3
    x = torch.randn(b, 3, SIZE, SIZE)
    grid = method.visualize(x)["reconstruction"]
    assert grid.shape == (3 * b, 3, SIZE, SIZE)
    masked, recon, orig = grid[:b], grid[b : 2 * b], grid[2 * b :]
    assert torch.equal(orig, x)
    hidden = _hidden(masked)
    assert torch.all(hidden.sum(1) == 12)  # 75% of 16 patches
    xp, mp, rp = patchify(x, 4), patchify(masked, 4), patchify(recon, 4)
    assert torch.equal(mp[~hidden], xp[~hidden])
    assert torch.equal(rp[~hidden], xp[~hidden])  # visible patches pasted from the input
    assert not torch.allclose(rp[hidden], xp[hidden])
    # A fixed seed: the same patches are hidden at every call (comparable epochs).
    assert torch.equal(method.visualize(x)["reconstruction"], grid)


def test_visualize_unnormalises_predictions_with_true_patch_statistics() -> None:
    method = build().eval()
    # A decoder that predicts zeros, the mean of normalised targets: with norm_pix_loss the
    # hidden patches of the reconstruction become each true patch's mean colour.
    method.decoder.forward = lambda tokens, restore: torch.zeros(  # type: ignore[method-assign]
        restore.shape[0], restore.shape[1], 48
    )
    x = torch.randn(2, 3, SIZE, SIZE)
    grid = method.visualize(x)["reconstruction"]
    hidden = _hidden(grid[:2])
    rp, xp = patchify(grid[2:4], 4), patchify(x, 4)
    means = xp.mean(-1, keepdim=True).expand_as(xp)
    assert torch.allclose(rp[hidden], means[hidden], atol=1e-6)
