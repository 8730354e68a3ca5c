"""THIN's Table 3 (paper 003): the tree-gated deep ensemble on rotated and scaled digits,
gated on the digit (endogenous) representation, on the scale's, the rotation's, or both;
test accuracy beside the paper's MNIST-RS column. Each exogenous network trains once per
seed: `rotation_scale` reuses the `rotation` and `scale` rows' networks. Each run's
exogenous networks' test accuracy on their bins is reported beside it (`extras`).

    fergate sweep configs/tables/thin_table3.py --workdir W --budget smoke
"""

from . import common

ROWS = {  # row: (config arguments, the paper's gating variable, MNIST-RS accuracy %)
    "digit": ("variant=tree_gated", "Digit", 96.68),
    "scale": ("variant=exo_tree_gated,exo=scale", "Scale", 97.22),
    "rotation": ("variant=exo_tree_gated,exo=rotation", "Rotation", 97.4),
    "rotation_scale": ("variant=exo_tree_gated,exo=rotation+scale", "Rotation + Scale", 97.63),
}


def get_table(arg=None):
    return common.thin_table("THIN Table 3 (paper 003): the gating variable on digits_rotated_scaled",
                             ("rotation", "scale"),
                             [dict(name=name, config=f"configs/thin.py:task=digits_rotated_scaled,{args}", paper=acc,
                                   paper_note=f"gating variable {var}: MNIST-RS",
                                   shares=("rotation", "scale") if name == "rotation_scale" else ())
                              for name, (args, var, acc) in ROWS.items()])
