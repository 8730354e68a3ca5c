"""What the table files share: the smoke budget (a few steps, for a first try on a CPU)."""


def smoke(*extra: str, steps: int = 60) -> tuple[str, ...]:
    """`train.steps=steps`, earlier stages as long, a checkpoint halfway, no periodic
    evaluation, and the family's own shrinking (`extra`: e.g. the smoke sample set)."""
    return (f"train.steps={steps}", f"pretrain.steps={steps}", f"train.log_every={max(1, steps // 6)}",
            f"train.ckpt_every={max(1, steps // 2)}", "train.eval_every=0", *extra)


#: the 350-image sample set every family's smoke config and tests share (prepared once in the cache)
SAMPLE_350 = "data.prep_options.size=350"
