"""`fergate config show`: a config's keys and values as they resolve (file, arguments,
--config overrides), so that a user can see what `--config.KEY=VALUE` may set; and the list
of the config files fergate ships (`catalogue`, also in `fergate train --help`)."""

from __future__ import annotations

import argparse
import ast
import os
from pathlib import Path

from fergate.commands import add_command


def add_parser(sub: argparse._SubParsersAction) -> None:
    q = add_command(sub, "config", run, overrides=True, jax=False,  # reads config files; runs nothing on devices
                    help="show a config's keys and values (what --config.KEY=VALUE may set)")
    actions = q.add_subparsers(dest="action", required=True, metavar="ACTION", help="what to do with a config")
    show = actions.add_parser("show", help="print every key of a config and its value, as they resolve",
                              epilog=catalogue)
    show.add_argument("config", metavar="CONFIG", help="configs/X.py[:arg=value,...], or a training workdir (the "
                      "config it was trained with); --config.KEY=VALUE overrides after it are applied")


def run(a: argparse.Namespace, overrides: list[str]) -> None:
    from fergate import config as config_lib

    if os.path.isdir(a.config):  # a training workdir: its config.json
        cfg = config_lib.load_workdir(a.config)
        for item in overrides:
            key, _, value = item.removeprefix("--").removeprefix("config.").partition("=")
            config_lib.override(cfg, key, value)
    else:
        cfg = config_lib.load(a.config, overrides)
    flat = config_lib.flatten(cfg.to_dict(), as_json=False)
    print(f"# {a.config}{' ' + ' '.join(overrides) if overrides else ''}: model {cfg.get('model', '?')}, variant "
          f"{cfg.get('variant', '?')}, {len(flat)} keys; set one with --config.KEY=VALUE")
    for key in sorted(flat):
        print(f"{key} = {flat[key]!r}")


#: the config files of this fergate (a checkout or an editable install): `configs/` beside the package
CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def catalogue() -> str:
    """The config files in `CONFIGS` (those with a `get_config`), each with its docstring's first
    paragraph, its variants (the `VARIANTS` it takes them from) and its arguments with their
    defaults (the keywords of its `parse_arg` call): the text of `fergate train --help`."""
    from fergate import config as config_lib

    head = ("configs (--config FILE[:ARG=VALUE,...]; the keys of one and their values: `fergate config show "
            "FILE[:ARG=VALUE,...]`, each settable with --config.KEY=VALUE, e.g. --config.train.steps=200):")
    if not CONFIGS.is_dir():
        return f"{head}\n  (no configs/ beside this fergate: {CONFIGS})"
    shown = os.path.relpath(CONFIGS)
    shown = shown if not shown.startswith("..") else str(CONFIGS)
    lines = [head]
    for path in sorted(CONFIGS.glob("*.py")):
        tree = ast.parse(path.read_text())
        if not any(isinstance(n, ast.FunctionDef) and n.name == "get_config" for n in tree.body):
            continue  # a module the config files share (common.py)
        summary = " ".join((ast.get_docstring(tree) or "").split("\n\n")[0].split())
        lines.append(f"  {os.path.join(shown, path.name)}: {summary}")
        args = _arguments(tree)
        variants = getattr(config_lib.load_module(str(path)), "VARIANTS", None)
        if variants:
            lines.append(f"      variant={args.pop('variant', '?')}: {' | '.join(variants)}")
        if args:
            lines.append(f"      {', '.join(f'{k}={v}' for k, v in args.items())}")
    return "\n".join(lines)


def _arguments(tree: ast.Module) -> dict[str, str]:
    """A config file's arguments and their defaults as they are written after `FILE:` (a word
    bare, '' quoted): the keywords of its `parse_arg(arg, ...)`."""

    def text(value: ast.expr) -> str:
        try:
            v = ast.literal_eval(value)
        except ValueError:
            return ast.unparse(value)
        return v if isinstance(v, str) and v else repr(v)

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_arg":
            return {k.arg: text(k.value) for k in node.keywords if k.arg}
    return {}
