"""The config sections every model family shares, and the smoke preset (a tiny CPU run).

Config files import it relatively (`from . import common`); fergate loads a config file
as a module of its directory.
"""

import ml_collections

from fergate import options


def base(model: str, variant: str) -> ml_collections.ConfigDict:
    """A config with the shared sections at their defaults (`fergate.options.KEYS`, where
    each key's meaning, check and resumability are kept); a family file adds its own section
    (named like the model) and changes what differs."""
    c = ml_collections.ConfigDict()
    c.model = model
    c.variant = variant
    c.seed = 0
    for section, keys in options.defaults().items():
        c[section] = keys
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
