"""Pinhole-camera geometry for view synthesis (Zhou et al., "Unsupervised Learning of Depth
and Ego-Motion from Video", CVPR 2017; Godard et al., "Digging Into Self-Supervised
Monocular Depth Estimation" (Monodepth2), ICCV 2019).

A target pixel p_t with depth D(p_t) lands in a source frame at p_s ~ K T_{t->s} D(p_t)
K^-1 p_t; sampling the source there (bilinear) re-synthesises the target. Poses are 4x4
rigid transforms taking target-camera coordinates to source-camera coordinates. Pure
tensor functions, batched, differentiable in depth and pose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_grid(h: int, w: int, device: torch.device | None = None) -> torch.Tensor:
    """Homogeneous pixel centres ``(3, h * w)``: rows (x, y, 1), x the column, row-major."""
    ys, xs = torch.meshgrid(
        torch.arange(h, device=device, dtype=torch.float32),
        torch.arange(w, device=device, dtype=torch.float32),
        indexing="ij",
    )
    return torch.stack([xs.reshape(-1), ys.reshape(-1), torch.ones(h * w, device=device)])


def backproject(depth: torch.Tensor, inv_k: torch.Tensor) -> torch.Tensor:
    """Depth ``(B, 1, H, W)`` and inverse intrinsics ``(B, 3, 3)`` -> camera points
    ``(B, 3, H * W)``."""
    b, _, h, w = depth.shape
    rays = inv_k @ pixel_grid(h, w, depth.device).unsqueeze(0)  # (B, 3, HW)
    return rays * depth.reshape(b, 1, -1)


def project(
    points: torch.Tensor, k: torch.Tensor, pose: torch.Tensor, h: int, w: int, eps: float = 1e-7
) -> tuple[torch.Tensor, torch.Tensor]:
    """Target-camera points ``(B, 3, N)`` moved by ``pose`` ``(B, 4, 4)`` and projected with
    ``k`` ``(B, 3, 3)`` -> a sampling grid ``(B, H, W, 2)`` in [-1, 1] (``grid_sample``'s
    ``align_corners=False`` convention) and a mask ``(B, 1, H, W)`` of points in front of
    the camera."""
    b = points.shape[0]
    cam = pose[:, :3, :3] @ points + pose[:, :3, 3:]
    pix = k @ cam
    z = pix[:, 2:3]
    front = (z > eps).reshape(b, 1, h, w)
    xy = pix[:, :2] / z.clamp_min(eps)
    # Pixel centres at integer coordinates -> normalised coordinates with pixel edges at
    # -1 and 1: x_n = (2x + 1) / W - 1.
    gx = (2 * xy[:, 0] + 1) / w - 1
    gy = (2 * xy[:, 1] + 1) / h - 1
    return torch.stack([gx, gy], dim=-1).reshape(b, h, w, 2), front


def inverse_warp(
    source: torch.Tensor, depth: torch.Tensor, pose: torch.Tensor, k: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-synthesise the target from ``source`` ``(B, C, H, W)`` given the target's ``depth``
    ``(B, 1, H, W)``, the target-to-source ``pose`` ``(B, 4, 4)`` and intrinsics ``k``
    ``(B, 3, 3)`` at this resolution. Returns the warped image and a mask ``(B, 1, H, W)`` of
    pixels that landed inside the source and in front of its camera."""
    h, w = int(depth.shape[-2]), int(depth.shape[-1])
    points = backproject(depth.float(), torch.linalg.inv(k.float()))
    grid, front = project(points, k.float(), pose.float(), h, w)
    warped = F.grid_sample(source.float(), grid, mode="bilinear", padding_mode="border",
                           align_corners=False)  # fmt: skip
    inside = (grid.abs() <= 1).all(dim=-1, keepdim=True).permute(0, 3, 1, 2)
    return warped, (inside & front).float()


def axis_angle_to_matrix(vec: torch.Tensor) -> torch.Tensor:
    """Rotation vectors ``(B, 3)`` (axis times angle in radians) -> rotations ``(B, 3, 3)``
    (Rodrigues' formula; the identity at zero, smooth around it)."""
    angle = vec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    axis = vec / angle
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(-1, 3, 3)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, device=vec.device, dtype=vec.dtype).expand_as(skew)
    return eye + s * skew + (1 - c) * (skew @ skew)


def pose_matrix(axis_angle: torch.Tensor, translation: torch.Tensor,
                invert: bool = False) -> torch.Tensor:  # fmt: skip
    """``(B, 3)`` rotation vectors and ``(B, 3)`` translations -> rigid transforms
    ``(B, 4, 4)`` [R | t]; ``invert`` gives [R^T | -R^T t] (the reverse motion, as
    Monodepth2 uses for a source frame before the target)."""
    r = axis_angle_to_matrix(axis_angle)
    t = translation.unsqueeze(-1)
    if invert:
        r = r.transpose(1, 2)
        t = -r @ t
    out = torch.zeros(r.shape[0], 4, 4, device=r.device, dtype=r.dtype)
    out[:, :3, :3], out[:, :3, 3:], out[:, 3, 3] = r, t, 1.0
    return out


def relative_pose(target_to_world: torch.Tensor, source_to_world: torch.Tensor) -> torch.Tensor:
    """Known camera-to-world poses ``(B, 4, 4)`` -> the target-to-source transform
    ``source^-1 @ target``."""
    inv: torch.Tensor = torch.linalg.inv(source_to_world.double()).float()
    return inv @ target_to_world.float()


def scale_intrinsics(k: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """Intrinsics ``(..., 3, 3)`` of an image resized by ``sx`` (width) and ``sy`` (height),
    pixel centres kept: fx' = sx fx, cx' = sx (cx + 0.5) - 0.5."""
    out = k.clone().float()
    out[..., 0, 0] = k[..., 0, 0] * sx
    out[..., 1, 1] = k[..., 1, 1] * sy
    out[..., 0, 2] = sx * (k[..., 0, 2] + 0.5) - 0.5
    out[..., 1, 2] = sy * (k[..., 1, 2] + 0.5) - 0.5
    return out


def disp_to_depth(disp: torch.Tensor, min_depth: float, max_depth: float) -> torch.Tensor:
    """A sigmoid output in [0, 1] -> depth in [min_depth, max_depth] through inverse depth
    (Monodepth2's parameterisation: uniform steps in disparity)."""
    lo, hi = 1 / max_depth, 1 / min_depth
    depth: torch.Tensor = 1 / (lo + (hi - lo) * disp)
    return depth
