"""MoDuL (Bernheim et al., FG 2020) and the ablations of its Table I.

    fergate train --config configs/modul.py:variant=joint_rw --workdir W
    fergate train --config configs/modul.py:smoke=True --workdir W --config.train.steps=50
"""

from fergate.config import choice, parse_arg
from fergate.models.modul import VARIANTS

from . import common


def get_config(arg=None):
    arg = parse_arg(arg, variant="modul", landmarks=68, smoke=False)
    c = common.base("modul", choice(arg.variant, tuple(VARIANTS), "MoDuL variant"))
    c.data.balance = True  # per-epoch rejection resampling of the classes (paper IV-B)
    c.input.face_size = 64  # the gates' grey face side
    c.input.patch_size = 30
    c.modul = dict(
        landmarks=arg.landmarks,  # N_l: 68, or 49 (IntraFace subset)
        num_classes=0,  # 0: the data's classes
        dist_hidden=(1024, 512),  # F_dist
        patch_convs=(64, 128, 256),  # F_patch trunk: Conv3x3 - ReLU - MaxPool2 each
        patch_hidden=(1024, 512),
        gate_convs=(32, 64, 64),  # G_dist, G_patch, G_mod trunks on the face
        gate_hidden=64,
    )
    # Adam (b1 0.9), polynomial decay power 0.9, 25k steps for joint_rw / modul and 20k
    # otherwise (paper IV-B). The paper's learning rates (1e-3 / 1e-2) collapse the ReLUs
    # of F_dist here (loss stuck at ln 7: its 2278-4556 inputs are all positive, so Adam's
    # first steps move every pre-activation together); 3e-4 / 1e-4 learn (see README).
    long = arg.variant in ("joint_rw", "modul")
    c.optim.lr = 3e-4 if long else 1e-4
    c.optim.decay_power = 0.9
    c.train.steps = 25_000 if long else 20_000
    return common.smoke(c) if arg.smoke else c
