"""What the table files share: the smoke budget (a few steps, for a first try on a CPU), the
budgets of tables of one family, and what the tables of THIN and of the micro-emotion network
share (`thin_table`, `micro_table`)."""


def smoke(*extra: str, steps: int = 60, eval_every: int = 0) -> tuple[str, ...]:
    """`train.steps=steps`, earlier stages as long, a checkpoint halfway, periodic evaluation
    every `eval_every` steps (0: none), and the family's own shrinking (`extra`: e.g. the
    smoke sample set)."""
    return (f"train.steps={steps}", f"pretrain.steps={steps}", f"train.log_every={max(1, steps // 6)}",
            f"train.ckpt_every={max(1, steps // 2)}", f"train.eval_every={eval_every}", *extra)


#: the 350-image sample set every family's smoke config and tests share (prepared once in the cache)
SAMPLE_350 = "data.prep_options.size=350"
#: the THIN tables' budgets: smoke, 20 steps evaluated at 10; readme, the configs' 6,000 steps at
#: batch 32, the best of ten checkpoints on a 10% validation split
THIN_BUDGETS = {"smoke": smoke(steps=20, eval_every=10), "readme": ()}
#: the VSHNN tables' budgets: smoke, the sample set's 350 images and 140 clips, batches of 8;
#: readme, the configs' 1,500 steps a stage
VSHNN_BUDGETS = {"smoke": smoke(SAMPLE_350, "data.prep_options.clips=140", "input.batch_size=8", steps=20),
                 "readme": ()}
#: the micro-emotion network's budgets (its Table I and its III-A / V-B comparisons): readme, 300
#: steps at batch 32 on faces at 112 x 112 (a quarter of the paper's pixels); paper, the
#: validation split the paper reports (001 IV-C), on iCV-MEFED prepared as micro_table1.py says
MICRO_BUDGETS = {"smoke": smoke("input.face_size=112", SAMPLE_350, steps=20),
                 "readme": ("train.steps=300", "input.face_size=112", "train.eval_every=0"),
                 "paper": ("data.eval_split=val",)}


def micro_table(title: str, rows: list[tuple[str, str, float | None, str]]) -> dict:
    """A table of the micro-emotion network (paper 001) from its rows (name, configs/micro.py
    arguments, the paper's misclassification % or None, where the paper says it): the
    challenge's metric, three seeds, `MICRO_BUDGETS`."""
    return dict(
        title=title,
        metric="misclassification_percent",
        scale=1.0,  # eval.json gives it in %
        seeds=3,
        budgets=MICRO_BUDGETS,
        rows=[dict(name=name, config=f"configs/micro.py:{args}", paper=mis, paper_note=note)
              for name, args, mis, note in rows],
    )


def thin_table(title: str, exo: tuple[str, ...], rows: list[dict]) -> dict:
    """A table of THIN (paper 003) from its rows: test accuracy over three seeds, `THIN_BUDGETS`,
    and beside each run the test accuracy on their bins of its stage-1 exogenous networks
    (`exo`: the variables they predict), a column each (`extras`)."""
    return dict(
        title=title,
        metric="accuracy",
        seeds=3,
        extras={f"stage-1 {n} accuracy": (f"pretrain/{n}", "accuracy") for n in exo},
        budgets=THIN_BUDGETS,
        rows=rows,
    )
