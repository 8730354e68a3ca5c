"""VSHNN's frame substitution on and off (paper 004, 3.4; Table 2's text and Table 5): C3D and
CNN-SAGRU (B) with and without the FS module, controlled: the same seeds and, per seed, the
same stage 1 (the frame CNN, its out-of-fold copies and its features, W/no_fs/seed-<s>/
pretrain/frames), trained once in the first row. Held-out mean class accuracy beside the
paper's (AFEW validation; `:paper=ckplus`: its CK+ 10-fold accuracy, Table 5).

    fergate sweep configs/tables/vshnn_fs.py --workdir W --budget readme   # 1,500 steps a stage
"""

from .vshnn_fusion import paper_table

ROWS = {  # row: (config arguments, the paper's row, AFEW %, CK+ %, the row whose stage 1 it reuses)
    "no_fs": ("variant=c3d_sagru_b", "C3D and CNN-SAGRU (B), no FS", 49.87, 97.25, ""),
    "fs": ("variant=c3d_sagru_b,fs=True", "C3D and CNN-SAGRU (B) with FS (K = 3 of 16)", 50.76, 97.55, "no_fs"),
}


def get_table(arg=None):
    return paper_table("VSHNN frame substitution on / off (paper 004, 3.4): the same seeds and stage 1", ROWS, arg)
