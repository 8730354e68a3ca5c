"""The CNN with visual attention for FER (Sun, Zhao, Jin, Neurocomputing 2018) and its heads.

    fergate train --config configs/attention.py:variant=attention --workdir W
    variants: baseline (Table 2), attention (Eq. 1-4), symmetric (Eq. 5), gap (global average pooling)
    fergate attend --workdir W group_photo.jpg --faces      # the fully-convolutional mode

Faces are 125 x 160 grey crops with isotropic-diffusion illumination normalisation
(`fergate prep --face_size 125x160 --grey --illumination diffusion`; the built-in sample
set is prepared so); training reads random 112 x 144 crops, half of them mirrored,
evaluation the centre crop (section 4.1).

The whole network trains from scratch, as the paper trains it; the pooled heads' z is
standardised over the batch before the classifier (`attention.standardise`, no parameters:
without it the pooled features of a random trunk hardly differ between faces, Adam shrinks
the trunk until its ReLUs die and the loss stays at ln 7; `tools/attention_diagnose.py`
measures it), and the scorer reads A_0 standardised per channel (`attention.standardise_scores`:
A_0's scale is then free and grows, and read raw it saturated the scorer's tanh, a uniform map),
their running statistics at momentum 0.9 (`attention.stats_momentum`: A_0's scale drifts).
`from_baseline=True` instead adds a pooled head to a trained baseline's
convolutions, which stay fixed (section 4.3 "modifies the baseline CNN"): one command trains
W/pretrain/baseline first, then the head at 1e-2; `--config.optim.frozen=
--config.optim.lr_scale=features=0.1` fine-tunes the trunk too.

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
    arg = parse_arg(arg, variant="attention", smoke=False, from_baseline=False, context=1.0)
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
                       standardise=True, standardise_scores=True, stats_momentum=0.9)  # 0: the data's classes
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
