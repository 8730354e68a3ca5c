"""`fergate attend`: a trained model's attention over whole images (the image processing is
`fergate.attend`'s); one JSON line per image into OUT/attend.jsonl, one summary line printed."""

from __future__ import annotations

import argparse
import sys

from fergate.commands import add_command, add_workdir, workdir_setup


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "attend", run, help="a trained model's attention over whole images of any size (group photos)")
    add_workdir(q, "a trained workdir of a family that draws attention maps (configs/attention.py)")
    q.add_argument("images", nargs="+", metavar="IMAGE", help="photos of any size")
    q.add_argument("--faces", action="store_true", help="detect the faces: scale them to the training size, and "
                   "weigh the map by soft face boxes (the paper's suppression of background false positives)")
    q.add_argument("--scale", type=float, default=None, help="resize the images by this factor first")
    q.add_argument("--out", default=None, help="output directory (default: W/attend)")


def run(a: argparse.Namespace) -> int:
    """The fully-convolutional mode: a trained model's attention over whole images."""
    import functools
    import json
    import os

    from fergate import face as F
    from fergate.attend import Attender

    workdir_setup(a)
    from fergate.train import program

    t = program.from_workdir(a.workdir, data=False)
    cfg, prog, step = t.config, t.program, t.step
    variables = {"params": t.state.params, **t.state.model_state}
    attend = Attender.of(cfg, functools.partial(prog.family.attend, cfg, prog.module, variables), step)
    out = a.out or os.path.join(a.workdir, "attend")
    os.makedirs(out, exist_ok=True)
    failed = 0
    with open(os.path.join(out, "attend.jsonl"), "a") as log:
        for path in a.images:
            try:
                img = F.load_image(path)
            except F.SkipItem as e:
                print(f"fergate attend: error: {path}: cannot read it ({e.reason})", file=sys.stderr)
                failed += 1
                continue
            row, _ = attend(img, path, out, a.faces, a.scale)
            log.write(json.dumps(row) + "\n")
            x, y = row["peak"]
            print(f"[attend] {path}: peak at ({x}, {y}){', in a face box' if row['peak_in_face'] else ''}"
                  + (f"; with the soft face boxes at {tuple(row['masked_peak'])}"
                     f"{', in a face box' if row['masked_peak_in_face'] else ''}" if "masked_peak" in row else "")
                  + f"; {len(row['faces'])} faces -> {row['png']}")
    return 2 if failed else 0
