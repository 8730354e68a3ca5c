r"""The micro-emotion network's Table I (paper 001): its three branches, the challenge's
misclassification (% of the held-out faces) beside the paper's on iCV-MEFED's validation set.

    fergate sweep configs/tables/micro_table1.py --workdir W --budget readme
    fergate prep ROOT --dataset icv_mefed --val_subjects 9 --test_fraction 0 --face_size 224 --align eyes_lip \
        --no_patches --no_identity --out ICV_MEFED
    fergate sweep configs/tables/micro_table1.py --workdir W --budget paper --config.data.dir=ICV_MEFED

The `paper` budget evaluates on the `val` split: the last 9 subjects (IV-C), or the
challenge's own validation labels (a label file whose name says `valid`).
"""

from . import common

ROWS = {  # variant: (the paper's row, its validation misclassification %)
    "geometry": ("landmark displacement + linear SVM", 84.957143),
    "visual": ("the visual branch alone (not in the paper's table)", None),
    "fusion": ("visual + geometry, the final submission", 79.328571),
}


def get_table(arg=None):
    return common.micro_table("Micro-emotion network Table I (paper 001): the branches",
                              [(v, f"variant={v}", mis, f"{row}: iCV-MEFED") for v, (row, mis) in ROWS.items()])
