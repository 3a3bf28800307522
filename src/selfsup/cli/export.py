"""``selfsup export``: a run's backbone as a file other libraries load."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from selfsup.cli.common import Formatter, Subparsers

if TYPE_CHECKING:
    from selfsup.quantize import Int8Options

EPILOG_EXPORT = """\
examples:
  selfsup export runs/simclr --format torchvision      # -> runs/simclr/export/torchvision/
  selfsup export runs/dino --format onnx --student --out deploy/dino-student
  selfsup export runs/dino --format onnx --out deploy/dino.onnx  # that file + preprocessing.json
  selfsup export runs/mae/checkpoints/last.pt --format safetensors --out weights/
  selfsup export runs/simclr --format onnx --quantize int8   # + backbone.int8.onnx
  selfsup export runs/simclr --format onnx --quantize int8 --knn-train cifar10/train \\
      --knn-test cifar10/test --knn-limit-train 5000 --knn-limit-test 1000
      # exits 1 (files kept) when int8 kNN top-1 is more than --tolerance points below float
  selfsup export runs/simclr --format hf --out hub/simclr-r18 --license apache-2.0
      # config.json + model.safetensors + README.md: upload the folder to the Hugging Face
      # hub, then timm.create_model("hf-hub:<user>/<repo>", pretrained=True) builds it

each export folder holds the model file and preprocessing.json: input size, channels,
mean/std, resize, architecture and build keywords, embed dim, and Python lines that load it.
selfsup.load_backbone(PATH) loads a run folder, a checkpoint or an hf export folder back.
"""


def add_parser(sub: Subparsers) -> None:
    from selfsup.export import FILES, FORMATS

    ex = sub.add_parser(
        "export", help="export a run's backbone (no heads) for use without selfsup",
        formatter_class=Formatter, epilog=EPILOG_EXPORT,
        description="Export the backbone a run evaluates with, without projection heads: "
        "images (B, C, S, S) -> features (B, D), with its preprocessing in preprocessing.json. "
        "The written file is loaded back and its features compared with the run's.",
    )  # fmt: skip
    ex.set_defaults(handler=run_export)
    ex.add_argument("run", metavar="RUN", help="run folder or checkpoint file (required)")
    files = ", ".join(f"{f}: {FILES[f]}" for f in FORMATS)
    ex.add_argument(
        "--format",
        required=True,
        choices=FORMATS,
        help="torchvision / timm: a state dict for the stock model (strict=True), only for "
        "backbones of that library; safetensors: the same state dict, loads without running "
        "code; onnx: for onnxruntime, dynamic batch (needs pip install 'selfsup[export]'); "
        "torchscript: traced, for torch.jit.load; hf: a timm / Hugging Face hub folder "
        "(config.json, model.safetensors, model card README.md) that timm.create_model loads "
        f"by name, for ResNets and timm backbones. Files: {files} (required)",
    )
    ex.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="folder to write (default: RUN/export/FORMAT); a name ending in the format's "
        "extension (.onnx, .safetensors, .pt or .pth) is written as that file, with "
        "preprocessing.json beside it. --format hf always writes a folder",
    )
    who = ex.add_mutually_exclusive_group()
    who.add_argument(
        "--teacher",
        dest="which",
        action="store_const",
        const="teacher",
        default=None,
        help="export the EMA teacher (DINO teacher, BYOL target, MoCo momentum encoder) "
        "(default: unset: the backbone the method evaluates with, i.e. the teacher for "
        "DINO/DINOv2 with method.eval_teacher=true, else the online network)",
    )
    who.add_argument(
        "--student",
        dest="which",
        action="store_const",
        const="student",
        help="export the trained (online) backbone of a method with an EMA teacher "
        "(default: unset, see --teacher)",
    )
    ex.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the files of an earlier export in --out (default: false)",
    )
    ex.add_argument(
        "--no-verify",
        action="store_true",
        help="skip loading the file back and comparing its features with the run's "
        "(default: verify)",
    )
    ex.add_argument(
        "--license",
        default="other",
        help="--format hf: the license in the model card and config.json; use the one your "
        "data and code allow, e.g. apache-2.0, cc-by-nc-4.0 (default: other)",
    )
    ex.add_argument(
        "--json", action="store_true", help="print preprocessing.json on stdout (default: false)"
    )
    _add_int8(ex)


def _add_int8(ex: argparse.ArgumentParser) -> None:
    from selfsup.quantize import Int8Options

    d = Int8Options()
    q = ex.add_argument_group("int8 quantisation (--format onnx)")
    q.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="also write BACKBONE.int8.onnx beside the float file: onnxruntime static "
        "quantisation (QDQ; int8 weights per output channel, 8-bit activations per tensor "
        "with ranges from calibration images). Static, because dynamic quantisation covers "
        "only MatMul/Linear layers, not convolutions. A ResNet-18 at 32 px ran 3.3x faster "
        "than float at batch 1 on one thread of an AVX-512 VNNI CPU (docs/export.md); the "
        "features are compared with the float ones by cosine similarity on held-out images "
        "(default: unset, float only)",
    )
    q.add_argument(
        "--calibration",
        type=int,
        default=None,
        metavar="N",
        help=f"calibration images, drawn (seeded, class-balanced) from the run's training "
        f"data; a few hundred suffice, more rarely help (default: {d.calibration})",
    )
    q.add_argument(
        "--calibration-data",
        default=None,
        metavar="DIR",
        help="calibrate on this folder instead of the run's data.path (needed when that has "
        "moved, is a named set that is not on this machine, or is sharded) (default: unset)",
    )
    q.add_argument(
        "--knn-train",
        default=None,
        metavar="DIR",
        help="labelled folder (<class>/<image>) or named set: the kNN bank of the tolerance "
        "check, k=200, cosine, temperature 0.1, float vs int8 (default: unset, no check)",
    )
    q.add_argument(
        "--knn-test", default=None, metavar="DIR",
        help="labelled folder or named set: the kNN check's queries (default: unset)",
    )  # fmt: skip
    q.add_argument(
        "--knn-limit-train", type=int, default=None, metavar="N",
        help="at most N bank images, class-balanced (default: unset, all)",
    )  # fmt: skip
    q.add_argument(
        "--knn-limit-test", type=int, default=None, metavar="N",
        help="at most N query images, class-balanced (default: unset, all)",
    )  # fmt: skip
    q.add_argument(
        "--tolerance",
        type=float,
        default=None,
        metavar="POINTS",
        help="largest accepted drop of kNN top-1 (float minus int8, in points); above it the "
        f"command exits with code 1, keeping the files (default: {d.tolerance})",
    )


def _int8_options(a: argparse.Namespace) -> Int8Options | None:
    """The int8 options given on the command line (None when there are none)."""
    from selfsup.quantize import Int8Options

    given = {k: getattr(a, k) for k in ("calibration", "calibration_data", "knn_train",
             "knn_test", "knn_limit_train", "knn_limit_test", "tolerance")}  # fmt: skip
    given = {k: v for k, v in given.items() if v is not None}
    if a.quantize is None and not given:
        return None
    return Int8Options(**given)


def run_export(a: argparse.Namespace) -> int:
    from selfsup.export import export_backbone

    res = export_backbone(a.run, a.format, a.out, which=a.which, verify=not a.no_verify,
                          overwrite=a.overwrite, license=a.license, quantize=a.quantize,
                          int8=_int8_options(a))  # fmt: skip
    quant = res.info.get("quantization")
    if a.json:
        print(json.dumps(res.info))
        return _knn_verdict(quant, res.out_dir)
    arch = res.info["architecture"]
    role = res.info["source"]["role"]
    print(f"exported the {role} {arch['backbone']} ({res.info['embed_dim']}-d features) "
          f"as {res.format}:")  # fmt: skip
    for f in res.files:
        print(f"  {f}")
    check = res.info.get("check")
    if check and check["max_abs_diff"] is not None:
        print(f"check: max |exported - run| = {check['max_abs_diff']:.2g} ({check['note']})")
    elif check:
        print(f"check: {check['note']}")
    if res.format == "hf":
        print(f"load: selfsup.load_backbone({str(res.out_dir)!r}), or with timm alone as "
              f"{res.out_dir / 'README.md'} shows")  # fmt: skip
    if quant:
        cal, c, st = quant["calibration"], quant["check"], quant["settings"]
        per = "per output channel" if st["per_channel"] else "per tensor"
        print(f"int8: {st['activation_type']} activations (per tensor), {st['weight_type']} "
              f"weights ({per}), {st['calibrate_method']} ranges from {cal['images']} images "
              f"of {cal['path']} ({cal['from']})")  # fmt: skip
        where = "held-out" if c["held_out"] else "calibration"
        print(f"int8 check: cosine(int8, float) mean {c['mean_cosine']:.4f}, min "
              f"{c['min_cosine']:.4f} on {c['images']} {where} images")  # fmt: skip
        knn = quant.get("knn")
        if knn:
            print(f"int8 kNN top-1: float {knn['float']['top1']:.2f}%, int8 "
                  f"{knn['int8']['top1']:.2f}%, drop {knn['drop']:.2f} points (tolerance "
                  f"{knn['tolerance']:g}; k={knn['k']}, {knn['n_train']} bank / "
                  f"{knn['n_test']} query images)")  # fmt: skip
            if knn["note"]:
                print(f"  note: {knn['note']}")
    return _knn_verdict(quant, res.out_dir)


def _knn_verdict(quant: dict[str, Any] | None, out_dir: Path) -> int:
    """Exit code 1, with a message on stderr, when the int8 kNN drop exceeds the tolerance."""
    knn = (quant or {}).get("knn")
    if not knn or knn["passed"]:
        return 0
    print(
        f"selfsup: int8 kNN top-1 is {knn['drop']:.2f} points below float "
        f"({knn['float']['top1']:.2f}% -> {knn['int8']['top1']:.2f}%), more than --tolerance "
        f"{knn['tolerance']:g}. The files are kept in {out_dir}, but check before deploying "
        "the int8 model: calibrate on more images (--calibration) or on data closer to the "
        "deployment's (--calibration-data), or deploy the float model.",
        file=sys.stderr,
    )
    return 1
