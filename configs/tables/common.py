"""What the table files share: the smoke budget (a few steps, for a first try on a CPU) and the
budgets of tables of one family."""


def smoke(*extra: str, steps: int = 60, eval_every: int = 0) -> tuple[str, ...]:
    """`train.steps=steps`, earlier stages as long, a checkpoint halfway, periodic evaluation
    every `eval_every` steps (0: none), and the family's own shrinking (`extra`: e.g. the
    smoke sample set)."""
    return (f"train.steps={steps}", f"pretrain.steps={steps}", f"train.log_every={max(1, steps // 6)}",
            f"train.ckpt_every={max(1, steps // 2)}", f"train.eval_every={eval_every}", *extra)


#: the 350-image sample set every family's smoke config and tests share (prepared once in the cache)
SAMPLE_350 = "data.prep_options.size=350"
#: the VSHNN tables' smoke budget: the sample set's 350 images and 140 clips, batches of 8
VSHNN_SMOKE = smoke(SAMPLE_350, "data.prep_options.clips=140", "input.batch_size=8", steps=20)
#: the micro-emotion network's budgets (its Table I and its III-A / V-B comparisons): readme, 300
#: steps at batch 32 on faces at 112 x 112 (a quarter of the paper's pixels); paper, the
#: validation split the paper reports (001 IV-C)
MICRO_BUDGETS = {"smoke": smoke("input.face_size=112", SAMPLE_350, steps=20),
                 "readme": ("train.steps=300", "input.face_size=112", "train.eval_every=0"),
                 "paper": ("data.eval_split=val",)}
