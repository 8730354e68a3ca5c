"""THIN (throwable information networks) and its Table 2 ablations, on the synthetic
benchmarks and FER.

    fergate train --config configs/thin.py:task=digits_rotated,variant=thin --workdir W
    variants: baseline, ensemble, tree_gated, exo_tree_gated, oracle, thin (and exo: stage 1)
    tasks: digits_rotated, digits_rotated_scaled, dsprites, fer

Variants that read an exogenous network first train it (variant=exo, on the exogenous
label) into W/pretrain/NAME, then load and freeze it: one command runs both stages.
    exo=rotation+scale: two exogenous networks, their representations concatenated (Table 3)
    task=fer,identity=cnn: an identity CNN trained on the faces instead of the dlib embedding
"""

import os

from fergate.config import choice, parse_arg
from fergate.errors import UserError
from fergate.models.thin import VARIANTS

from . import common

TASKS = {  # classes, image size, the default exogenous variable, the exogenous variables it has
    "digits_rotated": dict(classes=10, size=28, exo="rotation", has=("rotation",)),
    "digits_rotated_scaled": dict(classes=10, size=28, exo="rotation", has=("rotation", "scale")),
    "dsprites": dict(classes=3, size=64, exo="scale", has=("scale", "rotation")),
    "fer": dict(classes=7, size=96, exo="identity", has=("identity",)),
}
#: exogenous variable: (record field, bins); dSprites has its own grid; FER's subjects are counted from the data
EXOGENOUS = {"rotation": ("rotation_bin", 18), "scale": ("scale_bin", 10), "identity": ("subject", 0)}
DSPRITES_BINS = {"scale": 6, "rotation": 40}


def get_config(arg=None):
    """`exo=` picks the exogenous variable(s), `+`-joined for several (Table 3 on MNIST-RS:
    rotation, scale, rotation+scale); FER's `identity=cnn` trains an identity CNN on the
    faces as gamma_tau instead of reading the records' dlib embedding."""
    arg = parse_arg(arg, task="digits_rotated", variant="thin", exo="", identity="embedding", experts="vmap",
                    smoke=False)
    choice(arg.task, tuple(TASKS), "THIN task")
    choice(arg.identity, ("embedding", "cnn"), "identity (embedding: the records' dlib embedding; cnn)")
    task, fer = TASKS[arg.task], arg.task == "fer"
    names = tuple((arg.exo or task["exo"]).split("+"))
    if any(n not in task["has"] for n in names) or len(set(names)) != len(names):
        raise UserError(f"exo={arg.exo!r} does not apply to task {arg.task} (it has: {', '.join(task['has'])})")
    if arg.variant == "exo" and len(names) != 1:
        raise UserError("variant=exo (stage 1) trains one exogenous variable: exo=rotation or exo=scale")
    bins = [DSPRITES_BINS[n] if arg.task == "dsprites" else EXOGENOUS[n][1] for n in names]
    exo_cnn = not fer or arg.identity == "cnn"  # gamma_tau is a CNN on the image, trained in stage 1
    c = common.base("thin", choice(arg.variant, VARIANTS, "THIN variant"))
    c.task = arg.task
    # FER stage 1 learns the training subjects' identities: it is evaluated on the training split
    c.data.dataset = "sample" if fer else arg.task
    c.data.prep_options = dict(size=2800) if fer else {}
    c.data.eval_split = "train" if (fer and arg.variant == "exo") else "test"
    c.data.balance = c.data.flip = c.data.brightness_contrast = fer
    c.data.label_field = EXOGENOUS[names[0]][0] if arg.variant == "exo" else "label"
    c.input.batch_size = 16 if fer else 32
    c.input.image_size = task["size"]
    c.input.channels = 3 if fer else 1
    c.input.identity_width = 128  # FER default exogenous representation: the records' 128-d dlib embedding
    c.thin = dict(
        num_classes=0 if fer else task["classes"],  # 0: the data's classes
        exo_names=names,
        exo_fields=tuple(EXOGENOUS[n][0] for n in names),
        exo_classes=tuple(bins),  # FER: 0 = the number of training subjects, read from the data
        image_field="face" if fer else "image",
        exo_input="image" if exo_cnn else "identity",
        endo_convs=(64, 128, 256, 512, 512) if fer else (16, 16),  # FER: VGG-style, 4608-d for 96 x 96
        exo_convs=(32, 64, 128, 128) if fer else (16, 16),
        baseline_hidden=(256,),
        exo_hidden=(256,),
        members=32 if fer else 8,
        expert_hidden=(512, 512) if fer else (32,),
        depth=5 if fer else 3,
        dispel_weight=0.005,
        experts_impl=arg.experts,
    )
    c.optim.lr = c.optim.end_lr = 1e-5 if (fer and arg.variant != "exo") else 1e-3  # FER: 1e-5 for the VGG-style net
    c.train.steps = 20_000 if fer else 6_000
    c.train.log_every = 100
    c.train.keep = 2
    c.eval.top_k = (1, 2)
    # stage 1: each exogenous network (gamma_tau, c_sigma) trained on its label into W/pretrain/NAME by
    # the same command, then loaded and frozen. The records' embedding needs no gamma_tau; its c_sigma
    # is only used by the dispelling loss.
    needs_exo = arg.variant in ("exo_tree_gated", "thin") and (exo_cnn or arg.variant == "thin")
    parts = tuple(f"exo_{part}_{n}" for n in names for part in ("encoder", "classifier"))
    here = os.path.abspath(__file__)
    c.init.params_from = ("pretrain",) if needs_exo else ()
    c.init.params = parts
    c.optim.frozen = parts if needs_exo else ()
    # stage 1 runs on this run's data with this run's exogenous network shape
    c.pretrain.inherit = ("data.dir", "data.prep_options", "input.image_size", "input.identity_width",
                          "thin.exo_convs", "thin.exo_hidden", "train.dtype")
    c.pretrain.configs = {n: f"{here}:task={arg.task},variant=exo,exo={n},identity={arg.identity},smoke={arg.smoke}"
                          for n in (names if needs_exo else ())}
    return common.smoke(c) if arg.smoke else c
