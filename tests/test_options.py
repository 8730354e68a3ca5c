"""Config keys (`fergate.options`): one spec per key of the shared sections, mini-languages
refused as the config loads, and stage specs that survive moving a workdir."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import SMALL

from fergate import config as C
from fergate import options
from fergate.config import load_module
from fergate.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: a config with an earlier stage (a config of the same file): its classifier, loaded
STAGED = '''
from . import modul


def get_config(arg=None):
    c = modul.get_config("smoke=True")
    if arg != "stage":
        c.pretrain.configs = {"first": "staged.py:stage"}
        c.pretrain.inherit = ("data.dir", "input", "modul")
        c.init.params_from, c.init.params = ("pretrain",), ("classifier",)
    return c
'''


def test_every_shared_key_has_one_spec():
    """A key added to configs/common.py's sections without a spec (default, check,
    resumability, the value older workdirs get) fails here, and the reverse."""
    base = load_module(os.path.join(REPO, "configs", "common.py")).base("modul", "modul")
    shared = {f"{s}.{k}" for s in ("data", "input", "optim", "train", "eval", "mesh", "init", "pretrain")
              for k in base[s]}
    assert shared == set(options.KEYS)
    # today's resumable keys and the values older workdirs get, now read from the table
    assert set(options.RESUMABLE_CHANGES) == {
        "train.steps", "optim.decay_steps", "train.log_every", "train.ckpt_every", "train.eval_every", "train.keep",
        "train.profile_steps", "data.workers", "data.cache_mb", "eval.batch_size", "eval.top_k", "mesh.model",
        "mesh.rules"}


#: (config, override, the error): a malformed option, or a config argument its file does not know,
#: is refused as the config loads, in one line
CONFIG_ERRORS = [("configs/attention.py:from_baseline=True", override, message) for override, message in [
    ("--config.mesh.rules=('kernel0=-,tensor',)", "config mesh.rules: 'kernel0=-,tensor' is not REGEX=AXES"),
    ("--config.mesh.rules=('(kernel=model',)", "config mesh.rules: '(kernel=model': missing"),
    ("--config.optim.lr_scale=features", "config optim.lr_scale: 'features' is not subtree=factor"),
    ("--config.optim.lr_scale=features=fast", "config optim.lr_scale: 'features=fast' is not subtree=factor"),
    ("--config.data.mix=('/data/other=x',)", "config data.mix entry '/data/other=x': expected DIR or DIR=WEIGHT"),
    ("--config.data.mix=('/data/other=-1',)", "with WEIGHT >= 0"),
    ("--config.data.label_map=('contempt',)", "config data.label_map: label mapping 'contempt': expected FROM=TO"),
    ("--config.init.params=('features=',)", "config init.params: 'features=' is not NAME or DST=SRC"),
    ("--config.pretrain.configs.baseline=nowhere.py:x", "config pretrain.configs.baseline: config file nowhere.py"),
    ("--config.pretrain.configs.baseline=:x", "config pretrain.configs.baseline=':x': expected FILE[:ARG]"),
    ("--config.pretrain.inherit=('data.nokey',)", "config pretrain.inherit: 'data.nokey' is no key"),
]] + [(spec, None, message) for spec, message in [
    ("configs/modul.py:variant=gated", "unknown MoDuL variant 'gated'"),
    ("configs/modul.py:varaint=joint", "unknown config argument 'varaint'"),
    ("configs/thin.py:variant=moe", "unknown THIN variant 'moe'"),
    ("configs/thin.py:task=mnist", "unknown THIN task 'mnist'"),
]]


@pytest.mark.parametrize("spec, override, message", CONFIG_ERRORS)
def test_a_malformed_option_or_argument_is_a_one_line_error_as_the_config_loads(spec, override, message):
    with pytest.raises(UserError) as e:
        C.load(spec, [override] if override else [])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_parsed_values_are_typed_and_follow_the_config():
    cfg = C.load("configs/thin.py:task=digits_rotated,variant=thin",
                 ["--config.optim.lr_scale=features=0.1", "--config.data.mix=('/d/a','/d/b=2')",
                  "--config.init.params=('endo=exo_encoder_identity',)"])
    assert options.parsed(cfg, "optim.lr_scale") == (options.Scale("features", 0.1),)
    assert [(m.dir, m.weight) for m in options.parsed(cfg, "data.mix")] == [("/d/a", 1.0), ("/d/b", 2.0)]
    assert options.parsed(cfg, "init.params") == (options.ParamCopy("endo", "exo_encoder_identity"),)
    assert options.parsed(cfg, "mesh.rules")[0] == options.Rule("experts/kernel0", (None, "model", None),
                                                                "experts/kernel0=-,model,-")
    stage = options.parsed(cfg, "pretrain.configs")["rotation"]
    assert stage.path == "thin.py" and not os.path.isabs(cfg.pretrain.configs.rotation)  # config.json: no path
    cfg.optim.lr_scale = ("trunk=x",)  # a later change is read (and checked) through the same parser
    with pytest.raises(UserError, match="'trunk=x' is not subtree=factor"):
        options.parsed(cfg, "optim.lr_scale")


def test_an_older_workdir_gets_the_values_that_mean_what_it_did(tmp_path):
    cfg = json.loads(C.to_json(C.load("configs/modul.py")))
    for section, key in (("data", "mix"), ("train", "accumulate"), ("optim", "lr_scale")):
        del cfg[section][key]
    del cfg["pretrain"]
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    old = C.load_workdir(str(tmp_path))
    assert (old.data.mix, old.train.accumulate, old.optim.lr_scale, dict(old.pretrain.configs)) == ((), 1, (), {})


def test_a_workdir_written_before_a_key_existed_resumes_under_the_same_config(tmp_path):
    """Keys added since a workdir was written (here the out-of-fold keys) count at the value
    meaning what it did: the same config resumes it, a changed one is refused naming the key."""
    from fergate.train.trainer import check_workdir_config

    for spec in ("configs/attention.py", "configs/vshnn.py:variant=c3d"):
        cfg = C.load(spec)
        saved = json.loads(C.to_json(cfg))
        for section, key in (("data", "oof_fold"), ("data", "oof_folds"), ("pretrain", "folds")):
            del saved[section][key]
        (tmp_path / "config.json").write_text(json.dumps(saved))
        check_workdir_config(str(tmp_path), cfg)
    cfg = C.load("configs/vshnn.py:variant=c3d_sagru_b")  # stacked: out-of-fold by default, not what it did
    saved = json.loads(C.to_json(cfg))
    del saved["pretrain"]["folds"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(UserError, match="pretrain.folds"):
        check_workdir_config(str(tmp_path), cfg)


def test_a_moved_workdir_evaluates(sample_data, tmp_path):
    """A run with an earlier stage, its config files then gone and its workdir copied
    elsewhere (cp -r W W2): `fergate eval --workdir W2` reads every stage from W2."""
    cfgs = tmp_path / "cfgs"
    cfgs.mkdir()
    for name in ("common.py", "modul.py"):
        shutil.copy(os.path.join(REPO, "configs", name), cfgs / name)
    (cfgs / "staged.py").write_text(STAGED)
    w, w2 = tmp_path / "w", tmp_path / "moved" / "w2"
    r = subprocess.run([sys.executable, "-m", "fergate", "train", "--config", str(cfgs / "staged.py"), "--workdir",
                        str(w), f"--config.data.dir={sample_data}", "--config.train.steps=4",
                        "--config.pretrain.steps=4", *SMALL], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"[train] plan: stage 1 first (modul/modul) 4 steps -> {w}/pretrain/first; stage 2 modul/modul 4 steps" \
        in r.stdout
    saved = json.load(open(w / "config.json"))
    assert saved["pretrain"]["configs"] == {"first": "staged.py:stage"}  # no absolute path
    assert os.path.exists(w / "pretrain" / "first" / "eval.json")
    shutil.move(cfgs, tmp_path / "gone")
    shutil.copytree(w, w2)
    shutil.rmtree(w)
    r = subprocess.run([sys.executable, "-m", "fergate", "eval", "--workdir", str(w2)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.load(open(w2 / "eval.json"))["step"] == 4
    stages = C.pretrain_stages(C.load_workdir(str(w2)))
    assert set(stages) == {"first"} and stages["first"].train.steps == 4
