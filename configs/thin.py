"""THIN (throwable information networks) and its Table 2 ablations, on the synthetic
benchmarks and FER.

    fergate train --config configs/thin.py:task=digits_rotated,variant=thin --workdir W
    variants: baseline, ensemble, tree_gated, exo_tree_gated, oracle, thin (and exo: stage 1)
    tasks: digits_rotated, digits_rotated_scaled, dsprites, fer

Variants that read an exogenous network first train it (variant=exo, on the exogenous
label) into W/pretrain/NAME, then load and freeze it: one command runs both stages.
    exo=rotation+scale: two exogenous networks, their representations concatenated (Table 3)
    task=fer,identity=cnn: an identity CNN trained on the faces instead of the dlib embedding
    task=fer,paper=True: the paper's networks (4.3): VGG-16 at 224 x 224 whose convolutions
        start from published weights (expression=vgg16: torchvision's ImageNet VGG-16;
        expression=vggface: VGG-Face, Table 4), the identity network VGG-Face whole (its
        convolutions gamma_tau, its fc6 - fc8 c_sigma over VGG-Face's identities), frozen, no
        stage 1; Adam at 1e-5. Give the files: --config.init.weights=vgg16.safetensors,vgg_face.safetensors
"""

import os

from fergate.config import choice, parse_arg
from fergate.errors import UserError
from fergate.models.thin import VARIANTS

from . import common

TASKS = {  # classes, image size, the default exogenous variable, the exogenous variables it has
    "digits_rotated": dict(classes=10, size=28, exo="rotation", has=("rotation",)),
    "digits_rotated_scaled": dict(classes=10, size=28, exo="rotation", has=("rotation", "scale")),
    "fashion_rotated": dict(classes=10, size=28, exo="rotation", has=("rotation",)),  # Debian's Fashion-MNIST
    "dsprites": dict(classes=3, size=28, exo="scale", has=("scale", "rotation")),  # ~200k parameters (4.1)
    "fer": dict(classes=7, size=96, exo="identity", has=("identity",)),
}
#: exogenous variable: (record field, bins); dSprites has its own grid; FER's subjects are counted from the data
EXOGENOUS = {"rotation": ("rotation_bin", 18), "scale": ("scale_bin", 10), "identity": ("subject", 0)}
DSPRITES_BINS = {"scale": 6, "rotation": 40}
#: identities VGG-Face was trained on (its fc8): THIN's frozen c_sigma with paper=True
VGGFACE_IDENTITIES = 2622


def matched_hidden(size: int, convs: tuple, classes: int, members: int, expert_hidden: tuple) -> tuple[int, int]:
    """(H, H) so that the baseline's 3 dense layers F -> H -> H -> K have as many parameters
    as `members` experts F -> expert_hidden -> K."""
    f = (size // 2 ** len(convs)) ** 2 * convs[-1]
    widths = [f, *expert_hidden, classes]
    experts = members * sum(a * b + b for a, b in zip(widths, widths[1:]))
    h = (-(f + classes + 2) + ((f + classes + 2) ** 2 + 4 * (experts - classes)) ** 0.5) / 2
    return (int(round(h / 64)) * 64,) * 2


def get_config(arg=None):
    """`exo=` picks the exogenous variable(s), `+`-joined for several (Table 3 on MNIST-RS:
    rotation, scale, rotation+scale). FER (section 4.3): the identity network gamma_tau has
    the expression network's architecture and is trained on the training subjects first
    (`identity=cnn`; `identity=embedding` reads the records' 128-d dlib embedding instead);
    `endo_init=identity` starts the expression network from its weights (Fig. 9)."""
    arg = parse_arg(arg, task="digits_rotated", variant="thin", exo="", identity="cnn", endo_init="scratch",
                    experts="vmap", smoke=False, paper=False, expression="vgg16")
    choice(arg.task, tuple(TASKS), "THIN task")
    choice(arg.identity, ("cnn", "embedding"), "identity (cnn: trained on the faces; embedding: the records' dlib "
                                               "embedding)")
    choice(arg.endo_init, ("scratch", "identity"), "endo_init")
    choice(arg.expression, ("vgg16", "vggface"), "expression (the expression network's published weights)")
    task, fer = TASKS[arg.task], arg.task == "fer"
    if arg.paper and not (fer and arg.identity == "cnn" and arg.endo_init == "scratch" and arg.variant != "exo"):
        raise UserError("paper=True is THIN's FER set-up on published VGG-16 / VGG-Face weights: task=fer, "
                        "identity=cnn, no endo_init, and no stage 1 (variant=exo: the identity network is VGG-Face's)")
    if fer and arg.variant == "oracle":
        raise UserError("variant=oracle gates on the true exogenous label; FER's exogenous variable (identity) has "
                        "none for unseen subjects: use exo_tree_gated or thin")
    exo_stage = arg.variant in ("exo_tree_gated", "thin")  # a frozen exogenous network, trained first
    if arg.endo_init == "identity" and not (fer and arg.identity == "cnn" and exo_stage):
        raise UserError("endo_init=identity starts the expression network from the identity network: task=fer, "
                        "identity=cnn, variant=exo_tree_gated or thin")
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
    # augmentation of section 4.3 for faces; class balancing is a per-dataset choice (the paper
    # balances AffectNet only): --config.data.balance=True
    c.data.augment = "flip|rotate(10)|brightness_contrast|hue_saturation" if fer else ""
    c.data.label_field = EXOGENOUS[names[0]][0] if arg.variant == "exo" else "label"
    c.input.batch_size = 16 if fer else 32
    c.input.image_size = 224 if arg.paper else task["size"]
    c.input.channels = 3 if fer else 1
    c.input.identity_width = 128  # identity=embedding: the records' 128-d dlib embedding
    endo_convs = (64, 128, 256, 512, 512) if fer else (16, 16)  # FER: VGG-style, 4608-d for 96 x 96
    size = c.input.image_size
    members, expert_hidden = (32, (512, 512)) if fer else (8, (32,))
    c.thin = dict(
        num_classes=0 if fer else task["classes"],  # 0: the data's classes
        exo_names=names,
        exo_fields=tuple(EXOGENOUS[n][0] for n in names),
        exo_classes=tuple(bins),  # FER: 0 = the number of training subjects, read from the data
        image_field="face" if fer else "image",
        exo_input="image" if exo_cnn else "identity",
        endo_convs=endo_convs,
        exo_convs=endo_convs,  # the identity network has the expression network's architecture (3.3)
        # FER: 3 dense layers as large as the 32 experts together (4.3: every model ~100M);
        # synthetic tasks: the paper's 2-FC head with 256 hidden units (4.1)
        baseline_hidden=matched_hidden(size, endo_convs, task["classes"], members, expert_hidden) if fer
        else (256,),
        exo_hidden=(4096, 4096) if arg.paper else (256,),  # paper: c_sigma is VGG-Face's fc6 - fc8
        members=members,
        expert_hidden=expert_hidden,
        depth=5 if fer else 3,
        # lambda of Eq. 8: 0.005 on MNIST-R (4.1, "Dispelling loss"); for FER Fig. 8 shows 0.01 and 4.4
        # balances the two terms "if we set lambda = 0.005 and, a fortiori lambda = 0.01"
        dispel_weight=0.01 if fer else 0.005,
        experts_impl=arg.experts,
        # paper: VGG-16's 13 convolutions (25088-d at 224), each network normalising its input as its weights do
        backbone="vgg16" if arg.paper else "conv",
        endo_norm="vggface" if arg.expression == "vggface" else "imagenet",
        exo_norm="vggface",
    )
    if arg.paper:  # c_sigma predicts VGG-Face's 2622 identities (its fc8), not the training subjects
        c.thin.exo_classes = (VGGFACE_IDENTITIES,)
    # with --config.mesh.model=M: the experts split over M devices, L / M each (the members axis)
    c.mesh.rules = ("experts/kernel0=-,model,-", "experts/bias0=model,-", r"experts/kernel[1-9]\d*=model,-,-",
                    r"experts/bias[1-9]\d*=model,-")
    # FER's expression network from scratch: 3e-4 (the paper fine-tunes a pretrained one at 1e-5)
    c.optim.lr = c.optim.end_lr = 1e-5 if arg.paper else 3e-4 if fer and arg.variant != "exo" else 1e-3
    # the paper selects the best model on a validation set taken from the training data (4.3); FER's
    # stage 1 learns the training subjects themselves, so it has no subject-independent validation
    if not (fer and arg.variant == "exo"):
        c.data.val_split, c.train.select = "val", "accuracy"
    c.train.steps = 20_000 if fer else 6_000
    c.train.log_every = 100
    c.train.keep = 2
    c.eval.top_k = (1, 2)
    # stage 1: each exogenous network (gamma_tau, c_sigma) trained on its label into W/pretrain/NAME by
    # the same command, then loaded and frozen. The records' embedding needs no gamma_tau; its c_sigma
    # serves the dispelling loss (and |cos| of exo_tree_gated).
    parts = tuple(f"exo_{part}_{n}" for n in names for part in ("encoder", "classifier")
                  if exo_cnn or part != "encoder")
    here = os.path.basename(__file__)  # relative to this file's directory (fergate.options)
    c.init.params_from = ("pretrain",) if exo_stage and not arg.paper else ()  # paper: VGG-Face from init.weights
    c.init.params = parts + (("endo=exo_encoder_identity",) if arg.endo_init == "identity" else ())
    c.optim.frozen = parts if exo_stage else ()
    # stage 1 runs on this run's data with this run's exogenous network shape
    c.pretrain.inherit = ("data.dir", "data.prep_options", "input.image_size", "input.identity_width",
                          "thin.exo_convs", "thin.endo_convs", "thin.exo_hidden", "train.dtype")
    c.pretrain.configs = {n: f"{here}:task={arg.task},variant=exo,exo={n},identity={arg.identity},smoke={arg.smoke}"
                          for n in (names if exo_stage and not arg.paper else ())}
    return common.smoke(c) if arg.smoke else c
