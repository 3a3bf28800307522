"""Which focal length makes the colour frames agree with the camera poses and depth?

Self-supervised depth with known poses (``selfsup depth train --poses``) warps the colour
frames with the intrinsics it is given. RGB-D sets often ship the depth camera's
intrinsics (7-Scenes: fx = fy = 585 at 640x480, 292.5 at 320x240), while the colour camera
of the same rig has another focal length (the Kinect's is about 525). This script warps
each test pair (frame i -> frame i + offset) with the recorded depth and the relative pose
through the library's own ``inverse_warp``, for several focal lengths, and prints the mean
L1 photometric error over valid pixels (lower: the focal length fits the colour camera
better), beside the unwarped source.

    python benchmarks/depth_intrinsics.py                          # 7-Scenes, offsets 3 and 10
    python benchmarks/depth_intrinsics.py --frames DIR --focal 240,262.5,292.5 --offsets 5

Depth and colour come from two cameras, only approximately aligned, so no focal length
reaches zero error; the minimum is what matters.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SEVEN = ROOT.parent / "shared" / "datasets" / "sevenscenes" / "seq"


def main() -> None:
    from selfsup.data.depth import open_depth
    from selfsup.modules.geometry import inverse_warp, relative_pose
    from selfsup.transforms.dense import to_unit

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", default=str(SEVEN), help="frames with depth and poses")
    p.add_argument("--focal", default="240,250,262.5,275,292.5,320",
                   help="focal lengths to try, in pixels at the frames' size")  # fmt: skip
    p.add_argument("--offsets", default="3,10", help="frame offsets of the pairs")
    p.add_argument("--pairs", type=int, default=12, help="target frames, evenly spaced")
    a = p.parse_args()
    folder = open_depth(a.frames, None)
    focals = [float(f) for f in a.focal.split(",")]
    n = len(folder)
    for offset in (int(o) for o in a.offsets.split(",")):
        errors: dict[str, list[float]] = {}
        for i in np.linspace(0, n - 1 - offset, a.pairs).astype(int).tolist():
            t, s = folder.load(i), folder.load(i + offset)
            target, source = to_unit(t.image)[None], to_unit(s.image)[None]
            depth = t.depth[None, None].float()
            valid = (depth > 0) & torch.isfinite(depth)
            depth = torch.where(valid, depth, torch.ones_like(depth))
            pt, ps = folder.pose(folder.stems[i]), folder.pose(folder.stems[i + offset])
            if pt is None or ps is None:
                raise SystemExit(f"{a.frames}: frames {i} and {i + offset} need .pose.txt files")
            pose = relative_pose(pt[None], ps[None])
            h, w = target.shape[-2:]
            for f in focals:
                k = torch.tensor([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1.0]])[None]
                warped, inside = inverse_warp(source, depth, pose, k)
                m = (inside.bool() & valid).expand_as(warped)
                errors.setdefault(f"{f:g}", []).append(float((warped - target).abs()[m].mean()))
            m = valid.expand_as(target)
            errors.setdefault("unwarped", []).append(float((source - target).abs()[m].mean()))
        best = min((k for k in errors if k != "unwarped"), key=lambda k: np.mean(errors[k]))
        cells = ", ".join(f"{k}: {np.mean(v):.4f}" for k, v in errors.items())
        print(f"offset {offset}: mean L1 by focal length (px) {cells}; best {best}")


if __name__ == "__main__":
    main()
