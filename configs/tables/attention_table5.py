"""The attention CNN's Table 5 (paper 002): the baseline and the three pooled heads, accuracy
beside the paper's on RaFD-FRONT (aligned faces), or with `:context=0.6` on faces with their
surroundings beside RaFD-POSE's. Every row trains its whole network from scratch, as the
paper does (`configs/attention.py:from_baseline=True` would put the heads on a baseline's trunk).

    fergate sweep configs/tables/attention_table5.py --workdir W --budget readme
    fergate sweep configs/tables/attention_table5.py:context=0.6,folds=5 --workdir W --budget paper \
        --config.data.dir=RAFD    # the paper's 5 subject-independent folds
"""

from fergate.config import parse_arg

from . import common

PAPER = {  # variant: (the paper's row, RaFD-FRONT %, RaFD-POSE %), 5-fold cross-validation
    "baseline": ("The baseline CNN", 97.3, 87.2),
    "attention": ("CNN with Visual Attention (Eq. 4)", 95.2, 93.1),
    "symmetric": ("CNN with Visual Attention (Eq. 5)", 94.8, None),
    "gap": ("CNN with global average pooling", 96.3, 92.8),
}


def get_table(arg=None):
    arg = parse_arg(arg, context=1.0, folds=0)
    pose = arg.context != 1
    return dict(
        title=f"Attention CNN Table 5 (paper 002): {'faces in context' if pose else 'aligned faces'}",
        metric="accuracy",
        seeds=3,
        folds=arg.folds,
        extras={"mean class accuracy": ("", "mean_class_accuracy")},
        # readme: 800 steps at batch 16; short: 400 (the README's context=0.6 comparison on 2 CPU cores)
        budgets={"smoke": common.smoke("input.batch_size=8", common.SAMPLE_350, steps=20),
                 "readme": ("train.steps=800", "input.batch_size=16", "train.eval_every=0"),
                 "short": ("train.steps=400", "input.batch_size=16", "train.eval_every=0"),
                 "paper": ()},
        rows=[dict(name=v, config=f"configs/attention.py:variant={v},context={arg.context}",
                   paper=pose_acc if pose else front, paper_note=f"{row}: {'RaFD-POSE' if pose else 'RaFD-FRONT'}")
              for v, (row, front, pose_acc) in PAPER.items()],
    )
