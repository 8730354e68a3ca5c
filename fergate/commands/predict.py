"""`fergate predict`: an exported model on photos, folders and videos (`fergate.predict`)."""

from __future__ import annotations

import argparse
import sys

from fergate.commands import add_command, jax_setup
from fergate.detectors import DETECTORS
from fergate.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "predict", run, help="an exported model on photos, folders (recursively) and videos: "
                    "one JSON line per face (or clip window)")
    q.add_argument("--model", required=True, help="an export (fergate export)")
    q.add_argument("inputs", nargs="+", metavar="INPUT", help="photos, videos, folders")
    q.add_argument("--out", default=None, help="JSONL file (default: stdout)")
    q.add_argument("--annotate", default=None, metavar="DIR", help="write each input with its boxes, landmarks "
                   "and labels drawn: a photo in its own format, a video as one video (.mp4, its frame rate)")
    q.add_argument("--frames", action="store_true", help="with --annotate: also each annotated video frame as "
                   "an image")
    q.add_argument("--heatmaps", default=None, metavar="DIR", help="write each face's attention map over the "
                   "model's input (models with spatial introspection: the attention CNN)")
    q.add_argument("--detector", default=None, choices=tuple(DETECTORS),
                   help="the face detector (fergate prep --detector; default: the one the training data used)")
    q.add_argument("--min_confidence", "--min_score", dest="min_score", type=float, default=None, metavar="S",
                   help="predict only faces the detector scores at least S, on each line as `score` (hog: dlib's SVM "
                        "score, faces mostly 0.5-3, false positives below 0.5, below 0 admits weaker boxes than dlib "
                        "reports; yunet: its confidence in [0, 1]); default: the training data's, or with another "
                        "--detector its own (hog 0, yunet 0.5). --min_score is the old name")
    q.add_argument("--batch", type=int, default=32, help="faces per model call")
    q.add_argument("--workers", type=int, default=None, help="face pipeline processes (default: all cores)")
    q.add_argument("--every", type=int, default=1, help="face models on videos: every K-th frame")
    q.add_argument("--window", type=int, default=None, help="clip models: frames per window (default: T)")
    q.add_argument("--stride", type=int, default=None, help="clip models: frames between windows (default: T/2)")
    q.add_argument("--pipeline_only", action="store_true", help="the face pipeline alone, no model (to time it)")


def run(a: argparse.Namespace) -> None:
    import os

    from fergate import predict

    if a.batch < 1:
        raise UserError(f"--batch {a.batch}: at least 1")
    if a.frames and not a.annotate:
        raise UserError("--frames writes annotated video frames: give --annotate DIR too")
    missing = [p for p in a.inputs if not os.path.exists(p)]
    if len(missing) == len(a.inputs):  # before the model loads: a mistyped path
        raise UserError(predict.missing_error(missing, False))
    jax_setup(a)
    from fergate import export

    model = export.load(a.model, a.batch)
    out = open(a.out, "w") if a.out else sys.stdout
    try:
        c = predict.run(model, a.inputs, out, a.workers, a.every, a.window, a.stride, a.annotate, a.heatmaps,
                        a.pipeline_only, a.min_score, a.frames, a.detector)
    finally:
        if a.out:
            out.close()
    what = "clip windows" if c["kind"] == "clip" else f"faces ({c.get('frames', 0)} from video frames)"
    print(f"[predict] {c['faces']} {what}, {c['errors']} inputs without a "
          f"prediction, in {c['seconds']:.1f}s: {c.get('faces_per_sec', 0):.1f}/s"
          f"{', ' + str(c['steady_faces_per_sec']) + '/s after start-up' if 'steady_faces_per_sec' in c else ''}"
          f"{' -> ' + a.out if a.out else ''}", file=sys.stderr)
