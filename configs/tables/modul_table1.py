"""MoDuL's Table I (paper 000): the eight models of the ablation, held-out overall accuracy
beside the paper's "uw. acc" on CK+, which IV-B defines as the (unweighted) overall accuracy
over the test set; the mean class accuracy, the paper's "w. acc" (the average per-class
accuracy), is reported beside it (`extras`) with the paper's value in the note.

    fergate sweep configs/tables/modul_table1.py --workdir W --budget smoke    # minutes, the sample set
    fergate sweep configs/tables/modul_table1.py --workdir W --budget readme   # README's: 300 steps, 3 seeds
    fergate sweep configs/tables/modul_table1.py --workdir W --budget paper --config.data.dir=CKPLUS

`paper=True` rows: the paper's learning rates (1e-2; 1e-3 for joint_rw and modul) and its
49 landmarks; the paper's 10-fold protocol on CK+ with `folds=10` (`:folds=10`).
"""

from fergate.config import parse_arg

from . import common

VARIANTS = {  # variant: (the paper's row, uw. acc %, w. acc % on CK+)
    "distances": ("Distances", 88.51, 84.11), "patches": ("Patches", 88.79, 82.97),
    "joint": ("Joint", 91.81, 90.27), "joint_modal": ("Joint, modal gate", 93.25, 91.25),
    "distances_rw": ("Distances, Region-weighted", 91.16, 87.72),
    "patches_rw": ("Patches, Region-weighted", 88.56, 86.31),
    "joint_rw": ("Joint, Region-weighted", 93.76, 93.08), "modul": ("MoDuL", 94.09, 93.22),
}


def get_table(arg=None):
    arg = parse_arg(arg, folds=0)
    return dict(
        title="MoDuL Table I (paper 000): the ablation",
        metric="accuracy",  # the paper's uw. acc: the overall accuracy (IV-B)
        extras={"mean class accuracy": (".", "mean_class_accuracy")},  # the paper's w. acc
        seeds=3,
        folds=arg.folds,
        budgets={"smoke": common.smoke(common.SAMPLE_350), "readme": ("train.steps=300", "train.eval_every=0"),
                 "paper": ()},  # paper: the configs' 25k / 20k steps
        rows=[dict(name=v, config=f"configs/modul.py:variant={v},paper=True", paper=uw,
                   paper_note=f"{row}: CK+ uw. acc (overall accuracy, IV-B); w. acc (mean class accuracy) {w}; "
                              "10 folds, 25k / 20k steps")
              for v, (row, uw, w) in VARIANTS.items()],
    )
