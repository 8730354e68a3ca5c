"""`fergate verify`: every shard of prepared data read back and checked against its manifest
(`fergate.data.verify`)."""

from __future__ import annotations

import argparse

from fergate.commands import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "verify", run, jax=False,  # reads the shards back: runs nothing on devices
                    help="read every shard of prepared data: records readable, counts and digests as the manifest "
                         "says (a shard damaged, or changed since prep); exit status 1 when anything is wrong",
                    epilog="One line per shard, then a summary saying what to do. Training, eval and features name "
                           "this command when they meet a damaged shard.")
    q.add_argument("data", nargs="+", metavar="DATA", help="prepared data (a `fergate prep --out` directory)")


def run(a: argparse.Namespace) -> int:
    from fergate.data import verify

    failed = False
    for data in a.data:
        manifest, checks = verify.read_manifest(data), []
        for c in verify.verify(data, manifest):
            print(c.line(), flush=True)
            checks.append(c)
        print(verify.summary(data, manifest, checks), flush=True)
        failed = failed or any(c.problem for c in checks)
    return 1 if failed else 0
