"""VSHNN's fusions (paper 004, Tables 9, 10 and 12): the video model, the landmark models
(LMED-CF with MLP, and LMED without the inter-frame correlations, Table 9) and the four fusions,
held-out mean class accuracy beside the paper's AFEW validation accuracy (`:paper=ckplus`: its
CK+ 10-fold accuracy; the paper has no CK+ LMED row). As the paper: IC is one model (Eq. 16) that
reuses its seed's stage 1 of the video row; WS, LRMF and LRMAF fuse the two branches trained
first, each on its own (stage "branches", trained once in the LRMAF row), frozen, the fusion
layer fitted on their out-of-fold scores of the training clips. `lrmaf_joint`: LRMAF as fergate
trained it before, branches and fusion in one model on the training clips (the control).

    fergate sweep configs/tables/vshnn_fusion.py --workdir W --budget readme   # 1,500 steps a stage
"""

from fergate.config import choice, parse_arg

from . import common

ROWS = {  # row: (config arguments, the paper's row, AFEW %, CK+ %, the row whose stages it reuses)
    "video": ("variant=c3d_sagru_b,fs=True", "VSHNN (video alone, with FS)", 50.76, 97.55, ""),
    "lmedcf": ("variant=lmedcf", "LMED-CF with MLP (landmarks alone, Table 9)", 42.56, 92.38, ""),
    "lmed": ("variant=lmedcf,lmed=distances", "LMED with MLP (no correlations, Table 9)", 20.89, None, ""),
    "lrmaf": ("variant=c3d_sagru_b,fs=True,fusion=lrmaf", "VSHNN-LRMAF", 51.43, 98.48, ""),
    "ic": ("variant=c3d_sagru_b,fs=True,fusion=ic", "VSHNN-IC", 50.82, 97.86, "video"),
    "ws": ("variant=c3d_sagru_b,fs=True,fusion=ws", "VSHNN-WS (alpha 0.5)", 50.13, 98.07, "lrmaf"),
    "lrmf": ("variant=c3d_sagru_b,fs=True,fusion=lrmf", "VSHNN-LRMF", 50.91, 98.27, "lrmaf"),
    "lrmaf_joint": ("variant=c3d_sagru_b,fs=True,fusion=lrmaf,fit=joint",
                    "VSHNN-LRMAF fitted jointly on the training clips (not the paper's protocol)", None, None,
                    "video"),
}


def paper_table(title: str, rows: dict, arg=None) -> dict:
    """A 3-seed VSHNN table of `rows` {name: (config arguments, the paper's row, AFEW %, CK+ %,
    the row whose stages it reuses)} beside the paper's AFEW column (`:paper=ckplus`: CK+)."""
    arg = parse_arg(arg, paper="afew")
    ck = choice(arg.paper, ("afew", "ckplus"), "paper column") == "ckplus"
    return dict(
        title=title,
        metric="mean_class_accuracy",
        seeds=3,
        budgets=common.VSHNN_BUDGETS,
        rows=[dict(name=name, config=f"configs/vshnn.py:{args}", paper=ckplus if ck else afew,
                   paper_note=f"{row}: {'CK+' if ck else 'AFEW'}", shares=(shared,) if shared else ())
              for name, (args, row, afew, ckplus, shared) in rows.items()],
    )


def get_table(arg=None):
    return paper_table("VSHNN fusions (paper 004, Tables 9, 10, 12): video, landmarks and their fusions", ROWS, arg)
