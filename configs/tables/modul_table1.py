"""MoDuL's Table I (paper 000): the eight models of the ablation, held-out mean class
accuracy beside the paper's unweighted accuracy on CK+.

    fergate sweep configs/tables/modul_table1.py --workdir W --budget smoke    # minutes, the sample set
    fergate sweep configs/tables/modul_table1.py --workdir W --budget readme   # README's: 300 steps, 3 seeds
    fergate sweep configs/tables/modul_table1.py --workdir W --budget paper --config.data.dir=CKPLUS

`paper=True` rows: the paper's learning rates (1e-2; 1e-3 for joint_rw and modul) and its
49 landmarks; the paper's 10-fold protocol on CK+ with `folds=10` (`:folds=10`).
"""

from fergate.config import parse_arg

from . import common

VARIANTS = {  # variant: (the paper's row, uw. accuracy % on CK+)
    "distances": ("Distances", 88.51), "patches": ("Patches", 88.79), "joint": ("Joint", 91.81),
    "joint_modal": ("Joint, modal gate", 93.25), "distances_rw": ("Distances, Region-weighted", 91.16),
    "patches_rw": ("Patches, Region-weighted", 88.56), "joint_rw": ("Joint, Region-weighted", 93.76),
    "modul": ("MoDuL", 94.09),
}


def get_table(arg=None):
    arg = parse_arg(arg, folds=0)
    return dict(
        title="MoDuL Table I (paper 000): the ablation",
        metric="mean_class_accuracy",  # the paper's unweighted accuracy
        seeds=3,
        folds=arg.folds,
        budgets={"smoke": common.smoke(common.SAMPLE_350), "readme": ("train.steps=300", "train.eval_every=0"),
                 "paper": ()},  # paper: the configs' 25k / 20k steps
        rows=[dict(name=v, config=f"configs/modul.py:variant={v},paper=True", paper=acc,
                   paper_note=f"{row}: CK+ unweighted accuracy, 10 folds, 25k / 20k steps")
              for v, (row, acc) in VARIANTS.items()],
    )
