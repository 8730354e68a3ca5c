"""The micro-emotion network's two comparisons (paper 001): the geometry input, the landmark
displacement (Eq. 1-2) against the landmarks without the subject mean, with the linear SVM
(section III-A); the loss, the squared hinge against the softmax cross-entropy, on the
fused network (section V-B). The challenge's misclassification (% of the held-out faces)
beside the paper's numbers where it gives them: V-B and III-A state the comparisons
without a number for the cross-entropy or the raw landmarks.

    fergate sweep configs/tables/micro_loss_geometry.py --workdir W --budget readme
    fergate sweep configs/tables/micro_loss_geometry.py --workdir W --budget paper --config.data.dir=ICV_MEFED

ICV_MEFED, and the `val` split the `paper` budget evaluates on, as micro_table1.py says.
"""

from . import common

ROWS = {  # row: (config arguments, the paper's misclassification % or None, where the paper says it)
    "geometry_displacement": ("variant=geometry,geometry=displacement", 84.957143,
                              "III-A / Table I (footnote 1): landmark displacement + linear SVM, iCV-MEFED "
                              "validation set"),
    "geometry_raw": ("variant=geometry,geometry=raw", None,
                     "III-A: the displacement is 'such a huge improvement compared to the landmark only' (no "
                     "number)"),
    "fusion_hinge_l2": ("variant=fusion,loss=hinge_l2", 79.328571,
                        "Table I: the final submission (L2 hinge), iCV-MEFED validation set"),
    "fusion_cross_entropy": ("variant=fusion,loss=cross_entropy", None,
                             "V-B: 'the same performance as hinge loss on validation dataset, but overfits "
                             "faster' (Figs. 9-10, no number)"),
}


def get_table(arg=None):
    return common.micro_table("Micro-emotion network (paper 001): geometry input (III-A) and loss (V-B)",
                              [(name, *row) for name, row in ROWS.items()])
