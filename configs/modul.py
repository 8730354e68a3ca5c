"""MoDuL (Bernheim et al., FG 2020) and the ablations of its Table I.

    fergate train --config configs/modul.py:variant=joint_rw --workdir W
    fergate train --config configs/modul.py:variant=joint_rw,paper=True --workdir W   # the paper's setting
    fergate train --config configs/modul.py:smoke=True --workdir W --config.train.steps=50
"""

from fergate.config import choice, parse_arg
from fergate.models.modul import VARIANTS

from . import common


def get_config(arg=None):
    arg = parse_arg(arg, variant="modul", landmarks=0, paper=False, smoke=False)
    c = common.base("modul", choice(arg.variant, tuple(VARIANTS), "MoDuL variant"))
    c.data.balance = True  # per-epoch rejection resampling of the classes (paper IV-B)
    c.input.face_size = 64  # the gates' grey face side
    c.input.patch_size = 30
    c.modul = dict(
        landmarks=arg.landmarks or (49 if arg.paper else 68),  # N_l: 68, or 49 (IntraFace subset: the paper's)
        num_classes=0,  # 0: the data's classes
        dist_hidden=(1024, 512),  # F_dist
        patch_convs=(64, 128, 192),  # F_patch trunk: Conv3x3 - ReLU - MaxPool2 each (sized to Table IV)
        patch_hidden=(1024, 512),
        gate_convs=(32, 64, 64),  # G_dist, G_patch, G_mod trunks on the face
        gate_hidden=0,  # 0: the trunk's features feed the gate's output layer (Table IV: ~0.23M a gate)
        all_pairs=True,  # joint models read all N(N-1) distances (Table IV); False: the text's upper triangle
        standardize=True,  # distance inputs standardised with training-split statistics
    )
    # Adam (b1 0.9), polynomial decay power 0.9, 25k steps at 1e-3 for joint_rw / modul and
    # 20k at 1e-2 otherwise (paper IV-B); without `paper`, the gentler 3e-4 / 1e-4 (see README)
    long = arg.variant in ("joint_rw", "modul")
    c.optim.lr = (1e-3 if long else 1e-2) if arg.paper else (3e-4 if long else 1e-4)
    c.optim.decay_power = 0.9
    c.train.steps = 25_000 if long else 20_000
    return common.smoke(c) if arg.smoke else c
