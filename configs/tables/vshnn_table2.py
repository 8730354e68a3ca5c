"""VSHNN's Table 2 (paper 004): the single models and C3D with a scene-aware RNN (types A, B,
C), held-out mean class accuracy beside the paper's AFEW validation accuracy. Every row with
appearance features shares its seed's stage 1 (the frame CNN and its features, W/<row>/
seed-<s>/pretrain/frames), trained once in the first of them.

    fergate sweep configs/tables/vshnn_table2.py --workdir W --budget readme   # 1,500 steps a stage
"""

from . import common

ROWS = {  # variant: (the paper's row, AFEW validation accuracy %)
    "c3d": ("C3D", 41.25), "cnn_lstm": ("CNN-LSTM", 46.74), "cnn_gru": ("CNN-GRU", 46.99),
    "c3d_salstm_a": ("C3D and CNN-SALSTM (A)", 49.61), "c3d_salstm_b": ("C3D and CNN-SALSTM (B)", 48.83),
    "c3d_salstm_c": ("C3D and CNN-SALSTM (C)", 48.04), "c3d_sagru_a": ("C3D and CNN-SAGRU (A)", 48.56),
    "c3d_sagru_b": ("C3D and CNN-SAGRU (B)", 49.87), "c3d_sagru_c": ("C3D and CNN-SAGRU (C)", 48.04),
    "frames": ("stage 1 alone: the frame CNN, its logits averaged over the clip (not a Table 2 row)", None),
}
FIRST = "cnn_lstm"  # the first row with a stage 1


def get_table(arg=None):
    return dict(
        title="VSHNN Table 2 (paper 004): single models and VSHNN without frame substitution",
        metric="mean_class_accuracy",
        seeds=1,  # the README's one seed; --seeds 3 for a spread
        budgets=common.VSHNN_BUDGETS,
        rows=[dict(name=v, config=f"configs/vshnn.py:variant={v}", paper=acc, paper_note=f"{row}: AFEW",
                   shares=(FIRST,) if v not in ("c3d", "frames", FIRST) else ())
              for v, (row, acc) in ROWS.items()],
    )
