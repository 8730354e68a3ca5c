"""The `fergate` command line. User mistakes print one line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import sys

from fergate.errors import UserError


def _prep(a: argparse.Namespace) -> None:
    from data_prep import face, prep

    opts = prep.PrepOptions(
        face=face.FaceOptions(face_size=a.face_size, color=not a.grey, patch_size=a.patch_size,
                              patches=not a.no_patches, identity=not a.no_identity, upsample=a.upsample),
        clip_size=a.clip_size, compress=a.compress, records_per_file=a.records_per_file)
    reader_options = {}
    if a.dataset == "sample":
        reader_options = {"size": a.size, "clips": a.clips, "frames": a.frames, "seed": a.seed,
                          "test_subjects": a.test_subjects}
    prep.run(a.dataset, a.source, a.out, opts, reader_options, a.workers, a.shard_index, a.num_shards)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fergate", description="Gated multi-modal FER models in JAX.")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("prep", help="face pipeline -> ArrayRecord shards + manifest.json")
    q.add_argument("source", nargs="?", help="dataset root (folder of photos for --dataset sample)")
    q.add_argument("--dataset", required=True, help="sample | folder")
    q.add_argument("--out", required=True, help="output directory")
    q.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    q.add_argument("--shard_index", type=int, default=0, help="this machine's index")
    q.add_argument("--num_shards", type=int, default=1, help="machines sharing the work")
    q.add_argument("--records_per_file", type=int, default=1024)
    q.add_argument("--face_size", type=int, default=96)
    q.add_argument("--grey", action="store_true", help="store grey faces (default RGB)")
    q.add_argument("--patch_size", type=int, default=30)
    q.add_argument("--no_patches", action="store_true")
    q.add_argument("--no_identity", action="store_true", help="skip the 128-d dlib embedding")
    q.add_argument("--upsample", type=int, default=0, help="HOG detector upsampling")
    q.add_argument("--clip_size", type=int, default=64)
    q.add_argument("--compress", action="store_true", help="store images as PNG (smaller, slower to read)")
    g = q.add_argument_group("sample dataset")
    g.add_argument("--size", type=int, default=2800, help="images")
    g.add_argument("--clips", type=int, default=140)
    g.add_argument("--frames", type=int, default=16, help="T frames per clip")
    g.add_argument("--test_subjects", type=int, default=1)
    g.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_prep)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except UserError as e:
        print(f"fergate {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fergate {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
