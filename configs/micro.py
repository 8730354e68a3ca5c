"""The multi-modality micro-emotion network (Guo et al., FG 2017) and its variants.

    fergate train --config configs/micro.py:variant=fusion --workdir W
    variants: visual (the AlexNet-like branch), geometry (landmark displacement + a linear
    SVM), fusion (both, concatenated before fc7); loss=hinge_l2 (squared one-vs-all hinge,
    the paper's) | cross_entropy (section V-B); geometry=displacement (Eq. 1-2: the
    landmarks minus their subject's mean) | raw (the landmarks without the subject mean,
    the "landmark only" of III-A)

Faces are 224 x 224 RGB crops aligned on the eyes' midpoint and the upper lip
(`fergate prep --face_size 224 --align eyes_lip --no_patches --no_identity`; the built-in
sample set is prepared so). The 50-class compound path on the sample set:
`:compound=True` (the sample set's `--compound` mode); iCV-MEFED: `fergate prep --dataset
icv_mefed ROOT ...` then `--config.data.dir`.
"""

from fergate.config import choice, parse_arg
from fergate.models.micro import CONVS, GEOMETRIES, LOSSES, VARIANTS

from . import common


def get_config(arg=None):
    arg = parse_arg(arg, variant="fusion", loss="hinge_l2", geometry="displacement", compound=False, smoke=False)
    c = common.base("micro", choice(arg.variant, VARIANTS, "micro-emotion variant"))
    c.data.prep_options = dict(size=2800, clips=0, face_size=224, color=True, align="eyes_lip", patches=False,
                               identity=False, compound=arg.compound)
    c.input.batch_size = 32
    c.input.face_size = 224
    c.micro = dict(num_classes=0, convs=CONVS, fc6=256, fc7=256, dropout=0.8, lrn=(5, 1e-4, 0.75, 1.0),
                   normalize=True,  # the geometry input at unit scale (its RMS over the training split)
                   loss=choice(arg.loss, LOSSES, "micro-emotion loss"),  # num_classes 0: the data's
                   geometry=choice(arg.geometry, tuple(GEOMETRIES), "micro-emotion geometry input"))
    # SGD, momentum 0.9, weight decay 5e-4, lr 5e-4 times 0.75 every 20k steps, 100k steps (IV-C)
    c.optim.name, c.optim.b1, c.optim.lr, c.optim.weight_decay = "sgd", 0.9, 5e-4, 5e-4
    c.optim.step_every, c.optim.step_factor, c.optim.end_lr = 20_000, 0.75, 0.0
    c.train.steps = 100_000
    c.eval.top_k = (1, 2, 3, 4, 5)  # Table II
    if arg.smoke:  # at 224 a CPU step of batch 32 takes ~4 s: the smoke run reads 112 x 112 faces
        c.input.face_size = 112
    return common.smoke(c) if arg.smoke else c
