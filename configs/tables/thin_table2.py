"""THIN's Table 2 (paper 003): the architectures on a rotated benchmark, test accuracy beside
the paper's MNIST-R column. The gated variants of a seed share one exogenous (rotation)
network: it trains once, in the first of them; the table reports its test accuracy on the
18 rotation bins per run (`extras`, a column of table.md).

    fergate prep --dataset fashion_rotated --out D      # Debian's dataset-fashion-mnist
    fergate sweep configs/tables/thin_table2.py --workdir W --budget readme --config.data.dir=D
    fergate sweep configs/tables/thin_table2.py:task=digits_rotated --workdir W --budget smoke
"""

from fergate.config import choice, parse_arg

from . import common

VARIANTS = {  # variant: (the paper's row, MNIST-R accuracy %)
    "baseline": ("Baseline", 96.83), "ensemble": ("Simple deep ensemble", 96.81),
    "tree_gated": ("Tree-gated deep ensemble", 97.31), "exo_tree_gated": ("Exogenous tree-gated deep ensemble", 98.07),
    "oracle": ("Oracle (gate on the true rotation)", 98.06), "thin": ("THIN", 98.26),
}


def get_table(arg=None):
    arg = parse_arg(arg, task="fashion_rotated")
    task = choice(arg.task, ("fashion_rotated", "digits_rotated"), "Table 2 task")
    # the premise of 3.2: the exogenous network identifies the rotation well (Table 1: 98.32% on MNIST-R)
    return common.thin_table(f"THIN Table 2 (paper 003) on {task}", ("rotation",),
                             [dict(name=v, config=f"configs/thin.py:task={task},variant={v}", paper=acc,
                                   paper_note=f"{row}: MNIST-R", shares=("exo_tree_gated",) if v == "thin" else ())
                              for v, (row, acc) in VARIANTS.items()])
