"""`fergate weights`: published pretrained weights (`fergate.weights`): `inspect` shows which
tensor of a file maps where, and what is missing, extra or mis-shaped, before a long job;
`convert` writes a `.pth` as `.safetensors` (on a machine with PyTorch), which fergate then
reads without it."""

from __future__ import annotations

import argparse

from fergate.commands import Parser, add_command

ARCH_NAMES = ("vgg16", "vggface", "densenet121", "c3d", "resnet3d18", "resnext3d101")


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "weights", run, jax=False,  # tensor names and shapes (jax.eval_shape): runs nothing on devices
                    help="published pretrained weights: inspect a file's mapping onto fergate's networks, convert a "
                         ".pth to .safetensors",
                    epilog="Training loads them with --config.init.weights=FILE (README, 'Pretrained backbones').")
    ops = q.add_subparsers(dest="op", required=True, parser_class=Parser)
    i = ops.add_parser("inspect", help="each tensor of FILE and the fergate variable it fills; what is missing, "
                       "extra or mis-shaped (exit status 1 when the file does not load)")
    i.add_argument("file", metavar="FILE", help="a state dict: .safetensors, .npz, or .pth (with torch installed)")
    i.add_argument("--arch", default=None, choices=ARCH_NAMES,
                   help="the layout to check against (default: the one the file's tensor names follow)")
    c = ops.add_parser("convert", help="write a .pth state dict (or a checkpoint holding one under 'state_dict') as "
                       ".safetensors; needs PyTorch")
    c.add_argument("file", metavar="FILE", help="the .pth file")
    c.add_argument("out", metavar="OUT", help="the .safetensors file to write")


def run(a: argparse.Namespace) -> int:
    from fergate import weights
    from fergate.weights import files

    if a.op == "convert":
        from fergate.errors import UserError

        if not a.out.endswith(".safetensors"):
            raise UserError(f"OUT {a.out}: name a .safetensors file")
        tensors = files.read(a.file)
        files.write_safetensors(a.out, tensors)
        arch = weights.detect(tensors)
        print(f"{a.out}: {len(tensors)} tensors, sha256 {files.sha256(a.out)}"
              f"{f'; layout {arch}' if arch else ''}")
        return 0
    report, lines = weights.inspect(a.file, a.arch)
    print("\n".join(lines))
    return 0 if report.ok else 1
