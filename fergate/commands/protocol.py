"""`fergate protocol export DATA`: the split (and fold) assignment of prepared data as a
protocol file (`fergate.data.protocol`), which `fergate prep --splits FILE` prepares another
copy of the source by; its digest is the one eval.json and cv.json record."""

from __future__ import annotations

import argparse

from fergate.commands import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "protocol", run, jax=False,  # reads a manifest, writes JSON: runs nothing on devices
                    help="a prepared dataset's subjects per split and per fold, as a protocol file for "
                         "`fergate prep --splits` on another machine",
                    epilog="The file's digest (also printed) is the protocol_digest of eval.json and cv.json: equal "
                           "digests, the same subjects in each split and fold.")
    q.add_argument("action", choices=("export",), help="export: write DATA's protocol file")
    q.add_argument("data", metavar="DATA", help="prepared data (a `fergate prep --out` directory)")
    q.add_argument("--out", default=None, metavar="FILE", help="the protocol file (default: standard output)")


def run(a: argparse.Namespace) -> None:
    import json
    import sys

    from fergate.data import pipeline, protocol

    p = protocol.of_manifest(pipeline.read_manifest(a.data))
    if a.out:
        protocol.write(a.out, p)
    else:
        sys.stdout.write(json.dumps(p, indent=1) + "\n")
    n = sum(len(v) for v in p["splits"].values())
    print(f"[protocol] {a.data}: {n} subjects in {', '.join(f'{s} {len(v)}' for s, v in p['splits'].items())}, "
          f"{len(set(p['folds'].values()))} folds; digest {p['digest']}{' -> ' + a.out if a.out else ''}",
          file=sys.stderr)
