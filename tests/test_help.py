"""Help that teaches: every option explained with its default, the configs listed with their
variants, a config's keys shown (`fergate config show`), a misspelled key answered with the
key meant, and progress lines without made-up rates."""

import argparse
import os
import subprocess
import sys

import pytest

from fergate import cli
from fergate import config as C
from fergate.train.trainer import _pace

COMMANDS = ("prep", "train", "config", "cv", "sweep", "eval", "curves", "export", "predict", "attend", "features",
            "bench")


def _parsers(name: str) -> dict[str, argparse.ArgumentParser]:
    """Command `name`'s parser and those of its sub-commands (`config show`), by their names."""
    p = cli.parser([name])
    out, todo = {}, [(name, next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices[name])]
    while todo:
        prog, q = todo.pop()
        out[prog] = q
        for a in q._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += [(f"{prog} {n}", s) for n, s in a.choices.items()]
    return out


def _text(parser: argparse.ArgumentParser) -> str:
    return " ".join(parser.format_help().split())  # argparse wraps the lines


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_has_help_and_its_default_where_it_says_something(name):
    for prog, q in _parsers(name).items():
        for a in q._actions:
            assert a.help, f"fergate {prog}: {a.option_strings or a.dest} has no help"
        text = _text(q) if prog != "train" else ""  # train's list of configs: the next test
        assert "default: None" not in text and "default: False" not in text and "(default: )" not in text, prog


def test_defaults_are_shown_in_help():
    bench, prep = _text(_parsers("bench")["bench"]), _text(_parsers("prep")["prep"])
    assert "--steps STEPS steps timed (the median step time is reported) (default: 20)" in bench
    assert "--warmup WARMUP untimed steps run first, after the compile (default: 3)" in bench
    assert "--records_per_file N records per ArrayRecord file at most" in prep and "(default: 1024)" in prep
    assert "--patch_size P side in pixels of the P x P grey patch cut around each landmark" in prep
    assert "--illumination {none,diffusion} isotropic-diffusion illumination normalisation of grey faces " \
           "(default: none)" in prep
    assert "--workers WORKERS processes (default: all cores)" in prep  # said by the help: not repeated


def test_multi_host_flags_stand_in_their_own_group():
    q = _parsers("train")["train"]
    groups = {g.title: [a.dest for a in g._group_actions] for g in q._action_groups}
    multi = next(t for t in groups if t.startswith("multi-host"))
    assert groups[multi] == ["coordinator", "num_processes", "process_id", "distributed"]
    assert groups["options"] == ["help", "config", "workdir"]


def test_train_help_lists_the_configs_with_their_variants_and_how_to_see_their_keys(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "fergate config show FILE[:ARG=VALUE,...]" in text
    from fergate.models import thin, vshnn

    assert "configs/thin.py: THIN (throwable information networks)" in text
    assert f"variant=thin: {' | '.join(thin.VARIANTS)}" in text
    assert f"variant=c3d_sagru_b: {' | '.join(vshnn.VARIANTS)}" in text
    assert "task=digits_rotated, exo='', identity=cnn" in text  # the arguments as they are typed after FILE:
    assert "configs/common.py" not in text  # no get_config: not a config


def test_config_show_prints_the_resolved_keys_and_a_bad_path_is_one_line(capsys, tmp_path):
    assert cli.main(["config", "show", "configs/thin.py:variant=baseline", "--config.train.steps=20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("# configs/thin.py:variant=baseline --config.train.steps=20: model thin, variant "
                               "baseline")
    assert {"train.steps = 20", "variant = 'baseline'", "data.dataset = 'digits_rotated'"} <= set(lines)
    assert lines[1:] == sorted(lines[1:])  # found by name
    assert cli.main(["config", "show", str(tmp_path / "nope.py")]) == 2
    err = capsys.readouterr().err
    assert err == f"fergate config: error: config file not found: {tmp_path / 'nope.py'}\n"


def test_a_close_unknown_key_is_answered_with_the_key_meant():
    r = subprocess.run([sys.executable, "-m", "fergate", "train", "--config", "configs/modul.py", "--workdir",
                        "/nonexistent/w", "--config.train.stpes=3"], capture_output=True, text=True,
                       env={**os.environ, "FERGATE_CACHE": "/nonexistent/cache"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "unknown config key 'train.stpes'; did you mean train.steps?" in r.stderr
    for key, meant in (("steps", "train.steps or pretrain.steps"), ("optim.lrr", "optim.lr")):
        with pytest.raises(C.UserError, match=f"did you mean {meant}\\?"):
            C.load("configs/modul.py", [f"--config.{key}=1"])
    with pytest.raises(C.UserError) as e:
        C.load("configs/modul.py", ["--config.nothing.like.it=1"])
    assert "did you mean" not in str(e.value)
    with pytest.raises(C.UserError, match="unknown config argument 'varaint'; did you mean variant\\?"):
        C.load("configs/modul.py:varaint=joint")


def test_a_progress_line_shows_a_rate_and_an_eta_only_when_measured():
    assert _pace({"loss": 1.0}, None) == ""  # right after the first step: nothing timed yet
    assert _pace({"steps_per_sec": 2.5, "examples_per_sec": 40.0}, None) == " | 2.5 steps/s 40 ex/s"
    assert _pace({"steps_per_sec": 2.5, "examples_per_sec": 40.0}, 3725) == " | 2.5 steps/s 40 ex/s | ETA 1h02m05s"
    assert _pace({"steps_per_sec": 0.02, "examples_per_sec": 0.32}, 60) == " | 50.0 s/step 0.32 ex/s | ETA 1m00s"
