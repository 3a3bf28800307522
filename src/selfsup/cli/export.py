"""``selfsup export``: a run's backbone as a file other libraries load."""

from __future__ import annotations

import argparse
import json

from selfsup.cli.common import Formatter, Subparsers

EPILOG_EXPORT = """\
examples:
  selfsup export runs/simclr --format torchvision      # -> runs/simclr/export/torchvision/
  selfsup export runs/dino --format onnx --student --out deploy/dino-student
  selfsup export runs/dino --format onnx --out deploy/dino.onnx  # that file + preprocessing.json
  selfsup export runs/mae/checkpoints/last.pt --format safetensors --out weights/
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


def run_export(a: argparse.Namespace) -> int:
    from selfsup.export import export_backbone

    res = export_backbone(a.run, a.format, a.out, which=a.which, verify=not a.no_verify,
                          overwrite=a.overwrite, license=a.license)  # fmt: skip
    if a.json:
        print(json.dumps(res.info))
        return 0
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
    return 0
