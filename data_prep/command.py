"""`fergate prep`: a dataset's source -> the face pipeline -> ArrayRecord shards + manifest.json.

The offline stage adds this command to `fergate` through the `fergate.commands` entry point
(pyproject.toml): fergate imports nothing of `data_prep`.
"""

from __future__ import annotations

import argparse

from fergate.commands import named
from fergate.detectors import DETECTORS
from fergate.errors import UserError


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("prep", help="face pipeline -> ArrayRecord shards + manifest.json",
                       epilog="The reader options of each dataset follow the general ones, in a group per dataset.")
    if named() not in (None, "prep"):  # another command: its help line is all it needs of this parser
        return
    q.add_argument("source", nargs="?", help="dataset root (folder of photos for --dataset sample, the .csv file "
                   "for csv)")
    from data_prep import readers  # the reader flags are generated from the readers' options

    q.add_argument("--dataset", required=True, help=readers.dataset_help())
    q.add_argument("--out", required=True, help="output directory; one holding an earlier preparation is brought up "
                   "to date (items added, replaced or removed since are redone, finished shards kept), or refused "
                   "when it was prepared with other options")
    q.add_argument("--overwrite", action="store_true", help="--out prepared with other options: remove what prep "
                   "wrote there and prepare it anew")
    q.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    q.add_argument("--shard_index", type=int, default=0, help="this machine's index, 0 to --num_shards - 1")
    q.add_argument("--num_shards", type=int, default=1, help="machines sharing the work, each writing its share of "
                   "every split's files into the same --out")
    q.add_argument("--records_per_file", type=int, default=1024, metavar="N",
                   help="records per ArrayRecord file at most: a split of n items is written as ceil(n / N) files "
                        "(rounded up to a multiple of --num_shards)")
    q.add_argument("--test_fraction", type=float, default=0.2,
                   help="a source without a test split: hold out this share of its subjects as `test` (0: none)")
    q.add_argument("--splits", default=None, metavar="FILE",
                   help="a protocol file (fergate protocol export DATA): each subject goes into the split it names "
                        "(its items in no split are skipped as not_in_protocol), and into its fold if it names folds; "
                        "default: the source's own splits, and --test_fraction")
    q.add_argument("--face_size", default="96", help="aligned crop: a side (96) or width x height (125x160)")
    q.add_argument("--illumination", default="none", choices=("none", "diffusion"),
                   help="isotropic-diffusion illumination normalisation of grey faces")
    q.add_argument("--align", default="eyes_mouth", choices=("eyes_mouth", "eyes_lip"),
                   help="alignment template: eye centres + mouth centre, or the eyes' midpoint + the upper lip "
                        "(the micro-emotion network's)")
    q.add_argument("--face_scale", type=float, default=1.0,
                   help="the face's size in the crop against the template's: 0.6 keeps background around it")
    q.add_argument("--grey", action="store_true", help="store grey faces (default RGB)")
    q.add_argument("--patch_size", type=int, default=30, metavar="P",
                   help="side in pixels of the P x P grey patch cut around each landmark (MoDuL's patch branch)")
    q.add_argument("--no_patches", action="store_true", help="skip the landmark patches (models without a patch "
                   "branch: smaller records, faster prep)")
    q.add_argument("--no_identity", action="store_true", help="skip the 128-d dlib embedding")
    q.add_argument("--detector", default="hog", choices=tuple(DETECTORS),
                   help="the face detector: hog (dlib's, upright frontal faces of 80 px and more) or yunet (a CNN for "
                        "faces in the wild: rolled, small, turned; pip install 'fergate[detectors]'); landmarks and "
                        "alignment are the same after either")
    q.add_argument("--upsample", type=int, default=0, help="detection on the image scaled up 2^N times (smaller faces)")
    # not --min_confidence, as `fergate predict` names it: that is ExpW's filter on its annotated boxes
    q.add_argument("--min_score", type=float, default=None, metavar="S",
                   help="detected faces the detector is less confident of (its score, recorded as detector_score) "
                        "are skipped as no_face; hog: dlib's SVM score, 0 (the default) is dlib's own threshold, below "
                        "0 admits weaker boxes; yunet: its confidence in [0, 1], default 0.5")
    q.add_argument("--compress", action="store_true", help="store images as PNG (smaller, slower to read)")
    g = q.add_argument_group("clips (afew, video_folder, ckplus, bu4dfe, mmi, the sample set's clips)")
    g.add_argument("--clip_size", type=int, default=64, help="side of the aligned clip frames")
    g.add_argument("--frames", type=int, default=16, help="T: every clip is resampled to T frames")
    g.add_argument("--max_frames", type=int, default=64,
                   help="frames decoded from one video at most, evenly spaced over it (bounds memory)")
    g.add_argument("--max_gap", type=int, default=8,
                   help="a frame without a face takes the last face box for at most this many frames, else is dropped")
    g.add_argument("--min_faces", type=int, default=4,
                   help="skip a clip with fewer frames with a (found or carried) face: too_few_faces")
    readers.add_arguments(q)
    q.set_defaults(func=run, jax=False)  # starts no JAX: `fergate` sets up its logging


def run(a: argparse.Namespace) -> None:
    from data_prep import prep, readers
    from fergate import face

    opts = prep.PrepOptions(
        face=face.FaceOptions(face_size=_face_size(a.face_size), color=not a.grey, patch_size=a.patch_size,
                              patches=not a.no_patches, identity=not a.no_identity, upsample=a.upsample,
                              detector=a.detector,
                              min_score=DETECTORS[a.detector].default_min if a.min_score is None else a.min_score,
                              illumination=a.illumination, align=a.align, face_scale=a.face_scale),
        clip_size=a.clip_size, compress=a.compress, records_per_file=a.records_per_file, test_fraction=a.test_fraction,
        frames=a.frames, max_gap=a.max_gap, min_faces=a.min_faces, max_frames=a.max_frames)
    reader_options = readers.options_from_args(a.dataset, a)
    prep.run(a.dataset, a.source, a.out, opts, reader_options, a.workers, a.shard_index, a.num_shards, a.overwrite,
             a.splits)


def _face_size(text: str):
    from fergate.face import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise UserError(f"--face_size: {e}") from None
