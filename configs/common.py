"""The config sections every model family shares, and the smoke preset (a tiny CPU run).

Config files import it relatively (`from . import common`); fergate loads a config file
as a module of its directory.
"""

import ml_collections


def base(model: str, variant: str) -> ml_collections.ConfigDict:
    """A config with the shared sections at their defaults; a family file adds its own
    section (named like the model) and changes what differs."""
    c = ml_collections.ConfigDict()
    c.model = model
    c.variant = variant
    c.seed = 0
    # data.dir "" -> the built-in `dataset` prepared in the cache with `prep_options`
    # features_from: an earlier stage (config.pretrain) whose model's `features` output of every record
    # is written as field `features_field` into a copy of the data (`fergate features`) that this config
    # then reads (VSHNN)
    # val_split: validation for train.select: a split of the data, else val_fraction of the training subjects
    # fold >= 0: cross-validation (`fergate cv`): fold `fold` of `folds` subject-independent folds of
    # train_split + eval_split (or the splits `cv_splits` names) is held out, the others train
    # classes: the classes to train on ((): the data's); the data's are mapped onto them by name, label_map
    # "FROM=TO" entries map others ("contempt=-" drops a class)
    # mix: other prepared datasets drawn into training, "DIR" or "DIR=WEIGHT" against `weight` (the main data's)
    c.data = dict(dir="", dataset="sample", prep_options=dict(size=2800), train_split="train", eval_split="test",
                  val_split="", val_fraction=0.1, fold=-1, folds=10, cv_splits=(), features_from="", features_field="",
                  label_field="label", classes=(), label_map=(), mix=(), weight=1.0, balance=False, workers=0,
                  # augmentation in training: ops separated by "|" (fergate.data.augment), e.g.
                  # "flip|rotate(10)|brightness_contrast(20, 0.2)|hue_saturation"; each family says which it takes
                  augment="")
    c.input = dict(batch_size=16)  # the global batch; families add their input shapes
    # decay_steps: the learning rate reaches end_lr there (0: at train.steps)
    # step_every > 0: instead, the rate times step_factor every step_every steps (Caffe's "step" policy;
    # decay_steps does not apply)
    # clip_value: gradients clipped elementwise to [-v, v] (0: not)
    # frozen: parameter subtrees not trained; lr_scale: "subtree=factor" entries scaling a subtree's rate
    c.optim = dict(name="adam", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, decay_power=1.0, end_lr=0.0, warmup_steps=0,
                   decay_steps=0, step_every=0, step_factor=0.1, weight_decay=0.0, grad_clip=0.0, clip_value=0.0,
                   frozen=(), lr_scale=())
    # eval_every: held-out evaluation every N steps (-1: ten times a run, 0: only at the end)
    # select: keep the checkpoint with the best validation value of this metric ("": the last)
    # accumulate: the global batch in this many micro-batches, one after another, gradients averaged
    # (batches larger than memory); dtype: compute dtype ("auto": bfloat16 on GPU / TPU, float32 on CPU;
    # parameters and optimizer state stay float32)
    c.train = dict(steps=10_000, log_every=50, ckpt_every=1000, keep=3, eval_every=-1, select="", profile_steps=(),
                   dtype="auto", accumulate=1)
    c.eval = dict(batch_size=64, top_k=(1, 2, 3))
    # a model axis of `model` devices within each process (the rest is the data axis); `rules`:
    # "REGEX=AXES" entries sharding the parameters (and their optimizer moments) whose path ends in
    # REGEX, one mesh axis or - per dimension (families list their widest layers)
    c.mesh = dict(model=1, rules=())
    # earlier stages (trained into W/pretrain/NAME) and parameters loaded from them or other workdirs
    c.init = dict(params_from=(), params=())
    c.pretrain = dict(steps=0, inherit=(), configs={})
    return c


def smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A few steps on a small sample set, for tests and a first try on a CPU."""
    if "size" in c.data.prep_options:  # the sample set
        c.data.prep_options.size = 350
    c.train.steps = 60
    c.train.log_every = 10
    c.train.ckpt_every = 30
    c.train.eval_every = -1 if c.train.select else 0  # selecting a checkpoint needs evaluations
    c.eval.batch_size = 32
    return c
