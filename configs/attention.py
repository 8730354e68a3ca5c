"""The CNN with visual attention for FER (Sun, Zhao, Jin, Neurocomputing 2018) and its heads.

    fergate train --config configs/attention.py:variant=attention --workdir W
    variants: baseline (Table 2), attention (Eq. 1-4), symmetric (Eq. 5), gap (global average pooling)
    fergate attend --workdir W group_photo.jpg --faces      # the fully-convolutional mode

Faces are 125 x 160 grey crops with isotropic-diffusion illumination normalisation
(`fergate prep --face_size 125x160 --grey --illumination diffusion`; the built-in sample
set is prepared so); training reads random 112 x 144 crops, half of them mirrored,
evaluation the centre crop (section 4.1).

The pooled heads are added to a trained baseline's convolutions (`from_baseline=True`, the
default), which stay fixed: section 4.3 builds the attention CNN by "modifying the baseline
CNN", and trained from scratch (or fine-tuned with the trunk, even at a tenth of the rate)
Adam shrinks the pooled features to nothing before the head can tell the classes apart, so
the loss stays at ln 7 for hundreds of steps (the paper trains for 10,000 epochs). One
command trains the baseline into W/pretrain/baseline first; `from_baseline=False` trains
from scratch; `--config.optim.frozen= --config.optim.lr_scale=features=0.1` fine-tunes the trunk.

    context=0.6: faces at 0.6 of the template's size in the same crop, the scene around them
    kept (`fergate prep --face_scale 0.6`): the paper's fully-convolutional model learns on
    unaligned faces with background (RaFD-POSE, 4.4), where aligned crops hold little to
    attend away from
"""

import os

from fergate.config import choice, parse_arg
from fergate.models.attention import TRUNK, VARIANTS

from . import common


def get_config(arg=None):
    arg = parse_arg(arg, variant="attention", smoke=False, from_baseline=True, context=1.0)
    c = common.base("attention", choice(arg.variant, VARIANTS, "attention variant"))
    c.data.prep_options = dict(size=2800, face_size="125x160", color=False, illumination="diffusion",
                               patches=False, identity=False)
    if arg.context != 1:  # the cache key of the default set stays as it was
        c.data.prep_options["face_scale"] = arg.context
    c.data.augment = "flip"  # 4.1: random crops (the family's) and mirrors
    c.input.batch_size = 32
    c.input.record_size = (160, 125)  # (height, width) the records are brought to
    c.input.crop = (144, 112)  # (height, width) of the network's input
    c.attention = dict(num_classes=0, trunk=TRUNK, hidden=66, beta=1.0, dropout=0.5,
                       standardise=True)  # 0: the data's classes
    # Adam (section 4.3; its rate is not given), constant
    c.optim.lr = c.optim.end_lr = 1e-3
    c.train.steps = 10_000
    pooled = arg.variant != "baseline" and arg.from_baseline
    c.init.params_from = ("pretrain",) if pooled else ()
    c.init.params = ("features",)  # the trunk
    if pooled:  # the trunk kept, the new head at 1e-2 on its small pooled features
        c.optim.frozen = ("features",)
        c.optim.lr = c.optim.end_lr = 1e-2
    c.pretrain.inherit = ("data", "input", "attention.trunk", "train.dtype", "train.eval_every")
    here = os.path.basename(__file__)  # relative to this file's directory (fergate.options)
    c.pretrain.configs = {"baseline": f"{here}:variant=baseline,smoke={arg.smoke},context={arg.context}"} if pooled \
        else {}
    return common.smoke(c) if arg.smoke else c
