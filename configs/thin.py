"""THIN (paper 003, SPEC.md 5.4) and its Table 2 ablations, on the synthetic benchmarks and FER.

    fergate train --config configs/thin.py:task=digits_rotated,variant=thin --workdir W
    variants: baseline, ensemble, tree_gated, exo_tree_gated, oracle, thin (and exo: stage 1)
    tasks: digits_rotated, digits_rotated_scaled, dsprites, fer

Variants that read the exogenous network first train it (variant=exo, on the exogenous
label) into W/pretrain, then load and freeze it: one command runs both stages.
"""

import os

import ml_collections

from fergate.config import parse_arg

VARIANTS = ("baseline", "ensemble", "tree_gated", "exo_tree_gated", "oracle", "thin", "exo")
TASKS = {  # data dir ("" = prepare with `fergate prep --dataset <task>`), classes, exo field, exo classes
    "digits_rotated": dict(classes=10, exo_field="rotation_bin", exo_classes=18, size=28),
    "digits_rotated_scaled": dict(classes=10, exo_field="rotation_bin", exo_classes=18, size=28),
    "dsprites": dict(classes=3, exo_field="scale_bin", exo_classes=6, size=64),
    "fer": dict(classes=7, exo_field="subject", exo_classes=0, size=96),
}
#: `exo=` picks another exogenous variable (Table 3 on MNIST-RS: rotation or scale)
EXOGENOUS = {"rotation": ("rotation_bin", 18), "scale": ("scale_bin", 10)}


def get_config(arg=None):
    arg = parse_arg(arg, task="digits_rotated", variant="thin", exo="", experts="vmap", smoke=False)
    from fergate.errors import UserError

    if arg.variant not in VARIANTS:
        raise UserError(f"unknown THIN variant {arg.variant!r}; known: {', '.join(VARIANTS)}")
    if arg.task not in TASKS:
        raise UserError(f"unknown THIN task {arg.task!r}; known: {', '.join(TASKS)}")
    task, fer = dict(TASKS[arg.task]), arg.task == "fer"
    if arg.exo:
        if fer or arg.exo not in EXOGENOUS or (arg.exo == "scale" and arg.task == "digits_rotated"):
            raise UserError(f"exo={arg.exo!r} does not apply to task {arg.task}")
        task["exo_field"], task["exo_classes"] = EXOGENOUS[arg.exo]
        if arg.task == "dsprites":  # dSprites' own grid: 6 scales, 40 rotations
            task["exo_classes"] = {"scale": 6, "rotation": 40}[arg.exo]
    c = ml_collections.ConfigDict()
    c.model = "thin"
    c.variant = arg.variant
    c.task = arg.task
    c.seed = 0
    # data.dir "" -> the prepared synthetic set in the cache (or the FER sample set)
    # FER stage 1 learns the training subjects' identities: it is evaluated on the training split
    eval_split = "train" if (fer and arg.variant == "exo") else "test"
    c.data = dict(dir="", dataset="sample" if fer else arg.task, train_split="train", eval_split=eval_split,
                  balance=fer, workers=0, sample_size=2800, flip=fer, brightness_contrast=fer,
                  label_field="subject" if (fer and arg.variant == "exo") else
                  (task["exo_field"] if arg.variant == "exo" else "label"))
    c.input = dict(batch_size=16 if fer else 32, image_size=task["size"])
    c.thin = dict(
        num_classes=task["classes"],
        exo_classes=task["exo_classes"],  # FER: the number of training subjects, read from the data
        image_field="face" if fer else "image",
        channels=3 if fer else 1,
        exo_field=task["exo_field"],
        exo_input="identity" if fer else "image",  # FER: the 128-d dlib embedding of the records
        exo_width=128,
        endo_convs=(64, 128, 256, 512, 512) if fer else (16, 16),  # FER: VGG-style, 4608-d for 96 x 96
        exo_convs=(16, 16),
        baseline_hidden=(256,),
        exo_hidden=(256,),
        members=32 if fer else 8,
        expert_hidden=(512, 512) if fer else (32,),
        depth=5 if fer else 3,
        dispel_weight=0.005,
        experts=arg.experts,
    )
    lr = 1e-5 if (fer and arg.variant != "exo") else 1e-3  # FER: 1e-5 for the VGG-style network
    c.optim = dict(name="adam", lr=lr, b1=0.9, b2=0.999, eps=1e-8, decay_power=1.0, end_lr=lr, warmup_steps=0,
                   weight_decay=0.0, grad_clip=0.0, frozen=())
    c.train = dict(steps=20_000 if fer else 6_000, log_every=100, ckpt_every=1000, keep=2, eval_every=0,
                   dtype="float32")
    c.eval = dict(batch_size=64, top_k=(1, 2))
    # stage 1 (the exogenous network), trained into W/pretrain by the same command
    needs_exo = arg.variant in ("exo_tree_gated", "thin") and not (fer and arg.variant == "exo_tree_gated")
    c.init = dict(params_from="pretrain" if needs_exo else "", params=("exo_encoder", "exo_classifier"))
    c.pretrain = dict(config=f"{os.path.abspath(__file__)}:task={arg.task},variant=exo,exo={arg.exo},smoke={arg.smoke}"
                      if needs_exo else "", steps=0)
    if needs_exo:
        c.optim.frozen = ("exo_encoder", "exo_classifier")
    if arg.smoke:
        c.train.steps = 60
        c.train.log_every = 10
        c.train.ckpt_every = 30
        c.data.sample_size = 350
    return c
